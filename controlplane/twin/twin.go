// Package twin implements controlplane.Telemetry over NATS: the tenants'
// history streams (JetStream, one "TWIN" stream per tenant account and
// region), digital-twin reads by direct get (batch and multi-last, no
// consumer per request), live subscriptions and request/reply commands to
// vehicles. See docs/twin.md.
//
// It talks to a region's hubs as the tenant's own service user: a fresh
// nkey and a short-lived JWT signed with the account's service role key,
// minted by the domain (controlplane.TelemetryTarget.Credentials) whenever
// a connection is opened or must re-authenticate. Connections are cached
// per tenant and region, closed after an idle timeout, and replaced after
// a maximum age so that no operation runs on a connection whose user is
// about to expire.
//
// It may import controlplane, internal/natsauth, nats.go (and its
// jetstream package) and nkeys; never another adapter.
package twin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Options tune the adapter; the zero value gives the defaults.
type Options struct {
	// Logger receives connection events; nil discards them.
	Logger *slog.Logger
	// IdleTimeout closes a tenant's connection unused for that long
	// (default 5 minutes); live subscriptions keep it in use.
	IdleTimeout time.Duration
	// MaxConnAge: after that, new operations open a fresh connection (new
	// service user) and the old one closes when its last user is done
	// (default 30 minutes, half of controlplane.ServiceUserTTL).
	MaxConnAge time.Duration
	// RequestTimeout bounds a JetStream API call or a direct get when the
	// caller's context has no earlier deadline (default 5 s).
	RequestTimeout time.Duration
	// ConnectTimeout bounds opening a connection (default 3 s).
	ConnectTimeout time.Duration
	// FailureBackoff is how long a failed connection attempt is reported
	// again without a new attempt (default 1 s): a hub that is down must
	// not cost a signed user and a dial per API request.
	FailureBackoff time.Duration
	// NATSOptions are appended to the connection options (tests).
	NATSOptions []nats.Option
}

// Defaults of Options.
const (
	DefaultIdleTimeout    = 5 * time.Minute
	DefaultMaxConnAge     = controlplane.ServiceUserTTL / 2
	DefaultRequestTimeout = 5 * time.Second
	DefaultConnectTimeout = 3 * time.Second
	DefaultFailureBackoff = time.Second
)

// Twin is the controlplane.Telemetry of a control plane process. Close it
// on shutdown.
type Twin struct {
	opts  Options
	log   *slog.Logger
	mu    sync.Mutex
	conns map[string]*conn // tenant/region → current connection
	stop  chan struct{}
	done  chan struct{}

	closeOnce sync.Once
}

var _ controlplane.Telemetry = (*Twin)(nil)

