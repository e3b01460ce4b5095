package hubs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Presence (controlplane.PresenceSource).
//
// Events: every node publishes $SYS.ACCOUNT.<acc>.CONNECT and .DISCONNECT
// for each client and leaf connection of an account (events.go,
// ConnectEventMsg/DisconnectEventMsg; for a leaf link client.kind is
// "Leafnode" and client.user the user nkey of the JWT it authenticated
// with). Routes carry them to every node of the cluster, so a plain
// subscription on each node's connection would see each event once per
// node. Instead every connection subscribes in one queue group, shared
// with the other control-plane replicas: the server hands each event to
// one member (preferring its own local subscriber), so each event is
// handled once per installation. Event IDs are remembered for a while as
// well, to drop the rare repeat.
//
// Listings: LEAFZ gives a node's open leaf connections in one atomic
// snapshot (connection ID and account, no user and no start time); CONNZ
// filtered on one connection ID gives those. Connection details never
// change, so they are cached per (node, server ID, connection ID) and only
// new links cost a lookup; a node with many unknown links (the first
// listing after start) is read with paged CONNZ first. The pages may skip
// or repeat links that open or close meanwhile; that only costs the
// lookups, since the LEAFZ snapshot decides which links are listed.

const (
	presenceQueue   = "fleetplane-presence"
	connectSubject  = "$SYS.ACCOUNT.*.CONNECT"
	disconnSubject  = "$SYS.ACCOUNT.*.DISCONNECT"
	shutdownSubject = "$SYS.SERVER.*.SHUTDOWN"
	leafKind        = "Leafnode"

	lookupWorkers = 8
	seenEvents    = 8192
	// nodeWatchEvery is how often WatchPresence checks the node
	// connections for up/down changes.
	nodeWatchEvery = 250 * time.Millisecond
)

var _ controlplane.PresenceSource = (*Hubs)(nil)

// Variables so that tests can exercise paging with a few links.
var (
	// pagedFillAbove is the number of unknown links on one node above
	// which it is read with paged CONNZ rather than one lookup per link.
	pagedFillAbove = 32
	connzPageSize  = 1024
)

// eventMsg is ConnectEventMsg and DisconnectEventMsg (events.go), the
// fields used.
type eventMsg struct {
	ID     string      `json:"id"`
	Time   time.Time   `json:"timestamp"`
	Server *serverInfo `json:"server"`
	Client struct {
		Start   *time.Time `json:"start"`
		Stop    *time.Time `json:"stop"`
		ID      uint64     `json:"id"`
		Account string     `json:"acc"`
		User    string     `json:"user"`
		Kind    string     `json:"kind"`
	} `json:"client"`
	Reason string `json:"reason"`
}

type leafzResponse struct {
	Server *serverInfo `json:"server"`
	Data   *struct {
		ID    string    `json:"server_id"`
		Now   time.Time `json:"now"`
		Leafs []struct {
			ID      uint64 `json:"id"`
			Account string `json:"account"`
		} `json:"leafs"`
	} `json:"data"`
	Error *struct {
		Code        int    `json:"code"`
		Description string `json:"description"`
	} `json:"error"`
}

type connzConnsResponse struct {
	Server *serverInfo `json:"server"`
	Data   *struct {
		Conns []struct {
			Cid            uint64    `json:"cid"`
			Kind           string    `json:"kind"`
			Start          time.Time `json:"start"`
			AuthorizedUser string    `json:"authorized_user"`
			Account        string    `json:"account"`
		} `json:"connections"`
	} `json:"data"`
	Error *struct {
		Code        int    `json:"code"`
		Description string `json:"description"`
	} `json:"error"`
}

// leafKey identifies a leaf link: connection IDs restart with the server,
// whose ID changes then.
type leafKey struct {
	node, serverID string
	cid            uint64
}

type leafInfo struct {
	user, account string
	start         time.Time
}

