package hubs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Account lookups for the reconciler (controlplane/reconcile.go).
//
// What a node's resolver holds: nats-server v2.15.2 has no request that
// names one node's resolver directory. $SYS.REQ.ACCOUNT.<acc>.CLAIMS.LOOKUP
// is answered by every full-resolver node the request reaches (a plain
// system subscription, accounts.go DirAccResolver.Start) with the bare JWT,
// or an empty message when the node has none, and carries no server name
// (sendInternalMsgLocked with a nil ServerInfo). ACCOUNTZ/INFO are
// attributed but describe only accounts loaded in memory (monitor.go
// accountInfo: "Account ... does not exist" otherwise), which a node that
// just restarted has none of. CLAIMS.PACK is a queue subscription: one
// random node answers. So the answers are counted per account, not per
// node (controlplane.HubJWTs).
//
// To know how many answers to wait for, AccountJWTs first pings every
// reachable server ($SYS.REQ.SERVER.PING.IDZ, answered with its name) once
// per publisher: a publisher's reach is the configured nodes that
// answered through it. Lookups are then published on a set of publishers
// whose reaches cover every answering node (one publisher when gateways
// join the regions), and each waits for as many answers as its reach.
// A node that did not answer the ping is not waited for. The count
// assumes that every full-resolver server the system account reaches is a
// configured node.

const (
	idzPingSubject   = "$SYS.REQ.SERVER.PING.IDZ"
	lookupSubjectFmt = "$SYS.REQ.ACCOUNT.%s.CLAIMS.LOOKUP"
	// minSettle is the least the ping waits, once every node answered
	// some publisher, for answers that cross gateways to the others.
	minSettle = 5 * time.Millisecond
	// MaxLookupAccounts bounds one AccountJWTs call.
	MaxLookupAccounts = 1000
)

// NodeHealth reports every node's connection for controlplane.Hubs (a
// projection of Status).
func (h *Hubs) NodeHealth() []controlplane.HubNodeStatus {
	st := h.Status()
	out := make([]controlplane.HubNodeStatus, len(st))
	for i, s := range st {
		out[i] = controlplane.HubNodeStatus{Node: s.Node, Up: s.Up, Error: s.Error}
	}
	return out
}