// New returns the adapter and starts its janitor.
func New(opts Options) *Twin {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.MaxConnAge <= 0 {
		opts.MaxConnAge = DefaultMaxConnAge
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.FailureBackoff <= 0 {
		opts.FailureBackoff = DefaultFailureBackoff
	}
	tw := &Twin{opts: opts, log: opts.Logger, conns: map[string]*conn{}, stop: make(chan struct{}), done: make(chan struct{})}
	go tw.janitor()
	return tw
}

// Close closes every connection (ending live subscriptions) and stops the
// janitor.
func (tw *Twin) Close() {
	tw.closeOnce.Do(func() {
		close(tw.stop)
		<-tw.done
		tw.mu.Lock()
		conns := tw.conns
		tw.conns = map[string]*conn{}
		tw.mu.Unlock()
		for _, c := range conns {
			<-c.ready // a connect in flight finishes first (bounded by its timeouts)
			c.close()
		}
	})
}

// Connections returns how many tenant connections are open (for tests and
// metrics).
func (tw *Twin) Connections() int {
	tw.mu.Lock()
	defer tw.mu.Unlock()
	n := 0
	for _, c := range tw.conns {
		if c.nc != nil && !c.nc.IsClosed() {
			n++
		}
	}
	return n
}

// conn is one tenant's connection to one region.
type conn struct {
	key     string
	ready   chan struct{} // closed when the connect attempt finished
	err     error         // of the connect attempt
	failed  time.Time
	nc      *nats.Conn
	js      jetstream.JetStream
	created time.Time
	creds   *creds

	// Guarded by Twin.mu.
	refs     int
	lastUsed time.Time
	retired  bool

	subsMu sync.Mutex
	subs   map[*liveSub]struct{}
}

func (c *conn) close() {
	if c.nc != nil {
		c.nc.Close() // the closed handler ends the live subscriptions
	}
	c.creds.wipe()
}

// acquire returns the target's connection, opening it when needed; the
// caller calls release when its operation (or subscription) is over.
func (tw *Twin) acquire(ctx context.Context, t controlplane.TelemetryTarget) (*conn, func(), error) {
	key := t.TenantID + "/" + t.Region.Name
	now := time.Now()
	tw.mu.Lock()
	select {
	case <-tw.stop:
		tw.mu.Unlock()
		return nil, nil, controlplane.Errorf(controlplane.EUNAVAILABLE, "telemetry is shutting down")
	default:
	}
	c := tw.conns[key]
	if c != nil && isDone(c.ready) {
		switch {
		case c.err != nil && now.Sub(c.failed) < tw.opts.FailureBackoff:
			tw.mu.Unlock()
			return nil, nil, c.err
		case c.err != nil, c.nc.IsClosed():
			delete(tw.conns, key)
			c = nil
		case now.Sub(c.created) > tw.opts.MaxConnAge:
			// Retire: new operations get a fresh service user; the old
			// connection closes when its last user releases it.
			delete(tw.conns, key)
			c.retired = true
			if c.refs == 0 {
				go c.close()
			}
			c = nil
		}
	}
	if c == nil {
		c = &conn{key: key, ready: make(chan struct{}), subs: map[*liveSub]struct{}{}}
		tw.conns[key] = c
		go tw.connect(c, t)
	}
	c.refs++
	c.lastUsed = now
	tw.mu.Unlock()

	release := func() {
		tw.mu.Lock()
		c.refs--
		c.lastUsed = time.Now()
		closeNow := c.retired && c.refs == 0
		tw.mu.Unlock()
		if closeNow {
			c.close()
		}
	}
	select {
	case <-c.ready:
	case <-ctx.Done():
		release()
		return nil, nil, controlplane.Errorf(controlplane.EUNAVAILABLE, "connecting to the hubs of region %q: %v", t.Region.Name, ctx.Err())
	}
	if c.err != nil {
		release()
		return nil, nil, c.err
	}
	if !c.nc.IsConnected() {
		release()
		return nil, nil, controlplane.Errorf(controlplane.EUNAVAILABLE, "the hubs of region %q are unreachable (reconnecting)", t.Region.Name)
	}
	return c, release, nil
}

func isDone(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// connect opens c's connection; it always closes c.ready.
func (tw *Twin) connect(c *conn, t controlplane.TelemetryTarget) {
	defer close(c.ready)
	fail := func(format string, args ...any) {
		c.err = controlplane.Errorf(controlplane.EUNAVAILABLE, format, args...)
		c.failed = time.Now()
		c.creds.wipe()
	}
	r := t.Region
	if len(r.ClientURLs) == 0 {
		fail("region %q has no client URLs configured", r.Name)
		return
	}
	if t.Credentials == nil {
		fail("no service user credentials for tenant %s", t.TenantID)
		return
	}
	c.creds = &creds{fetch: t.Credentials, timeout: tw.opts.ConnectTimeout + 5*time.Second}
	su, err := c.creds.renew()
	if err != nil {
		tw.log.Warn("minting a service user failed", "tenant", t.TenantID, "err", err)
		fail("minting the tenant's service user: %s", controlplane.ErrorMessage(err))
		return
	}
	opts := []nats.Option{
		nats.Name("fleetplane-twin " + t.TenantID + " " + r.Name),
		nats.UserJWT(c.creds.userJWT, c.creds.sign),
		nats.Timeout(tw.opts.ConnectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		// A refused reconnect (an expired user) is retried with fresh
		// credentials from the callback.
		nats.IgnoreAuthErrorAbort(),
		// The region's client URLs are the way in (load balancers);
		// gossiped node addresses may not be reachable from here.
		nats.IgnoreDiscoveredServers(),
		nats.ClosedHandler(func(*nats.Conn) { c.endSubs() }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			tw.log.Info("tenant connection error", "tenant", t.TenantID, "region", r.Name, "err", err)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				tw.log.Info("tenant connection lost", "tenant", t.TenantID, "region", r.Name, "err", err)
			}
		}),
	}
	if su.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(su.InboxPrefix))
	}
	if r.CABundle != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(r.CABundle)) {
			fail("region %q: the CA bundle holds no certificate", r.Name)
			return
		}
		// The bundle verifies the hubs whenever TLS is used (tls:// URLs or
		// a server that requires it); it does not force TLS on a plain
		// client listener (dev: the CA covers the vehicles' leaf listener).
		cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		opts = append(opts, func(o *nats.Options) error { o.TLSConfig = cfg; return nil })
	}
	nc, err := nats.Connect(strings.Join(r.ClientURLs, ","), append(opts, tw.opts.NATSOptions...)...)
	if err != nil {
		tw.log.Warn("connecting to the hubs failed", "tenant", t.TenantID, "region", r.Name, "err", err)
		fail("the hubs of region %q are unreachable: %v", r.Name, err)
		return
	}
	js, err := jetstream.New(nc)
	if err != nil { // only invalid options fail
		nc.Close()
		fail("JetStream: %v", err)
		return
	}
	c.nc, c.js, c.created = nc, js, time.Now()
	tw.log.Debug("tenant connection open", "tenant", t.TenantID, "region", r.Name, "server", nc.ConnectedServerName())
}

