package hubs_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
)

const telemetrySubject = "fleet.prod.veh.v1.state.position"

// telemetryFlow is a vehicle leaf publishing telemetry and a service user
// of the same tenant subscribed to it on some hub node.
type telemetryFlow struct {
	leafNC   *nats.Conn // a client on the vehicle's leaf server
	received atomic.Int64
}

// startFlow subscribes a service user on sub and connects a client to leaf.
func startFlow(tb testing.TB, tn *natstest.Tenant, sub, leaf *server.Server) *telemetryFlow {
	tb.Helper()
	f := &telemetryFlow{}
	svc := natstest.Connect(tb, sub.ClientURL(), tn.Service(tb, "svc"))
	if _, err := svc.Subscribe("fleet.*.veh.*.state.>", func(*nats.Msg) { f.received.Add(1) }); err != nil {
		tb.Fatal(err)
	}
	if err := svc.Flush(); err != nil {
		tb.Fatal(err)
	}
	nc, err := nats.Connect(leaf.ClientURL())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	f.leafNC = nc
	return f
}

// publish sends n messages of payload once a probe reached the subscriber
// (interest crosses the route and the leaf link asynchronously; probes
// sent before are dropped on the vehicle and never reach a hub), and waits
// until all arrived. It returns the messages the subscriber received.
func (f *telemetryFlow) publish(tb testing.TB, n int, payload []byte) int64 {
	tb.Helper()
	before := f.received.Load()
	waitFor(tb, 10*time.Second, "interest from the hub on the leaf", func() bool {
		if err := f.leafNC.Publish(telemetrySubject, payload); err != nil {
			tb.Fatal(err)
		}
		_ = f.leafNC.Flush()
		time.Sleep(5 * time.Millisecond)
		return f.received.Load() > before
	})
	time.Sleep(20 * time.Millisecond) // the last probes land
	want := f.received.Load() + int64(n)
	for range n {
		if err := f.leafNC.Publish(telemetrySubject, payload); err != nil {
			tb.Fatal(err)
		}
	}
	if err := f.leafNC.Flush(); err != nil {
		tb.Fatal(err)
	}
	waitFor(tb, 10*time.Second, "telemetry at the subscriber", func() bool { return f.received.Load() >= want })
	time.Sleep(20 * time.Millisecond) // nothing else may arrive
	return f.received.Load()
}

// trafficOf indexes stats by node for one account.
func trafficOf(st *controlplane.HubStats, account string) map[string]controlplane.AccountTraffic {
	out := map[string]controlplane.AccountTraffic{}
	for _, a := range st.Accounts {
		if a.Account == account {
			out[a.Node] = a
		}
	}
	return out
}

func TestAccountStatsCluster(t *testing.T) {
	op := natstest.MustOperator(t)
	servers := runCluster(t, op, 3)
	h := MustHubs(t, op, hubs.Options{Timeout: time.Second}, servers...)
	tn := newTenant(t, op, "tenant-a")
	waitFor(t, 5*time.Second, "a complete push", func() bool {
		p, err := h.PushAccount(context.Background(), tn.JWT(t))
		return err == nil && p.Complete()
	})

	// The vehicle on hub-2, the subscriber on hub-1: every message crosses
	// the route between them.
	leaf := natstest.RunVehicleLeaf(t, servers[1], vehicleUser(t, tn, "v1"))
	natstest.WaitLeafCount(t, servers[1], 1, 5*time.Second)
	flow := startFlow(t, tn, servers[0], leaf)
	payload := []byte(`{"lat":48.1,"lon":11.5}`)
	got := flow.publish(t, 100, payload)

	start := time.Now()
	st, err := h.AccountStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("AccountStats with 3 nodes: %s", time.Since(start))
	slices.Sort(st.Answered)
	if st.Expected != 3 || fmt.Sprint(st.Answered) != "[hub-1 hub-2 hub-3]" {
		t.Fatalf("answered %v of %d", st.Answered, st.Expected)
	}
	// Every node answers at once when asked with include_unused, even one
	// without connections of any tenant (hub-3): no waiting for a timeout.
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Errorf("AccountStats took %s: a node did not answer", d)
	}
	by := trafficOf(st, tn.Keys.Account.Public)
	size := int64(len(payload))
	// In on the vehicle's node, out on the subscriber's: the route hop
	// counts on neither.
	if a := by["hub-2"]; a.MsgsIn != got || a.BytesIn != got*size || a.MsgsOut != 0 || a.BytesOut != 0 {
		t.Errorf("hub-2 (vehicle) %+v; want %d in, %d bytes, nothing out", a, got, got*size)
	}
	if a := by["hub-1"]; a.MsgsOut != got || a.BytesOut != got*size || a.MsgsIn != 0 || a.BytesIn != 0 {
		t.Errorf("hub-1 (subscriber) %+v; want %d out, %d bytes, nothing in", a, got, got*size)
	}
	if a, ok := by["hub-3"]; ok {
		t.Errorf("hub-3 has no traffic of the tenant but reported %+v", a)
	}
	ids := map[string]string{}
	for _, s := range servers {
		ids[s.Name()] = s.ID()
	}
	for _, a := range st.Accounts {
		if a.ServerID != ids[a.Node] {
			t.Errorf("%s: server ID %q, want %q", a.Node, a.ServerID, ids[a.Node])
		}
		// The control plane's own requests are system-account traffic:
		// never a tenant's usage.
		if a.Account == op.System.Identity.Public {
			t.Errorf("system account listed: %+v", a)
		}
		if a.Account != tn.Keys.Account.Public {
			t.Errorf("unexpected account %+v", a)
		}
	}

	// Totals run on: another batch adds to them.
	got2 := flow.publish(t, 50, payload)
	st, err = h.AccountStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if a := trafficOf(st, tn.Keys.Account.Public)["hub-2"]; a.MsgsIn != got2 {
		t.Errorf("hub-2 after a second batch: %+v, want %d in", a, got2)
	}

	// hub-3 down: two answers of three, after the timeout.
	servers[2].Shutdown()
	servers[2].WaitForShutdown()
	st, err = h.AccountStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(st.Answered)
	if st.Expected != 3 || fmt.Sprint(st.Answered) != "[hub-1 hub-2]" {
		t.Fatalf("with hub-3 down: answered %v of %d", st.Answered, st.Expected)
	}
	if a := trafficOf(st, tn.Keys.Account.Public)["hub-2"]; a.MsgsIn != got2 {
		t.Errorf("hub-2 with hub-3 down: %+v", a)
	}
}

