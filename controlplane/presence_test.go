package controlplane_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
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

// --- with real hub nodes ---

// presenceEnv is a Service over Postgres, the natsissuer and the hubs
// client, watching a cluster of real operator-mode hub nodes. Hub nodes do
// not advertise their leaf URLs, so a vehicle uses exactly the URLs it was
// given (to pin it to a node).
type presenceEnv struct {
	svc   *controlplane.Service
	ctx   context.Context // the tenant's admin
	nodes []*server.Server
	src   *holdSource
}

// holdSource passes the hubs' presence events on, except that it holds the
// disconnects of one node back until released: a node that reports a
// vehicle's old link closed only after the vehicle reconnected elsewhere.
type holdSource struct {
	controlplane.PresenceSource
	mu   sync.Mutex
	hold string
	held []func()
}

func (h *holdSource) WatchPresence(ctx context.Context, fn func(controlplane.PresenceEvent)) error {
	return h.PresenceSource.WatchPresence(ctx, func(ev controlplane.PresenceEvent) {
		h.mu.Lock()
		if ev.Kind == controlplane.PresenceDisconnect && ev.Node == h.hold {
			h.held = append(h.held, func() { fn(ev) })
			h.mu.Unlock()
			return
		}
		h.mu.Unlock()
		fn(ev)
	})
}

func (h *holdSource) holdDisconnects(node string) {
	h.mu.Lock()
	h.hold = node
	h.mu.Unlock()
}

func (h *holdSource) heldCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.held)
}

// release stops holding and delivers what was held, in order.
func (h *holdSource) release() {
	h.mu.Lock()
	held := h.held
	h.hold, h.held = "", nil
	h.mu.Unlock()
	for _, f := range held {
		f()
	}
}

// startHubCluster starts n hub nodes (hub-1..hub-n) of region "europe"
// routed into one cluster: every node lists every node's route (the
// server skips its own), as a deployment's shared configuration does.
func startHubCluster(tb testing.TB, iss *natsissuer.Issuer, n int) []*server.Server {
	tb.Helper()
	var routes []string
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		ports = append(ports, port)
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", port))
	}
	var nodes []*server.Server
	for i := 1; i <= n; i++ {
		c := hubnode.Config{Name: fmt.Sprintf("hub-%d", i), Region: "europe", Dir: tb.TempDir(),
			ClientHost: "127.0.0.1", ClientPort: -1, LeafHost: "127.0.0.1", LeafPort: -1, LeafNoAdvertise: true,
			Trust: natsissuer.HubTrust(iss.Operator())}
		if n > 1 {
			c.ClusterHost, c.ClusterPort, c.Routes = "127.0.0.1", ports[i-1], routes
		}
		s, err := hubnode.Start(c)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		nodes = append(nodes, s)
	}
	waitUntil(tb, 15*time.Second, "full route mesh", func() bool {
		for _, s := range nodes {
			if n > 1 && s.NumRemotes() != n-1 {
				return false
			}
		}
		return true
	})
	return nodes
}

