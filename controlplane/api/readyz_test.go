package api_test

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/api"
	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/hubnode"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// TestReadyWithAHubNodeDown: one hub node of two is unreachable. /readyz
// stays 200 (the database answers), says which node is down and counts
// the account its signup could not push to every node.
func TestReadyWithAHubNodeDown(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	iss := cfg.Issuer.(*natsissuer.Issuer)
	hub, err := hubnode.Start(hubnode.Config{Name: "hub-1", Region: "europe", Dir: t.TempDir(),
		ClientHost: "127.0.0.1", ClientPort: -1, Trust: natsissuer.HubTrust(iss.Operator())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Shutdown(); hub.WaitForShutdown() })
	h, err := hubs.New([]hubs.Node{{Name: "hub-1", URL: hub.ClientURL()}, {Name: "hub-2", URL: "nats://127.0.0.1:1"}},
		iss.SystemUserCreds(time.Hour), hubs.Options{Timeout: 200 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	deadline := time.Now().Add(5 * time.Second)
	for !h.Status()[0].Up {
		if time.Now().After(deadline) {
			t.Fatal("hub-1 never came up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cfg.Hubs, cfg.PushTimeout = h, time.Second

	pool := pgtest.NewPool(t)
	svc := controlplane.NewService(postgres.NewStore(pool), cfg, nil)
	srv := httptest.NewServer(api.New(svc, api.Options{Registerer: prometheus.NewRegistry()}))
	t.Cleanup(srv.Close)
	e := &env{tb: t, pool: pool, svc: svc, srv: srv, logs: &lockedBuffer{}}
	e.client = &http.Client{Transport: &validatingTransport{tb: t, v: mustValidator(t), base: srv.Client().Transport}}

	var rd api.Readiness
	r := e.do("GET", "/readyz", "", nil).must(t, 200, &rd)
	if rd.Status != api.ReadinessStatusDegraded || rd.Database != api.ReadinessDatabaseOk || rd.AccountsBehind != 0 ||
		len(rd.HubNodes) != 2 || !rd.HubNodes[0].Up || rd.HubNodes[0].Error != nil || rd.HubNodes[1].Up ||
		rd.HubNodes[1].Node != "hub-2" || rd.HubNodes[1].Error == nil || *rd.HubNodes[1].Error == "" {
		t.Fatalf("readyz with hub-2 down: %s", r.body)
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Fatalf("Cache-Control %q", cc)
	}

	// A signup's push reaches hub-1 only: one account behind.
	e.do("POST", "/v1/signup", "", map[string]any{"organisation": "Acme", "email": "ops@acme.example",
		"password": "correct horse battery"}).must(t, 201, nil)
	e.do("GET", "/readyz", "", nil).must(t, 200, &rd)
	if rd.Status != api.ReadinessStatusDegraded || rd.AccountsBehind != 1 {
		t.Fatalf("readyz after a signup with hub-2 down: %+v", rd)
	}
}

// TestReadyWithoutHubs: no hubs configured and nothing behind is "ok".
func TestReadyWithoutHubs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var rd api.Readiness
	e.do("GET", "/readyz", "", nil).must(t, 200, &rd)
	if rd.Status != api.ReadinessStatusOk || rd.HubNodes == nil || len(rd.HubNodes) != 0 || rd.AccountsBehind != 0 {
		t.Fatalf("readyz: %+v", rd)
	}
}
