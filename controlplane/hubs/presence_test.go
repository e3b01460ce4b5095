package hubs_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
)

// events collects what WatchPresence reports.
type events struct {
	mu  sync.Mutex
	all []controlplane.PresenceEvent
}

func (e *events) add(ev controlplane.PresenceEvent) {
	e.mu.Lock()
	e.all = append(e.all, ev)
	e.mu.Unlock()
}

func (e *events) matching(f func(controlplane.PresenceEvent) bool) []controlplane.PresenceEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []controlplane.PresenceEvent
	for _, ev := range e.all {
		if f(ev) {
			out = append(out, ev)
		}
	}
	return out
}

func watch(tb testing.TB, h *hubs.Hubs) *events {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	evs := &events{}
	if err := h.WatchPresence(ctx, evs.add); err != nil {
		tb.Fatal(err)
	}
	return evs
}

func ofUser(kind controlplane.PresenceEventKind, user string) func(controlplane.PresenceEvent) bool {
	return func(ev controlplane.PresenceEvent) bool { return ev.Kind == kind && ev.Conn.User == user }
}

// leafsOf returns the open links of user per node from LeafConnections.
func leafsOf(tb testing.TB, h *hubs.Hubs, user string) map[string][]controlplane.LeafConn {
	tb.Helper()
	nodes, err := h.LeafConnections(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string][]controlplane.LeafConn{}
	for _, n := range nodes {
		if n.Err != "" {
			out[n.Node] = nil
			continue
		}
		if n.At.IsZero() || n.Unresolved != 0 {
			tb.Fatalf("node %s: listing %+v", n.Node, n)
		}
		for _, c := range n.Conns {
			if c.User == user {
				out[n.Node] = append(out[n.Node], c)
			}
		}
	}
	return out
}

func TestPresenceEventsAndListing(t *testing.T) {
	t.Parallel()
	op := natstest.MustOperator(t)
	hub := natstest.RunOperatorServer(t, op, natstest.WithServerName("hub-a"))
	h := MustHubs(t, op, hubs.Options{}, hub)
	tn := newTenant(t, op, "tenant-a")
	if _, err := h.PushAccount(context.Background(), tn.JWT(t)); err != nil {
		t.Fatal(err)
	}
	evs := watch(t, h)

	u := vehicleUser(t, tn, "v1")
	leaf := natstest.RunVehicleLeaf(t, hub, u)
	waitFor(t, 5*time.Second, "connect event", func() bool { return len(evs.matching(ofUser(controlplane.PresenceConnect, u.Public))) == 1 })
	c := evs.matching(ofUser(controlplane.PresenceConnect, u.Public))[0]
	if c.Node != "hub-a" || c.Conn.Node != "hub-a" || c.Conn.Account != tn.Keys.Account.Public || c.Conn.ID == 0 ||
		c.Conn.Start.IsZero() || c.At.Before(c.Conn.Start) {
		t.Fatalf("connect event = %+v", c)
	}
	// The listing names the same link.
	got := leafsOf(t, h, u.Public)["hub-a"]
	if len(got) != 1 || got[0] != c.Conn {
		t.Fatalf("listing = %+v, want %+v", got, c.Conn)
	}
	// Other leaf links (here: more vehicles, read through paged CONNZ) are
	// listed with their own users.
	var others []natsauth.User
	for i := range 4 {
		o := vehicleUser(t, tn, fmt.Sprintf("o%d", i))
		others = append(others, o)
		natstest.RunVehicleLeaf(t, hub, o)
	}
	natstest.WaitLeafCount(t, hub, 5, 5*time.Second)
	// A replica that saw none of the events looks every link up: first by
	// pages (many unknown links), then one by one (a new link).
	cold := MustHubs(t, op, hubs.Options{}, hub)
	for _, o := range others {
		if l := leafsOf(t, cold, o.Public)["hub-a"]; len(l) != 1 || l[0].Account != tn.Keys.Account.Public {
			t.Fatalf("vehicle %s listed as %+v", o.Public, l)
		}
	}
	late := vehicleUser(t, tn, "late")
	natstest.RunVehicleLeaf(t, hub, late)
	natstest.WaitLeafCount(t, hub, 6, 5*time.Second)
	if l := leafsOf(t, cold, late.Public)["hub-a"]; len(l) != 1 {
		t.Fatalf("new vehicle listed as %+v", l)
	}

	leaf.Shutdown()
	leaf.WaitForShutdown()
	waitFor(t, 5*time.Second, "disconnect event", func() bool { return len(evs.matching(ofUser(controlplane.PresenceDisconnect, u.Public))) == 1 })
	d := evs.matching(ofUser(controlplane.PresenceDisconnect, u.Public))[0]
	if d.Conn != c.Conn || d.Reason == "" || d.At.Before(c.At) {
		t.Fatalf("disconnect event = %+v (connect %+v)", d, c)
	}
	t.Logf("disconnect reason: %q", d.Reason)
	if got := leafsOf(t, h, u.Public)["hub-a"]; len(got) != 0 {
		t.Fatalf("listing after disconnect = %+v", got)
	}
	// The control plane's own client connections are no presence events.
	if n := len(evs.matching(func(ev controlplane.PresenceEvent) bool {
		return ev.Conn.User == "" && ev.Kind != controlplane.PresenceNodeDown
	})); n != 0 {
		t.Fatalf("%d events without a user", n)
	}
}

