// Package hubs is the controlplane.Hubs adapter: it talks to the hub tier's
// nats-servers as a system-account user, pushes account JWTs to every node
// and asks nodes for a user's connections.
//
// It keeps one nats.go connection per configured node, pinned to that node
// (discovered cluster URLs are ignored) and reconnecting forever. Each
// (re)connect asks a credentials callback for a fresh system user, so the
// control plane stores no system-user seed (natsissuer.Issuer.SystemUser).
//
// # Attributing replies to nodes
//
// Pushes ($SYS.REQ.CLAIMS.UPDATE) have no per-server subject in nats-server
// v2.15.2 (accounts.go, DirAccResolver.Start): every full-resolver node the
// publish reaches through routes or gateways saves the JWT and answers the
// one request. A request per node connection would therefore make every
// node of a cluster save every push N times. Instead a push is a
// scatter-gather: one publish per reachable cluster (the first connected
// node of each cluster name, a standalone server being its own cluster),
// with a fresh reply inbox, and replies are collected until every
// configured node has answered or the deadline passes. Each reply is
// attributed by the "server.name" the server stamps on it (ServerInfo in
// events.go), which must equal Node.Name (the node's server_name); replies
// from servers that are not configured are ignored. A node whose own
// connection is down still counts if it answered through its cluster. The
// same mechanism serves UserConnections with $SYS.REQ.SERVER.PING.CONNZ.
//
// It may import controlplane, nats.go, nkeys, nats-io/jwt and
// client_golang; never nats-server (the reply shapes are redeclared here)
// or another adapter.
package hubs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetplane/fleetplane/controlplane"
)

var _ controlplane.Hubs = (*Hubs)(nil)

// Node is one hub nats-server: Name is its server_name (replies are matched
// on it), URL its client URL.
type Node struct {
	Name string
	URL  string
}

// Creds returns a system-account user JWT and its seed; Hubs calls it on
// every (re)connect and wipes the seed after signing the server's nonce.
type Creds func() (userJWT string, seed []byte, err error)

// Defaults of Options.
const (
	DefaultTimeout        = 2 * time.Second
	DefaultConnectionName = "fleetplane-controlplane"
	DefaultReconnectWait  = time.Second
)

// Options tune Hubs; the zero value is usable.
type Options struct {
	// Timeout bounds a push or a connections query when ctx has no earlier
	// deadline. Default DefaultTimeout.
	Timeout time.Duration
	// ConnectionName is the nats client name the servers show. Default
	// DefaultConnectionName.
	ConnectionName string
	// ReconnectWait is the pause between reconnect attempts (with nats.go's
	// jitter). Default DefaultReconnectWait.
	ReconnectWait time.Duration
	// NATSOptions are appended to every connection's options (TLS, ...).
	NATSOptions []nats.Option
	// Logger receives connection events. Default slog.Default().
	Logger *slog.Logger
}

// Hubs implements controlplane.Hubs. It is safe for concurrent use.
type Hubs struct {
	nodes   []*node
	byName  map[string]*node
	timeout time.Duration
	log     *slog.Logger

	upDesc   *prometheus.Desc
	pushHist *prometheus.HistogramVec

	leafs      leafCache     // users of leaf links (presence.go)
	sysAccount systemAccount // left out of AccountStats (stats.go)
}

type node struct {
	Node
	nc  *nats.Conn
	log *slog.Logger

	mu      sync.Mutex
	kp      nkeys.KeyPair // between the JWT and signature callbacks of one connect
	lastErr string        // last connection problem, for Status
}

