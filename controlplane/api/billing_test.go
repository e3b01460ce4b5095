package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/api"
)

// fakeBilling is the payment provider of the API tests: it records what
// the service asks for and verifies webhook signatures with stripe-go's
// own code over the bytes it is given, so a body altered anywhere
// between the client and the port fails verification. (Stripe itself,
// through controlplane/stripebilling and stripe-mock, is tested there and
// end to end.)
type fakeBilling struct {
	secret string

	mu        sync.Mutex
	checkouts []controlplane.CheckoutRequest
	portals   []string // return URLs
	payloads  [][]byte // every VerifyEvent payload
}

func newFakeBilling() *fakeBilling { return &fakeBilling{secret: "whsec_api_test"} }

func (b *fakeBilling) CreateCustomer(ctx context.Context, c controlplane.BillingCustomer) (string, error) {
	return "cus_" + strings.ReplaceAll(c.TenantID, "-", "")[:14], nil
}

func (b *fakeBilling) CheckoutSession(ctx context.Context, c controlplane.CheckoutRequest) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.checkouts = append(b.checkouts, c)
	return fmt.Sprintf("https://checkout.stripe.com/c/pay/cs_test_%d", len(b.checkouts)), nil
}

func (b *fakeBilling) PortalSession(ctx context.Context, customerID, returnURL string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.portals = append(b.portals, returnURL)
	return fmt.Sprintf("https://billing.stripe.com/p/session/test_%d", len(b.portals)), nil
}

func (b *fakeBilling) ReportUsage(ctx context.Context, r controlplane.UsageReport) error { return nil }

func (b *fakeBilling) VerifyEvent(payload []byte, signature string) (*controlplane.BillingEvent, error) {
	b.mu.Lock()
	b.payloads = append(b.payloads, bytes.Clone(payload))
	b.mu.Unlock()
	ev, err := webhook.ConstructEventWithOptions(payload, signature, b.secret, webhook.ConstructEventOptions{IgnoreAPIVersionMismatch: true})
	if err != nil {
		return nil, controlplane.Errorf(controlplane.EINVALID, "webhook signature: %v", err)
	}
	return &controlplane.BillingEvent{ID: ev.ID, Type: string(ev.Type), Created: time.Unix(ev.Created, 0)}, nil
}

func (b *fakeBilling) lastPayload() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.payloads) == 0 {
		return nil
	}
	return b.payloads[len(b.payloads)-1]
}

// sign returns the Stripe-Signature header of payload, as Stripe makes it.
func (b *fakeBilling) sign(payload []byte) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: b.secret, Timestamp: time.Now()}).Header
}

const billingPublicURL = "https://fleetplane.example.com"

func newBillingEnv(tb testing.TB, b controlplane.Billing, opts ...func(*api.Options)) *env {
	tb.Helper()
	return newEnvConfig(tb, func(c *controlplane.Config) {
		c.Billing = b
		c.PublicURL = billingPublicURL
	}, opts...)
}

// webhook posts a delivery; body is sent byte for byte.
func (e *env) webhook(body []byte, signature string, opts ...reqOpt) *response {
	e.tb.Helper()
	if signature != "" {
		opts = append([]reqOpt{withHeader("Stripe-Signature", signature)}, opts...)
	}
	return e.do("POST", "/v1/billing/webhook", "", body, opts...)
}