func TestPresenceInClusterOnceAndNodeLoss(t *testing.T) {
	t.Parallel()
	op := natstest.MustOperator(t)
	servers := runCluster(t, op, 3)
	h := MustHubs(t, op, hubs.Options{Timeout: time.Second}, servers...)
	// A second control-plane replica: the two share each event.
	h2 := MustHubs(t, op, hubs.Options{Timeout: time.Second}, servers...)
	tn := newTenant(t, op, "tenant-a")
	if _, err := h.PushAccount(context.Background(), tn.JWT(t)); err != nil {
		t.Fatal(err)
	}
	evs, evs2 := watch(t, h), watch(t, h2)

	users := map[string]natsauth.User{}
	for i, s := range servers {
		u := vehicleUser(t, tn, fmt.Sprintf("v%d", i))
		users[s.Name()] = u
		natstest.RunVehicleLeaf(t, s, u)
		natstest.WaitLeafCount(t, s, 1, 5*time.Second)
	}
	connects := func(u natsauth.User) int {
		return len(evs.matching(ofUser(controlplane.PresenceConnect, u.Public))) +
			len(evs2.matching(ofUser(controlplane.PresenceConnect, u.Public)))
	}
	for name, u := range users {
		waitFor(t, 5*time.Second, "connect event of the vehicle on "+name, func() bool { return connects(u) > 0 })
	}
	// Give repeats every chance to arrive: a round trip through every node.
	for _, hh := range []*hubs.Hubs{h, h2} {
		if _, err := hh.LeafConnections(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for name, u := range users {
		if n := connects(u); n != 1 {
			t.Fatalf("vehicle on %s: %d connect events over two replicas and three node connections, want 1", name, n)
		}
		all := append(evs.matching(ofUser(controlplane.PresenceConnect, u.Public)), evs2.matching(ofUser(controlplane.PresenceConnect, u.Public))...)
		if all[0].Node != name {
			t.Fatalf("vehicle on %s reported on %s", name, all[0].Node)
		}
		if l := leafsOf(t, h, u.Public); len(l[name]) != 1 || len(l) != 1 {
			t.Fatalf("vehicle on %s listed as %+v", name, l)
		}
	}

	// hub-3 goes away: a node-down hint, and its listing fails.
	servers[2].Shutdown()
	servers[2].WaitForShutdown()
	waitFor(t, 5*time.Second, "node-down hint", func() bool {
		return len(evs.matching(func(ev controlplane.PresenceEvent) bool {
			return ev.Kind == controlplane.PresenceNodeDown && ev.Node == "hub-3"
		})) > 0
	})
	nodes, err := h.LeafConnections(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var errs []string
	for _, n := range nodes {
		if n.Err != "" {
			errs = append(errs, n.Node+": "+n.Err)
		}
	}
	if len(errs) != 1 || !strings.HasPrefix(errs[0], "hub-3: ") {
		t.Fatalf("listing errors = %q, want hub-3's only", errs)
	}
	if !slices.ContainsFunc(nodes, func(n controlplane.NodeLeafs) bool { return n.Node == "hub-1" && len(n.Conns) == 1 }) {
		t.Fatalf("listing = %+v", nodes)
	}
}

// TestLeafConnectionsWithNoNodeUp reports every node unreachable.
func TestLeafConnectionsWithNoNodeUp(t *testing.T) {
	t.Parallel()
	op := natstest.MustOperator(t)
	hub := natstest.RunOperatorServer(t, op, natstest.WithServerName("hub-a"))
	h := MustHubs(t, op, hubs.Options{Timeout: 200 * time.Millisecond}, hub)
	hub.Shutdown()
	hub.WaitForShutdown()
	waitFor(t, 5*time.Second, "node down", func() bool { return !h.Status()[0].Up })
	nodes, err := h.LeafConnections(context.Background())
	if err != nil || len(nodes) != 1 || nodes[0].Err == "" {
		t.Fatalf("LeafConnections = %+v, %v", nodes, err)
	}
}
