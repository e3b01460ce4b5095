package controlplane_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/api"
	"github.com/fleetplane/fleetplane/internal/natstest"
)

// BenchmarkRevocation measures a revocation end to end: POST
// /v1/fleets/{fleet}/vehicles/{vehicle}/revoke on the real router → the
// Postgres transaction (account version, revocation, outbox job) → push to a
// real hub → the hub closes the vehicle's leaf link, observed on the hub.
// Each iteration revokes revocationsPerOp vehicles (in rounds of the free
// plan's 10 live leafs) and reports p50/p99 over all of them.
//
//	go test ./controlplane -run '^$' -bench Revocation -benchtime 1x
func BenchmarkRevocation(b *testing.B) {
	const revocationsPerOp = 100
	e := newIdentityEnv(b)
	ctx, res := MustSignup(b, e.svc, "Bench Co", "bench@example.com")
	if _, err := e.svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: "drones", Environment: "prod"}); err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(api.New(e.svc, api.Options{}))
	defer srv.Close()
	revoke := func(vid string) time.Duration {
		req, _ := http.NewRequest("POST", srv.URL+"/v1/fleets/drones/vehicles/"+vid+"/revoke", nil)
		req.Header.Set("Authorization", "Bearer "+res.APIKey.Secret)
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("revoke %s: status %d", vid, resp.StatusCode)
		}
		return time.Since(start)
	}

	var apiLat, discLat []time.Duration
	n := 0
	b.ResetTimer()
	for range b.N {
		for done := 0; done < revocationsPerOp; {
			b.StopTimer()
			round := min(controlplane.FreeVehicleLimit, revocationsPerOp-done)
			token := e.token(b, ctx, round)
			leafs := make([]*server.Server, round)
			vids := make([]string, round)
			for i := range round {
				k := newVehicleKey(b)
				vids[i] = fmt.Sprintf("V%05d", n)
				n++
				leafs[i] = e.runLeaf(b, e.enroll(b, token, k, vids[i]), k)
			}
			natstest.WaitLeafCount(b, e.hub, round, 10*time.Second)
			b.StartTimer()
			for i := range round {
				before := e.hub.NumLeafNodes()
				start := time.Now()
				apiLat = append(apiLat, revoke(vids[i]))
				for e.hub.NumLeafNodes() >= before {
					time.Sleep(50 * time.Microsecond)
				}
				discLat = append(discLat, time.Since(start))
			}
			b.StopTimer()
			for _, l := range leafs {
				l.Shutdown()
			}
			done += round
			b.StartTimer()
		}
	}
	b.StopTimer()
	pct := func(d []time.Duration, p float64) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(discLat, 0.50), "disconnect-p50-ms")
	b.ReportMetric(pct(discLat, 0.99), "disconnect-p99-ms")
	b.ReportMetric(pct(apiLat, 0.50), "api-proof-p50-ms")
	b.ReportMetric(pct(apiLat, 0.99), "api-proof-p99-ms")
	b.ReportMetric(float64(len(discLat)), "revocations")
}