// TestBillingOff: without a payment provider the billing endpoints answer
// 501 problem+json (after authentication and the role check), the usage
// endpoint works, and nothing changes.
func TestBillingOff(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("No Billing")
	viewer := e.createKey(a.key, "viewer", api.KeyRoleViewer).Secret
	member := e.createKey(a.key, "member", api.KeyRoleMember).Secret
	before := snapshot(t, e.pool)

	for _, path := range []string{"/v1/billing/checkout", "/v1/billing/portal"} {
		r := e.do("POST", path, a.key, nil)
		p := r.problem(t, http.StatusNotImplemented)
		if p.Code != api.ProblemCodeNotImplemented || !strings.Contains(p.Detail, "not enabled") {
			t.Errorf("%s: %+v", path, p)
		}
		// An empty JSON object is "no body" too.
		e.do("POST", path, a.key, `{}`).problem(t, http.StatusNotImplemented)
		// Billing is admin and up: member and viewer are refused first.
		for _, k := range []string{viewer, member} {
			if p := e.do("POST", path, k, nil).problem(t, http.StatusForbidden); !strings.Contains(p.Detail, "admin") {
				t.Errorf("%s as non-admin: %+v", path, p)
			}
		}
		e.do("POST", path, "", nil).problem(t, http.StatusUnauthorized)
	}
	p := e.webhook([]byte(`{"id":"evt_1","object":"event","type":"invoice.paid"}`), "t=1,v1=00").problem(t, http.StatusNotImplemented)
	if p.Code != api.ProblemCodeNotImplemented {
		t.Errorf("webhook: %+v", p)
	}
	if d := diffSnapshots(before, snapshot(t, e.pool)); d != "" {
		t.Fatalf("billing off changed the database: %s", d)
	}
	var u api.Usage
	e.do("GET", "/v1/usage", viewer, nil).must(t, http.StatusOK, &u)
	if u.ProjectedCharge != nil || u.Plan != api.PlanFree || u.BillingStatus != api.BillingStatusNone {
		t.Errorf("usage with billing off: %+v", u)
	}
}

// TestBillingCheckoutAndPortal: the redirect URLs come from the service's
// public URL whatever the request says (no open redirect), the answers are
// never cached, and a portal URL is never stored for an idempotent replay.
func TestBillingCheckoutAndPortal(t *testing.T) {
	t.Parallel()
	b := newFakeBilling()
	e := newBillingEnv(t, b)
	a := e.signup("Paying Co")
	viewer := e.createKey(a.key, "viewer", api.KeyRoleViewer).Secret
	member := e.createKey(a.key, "member", api.KeyRoleMember).Secret

	// No customer yet: nothing to manage.
	if p := e.do("POST", "/v1/billing/portal", a.key, nil).problem(t, http.StatusConflict); !strings.Contains(p.Detail, "checkout") {
		t.Errorf("portal before checkout: %+v", p)
	}
	for _, k := range []string{viewer, member} {
		e.do("POST", "/v1/billing/checkout", k, nil).problem(t, http.StatusForbidden)
	}
	// A client cannot choose where Stripe sends the user.
	e.do("POST", "/v1/billing/checkout", a.key, `{"success_url":"https://evil.example/x"}`, malformed()).
		problem(t, http.StatusBadRequest)
	hostile := []reqOpt{
		func(r *http.Request) { r.Host = "evil.example" },
		withHeader("X-Forwarded-Host", "evil.example"), withHeader("X-Forwarded-Proto", "http"),
		withHeader("Origin", "https://evil.example"), withHeader("Referer", "https://evil.example/billing"),
	}
	var red api.BillingRedirect
	r := e.do("POST", "/v1/billing/checkout", a.key, nil, hostile...).must(t, http.StatusOK, &red)
	if red.Url != "https://checkout.stripe.com/c/pay/cs_test_1" || r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("checkout: %+v, Cache-Control %q", red, r.header.Get("Cache-Control"))
	}
	b.mu.Lock()
	c := b.checkouts[0]
	b.mu.Unlock()
	if c.TenantID != a.id || !strings.HasPrefix(c.SuccessURL, billingPublicURL+"/") || !strings.HasPrefix(c.CancelURL, billingPublicURL+"/") {
		t.Errorf("checkout request %+v: redirects must be under %s", c, billingPublicURL)
	}

	// Idempotent checkout: the same session again, marked as a replay.
	var again api.BillingRedirect
	e.do("POST", "/v1/billing/checkout", a.key, nil, withHeader("Idempotency-Key", "co-1")).must(t, http.StatusOK, &again)
	r = e.do("POST", "/v1/billing/checkout", a.key, nil, withHeader("Idempotency-Key", "co-1")).must(t, http.StatusOK, &red)
	if red != again || r.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("checkout replay: %+v vs %+v (%v)", red, again, r.header)
	}

	r = e.do("POST", "/v1/billing/portal", a.key, nil, append(hostile, withHeader("Idempotency-Key", "portal-1"))...).must(t, http.StatusOK, &red)
	if !strings.HasPrefix(red.Url, "https://billing.stripe.com/p/session/") || r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("portal: %+v", red)
	}
	b.mu.Lock()
	ret := b.portals[0]
	b.mu.Unlock()
	if !strings.HasPrefix(ret, billingPublicURL+"/") {
		t.Errorf("portal return URL %q", ret)
	}
	// The portal URL is a credential: a replay does not hand it out again.
	r = e.do("POST", "/v1/billing/portal", a.key, nil, withHeader("Idempotency-Key", "portal-1"))
	if p := r.problem(t, http.StatusConflict); !strings.Contains(p.Detail, "not stored") || bytes.Contains(r.body, []byte("billing.stripe.com")) {
		t.Errorf("portal replay: %s", r.body)
	}
	var stored int
	if err := e.pool.QueryRow(context.Background(),
		`SELECT count(*) FROM idempotency_keys WHERE position('billing.stripe.com'::bytea in coalesce(body, ''::bytea)) > 0`).Scan(&stored); err != nil {
		t.Fatalf("checking stored responses: %v", err)
	} else if stored != 0 {
		t.Errorf("a portal URL was stored for replays")
	}
}

