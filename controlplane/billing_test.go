package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/stripebilling"
	"github.com/fleetplane/fleetplane/internal/natstest"
	"github.com/fleetplane/fleetplane/internal/stripemock"
)

const testWebhookSecret = "whsec_test_fleetplane"

// billingEnv is an identity env (real Postgres, a real hub node) whose
// Service bills through the real Stripe adapter against stripe-mock.
type billingEnv struct {
	*identityEnv
	rec *stripemock.Recorder
}

var sharedMock = sync.OnceValues(func() (*stripemock.Server, error) {
	return stripemock.Start(context.Background(), nil)
})

func newBillingEnv(tb testing.TB) *billingEnv {
	tb.Helper()
	mock, err := sharedMock()
	if err != nil {
		tb.Fatalf("starting stripe-mock: %v", err)
	}
	rec := &stripemock.Recorder{}
	b, err := stripebilling.New(stripebilling.Config{
		SecretKey: "sk_test_fleetplane", WebhookSecret: testWebhookSecret, ScalePriceID: "price_scale",
		APIBase: mock.URL, HTTPClient: rec.Client(),
	})
	if err != nil {
		tb.Fatal(err)
	}
	e := newIdentityEnv(tb, func(c *controlplane.Config) {
		c.Billing = b
		c.PublicURL = "https://fleet.example"
	})
	return &billingEnv{identityEnv: e, rec: rec}
}

// stripeEvent is a webhook payload as Stripe sends it.
func stripeEvent(id, typ string, created time.Time, obj map[string]any) []byte {
	b, err := json.Marshal(map[string]any{
		"id": id, "object": "event", "type": typ, "created": created.Unix(),
		"api_version": "2023-10-16", "livemode": false,
		"data": map[string]any{"object": obj},
	})
	if err != nil {
		panic(err)
	}
	return b
}

func sign(payload []byte) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{
		Payload: payload, Secret: testWebhookSecret, Timestamp: time.Now(),
	}).Header
}

func subscriptionObj(id, customer, status string) map[string]any {
	now := time.Now()
	return map[string]any{
		"id": id, "object": "subscription", "customer": customer, "status": status,
		"current_period_start": now.Add(-time.Hour).Unix(), "current_period_end": now.AddDate(0, 1, 0).Unix(),
		"cancel_at_period_end": false,
	}
}

func (e *billingEnv) deliver(tb testing.TB, payload []byte) *controlplane.WebhookResult {
	tb.Helper()
	res, err := e.svc.HandleBillingWebhook(context.Background(), payload, sign(payload))
	if err != nil {
		tb.Fatalf("webhook: %v", err)
	}
	return res
}

