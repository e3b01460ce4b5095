package stripebilling_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/stripebilling"
	"github.com/fleetplane/fleetplane/internal/stripemock"
)

// Every test that talks to Stripe talks to the binary's one stripe-mock
// (started on first use, ~0.5 s; stripe-mock is stateless, so tests share
// it and run in parallel).
func TestMain(m *testing.M) {
	code := m.Run()
	stripemock.CloseShared()
	os.Exit(code)
}

const (
	testWebhookSecret = "whsec_test_fleetplane_0123456789"
	testPrice         = "price_scale_vehicle_days"
)

// newClient returns a Client on the shared stripe-mock whose requests rec
// records.
func newClient(t *testing.T, change func(*stripebilling.Config)) (*stripebilling.Client, *stripemock.Recorder) {
	t.Helper()
	rec := &stripemock.Recorder{}
	cfg := stripebilling.Config{
		SecretKey:     stripemock.TestKey,
		WebhookSecret: testWebhookSecret,
		ScalePriceID:  testPrice,
		APIBase:       stripemock.Shared(t).URL,
		HTTPClient:    rec.Client(),
	}
	if change != nil {
		change(&cfg)
	}
	c, err := stripebilling.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, rec
}

// onlyRequest returns the one request rec recorded.
func onlyRequest(t *testing.T, rec *stripemock.Recorder) stripemock.Request {
	t.Helper()
	reqs := rec.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1: %+v", len(reqs), reqs)
	}
	return reqs[0]
}

// assertRequest checks a request's method, path, idempotency key and its
// exact parameters (no more, no fewer).
func assertRequest(t *testing.T, got stripemock.Request, method, path, idemKey string, want url.Values) {
	t.Helper()
	if got.Method != method || got.Path != path {
		t.Errorf("request %s %s, want %s %s", got.Method, got.Path, method, path)
	}
	if got.IdempotencyKey != idemKey {
		t.Errorf("Idempotency-Key %q, want %q", got.IdempotencyKey, idemKey)
	}
	if !reflect.DeepEqual(got.Form, want) {
		for k := range want {
			if !reflect.DeepEqual(got.Form[k], want[k]) {
				t.Errorf("param %s = %q, want %q", k, got.Form[k], want[k])
			}
		}
		for k := range got.Form {
			if _, ok := want[k]; !ok {
				t.Errorf("unexpected param %s = %q", k, got.Form[k])
			}
		}
	}
}

func TestNewValidatesConfig(t *testing.T) {
	valid := stripebilling.Config{SecretKey: "sk_test_abc", WebhookSecret: "whsec_abc", ScalePriceID: "price_abc"}
	if _, err := stripebilling.New(valid); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	rk := valid
	rk.SecretKey = "rk_live_restricted"
	if _, err := stripebilling.New(rk); err != nil {
		t.Fatalf("restricted key: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*stripebilling.Config)
		want   string
	}{
		{"no secret key", func(c *stripebilling.Config) { c.SecretKey = "" }, "SecretKey is required"},
		{"publishable key", func(c *stripebilling.Config) { c.SecretKey = "pk_live_TOPSECRET" }, "SecretKey is not a Stripe secret or restricted key"},
		{"no webhook secret", func(c *stripebilling.Config) { c.WebhookSecret = "" }, "WebhookSecret is required"},
		{"bad webhook secret", func(c *stripebilling.Config) { c.WebhookSecret = "TOPSECRET" }, "WebhookSecret is not a webhook signing secret"},
		{"no price", func(c *stripebilling.Config) { c.ScalePriceID = "" }, "ScalePriceID is required"},
		{"product as price", func(c *stripebilling.Config) { c.ScalePriceID = "prod_x" }, `ScalePriceID "prod_x" is not a price ID`},
		{"meter name spaces", func(c *stripebilling.Config) { c.MeterEventName = " x" }, "MeterEventName"},
		{"relative API base", func(c *stripebilling.Config) { c.APIBase = "localhost:12111" }, "APIBase"},
		{"API base with credentials", func(c *stripebilling.Config) { c.APIBase = "http://u:p@127.0.0.1:1" }, "APIBase"},
		{"negative tolerance", func(c *stripebilling.Config) { c.Tolerance = -time.Second }, "Tolerance -1s is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid
			tc.change(&cfg)
			_, err := stripebilling.New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "TOPSECRET") {
				t.Fatalf("the error echoes a secret: %v", err)
			}
		})
	}
	// Every problem at once, in one error.
	_, err := stripebilling.New(stripebilling.Config{})
	if err == nil || !strings.Contains(err.Error(), "SecretKey is required; WebhookSecret is required; ScalePriceID is required") {
		t.Fatalf("empty config: %v", err)
	}
}

