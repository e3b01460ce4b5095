// Package natstest runs real embedded nats-servers for tests: a hub in
// operator mode with the full (directory) account resolver, and vehicle leaf
// nodes that connect to it with vehicle creds. It also builds tenants
// (account keys, account JWT, users) with internal/natsauth and pushes
// account JWTs the way the control plane does ($SYS.REQ.CLAIMS.UPDATE).
//
// For tests only: every helper takes a testing.TB, fails it on error and
// cleans up with tb.Cleanup. It may import natsauth, nats-server, nats.go and
// nats-io/jwt.
// Set NATSTEST_LOG=1 to see the servers' logs.
package natstest

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// Option changes a server's options before it starts.
type Option func(*server.Options)

// WithLeafTLS makes the hub's leafnode listener require TLS with cfg.
func WithLeafTLS(cfg *tls.Config) Option {
	return func(o *server.Options) { o.LeafNode.TLSConfig = cfg }
}

// WithRemoteTLS makes a leaf's remotes use TLS with cfg (RootCAs to trust the hub).
func WithRemoteTLS(cfg *tls.Config) Option {
	return func(o *server.Options) {
		for _, r := range o.LeafNode.Remotes {
			r.TLS, r.TLSConfig = true, cfg
		}
	}
}

// WithJetStream turns JetStream on (true) or off, with its store in a temp dir.
func WithJetStream(on bool) Option { return func(o *server.Options) { o.JetStream = on } }

// WithServerName sets the server name.
func WithServerName(name string) Option { return func(o *server.Options) { o.ServerName = name } }

// WithLeafReconnect sets how often a leaf retries its remotes (default 1 s).
func WithLeafReconnect(d time.Duration) Option {
	return func(o *server.Options) { o.LeafNode.ReconnectInterval = d }
}

// WithOptions applies an arbitrary change.
func WithOptions(f func(*server.Options)) Option { return Option(f) }

// RunOperatorServer starts a hub: operator mode trusting op, the full
// directory account resolver (temp dir) with the system account preloaded,
// clients and leafnodes on 127.0.0.1 random ports, leaf interest isolated,
// JetStream in a temp dir. It is shut down at tb.Cleanup.
func RunOperatorServer(tb testing.TB, op *natsauth.Operator, opts ...Option) *server.Server {
	tb.Helper()
	trust := op.HubTrust()
	oc, err := trust.OperatorClaims()
	if err != nil {
		tb.Fatal(err)
	}
	res, err := server.NewDirAccResolver(tb.TempDir(), 0, time.Minute, server.NoDelete, server.FetchTimeout(500*time.Millisecond))
	if err != nil {
		tb.Fatalf("NewDirAccResolver: %v", err)
	}
	for pub, jwt := range trust.ResolverPreload() {
		if err := res.Store(pub, jwt); err != nil {
			tb.Fatalf("preload %s: %v", pub, err)
		}
	}
	o := &server.Options{
		ServerName:       "hub-" + nuid.Next(),
		Host:             "127.0.0.1",
		Port:             -1,
		NoLog:            true,
		NoSigs:           true,
		JetStream:        true,
		StoreDir:         tb.TempDir(),
		TrustedOperators: []*jwt.OperatorClaims{oc},
		SystemAccount:    trust.SystemAccountPublicKey,
		AccountResolver:  res,
		LeafNode: server.LeafNodeOpts{
			Host:                    "127.0.0.1",
			Port:                    -1,
			IsolateLeafnodeInterest: true,
		},
	}
	for _, f := range opts {
		f(o)
	}
	return start(tb, o)
}

// RunLeaf starts a vehicle-style leaf: no auth locally, a client listener on
// 127.0.0.1, JetStream off, one remote to hubLeafURL with the creds in
// credsFile, a unique server name and its own cluster name. It does not wait
// for the link (see WaitLeafCount), so tests can watch a refused leaf too.
func RunLeaf(tb testing.TB, hubLeafURL, credsFile string, opts ...Option) *server.Server {
	tb.Helper()
	u, err := url.Parse(hubLeafURL)
	if err != nil {
		tb.Fatalf("hub leaf URL: %v", err)
	}
	name := "leaf-" + nuid.Next()
	o := &server.Options{
		ServerName: name,
		Host:       "127.0.0.1",
		Port:       -1,
		NoLog:      true,
		NoSigs:     true,
		Cluster:    server.ClusterOpts{Name: name},
		LeafNode: server.LeafNodeOpts{
			Remotes: []*server.RemoteLeafOpts{{URLs: []*url.URL{u}, Credentials: credsFile}},
		},
	}
	for _, f := range opts {
		f(o)
	}
	if o.JetStream && o.StoreDir == "" {
		o.StoreDir = tb.TempDir()
	}
	return start(tb, o)
}