// leafCache maps links to their users; see the package comment above.
type leafCache struct {
	mu sync.Mutex
	m  map[leafKey]leafInfo
}

func (c *leafCache) get(k leafKey) (leafInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	li, ok := c.m[k]
	return li, ok
}

func (c *leafCache) put(k leafKey, li leafInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[leafKey]leafInfo{}
	}
	c.m[k] = li
}

// keep drops node's entries other than those of serverID's open links.
func (c *leafCache) keep(node, serverID string, open map[uint64]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.m {
		if k.node == node && (k.serverID != serverID || !open[k.cid]) {
			delete(c.m, k)
		}
	}
}

// seenSet remembers the last n event IDs.
type seenSet struct {
	mu   sync.Mutex
	ids  map[string]struct{}
	ring []string
	next int
}

func newSeenSet(n int) *seenSet {
	return &seenSet{ids: make(map[string]struct{}, n), ring: make([]string, n)}
}

// add reports whether id is new, and remembers it.
func (s *seenSet) add(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.ids[id]; dup {
		return false
	}
	delete(s.ids, s.ring[s.next])
	s.ring[s.next] = id
	s.ids[id] = struct{}{}
	s.next = (s.next + 1) % len(s.ring)
	return true
}

// WatchPresence implements controlplane.PresenceSource. It subscribes on
// every node's connection (a node that is down gets its subscriptions when
// it reconnects) and returns once the subscriptions of the connected nodes
// reached their servers; events reach fn until ctx is done.
func (h *Hubs) WatchPresence(ctx context.Context, fn func(controlplane.PresenceEvent)) error {
	seen := newSeenSet(seenEvents)
	onEvent := func(m *nats.Msg) {
		ev, id, ok := h.parseEvent(m)
		if ok && (id == "" || seen.add(id)) {
			fn(ev)
		}
	}
	onShutdown := func(m *nats.Msg) {
		var si serverInfo
		if err := json.Unmarshal(m.Data, &si); err != nil || si.Name == "" {
			return
		}
		if _, ok := h.byName[si.Name]; ok && seen.add("shutdown:"+si.ID) {
			fn(controlplane.PresenceEvent{Kind: controlplane.PresenceNodeDown, Node: si.Name})
		}
	}
	var subs []*nats.Subscription
	unsubscribe := func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}
	for _, n := range h.nodes {
		for _, subj := range []string{connectSubject, disconnSubject} {
			s, err := n.nc.QueueSubscribe(subj, presenceQueue, onEvent)
			if err != nil {
				unsubscribe()
				return fmt.Errorf("hubs: node %q: subscribe %s: %w", n.Name, subj, err)
			}
			subs = append(subs, s)
		}
		// Every replica wants to hear of a node going away.
		s, err := n.nc.Subscribe(shutdownSubject, onShutdown)
		if err != nil {
			unsubscribe()
			return fmt.Errorf("hubs: node %q: subscribe %s: %w", n.Name, shutdownSubject, err)
		}
		subs = append(subs, s)
	}
	fctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	for _, n := range h.nodes {
		if n.up() {
			if err := n.nc.FlushWithContext(fctx); err != nil {
				h.log.Warn("presence subscriptions not confirmed", "node", n.Name, "err", err)
			}
		}
	}
	go h.watchNodes(ctx, fn, unsubscribe)
	return nil
}

// watchNodes reports node connections going down or coming back until ctx
// is done, then unsubscribes.
func (h *Hubs) watchNodes(ctx context.Context, fn func(controlplane.PresenceEvent), unsubscribe func()) {
	defer unsubscribe()
	up := make([]bool, len(h.nodes))
	for i, n := range h.nodes {
		up[i] = n.up()
	}
	t := time.NewTicker(nodeWatchEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for i, n := range h.nodes {
			now := n.up()
			if now == up[i] {
				continue
			}
			up[i] = now
			kind := controlplane.PresenceNodeDown
			if now {
				kind = controlplane.PresenceNodeUp
			}
			fn(controlplane.PresenceEvent{Kind: kind, Node: n.Name})
		}
	}
}

