package controlplane

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"
)

// # Vehicle presence
//
// A vehicle is online while its leaf link to a hub node is open. The hubs
// report every leaf connection's connect and disconnect (system account
// events) and, on request, every node's open leaf connections. Both are
// applied per connection, identified by (hub node, connection ID, start):
//
//   - A connect is applied only when its connection started after the one
//     recorded for the vehicle. A late connect of an older connection, or
//     the repeat of one, changes nothing.
//   - A disconnect is applied when it is for the recorded connection or for
//     one that started after it (its connect was missed or is still on its
//     way). When a vehicle moves from node 1 to node 2, node 1's disconnect
//     may well arrive after node 2's connect — node 1 may only notice the
//     dead link 30 s later — and is then ignored, because node 1's
//     connection started before node 2's.
//   - Reconciliation lists the open leaf connections of every node and
//     corrects what events missed: a vehicle recorded online whose
//     connection its node no longer lists goes offline; a vehicle with an
//     open connection that is recorded offline (or on a connection that
//     closed) comes online; a node that does not answer takes its vehicles
//     offline with the reason "hub node <name> unreachable" (RunPresence
//     waits one interval for a node it has not reached since it started:
//     its connection may still be coming up). Every change
//     is conditional on the recorded connection being the one the decision
//     was based on, so an event applied in the meantime wins.
//
// Connection start times come from each node's clock. Comparing starts of
// two nodes assumes their clocks agree better than the time a vehicle
// takes to reconnect (NTP does); where they do not, reconciliation heals
// the result within one interval.
//
// Presence is system data keyed by a vehicle's NATS user key, which is
// globally unique; every write also checks that the event's account is the
// vehicle's tenant's account.

// PresenceStore persists vehicle presence (online, last seen, hub node,
// last disconnect reason). Its methods are part of Store. They are not
// scoped by tenant: a user key identifies one vehicle of one tenant.
type PresenceStore interface {
	// SetVehicleOnline records that connection c of the vehicle holding
	// c.User (in account c.Account) is open, unless the vehicle's recorded
	// connection started at or after c.Start. last_seen_at becomes at
	// (never earlier than it was). It reports whether a vehicle changed.
	SetVehicleOnline(ctx context.Context, c LeafConn, at time.Time) (bool, error)
	// SetVehicleOffline records that connection c closed at `at` for
	// reason, when c is the vehicle's recorded connection or started after
	// it. It reports whether a vehicle changed.
	SetVehicleOffline(ctx context.Context, c LeafConn, at time.Time, reason string) (bool, error)
	// FindVehiclePresence returns the presence of every online vehicle and
	// of every vehicle holding one of userKeys.
	FindVehiclePresence(ctx context.Context, userKeys []string) ([]*VehiclePresence, error)
	// UpdateVehiclePresence applies each change whose From still equals the
	// vehicle's recorded state and returns how many it applied.
	UpdateVehiclePresence(ctx context.Context, changes []PresenceChange) (int, error)
}

// PresenceSource reports leaf connections from the hubs (implemented by
// controlplane/hubs).
type PresenceSource interface {
	// WatchPresence subscribes to connect and disconnect events of leaf
	// connections on every hub node and returns once the subscriptions are
	// in place; fn is then called for each event (and for node up/down
	// hints) until ctx is done. fn may be called concurrently. Events may
	// arrive out of order or, rarely, twice.
	WatchPresence(ctx context.Context, fn func(PresenceEvent)) error
	// LeafConnections lists the open leaf connections of every configured
	// hub node, one entry per node in configuration order; a node that did
	// not answer has Err set.
	LeafConnections(ctx context.Context) ([]NodeLeafs, error)
}

// PresenceEventKind says what a PresenceEvent reports.
type PresenceEventKind string

const (
	PresenceConnect    PresenceEventKind = "connect"
	PresenceDisconnect PresenceEventKind = "disconnect"
	// PresenceNodeDown and PresenceNodeUp are hints that a hub node went
	// away or came back (its shutdown event, the control plane's
	// connection to it): the Service reconciles at once.
	PresenceNodeDown PresenceEventKind = "node_down"
	PresenceNodeUp   PresenceEventKind = "node_up"
)

// PresenceEvent is one connect or disconnect of a leaf connection, or a
// node hint (Node set, Conn empty).
type PresenceEvent struct {
	Kind PresenceEventKind
	Node string
	Conn LeafConn
	// At is when it happened, by the node's clock (a disconnect: when the
	// connection closed).
	At time.Time
	// Reason is why the connection closed (the server's words, e.g.
	// "Client Closed", "Stale Connection", "Authentication Revoked").
	Reason string
}

// LeafConn is one leaf connection on a hub node. (Node, ID, Start)
// identify it: IDs restart when a node restarts.
type LeafConn struct {
	Node    string
	ID      uint64
	Account string // the account the link is bound to
	User    string // the user nkey the link authenticated with
	Start   time.Time
}

func (c LeafConn) same(s PresenceState) bool {
	return c.Node == s.HubNode && c.ID == s.ConnID && c.Start.Equal(s.ConnStart)
}