func start(tb testing.TB, o *server.Options) *server.Server {
	tb.Helper()
	if o.JetStream && o.StoreDir == "" {
		o.StoreDir = tb.TempDir()
	}
	if os.Getenv("NATSTEST_LOG") != "" {
		o.NoLog, o.Debug = false, os.Getenv("NATSTEST_LOG") == "debug"
	}
	s, err := server.NewServer(o)
	if err != nil {
		tb.Fatalf("NewServer: %v", err)
	}
	if !o.NoLog {
		s.ConfigureLogger()
	}
	go s.Start()
	tb.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	if !s.ReadyForConnections(10 * time.Second) {
		tb.Fatalf("server %s not ready", o.ServerName)
	}
	return s
}

// LeafURL is the hub's leafnode listener URL (nats:// or tls://).
func LeafURL(tb testing.TB, s *server.Server) string {
	tb.Helper()
	v, err := s.Varz(nil)
	if err != nil {
		tb.Fatal(err)
	}
	scheme := "nats"
	if v.LeafNode.TLSRequired {
		scheme = "tls"
	}
	return fmt.Sprintf("%s://127.0.0.1:%d", scheme, v.LeafNode.Port)
}

// WaitLeafCount waits until s has exactly n leaf connections.
func WaitLeafCount(tb testing.TB, s *server.Server, n int, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for s.NumLeafNodes() != n {
		if time.Now().After(deadline) {
			tb.Fatalf("server %s: %d leaf connections after %s, want %d", s.Name(), s.NumLeafNodes(), timeout, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Connect opens a client connection with a user JWT and seed; it fails the
// test on error and closes at cleanup.
func Connect(tb testing.TB, serverURL string, u natsauth.User, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	nc, err := TryConnect(serverURL, u, opts...)
	if err != nil {
		tb.Fatalf("connect %s as %s: %v", serverURL, u.Public, err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// TryConnect opens a client connection with a user JWT and seed, without
// reconnects, and returns the error (for tests that expect a refusal).
// The caller closes the connection.
func TryConnect(serverURL string, u natsauth.User, opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{
		nats.UserJWTAndSeed(u.JWT, string(u.Seed)),
		nats.NoReconnect(),
		nats.Timeout(2 * time.Second),
		nats.Name("natstest"),
	}
	return nats.Connect(serverURL, append(base, opts...)...)
}

// ConnectSystem connects the operator's system user (the control plane's).
func ConnectSystem(tb testing.TB, s *server.Server, op *natsauth.Operator) *nats.Conn {
	tb.Helper()
	return Connect(tb, s.ClientURL(), op.System.User)
}

// WriteCreds writes u's creds to a 0600 file in a temp dir and returns its path.
func WriteCreds(tb testing.TB, u natsauth.User) string {
	tb.Helper()
	b, err := u.Creds()
	if err != nil {
		tb.Fatal(err)
	}
	p := filepath.Join(tb.TempDir(), "user.creds")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// ClaimsUpdateSubject is where the system user pushes account JWTs; every
// full-resolver node answers.
const ClaimsUpdateSubject = "$SYS.REQ.CLAIMS.UPDATE"

// PushAccount pushes an account JWT over nc (a system-user connection) and
// checks the single server's "jwt updated" reply. It returns the round trip.
func PushAccount(tb testing.TB, nc *nats.Conn, accountJWT string) time.Duration {
	tb.Helper()
	return PushAccountN(tb, nc, accountJWT, 1)
}

// PushAccountN pushes an account JWT and waits for n "jwt updated" replies,
// one per full-resolver node of the cluster. It returns the time until the
// last reply.
func PushAccountN(tb testing.TB, nc *nats.Conn, accountJWT string, n int) time.Duration {
	tb.Helper()
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	start := time.Now()
	if err := nc.PublishRequest(ClaimsUpdateSubject, inbox, []byte(accountJWT)); err != nil {
		tb.Fatal(err)
	}
	for i := 0; i < n; i++ {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			tb.Fatalf("push account JWT: reply %d of %d: %v", i+1, n, err)
		}
		var r server.ServerAPIClaimUpdateResponse
		if err := json.Unmarshal(m.Data, &r); err != nil {
			tb.Fatalf("push account JWT: reply %q: %v", m.Data, err)
		}
		if r.Error != nil || r.Data == nil || r.Data.Code != 200 || r.Data.Message != "jwt updated" {
			tb.Fatalf("push account JWT: reply %s", m.Data)
		}
	}
	return time.Since(start)
}