// TestBillingWebhook: deliveries reach the service byte for byte (the
// signature is checked over them by stripe-go), without an API key and
// without the Idempotency-Key machinery, whatever the query string.
func TestBillingWebhook(t *testing.T) {
	t.Parallel()
	b := newFakeBilling()
	e := newBillingEnv(t, b)

	// Odd but valid JSON: spacing, escapes, key order, a trailing newline.
	// Re-encoding any of it would break the signature.
	body := []byte("{\n  \"type\": \"ping.test\",\t\"id\":  \"evt_raw_1\", \"object\":\"event\",\n" +
		"  \"created\": 1700000000, \"data\": {\"object\": {\"name\": \"caf\\u00e9 \u2603 <&>\", \"n\": 1.50e0}}}\n")
	sig := b.sign(body)
	var res api.WebhookResult
	r := e.webhook(body, sig, withHeader("Content-Type", "application/json; charset=utf-8")).must(t, http.StatusOK, &res)
	if !bytes.Equal(b.lastPayload(), body) {
		t.Fatalf("the service got other bytes:\n%q\nsent:\n%q", b.lastPayload(), body)
	}
	if res.EventId != "evt_raw_1" || res.Type != "ping.test" || res.Outcome != api.WebhookResultOutcomeIgnored {
		t.Errorf("result %+v", res)
	}
	if r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q", r.header.Get("Cache-Control"))
	}
	// Redelivered: processed once.
	e.webhook(body, sig).must(t, http.StatusOK, &res)
	if res.Outcome != api.WebhookResultOutcomeDuplicate {
		t.Errorf("redelivery: %+v", res)
	}

	// One byte changed: the signature no longer holds.
	tampered := bytes.Replace(body, []byte("1.50e0"), []byte("1.51e0"), 1)
	p := e.webhook(tampered, sig).problem(t, http.StatusBadRequest)
	if !bytes.Equal(b.lastPayload(), tampered) || !strings.Contains(p.Detail, "signature") {
		t.Errorf("tampered: %+v", p)
	}

	// No API key needed, and a stray Authorization header changes nothing;
	// a query string on the configured endpoint URL is no reason to refuse.
	// The same Idempotency-Key on two events must not make the second a
	// 422: the event ID is the key.
	for i, opt := range []reqOpt{withHeader("Authorization", "Bearer fpk_garbage"), withHeader("Idempotency-Key", "same")} {
		ev := fmt.Appendf(nil, `{"id":"evt_opt_%d","object":"event","type":"ping.test","created":1700000000}`, i)
		e.do("POST", "/v1/billing/webhook?source=stripe", "", ev, withHeader("Stripe-Signature", b.sign(ev)), opt,
			withHeader("Idempotency-Key", "same")).must(t, http.StatusOK, &res)
		if res.EventId != fmt.Sprintf("evt_opt_%d", i) || res.Outcome != api.WebhookResultOutcomeIgnored {
			t.Errorf("delivery %d: %+v", i, res)
		}
	}

	// Refused before the service: no signature, too large, not JSON.
	n := len(b.payloads)
	if p := e.webhook(body, "", malformed()).problem(t, http.StatusBadRequest); !strings.Contains(p.Detail, "Stripe-Signature") {
		t.Errorf("unsigned: %+v", p)
	}
	big := append([]byte(`{"id":"evt_big","pad":"`), bytes.Repeat([]byte("x"), int(api.MaxWebhookBodyBytes))...)
	big = append(big, `"}`...)
	if p := e.webhook(big, b.sign(big)).problem(t, http.StatusRequestEntityTooLarge); !strings.Contains(p.Detail, "64 KiB") {
		t.Errorf("oversized: %+v", p)
	}
	e.webhook(body, sig, withHeader("Content-Type", "text/plain"), malformed()).problem(t, http.StatusUnsupportedMediaType)
	if len(b.payloads) != n {
		t.Errorf("a refused delivery reached the service")
	}
	// Exactly at the limit is accepted (then refused by the signature).
	atLimit := append([]byte(`{"pad":"`), bytes.Repeat([]byte("x"), int(api.MaxWebhookBodyBytes)-len(`{"pad":""}`))...)
	atLimit = append(atLimit, `"}`...)
	e.webhook(atLimit, sig).problem(t, http.StatusBadRequest)
	if !bytes.Equal(b.lastPayload(), atLimit) {
		t.Errorf("a body of exactly %d bytes did not reach the service whole", api.MaxWebhookBodyBytes)
	}
}