// NodeLeafs is one hub node's open leaf connections.
type NodeLeafs struct {
	Node string
	// At is when the node listed them, by its clock.
	At    time.Time
	Conns []LeafConn
	// Unresolved counts open leaf connections whose user could not be
	// looked up: while it is not 0, an absent connection proves nothing.
	Unresolved int
	// Err says why the node did not answer ("" when it did).
	Err string
}

// PresenceState is what decides a vehicle's presence: whether it is online
// and the connection that said so (ConnStart zero: none yet).
type PresenceState struct {
	Online    bool
	HubNode   string
	ConnID    uint64
	ConnStart time.Time
}

// VehiclePresence is a vehicle's recorded presence.
type VehiclePresence struct {
	TenantID  string
	VehicleID string
	UserKey   string
	Account   string // the tenant's account public key
	PresenceState
	LastSeenAt           *time.Time
	LastDisconnectReason string
}

// PresenceChange moves a vehicle (by user key) from state From to To.
// LastSeenAt never moves backwards; Reason is written when To is offline.
type PresenceChange struct {
	UserKey    string
	From, To   PresenceState
	LastSeenAt time.Time
	Reason     string
}

// DefaultPresenceInterval is how often RunPresence reconciles when
// Config.PresenceInterval is 0.
const DefaultPresenceInterval = 30 * time.Second

// PresenceReport is what one reconciliation did.
type PresenceReport struct {
	Nodes       int // nodes listed
	Unreachable int // nodes that did not answer
	Conns       int // open leaf connections listed
	Changed     int // vehicles changed
}

// RunPresence keeps vehicle presence up to date until ctx is done: it
// subscribes to the hubs' connect/disconnect events, reconciles at once,
// then every Config.PresenceInterval and whenever a hub node goes away or
// comes back (a node not reached since the start counts as lost only after
// one interval). It returns ctx's error, or an error at once when no presence
// source is configured. Run it on every replica: events are shared out
// among replicas (a queue group) and reconciliation is idempotent.
func (s *Service) RunPresence(ctx context.Context) error {
	src := s.cfg.Presence
	if src == nil {
		return Errorf(EUNAVAILABLE, "no presence source configured")
	}
	interval := cmp.Or(s.cfg.PresenceInterval, DefaultPresenceInterval)
	kick := make(chan struct{}, 1)
	wake := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	err := src.WatchPresence(ctx, func(ev PresenceEvent) {
		switch ev.Kind {
		case PresenceNodeDown, PresenceNodeUp:
			s.logger.InfoContext(ctx, "hub node went away or came back; reconciling presence", "node", ev.Node, "event", string(ev.Kind))
			wake()
		default:
			if err := s.ApplyPresenceEvent(ctx, ev); err != nil && ctx.Err() == nil {
				// Reconciliation repairs what a lost write left behind.
				s.logger.WarnContext(ctx, "recording presence failed", "kind", ev.Kind, "node", ev.Node, "err", err)
				wake()
			}
		}
	})
	if err != nil {
		return fmt.Errorf("presence: watch: %w", err)
	}
	// A node this process has not heard from yet (its connection may still
	// be coming up) is taken for lost only after one interval; one that
	// answered before, at once.
	nodes := &nodeTracker{started: s.now(), grace: interval, answered: map[string]bool{}}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := s.reconcilePresence(ctx, nodes); err != nil && ctx.Err() == nil {
			s.logger.WarnContext(ctx, "presence reconciliation failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-kick:
		}
	}
}

// ApplyPresenceEvent records one connect or disconnect (other kinds are
// ignored).
func (s *Service) ApplyPresenceEvent(ctx context.Context, ev PresenceEvent) error {
	c := ev.Conn
	if c.User == "" || c.Node == "" || c.Start.IsZero() {
		return nil // not a vehicle link (or a malformed event): nothing to record
	}
	// Postgres keeps microseconds: compare what it can store.
	c.Start = c.Start.Truncate(time.Microsecond)
	at := ev.At
	if at.IsZero() {
		at = s.now()
	}
	var err error
	switch ev.Kind {
	case PresenceConnect:
		_, err = s.store.SetVehicleOnline(ctx, c, at)
	case PresenceDisconnect:
		_, err = s.store.SetVehicleOffline(ctx, c, at, ev.Reason)
	}
	return err
}

// ReconcilePresence lists every hub node's open leaf connections and
// corrects the recorded presence (see the comment at the top of this file).
// A node that does not answer is taken for lost.
func (s *Service) ReconcilePresence(ctx context.Context) (*PresenceReport, error) {
	return s.reconcilePresence(ctx, nil)
}

// nodeTracker remembers which nodes answered since RunPresence started.
type nodeTracker struct {
	started  time.Time
	grace    time.Duration
	answered map[string]bool
}

// lost reports whether node, which did not answer now, counts as lost.
func (t *nodeTracker) lost(node string, now time.Time) bool {
	return t == nil || t.answered[node] || now.Sub(t.started) >= t.grace
}