// AccountJWTs asks the hub nodes which JWT of each account their resolvers
// hold (see the top of this file). It waits at most Timeout for the ping
// and Timeout for the lookups. It fails only for invalid input or when no
// node is connected.
func (h *Hubs) AccountJWTs(ctx context.Context, accountPubs []string) (*controlplane.HubJWTs, error) {
	if len(accountPubs) > MaxLookupAccounts {
		return nil, fmt.Errorf("hubs: account lookup: at most %d accounts at once", MaxLookupAccounts)
	}
	for _, a := range accountPubs {
		if !nkeys.IsValidPublicAccountKey(a) {
			return nil, fmt.Errorf("hubs: account lookup: invalid account public key %q", a)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	pubs := h.publishers()
	if len(pubs) == 0 {
		return nil, errors.New("hubs: account lookup: no hub node connected")
	}
	reach := h.ping(ctx, pubs)
	out := &controlplane.HubJWTs{Expected: len(h.nodes), Held: make(map[string][]string, len(accountPubs))}
	answering := map[string]bool{}
	for _, r := range reach {
		for name := range r {
			answering[name] = true
		}
	}
	for _, n := range h.nodes {
		if answering[n.Name] {
			out.Answering = append(out.Answering, n.Name)
		}
	}
	if len(accountPubs) == 0 || len(answering) == 0 {
		return out, nil
	}
	// Cover the answering nodes with as few publishers as possible, the
	// widest reach first.
	idx := make([]int, len(pubs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return len(reach[b]) - len(reach[a]) })
	covered := map[string]bool{}
	var chosen []lookupPub
	for _, i := range idx {
		adds := false
		for name := range reach[i] {
			if !covered[name] {
				adds, covered[name] = true, true
			}
		}
		if adds {
			chosen = append(chosen, lookupPub{nc: pubs[i], want: len(reach[i])})
		}
	}
	held, err := h.lookup(ctx, chosen, accountPubs)
	if err != nil {
		return nil, err
	}
	for j, a := range accountPubs {
		out.Held[a] = held[j]
	}
	return out, nil
}

// publishers returns one connection per reachable cluster, as gather does.
func (h *Hubs) publishers() []*nats.Conn {
	seen := map[string]bool{}
	var pubs []*nats.Conn
	for _, n := range h.nodes {
		if !n.up() {
			continue
		}
		cluster := n.nc.ConnectedClusterName()
		if cluster == "" {
			cluster = "server:" + n.Name
		}
		if !seen[cluster] {
			seen[cluster] = true
			pubs = append(pubs, n.nc)
		}
	}
	return pubs
}

// ping returns, per publisher, the configured nodes that answered an IDZ
// ping published through it. It stops when every publisher heard every
// node, minSettle (or as long again as it took) after every node was heard
// through some publisher, or after Timeout.
func (h *Hubs) ping(ctx context.Context, pubs []*nats.Conn) []map[string]bool {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	start := time.Now()
	ch := make(chan *nats.Msg, 4*len(h.nodes)*len(pubs)+16)
	reach := make([]map[string]bool, len(pubs))
	inboxes := map[string]int{}
	for i, nc := range pubs {
		reach[i] = map[string]bool{}
		inbox := nc.NewInbox()
		sub, err := nc.ChanSubscribe(inbox, ch)
		if err != nil {
			continue
		}
		defer func() { _ = sub.Unsubscribe() }()
		if nc.PublishRequest(idzPingSubject, inbox, nil) != nil || nc.FlushWithContext(ctx) != nil {
			continue
		}
		inboxes[inbox] = i
	}
	union := map[string]bool{}
	var settle <-chan time.Time
	for {
		select {
		case m := <-ch:
			i, ok := inboxes[m.Subject]
			if !ok {
				continue
			}
			var id struct {
				Name string `json:"name"`
			}
			if json.Unmarshal(m.Data, &id) != nil || h.byName[id.Name] == nil {
				continue // not a configured node
			}
			reach[i][id.Name], union[id.Name] = true, true
			if len(union) < len(h.nodes) {
				continue
			}
			if !slices.ContainsFunc(reach, func(r map[string]bool) bool { return len(r) < len(h.nodes) }) {
				return reach // every publisher reaches every node
			}
			if settle == nil {
				settle = time.After(max(minSettle, time.Since(start)))
			}
		case <-settle:
			return reach
		case <-ctx.Done():
			return reach
		}
	}
}

type lookupPub struct {
	nc   *nats.Conn
	want int // answers to wait for per account
}

// lookup publishes one CLAIMS.LOOKUP per account on each publisher, with
// reply subjects <inbox>.<account index>, and collects up to want answers
// per account and publisher until all arrived or Timeout.
func (h *Hubs) lookup(ctx context.Context, pubs []lookupPub, accounts []string) ([][]string, error) {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	total := 0
	for _, p := range pubs {
		total += p.want
	}
	// Room for every answer: a chan subscription drops what does not fit.
	ch := make(chan *nats.Msg, (total+len(h.nodes))*len(accounts)+16)
	type pubState struct {
		want   int
		counts []int
	}
	states := map[string]*pubState{} // by inbox prefix
	pending := 0
	var errs []error
	for _, p := range pubs {
		inbox := p.nc.NewInbox()
		sub, err := p.nc.ChanSubscribe(inbox+".*", ch)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		defer func() { _ = sub.Unsubscribe() }()
		ok := true
		for j, a := range accounts {
			if err := p.nc.PublishRequest(fmt.Sprintf(lookupSubjectFmt, a), inbox+"."+strconv.Itoa(j), nil); err != nil {
				errs = append(errs, err)
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		if err := p.nc.FlushWithContext(ctx); err != nil {
			errs = append(errs, err)
		}
		states[inbox] = &pubState{want: p.want, counts: make([]int, len(accounts))}
		pending += p.want * len(accounts)
	}
	if len(states) == 0 {
		return nil, fmt.Errorf("hubs: account lookup: %w", errors.Join(errs...))
	}
	held := make([][]string, len(accounts))
	for pending > 0 {
		select {
		case m := <-ch:
			dot := strings.LastIndexByte(m.Subject, '.')
			st := states[m.Subject[:max(dot, 0)]]
			j, err := strconv.Atoi(m.Subject[dot+1:])
			if st == nil || err != nil || j < 0 || j >= len(accounts) || st.counts[j] >= st.want {
				continue
			}
			if len(m.Data) == 0 && m.Header.Get("Status") != "" {
				continue // no responders: not an answer
			}
			st.counts[j]++
			pending--
			held[j] = append(held[j], string(m.Data))
		case <-ctx.Done():
			return held, nil
		}
	}
	return held, nil
}