// TestWebhookRateLimit: the webhook has a per-address budget of its own.
func TestWebhookRateLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *api.Options) {
		o.WebhookRatePerMinute = 2
		o.EnrollRatePerMinute = 2
		o.TrustProxyHeaders = true
	})
	from := func(ip string) reqOpt { return withHeader("X-Real-IP", ip) }
	ev := []byte(`{"id":"evt_1","object":"event","type":"ping.test"}`)
	for range 2 {
		e.webhook(ev, "t=1,v1=00", from("198.51.100.1")).problem(t, http.StatusNotImplemented)
	}
	r := e.webhook(ev, "t=1,v1=00", from("198.51.100.1"))
	if p := r.problem(t, http.StatusTooManyRequests); !strings.Contains(p.Detail, "webhook") || r.header.Get("Retry-After") == "" {
		t.Errorf("rate limited: %+v", p)
	}
	// Another address, and the enrollment budget of the same address, are
	// untouched.
	e.webhook(ev, "t=1,v1=00", from("198.51.100.2")).problem(t, http.StatusNotImplemented)
	e.do("POST", "/v1/agent/nonce", "", api.AgentNonceRequest{PublicKey: newUserKey(t).pub}, from("198.51.100.1")).
		problem(t, http.StatusUnauthorized)
}

