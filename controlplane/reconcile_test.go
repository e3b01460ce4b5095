package controlplane_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/hubnode"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
	"github.com/fleetplane/fleetplane/internal/password"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// The reconciler is proven on a 3-node operator-mode hub cluster in one
// process (hubnode.Start with routes, each node its own directory and
// fixed ports so that a node can be restarted as it was), with the real
// Service, Postgres, natsissuer and hubs client.

// restartableHubs is a region of hub nodes that can be stopped and restarted.
type restartableHubs struct {
	cfgs    []hubnode.Config
	servers []*server.Server
}

// reservePort reserves a loopback port and releases it for a server to bind.
func reservePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startRestartableHubs starts n routed hub nodes hub-1..hub-n of region europe
// and waits for the full mesh.
func startRestartableHubs(tb testing.TB, trust natsauth.HubTrust, n int) *restartableHubs {
	tb.Helper()
	c := &restartableHubs{servers: make([]*server.Server, n)}
	var routes []string
	for i := range n {
		cfg := hubnode.Config{Name: fmt.Sprintf("hub-%d", i+1), Region: "europe", Dir: tb.TempDir(), Trust: trust,
			ClientHost: "127.0.0.1", ClientPort: reservePort(tb), LeafHost: "127.0.0.1", LeafPort: reservePort(tb),
			ClusterHost: "127.0.0.1", ClusterPort: reservePort(tb)}
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", cfg.ClusterPort))
		c.cfgs = append(c.cfgs, cfg)
	}
	for i := range c.cfgs {
		c.cfgs[i].Routes = routes
		c.start(tb, i)
	}
	tb.Cleanup(func() {
		for _, s := range c.servers {
			if s != nil {
				s.Shutdown()
				s.WaitForShutdown()
			}
		}
	})
	c.waitMesh(tb)
	return c
}

func (c *restartableHubs) start(tb testing.TB, i int) {
	tb.Helper()
	s, err := hubnode.Start(c.cfgs[i])
	if err != nil {
		tb.Fatal(err)
	}
	c.servers[i] = s
}

func (c *restartableHubs) stop(i int) {
	c.servers[i].Shutdown()
	c.servers[i].WaitForShutdown()
	c.servers[i] = nil
}

func (c *restartableHubs) waitMesh(tb testing.TB) {
	tb.Helper()
	waitCond(tb, 20*time.Second, "full route mesh", func() bool {
		for _, s := range c.servers {
			if s == nil || s.NumRoutes() < len(c.servers)-1 {
				return false
			}
		}
		return true
	})
}

func (c *restartableHubs) leafURL(i int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", c.cfgs[i].LeafPort)
}

func (c *restartableHubs) nodes() []hubs.Node {
	var out []hubs.Node
	for _, cfg := range c.cfgs {
		out = append(out, hubs.Node{Name: cfg.Name, URL: fmt.Sprintf("nats://127.0.0.1:%d", cfg.ClientPort)})
	}
	return out
}

