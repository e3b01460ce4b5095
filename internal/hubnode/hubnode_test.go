package hubnode_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/internal/devca"
	"github.com/fleetplane/fleetplane/internal/hubnode"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
)

func TestOptionsAreDeliberate(t *testing.T) {
	op := natstest.MustOperator(t)
	o, err := hubnode.Options(hubnode.Config{Name: "hub-1", Dir: t.TempDir(), Trust: op.HubTrust()})
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case o.SyncInterval != time.Second:
		t.Errorf("SyncInterval = %v: the 2-minute default can lose acknowledged writes", o.SyncInterval)
	case !o.LeafNode.IsolateLeafnodeInterest:
		t.Error("leaf interest not isolated")
	case o.PingInterval*time.Duration(o.MaxPingsOut) > 30*time.Second:
		t.Errorf("dead links noticed after %v, want ≤ 30 s", o.PingInterval*time.Duration(o.MaxPingsOut))
	case len(o.TrustedOperators) != 1 || o.SystemAccount != op.HubTrust().SystemAccountPublicKey || o.AccountResolver == nil:
		t.Error("not in operator mode with the full resolver")
	}
	if _, err := hubnode.Options(hubnode.Config{Name: "hub-1"}); err == nil {
		t.Error("no Dir accepted")
	}
}

func TestStartServesVehicles(t *testing.T) {
	op := natstest.MustOperator(t)
	s, err := hubnode.Start(hubnode.Config{Name: "hub-1", Dir: t.TempDir(), ClientHost: "127.0.0.1", ClientPort: -1,
		LeafHost: "127.0.0.1", LeafPort: -1, Trust: op.HubTrust()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	sys := natstest.ConnectSystem(t, s, op)
	tn := natstest.NewTenant(t, op, natstestSpec())
	tn.Push(t, sys)
	natstest.RunVehicleLeaf(t, s, tn.Vehicle(t, vehicleIdentity(), time.Now().Add(time.Hour)))
	natstest.WaitLeafCount(t, s, 1, 5*time.Second)
}

func natstestSpec() natsauth.AccountSpec {
	return natsauth.AccountSpec{Name: "acme", TenantID: "acme", Limits: natsauth.Unlimited()}
}

func vehicleIdentity() natsauth.VehicleIdentity {
	return natsauth.VehicleIdentity{TenantID: "acme", Fleet: "drones", Env: "prod", VehicleID: "V1"}
}

func TestOptionsValidate(t *testing.T) {
	op := natstest.MustOperator(t)
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	base := func() hubnode.Config {
		return hubnode.Config{Name: "hub-1", Dir: t.TempDir(), Trust: op.HubTrust(), LeafHost: "127.0.0.1", LeafPort: 7422}
	}
	for _, tc := range []struct {
		name    string
		change  func(*hubnode.Config)
		wantErr string
	}{
		{"loopback plain", func(*hubnode.Config) {}, ""},
		{"localhost plain", func(c *hubnode.Config) { c.LeafHost = "localhost" }, ""},
		{"every interface plain", func(c *hubnode.Config) { c.LeafHost = "" }, "without TLS"},
		{"public plain", func(c *hubnode.Config) { c.LeafHost = "203.0.113.7" }, "without TLS"},
		{"public TLS", func(c *hubnode.Config) { c.LeafHost, c.LeafTLS = "0.0.0.0", tlsCfg }, ""},
		{"no leaf listener", func(c *hubnode.Config) { c.LeafHost, c.LeafPort = "0.0.0.0", 0 }, ""},
		{"compression", func(c *hubnode.Config) { c.LeafCompression = "zstd" }, "compression"},
		{"routes without cluster", func(c *hubnode.Config) { c.Routes = []string{"nats-route://a:6222"} }, "need a cluster listener"},
		{"cluster without routes", func(c *hubnode.Config) { c.ClusterPort = 6222 }, "needs routes"},
		{"bad route", func(c *hubnode.Config) { c.ClusterPort, c.Routes = 6222, []string{"a:6222"} }, "route"},
		{"gateway without URLs", func(c *hubnode.Config) {
			c.Gateway = &hubnode.Gateway{Port: 7222, Remotes: []hubnode.GatewayRemote{{Name: "x"}}}
		}, "needs a name and URLs"},
		{"lame duck grace", func(c *hubnode.Config) { c.LameDuckDuration, c.LameDuckGracePeriod = time.Second, 2*time.Second }, "grace"},
		{"region with space", func(c *hubnode.Config) { c.Region = "eu west" }, "no spaces"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.change(&c)
			_, err := hubnode.Options(c)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error = %v, want %q", err, tc.wantErr)
			}
		})
	}

	c := base()
	c.LeafTLS, c.Region = tlsCfg, "europe"
	c.ClusterPort, c.Routes = 6222, []string{"nats-route://hub-1:6222", "nats-route://hub-2:6222"}
	c.Gateway = &hubnode.Gateway{Port: 7222, Remotes: []hubnode.GatewayRemote{{Name: "americas", URLs: []string{"nats://am-1:7222"}}}}
	c.JetStreamMaxStore, c.MonitorPort, c.LeafNoAdvertise = 1<<30, 8222, true
	o, err := hubnode.Options(c)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case o.LeafNode.TLSConfig.MinVersion != tls.VersionTLS13 || tlsCfg.MinVersion != tls.VersionTLS12:
		t.Error("leaf TLS not raised to 1.3 (or the caller's config was modified)")
	case o.LeafNode.Compression.Mode != hubnode.DefaultLeafCompression:
		t.Errorf("compression %q", o.LeafNode.Compression.Mode)
	case o.Cluster.Name != "europe" || len(o.Routes) != 2 || o.Gateway.Name != "europe" || len(o.Gateway.Gateways) != 1:
		t.Errorf("cluster/gateway: %+v %+v", o.Cluster, o.Gateway)
	case o.JetStreamMaxStore != 1<<30 || o.HTTPPort != 8222 || !o.LeafNode.NoAdvertise:
		t.Error("limits, monitoring or no_advertise not applied")
	}
}

