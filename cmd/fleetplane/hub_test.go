package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
	"go.yaml.in/yaml/v3"

	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/devca"
	"github.com/fleetplane/fleetplane/internal/hubnode"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
	"github.com/fleetplane/fleetplane/internal/pgtest"
	"github.com/fleetplane/fleetplane/internal/seal"
)

// TestAdminHubConfigFormsACluster is the path of docs/hubs.md: a 3-node
// region in the control plane's configuration → `admin hub config` for each
// node → three `fleetplane hub --config` processes (in process here) form
// one cluster, each trusts the operator (the control plane's hubs client
// gets three acks on a push), and a vehicle connects over TLS 1.3.
func TestAdminHubConfigFormsACluster(t *testing.T) {
	dbURL := pgtest.NewURL(t)
	env := operatorEnv(t, "DATABASE_URL", dbURL)
	dir := t.TempDir()
	ca, err := devca.Open(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	ports, err := freeLoopbackPorts(12)
	if err != nil {
		t.Fatal(err)
	}
	type node struct {
		name                         string
		client, leaf, route, monitor int
		file                         string
	}
	var nodes []node
	var yamlNodes, leafURLs []string
	for i := range 3 {
		n := node{name: fmt.Sprintf("hub-eu-%d", i+1), client: ports[4*i], leaf: ports[4*i+1], route: ports[4*i+2], monitor: ports[4*i+3]}
		if _, err := ca.Issue(n.name, devca.LocalHosts); err != nil {
			t.Fatal(err)
		}
		yamlNodes = append(yamlNodes, fmt.Sprintf(`      - {name: %s, url: "nats://127.0.0.1:%d", route_url: "nats-route://127.0.0.1:%d", leaf_listen: "127.0.0.1:%d", monitor_listen: "127.0.0.1:%d"}`,
			n.name, n.client, n.route, n.leaf, n.monitor))
		leafURLs = append(leafURLs, fmt.Sprintf("tls://127.0.0.1:%d", n.leaf))
		nodes = append(nodes, n)
	}
	cpConfig := filepath.Join(dir, "controlplane.yaml")
	if err := os.WriteFile(cpConfig, []byte(fmt.Sprintf(`
regions:
  - name: europe
    leaf_urls: [%s]
    ca_file: %s
    nodes:
%s
`, strings.Join(leafURLs, ", "), ca.CAFile(), strings.Join(yamlNodes, "\n"))), 0o600); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range nodes {
		n := &nodes[i]
		n.file = filepath.Join(dir, n.name+".yaml")
		var out, errb bytes.Buffer
		if err := run(ctx, []string{"admin", "hub", "config", "--config", cpConfig, "--region", "europe", "--node", n.name,
			"--out", n.file, "--data-dir", filepath.Join(dir, n.name), "--tls-dir", filepath.Join(dir, "tls")}, mapEnv(env), &out, &errb); err != nil {
			t.Fatalf("admin hub config %s: %v\n%s", n.name, err, errb.String())
		}
	}
	if b, _ := os.ReadFile(nodes[0].file); !bytes.Contains(b, []byte("verify: true")) || !bytes.Contains(b, []byte("compression: off")) {
		t.Fatalf("generated config lacks route mTLS or the compression default:\n%s", b)
	}

	// Start the three nodes the way the systemd unit does.
	type result struct {
		name string
		err  error
	}
	done := make(chan result, len(nodes))
	var logs sync.Map
	for _, n := range nodes {
		lw := &lockedBuffer{}
		logs.Store(n.name, lw)
		go func() {
			done <- result{n.name, run(ctx, []string{"hub", "--config", n.file}, mapEnv(nil), io.Discard, lw)}
		}()
	}
	dumpLogs := func() string {
		var sb strings.Builder
		logs.Range(func(k, v any) bool { fmt.Fprintf(&sb, "--- %s\n%s", k, v.(*lockedBuffer).String()); return true })
		return sb.String()
	}
	monitor := func(n node, path string, v any) error {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", n.monitor, path))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s: %s", path, resp.Status)
		}
		return json.NewDecoder(resp.Body).Decode(v)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range nodes {
		for {
			var varz struct {
				ServerName string `json:"server_name"`
				Cluster    struct{ Name string }
			}
			var routez struct {
				Routes []struct {
					RemoteName string `json:"remote_name"`
				}
			}
			var jsz struct {
				Meta *struct {
					Leader      string `json:"leader"`
					ClusterSize int    `json:"cluster_size"`
				} `json:"meta_cluster"`
			}
			err := monitor(n, "/varz", &varz)
			if err == nil {
				err = monitor(n, "/routez", &routez)
			}
			if err == nil {
				err = monitor(n, "/jsz", &jsz)
			}
			var peers []string
			for _, r := range routez.Routes {
				peers = append(peers, r.RemoteName)
			}
			slices.Sort(peers)
			peers = slices.Compact(peers)
			if err == nil && varz.ServerName == n.name && varz.Cluster.Name == "europe" && len(peers) == 2 &&
				jsz.Meta != nil && jsz.Meta.Leader != "" && jsz.Meta.ClusterSize == 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not in a 3-node cluster: %v, varz %+v, route peers %v, jsz %+v\n%s", n.name, err, varz, peers, jsz.Meta, dumpLogs())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// `hub --check` answers for a healthy node.
	var out bytes.Buffer
	if err := run(ctx, []string{"hub", "--config", nodes[1].file, "--check"}, mapEnv(nil), &out, io.Discard); err != nil || !strings.Contains(out.String(), "hub-eu-2 ok") {
		t.Fatalf("hub --check: %v %q", err, out.String())
	}

	// The control plane's hubs client: three acks on a push.
	keys, err := seal.ParseKeyring(env["FLEETPLANE_MASTER_KEY"])
	if err != nil {
		t.Fatal(err)
	}
	pool, err := postgres.Open(ctx, dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	op, err := postgres.NewStore(pool).FindOperator(ctx)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := natsissuer.New(keys, op)
	if err != nil {
		t.Fatal(err)
	}
	var hubNodes []hubs.Node
	for _, n := range nodes {
		hubNodes = append(hubNodes, hubs.Node{Name: n.name, URL: fmt.Sprintf("nats://127.0.0.1:%d", n.client)})
	}
	h, err := hubs.New(hubNodes, iss.SystemUserCreds(time.Hour), hubs.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	acct, err := iss.NewAccount("t-hubs", "hub test")
	if err != nil {
		t.Fatal(err)
	}
	acct.Limits = natsauth.Unlimited()
	if acct.JWT, err = iss.SignAccount(acct); err != nil {
		t.Fatal(err)
	}
	var acks int
	waitFor(t, 15*time.Second, "three acks on a push", func() bool {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		defer pcancel()
		p, err := h.PushAccount(pctx, acct.JWT)
		acks = 0
		if err == nil {
			for _, a := range p.Nodes {
				if a.OK {
					acks++
				}
			}
		}
		return acks == 3
	})

	// A vehicle over TLS 1.3 to node 2, verified with the region's CA.
	kp, _ := nkeys.CreateUser()
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	vjwt, err := iss.SignVehicle(acct, pub, natsauth.VehicleIdentity{TenantID: "t-hubs", Fleet: "drones", Env: "prod", VehicleID: "V1"}, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(dir, "v1.creds")
	writeCreds(t, creds, vjwt, seed)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(ca.Bundle()))
	leaf := natstest.RunLeaf(t, leafURLs[1], creds, natstest.WithRemoteTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}))
	waitFor(t, 10*time.Second, "vehicle connected to node 2", func() bool { return leaf.NumLeafNodes() == 1 })
	// Graceful stop: lame duck mode, then every run returns nil.
	leaf.Shutdown()
	h.Close()
	// With connections left, lame duck mode waits its grace period (10 s)
	// before closing them; without, it stops at once.
	for _, n := range nodes {
		waitFor(t, 10*time.Second, n.name+" has no connections left", func() bool {
			var v struct{ Connections, Leafnodes int }
			return monitor(n, "/varz", &v) == nil && v.Connections == 0 && v.Leafnodes == 0
		})
	}
	cancel()
	for range nodes {
		select {
		case r := <-done:
			if r.err != nil {
				t.Errorf("hub %s: %v", r.name, r.err)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("hub nodes did not stop\n%s", dumpLogs())
		}
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

// writeTrust writes an operator's hub material as `admin operator export` does.
func writeTrust(t *testing.T, dir string, tr natsauth.HubTrust) {
	t.Helper()
	if err := natsissuer.WriteHubConfig(dir, tr, ""); err != nil {
		t.Fatal(err)
	}
}

func TestHubFileValidation(t *testing.T) {
	dir := t.TempDir()
	op := natstest.MustOperator(t)
	writeTrust(t, dir, op.HubTrust())
	other := natstest.MustOperator(t)
	if err := os.WriteFile(filepath.Join(dir, "other-sys.jwt"), []byte(other.System.JWT), 0o644); err != nil {
		t.Fatal(err)
	}
	ca, err := devca.Open(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Issue("hub-1", []string{"hub-1.example", "127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := devca.Open(filepath.Join(dir, "other-ca")); err != nil {
		t.Fatal(err)
	}
	const base = `
server_name: hub-1
region: europe
data_dir: state
trust:
  operator_jwt_file: operator.jwt
  system_account_jwt_file: sys-account.jwt
`
	const leafTLS = `
leafnodes:
  listen: 0.0.0.0:7422
  tls: {cert_file: tls/hub-1.pem, key_file: tls/hub-1-key.pem, ca_file: tls/ca.pem}
`
	for _, tc := range []struct {
		name, yaml, wantErr string
	}{
		{"minimal loopback", base + "leafnodes: {listen: 127.0.0.1:7422}\n", ""},
		{"with TLS", base + leafTLS, ""},
		{"default leaf listener needs TLS", base, "leafnodes.tls is required"},
		{"plain leaf off loopback", base + "leafnodes: {listen: 10.0.0.5:7422}\n", "leafnodes.tls is required"},
		{"leaf off", base + "leafnodes: {listen: \"\"}\n", ""},
		{"unknown key", base + leafTLS + "sync_interval: 1s\n", "field sync_interval not found"},
		{"no server name", strings.Replace(base, "server_name: hub-1", "", 1) + leafTLS, "server_name is required"},
		{"bad region", strings.Replace(base, "region: europe", "region: Europe West", 1) + leafTLS, "region \"Europe West\""},
		{"certificate from another CA", base + strings.Replace(leafTLS, "ca_file: tls/ca.pem", "ca_file: other-ca/ca.pem", 1), "does not verify against"},
		{"leaf client certificates", base + strings.Replace(leafTLS, "ca_file: tls/ca.pem", "ca_file: tls/ca.pem, verify: true", 1), "leafnodes.tls.verify is not supported"},
		{"compression", base + strings.Replace(leafTLS, "listen: 0.0.0.0:7422", "listen: 0.0.0.0:7422\n  compression: zstd", 1), "leafnodes.compression \"zstd\""},
		{"cluster without routes", base + leafTLS + "cluster: {listen: 0.0.0.0:6222}\n", "cluster.routes"},
		{"cluster TLS without CA", base + leafTLS + "cluster: {listen: 0.0.0.0:6222, routes: [nats-route://hub-2:6222], tls: {cert_file: tls/hub-1.pem, key_file: tls/hub-1-key.pem}}\n", "cluster.tls: ca_file is required"},
		{"route URL", base + leafTLS + "cluster: {listen: 0.0.0.0:6222, routes: [\"hub-2:6222\"]}\n", "want nats-route://"},
		{"gateway name", base + leafTLS + "gateway: {name: americas, listen: 0.0.0.0:7222}\n", "must equal the region"},
		{"sync interval", base + leafTLS + "jetstream: {sync_interval: 5m}\n", "jetstream.sync_interval"},
		{"size", base + leafTLS + "jetstream: {max_store: 10 parsecs}\n", "unknown unit"},
		{"pings", base + leafTLS + "ping_interval: 100ms\n", "ping_interval must be at least 1s"},
		{"lame duck", base + leafTLS + "lame_duck_duration: 5s\n", "lame_duck_grace_period"},
		{"no trust", strings.Split(base, "trust:")[0] + leafTLS, "operator_jwt or operator_jwt_file is required"},
		{"foreign system account", strings.Replace(base, "sys-account.jwt", "other-sys.jwt", 1) + leafTLS, "the operator names system account"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "hub.yaml")
			if err := os.WriteFile(p, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := loadHubFile(p)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				// Defaults are the deliberate ones.
				nc, err := f.NodeConfig(nil)
				if err != nil {
					t.Fatal(err)
				}
				if f.JetStream.SyncInterval != time.Second || f.PingInterval != 10*time.Second || f.MaxPingsOut != 3 ||
					f.Leafnodes.Compression != "off" || nc.Dir != filepath.Join(dir, "state") || f.LameDuckDuration != 30*time.Second {
					t.Errorf("defaults: %+v", f)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}
}

func TestHubTrustInline(t *testing.T) {
	op := natstest.MustOperator(t)
	dir := t.TempDir()
	writeTrust(t, dir, op.HubTrust())
	p := filepath.Join(dir, "hub.yaml")
	body := fmt.Sprintf("server_name: a\nregion: r\ndata_dir: d\nleafnodes: {listen: 127.0.0.1:0}\ntrust:\n  operator_jwt: %q\n  system_account_jwt: %q\n", op.JWT, op.System.JWT)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := loadHubFile(p)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := f.trust()
	if err != nil || tr != op.HubTrust() {
		t.Fatalf("trust = %+v, %v", tr, err)
	}
	both := body + "  operator_jwt_file: operator.jwt\n"
	if err := os.WriteFile(p, []byte(both), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadHubFile(p); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Fatalf("inline and file: %v", err)
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1024": 1024, "512MiB": 512 << 20, "4G": 4 << 30, "1.5GiB": 3 << 29, "100GB": 100e9, "10 MB": 10e6, "2T": 2 << 40} {
		if got, err := parseByteSize(in); err != nil || got != want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1X", "GiB", "1..2G"} {
		if _, err := parseByteSize(in); err == nil {
			t.Errorf("parseByteSize(%q) accepted", in)
		}
	}
}

var updateHubCerts = flag.Bool("update-hub-certs", false, "re-issue the compose cluster's development certificates in deploy/config/hubs/tls")

// writeComposeCerts issues the compose cluster's certificates from a fresh
// dev CA whose key is thrown away (never committed).
func writeComposeCerts(t *testing.T, dir string) {
	ca, err := devca.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"ca.pem": ca.CAFile()}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("hub-%d", i)
		c, err := ca.Issue(name, []string{name, "localhost", "127.0.0.1", "::1"})
		if err != nil {
			t.Fatal(err)
		}
		files[name+".pem"], files[name+"-key.pem"] = c.CertFile, c.KeyFile
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for dst, src := range files {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		// 0644: the hub container runs as another user than the files' owner.
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDeployHubConfigs keeps the shipped examples loadable: every key of
// deploy/config/hub.yaml and deploy/config/hubs/*.yaml is known, and the
// compose cluster's certificates chain to its CA and name their node.
func TestDeployHubConfigs(t *testing.T) {
	if *updateHubCerts {
		writeComposeCerts(t, "../../deploy/config/hubs/tls")
	}
	files, _ := filepath.Glob("../../deploy/config/hubs/hub-*.yaml")
	files = append(files, "../../deploy/config/hub.yaml")
	if len(files) < 4 {
		t.Fatalf("deploy hub configs: %v", files)
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		f := defaultHubFile()
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&f); err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if f.ServerName == "" || f.Region == "" || f.Leafnodes.TLS == nil {
			t.Errorf("%s: incomplete: %+v", p, f)
		}
		if strings.Contains(p, "/hubs/") {
			tlsDir := "../../deploy/config/hubs/tls"
			name := f.ServerName
			if err := hubnode.VerifyChain(filepath.Join(tlsDir, name+".pem"), filepath.Join(tlsDir, name+"-key.pem"), filepath.Join(tlsDir, "ca.pem")); err != nil {
				t.Errorf("%s: %v", p, err)
			}
			pair, err := tls.LoadX509KeyPair(filepath.Join(tlsDir, name+".pem"), filepath.Join(tlsDir, name+"-key.pem"))
			if err != nil {
				t.Fatal(err)
			}
			if err := pair.Leaf.VerifyHostname(name); err != nil {
				t.Errorf("%s: %v", p, err)
			}
			if time.Until(pair.Leaf.NotAfter) < 30*24*time.Hour {
				t.Errorf("%s: the compose certificates expire on %s: run this test with -update-hub-certs", p, pair.Leaf.NotAfter)
			}
		}
	}
}

// TestAdminHubConfigGateways: regions whose nodes have gateway_url get a
// gateway block listing the other regions, and two single-node regions
// started from those files link up (mutual TLS on routes and gateways).
func TestAdminHubConfigGateways(t *testing.T) {
	env := operatorEnv(t, "DATABASE_URL", pgtest.NewURL(t))
	dir := t.TempDir()
	ca, err := devca.Open(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	ports, err := freeLoopbackPorts(10)
	if err != nil {
		t.Fatal(err)
	}
	regions := []string{"europe", "americas"}
	var conf strings.Builder
	conf.WriteString("regions:\n")
	for i, r := range regions {
		name := "hub-" + r
		if _, err := ca.Issue(name, devca.LocalHosts); err != nil {
			t.Fatal(err)
		}
		p := ports[5*i:]
		fmt.Fprintf(&conf, "  - name: %s\n    nodes:\n      - {name: %s, url: \"nats://127.0.0.1:%d\", route_url: \"nats-route://127.0.0.1:%d\", gateway_url: \"nats://127.0.0.1:%d\", leaf_listen: \"127.0.0.1:%d\", monitor_listen: \"127.0.0.1:%d\"}\n",
			r, name, p[0], p[1], p[2], p[3], p[4])
	}
	cpConfig := filepath.Join(dir, "controlplane.yaml")
	if err := os.WriteFile(cpConfig, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, len(regions))
	for i, r := range regions {
		file := filepath.Join(dir, r+".yaml")
		var errb bytes.Buffer
		if err := run(ctx, []string{"admin", "hub", "config", "--config", cpConfig, "--region", r, "--node", "hub-" + r,
			"--out", file, "--data-dir", filepath.Join(dir, r), "--tls-dir", filepath.Join(dir, "tls")}, mapEnv(env), io.Discard, &errb); err != nil {
			t.Fatalf("admin hub config %s: %v\n%s", r, err, errb.String())
		}
		b, _ := os.ReadFile(file)
		other := regions[1-i]
		if !bytes.Contains(b, []byte("gateway:")) || !bytes.Contains(b, []byte(`name: "`+other+`"`)) {
			t.Fatalf("%s: no gateway to %s:\n%s", r, other, b)
		}
		go func() { done <- run(ctx, []string{"hub", "--config", file}, mapEnv(nil), io.Discard, io.Discard) }()
	}
	for i, r := range regions {
		other := regions[1-i]
		waitFor(t, 20*time.Second, r+" has a gateway to "+other, func() bool {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/gatewayz", ports[5*i+4]))
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			var gz struct {
				Name     string                     `json:"name"`
				Outbound map[string]json.RawMessage `json:"outbound_gateways"`
				Inbound  map[string]json.RawMessage `json:"inbound_gateways"`
			}
			return json.NewDecoder(resp.Body).Decode(&gz) == nil && gz.Name == r && gz.Outbound[other] != nil && gz.Inbound[other] != nil
		})
	}
	cancel()
	for range regions {
		select {
		case err := <-done:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("hub nodes did not stop")
		}
	}
}