func (e *billingEnv) tenantState(tb testing.TB, ctx context.Context) *controlplane.Tenant {
	tb.Helper()
	t, err := e.svc.Tenant(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

// checkout runs BillingCheckout and returns the tenant's customer ID.
func (e *billingEnv) checkout(tb testing.TB, ctx context.Context) string {
	tb.Helper()
	r, err := e.svc.BillingCheckout(ctx)
	if err != nil {
		tb.Fatalf("BillingCheckout: %v", err)
	}
	if !strings.HasPrefix(r.URL, "https://") {
		tb.Fatalf("checkout URL %q", r.URL)
	}
	t := e.tenantState(tb, ctx)
	if t.StripeCustomerID == "" {
		tb.Fatal("no customer stored after checkout")
	}
	return t.StripeCustomerID
}

func accountLeafLimit(tb testing.TB, e *billingEnv, tenantID string) int64 {
	tb.Helper()
	var token string
	if err := e.pool.QueryRow(context.Background(), `SELECT jwt FROM nats_accounts WHERE tenant_id = $1`, tenantID).Scan(&token); err != nil {
		tb.Fatal(err)
	}
	claims, err := jwt.DecodeAccountClaims(token)
	if err != nil {
		tb.Fatal(err)
	}
	return claims.Limits.LeafNodeConn
}

// TestBillingFreeScaleCancelled walks a tenant from free to scale (Stripe
// checkout and its webhook) to cancelled: the API's limits, the account
// JWT's leaf limit on a real hub, and the usage all follow.
func TestBillingFreeScaleCancelled(t *testing.T) {
	t.Parallel()
	e := newBillingEnv(t)
	ctx := e.tenant(t, "Acme")
	tn := e.tenantState(t, ctx)
	bg := context.Background()

	// Free: ten vehicles, each with a leaf on the hub; the 11th is refused
	// by the API and the account JWT carries the leaf limit.
	token := e.token(t, ctx, 20)
	keys := make([]vehicleKey, controlplane.FreeVehicleLimit+2)
	for i := range keys {
		keys[i] = newVehicleKey(t)
	}
	for i := range controlplane.FreeVehicleLimit {
		e.runLeaf(t, e.enroll(t, token, keys[i], fmt.Sprintf("V%02d", i)), keys[i])
		natstest.WaitLeafCount(t, e.hub, i+1, 5*time.Second)
	}
	_, err := e.svc.Enroll(bg, controlplane.EnrollRequest{Token: token, PublicKey: keys[10].pub, VehicleID: "V10"})
	WantCode(t, err, controlplane.EPAYMENTREQUIRED)
	if got := accountLeafLimit(t, e, tn.ID); got != controlplane.FreeVehicleLimit {
		t.Fatalf("free account leaf limit %d", got)
	}

	// Checkout: a customer (with its per-tenant idempotency key) and a
	// session for the scale price.
	e.rec.Reset()
	customer := e.checkout(t, ctx)
	reqs := e.rec.Requests()
	if len(reqs) != 2 || reqs[0].Path != "/v1/customers" || reqs[1].Path != "/v1/checkout/sessions" {
		t.Fatalf("checkout requests: %+v", reqs)
	}
	if k := reqs[0].IdempotencyKey; k != "fleetplane-customer-"+tn.ID {
		t.Errorf("customer idempotency key %q", k)
	}
	f := reqs[1].Form
	for k, want := range map[string]string{
		"mode": "subscription", "customer": customer, "client_reference_id": tn.ID,
		"line_items[0][price]": "price_scale", "success_url": "https://fleet.example/billing?checkout=success",
		"cancel_url": "https://fleet.example/billing?checkout=cancel",
	} {
		if got := f.Get(k); got != want {
			t.Errorf("checkout %s = %q, want %q", k, got, want)
		}
	}

	// The checkout completes: scale; the account loses its leaf limit and
	// the 11th vehicle enrolls and connects.
	created := time.Now().Add(-time.Minute)
	res := e.deliver(t, stripeEvent("evt_checkout", controlplane.EventCheckoutCompleted, created, map[string]any{
		"id": "cs_1", "object": "checkout.session", "mode": "subscription", "status": "complete",
		"payment_status": "paid", "customer": customer, "client_reference_id": tn.ID, "subscription": "sub_1",
	}))
	if res.Outcome != controlplane.OutcomeApplied {
		t.Fatalf("checkout event outcome %q", res.Outcome)
	}
	if st := e.tenantState(t, ctx); st.Plan != controlplane.PlanScale || st.BillingStatus != controlplane.BillingActive {
		t.Fatalf("after checkout: plan %s, billing %s", st.Plan, st.BillingStatus)
	}
	if got := accountLeafLimit(t, e, tn.ID); got != jwt.NoLimit {
		t.Fatalf("scale account leaf limit %d", got)
	}
	creds10 := e.enroll(t, token, keys[10], "V10")
	leaf10 := e.runLeaf(t, creds10, keys[10])
	natstest.WaitLeafCount(t, e.hub, controlplane.FreeVehicleLimit+1, 10*time.Second)

	// Usage: eleven vehicle-days today on scale, reported once to Stripe
	// however often the job runs.
	if _, err := e.svc.MeterUsage(bg); err != nil {
		t.Fatal(err)
	}
	u, err := e.svc.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	today := u.Daily[len(u.Daily)-1]
	if u.Plan != controlplane.PlanScale || today.VehiclesRegistered != 11 || today.Plan != controlplane.PlanScale {
		t.Fatalf("usage: plan %s, today %+v", u.Plan, today)
	}
	if u.Limits.Vehicles != 0 || u.Projected == nil || u.Projected.VehicleDays < 11 {
		t.Fatalf("usage limits %+v, projected %+v", u.Limits, u.Projected)
	}
	e.rec.Reset()
	for range 2 {
		if _, err := e.svc.ReportUsage(bg); err != nil {
			t.Fatal(err)
		}
	}
	meter := e.rec.Requests()
	if len(meter) != 1 || meter[0].Path != "/v1/billing/meter_events" {
		t.Fatalf("usage reports sent: %+v", meter)
	}
	mf := meter[0].Form
	if mf.Get("payload[value]") != "11" || mf.Get("payload[stripe_customer_id]") != customer ||
		mf.Get("event_name") != "fleetplane_vehicle_days" || meter[0].IdempotencyKey != mf.Get("identifier") {
		t.Fatalf("meter event %v (idempotency key %q)", mf, meter[0].IdempotencyKey)
	}

	// Out of order: the cancellation arrives, then a stale update from
	// before it. The tenant ends on free with a grace; the stale event
	// changes nothing.
	later := time.Now()
	res = e.deliver(t, stripeEvent("evt_deleted", controlplane.EventSubscriptionDeleted, later,
		subscriptionObj("sub_1", customer, "canceled")))
	if res.Outcome != controlplane.OutcomeApplied {
		t.Fatalf("deleted outcome %q", res.Outcome)
	}
	res = e.deliver(t, stripeEvent("evt_updated_old", controlplane.EventSubscriptionUpdated, later.Add(-30*time.Second),
		subscriptionObj("sub_1", customer, "active")))
	if res.Outcome != controlplane.OutcomeStale {
		t.Fatalf("stale update outcome %q", res.Outcome)
	}
	st := e.tenantState(t, ctx)
	if st.Plan != controlplane.PlanFree || st.BillingStatus != controlplane.BillingCanceled || st.GraceUntil == nil {
		t.Fatalf("after cancel: plan %s, billing %s, grace %v", st.Plan, st.BillingStatus, st.GraceUntil)
	}
	_, err = e.svc.Enroll(bg, controlplane.EnrollRequest{Token: token, PublicKey: keys[11].pub, VehicleID: "V11"})
	WantCode(t, err, controlplane.EPAYMENTREQUIRED)
	// During the grace the eleven keep the scale leaf limit; after it the
	// account JWT has the free plan's, and a reconnecting 11th is refused.
	if got := accountLeafLimit(t, e, tn.ID); got != jwt.NoLimit {
		t.Fatalf("leaf limit during the grace %d", got)
	}
	controlplane.SetNow(e.svc, func() time.Time { return time.Now().Add(controlplane.DefaultPlanGrace + time.Hour) })
	if n, err := e.svc.ApplyPlanGraceExpiry(bg); err != nil || n != 1 {
		t.Fatalf("ApplyPlanGraceExpiry = %d, %v", n, err)
	}
	controlplane.SetNow(e.svc, time.Now)
	if got := accountLeafLimit(t, e, tn.ID); got != controlplane.FreeVehicleLimit {
		t.Fatalf("leaf limit after the grace %d", got)
	}
	// Leaf connections up when the limit dropped may stay; a new 11th
	// connection is refused: take V10's leaf down and bring a fresh one up.
	leaf10.Shutdown()
	natstest.WaitLeafCount(t, e.hub, controlplane.FreeVehicleLimit, 10*time.Second)
	again := e.runLeaf(t, creds10, keys[10])
	time.Sleep(time.Second) // it retries every 100 ms
	if n := e.hub.NumLeafNodes(); n != controlplane.FreeVehicleLimit || again.NumLeafNodes() != 0 {
		t.Fatalf("after the grace: %d leaf connections (want %d), the 11th connected: %v",
			n, controlplane.FreeVehicleLimit, again.NumLeafNodes() != 0)
	}
	if u, err = e.svc.Usage(ctx); err != nil || u.Plan != controlplane.PlanFree || u.Limits.Vehicles != controlplane.FreeVehicleLimit {
		t.Fatalf("usage after cancel: %+v, %v", u, err)
	}
}

// TestBillingWebhooks: signature, staleness, replays, unknown types,
// out-of-order delivery and concurrent duplicates, each handled once.
func TestBillingWebhooks(t *testing.T) {
	t.Parallel()
	e := newBillingEnv(t)
	ctx := e.tenant(t, "Acme")
	customer := e.checkout(t, ctx)
	bg := context.Background()
	now := time.Now()

	created := stripeEvent("evt_created", controlplane.EventSubscriptionCreated, now.Add(-2*time.Minute),
		subscriptionObj("sub_9", customer, "incomplete"))

	t.Run("wrongly signed", func(t *testing.T) {
		bad := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: created, Secret: "whsec_other", Timestamp: time.Now()}).Header
		_, err := e.svc.HandleBillingWebhook(bg, created, bad)
		WantCode(t, err, controlplane.EINVALID)
		_, err = e.svc.HandleBillingWebhook(bg, append([]byte(" "), created...), sign(created))
		WantCode(t, err, controlplane.EINVALID)
	})
	t.Run("stale timestamp", func(t *testing.T) {
		old := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: created, Secret: testWebhookSecret,
			Timestamp: time.Now().Add(-6 * time.Minute)}).Header
		_, err := e.svc.HandleBillingWebhook(bg, created, old)
		WantCode(t, err, controlplane.EINVALID)
	})
	if st := e.tenantState(t, ctx); st.Plan != controlplane.PlanFree {
		t.Fatalf("refused deliveries changed the plan to %s", st.Plan)
	}

	// Out of order: active (newer) first, then created/incomplete (older).
	active := stripeEvent("evt_active", controlplane.EventSubscriptionUpdated, now.Add(-time.Minute),
		subscriptionObj("sub_9", customer, "active"))
	if r := e.deliver(t, active); r.Outcome != controlplane.OutcomeApplied {
		t.Fatalf("active: %q", r.Outcome)
	}
	if r := e.deliver(t, created); r.Outcome != controlplane.OutcomeStale {
		t.Fatalf("late created: %q", r.Outcome)
	}
	if st := e.tenantState(t, ctx); st.Plan != controlplane.PlanScale {
		t.Fatalf("plan %s after active", st.Plan)
	}

	// Replay and concurrent duplicates: one applies, the others are
	// duplicates, the audit log has one entry.
	failed := stripeEvent("evt_failed", controlplane.EventInvoicePaymentFailed, now, map[string]any{
		"id": "in_1", "object": "invoice", "customer": customer, "subscription": "sub_9",
		"amount_due": 1500, "currency": "usd", "attempt_count": 1, "hosted_invoice_url": "https://invoice.example/in_1",
	})
	var wg sync.WaitGroup
	outcomes := make([]string, 4)
	for i := range outcomes {
		wg.Go(func() { outcomes[i] = e.deliver(t, failed).Outcome })
	}
	wg.Wait()
	applied := 0
	for _, o := range outcomes {
		switch o {
		case controlplane.OutcomeApplied:
			applied++
		case controlplane.OutcomeDuplicate:
		default:
			t.Fatalf("outcome %q", o)
		}
	}
	if applied != 1 {
		t.Fatalf("outcomes %v, want exactly one applied", outcomes)
	}
	if st := e.tenantState(t, ctx); st.BillingStatus != controlplane.BillingPastDue {
		t.Fatalf("billing status %s after a failed payment", st.BillingStatus)
	}
	var n int
	if err := e.pool.QueryRow(bg, `SELECT count(*) FROM audit_events WHERE action = 'billing.payment_failed'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d payment_failed audit events (%v)", n, err)
	}
	paid := stripeEvent("evt_paid", controlplane.EventInvoicePaid, now.Add(time.Second), map[string]any{
		"id": "in_1", "object": "invoice", "customer": customer, "subscription": "sub_9", "amount_paid": 1500, "currency": "usd",
	})
	e.deliver(t, paid)
	if st := e.tenantState(t, ctx); st.BillingStatus != controlplane.BillingActive {
		t.Fatalf("billing status %s after the invoice was paid", st.BillingStatus)
	}
	// A failure older than that payment, delivered late, changes nothing.
	lateFailed := stripeEvent("evt_failed_late", controlplane.EventInvoicePaymentFailed, now.Add(-time.Minute), map[string]any{
		"id": "in_0", "object": "invoice", "customer": customer, "subscription": "sub_9", "amount_due": 1500, "currency": "usd",
	})
	if r := e.deliver(t, lateFailed); r.Outcome != controlplane.OutcomeStale {
		t.Fatalf("late payment failure: %q", r.Outcome)
	}
	if st := e.tenantState(t, ctx); st.BillingStatus != controlplane.BillingActive {
		t.Fatalf("billing status %s after a late payment failure", st.BillingStatus)
	}

	// Unknown types and unknown customers are recorded and ignored.
	if r := e.deliver(t, stripeEvent("evt_other", "customer.updated", now, map[string]any{"id": customer, "object": "customer"})); r.Outcome != controlplane.OutcomeIgnored {
		t.Fatalf("unknown type: %q", r.Outcome)
	}
	if r := e.deliver(t, stripeEvent("evt_stranger", controlplane.EventSubscriptionUpdated, now,
		subscriptionObj("sub_x", "cus_stranger", "active"))); r.Outcome != controlplane.OutcomeUnknownTenant {
		t.Fatalf("unknown customer: %q", r.Outcome)
	}
	// Only a completed checkout binds a customer to a tenant by the tenant
	// ID it carries: a subscription event naming another tenant (one
	// without a customer) in its metadata binds nothing.
	otherCtx := e.tenant(t, "Other")
	other := e.tenantState(t, otherCtx)
	named := subscriptionObj("sub_y", "cus_unbound", "active")
	named["metadata"] = map[string]any{"tenant_id": other.ID}
	if r := e.deliver(t, stripeEvent("evt_named", controlplane.EventSubscriptionCreated, now, named)); r.Outcome != controlplane.OutcomeUnknownTenant {
		t.Fatalf("subscription naming a tenant: %q", r.Outcome)
	}
	if st := e.tenantState(t, otherCtx); st.StripeCustomerID != "" || st.Plan != controlplane.PlanFree {
		t.Fatalf("a subscription event bound customer %q / plan %s", st.StripeCustomerID, st.Plan)
	}
	if r := e.deliver(t, active); r.Outcome != controlplane.OutcomeDuplicate {
		t.Fatalf("replay: %q", r.Outcome)
	}
}

// TestUsageReportRetried: a report whose answer is lost is sent again with
// the same identifier and idempotency key, never as a second report.
func TestUsageReportRetried(t *testing.T) {
	t.Parallel()
	e := newBillingEnv(t)
	ctx := e.tenant(t, "Acme")
	customer := e.checkout(t, ctx)
	tn := e.tenantState(t, ctx)
	e.deliver(t, stripeEvent("evt_a", controlplane.EventSubscriptionCreated, time.Now(), subscriptionObj("sub_r", customer, "active")))
	createVehicles(t, e.svc, ctx, 0, 3)
	bg := context.Background()
	if _, err := e.svc.MeterUsage(bg); err != nil {
		t.Fatal(err)
	}

	e.rec.Reset()
	e.rec.FailAfter(1) // the first report reaches stripe-mock, its answer is lost
	if _, err := e.svc.ReportUsage(bg); err == nil {
		t.Fatal("ReportUsage with a lost answer succeeded")
	}
	e.rec.FailAfter(0)
	createVehicles(t, e.svc, ctx, 3, 2) // two more vehicles meanwhile
	if _, err := e.svc.MeterUsage(bg); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.ReportUsage(bg); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.ReportUsage(bg); err != nil {
		t.Fatal(err)
	}
	reqs := e.rec.Requests()
	// First send (lost), its resend, then the delta of two.
	if len(reqs) != 3 {
		t.Fatalf("%d meter events sent, want 3: %+v", len(reqs), reqs)
	}
	if reqs[0].IdempotencyKey != reqs[1].IdempotencyKey || reqs[0].Form.Get("identifier") != reqs[1].Form.Get("identifier") ||
		reqs[1].Form.Get("payload[value]") != "3" {
		t.Fatalf("the resend differs: %v / %v", reqs[0], reqs[1])
	}
	if reqs[2].Form.Get("payload[value]") != "2" || reqs[2].IdempotencyKey == reqs[0].IdempotencyKey {
		t.Fatalf("the delta report: %v", reqs[2])
	}
	var sum int64
	if err := e.pool.QueryRow(bg, `SELECT sum(quantity) FROM usage_reports WHERE tenant_id = $1 AND reported_at IS NOT NULL`, tn.ID).Scan(&sum); err != nil || sum != 5 {
		t.Fatalf("reported vehicle-days %d (%v), want 5", sum, err)
	}
}

// TestUsageReportAbandoned: a report Stripe has not accepted within 23
// hours is not resent (Stripe forgets idempotency keys after 24 hours, so
// a resend could count twice); it is recorded for an operator instead.
func TestUsageReportAbandoned(t *testing.T) {
	t.Parallel()
	e := newBillingEnv(t)
	ctx := e.tenant(t, "Acme")
	customer := e.checkout(t, ctx)
	e.deliver(t, stripeEvent("evt_a", controlplane.EventSubscriptionCreated, time.Now(), subscriptionObj("sub_r", customer, "active")))
	createVehicles(t, e.svc, ctx, 0, 2)
	bg := context.Background()
	if _, err := e.svc.MeterUsage(bg); err != nil {
		t.Fatal(err)
	}
	e.rec.Reset()
	e.rec.FailAfter(1)
	if _, err := e.svc.ReportUsage(bg); err == nil {
		t.Fatal("ReportUsage with a lost answer succeeded")
	}
	e.rec.FailAfter(0)
	e.rec.Reset()
	controlplane.SetNow(e.svc, func() time.Time { return time.Now().Add(24 * time.Hour) })
	run, err := e.svc.ReportUsage(bg)
	if err != nil || run.Abandoned != 1 || run.Reported != 0 {
		t.Fatalf("ReportUsage a day later = %+v, %v", run, err)
	}
	if reqs := e.rec.Requests(); len(reqs) != 0 {
		t.Fatalf("an expired report was resent: %+v", reqs)
	}
	var reason string
	if err := e.pool.QueryRow(bg, `SELECT last_error FROM usage_reports WHERE abandoned_at IS NOT NULL`).Scan(&reason); err != nil ||
		!strings.Contains(reason, "not resent") {
		t.Fatalf("abandoned report reason %q (%v)", reason, err)
	}
}