func waitCond(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type reconcileEnv struct {
	svc     *controlplane.Service
	store   controlplane.Store
	cluster *restartableHubs
	hubs    *hubs.Hubs
}

// newReconcileEnv wires the Service to a 3-node cluster; vehicles enroll with
// hub-2's leaf URL.
func newReconcileEnv(tb testing.TB) *reconcileEnv {
	tb.Helper()
	pool := pgtest.NewPool(tb)
	store := postgres.NewStore(pool)
	iss := mustIssuer(tb, store)
	c := startRestartableHubs(tb, natsissuer.HubTrust(iss.Operator()), 3)
	h, err := hubs.New(c.nodes(), iss.SystemUserCreds(time.Hour), hubs.Options{Timeout: 500 * time.Millisecond,
		ReconnectWait: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	// Every node answers through the cluster once the system account's
	// interest has spread over the routes.
	waitCond(tb, 10*time.Second, "every node answering", func() bool {
		j, err := h.AccountJWTs(context.Background(), nil)
		return err == nil && len(j.Answering) == 3
	})
	svc := controlplane.NewService(store, controlplane.Config{
		Regions:        []controlplane.Region{{Name: "europe", LeafURLs: []string{c.leafURL(1)}}},
		PasswordParams: password.Params{Memory: 64, Time: 1, Threads: 1},
		Issuer:         iss,
		Hubs:           h,
		PushTimeout:    3 * time.Second,
	}, nil)
	return &reconcileEnv{svc: svc, store: store, cluster: c, hubs: h}
}

// runLeafAt runs a vehicle leaf with c's credentials against leafURL.
func runLeafAt(tb testing.TB, leafURL string, c *controlplane.VehicleCredentials, k vehicleKey) *server.Server {
	tb.Helper()
	creds, err := natsauth.FormatCreds(c.JWT, k.seed)
	if err != nil {
		tb.Fatal(err)
	}
	p := filepath.Join(tb.TempDir(), "vehicle.creds")
	if err := os.WriteFile(p, creds, 0o600); err != nil {
		tb.Fatal(err)
	}
	return natstest.RunLeaf(tb, leafURL, p, natstest.WithLeafReconnect(100*time.Millisecond))
}

// held counts what the nodes that answered hold of a's latest JWT.
func (e *reconcileEnv) held(tb testing.TB, tenantID string) (latest, other int, answering []string) {
	tb.Helper()
	a, err := e.store.FindAccount(context.Background(), tenantID, false)
	if err != nil {
		tb.Fatal(err)
	}
	j, err := e.hubs.AccountJWTs(context.Background(), []string{a.PublicKey})
	if err != nil {
		tb.Fatal(err)
	}
	for _, got := range j.Held[a.PublicKey] {
		if got == a.JWT {
			latest++
		} else {
			other++
		}
	}
	return latest, other, j.Answering
}

func (e *reconcileEnv) account(tb testing.TB, tenantID string) *controlplane.Account {
	tb.Helper()
	a, err := e.store.FindAccount(context.Background(), tenantID, false)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

func TestReconcileRepairsANodeThatWasDown(t *testing.T) {
	e := newReconcileEnv(t)
	ctx := context.Background()

	// All three nodes up: the push at signup reaches every node.
	actx, acme := MustSignup(t, e.svc, "Acme", "ops@acme.example")
	if _, err := e.svc.CreateFleet(actx, controlplane.FleetCreate{Slug: "drones", Environment: "prod"}); err != nil {
		t.Fatal(err)
	}
	if a := e.account(t, acme.Tenant.ID); a.PushedVersion != a.Version {
		t.Fatalf("account after signup: version %d, pushed %d", a.Version, a.PushedVersion)
	}
	if latest, other, _ := e.held(t, acme.Tenant.ID); latest != 3 || other != 0 {
		t.Fatalf("after signup: %d nodes hold the latest JWT, %d another", latest, other)
	}
	exp := time.Now().Add(time.Hour)
	tok, err := e.svc.CreateEnrollmentToken(actx, "drones", controlplane.EnrollmentTokenCreate{ExpiresAt: &exp})
	if err != nil {
		t.Fatal(err)
	}
	k := newVehicleKey(t)
	creds, err := e.svc.Enroll(ctx, controlplane.EnrollRequest{Token: tok.Secret, PublicKey: k.pub, VehicleID: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	hub2 := e.cluster.servers[1]
	runLeafAt(t, creds.LeafURLs[0], creds, k)
	natstest.WaitLeafCount(t, hub2, 1, 5*time.Second)

	rep, err := e.svc.ReconcileAccounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Accounts != 1 || rep.Drifted+rep.Behind+rep.Repaired+rep.Waiting != 0 || len(rep.Answering) != 3 || rep.Nodes != 3 {
		t.Fatalf("reconcile with nothing to do: %+v", rep)
	}

	// hub-3 goes down. A new tenant's account and a revocation reach the
	// other two; the revocation stays pending.
	e.cluster.stop(2)
	waitCond(t, 5*time.Second, "hub-3 seen down", func() bool { return !e.hubs.Status()[2].Up })
	_, beta := MustSignup(t, e.svc, "Beta", "ops@beta.example")
	if a := e.account(t, beta.Tenant.ID); a.PushedVersion != 0 {
		t.Fatalf("new account with hub-3 down marked pushed: %+v", a)
	}
	if latest, other, answering := e.held(t, beta.Tenant.ID); latest != 2 || other != 0 || len(answering) != 2 {
		t.Fatalf("new account with hub-3 down: latest %d, other %d, answering %v", latest, other, answering)
	}
	r, err := e.svc.RevokeVehicle(actx, "drones", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != controlplane.RevocationPending || len(r.Nodes) != 3 || !r.Nodes[0].OK || !r.Nodes[1].OK || r.Nodes[2].OK {
		t.Fatalf("revocation with hub-3 down: %+v", r)
	}
	natstest.WaitLeafCount(t, hub2, 0, 5*time.Second)

	// The reconciler cannot repair a node that does not answer: both
	// accounts wait, and the revocation stays pending.
	rep, err = e.svc.ReconcileAccounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Accounts != 2 || rep.Behind != 2 || rep.Waiting != 2 || rep.Drifted != 0 || rep.Repaired != 0 ||
		!slices.Equal(rep.Answering, []string{"hub-1", "hub-2"}) {
		t.Fatalf("reconcile with hub-3 down: %+v", rep)
	}
	if got := e.revocation(t, acme.Tenant.ID, r.ID); got.Status != controlplane.RevocationPending {
		t.Fatalf("revocation after a reconcile with hub-3 down: %+v", got)
	}

	// hub-3 restarts with its old directory: it holds Acme's account
	// without the revocation and no Beta account. Left alone, it lets the
	// revoked vehicle in (until the resolvers' hourly-ish hash sync).
	e.cluster.start(t, 2)
	e.cluster.waitMesh(t)
	waitCond(t, 10*time.Second, "hub-3 answering", func() bool {
		_, _, answering := e.held(t, acme.Tenant.ID)
		return len(answering) == 3
	})
	if latest, other, _ := e.held(t, acme.Tenant.ID); latest != 2 || other != 1 {
		t.Fatalf("Acme after hub-3's restart: latest %d, other %d", latest, other)
	}
	hub3 := e.cluster.servers[2]
	runLeafAt(t, e.cluster.leafURL(2), creds, k)
	natstest.WaitLeafCount(t, hub3, 1, 5*time.Second)

	// The reconciler repairs both accounts and proves the revocation.
	rep, err = e.svc.ReconcileAccounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("reconcile after hub-3's return: %s, %+v", rep.Duration, rep)
	if rep.Drifted != 2 || rep.Repaired != 2 || rep.Failed != 0 || rep.RevocationsProven != 1 || len(rep.Answering) != 3 {
		t.Fatalf("reconcile after hub-3's return: %+v", rep)
	}
	for _, d := range rep.Details {
		want := map[string]int{acme.Tenant.ID: 1, beta.Tenant.ID: 0}[d.TenantID]
		if d.Latest != 2 || d.Older != want || d.Missing != 1-want || !d.Pushed || d.Error != "" || len(d.Nodes) != 3 {
			t.Fatalf("detail: %+v", d)
		}
	}
	for _, id := range []string{acme.Tenant.ID, beta.Tenant.ID} {
		a := e.account(t, id)
		if a.PushedVersion != a.Version {
			t.Fatalf("account %s after the repair: version %d, pushed %d", id, a.Version, a.PushedVersion)
		}
		if latest, other, _ := e.held(t, id); latest != 3 || other != 0 {
			t.Fatalf("account %s after the repair: latest %d, other %d", id, latest, other)
		}
		// hub-3 serves the latest JWT.
		if _, err := hub3.LookupAccount(a.PublicKey); err != nil {
			t.Fatalf("hub-3 cannot resolve account %s: %v", id, err)
		}
		az, err := hub3.Accountz(&server.AccountzOptions{Account: a.PublicKey})
		if err != nil || az.Account == nil || az.Account.Jwt != a.JWT {
			t.Fatalf("hub-3 does not serve account %s's latest JWT: %v", id, err)
		}
	}
	got := e.revocation(t, acme.Tenant.ID, r.ID)
	if got.Status != controlplane.RevocationProven || len(got.Nodes) != 3 || got.ConnectionsRemaining != 0 || len(got.Connections) != 3 {
		t.Fatalf("revocation after the repair: %+v", got)
	}
	for i, n := range got.Nodes {
		if !n.OK || got.Connections[i].Error != "" || got.Connections[i].Connections != 0 {
			t.Fatalf("revocation after the repair, node %d: %+v / %+v", i, n, got.Connections[i])
		}
	}
	// The revoked vehicle is gone from every node and stays gone.
	time.Sleep(300 * time.Millisecond) // its leaves retry every 100 ms
	for _, s := range e.cluster.servers {
		if n := s.NumLeafNodes(); n != 0 {
			t.Fatalf("%s: %d leaf connections of the revoked vehicle", s.Name(), n)
		}
	}

	// Nothing left to do.
	rep, err = e.svc.ReconcileAccounts(ctx)
	if err != nil || rep.Drifted+rep.Behind+rep.Repaired+rep.Waiting != 0 {
		t.Fatalf("reconcile after the repair: %+v, %v", rep, err)
	}
	h, err := e.svc.Health(ctx)
	if err != nil || h.AccountsBehind != 0 || h.Degraded() || len(h.HubNodes) != 3 {
		t.Fatalf("health after the repair: %+v, %v", h, err)
	}
}

func (e *reconcileEnv) revocation(tb testing.TB, tenantID string, id int64) *controlplane.Revocation {
	tb.Helper()
	r, err := e.store.FindRevocation(context.Background(), tenantID, id)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

func TestHealthReportsHubNodesAndBacklog(t *testing.T) {
	e := newReconcileEnv(t)
	ctx := context.Background()
	h, err := e.svc.Health(ctx)
	if err != nil || h.Degraded() || len(h.HubNodes) != 3 || h.AccountsBehind != 0 {
		t.Fatalf("health, all up: %+v, %v", h, err)
	}
	e.cluster.stop(0)
	waitCond(t, 5*time.Second, "hub-1 seen down", func() bool { return !e.hubs.Status()[0].Up })
	MustSignup(t, e.svc, "Acme", "ops@acme.example")
	h, err = e.svc.Health(ctx)
	if err != nil {
		t.Fatalf("one node down made the service unhealthy: %v", err)
	}
	if !h.Degraded() || h.AccountsBehind != 1 || h.HubNodes[0].Up || h.HubNodes[0].Error == "" || !h.HubNodes[1].Up {
		t.Fatalf("health, hub-1 down: %+v", h)
	}
	if !strings.HasPrefix(h.HubNodes[0].Node, "hub-1") {
		t.Fatalf("node order: %+v", h.HubNodes)
	}
	if n, err := e.svc.AccountsBehind(ctx); err != nil || n != 1 {
		t.Fatalf("AccountsBehind: %d, %v", n, err)
	}
}