// parseEvent turns a leaf link's connect or disconnect event of a
// configured node into a PresenceEvent; ok is false for anything else.
func (h *Hubs) parseEvent(m *nats.Msg) (ev controlplane.PresenceEvent, id string, ok bool) {
	var e eventMsg
	if err := json.Unmarshal(m.Data, &e); err != nil {
		h.log.Warn("undecodable presence event", "subject", m.Subject, "err", err)
		return ev, "", false
	}
	c := e.Client
	if c.Kind != leafKind || c.User == "" || c.Start == nil || e.Server == nil {
		return ev, "", false
	}
	if _, known := h.byName[e.Server.Name]; !known {
		return ev, "", false
	}
	ev = controlplane.PresenceEvent{Node: e.Server.Name, At: e.Time, Reason: e.Reason,
		Conn: controlplane.LeafConn{Node: e.Server.Name, ID: c.ID, Account: c.Account, User: c.User, Start: *c.Start}}
	key := leafKey{node: e.Server.Name, serverID: e.Server.ID, cid: c.ID}
	switch {
	case strings.HasSuffix(m.Subject, ".CONNECT"):
		ev.Kind = controlplane.PresenceConnect
		h.leafs.put(key, leafInfo{user: c.User, account: c.Account, start: *c.Start})
	case strings.HasSuffix(m.Subject, ".DISCONNECT"):
		ev.Kind = controlplane.PresenceDisconnect
		if c.Stop != nil {
			ev.At = *c.Stop
		}
	default:
		return ev, "", false
	}
	return ev, e.ID, true
}

// LeafConnections implements controlplane.PresenceSource: LEAFZ on every
// node, then the users of links not seen before.
func (h *Hubs) LeafConnections(ctx context.Context) ([]controlplane.NodeLeafs, error) {
	start := time.Now()
	replies, err := h.gather(ctx, "$SYS.REQ.SERVER.PING.LEAFZ", []byte(`{}`))
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	elapsed := time.Since(start)
	out := make([]controlplane.NodeLeafs, len(h.nodes))
	var wg sync.WaitGroup
	for i, n := range h.nodes {
		out[i].Node = n.Name
		data, ok := replies[n.Name]
		if !ok {
			if err != nil {
				out[i].Err = err.Error()
			} else {
				out[i].Err = h.missing(n, elapsed)
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.nodeLeafs(ctx, n, data, &out[i])
		}()
	}
	wg.Wait()
	return out, ctx.Err()
}

// nodeLeafs fills nl from node n's LEAFZ reply.
func (h *Hubs) nodeLeafs(ctx context.Context, n *node, data []byte, nl *controlplane.NodeLeafs) {
	var r leafzResponse
	switch err := json.Unmarshal(data, &r); {
	case err != nil:
		nl.Err = "undecodable LEAFZ reply: " + err.Error()
		return
	case r.Error != nil:
		nl.Err = fmt.Sprintf("LEAFZ: %d %s", r.Error.Code, r.Error.Description)
		return
	case r.Data == nil || r.Server == nil:
		nl.Err = "LEAFZ reply has no data"
		return
	}
	serverID := r.Server.ID
	nl.At = r.Data.Now
	open := make(map[uint64]bool, len(r.Data.Leafs))
	var unknown []uint64
	for _, l := range r.Data.Leafs {
		open[l.ID] = true
		if _, ok := h.leafs.get(leafKey{n.Name, serverID, l.ID}); !ok {
			unknown = append(unknown, l.ID)
		}
	}
	h.leafs.keep(n.Name, serverID, open)
	if len(unknown) > pagedFillAbove {
		if err := h.fillPaged(ctx, n, serverID, open); err != nil {
			h.log.Warn("paged CONNZ failed; looking links up one by one", "node", n.Name, "err", err)
		}
	}
	var missing []uint64
	for _, cid := range unknown {
		if _, ok := h.leafs.get(leafKey{n.Name, serverID, cid}); !ok {
			missing = append(missing, cid)
		}
	}
	unresolved := h.lookupLeafs(ctx, n, serverID, missing)
	for _, l := range r.Data.Leafs {
		li, ok := h.leafs.get(leafKey{n.Name, serverID, l.ID})
		if !ok {
			continue // closed since the listing, or unresolved
		}
		nl.Conns = append(nl.Conns, controlplane.LeafConn{Node: n.Name, ID: l.ID, Account: li.account, User: li.user, Start: li.start})
	}
	nl.Unresolved = unresolved
}

// connz asks node n alone (by its server name) for CONNZ with opts.
func (h *Hubs) connz(ctx context.Context, n *node, opts map[string]any) (*connzConnsResponse, error) {
	opts["server_name"], opts["exact_match"], opts["auth"] = n.Name, true, true
	req, err := json.Marshal(opts)
	if err != nil {
		return nil, err
	}
	nc := h.requester(n)
	if nc == nil {
		return nil, errors.New("no hub node connected")
	}
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	m, err := nc.RequestWithContext(ctx, "$SYS.REQ.SERVER.PING.CONNZ", req)
	if err != nil {
		return nil, err
	}
	var r connzConnsResponse
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return nil, fmt.Errorf("undecodable CONNZ reply: %w", err)
	}
	if r.Error != nil {
		return nil, fmt.Errorf("CONNZ: %d %s", r.Error.Code, r.Error.Description)
	}
	if r.Server == nil || r.Server.Name != n.Name || r.Data == nil {
		return nil, errors.New("CONNZ reply from another server or without data")
	}
	return &r, nil
}

