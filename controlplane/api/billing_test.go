package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/api"
	"github.com/fleetplane/fleetplane/controlplane/stripebilling"
	"github.com/fleetplane/fleetplane/internal/stripemock"
)

const (
	// apiWebhookSecret signs the test deliveries; the Stripe adapter is
	// configured with it, as an endpoint's secret would be.
	apiWebhookSecret = "whsec_api_test"
	apiScalePrice    = "price_api_scale"
	billingPublicURL = "https://fleetplane.example.com"
)

// billingEnv is an API server whose Service bills through the real Stripe
// adapter (controlplane/stripebilling) against stripe-mock, Stripe's own
// mock of its API. rec records what the adapter sent to Stripe.
type billingEnv struct {
	*env
	rec *stripemock.Recorder
}

// newBillingEnv starts the API with billing on. The binary's one
// stripe-mock (stripemock.Shared) serves every test: it keeps no state.
// On Linux it dies with the test binary (pgtest.Main ends in os.Exit).
func newBillingEnv(tb testing.TB, opts ...func(*api.Options)) *billingEnv {
	tb.Helper()
	rec := &stripemock.Recorder{}
	b, err := stripebilling.New(stripebilling.Config{
		SecretKey:     stripemock.TestKey,
		WebhookSecret: apiWebhookSecret,
		ScalePriceID:  apiScalePrice,
		APIBase:       stripemock.Shared(tb).URL,
		HTTPClient:    rec.Client(),
	})
	if err != nil {
		tb.Fatal(err)
	}
	e := newEnvConfig(tb, func(c *controlplane.Config) {
		c.Billing = b
		c.PublicURL = billingPublicURL
	}, opts...)
	return &billingEnv{env: e, rec: rec}
}

// stripeEvent is a webhook payload as Stripe sends it.
func stripeEvent(id, typ string, created time.Time, obj map[string]any) []byte {
	b, err := json.Marshal(map[string]any{
		"id": id, "object": "event", "type": typ, "created": created.Unix(),
		"api_version": "2023-10-16", "livemode": false, "pending_webhooks": 1,
		"data": map[string]any{"object": obj},
	})
	if err != nil {
		panic(err)
	}
	return b
}

// signEvent returns the Stripe-Signature header of payload, made the way
// Stripe makes it, with the endpoint's secret.
func signEvent(payload []byte) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{
		Payload: payload, Secret: apiWebhookSecret, Timestamp: time.Now(),
	}).Header
}

// webhook posts a delivery; body is sent byte for byte.
func (e *env) webhook(body []byte, signature string, opts ...reqOpt) *response {
	e.tb.Helper()
	if signature != "" {
		opts = append([]reqOpt{withHeader("Stripe-Signature", signature)}, opts...)
	}
	return e.do("POST", "/v1/billing/webhook", "", body, opts...)
}