// TestLeafTLS13 serves the leafnode port with a dev CA certificate: a
// vehicle limited to TLS 1.2 is refused, a TLS 1.3 one connects; the
// server's log goes to the slog logger.
func TestLeafTLS13(t *testing.T) {
	op := natstest.MustOperator(t)
	ca, err := devca.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("hub", devca.LocalHosts)
	if err != nil {
		t.Fatal(err)
	}
	leafTLS, err := hubnode.TLSFiles{CertFile: cert.CertFile, KeyFile: cert.KeyFile}.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	s, err := hubnode.Start(hubnode.Config{Name: "hub-1", Dir: t.TempDir(), ClientHost: "127.0.0.1", ClientPort: -1,
		LeafHost: "0.0.0.0", LeafPort: -1, LeafTLS: leafTLS, Trust: op.HubTrust(),
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer hubnode.Stop(s, false)
	if !strings.Contains(logs.String(), "Server is ready") {
		t.Errorf("server log not on the slog logger:\n%s", logs.String())
	}
	sys := natstest.ConnectSystem(t, s, op)
	tn := natstest.NewTenant(t, op, natstestSpec())
	tn.Push(t, sys)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(ca.Bundle()))
	leafURL := natstest.LeafURL(t, s)
	if !strings.HasPrefix(leafURL, "tls://") {
		t.Fatalf("leaf URL %s", leafURL)
	}
	old := natstest.RunLeaf(t, leafURL, natstest.WriteCreds(t, tn.Vehicle(t, vehicleIdentity(), time.Time{})),
		natstest.WithRemoteTLS(&tls.Config{RootCAs: roots, MaxVersion: tls.VersionTLS12}), natstest.WithLeafReconnect(50*time.Millisecond))
	time.Sleep(500 * time.Millisecond)
	if s.NumLeafNodes() != 0 || old.NumLeafNodes() != 0 {
		t.Fatal("a TLS 1.2 leaf connected")
	}
	old.Shutdown()
	v2 := vehicleIdentity()
	v2.VehicleID = "V2"
	natstest.RunLeaf(t, leafURL, natstest.WriteCreds(t, tn.Vehicle(t, v2, time.Time{})),
		natstest.WithRemoteTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}))
	natstest.WaitLeafCount(t, s, 1, 5*time.Second)
}

// TestCertificateReload: a renewed certificate (same files) serves the
// next handshake without a restart.
func TestCertificateReload(t *testing.T) {
	ca, err := devca.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("hub", []string{"hub-1.example"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := hubnode.TLSFiles{CertFile: cert.CertFile, KeyFile: cert.KeyFile}.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	first, _ := cfg.GetCertificate(nil)
	if first.Leaf.DNSNames[0] != "hub-1.example" {
		t.Fatalf("serving %v", first.Leaf.DNSNames)
	}
	time.Sleep(1100 * time.Millisecond) // files are checked at most once a second
	if _, err := ca.Issue("hub", []string{"hub-1.example", "hub.example"}); err != nil {
		t.Fatal(err)
	}
	next, _ := cfg.GetCertificate(nil)
	if len(next.Leaf.DNSNames) != 2 {
		t.Fatalf("after renewal still serving %v", next.Leaf.DNSNames)
	}
	if c, _ := cfg.GetClientCertificate(nil); c != next {
		t.Error("routes would dial out with the old certificate")
	}
	// A half-written renewal (key missing) keeps the current pair.
	if err := os.Remove(cert.KeyFile); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if c, _ := cfg.GetCertificate(nil); c != next {
		t.Error("a broken renewal replaced the working certificate")
	}
	if _, err := (hubnode.TLSFiles{CertFile: cert.CertFile, KeyFile: cert.KeyFile}).TLSConfig(); err == nil {
		t.Error("a missing key was accepted at start")
	}
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