func (s *Service) reconcilePresence(ctx context.Context, tracker *nodeTracker) (*PresenceReport, error) {
	src := s.cfg.Presence
	if src == nil {
		return nil, Errorf(EUNAVAILABLE, "no presence source configured")
	}
	nodes, err := src.LeafConnections(ctx)
	if err != nil {
		return nil, err
	}
	rep := &PresenceReport{Nodes: len(nodes)}
	now := s.now()
	lost := map[string]bool{}
	var users []string
	for i := range nodes {
		n := &nodes[i]
		if n.Err != "" {
			rep.Unreachable++
			lost[n.Node] = tracker.lost(n.Node, now)
			continue
		}
		if tracker != nil {
			tracker.answered[n.Node] = true
		}
		rep.Conns += len(n.Conns)
		for j := range n.Conns {
			n.Conns[j].Node = n.Node
			n.Conns[j].Start = n.Conns[j].Start.Truncate(time.Microsecond)
			users = append(users, n.Conns[j].User)
		}
	}
	recs, err := s.store.FindVehiclePresence(ctx, users)
	if err != nil {
		return nil, err
	}
	changes := planPresence(nodes, lost, recs, now)
	if len(changes) > 0 {
		if rep.Changed, err = s.store.UpdateVehiclePresence(ctx, changes); err != nil {
			return nil, err
		}
	}
	if rep.Changed > 0 || rep.Unreachable > 0 {
		s.logger.InfoContext(ctx, "presence reconciled", "nodes", rep.Nodes, "unreachable", rep.Unreachable,
			"connections", rep.Conns, "changed", rep.Changed)
	}
	return rep, nil
}

// planPresence compares the nodes' listings with the recorded presence and
// returns the changes that make the record agree. Vehicles on a node that
// did not answer go offline only when lost says the node is lost.
func planPresence(nodes []NodeLeafs, lost map[string]bool, recs []*VehiclePresence, now time.Time) []PresenceChange {
	byNode := make(map[string]*NodeLeafs, len(nodes))
	open := map[string][]LeafConn{}
	for i := range nodes {
		n := &nodes[i]
		byNode[n.Node] = n
		if n.Err != "" {
			continue
		}
		for _, c := range n.Conns {
			open[c.User] = append(open[c.User], c)
		}
	}
	var out []PresenceChange
	for _, r := range recs {
		var conns []LeafConn
		for _, c := range open[r.UserKey] {
			if c.Account == r.Account {
				conns = append(conns, c)
			}
		}
		cur := r.PresenceState
		node := byNode[cur.HubNode]
		if ch, ok := planVehicle(r, cur, node, lost[cur.HubNode], conns, now); ok {
			out = append(out, ch)
		}
	}
	return out
}

func planVehicle(r *VehiclePresence, cur PresenceState, node *NodeLeafs, lost bool, conns []LeafConn, now time.Time) (PresenceChange, bool) {
	ch := PresenceChange{UserKey: r.UserKey, From: cur}
	listed := node != nil && node.Err == ""
	// The recorded connection started after its node listed: the events
	// are ahead of the listing, which proves nothing about it.
	newer := listed && !cur.ConnStart.IsZero() && cur.ConnStart.After(node.At)

	if len(conns) > 0 {
		for _, c := range conns {
			if !c.same(cur) {
				continue
			}
			// The recorded connection is open. If it is recorded closed, a
			// listing made after that (a node that came back, a guess of
			// "unreachable" that was wrong) reopens it; an older one is
			// merely stale.
			if cur.Online || r.LastSeenAt == nil || !node.At.After(*r.LastSeenAt) {
				return ch, false
			}
			ch.To = cur
			ch.To.Online = true
			ch.LastSeenAt = node.At
			return ch, true
		}
		if newer {
			return ch, false
		}
		c := slices.MaxFunc(conns, func(a, b LeafConn) int {
			return cmp.Or(a.Start.Compare(b.Start), cmp.Compare(a.Node, b.Node), cmp.Compare(a.ID, b.ID))
		})
		ch.To = PresenceState{Online: true, HubNode: c.Node, ConnID: c.ID, ConnStart: c.Start}
		ch.LastSeenAt = c.Start
		return ch, true
	}

	if !cur.Online {
		return ch, false
	}
	ch.To = cur
	ch.To.Online = false
	switch {
	case node == nil:
		ch.Reason = fmt.Sprintf("hub node %s is no longer configured", cur.HubNode)
		ch.LastSeenAt = now
	case node.Err != "" && !lost:
		return ch, false
	case node.Err != "":
		ch.Reason = fmt.Sprintf("hub node %s unreachable", cur.HubNode)
		ch.LastSeenAt = now
	case newer || node.Unresolved > 0:
		return ch, false
	default:
		ch.Reason = fmt.Sprintf("connection closed on hub node %s without a disconnect event (found by reconciliation)", cur.HubNode)
		ch.LastSeenAt = node.At
	}
	return ch, true
}