// stripeRequests returns the requests sent to Stripe since the last call
// (and forgets them).
func (e *billingEnv) stripeRequests() []stripemock.Request {
	reqs := e.rec.Requests()
	e.rec.Reset()
	return reqs
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

// TestBillingCheckoutAndPortal: the redirect URLs Stripe is given come from
// the service's public URL whatever the request says (no open redirect),
// the answers are never cached, an idempotent replay never reaches Stripe
// again, and a portal URL is never stored for a replay.
func TestBillingCheckoutAndPortal(t *testing.T) {
	t.Parallel()
	e := newBillingEnv(t)
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
	if reqs := e.stripeRequests(); len(reqs) != 0 {
		t.Fatalf("refused requests reached Stripe: %+v", reqs)
	}
	hostile := []reqOpt{
		func(r *http.Request) { r.Host = "evil.example" },
		withHeader("X-Forwarded-Host", "evil.example"), withHeader("X-Forwarded-Proto", "http"),
		withHeader("Origin", "https://evil.example"), withHeader("Referer", "https://evil.example/billing"),
	}
	noEvil := func(what string, reqs []stripemock.Request) {
		t.Helper()
		for _, r := range reqs {
			for k, vs := range r.Form {
				for _, v := range vs {
					if strings.Contains(v, "evil.example") {
						t.Errorf("%s: %s %s sent %s=%q to Stripe", what, r.Method, r.Path, k, v)
					}
				}
			}
		}
	}
	var red api.BillingRedirect
	r := e.do("POST", "/v1/billing/checkout", a.key, nil, hostile...).must(t, http.StatusOK, &red)
	if !strings.HasPrefix(red.Url, "https://checkout.stripe.com/") || r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("checkout: %+v, Cache-Control %q", red, r.header.Get("Cache-Control"))
	}
	// What Stripe was asked: the customer once (keyed by tenant), then the
	// session with redirects under the public URL.
	reqs := e.stripeRequests()
	noEvil("checkout", reqs)
	if len(reqs) != 2 || reqs[0].Path != "/v1/customers" || reqs[1].Path != "/v1/checkout/sessions" {
		t.Fatalf("checkout sent %+v", reqs)
	}
	if k := reqs[0].IdempotencyKey; k != stripebilling.CustomerIdempotencyKey(a.id) || reqs[0].Form.Get("metadata[tenant_id]") != a.id {
		t.Errorf("customer creation %+v", reqs[0])
	}
	var customer string
	if err := e.pool.QueryRow(context.Background(), `SELECT coalesce(stripe_customer_id, '') FROM tenants WHERE id = $1`, a.id).Scan(&customer); err != nil || customer == "" {
		t.Fatalf("stored customer %q (%v)", customer, err)
	}
	for k, want := range map[string]string{
		"mode": "subscription", "customer": customer, "client_reference_id": a.id, "line_items[0][price]": apiScalePrice,
		"success_url": billingPublicURL + "/billing?checkout=success", "cancel_url": billingPublicURL + "/billing?checkout=cancel",
	} {
		if got := reqs[1].Form.Get(k); got != want {
			t.Errorf("checkout session %s = %q, want %q", k, got, want)
		}
	}

	// Idempotent checkout: the same answer again, marked as a replay, and
	// Stripe is not asked twice (the customer exists: only a session).
	var again api.BillingRedirect
	e.do("POST", "/v1/billing/checkout", a.key, nil, withHeader("Idempotency-Key", "co-1")).must(t, http.StatusOK, &again)
	if reqs := e.stripeRequests(); len(reqs) != 1 || reqs[0].Path != "/v1/checkout/sessions" {
		t.Errorf("second checkout sent %+v", reqs)
	}
	r = e.do("POST", "/v1/billing/checkout", a.key, nil, withHeader("Idempotency-Key", "co-1")).must(t, http.StatusOK, &red)
	if red != again || r.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("checkout replay: %+v vs %+v (%v)", red, again, r.header)
	}
	if reqs := e.stripeRequests(); len(reqs) != 0 {
		t.Errorf("a replayed checkout reached Stripe: %+v", reqs)
	}

	r = e.do("POST", "/v1/billing/portal", a.key, nil, append(hostile, withHeader("Idempotency-Key", "portal-1"))...).must(t, http.StatusOK, &red)
	portalURL := red.Url
	if !strings.HasPrefix(portalURL, "https://") || r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("portal: %+v, Cache-Control %q", red, r.header.Get("Cache-Control"))
	}
	reqs = e.stripeRequests()
	noEvil("portal", reqs)
	if len(reqs) != 1 || reqs[0].Path != "/v1/billing_portal/sessions" ||
		reqs[0].Form.Get("customer") != customer || reqs[0].Form.Get("return_url") != billingPublicURL+"/billing" {
		t.Errorf("portal sent %+v", reqs)
	}
	// The portal URL is a credential: a replay does not hand it out again
	// (nor open another session).
	r = e.do("POST", "/v1/billing/portal", a.key, nil, withHeader("Idempotency-Key", "portal-1"))
	if p := r.problem(t, http.StatusConflict); !strings.Contains(p.Detail, "not stored") || bytes.Contains(r.body, []byte(portalURL)) {
		t.Errorf("portal replay: %s", r.body)
	}
	if reqs := e.stripeRequests(); len(reqs) != 0 {
		t.Errorf("a replayed portal request reached Stripe: %+v", reqs)
	}
	var stored int
	if err := e.pool.QueryRow(context.Background(),
		`SELECT count(*) FROM idempotency_keys WHERE position($1::bytea in coalesce(body, ''::bytea)) > 0`, []byte(portalURL)).Scan(&stored); err != nil {
		t.Fatalf("checking stored responses: %v", err)
	} else if stored != 0 {
		t.Errorf("a portal URL was stored for replays")
	}
	if logs := e.logs.String(); strings.Contains(logs, stripemock.TestKey) || strings.Contains(logs, apiWebhookSecret) {
		t.Errorf("a Stripe secret reached the logs")
	}
}