func newPresenceEnv(tb testing.TB, n int) *presenceEnv {
	tb.Helper()
	pool := pgtest.NewPool(tb)
	store := postgres.NewStore(pool)
	iss := mustIssuer(tb, store)
	nodes := startHubCluster(tb, iss, n)
	var hn []hubs.Node
	for _, s := range nodes {
		hn = append(hn, hubs.Node{Name: s.Name(), URL: s.ClientURL()})
	}
	h, err := hubs.New(hn, iss.SystemUserCreds(time.Hour), hubs.Options{Timeout: time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	waitUntil(tb, 10*time.Second, "every hub node connected", func() bool {
		return !slices.ContainsFunc(h.Status(), func(st hubs.NodeStatus) bool { return !st.Up })
	})
	env := &presenceEnv{nodes: nodes, src: &holdSource{PresenceSource: h}}
	env.svc = controlplane.NewService(store, controlplane.Config{
		Regions:        []controlplane.Region{{Name: "europe", LeafURLs: []string{natstest.LeafURL(tb, nodes[0])}}},
		PasswordParams: password.Params{Memory: 64, Time: 1, Threads: 1},
		Issuer:         iss,
		Hubs:           h,
		Presence:       env.src,
		// Only events, start-up and node hints drive presence here.
		PresenceInterval: time.Hour,
	}, nil)
	env.ctx, _ = MustSignup(tb, env.svc, "Acme", "acme@example.com")
	if _, err := env.svc.CreateFleet(env.ctx, controlplane.FleetCreate{Slug: "drones", Environment: "prod"}); err != nil {
		tb.Fatal(err)
	}
	return env
}

// run starts RunPresence until the test ends.
func (e *presenceEnv) run(tb testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.svc.RunPresence(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != context.Canceled {
			tb.Errorf("RunPresence returned %v", err)
		}
	})
}

// vehicle enrolls vid and returns its creds file.
func (e *presenceEnv) vehicle(tb testing.TB, vid string) string {
	tb.Helper()
	exp := time.Now().Add(time.Hour)
	tok, err := e.svc.CreateEnrollmentToken(e.ctx, "drones", controlplane.EnrollmentTokenCreate{ExpiresAt: &exp})
	if err != nil {
		tb.Fatal(err)
	}
	k := newVehicleKey(tb)
	c, err := e.svc.Enroll(context.Background(), controlplane.EnrollRequest{Token: tok.Secret, PublicKey: k.pub, VehicleID: vid})
	if err != nil {
		tb.Fatal(err)
	}
	creds, err := natsauth.FormatCreds(c.JWT, k.seed)
	if err != nil {
		tb.Fatal(err)
	}
	p := filepath.Join(tb.TempDir(), vid+".creds")
	if err := os.WriteFile(p, creds, 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// leaf runs a vehicle leaf with creds that tries the hub nodes in the given
// order (and no others).
func (e *presenceEnv) leaf(tb testing.TB, creds string, nodes ...*server.Server) *server.Server {
	tb.Helper()
	urls := make([]string, len(nodes))
	for i, s := range nodes {
		urls[i] = natstest.LeafURL(tb, s)
	}
	return natstest.RunLeaf(tb, urls[0], creds, natstest.WithLeafReconnect(100*time.Millisecond),
		natstest.WithOptions(func(o *server.Options) {
			r := o.LeafNode.Remotes[0]
			r.NoRandomize = true
			for _, u := range urls[1:] {
				pu, err := url.Parse(u)
				if err != nil {
					tb.Fatal(err)
				}
				r.URLs = append(r.URLs, pu)
			}
		}))
}

// waitVehicle polls the vehicle until ok holds.
func (e *presenceEnv) waitVehicle(tb testing.TB, vid, what string, ok func(*controlplane.Vehicle) bool) *controlplane.Vehicle {
	tb.Helper()
	var v *controlplane.Vehicle
	waitUntil(tb, 10*time.Second, vid+" "+what, func() bool {
		var err error
		if v, err = e.svc.Vehicle(e.ctx, "drones", vid); err != nil {
			tb.Fatal(err)
		}
		return ok(v)
	})
	return v
}

func onlineAt(node string) func(*controlplane.Vehicle) bool {
	return func(v *controlplane.Vehicle) bool { return v.Online && v.HubNode == node && v.LastSeenAt != nil }
}

func waitUntil(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func stop(s *server.Server) {
	s.Shutdown()
	s.WaitForShutdown()
}

func TestPresenceFollowsConnectsDisconnectsAndNodeLoss(t *testing.T) {
	t.Parallel()
	e := newPresenceEnv(t, 3)
	hub1, hub2, hub3 := e.nodes[0], e.nodes[1], e.nodes[2]
	credsA, credsB, credsC, credsD := e.vehicle(t, "A"), e.vehicle(t, "B"), e.vehicle(t, "C"), e.vehicle(t, "D")

	// D is connected before the control plane watches: reconciliation at
	// start finds it (its connect event was published to no one).
	e.leaf(t, credsD, hub2)
	natstest.WaitLeafCount(t, hub2, 1, 5*time.Second)
	if v, _ := e.svc.Vehicle(e.ctx, "drones", "D"); v.Online {
		t.Fatal("online before presence runs")
	}
	e.run(t)
	e.waitVehicle(t, "D", "online on hub-2 (reconciled at start)", onlineAt("hub-2"))

	// A connects to hub-1, disconnects, reconnects to hub-2 — and hub-1's
	// disconnect arrives only after hub-2's connect.
	began := time.Now()
	leafA := e.leaf(t, credsA, hub1)
	a1 := e.waitVehicle(t, "A", "online on hub-1", onlineAt("hub-1"))
	t.Logf("leaf started → online in the API: %v", time.Since(began))
	e.src.holdDisconnects("hub-1")
	stop(leafA)
	waitUntil(t, 10*time.Second, "hub-1's disconnect of A (held)", func() bool { return e.src.heldCount() == 1 })
	leafA = e.leaf(t, credsA, hub2)
	e.waitVehicle(t, "A", "online on hub-2", onlineAt("hub-2"))
	e.src.release() // delivers hub-1's late disconnect synchronously
	if v, _ := e.svc.Vehicle(e.ctx, "drones", "A"); !onlineAt("hub-2")(v) {
		t.Fatalf("after hub-1's late disconnect: online=%v node=%q reason=%q", v.Online, v.HubNode, v.LastDisconnectReason)
	}

	// A disconnects for good: offline, with the server's reason and when.
	stop(leafA)
	a := e.waitVehicle(t, "A", "offline", func(v *controlplane.Vehicle) bool { return !v.Online })
	if a.HubNode != "hub-2" || a.LastDisconnectReason == "" || a.LastSeenAt == nil || !a.LastSeenAt.After(*a1.LastSeenAt) {
		t.Fatalf("A offline: node=%q reason=%q last_seen=%v (online since %v)", a.HubNode, a.LastDisconnectReason, a.LastSeenAt, a1.LastSeenAt)
	}
	t.Logf("A: %q at %v", a.LastDisconnectReason, a.LastSeenAt)

	// The list filters on presence.
	ids := func(online bool) string {
		p, err := e.svc.Vehicles(e.ctx, "drones", controlplane.VehicleQuery{Online: &online})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, v := range p.Items {
			out = append(out, v.VehicleID)
		}
		return strings.Join(out, " ")
	}
	if on, off := ids(true), ids(false); on != "D" || off != "A B C" {
		t.Fatalf("online %q, offline %q", on, off)
	}

	// hub-3 is lost. B can only reach hub-3: offline, "unreachable". C
	// fails over to hub-1 by itself.
	leafB := e.leaf(t, credsB, hub3)
	e.leaf(t, credsC, hub3, hub1)
	e.waitVehicle(t, "B", "online on hub-3", onlineAt("hub-3"))
	e.waitVehicle(t, "C", "online on hub-3", onlineAt("hub-3"))
	began = time.Now()
	stop(hub3)
	b := e.waitVehicle(t, "B", "offline", func(v *controlplane.Vehicle) bool { return !v.Online })
	t.Logf("hub-3 shut down → its vehicle offline: %v", time.Since(began))
	if b.HubNode != "hub-3" || b.LastDisconnectReason != "hub node hub-3 unreachable" {
		t.Fatalf("B after hub-3's loss: node=%q reason=%q", b.HubNode, b.LastDisconnectReason)
	}
	e.waitVehicle(t, "C", "online on hub-1 after failing over", onlineAt("hub-1"))
	// B comes back through hub-1.
	stop(leafB)
	e.leaf(t, credsB, hub1)
	e.waitVehicle(t, "B", "online on hub-1", onlineAt("hub-1"))
	if d, _ := e.svc.Vehicle(e.ctx, "drones", "D"); !onlineAt("hub-2")(d) {
		t.Fatalf("D on hub-2 was affected: %+v", d)
	}
}

// --- the rules, with listings made up ---

// fakeSource is a PresenceSource with made-up listings, for the orders and
// clock cases real servers do not produce on demand (a link half-open on
// one node, a listing older than an event). Events are applied with
// ApplyPresenceEvent directly.
type fakeSource struct {
	mu    sync.Mutex
	nodes []controlplane.NodeLeafs
	calls int
}

func (f *fakeSource) WatchPresence(context.Context, func(controlplane.PresenceEvent)) error {
	return nil
}

func (f *fakeSource) LeafConnections(context.Context) ([]controlplane.NodeLeafs, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return slices.Clone(f.nodes), nil
}

func (f *fakeSource) listings() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeSource) set(nodes ...controlplane.NodeLeafs) {
	f.mu.Lock()
	f.nodes = nodes
	f.mu.Unlock()
}

// newRulesEnv returns a Service over Postgres with a fakeSource, and the
// credentials of two enrolled vehicles, V1 and V2, of fleet "drones".
func newRulesEnv(tb testing.TB, interval time.Duration) (*controlplane.Service, *fakeSource, context.Context, [2]*controlplane.VehicleCredentials) {
	tb.Helper()
	store := postgres.NewStore(pgtest.NewPool(tb))
	src := &fakeSource{}
	svc := controlplane.NewService(store, controlplane.Config{
		Regions:          []controlplane.Region{{Name: "europe", LeafURLs: []string{"nats://127.0.0.1:7422"}}},
		PasswordParams:   password.Params{Memory: 64, Time: 1, Threads: 1},
		Issuer:           mustIssuer(tb, store),
		Presence:         src,
		PresenceInterval: interval,
	}, nil)
	ctx, _ := MustSignup(tb, svc, "Acme", "acme@example.com")
	if _, err := svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: "drones", Environment: "prod"}); err != nil {
		tb.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	tok, err := svc.CreateEnrollmentToken(ctx, "drones", controlplane.EnrollmentTokenCreate{ExpiresAt: &exp, MaxUses: 2})
	if err != nil {
		tb.Fatal(err)
	}
	var out [2]*controlplane.VehicleCredentials
	for i, vid := range []string{"V1", "V2"} {
		if out[i], err = svc.Enroll(context.Background(), controlplane.EnrollRequest{Token: tok.Secret, PublicKey: newVehicleKey(tb).pub, VehicleID: vid}); err != nil {
			tb.Fatal(err)
		}
	}
	return svc, src, ctx, out
}

func TestPresenceRules(t *testing.T) {
	t.Parallel()
	svc, src, ctx, vs := newRulesEnv(t, 0)
	v1, other := vs[0], vs[1]
	user, acc := v1.Vehicle.UserPublicKey, v1.AccountKey

	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	at := func(s int) time.Time { return base.Add(time.Duration(s) * time.Second) }
	link := func(node string, id uint64, start int) controlplane.LeafConn {
		return controlplane.LeafConn{Node: node, ID: id, Account: acc, User: user, Start: at(start)}
	}
	event := func(kind controlplane.PresenceEventKind, c controlplane.LeafConn, when int, reason string) {
		t.Helper()
		if err := svc.ApplyPresenceEvent(context.Background(), controlplane.PresenceEvent{Kind: kind, Node: c.Node, Conn: c, At: at(when), Reason: reason}); err != nil {
			t.Fatal(err)
		}
	}
	reconcile := func(nodes ...controlplane.NodeLeafs) *controlplane.PresenceReport {
		t.Helper()
		src.set(nodes...)
		rep, err := svc.ReconcilePresence(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	want := func(step string, online bool, node, reason string, lastSeen int) {
		t.Helper()
		v, err := svc.Vehicle(ctx, "drones", "V1")
		if err != nil {
			t.Fatal(err)
		}
		if v.Online != online || v.HubNode != node || !strings.Contains(v.LastDisconnectReason, reason) ||
			v.LastSeenAt == nil || !v.LastSeenAt.Equal(at(lastSeen)) {
			t.Fatalf("%s: online=%v node=%q reason=%q last_seen=%v; want online=%v node=%q reason~%q last_seen=%v",
				step, v.Online, v.HubNode, v.LastDisconnectReason, v.LastSeenAt, online, node, reason, at(lastSeen))
		}
		if o, _ := svc.Vehicle(ctx, "drones", "V2"); o.Online || o.LastSeenAt != nil {
			t.Fatalf("%s: the other vehicle changed: %+v", step, o)
		}
	}
	const closed, stale = "Client Closed", "Stale Connection"

	// Events, in and out of order.
	event(controlplane.PresenceConnect, link("n1", 7, 10), 10, "")
	want("connect on n1", true, "n1", "", 10)
	event(controlplane.PresenceConnect, link("n2", 3, 20), 20, "")
	want("connect on n2 (the vehicle moved)", true, "n2", "", 20)
	event(controlplane.PresenceDisconnect, link("n1", 7, 10), 40, stale)
	want("n1's disconnect of the old link, late", true, "n2", "", 20)
	event(controlplane.PresenceConnect, link("n1", 7, 10), 10, "")
	want("n1's connect of the old link, repeated", true, "n2", "", 20)
	event(controlplane.PresenceDisconnect, link("n2", 3, 20), 50, closed)
	want("disconnect on n2", false, "n2", closed, 50)
	event(controlplane.PresenceConnect, link("n2", 3, 20), 20, "")
	want("n2's connect repeated after its disconnect", false, "n2", closed, 50)
	event(controlplane.PresenceDisconnect, link("n1", 8, 60), 70, stale)
	want("a disconnect before its connect", false, "n1", stale, 70)
	event(controlplane.PresenceConnect, link("n1", 8, 60), 60, "")
	want("that connect, late", false, "n1", stale, 70)
	foreign := link("n1", 9, 80)
	foreign.Account = other.AccountKey + "X"
	event(controlplane.PresenceConnect, foreign, 80, "")
	want("a link of the key in another account", false, "n1", stale, 70)
	event(controlplane.PresenceConnect, controlplane.LeafConn{Node: "n1", ID: 1, Account: acc, Start: at(80)}, 80, "")
	want("a link without a user", false, "n1", stale, 70)

	// Reconciliation.
	l5 := link("n2", 4, 100)
	rep := reconcile(controlplane.NodeLeafs{Node: "n1", At: at(110)}, controlplane.NodeLeafs{Node: "n2", At: at(110), Conns: []controlplane.LeafConn{l5}})
	want("listed open on n2 (a missed connect)", true, "n2", stale, 100)
	if rep.Nodes != 2 || rep.Conns != 1 || rep.Changed != 1 || rep.Unreachable != 0 {
		t.Fatalf("report = %+v", rep)
	}
	if rep := reconcile(controlplane.NodeLeafs{Node: "n2", At: at(110), Conns: []controlplane.LeafConn{l5}}); rep.Changed != 0 {
		t.Fatalf("the same listing again changed %d", rep.Changed)
	}
	reconcile(controlplane.NodeLeafs{Node: "n2", At: at(90)})
	want("n2 listed before the link opened", true, "n2", stale, 100)
	reconcile(controlplane.NodeLeafs{Node: "n2", At: at(120), Unresolved: 1})
	want("n2 listed with a link it could not resolve", true, "n2", stale, 100)
	reconcile(controlplane.NodeLeafs{Node: "n2", At: at(120)})
	want("n2 no longer lists the link (a missed disconnect)", false, "n2", "without a disconnect event", 120)

	// A vehicle open on two nodes (a half-open link on n1) is online on
	// the newer link.
	reconcile(controlplane.NodeLeafs{Node: "n1", At: at(140), Conns: []controlplane.LeafConn{link("n1", 10, 125)}},
		controlplane.NodeLeafs{Node: "n2", At: at(140), Conns: []controlplane.LeafConn{link("n2", 11, 130)}})
	want("open on n1 and n2", true, "n2", "without a disconnect event", 130)

	// A node that does not answer takes its vehicles offline; when it
	// lists the same link again, the vehicle is back.
	event(controlplane.PresenceConnect, link("n3", 1, 150), 150, "")
	before := time.Now()
	rep = reconcile(controlplane.NodeLeafs{Node: "n2", At: at(160)}, controlplane.NodeLeafs{Node: "n3", Err: "no reply within 2s"})
	v, _ := svc.Vehicle(ctx, "drones", "V1")
	if v.Online || v.HubNode != "n3" || v.LastDisconnectReason != "hub node n3 unreachable" || v.LastSeenAt.Before(before.Truncate(time.Microsecond)) || rep.Unreachable != 1 {
		t.Fatalf("after n3 went silent: %+v, report %+v", v, rep)
	}
	reconcile(controlplane.NodeLeafs{Node: "n3", At: time.Now().Add(time.Second), Conns: []controlplane.LeafConn{link("n3", 1, 150)}})
	if v, _ := svc.Vehicle(ctx, "drones", "V1"); !v.Online || v.HubNode != "n3" {
		t.Fatalf("n3 back, listing the link: %+v", v)
	}
	// A node taken out of the configuration.
	reconcile(controlplane.NodeLeafs{Node: "n1", At: time.Now()})
	if v, _ := svc.Vehicle(ctx, "drones", "V1"); v.Online || v.LastDisconnectReason != "hub node n3 is no longer configured" {
		t.Fatalf("n3 removed: %+v", v)
	}

	// Without a source there is nothing to run.
	bare := controlplane.NewService(nil, controlplane.Config{}, nil)
	WantCode(t, bare.RunPresence(context.Background()), controlplane.EUNAVAILABLE)
}

// BenchmarkReconcilePresence measures one reconciliation against Postgres
// with presenceBenchVehicles enrolled vehicles spread over three nodes
// (listings made up, so only the control plane's side is measured): steady
// (every vehicle online and listed: nothing to change, the periodic case)
// and flip (a node lost and back: every vehicle changes).
//
//	go test ./controlplane -run '^$' -bench ReconcilePresence -benchtime 20x
func BenchmarkReconcilePresence(b *testing.B) {
	const presenceBenchVehicles = 10_000
	pool := pgtest.NewPool(b)
	store := postgres.NewStore(pool)
	src := &fakeSource{}
	svc := controlplane.NewService(store, controlplane.Config{
		PasswordParams: password.Params{Memory: 64, Time: 1, Threads: 1},
		Regions:        []controlplane.Region{{Name: "europe"}},
		Issuer:         mustIssuer(b, store),
		Presence:       src,
	}, nil)
	ctx, res := MustSignup(b, svc, "Bench Co", "bench@example.com")
	f, err := svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: "drones", Environment: "prod"})
	if err != nil {
		b.Fatal(err)
	}
	// Vehicles with well-formed (not valid) user keys, in one statement.
	if _, err := pool.Exec(context.Background(), `
		INSERT INTO vehicles (tenant_id, fleet_id, vehicle_id, name, status, user_public_key)
		SELECT $1, $2, 'v' || i, 'v' || i, 'active',
			'U' || left(translate(upper(md5(i::text) || md5(i::text || 'x')), '0189', 'WXYZ'), 55)
		FROM generate_series(1, $3) AS i`, res.Tenant.ID, f.ID, presenceBenchVehicles); err != nil {
		b.Fatal(err)
	}
	rows, _ := pool.Query(context.Background(), `SELECT user_public_key FROM vehicles WHERE tenant_id = $1 ORDER BY id`, res.Tenant.ID)
	var keys []string
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			b.Fatal(err)
		}
		keys = append(keys, k)
	}
	if rows.Err() != nil || len(keys) != presenceBenchVehicles {
		b.Fatalf("%d keys, %v", len(keys), rows.Err())
	}
	acc, err := store.FindAccount(context.Background(), res.Tenant.ID, false)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now().Add(-time.Hour).Truncate(time.Microsecond)
	listing := func(at time.Time, down string) []controlplane.NodeLeafs {
		nodes := []controlplane.NodeLeafs{{Node: "hub-1", At: at}, {Node: "hub-2", At: at}, {Node: "hub-3", At: at}}
		for i, k := range keys {
			n := &nodes[i%3]
			n.Conns = append(n.Conns, controlplane.LeafConn{Node: n.Node, ID: uint64(i + 1), Account: acc.PublicKey, User: k, Start: start})
		}
		for i := range nodes {
			if nodes[i].Node == down {
				nodes[i] = controlplane.NodeLeafs{Node: down, Err: "no reply"}
			}
		}
		return nodes
	}
	reconcile := func(want int) {
		rep, err := svc.ReconcilePresence(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if want >= 0 && rep.Changed != want {
			b.Fatalf("changed %d, want %d", rep.Changed, want)
		}
	}
	src.set(listing(time.Now(), "")...)
	reconcile(presenceBenchVehicles)

	b.Run("steady", func(b *testing.B) {
		src.set(listing(time.Now(), "")...)
		for b.Loop() {
			reconcile(0)
		}
	})
	b.Run("flip", func(b *testing.B) {
		down, up := listing(time.Now(), "hub-2"), listing(time.Now().Add(time.Hour), "")
		third := len(listing(time.Now(), "")[1].Conns)
		for b.Loop() {
			src.set(down...)
			reconcile(third)
			src.set(up...)
			reconcile(third)
		}
	})
}

// TestRunPresenceWaitsForNodesAtStart: a node the control plane has not
// reached since it started may only have a connection still coming up; its
// vehicles go offline after one interval, not at the first listing.
func TestRunPresenceWaitsForNodesAtStart(t *testing.T) {
	t.Parallel()
	const interval = 300 * time.Millisecond
	svc, src, ctx, vs := newRulesEnv(t, interval)
	c := vs[0]
	ev := controlplane.PresenceEvent{Kind: controlplane.PresenceConnect, Node: "n1", At: time.Now(),
		Conn: controlplane.LeafConn{Node: "n1", ID: 1, Account: c.AccountKey, User: c.Vehicle.UserPublicKey, Start: time.Now()}}
	if err := svc.ApplyPresenceEvent(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	src.set(controlplane.NodeLeafs{Node: "n1", Err: "not connected yet"})
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	began := time.Now()
	go func() { done <- svc.RunPresence(runCtx) }()
	defer func() { cancel(); <-done }()

	waitUntil(t, 5*time.Second, "the first listing", func() bool { return src.listings() >= 1 })
	if v, _ := svc.Vehicle(ctx, "drones", "V1"); !v.Online {
		t.Fatal("offline after the first listing, before the node had a chance to connect")
	}
	var v *controlplane.Vehicle
	waitUntil(t, 10*time.Second, "offline after the grace", func() bool {
		v, _ = svc.Vehicle(ctx, "drones", "V1")
		return !v.Online
	})
	if v.LastDisconnectReason != "hub node n1 unreachable" || time.Since(began) < interval {
		t.Fatalf("after %v: %+v", time.Since(began), v)
	}
}
