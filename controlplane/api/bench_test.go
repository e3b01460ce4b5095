package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/api"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// The benchmarks drive the real stack (TCP, chi, middleware, service,
// Postgres) with 8 concurrent keep-alive clients and report throughput and
// latency percentiles besides ns/op:
//
//	go test ./controlplane/api -run '^$' -bench . -benchtime 2000x
//
// Client, server and Postgres share the machine, so the numbers describe
// this stack on this machine, not a deployment.

const benchClients = 8

type benchEnv struct {
	srv    *httptest.Server
	svc    *controlplane.Service
	client *http.Client
	key    string
	tenant tenant
}

func newBenchEnv(b *testing.B, opts ...func(*api.Options)) *benchEnv {
	b.Helper()
	pool := pgtest.NewPool(b)
	svc := controlplane.NewService(postgres.NewStore(pool), testConfig(b), nil)
	reg := prometheus.NewRegistry()
	o := api.Options{Registerer: reg, Gatherer: reg}
	for _, f := range opts {
		f(&o)
	}
	srv := httptest.NewServer(api.New(svc, o))
	b.Cleanup(srv.Close)
	tr := &http.Transport{MaxIdleConnsPerHost: benchClients, MaxConnsPerHost: benchClients}
	b.Cleanup(tr.CloseIdleConnections)
	be := &benchEnv{srv: srv, svc: svc, client: &http.Client{Transport: tr}}
	// Set up through the validating client once; the timed requests skip it.
	e := &env{tb: b, pool: pool, svc: svc, srv: srv}
	e.client = &http.Client{Transport: &validatingTransport{tb: b, v: mustValidator(b), base: tr}}
	be.tenant = e.signup("Bench Co")
	be.key = be.tenant.key
	e.createFleet(be.key, "bench")
	return be
}

// request sends one request with the tenant's API key and drains the
// response; it fails unless the status is want.
func (be *benchEnv) request(method, path, body string, want int, out any) error {
	return be.requestAs(be.key, method, path, body, want, out)
}

// requestAs is request with another API key ("" = none: a public route).
func (be *benchEnv) requestAs(key, method, path, body string, want int, out any) error {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, be.srv.URL+path, rd)
	if err != nil {
		return err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := be.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if res.StatusCode != want {
		return fmt.Errorf("%s %s: %d %s", method, path, res.StatusCode, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// runClients runs op b.N times spread over benchClients goroutines, timing
// every call, and reports req/s, p50-ms and p99-ms.
func runClients(b *testing.B, op func(client, i int) error) {
	b.Helper()
	lat := make([][]time.Duration, benchClients)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for c := range benchClients {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				t0 := time.Now()
				if err := op(c, i); err != nil {
					b.Error(err)
					return
				}
				lat[c] = append(lat[c], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	all := slices.Concat(lat...)
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	pct := func(p int) float64 {
		return float64(all[min(len(all)-1, len(all)*p/100)]) / float64(time.Millisecond)
	}
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "req/s")
	b.ReportMetric(pct(50), "p50-ms")
	b.ReportMetric(pct(99), "p99-ms")
}

func BenchmarkCreateVehicle(b *testing.B) {
	be := newBenchEnv(b)
	runClients(b, func(_, i int) error {
		return be.request("POST", "/v1/fleets/bench/vehicles", fmt.Sprintf(`{"vehicle_id":"veh-%07d","labels":{"zone":"north"}}`, i), http.StatusCreated, nil)
	})
}

// BenchmarkListVehicles walks 100-vehicle pages of a 10,000-vehicle fleet:
// each client follows next_cursor and starts over after the last page.
func BenchmarkListVehicles(b *testing.B) {
	be := newBenchEnv(b)
	const vehicles = 10_000
	seedVehicles(b, be, vehicles)
	b.Run("limit=100", func(b *testing.B) {
		cursors := make([]string, benchClients)
		runClients(b, func(c, _ int) error {
			path := "/v1/fleets/bench/vehicles?limit=100"
			if cursors[c] != "" {
				path += "&cursor=" + url.QueryEscape(cursors[c])
			}
			var page struct {
				NextCursor *string `json:"next_cursor"`
			}
			if err := be.request("GET", path, "", http.StatusOK, &page); err != nil {
				return err
			}
			cursors[c] = ""
			if page.NextCursor != nil {
				cursors[c] = *page.NextCursor
			}
			return nil
		})
	})
}

// seedVehicles creates n vehicles in fleet "bench" through the service
// (the API path is what BenchmarkCreateVehicle measures).
func seedVehicles(b *testing.B, be *benchEnv, n int) {
	b.Helper()
	start := time.Now()
	ctx := controlplane.NewContextWithPrincipal(context.Background(), &controlplane.Principal{
		TenantID: be.tenant.id, Role: controlplane.RoleAdmin, ActorType: "system", ActorID: "bench"})
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				_, err := be.svc.CreateVehicle(ctx, "bench", controlplane.VehicleCreate{
					VehicleID: fmt.Sprintf("veh-%05d", i), Labels: map[string]string{"zone": []string{"north", "south"}[i%2]}})
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.Logf("seeded %d vehicles in %v", n, time.Since(start).Round(time.Millisecond))
}

// BenchmarkEnroll is POST /v1/enroll end to end: the token check, the row
// lock that counts its use, a new vehicle, a vehicle JWT signed with the
// account's (sealed) vehicle key and the audit event, in one transaction.
// The agents' nkeys are made before the timer starts; the rate limit is
// lifted.
//
//   - token=per-client: every client enrolls with its own multi-use token.
//   - token=shared: all clients share one multi-use token, so every
//     enrollment waits for the same row lock.
func BenchmarkEnroll(b *testing.B) {
	b.Run("token=per-client", func(b *testing.B) { benchmarkEnroll(b, false) })
	b.Run("token=shared", func(b *testing.B) { benchmarkEnroll(b, true) })
}

func benchmarkEnroll(b *testing.B, shared bool) {
	be := newBenchEnv(b, func(o *api.Options) { o.EnrollRatePerMinute = 1 << 30 })
	const maxUses = 100_000
	if b.N > maxUses {
		b.Fatalf("b.N = %d: a token has at most %d uses", b.N, maxUses)
	}
	// Work is handed out from one counter, so a client may do more than
	// its share: every token allows all b.N uses.
	tokens := make([]string, benchClients)
	for c := range tokens {
		if shared && c > 0 {
			tokens[c] = tokens[0]
			continue
		}
		var t struct {
			Token string `json:"token"`
		}
		body := fmt.Sprintf(`{"expires_at":%q,"max_uses":%d}`, time.Now().Add(time.Hour).UTC().Format(time.RFC3339), b.N)
		if err := be.request("POST", "/v1/fleets/bench/enrollment-tokens", body, http.StatusCreated, &t); err != nil {
			b.Fatal(err)
		}
		tokens[c] = t.Token
	}
	pubs := make([]string, b.N)
	for i := range pubs {
		kp, err := nkeys.CreateUser()
		if err != nil {
			b.Fatal(err)
		}
		if pubs[i], err = kp.PublicKey(); err != nil {
			b.Fatal(err)
		}
	}
	runClients(b, func(c, i int) error {
		return be.requestAs("", "POST", "/v1/enroll", `{"token":"`+tokens[c]+`","public_key":"`+pubs[i]+`"}`, http.StatusCreated, nil)
	})
}