// TestBillingWebhook: deliveries reach the service byte for byte (the real
// Stripe adapter checks the signature over them with the endpoint's
// secret), without an API key and without the Idempotency-Key machinery,
// whatever the query string; refused deliveries never reach it.
func TestBillingWebhook(t *testing.T) {
	t.Parallel()
	e := newBillingEnv(t)
	a := e.signup("Hooked Co")
	var res api.WebhookResult

	// Odd but valid JSON: spacing, escapes, key order, a trailing newline.
	// Re-encoding any of it would break the signature. It completes a
	// checkout, so the service acted on exactly these bytes.
	created := time.Now().Add(-time.Minute).Unix()
	body := fmt.Appendf(nil, "{\n  \"type\": \"checkout.session.completed\",\t\"id\":  \"evt_raw_1\", \"object\":\"event\",\n"+
		"  \"api_version\": \"2023-10-16\", \"created\": %d, \"livemode\": false,\n"+
		"  \"data\": {\"object\": {\"object\": \"checkout.session\", \"id\": \"cs_raw_1\", \"mode\": \"subscription\",\n"+
		"    \"status\": \"complete\", \"payment_status\": \"paid\", \"customer\": \"cus_raw_1\", \"subscription\": \"sub_raw_1\",\n"+
		"    \"client_reference_id\": %q, \"metadata\": {\"note\": \"caf\\u00e9 \u2603 <&>\"}, \"amount_total\": 1.50e0}}}\n", created, a.id)
	sig := signEvent(body)
	r := e.webhook(body, sig, withHeader("Content-Type", "application/json; charset=utf-8")).must(t, http.StatusOK, &res)
	if res.EventId != "evt_raw_1" || res.Type != "checkout.session.completed" || res.Outcome != api.WebhookResultOutcomeApplied {
		t.Errorf("result %+v", res)
	}
	if r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q", r.header.Get("Cache-Control"))
	}
	var u api.Usage
	e.do("GET", "/v1/usage", a.key, nil).must(t, http.StatusOK, &u)
	if u.Plan != api.PlanScale || u.BillingStatus != api.BillingStatusActive {
		t.Errorf("after the checkout event: plan %s, billing %s", u.Plan, u.BillingStatus)
	}
	// Redelivered: processed once.
	e.webhook(body, sig).must(t, http.StatusOK, &res)
	if res.Outcome != api.WebhookResultOutcomeDuplicate {
		t.Errorf("redelivery: %+v", res)
	}

	// One byte changed: the signature no longer holds (the adapter says so:
	// the body reached the service).
	tampered := bytes.Replace(body, []byte("1.50e0"), []byte("1.51e0"), 1)
	p := e.webhook(tampered, sig).problem(t, http.StatusBadRequest)
	if !strings.Contains(p.Detail, "signature does not match the payload") {
		t.Errorf("tampered: %+v", p)
	}
	// Signed with another secret, or too long ago: refused by the adapter.
	other := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: "whsec_other", Timestamp: time.Now()}).Header
	if p := e.webhook(body, other).problem(t, http.StatusBadRequest); !strings.Contains(p.Detail, "signature does not match") {
		t.Errorf("other secret: %+v", p)
	}
	stale := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: apiWebhookSecret, Timestamp: time.Now().Add(-6 * time.Minute)}).Header
	if p := e.webhook(body, stale).problem(t, http.StatusBadRequest); !strings.Contains(p.Detail, "older than 5m0s") {
		t.Errorf("stale: %+v", p)
	}

	// No API key needed, and a stray Authorization header changes nothing;
	// a query string on the configured endpoint URL is no reason to refuse.
	// The same Idempotency-Key on two events must not make the second a
	// 422: the event ID is the key.
	for i, opt := range []reqOpt{withHeader("Authorization", "Bearer fpk_garbage"), withHeader("Idempotency-Key", "same")} {
		ev := stripeEvent(fmt.Sprintf("evt_opt_%d", i), "customer.updated", time.Now(),
			map[string]any{"id": "cus_raw_1", "object": "customer"})
		e.do("POST", "/v1/billing/webhook?source=stripe", "", ev, withHeader("Stripe-Signature", signEvent(ev)), opt,
			withHeader("Idempotency-Key", "same")).must(t, http.StatusOK, &res)
		if res.EventId != fmt.Sprintf("evt_opt_%d", i) || res.Outcome != api.WebhookResultOutcomeIgnored {
			t.Errorf("delivery %d: %+v", i, res)
		}
	}

	// Refused before the service: no signature, too large, not JSON. Each
	// is a correctly signed event the service would record: nothing is.
	pending := stripeEvent("evt_refused", "customer.updated", time.Now(), map[string]any{"id": "cus_raw_1", "object": "customer"})
	before := snapshot(t, e.pool)
	if p := e.webhook(pending, "", malformed()).problem(t, http.StatusBadRequest); !strings.Contains(p.Detail, "missing Stripe-Signature") {
		t.Errorf("unsigned: %+v", p)
	}
	// padded is a signed event of exactly n bytes.
	padded := func(id string, n int) []byte {
		t.Helper()
		ev := func(pad int) []byte {
			return stripeEvent(id, "customer.updated", time.Now(), map[string]any{"id": "cus_raw_1", "object": "customer",
				"metadata": map[string]any{"pad": strings.Repeat("x", pad)}})
		}
		b := ev(n - len(ev(0)))
		if len(b) != n {
			t.Fatalf("padded event of %d bytes, want %d", len(b), n)
		}
		return b
	}
	big := padded("evt_big", int(api.MaxWebhookBodyBytes)+1)
	if p := e.webhook(big, signEvent(big)).problem(t, http.StatusRequestEntityTooLarge); !strings.Contains(p.Detail, "64 KiB") {
		t.Errorf("oversized: %+v", p)
	}
	e.webhook(pending, signEvent(pending), withHeader("Content-Type", "text/plain"), malformed()).problem(t, http.StatusUnsupportedMediaType)
	if d := diffSnapshots(before, snapshot(t, e.pool)); d != "" {
		t.Errorf("a refused delivery reached the service: %s", d)
	}
	// The same event delivered properly is new to the service.
	if e.webhook(pending, signEvent(pending)).must(t, http.StatusOK, &res); res.Outcome != api.WebhookResultOutcomeIgnored {
		t.Errorf("the refused event, delivered: %+v", res)
	}
	// Exactly at the limit: the whole body reaches the service (its
	// signature covers every byte) and is processed.
	atLimit := padded("evt_at_limit", int(api.MaxWebhookBodyBytes))
	if e.webhook(atLimit, signEvent(atLimit)).must(t, http.StatusOK, &res); res.EventId != "evt_at_limit" || res.Outcome != api.WebhookResultOutcomeIgnored {
		t.Errorf("a signed event of exactly %d bytes: %+v", api.MaxWebhookBodyBytes, res)
	}
}