// TestUsage: GET /v1/usage over the real metering: the calendar-month
// period, one daily entry per day so far, the plan's limits (null =
// unlimited), current counts, and the projected charge on scale.
func TestUsage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Metered Co")
	viewer := e.createKey(a.key, "viewer", api.KeyRoleViewer).Secret
	e.createFleet(a.key, "alpha")
	e.createVehicle(a.key, "alpha", "V1", nil)
	e.createVehicle(a.key, "alpha", "V2", nil)
	e.do("POST", "/v1/grants", a.key, api.GrantCreate{Subscribe: &[]string{"fleet.prod.>"}, ExpiresAt: time.Now().Add(time.Hour)}).
		must(t, http.StatusCreated, nil)
	b := e.signup("Other Co") // its usage is not A's
	if _, err := e.svc.MeterUsage(context.Background()); err != nil {
		t.Fatalf("MeterUsage: %v", err)
	}

	// usage reads the usage, again if UTC midnight passed meanwhile.
	usage := func(key string) (api.Usage, time.Time) {
		t.Helper()
		for {
			before := time.Now().UTC()
			var u api.Usage
			e.do("GET", "/v1/usage", key, nil).must(t, http.StatusOK, &u)
			if after := time.Now().UTC(); after.YearDay() == before.YearDay() {
				return u, before
			}
		}
	}
	u, now := usage(viewer)
	monthStart := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	if !u.Period.Start.Equal(monthStart) || !u.Period.End.Equal(monthStart.AddDate(0, 1, 0)) {
		t.Errorf("period %+v, want the calendar month from %s", u.Period, monthStart)
	}
	if u.Plan != api.PlanFree || u.BillingStatus != api.BillingStatusNone || u.GraceUntil != nil || u.ProjectedCharge != nil {
		t.Errorf("usage %+v", u)
	}
	if u.Limits.Vehicles == nil || *u.Limits.Vehicles != controlplane.FreeVehicleLimit ||
		u.Limits.Grants == nil || *u.Limits.Grants != controlplane.FreeGrantLimit {
		t.Errorf("limits %+v", u.Limits)
	}
	if u.Current != (api.UsageCurrent{Vehicles: 2, VehiclesOnline: 0, ActiveGrants: 1}) {
		t.Errorf("current %+v", u.Current)
	}
	if len(u.Daily) != now.Day() {
		t.Fatalf("%d daily entries on day %d of the month", len(u.Daily), now.Day())
	}
	for i, d := range u.Daily {
		if want := monthStart.AddDate(0, 0, i).Format(time.DateOnly); d.Day != want {
			t.Errorf("daily[%d].day = %s, want %s", i, d.Day, want)
		}
	}
	if today := u.Daily[len(u.Daily)-1]; today.VehiclesRegistered != 2 || today.Plan != api.PlanFree {
		t.Errorf("today %+v", today)
	}
	if ub, _ := usage(b.key); ub.Current.Vehicles != 0 || ub.Daily[len(ub.Daily)-1].VehiclesRegistered != 0 {
		t.Errorf("tenant B sees %+v", ub)
	}

	// On scale: no limits, and a projected charge at the plan's price.
	if _, err := e.svc.ChangePlan(context.Background(), a.id, controlplane.PlanScale); err != nil {
		t.Fatal(err)
	}
	u, now = usage(viewer)
	if u.Plan != api.PlanScale || u.Limits.Vehicles != nil || u.Limits.Grants != nil {
		t.Errorf("scale usage %+v", u)
	}
	pc := u.ProjectedCharge
	remaining := int64(monthStart.AddDate(0, 1, -1).Day() - now.Day())
	if pc == nil || pc.Currency != "usd" || pc.UnitAmountCents != controlplane.DefaultScalePrice.VehicleDayCents ||
		pc.VehicleDays != 2 || pc.ProjectedVehicleDays != 2+2*remaining || pc.AmountCents != pc.ProjectedVehicleDays*pc.UnitAmountCents {
		t.Errorf("projected charge %+v (remaining days %d)", pc, remaining)
	}
}

// TestGoldenBilling pins the usage response (days normalised: their
// number and dates depend on today) and the 501 problem.
func TestGoldenBilling(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Golden Usage")
	e.createFleet(a.key, "survey")
	e.createVehicle(a.key, "survey", "px4-001", nil)
	if _, err := e.svc.MeterUsage(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.ChangePlan(context.Background(), a.id, controlplane.PlanScale); err != nil {
		t.Fatal(err)
	}
	r := e.do("GET", "/v1/usage", a.key, nil)
	var u api.Usage
	r.must(t, http.StatusOK, &u)
	u.Daily = u.Daily[len(u.Daily)-1:] // today
	u.Daily[0].Day = "<today>"
	if pc := u.ProjectedCharge; pc != nil {
		pc.ProjectedVehicleDays, pc.AmountCents = -1, -1 // by the days left in the month: TestUsage checks them
	}
	r.body, _ = json.Marshal(u)
	checkGolden(t, "usage", http.StatusOK, r,
		`"amount_cents":-1`, `"amount_cents":"<by-days-left>"`, `"projected_vehicle_days":-1`, `"projected_vehicle_days":"<by-days-left>"`)
	checkGolden(t, "problem_not_implemented", http.StatusNotImplemented, e.do("POST", "/v1/billing/checkout", a.key, nil))
}