// New connects to every node and returns at once: connections that cannot
// be made yet keep retrying in the background (see Ready and Status). Node
// names must be unique and non-empty.
func New(nodes []Node, creds Creds, opts Options) (*Hubs, error) {
	if len(nodes) == 0 {
		return nil, errors.New("hubs: no nodes configured")
	}
	if creds == nil {
		return nil, errors.New("hubs: no credentials callback")
	}
	opts.Timeout = cmp.Or(opts.Timeout, DefaultTimeout)
	opts.ConnectionName = cmp.Or(opts.ConnectionName, DefaultConnectionName)
	opts.ReconnectWait = cmp.Or(opts.ReconnectWait, DefaultReconnectWait)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	h := &Hubs{
		byName:  make(map[string]*node, len(nodes)),
		timeout: opts.Timeout,
		log:     opts.Logger,
		upDesc: prometheus.NewDesc("fleetplane_hub_node_up",
			"1 if the control plane's connection to the hub node is up and reaches the named server.", []string{"node"}, nil),
		pushHist: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fleetplane_hub_push_duration_seconds",
			Help:    "Time from publishing an account JWT until every hub node acknowledged it (result=complete) or the push gave up (result=incomplete).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"result"}),
	}
	for _, n := range nodes {
		if n.Name == "" || n.URL == "" {
			return nil, fmt.Errorf("hubs: node %q: name and URL are required", n.Name)
		}
		if _, dup := h.byName[n.Name]; dup {
			return nil, fmt.Errorf("hubs: node %q configured twice", n.Name)
		}
		if _, err := url.Parse(n.URL); err != nil {
			return nil, fmt.Errorf("hubs: node %q: %w", n.Name, err)
		}
		nd := &node{Node: n, log: opts.Logger.With("node", n.Name)}
		h.nodes = append(h.nodes, nd)
		h.byName[n.Name] = nd
	}
	sysCreds := func() (string, []byte, error) {
		j, seed, err := creds()
		if err == nil {
			h.sysAccount.note(j)
		}
		return j, seed, err
	}
	for _, nd := range h.nodes {
		if err := nd.connect(sysCreds, opts); err != nil {
			h.Close()
			return nil, err
		}
	}
	return h, nil
}

func (n *node) connect(creds Creds, opts Options) error {
	// nats.UserJWT calls userCB once while processing options (a smoke
	// test), so the first connection mints two users; the first is unused.
	userCB := func() (string, error) {
		j, seed, err := creds()
		if err != nil {
			n.setErr("credentials: " + err.Error())
			return "", fmt.Errorf("hubs: system user credentials: %w", err)
		}
		kp, err := nkeys.FromSeed(seed)
		clear(seed)
		if err != nil {
			return "", errors.New("hubs: system user credentials: invalid seed")
		}
		n.mu.Lock()
		if n.kp != nil {
			n.kp.Wipe()
		}
		n.kp = kp
		n.mu.Unlock()
		return j, nil
	}
	sigCB := func(nonce []byte) ([]byte, error) {
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.kp == nil {
			return nil, errors.New("hubs: no system user key to sign the nonce")
		}
		sig, err := n.kp.Sign(nonce)
		n.kp.Wipe()
		n.kp = nil
		return sig, err
	}
	o := []nats.Option{
		nats.Name(opts.ConnectionName),
		nats.UserJWT(userCB, sigCB),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(opts.ReconnectWait),
		// Credentials are fresh on every attempt; a refusal (an expired
		// system user, a hub that does not trust us yet) must not stop
		// the retries.
		nats.IgnoreAuthErrorAbort(),
		// This connection stands for one node: never follow the cluster's
		// gossiped URLs to another server.
		nats.IgnoreDiscoveredServers(),
		nats.ConnectHandler(n.onConnect),
		nats.ReconnectHandler(n.onConnect),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				n.setErr("disconnected: " + err.Error())
				n.log.Warn("hub node disconnected", "err", err)
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			n.setErr(err.Error())
			n.log.Warn("hub node error", "err", err)
		}),
	}
	nc, err := nats.Connect(n.URL, append(o, opts.NATSOptions...)...)
	if err != nil {
		return fmt.Errorf("hubs: connect node %q: %w", n.Name, err)
	}
	n.nc = nc // ConnectHandler reports the first connection
	return nil
}

func (n *node) onConnect(nc *nats.Conn) {
	if msg := n.mismatch(nc); msg != "" {
		n.log.Error("hub node misconfigured", "err", msg, "url", nc.ConnectedUrlRedacted())
		return
	}
	n.setErr("")
	n.log.Info("hub node connected", "url", nc.ConnectedUrlRedacted(), "cluster", nc.ConnectedClusterName())
}

// mismatch describes a connection that is up but reached another server.
// (Callbacks pass their nc: n.nc is set only after nats.Connect returns.)
func (n *node) mismatch(nc *nats.Conn) string {
	if got := nc.ConnectedServerName(); nc.IsConnected() && got != n.Name {
		return fmt.Sprintf("connected to server %q, want %q (the URL must reach that very node)", got, n.Name)
	}
	return ""
}