// TestWebhookRateLimit: the webhook has a per-address budget of its own.
func TestWebhookRateLimit(t *testing.T) {
	t.Parallel()
	e := newBillingEnv(t, func(o *api.Options) {
		o.WebhookRatePerMinute = 2
		o.EnrollRatePerMinute = 2
		o.TrustProxyHeaders = true
	})
	from := func(ip string) reqOpt { return withHeader("X-Real-IP", ip) }
	ev := stripeEvent("evt_rl", "customer.updated", time.Now(), map[string]any{"id": "cus_rl", "object": "customer"})
	sig := signEvent(ev)
	var res api.WebhookResult
	for _, want := range []api.WebhookResultOutcome{api.WebhookResultOutcomeIgnored, api.WebhookResultOutcomeDuplicate} {
		if e.webhook(ev, sig, from("198.51.100.1")).must(t, http.StatusOK, &res); res.Outcome != want {
			t.Errorf("outcome %q, want %q", res.Outcome, want)
		}
	}
	r := e.webhook(ev, sig, from("198.51.100.1"))
	if p := r.problem(t, http.StatusTooManyRequests); !strings.Contains(p.Detail, "webhook") || r.header.Get("Retry-After") == "" {
		t.Errorf("rate limited: %+v", p)
	}
	// Another address, and the enrollment budget of the same address, are
	// untouched.
	e.webhook(ev, sig, from("198.51.100.2")).must(t, http.StatusOK, nil)
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