func TestAccountStatsNodeRestart(t *testing.T) {
	op := natstest.MustOperator(t)
	noJS := natstest.WithOptions(func(o *server.Options) { o.JetStream = false })
	hub := natstest.RunOperatorServer(t, op, natstest.WithServerName("hub-a"), noJS)
	h := MustHubs(t, op, hubs.Options{Timeout: time.Second, ReconnectWait: 50 * time.Millisecond}, hub)
	tn := newTenant(t, op, "tenant-a")
	if p, err := h.PushAccount(context.Background(), tn.JWT(t)); err != nil || !p.Complete() {
		t.Fatalf("push: %+v, %v", p, err)
	}
	leaf := natstest.RunVehicleLeaf(t, hub, vehicleUser(t, tn, "v1"), natstest.WithLeafReconnect(50*time.Millisecond))
	natstest.WaitLeafCount(t, hub, 1, 5*time.Second)
	payload := []byte("x")
	got := startFlow(t, tn, hub, leaf).publish(t, 20, payload)

	st, err := h.AccountStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	before := trafficOf(st, tn.Keys.Account.Public)["hub-a"]
	if before.ServerID != hub.ID() || before.MsgsIn != got || before.MsgsOut != got {
		t.Fatalf("before the restart: %+v; want %d in and out on %s", before, got, hub.ID())
	}

	// Restart hub-a on the same ports: a new server ID, totals from zero.
	clientPort := hub.Addr().(*net.TCPAddr).Port
	v, err := hub.Varz(nil)
	if err != nil {
		t.Fatal(err)
	}
	leafPort := v.LeafNode.Port
	hub.Shutdown()
	hub.WaitForShutdown()
	hub = natstest.RunOperatorServer(t, op, natstest.WithServerName("hub-a"), noJS,
		natstest.WithOptions(func(o *server.Options) { o.Port, o.LeafNode.Port = clientPort, leafPort }))
	waitFor(t, 10*time.Second, "the control plane reconnected", func() bool { return h.Status()[0].Up })
	// A fresh resolver directory: push the account again, then the
	// vehicle's leaf link comes back.
	waitFor(t, 5*time.Second, "a complete push", func() bool {
		p, err := h.PushAccount(context.Background(), tn.JWT(t))
		return err == nil && p.Complete()
	})
	natstest.WaitLeafCount(t, hub, 1, 10*time.Second)
	got = startFlow(t, tn, hub, leaf).publish(t, 7, payload)

	st, err = h.AccountStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	after := trafficOf(st, tn.Keys.Account.Public)["hub-a"]
	if after.ServerID == before.ServerID || after.ServerID != hub.ID() {
		t.Fatalf("server ID after the restart %q (before %q, now %q)", after.ServerID, before.ServerID, hub.ID())
	}
	if after.MsgsIn != got || after.MsgsOut != got {
		t.Fatalf("after the restart: %+v; want %d in and out (counted from zero)", after, got)
	}
}

func TestAccountStatsWithoutNodes(t *testing.T) {
	op := natstest.MustOperator(t)
	h, err := hubs.New([]hubs.Node{{Name: "hub-a", URL: "nats://127.0.0.1:1"}},
		systemCreds(t, op, time.Hour, nil), hubs.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	if _, err := h.AccountStats(context.Background()); err == nil {
		t.Fatal("AccountStats without a connected node did not fail")
	}
	var _ natsauth.User // (natsauth is used by the helpers of this package's tests)
}