// problem explains why the node is not up.
func (n *node) problem() string {
	if msg := n.mismatch(n.nc); msg != "" {
		return msg
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return cmp.Or(n.lastErr, strings.ToLower(n.nc.Status().String()))
}

func (n *node) setErr(s string) {
	n.mu.Lock()
	n.lastErr = s
	n.mu.Unlock()
}

// up reports whether the node's own connection is up and reaches the node
// it is named after.
func (n *node) up() bool {
	return n.nc != nil && n.nc.IsConnected() && n.nc.ConnectedServerName() == n.Name
}

// Close closes every connection.
func (h *Hubs) Close() {
	for _, n := range h.nodes {
		if n.nc != nil {
			n.nc.Close()
		}
		n.mu.Lock()
		if n.kp != nil {
			n.kp.Wipe()
			n.kp = nil
		}
		n.mu.Unlock()
	}
}

// NodeStatus is one node's connection as Status reports it.
type NodeStatus struct {
	Node    string `json:"node"`
	URL     string `json:"url"`
	Up      bool   `json:"up"`
	Cluster string `json:"cluster,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Status reports every node's connection, in configuration order.
func (h *Hubs) Status() []NodeStatus {
	out := make([]NodeStatus, 0, len(h.nodes))
	for _, n := range h.nodes {
		st := NodeStatus{Node: n.Name, URL: n.URL, Up: n.up()}
		if st.Up {
			st.Cluster = n.nc.ConnectedClusterName()
		} else {
			st.Error = n.problem()
		}
		out = append(out, st)
	}
	return out
}

// Ready returns nil when at least one node answers a round trip, since then
// pushes reach that node's cluster; it is for /readyz. One node down is not
// a reason to stop serving the API: pushes report it per node and the
// domain retries. Use Status for the detail.
func (h *Hubs) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	var errs []error
	for _, n := range h.nodes {
		if !n.up() {
			errs = append(errs, fmt.Errorf("node %q: not connected", n.Name))
			continue
		}
		if err := n.nc.FlushWithContext(ctx); err != nil {
			errs = append(errs, fmt.Errorf("node %q: %w", n.Name, err))
			continue
		}
		return nil
	}
	return fmt.Errorf("hubs: no hub node reachable: %w", errors.Join(errs...))
}

// Describe implements prometheus.Collector.
func (h *Hubs) Describe(ch chan<- *prometheus.Desc) {
	ch <- h.upDesc
	h.pushHist.Describe(ch)
}

// Collect implements prometheus.Collector.
func (h *Hubs) Collect(ch chan<- prometheus.Metric) {
	for _, n := range h.nodes {
		v := 0.0
		if n.up() {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(h.upDesc, prometheus.GaugeValue, v, n.Name)
	}
	h.pushHist.Collect(ch)
}

// gather publishes payload on subject once per reachable cluster and
// returns the first reply of each configured node (by server name) that
// arrived before every node had answered or the deadline passed. The error
// is set only when nothing could be published.
func (h *Hubs) gather(ctx context.Context, subject string, payload []byte) (map[string][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()

	// One publisher per cluster: nodes of a cluster share the system
	// account's interest over routes, so one publish reaches them all.
	seen := map[string]bool{}
	var pubs []*nats.Conn
	for _, n := range h.nodes {
		if !n.up() {
			continue
		}
		cluster := n.nc.ConnectedClusterName()
		if cluster == "" {
			cluster = "server:" + n.Name // no cluster: a group of its own
		}
		if !seen[cluster] {
			seen[cluster] = true
			pubs = append(pubs, n.nc)
		}
	}
	if len(pubs) == 0 {
		return nil, errors.New("hubs: no hub node connected")
	}

	ch := make(chan *nats.Msg, 64*len(h.nodes)+64)
	var published int
	var pubErrs []error
	for _, nc := range pubs {
		inbox := nc.NewInbox()
		sub, err := nc.ChanSubscribe(inbox, ch)
		if err != nil {
			pubErrs = append(pubErrs, err)
			continue
		}
		defer func() { _ = sub.Unsubscribe() }()
		if err := nc.PublishRequest(subject, inbox, payload); err != nil {
			pubErrs = append(pubErrs, err)
			continue
		}
		// Flush so a reply can only be missing because a node did not
		// answer, not because the request sat in our buffer.
		if err := nc.FlushWithContext(ctx); err != nil {
			pubErrs = append(pubErrs, err)
		}
		published++
	}
	if published == 0 {
		return nil, fmt.Errorf("hubs: publish %s: %w", subject, errors.Join(pubErrs...))
	}

	got := make(map[string][]byte, len(h.nodes))
	for len(got) < len(h.nodes) {
		select {
		case m := <-ch:
			name, err := serverName(m.Data)
			if err != nil {
				h.log.Warn("hub reply without a server name", "subject", subject, "err", err)
				continue
			}
			if _, ok := h.byName[name]; !ok {
				h.log.Debug("reply from a server that is not a configured hub node", "server", name, "subject", subject)
				continue
			}
			if _, dup := got[name]; !dup {
				got[name] = m.Data
			}
		case <-ctx.Done():
			return got, nil
		}
	}
	return got, nil
}

// missing explains why node n did not answer.
func (h *Hubs) missing(n *node, elapsed time.Duration) string {
	if n.up() {
		return fmt.Sprintf("no reply within %s", elapsed.Round(time.Millisecond))
	}
	return fmt.Sprintf("no reply within %s (its own connection: %s)", elapsed.Round(time.Millisecond), n.problem())
}

// PushAccount sends accountJWT to every node through $SYS.REQ.CLAIMS.UPDATE
// and reports each configured node's answer. It fails only when the JWT is
// not an account JWT or no node is connected.
func (h *Hubs) PushAccount(ctx context.Context, accountJWT string) (*controlplane.HubPush, error) {
	acc, err := accountSubject(accountJWT)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	replies, err := h.gather(ctx, "$SYS.REQ.CLAIMS.UPDATE", []byte(accountJWT))
	if err != nil {
		return nil, fmt.Errorf("hubs: push account %s: %w", acc, err)
	}
	elapsed := time.Since(start)
	push := &controlplane.HubPush{Expected: len(h.nodes)}
	for _, n := range h.nodes {
		ack := controlplane.NodeAck{Node: n.Name}
		if data, ok := replies[n.Name]; !ok {
			ack.Message = h.missing(n, elapsed)
		} else {
			ack.OK, ack.Message = claimUpdateResult(data, acc)
		}
		push.Nodes = append(push.Nodes, ack)
	}
	result := "incomplete"
	if push.Complete() {
		result = "complete"
	}
	h.pushHist.WithLabelValues(result).Observe(elapsed.Seconds())
	return push, nil
}

// UserConnections counts userPub's open connections (client and leaf) in
// account accountPub on every configured node ($SYS.REQ.SERVER.PING.CONNZ
// filtered by account and user). A node that did not answer has Error set.
func (h *Hubs) UserConnections(ctx context.Context, accountPub, userPub string) ([]controlplane.NodeConnections, error) {
	if !nkeys.IsValidPublicAccountKey(accountPub) {
		return nil, errors.New("hubs: user connections: invalid account public key")
	}
	if !nkeys.IsValidPublicUserKey(userPub) {
		return nil, errors.New("hubs: user connections: invalid user public key")
	}
	req, err := connzRequest(accountPub, userPub)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	replies, err := h.gather(ctx, "$SYS.REQ.SERVER.PING.CONNZ", req)
	if err != nil {
		return nil, fmt.Errorf("hubs: connections of %s: %w", userPub, err)
	}
	elapsed := time.Since(start)
	out := make([]controlplane.NodeConnections, 0, len(h.nodes))
	for _, n := range h.nodes {
		nc := controlplane.NodeConnections{Node: n.Name}
		if data, ok := replies[n.Name]; !ok {
			nc.Error = h.missing(n, elapsed)
		} else {
			nc.Connections, err = connzCount(data, userPub)
			if err != nil {
				nc.Error = err.Error()
			}
		}
		out = append(out, nc)
	}
	return out, nil
}

// NodeNames lists the configured node names in order.
func (h *Hubs) NodeNames() []string {
	names := make([]string, len(h.nodes))
	for i, n := range h.nodes {
		names[i] = n.Name
	}
	return names
}

// String describes the nodes without credentials.
func (h *Hubs) String() string {
	return "hubs.Hubs{" + strings.Join(h.NodeNames(), ",") + "}"
}
