package controlplane_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/controlplane/stripebilling"
	"github.com/fleetplane/fleetplane/internal/password"
	"github.com/fleetplane/fleetplane/internal/pgtest"
	"github.com/fleetplane/fleetplane/internal/stripemock"
)

// billingBench is a Service over a throwaway Postgres that bills through
// the real Stripe adapter against stripe-mock. There are no hub nodes: the
// benchmarks measure the webhook and reporting paths, not account pushes
// (their events change no plan once a tenant is on scale).
type billingBench struct {
	svc  *controlplane.Service
	bill *stripebilling.Client
	rec  *stripemock.Recorder
}

func newBillingBench(b *testing.B) *billingBench {
	b.Helper()
	mock, err := sharedMock()
	if err != nil {
		b.Fatalf("starting stripe-mock: %v", err)
	}
	rec := &stripemock.Recorder{}
	bill, err := stripebilling.New(stripebilling.Config{
		SecretKey: stripemock.TestKey, WebhookSecret: testWebhookSecret, ScalePriceID: "price_scale",
		APIBase: mock.URL, HTTPClient: rec.Client(),
	})
	if err != nil {
		b.Fatal(err)
	}
	svc := controlplane.NewService(postgres.NewStore(pgtest.NewPool(b)), controlplane.Config{
		Regions:        []controlplane.Region{{Name: "europe"}},
		PasswordParams: password.Params{Memory: 64, Time: 1, Threads: 1},
		Issuer:         mustIssuer(b, nil),
		PublicURL:      "https://fleet.example",
		Billing:        bill,
	}, nil)
	return &billingBench{svc: svc, bill: bill, rec: rec}
}

// scaleTenant signs up a tenant with fleet "drones" and completes its
// checkout by webhook (customer cus_<name>, subscription sub_<name>).
func (e *billingBench) scaleTenant(b *testing.B, name string) (context.Context, string) {
	b.Helper()
	ctx, tenantID := planTenant(b, e.svc, name)
	ev := stripeEvent("evt_checkout_"+name, controlplane.EventCheckoutCompleted, time.Now().Add(-time.Minute), map[string]any{
		"id": "cs_" + name, "object": "checkout.session", "mode": "subscription", "status": "complete",
		"payment_status": "paid", "customer": "cus_" + name, "client_reference_id": tenantID, "subscription": "sub_" + name,
	})
	res, err := e.svc.HandleBillingWebhook(context.Background(), ev, sign(ev))
	if err != nil || res.Outcome != controlplane.OutcomeApplied {
		b.Fatalf("checkout event: %+v, %v", res, err)
	}
	return ctx, tenantID
}

func reportRate(b *testing.B, n int, unit string) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(n)/s, unit)
	}
}

// BenchmarkBillingWebhook measures one Stripe webhook delivery through the
// Service: signature verification (HMAC-SHA256 over the raw body,
// timestamp tolerance) and decoding by the Stripe adapter, then the
// Postgres transaction that applies it (tenant lock, subscription upsert,
// plan and billing status, audit, billing_events row).
//
//	go test ./controlplane -run '^$' -bench BillingWebhook -benchtime 2000x -count 3
//
// verify: the adapter's VerifyEvent alone; applied: a new
// customer.subscription.updated event each time; duplicate: a replay of
// one event (verified, then the event ID's conflict rolls it back).
// Payloads are built and signed before the timer starts.
func BenchmarkBillingWebhook(b *testing.B) {
	e := newBillingBench(b)
	e.scaleTenant(b, "bench")
	bg := context.Background()
	events := func(n int) (payloads [][]byte, sigs []string) {
		for i := range n {
			p := stripeEvent(fmt.Sprintf("evt_bench_%d_%d", time.Now().UnixNano(), i), controlplane.EventSubscriptionUpdated,
				time.Now(), subscriptionObj("sub_bench", "cus_bench", "active"))
			payloads, sigs = append(payloads, p), append(sigs, sign(p))
		}
		return payloads, sigs
	}

	b.Run("verify", func(b *testing.B) {
		p, s := events(1)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, err := e.bill.VerifyEvent(p[0], s[0]); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b, b.N, "events/s")
	})
	b.Run("applied", func(b *testing.B) {
		p, s := events(b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			res, err := e.svc.HandleBillingWebhook(bg, p[i], s[i])
			if err != nil || res.Outcome != controlplane.OutcomeApplied {
				b.Fatalf("delivery %d: %+v, %v", i, res, err)
			}
		}
		reportRate(b, b.N, "events/s")
	})
	b.Run("duplicate", func(b *testing.B) {
		p, s := events(1)
		if _, err := e.svc.HandleBillingWebhook(bg, p[0], s[0]); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			res, err := e.svc.HandleBillingWebhook(bg, p[0], s[0])
			if err != nil || res.Outcome != controlplane.OutcomeDuplicate {
				b.Fatalf("replay: %+v, %v", res, err)
			}
		}
		reportRate(b, b.N, "events/s")
	})
}

// BenchmarkUsageReport measures one run of the report_usage job
// (Service.ReportUsage) when each of N scale tenants has one new
// vehicle-day to report: find the reportable days, freeze each report in
// usage_reports, send it to stripe-mock as a Billing Meter event (one HTTP
// request over loopback, validated by stripe-mock against Stripe's
// OpenAPI spec) and mark it accepted. The new vehicles and the metering
// that records them are outside the timer.
//
//	go test ./controlplane -run '^$' -bench UsageReport -benchtime 200x -count 3
func BenchmarkUsageReport(b *testing.B) {
	for _, tenants := range []int{1, 10} {
		b.Run(fmt.Sprintf("tenants=%d", tenants), func(b *testing.B) {
			e := newBillingBench(b)
			bg := context.Background()
			ctxs := make([]context.Context, tenants)
			for i := range ctxs {
				ctxs[i], _ = e.scaleTenant(b, fmt.Sprintf("rep%02d", i))
			}
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				for _, ctx := range ctxs {
					createVehicles(b, e.svc, ctx, i, 1)
				}
				if _, err := e.svc.MeterUsage(bg); err != nil {
					b.Fatal(err)
				}
				e.rec.Reset()
				b.StartTimer()
				run, err := e.svc.ReportUsage(bg)
				if err != nil || run.Created != tenants || run.Reported != tenants {
					b.Fatalf("run %d: %+v, %v", i, run, err)
				}
			}
			b.StopTimer()
			if n := len(e.rec.Requests()); n != tenants {
				b.Fatalf("the last run sent %d meter events, want %d", n, tenants)
			}
			reportRate(b, b.N*tenants, "reports/s")
			reportRate(b, b.N, "runs/s")
		})
	}
}