// janitor closes idle connections.
func (tw *Twin) janitor() {
	defer close(tw.done)
	tick := time.NewTicker(min(tw.opts.IdleTimeout/2, 10*time.Second))
	defer tick.Stop()
	for {
		select {
		case <-tw.stop:
			return
		case now := <-tick.C:
			var idle []*conn
			tw.mu.Lock()
			for k, c := range tw.conns {
				if isDone(c.ready) && c.refs == 0 && (c.err != nil || now.Sub(c.lastUsed) > tw.opts.IdleTimeout) {
					delete(tw.conns, k)
					idle = append(idle, c)
				}
			}
			tw.mu.Unlock()
			for _, c := range idle {
				c.close()
			}
		}
	}
}

// creds holds the service user of one connection for nats.go's callbacks:
// the JWT for CONNECT and the nkey that signs the server's nonce. A
// reconnect reuses them while they have a quarter of their life left and
// mints a fresh user otherwise.
type creds struct {
	fetch   func(ctx context.Context) (*controlplane.ServiceUser, error)
	timeout time.Duration

	mu      sync.Mutex
	jwt     string
	kp      nkeys.KeyPair
	issued  time.Time
	expires time.Time
}

func (cr *creds) renew() (*controlplane.ServiceUser, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cr.timeout)
	defer cancel()
	su, err := cr.fetch(ctx)
	if err != nil {
		return nil, err
	}
	kp, err := nkeys.FromSeed(su.Seed)
	clear(su.Seed)
	if err != nil {
		return nil, errors.New("twin: the service user's seed is invalid")
	}
	cr.mu.Lock()
	if cr.kp != nil {
		cr.kp.Wipe()
	}
	cr.jwt, cr.kp, cr.issued, cr.expires = su.JWT, kp, time.Now(), su.ExpiresAt
	cr.mu.Unlock()
	return su, nil
}

func (cr *creds) userJWT() (string, error) {
	cr.mu.Lock()
	fresh := cr.kp != nil && time.Until(cr.expires) > cr.expires.Sub(cr.issued)/4
	j := cr.jwt
	cr.mu.Unlock()
	if fresh {
		return j, nil
	}
	su, err := cr.renew()
	if err != nil {
		return "", fmt.Errorf("twin: service user: %w", err)
	}
	return su.JWT, nil
}

func (cr *creds) sign(nonce []byte) ([]byte, error) {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	if cr.kp == nil {
		return nil, errors.New("twin: no service user key")
	}
	return cr.kp.Sign(nonce)
}

func (cr *creds) wipe() {
	if cr == nil {
		return
	}
	cr.mu.Lock()
	defer cr.mu.Unlock()
	if cr.kp != nil {
		cr.kp.Wipe()
		cr.kp = nil
	}
}

// withTimeout bounds ctx by the request timeout unless it ends sooner.
func (tw *Twin) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= tw.opts.RequestTimeout {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, tw.opts.RequestTimeout)
}

// unavailable words a NATS failure during an operation.
func unavailable(t controlplane.TelemetryTarget, what string, err error) error {
	return controlplane.Errorf(controlplane.EUNAVAILABLE, "%s in region %q: %v", what, t.Region.Name, err)
}
