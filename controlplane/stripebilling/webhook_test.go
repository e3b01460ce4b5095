package stripebilling_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/stripebilling"
	"github.com/fleetplane/fleetplane/internal/stripemock"
)

// webhookClient is a Client for VerifyEvent only (it makes no request).
func webhookClient(t testing.TB) *stripebilling.Client {
	t.Helper()
	c, err := stripebilling.New(stripebilling.Config{
		SecretKey: stripemock.TestKey, WebhookSecret: testWebhookSecret, ScalePriceID: testPrice,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fixture fetches an object from stripe-mock: Stripe's own fixture, in the
// layout of stripe-mock's API version (2026-08-26.dahlia), which the tests
// then adjust.
func fixture(t *testing.T, path string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, stripemock.Shared(t).URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+stripemock.TestKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var obj map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&obj); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
	}
	return obj
}

const eventCreated = 1767225600 // 2026-01-01T00:00:00Z

// eventJSON wraps obj in an event envelope as Stripe delivers it.
func eventJSON(t testing.TB, typ string, obj any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"id": "evt_1Test", "object": "event", "api_version": "2026-08-26.dahlia", "created": eventCreated,
		"type": typ, "livemode": false, "pending_webhooks": 1,
		"request": map[string]any{"id": nil, "idempotency_key": nil},
		"data":    map[string]any{"object": obj},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sign returns a Stripe-Signature header for payload.
func sign(payload []byte, secret string, at time.Time) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret, Timestamp: at}).Header
}

func verify(t *testing.T, c *stripebilling.Client, payload []byte) *controlplane.BillingEvent {
	t.Helper()
	ev, err := c.VerifyEvent(payload, sign(payload, testWebhookSecret, time.Now()))
	if err != nil {
		t.Fatalf("VerifyEvent: %v", err)
	}
	return ev
}

func wantEvent(t *testing.T, got *controlplane.BillingEvent, want controlplane.BillingEvent) {
	t.Helper()
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("event\n got %s\nwant %s", dump(got), dump(&want))
	}
}

func dump(ev *controlplane.BillingEvent) string {
	b, _ := json.Marshal(ev)
	return string(b)
}

func header(id, typ string) controlplane.BillingEvent {
	return controlplane.BillingEvent{ID: id, Type: typ, Created: time.Unix(eventCreated, 0).UTC()}
}

func TestVerifyEventRejects(t *testing.T) {
	t.Parallel()
	c := webhookClient(t)
	payload := eventJSON(t, "customer.created", map[string]any{"id": "cus_1", "object": "customer"})
	now := time.Now()
	for _, tc := range []struct {
		name      string
		payload   []byte
		signature string
		want      string
	}{
		{"no header", payload, "", "no Stripe-Signature header"},
		{"malformed header", payload, "t=1,v1", "Stripe-Signature header is malformed"},
		{"non-numeric timestamp", payload, "t=soon,v1=abcd", "Stripe-Signature header is malformed"},
		{"no v1 signature", payload, fmt.Sprintf("t=%d,v0=abcd", now.Unix()), "does not match"},
		{"wrong secret", payload, sign(payload, "whsec_other", now), "does not match"},
		{"altered body", append([]byte(" "), payload...), sign(payload, testWebhookSecret, now), "does not match"},
		{"signature over another timestamp", payload, strings.Replace(sign(payload, testWebhookSecret, now), fmt.Sprint(now.Unix()), fmt.Sprint(now.Unix()-1), 1), "does not match"},
		{"stale", payload, sign(payload, testWebhookSecret, now.Add(-5*time.Minute-2*time.Second)), "older than 5m0s"},
		{"future", payload, sign(payload, testWebhookSecret, now.Add(5*time.Minute+2*time.Second)), "more than 5m0s in the future"},
		{"malformed JSON", []byte(`{"id": "evt_1", "type":`), "", "not a Stripe event"},
		{"JSON array", []byte(`[1,2]`), "", "not a Stripe event"},
		{"not an event", []byte(`{"object":"customer"}`), "", "not a Stripe event (no id, type or created time)"},
		{"no created", []byte(`{"id":"evt_1","type":"invoice.paid","data":{"object":{"id":"in_1"}}}`), "", "no id, type or created time"},
		{"handled type without object", []byte(`{"id":"evt_1","type":"invoice.paid","created":1,"data":{"object":null}}`), "", "has no data.object"},
		{"handled type, object without id", eventJSON(t, "invoice.paid", map[string]any{"object": "invoice"}), "", "data.object (an invoice) has no id"},
		{"handled type, wrong field type", eventJSON(t, "invoice.paid", map[string]any{"id": "in_1", "amount_due": "ten"}), "", "data.object is not an invoice"},
		{"handled type, bad reference", eventJSON(t, "customer.subscription.updated", map[string]any{"id": "sub_1", "status": "active", "customer": 42}), "", "neither an ID nor an object"},
		{"subscription without status", eventJSON(t, "customer.subscription.updated", map[string]any{"id": "sub_1"}), "", "no status"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sig := tc.signature
			if sig == "" && tc.name != "no header" {
				sig = sign(tc.payload, testWebhookSecret, now)
			}
			ev, err := c.VerifyEvent(tc.payload, sig)
			if err == nil {
				t.Fatalf("accepted: %s", dump(ev))
			}
			if controlplane.ErrorCode(err) != controlplane.EINVALID || !strings.Contains(controlplane.ErrorMessage(err), tc.want) {
				t.Fatalf("err = %v, want EINVALID containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), testWebhookSecret) || strings.Contains(err.Error(), "whsec_") {
				t.Fatalf("the error echoes a secret: %v", err)
			}
		})
	}
}