func TestCreateCustomer(t *testing.T) {
	t.Parallel()
	c, rec := newClient(t, nil)
	id, err := c.CreateCustomer(context.Background(), controlplane.BillingCustomer{
		TenantID: "ten_42", Name: "Acme Drones", Email: "billing@acme.test",
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(id, "cus_") {
		t.Errorf("customer ID %q", id)
	}
	assertRequest(t, onlyRequest(t, rec), "POST", "/v1/customers", "fleetplane-customer-ten_42", url.Values{
		"name":                {"Acme Drones"},
		"email":               {"billing@acme.test"},
		"metadata[tenant_id]": {"ten_42"},
	})

	// No email: the parameter is left out, not sent empty.
	rec.Reset()
	if _, err := c.CreateCustomer(context.Background(), controlplane.BillingCustomer{TenantID: "ten_43", Name: "B"}); err != nil {
		t.Fatal(err)
	}
	assertRequest(t, onlyRequest(t, rec), "POST", "/v1/customers", "fleetplane-customer-ten_43", url.Values{
		"name": {"B"}, "metadata[tenant_id]": {"ten_43"},
	})

	rec.Reset()
	if _, err := c.CreateCustomer(context.Background(), controlplane.BillingCustomer{Name: "no tenant"}); err == nil {
		t.Fatal("no tenant ID: no error")
	}
	if n := len(rec.Requests()); n != 0 {
		t.Fatalf("no tenant ID: %d requests sent", n)
	}
}

// Two concurrent checkouts of a tenant create its customer with the same
// idempotency key, which Stripe answers with the one customer.
// (stripe-mock does not deduplicate; the key is what Stripe keys on.)
func TestCreateCustomerConcurrentSameKey(t *testing.T) {
	t.Parallel()
	c, rec := newClient(t, nil)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if _, err := c.CreateCustomer(context.Background(), controlplane.BillingCustomer{TenantID: "ten_7", Name: "Seven"}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	reqs := rec.Requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests", len(reqs))
	}
	for _, r := range reqs {
		if r.IdempotencyKey != stripebilling.CustomerIdempotencyKey("ten_7") || !reflect.DeepEqual(r.Form, reqs[0].Form) {
			t.Errorf("request %+v differs", r)
		}
	}
}

func TestCheckoutSession(t *testing.T) {
	t.Parallel()
	c, rec := newClient(t, nil)
	u, err := c.CheckoutSession(context.Background(), controlplane.CheckoutRequest{
		TenantID:   "ten_42",
		CustomerID: "cus_Acme",
		SuccessURL: "https://cp.example.test/billing?checkout=success&session={CHECKOUT_SESSION_ID}",
		CancelURL:  "https://cp.example.test/billing?checkout=cancel",
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(u, "https://checkout.stripe.com/") {
		t.Errorf("checkout URL %q", u)
	}
	r := onlyRequest(t, rec)
	if r.IdempotencyKey == "" {
		t.Error("no idempotency key (stripe-go generates one per POST, reused by its retries)")
	}
	assertRequest(t, r, "POST", "/v1/checkout/sessions", r.IdempotencyKey, url.Values{
		"mode":                                   {"subscription"},
		"customer":                               {"cus_Acme"},
		"client_reference_id":                    {"ten_42"},
		"line_items[0][price]":                   {testPrice}, // metered: no quantity
		"subscription_data[metadata][tenant_id]": {"ten_42"},
		"metadata[tenant_id]":                    {"ten_42"},
		"success_url":                            {"https://cp.example.test/billing?checkout=success&session={CHECKOUT_SESSION_ID}"},
		"cancel_url":                             {"https://cp.example.test/billing?checkout=cancel"},
	})

	rec.Reset()
	if _, err := c.CheckoutSession(context.Background(), controlplane.CheckoutRequest{TenantID: "t", CustomerID: "cus_1", SuccessURL: "https://x"}); err == nil ||
		!strings.Contains(err.Error(), "no cancel URL") {
		t.Fatalf("no cancel URL: %v", err)
	}
	if n := len(rec.Requests()); n != 0 {
		t.Fatalf("invalid request: %d requests sent", n)
	}
}

func TestPortalSession(t *testing.T) {
	t.Parallel()
	c, rec := newClient(t, nil)
	u, err := c.PortalSession(context.Background(), "cus_Acme", "https://cp.example.test/billing")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(u, "https://") {
		t.Errorf("portal URL %q", u)
	}
	r := onlyRequest(t, rec)
	assertRequest(t, r, "POST", "/v1/billing_portal/sessions", r.IdempotencyKey, url.Values{
		"customer":   {"cus_Acme"},
		"return_url": {"https://cp.example.test/billing"},
	})
	if _, err := c.PortalSession(context.Background(), "", "https://x"); err == nil {
		t.Fatal("no customer: no error")
	}
}

func TestReportUsage(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 3, 14, 23, 59, 0, 0, time.UTC)
	report := controlplane.UsageReport{
		TenantID:   "ten_42",
		CustomerID: "cus_Acme",
		Day:        time.Date(2026, 3, 14, 0, 0, 0, 0, time.UTC),
		Quantity:   37,
		Identifier: "fp-ten_42-2026-03-14-1",
		At:         at,
	}
	c, rec := newClient(t, nil)
	if err := c.ReportUsage(context.Background(), report); err != nil {
		t.Fatal(err)
	}
	want := url.Values{
		"event_name":                  {"fleetplane_vehicle_days"},
		"payload[stripe_customer_id]": {"cus_Acme"},
		"payload[value]":              {"37"},
		"identifier":                  {"fp-ten_42-2026-03-14-1"},
		"timestamp":                   {"1773532740"},
	}
	assertRequest(t, onlyRequest(t, rec), "POST", "/v1/billing/meter_events", "fp-ten_42-2026-03-14-1", want)
	if at.Unix() != 1773532740 {
		t.Fatalf("test constant: %d", at.Unix())
	}

	// An answer lost on the way back: EUNAVAILABLE after one attempt, and
	// sending the report again sends the same request, key included.
	rec.Reset()
	rec.FailAfter(1)
	if err := c.ReportUsage(context.Background(), report); controlplane.ErrorCode(err) != controlplane.EUNAVAILABLE ||
		!strings.Contains(err.Error(), "answer was lost") {
		t.Fatalf("lost answer: %v", err)
	}
	assertRequest(t, onlyRequest(t, rec), "POST", "/v1/billing/meter_events", "fp-ten_42-2026-03-14-1", want)
	rec.Reset()
	if err := c.ReportUsage(context.Background(), report); err != nil {
		t.Fatal(err)
	}
	assertRequest(t, onlyRequest(t, rec), "POST", "/v1/billing/meter_events", "fp-ten_42-2026-03-14-1", want)

	// A configured meter event name.
	c2, rec2 := newClient(t, func(cfg *stripebilling.Config) { cfg.MeterEventName = "vehicle_days_eu" })
	if err := c2.ReportUsage(context.Background(), report); err != nil {
		t.Fatal(err)
	}
	if got := onlyRequest(t, rec2).Form.Get("event_name"); got != "vehicle_days_eu" {
		t.Errorf("event_name %q", got)
	}

	// Reports the domain should never build fail before any request.
	rec.Reset()
	for name, change := range map[string]func(*controlplane.UsageReport){
		"no customer":     func(r *controlplane.UsageReport) { r.CustomerID = "" },
		"no identifier":   func(r *controlplane.UsageReport) { r.Identifier = "" },
		"long identifier": func(r *controlplane.UsageReport) { r.Identifier = strings.Repeat("x", 101) },
		"negative":        func(r *controlplane.UsageReport) { r.Quantity = -1 },
		"no timestamp":    func(r *controlplane.UsageReport) { r.At = time.Time{} },
	} {
		r := report
		change(&r)
		if err := c.ReportUsage(context.Background(), r); err == nil || controlplane.ErrorCode(err) != controlplane.EINTERNAL {
			t.Errorf("%s: err = %v, want an uncoded error", name, err)
		}
	}
	if n := len(rec.Requests()); n != 0 {
		t.Fatalf("invalid reports: %d requests sent", n)
	}
}

// Stripe unreachable: EUNAVAILABLE with a presentable message; the cause is
// in the chain for the logs. stripe-go retries a customer creation twice
// with the same idempotency key; a meter event is tried once (the usage job
// resends it).
func TestUnreachableIsUnavailable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	c, rec := newClient(t, func(cfg *stripebilling.Config) { cfg.APIBase = closed })

	_, err = c.CreateCustomer(context.Background(), controlplane.BillingCustomer{TenantID: "ten_1", Name: "x"})
	if controlplane.ErrorCode(err) != controlplane.EUNAVAILABLE || controlplane.ErrorMessage(err) != "payment provider unavailable" {
		t.Fatalf("err = %v (code %s, message %q)", err, controlplane.ErrorCode(err), controlplane.ErrorMessage(err))
	}
	t.Logf("logged as: %v", err)
	if !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "creating the customer") {
		t.Errorf("the logged error lacks the cause or the operation: %v", err)
	}
	reqs := rec.Requests()
	if len(reqs) != 3 {
		t.Fatalf("%d attempts, want 3 (2 retries)", len(reqs))
	}
	for _, r := range reqs {
		if r.IdempotencyKey != "fleetplane-customer-ten_1" {
			t.Errorf("retry with key %q", r.IdempotencyKey)
		}
	}

	rec.Reset()
	err = c.ReportUsage(context.Background(), controlplane.UsageReport{CustomerID: "cus_1", Quantity: 1, Identifier: "id-1", At: time.Now()})
	if controlplane.ErrorCode(err) != controlplane.EUNAVAILABLE || !strings.Contains(err.Error(), "reporting usage") {
		t.Fatalf("report: %v", err)
	}
	if n := len(rec.Requests()); n != 1 {
		t.Fatalf("meter event: %d attempts, want 1", n)
	}

	// A canceled context is unavailable too, and stays recognizable.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c2, _ := newClient(t, nil)
	_, err = c2.PortalSession(ctx, "cus_1", "https://x")
	if controlplane.ErrorCode(err) != controlplane.EUNAVAILABLE || !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled: %v", err)
	}
}