// requester is the connection to send a request for node n on: its own,
// else any (routes carry the request to n).
func (h *Hubs) requester(n *node) *nats.Conn {
	if n.up() {
		return n.nc
	}
	for _, o := range h.nodes {
		if o.up() {
			return o.nc
		}
	}
	return nil
}

// fillPaged caches the leaf links of n listed by paged CONNZ that are open
// in the LEAFZ snapshot.
func (h *Hubs) fillPaged(ctx context.Context, n *node, serverID string, open map[uint64]bool) error {
	for offset := 0; ; offset += connzPageSize {
		r, err := h.connz(ctx, n, map[string]any{"state": 0, "offset": offset, "limit": connzPageSize})
		if err != nil {
			return err
		}
		for _, c := range r.Data.Conns {
			if c.Kind == leafKind && open[c.Cid] && c.AuthorizedUser != "" {
				h.leafs.put(leafKey{n.Name, serverID, c.Cid}, leafInfo{user: c.AuthorizedUser, account: c.Account, start: c.Start})
			}
		}
		if len(r.Data.Conns) < connzPageSize {
			return nil
		}
	}
}

// lookupLeafs caches the users of links cids of node n (CONNZ by
// connection ID) and returns how many could not be looked up. A link that
// closed meanwhile is simply not found.
func (h *Hubs) lookupLeafs(ctx context.Context, n *node, serverID string, cids []uint64) int {
	var (
		mu     sync.Mutex
		failed int
		wg     sync.WaitGroup
		work   = make(chan uint64)
	)
	for range min(lookupWorkers, len(cids)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for cid := range work {
				r, err := h.connz(ctx, n, map[string]any{"state": 0, "cid": cid})
				if err != nil {
					mu.Lock()
					failed++
					mu.Unlock()
					continue
				}
				for _, c := range r.Data.Conns {
					if c.Cid == cid && c.Kind == leafKind && c.AuthorizedUser != "" {
						h.leafs.put(leafKey{n.Name, serverID, cid}, leafInfo{user: c.AuthorizedUser, account: c.Account, start: c.Start})
					}
				}
			}
		}()
	}
	for _, cid := range cids {
		work <- cid
	}
	close(work)
	wg.Wait()
	return failed
}
