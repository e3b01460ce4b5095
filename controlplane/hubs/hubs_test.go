package hubs_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
)

// systemCreds mints a fresh system user per call, as natsissuer does, and
// counts the calls.
func systemCreds(tb testing.TB, op *natsauth.Operator, ttl time.Duration, calls *atomic.Int64) hubs.Creds {
	return func() (string, []byte, error) {
		if calls != nil {
			calls.Add(1)
		}
		k, err := natsauth.NewUserKey()
		if err != nil {
			return "", nil, err
		}
		sk, err := op.System.SigningKey.KeyPair()
		if err != nil {
			return "", nil, err
		}
		defer sk.Wipe()
		j, err := natsauth.IssueSystemUserJWT(sk, op.System.Identity.Public, k.Public, "fleetplane-controlplane", time.Now().Add(ttl))
		if err != nil {
			return "", nil, err
		}
		return j, k.Seed, nil
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// MustHubs connects Hubs to servers (node name = server name) and waits
// until every node is up.
func MustHubs(tb testing.TB, op *natsauth.Operator, opts hubs.Options, servers ...*server.Server) *hubs.Hubs {
	tb.Helper()
	var nodes []hubs.Node
	for _, s := range servers {
		nodes = append(nodes, hubs.Node{Name: s.Name(), URL: s.ClientURL()})
	}
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	h, err := hubs.New(nodes, systemCreds(tb, op, time.Hour, nil), opts)
	if err != nil {
		tb.Fatalf("hubs.New: %v", err)
	}
	tb.Cleanup(h.Close)
	waitFor(tb, 5*time.Second, "every node up", func() bool {
		for _, st := range h.Status() {
			if !st.Up {
				return false
			}
		}
		return true
	})
	return h
}

func waitFor(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runCluster starts n operator-mode hubs routed into one cluster, each with
// its own full resolver directory (natstest.RunOperatorServer), and waits
// for the full mesh.
func runCluster(tb testing.TB, op *natsauth.Operator, n int) []*server.Server {
	tb.Helper()
	cluster := func(name string, routes string) natstest.Option {
		return natstest.WithOptions(func(o *server.Options) {
			o.ServerName = name
			o.JetStream = false // not needed here; keeps the cluster quick to form
			o.Cluster = server.ClusterOpts{Name: "hubs", Host: "127.0.0.1", Port: -1}
			if routes != "" {
				o.Routes = server.RoutesFromStr(routes)
			}
		})
	}
	seed := natstest.RunOperatorServer(tb, op, cluster("hub-1", ""))
	routes := fmt.Sprintf("nats://127.0.0.1:%d", seed.ClusterAddr().Port)
	servers := []*server.Server{seed}
	for i := 2; i <= n; i++ {
		servers = append(servers, natstest.RunOperatorServer(tb, op, cluster(fmt.Sprintf("hub-%d", i), routes)))
	}
	waitFor(tb, 10*time.Second, "full route mesh", func() bool {
		for _, s := range servers {
			if s.NumRemotes() != n-1 {
				return false
			}
		}
		return true
	})
	return servers
}

func vehicleUser(tb testing.TB, tn *natstest.Tenant, vid string) natsauth.User {
	return tn.Vehicle(tb, natsauth.VehicleIdentity{TenantID: tn.Spec.TenantID, Fleet: "drones", Env: "prod", VehicleID: vid}, time.Time{})
}

func newTenant(tb testing.TB, op *natsauth.Operator, id string) *natstest.Tenant {
	return natstest.NewTenant(tb, op, natsauth.AccountSpec{Name: id, TenantID: id, Limits: natsauth.Unlimited()})
}

func wantAcks(tb testing.TB, p *controlplane.HubPush, ok map[string]bool) {
	tb.Helper()
	if p.Expected != len(ok) || len(p.Nodes) != len(ok) {
		tb.Fatalf("push: expected %d, %d acks, want %d: %+v", p.Expected, len(p.Nodes), len(ok), p.Nodes)
	}
	for _, a := range p.Nodes {
		want, known := ok[a.Node]
		if !known || a.OK != want {
			tb.Fatalf("push: ack %+v, want OK=%v (all: %+v)", a, want, p.Nodes)
		}
	}
}

func TestPushThenVehicleConnects(t *testing.T) {
	op := natstest.MustOperator(t)
	hub := natstest.RunOperatorServer(t, op, natstest.WithServerName("hub-a"))
	reg := prometheus.NewRegistry()
	h := MustHubs(t, op, hubs.Options{}, hub)
	reg.MustRegister(h)
	if err := h.Ready(context.Background()); err != nil {
		t.Fatalf("Ready: %v", err)
	}

	tn := newTenant(t, op, "tenant-a")
	p, err := h.PushAccount(context.Background(), tn.JWT(t))
	if err != nil {
		t.Fatal(err)
	}
	wantAcks(t, p, map[string]bool{"hub-a": true})
	if !p.Complete() || p.Nodes[0].Message != "jwt updated" {
		t.Fatalf("push: %+v", p)
	}

	natstest.RunVehicleLeaf(t, hub, vehicleUser(t, tn, "v1"))
	natstest.WaitLeafCount(t, hub, 1, 5*time.Second)

	// A JWT the server refuses (signed by the operator identity key, which
	// strict signing key usage forbids) is a node error, not a Go error.
	idKP, _ := op.Identity.KeyPair()
	bad, err := natsauth.IssueAccountJWT(idKP, tn.Keys.Account.Public, tn.Keys.RoleKeys(), tn.Spec)
	if err != nil {
		t.Fatal(err)
	}
	p, err = h.PushAccount(context.Background(), bad)
	if err != nil {
		t.Fatal(err)
	}
	wantAcks(t, p, map[string]bool{"hub-a": false})
	if !strings.Contains(p.Nodes[0].Message, "signing key") {
		t.Fatalf("refusal message: %q", p.Nodes[0].Message)
	}
	if _, err := h.PushAccount(context.Background(), "not a jwt"); err == nil {
		t.Fatal("pushed something that is not an account JWT")
	}

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sawUp, sawPush bool
	for _, mf := range mfs {
		switch mf.GetName() {
		case "fleetplane_hub_node_up":
			sawUp = len(mf.GetMetric()) == 1 && mf.GetMetric()[0].GetGauge().GetValue() == 1
		case "fleetplane_hub_push_duration_seconds":
			var n uint64
			for _, m := range mf.GetMetric() {
				n += m.GetHistogram().GetSampleCount()
			}
			sawPush = n == 2
		}
	}
	if !sawUp || !sawPush {
		t.Fatalf("metrics: node_up %v, push histogram %v", sawUp, sawPush)
	}
}

func TestPushToClusterCollectsEveryNode(t *testing.T) {
	op := natstest.MustOperator(t)
	servers := runCluster(t, op, 3)
	h := MustHubs(t, op, hubs.Options{Timeout: time.Second}, servers...)
	tn := newTenant(t, op, "tenant-a")

	var p *controlplane.HubPush
	// Route interest for the system account settles just after the mesh forms.
	waitFor(t, 5*time.Second, "a complete push", func() bool {
		var err error
		p, err = h.PushAccount(context.Background(), tn.JWT(t))
		return err == nil && p.Complete()
	})
	wantAcks(t, p, map[string]bool{"hub-1": true, "hub-2": true, "hub-3": true})

	// Every node stored the JWT once, not once per connection: the push
	// was published once for the cluster.
	for _, s := range servers {
		acc, err := s.LookupAccount(tn.Keys.Account.Public)
		if err != nil || acc == nil {
			t.Fatalf("%s: account not resolvable after the push: %v", s.Name(), err)
		}
	}

	// A vehicle on hub-2 can connect with the account every node knows.
	natstest.RunVehicleLeaf(t, servers[1], vehicleUser(t, tn, "v1"))
	natstest.WaitLeafCount(t, servers[1], 1, 5*time.Second)

	// hub-3 down: two acks and one node that did not answer.
	servers[2].Shutdown()
	servers[2].WaitForShutdown()
	tn.Spec.Limits.Subs = 1000
	start := time.Now()
	p, err := h.PushAccount(context.Background(), tn.JWT(t))
	if err != nil {
		t.Fatal(err)
	}
	wantAcks(t, p, map[string]bool{"hub-1": true, "hub-2": true, "hub-3": false})
	if p.Complete() {
		t.Fatal("push with a node down reported complete")
	}
	if msg := p.Nodes[2].Message; !strings.Contains(msg, "no reply") {
		t.Fatalf("hub-3 message %q", msg)
	}
	if d := time.Since(start); d < 900*time.Millisecond || d > 3*time.Second {
		t.Fatalf("push with a node down took %s, want about the 1 s timeout", d)
	}
	if err := h.Ready(context.Background()); err != nil {
		t.Fatalf("Ready with two of three nodes up: %v", err)
	}
	st := h.Status()
	if !st[0].Up || !st[1].Up || st[2].Up || st[2].Error == "" {
		t.Fatalf("status: %+v", st)
	}

	// A context deadline shorter than Timeout wins.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := h.PushAccount(ctx, tn.JWT(t)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 700*time.Millisecond {
		t.Fatalf("push ignored the context deadline: %s", d)
	}
}

func TestPushWithHubsConnectedToOneNodeOnly(t *testing.T) {
	// Only hub-1 has a working connection (the others' URLs are wrong), yet
	// hub-2 and hub-3 acknowledge through the cluster.
	op := natstest.MustOperator(t)
	servers := runCluster(t, op, 3)
	h, err := hubs.New([]hubs.Node{
		{Name: "hub-1", URL: servers[0].ClientURL()},
		{Name: "hub-2", URL: "nats://127.0.0.1:1"},
		{Name: "hub-3", URL: servers[0].ClientURL()}, // reaches hub-1: a misconfiguration
	}, systemCreds(t, op, time.Hour, nil), hubs.Options{Timeout: time.Second, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	waitFor(t, 5*time.Second, "hub-1 up", func() bool { return h.Status()[0].Up })
	st := h.Status()
	if st[1].Up || st[2].Up || !strings.Contains(st[2].Error, `want "hub-3"`) {
		t.Fatalf("status: %+v", st)
	}
	tn := newTenant(t, op, "tenant-a")
	var p *controlplane.HubPush
	waitFor(t, 5*time.Second, "a complete push", func() bool {
		p, err = h.PushAccount(context.Background(), tn.JWT(t))
		return err == nil && p.Complete()
	})
	wantAcks(t, p, map[string]bool{"hub-1": true, "hub-2": true, "hub-3": true})
}

func TestUserConnectionsAndRevocation(t *testing.T) {
	op := natstest.MustOperator(t)
	servers := runCluster(t, op, 3)
	h := MustHubs(t, op, hubs.Options{}, servers...)
	tn := newTenant(t, op, "tenant-a")
	waitFor(t, 5*time.Second, "a complete push", func() bool {
		p, err := h.PushAccount(context.Background(), tn.JWT(t))
		return err == nil && p.Complete()
	})

	v1, v2 := vehicleUser(t, tn, "v1"), vehicleUser(t, tn, "v2")
	natstest.RunVehicleLeaf(t, servers[1], v1) // hub-2
	natstest.RunVehicleLeaf(t, servers[2], v2) // hub-3
	natstest.WaitLeafCount(t, servers[1], 1, 5*time.Second)
	natstest.WaitLeafCount(t, servers[2], 1, 5*time.Second)
	// A client connection of the same account: it must not be counted as a vehicle's.
	natstest.Connect(t, servers[1].ClientURL(), tn.Service(t, "svc"))

	counts := func(userPub string) map[string]int {
		t.Helper()
		ncs, err := h.UserConnections(context.Background(), tn.Keys.Account.Public, userPub)
		if err != nil {
			t.Fatal(err)
		}
		if len(ncs) != 3 {
			t.Fatalf("%d node results, want 3", len(ncs))
		}
		out := map[string]int{}
		for _, nc := range ncs {
			if nc.Error != "" {
				t.Fatalf("node %s: %s", nc.Node, nc.Error)
			}
			out[nc.Node] = nc.Connections
		}
		return out
	}
	want := func(got, want map[string]int) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("connections %v, want %v", got, want)
		}
	}
	// The CONNZ user filter matches a leaf connection's user nkey.
	want(counts(v1.Public), map[string]int{"hub-1": 0, "hub-2": 1, "hub-3": 0})
	want(counts(v2.Public), map[string]int{"hub-1": 0, "hub-2": 0, "hub-3": 1})
	stranger, _ := natsauth.NewUserKey()
	want(counts(stranger.Public), map[string]int{"hub-1": 0, "hub-2": 0, "hub-3": 0})
	// The account filter applies too: v1 looked up in another account.
	other := newTenant(t, op, "tenant-b")
	ncs, err := h.UserConnections(context.Background(), other.Keys.Account.Public, v1.Public)
	if err != nil {
		t.Fatal(err)
	}
	for _, nc := range ncs {
		if nc.Connections != 0 || nc.Error != "" {
			t.Fatalf("v1 counted in another account: %+v", ncs)
		}
	}

	// Revoke v1: after the push no node has a connection of v1; v2 stays.
	revs, err := natsauth.RevokeUser(tn.Spec.Revocations, v1.Public, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tn.Spec.Revocations = revs
	start := time.Now()
	p, err := h.PushAccount(context.Background(), tn.JWT(t))
	if err != nil || !p.Complete() {
		t.Fatalf("revocation push: %+v, %v", p, err)
	}
	waitFor(t, 2*time.Second, "v1's connections closed", func() bool {
		for _, n := range counts(v1.Public) {
			if n != 0 {
				return false
			}
		}
		return true
	})
	t.Logf("revocation push + proof: %s", time.Since(start))
	want(counts(v2.Public), map[string]int{"hub-1": 0, "hub-2": 0, "hub-3": 1})

	if _, err := h.UserConnections(context.Background(), "nope", v1.Public); err == nil {
		t.Fatal("accepted an invalid account key")
	}
}

func TestReconnectMintsFreshCredentials(t *testing.T) {
	// System users that expire after ~2 s: the server closes the connection
	// at expiry and Hubs reconnects with a new one.
	op := natstest.MustOperator(t)
	hub := natstest.RunOperatorServer(t, op, natstest.WithServerName("hub-a"))
	var calls atomic.Int64
	h, err := hubs.New([]hubs.Node{{Name: "hub-a", URL: hub.ClientURL()}}, systemCreds(t, op, 2*time.Second, &calls),
		hubs.Options{ReconnectWait: 50 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	waitFor(t, 5*time.Second, "connected", func() bool { return h.Status()[0].Up })
	first := calls.Load()
	t.Logf("credentials fetched %d times for the first connection", first)
	waitFor(t, 10*time.Second, "a reconnect with fresh credentials", func() bool {
		return calls.Load() > first && h.Status()[0].Up
	})
	p, err := h.PushAccount(context.Background(), newTenant(t, op, "tenant-a").JWT(t))
	if err != nil || !p.Complete() {
		t.Fatalf("push after reconnect: %+v, %v", p, err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	creds := func() (string, []byte, error) { return "", nil, nil }
	for name, nodes := range map[string][]hubs.Node{
		"none":      nil,
		"no name":   {{URL: "nats://127.0.0.1:4222"}},
		"no URL":    {{Name: "a"}},
		"duplicate": {{Name: "a", URL: "nats://127.0.0.1:4222"}, {Name: "a", URL: "nats://127.0.0.1:4223"}},
	} {
		if _, err := hubs.New(nodes, creds, hubs.Options{}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := hubs.New([]hubs.Node{{Name: "a", URL: "nats://127.0.0.1:4222"}}, nil, hubs.Options{}); err == nil {
		t.Error("accepted a nil credentials callback")
	}
}