// A rejected key is not "unavailable": it is a configuration problem,
// reported as such, and the error never contains the key (stripe-mock
// echoes the Authorization header it rejects).
func TestRejectedKeyNeverEchoed(t *testing.T) {
	t.Parallel()
	const key = "sk_live_TOPSECRETKEY"
	c, rec := newClient(t, func(cfg *stripebilling.Config) { cfg.SecretKey = key })
	_, err := c.CreateCustomer(context.Background(), controlplane.BillingCustomer{TenantID: "t1", Name: "x"})
	if err == nil {
		t.Fatal("no error")
	}
	if controlplane.ErrorCode(err) != controlplane.EINTERNAL || !strings.Contains(err.Error(), "Stripe rejected the API key") ||
		!strings.Contains(err.Error(), "HTTP 401") {
		t.Fatalf("err = %v", err)
	}
	t.Logf("logged as: %v", err)
	if strings.Contains(err.Error(), "TOPSECRET") || !strings.Contains(err.Error(), "[REDACTED]") {
		t.Fatalf("the error does not redact the key: %v", err)
	}
	if n := len(rec.Requests()); n != 1 {
		t.Fatalf("%d attempts: a 401 must not be retried", n)
	}
}

// Stripe rejecting a request (here: a wrong API base path, answered 404
// invalid_request_error) says what failed and is not retried.
func TestRejectedRequestSaysWhat(t *testing.T) {
	t.Parallel()
	c, rec := newClient(t, func(cfg *stripebilling.Config) { cfg.APIBase = stripemock.Shared(t).URL + "/wrong" })
	_, err := c.CheckoutSession(context.Background(), controlplane.CheckoutRequest{
		TenantID: "t1", CustomerID: "cus_1", SuccessURL: "https://x/s", CancelURL: "https://x/c",
	})
	if controlplane.ErrorCode(err) != controlplane.EINTERNAL {
		t.Fatalf("err = %v, want uncoded", err)
	}
	t.Logf("logged as: %v", err)
	for _, want := range []string{"creating the checkout session", "Stripe rejected the request", "HTTP 404 invalid_request_error", "/wrong/v1/checkout/sessions"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if n := len(rec.Requests()); n != 1 {
		t.Fatalf("%d attempts, want 1", n)
	}
}