func TestVerifyEventTolerance(t *testing.T) {
	t.Parallel()
	payload := eventJSON(t, "customer.created", map[string]any{"id": "cus_1"})
	now := time.Now()
	c := webhookClient(t)
	for _, d := range []time.Duration{-4 * time.Minute, 4 * time.Minute} {
		if _, err := c.VerifyEvent(payload, sign(payload, testWebhookSecret, now.Add(d))); err != nil {
			t.Errorf("signed %v from now: %v", d, err)
		}
	}
	short, err := stripebilling.New(stripebilling.Config{
		SecretKey: stripemock.TestKey, WebhookSecret: testWebhookSecret, ScalePriceID: testPrice, Tolerance: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := short.VerifyEvent(payload, sign(payload, testWebhookSecret, now.Add(-2*time.Minute))); controlplane.ErrorCode(err) != controlplane.EINVALID ||
		!strings.Contains(err.Error(), "older than 1m0s") {
		t.Errorf("2 minutes old with a 1-minute tolerance: %v", err)
	}
	// Several v1 signatures (a secret being rolled): one valid is enough.
	good := sign(payload, testWebhookSecret, now)
	other := sign(payload, "whsec_old", now)
	_, v1, _ := strings.Cut(other, ",")
	if _, err := c.VerifyEvent(payload, good+","+v1); err != nil {
		t.Errorf("two signatures, one valid: %v", err)
	}
}

func TestVerifyEventUnknownType(t *testing.T) {
	t.Parallel()
	c := webhookClient(t)
	// The customer fixture with tenant metadata: still only ID, type, created.
	cust := fixture(t, "/v1/customers/cus_1")
	cust["metadata"] = map[string]any{"tenant_id": "ten_42"}
	ev := verify(t, c, eventJSON(t, "customer.updated", cust))
	wantEvent(t, ev, header("evt_1Test", "customer.updated"))

	// An unknown type with a data.object we could not read is fine too.
	ev = verify(t, c, []byte(`{"id":"evt_2","type":"v2.core.thing","created":1767225600,"data":{"object":{"x":[1]}}}`))
	wantEvent(t, ev, header("evt_2", "v2.core.thing"))
}

func TestVerifyEventCheckoutCompleted(t *testing.T) {
	t.Parallel()
	c := webhookClient(t)
	session := func(status, paymentStatus string) map[string]any {
		s := fixture(t, "/v1/checkout/sessions/cs_test_1")
		s["id"], s["mode"] = "cs_test_1", "subscription"
		s["client_reference_id"] = "ten_42"
		s["customer"] = "cus_Acme"
		s["subscription"] = "sub_Acme"
		s["status"], s["payment_status"] = status, paymentStatus
		s["metadata"] = map[string]any{"tenant_id": "ten_42"}
		return s
	}
	want := func(status string) controlplane.BillingEvent {
		w := header("evt_1Test", controlplane.EventCheckoutCompleted)
		w.TenantID, w.CustomerID = "ten_42", "cus_Acme"
		w.Subscription = &controlplane.SubscriptionState{ID: "sub_Acme", Status: status}
		return w
	}
	for _, tc := range []struct{ status, payment, want string }{
		{"complete", "paid", "active"},
		{"complete", "no_payment_required", "active"}, // metered: the first invoice is zero
		{"complete", "unpaid", "incomplete"},          // an asynchronous payment method is pending
	} {
		ev := verify(t, c, eventJSON(t, controlplane.EventCheckoutCompleted, session(tc.status, tc.payment)))
		wantEvent(t, ev, want(tc.want))
	}

	// Expanded customer and subscription; tenant only in metadata.
	s := session("complete", "paid")
	s["customer"] = map[string]any{"id": "cus_Acme", "object": "customer"}
	s["subscription"] = map[string]any{"id": "sub_Acme", "object": "subscription"}
	s["client_reference_id"] = nil
	wantEvent(t, verify(t, c, eventJSON(t, controlplane.EventCheckoutCompleted, s)), want("active"))

	// A session that created no subscription (another integration's
	// payment): no subscription state.
	s = session("complete", "paid")
	s["mode"], s["subscription"] = "payment", nil
	w := want("active")
	w.Subscription = nil
	wantEvent(t, verify(t, c, eventJSON(t, controlplane.EventCheckoutCompleted, s)), w)
}

func TestVerifyEventSubscription(t *testing.T) {
	t.Parallel()
	c := webhookClient(t)
	const start, end = 1767225600, 1769904000 // 2026-01-01, 2026-02-01
	// Current API layout (stripe-mock's fixture): the period is on the items.
	current := func() map[string]any {
		s := fixture(t, "/v1/subscriptions/sub_Acme")
		s["id"], s["customer"], s["status"] = "sub_Acme", "cus_Acme", "past_due"
		s["cancel_at_period_end"] = true
		s["metadata"] = map[string]any{"tenant_id": "ten_42"}
		item := s["items"].(map[string]any)["data"].([]any)[0].(map[string]any)
		item["current_period_start"], item["current_period_end"] = start, end
		return s
	}
	if p := current()["current_period_start"]; p != nil {
		t.Fatalf("stripe-mock's fixture has a top-level period (%v): the current layout is not covered", p)
	}
	// stripe-go v76's layout (API 2023-10-16): the period on the subscription.
	legacy := func() map[string]any {
		s := current()
		s["current_period_start"], s["current_period_end"] = start, end
		s["items"] = map[string]any{"object": "list", "data": []any{map[string]any{"id": "si_1", "price": map[string]any{"id": testPrice}}}}
		return s
	}
	for _, typ := range []string{controlplane.EventSubscriptionCreated, controlplane.EventSubscriptionUpdated, controlplane.EventSubscriptionDeleted} {
		for layout, obj := range map[string]map[string]any{"current": current(), "2023-10-16": legacy()} {
			ev := verify(t, c, eventJSON(t, typ, obj))
			w := header("evt_1Test", typ)
			w.TenantID, w.CustomerID = "ten_42", "cus_Acme"
			w.Subscription = &controlplane.SubscriptionState{
				ID: "sub_Acme", Status: "past_due", CancelAtPeriodEnd: true,
				CurrentPeriodStart: time.Unix(start, 0).UTC(), CurrentPeriodEnd: time.Unix(end, 0).UTC(),
			}
			t.Run(typ+"/"+layout, func(t *testing.T) { wantEvent(t, ev, w) })
		}
	}

	// A canceled subscription, no tenant metadata, expanded customer.
	s := legacy()
	s["status"], s["cancel_at_period_end"], s["metadata"] = "canceled", false, map[string]any{}
	s["customer"] = map[string]any{"id": "cus_Acme", "object": "customer"}
	ev := verify(t, c, eventJSON(t, controlplane.EventSubscriptionDeleted, s))
	if ev.TenantID != "" || ev.CustomerID != "cus_Acme" || ev.Subscription.Status != "canceled" || ev.Subscription.CancelAtPeriodEnd {
		t.Errorf("canceled: %s", dump(ev))
	}
}

func TestVerifyEventInvoice(t *testing.T) {
	t.Parallel()
	c := webhookClient(t)
	base := func() map[string]any {
		in := fixture(t, "/v1/invoices/in_Acme")
		in["id"], in["customer"] = "in_Acme", "cus_Acme"
		in["amount_due"], in["amount_paid"], in["currency"] = 12345, 12000, "eur"
		in["hosted_invoice_url"] = "https://invoice.stripe.com/i/acct_1/test_in_Acme"
		in["attempt_count"] = 2
		return in
	}
	// Current API layout (stripe-mock's fixture): parent.subscription_details.
	current := func() map[string]any {
		in := base()
		in["parent"] = map[string]any{
			"type":                 "subscription_details",
			"quote_details":        nil,
			"subscription_details": map[string]any{"subscription": "sub_Acme", "metadata": map[string]any{"tenant_id": "ten_42"}},
		}
		return in
	}
	// stripe-go v76's layout (API 2023-10-16).
	legacy := func() map[string]any {
		in := base()
		delete(in, "parent")
		in["subscription"] = "sub_Acme"
		in["subscription_details"] = map[string]any{"metadata": map[string]any{"tenant_id": "ten_42"}}
		return in
	}
	for _, typ := range []string{controlplane.EventInvoicePaid, controlplane.EventInvoicePaymentFailed} {
		for layout, obj := range map[string]map[string]any{"current": current(), "2023-10-16": legacy()} {
			ev := verify(t, c, eventJSON(t, typ, obj))
			w := header("evt_1Test", typ)
			w.TenantID, w.CustomerID = "ten_42", "cus_Acme"
			w.Invoice = &controlplane.InvoiceState{
				ID: "in_Acme", SubscriptionID: "sub_Acme", AmountDue: 12345, AmountPaid: 12000, Currency: "eur",
				HostedURL: "https://invoice.stripe.com/i/acct_1/test_in_Acme", AttemptCount: 2,
			}
			t.Run(typ+"/"+layout, func(t *testing.T) { wantEvent(t, ev, w) })
		}
	}

	// An invoice of no subscription (one-off): no subscription, no tenant.
	in := base()
	in["parent"], in["subscription"], in["subscription_details"] = nil, nil, nil
	ev := verify(t, c, eventJSON(t, controlplane.EventInvoicePaid, in))
	if ev.TenantID != "" || ev.Invoice == nil || ev.Invoice.SubscriptionID != "" || ev.Invoice.ID != "in_Acme" {
		t.Errorf("one-off invoice: %s", dump(ev))
	}
}

// FuzzVerifyEvent feeds arbitrary payloads, signed correctly (so they reach
// the decoder) or with an arbitrary header. It must never panic, every
// error is EINVALID without the secret, and an accepted event always has an
// ID, a type and a time, and was correctly signed.
func FuzzVerifyEvent(f *testing.F) {
	seeds := [][]byte{
		[]byte(`{"id":"evt_1","type":"invoice.paid","created":1,"data":{"object":{"id":"in_1","customer":{"id":"cus_1"},"parent":{"subscription_details":{"subscription":"sub_1","metadata":{"tenant_id":"t"}}}}}}`),
		[]byte(`{"id":"evt_1","type":"checkout.session.completed","created":1,"data":{"object":{"id":"cs_1","status":"complete","payment_status":"paid","subscription":"sub_1","client_reference_id":"t"}}}`),
		[]byte(`{"id":"evt_1","type":"customer.subscription.updated","created":1,"data":{"object":{"id":"sub_1","status":"active","items":{"data":[{"current_period_start":5,"current_period_end":9}]}}}}`),
		[]byte(`{"id":"evt_1","type":"customer.subscription.deleted","created":1,"data":{"object":null}}`),
		[]byte(`{"id":"evt_1","type":"x","created":1}`),
		[]byte(`{`), []byte(`null`), []byte(``),
	}
	for _, s := range seeds {
		f.Add(s, true, "")
		f.Add(s, false, "t=1,v1=00")
	}
	c := webhookClient(f)
	f.Fuzz(func(t *testing.T, payload []byte, signed bool, header string) {
		if signed {
			header = sign(payload, testWebhookSecret, time.Now())
		}
		ev, err := c.VerifyEvent(payload, header)
		if err != nil {
			if controlplane.ErrorCode(err) != controlplane.EINVALID {
				t.Fatalf("error not EINVALID: %v", err)
			}
			if strings.Contains(err.Error(), testWebhookSecret) {
				t.Fatalf("error holds the secret: %v", err)
			}
			return
		}
		if !signed {
			t.Fatalf("accepted an arbitrary header %q", header)
		}
		if ev.ID == "" || ev.Type == "" || ev.Created.IsZero() {
			t.Fatalf("accepted an event without ID, type or time: %s", dump(ev))
		}
		switch ev.Type {
		case controlplane.EventSubscriptionCreated, controlplane.EventSubscriptionUpdated, controlplane.EventSubscriptionDeleted:
			if ev.Subscription == nil || ev.Subscription.ID == "" || ev.Subscription.Status == "" {
				t.Fatalf("subscription event without subscription: %s", dump(ev))
			}
		case controlplane.EventInvoicePaid, controlplane.EventInvoicePaymentFailed:
			if ev.Invoice == nil || ev.Invoice.ID == "" {
				t.Fatalf("invoice event without invoice: %s", dump(ev))
			}
		}
	})
}
