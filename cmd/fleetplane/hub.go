package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/nats-io/jwt/v2"
	"go.yaml.in/yaml/v3"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/hubnode"
	"github.com/fleetplane/fleetplane/internal/natsauth"
)

// HubFile is a hub node's configuration, hub.yaml (every key is documented
// in deploy/config/hub.yaml). Unknown keys are errors. Relative paths are
// relative to the file's directory.
type HubFile struct {
	ServerName string   `yaml:"server_name"`
	Region     string   `yaml:"region"`
	DataDir    string   `yaml:"data_dir"`
	Tags       []string `yaml:"tags"`
	LogLevel   string   `yaml:"log_level"`
	LogFormat  string   `yaml:"log_format"`

	Client     HubClientConf    `yaml:"client"`
	Leafnodes  HubLeafConf      `yaml:"leafnodes"`
	Cluster    *HubClusterConf  `yaml:"cluster"`
	Gateway    *HubGatewayConf  `yaml:"gateway"`
	Monitoring HubMonitorConf   `yaml:"monitoring"`
	JetStream  HubJetStreamConf `yaml:"jetstream"`

	PingInterval        time.Duration `yaml:"ping_interval"`
	MaxPingsOut         int           `yaml:"max_pings_out"`
	LameDuckDuration    time.Duration `yaml:"lame_duck_duration"`
	LameDuckGracePeriod time.Duration `yaml:"lame_duck_grace_period"`

	Trust HubTrustConf `yaml:"trust"`

	dir string // the file's directory, for relative paths
}

// HubTLSConf names a listener's PEM files.
type HubTLSConf struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	CAFile   string `yaml:"ca_file"`
	// Verify requires peer certificates signed by ca_file. Default: true
	// for cluster and gateway (their only authentication), false for
	// clients; not offered for leafnodes (vehicles authenticate with JWTs).
	Verify *bool `yaml:"verify"`
}

// HubClientConf is the client listener (control plane, grants, nats CLI).
type HubClientConf struct {
	Listen      string      `yaml:"listen"`
	Advertise   string      `yaml:"advertise"`
	NoAdvertise bool        `yaml:"no_advertise"`
	TLS         *HubTLSConf `yaml:"tls"`
}

// HubLeafConf is the vehicles' leafnode listener.
type HubLeafConf struct {
	Listen      string      `yaml:"listen"`
	Advertise   string      `yaml:"advertise"`
	NoAdvertise bool        `yaml:"no_advertise"`
	Compression string      `yaml:"compression"`
	TLS         *HubTLSConf `yaml:"tls"`
}

// HubClusterConf is the route listener and the region's other nodes.
type HubClusterConf struct {
	Listen    string      `yaml:"listen"`
	Advertise string      `yaml:"advertise"`
	Routes    []string    `yaml:"routes"`
	TLS       *HubTLSConf `yaml:"tls"`
}

// HubGatewayConf links the region to other regions.
type HubGatewayConf struct {
	Name      string             `yaml:"name"`
	Listen    string             `yaml:"listen"`
	Advertise string             `yaml:"advertise"`
	TLS       *HubTLSConf        `yaml:"tls"`
	Gateways  []HubGatewayRemote `yaml:"gateways"`
}

// HubGatewayRemote is another region's gateway URLs.
type HubGatewayRemote struct {
	Name string   `yaml:"name"`
	URLs []string `yaml:"urls"`
}

// HubMonitorConf is the HTTP monitoring listener ("" = off).
type HubMonitorConf struct {
	Listen string `yaml:"listen"`
}

// HubJetStreamConf is JetStream's storage.
type HubJetStreamConf struct {
	StoreDir     string        `yaml:"store_dir"`
	MaxMemory    ByteSize      `yaml:"max_memory"`
	MaxStore     ByteSize      `yaml:"max_store"`
	SyncInterval time.Duration `yaml:"sync_interval"`
	Domain       string        `yaml:"domain"`
	UniqueTag    string        `yaml:"unique_tag"`
}

// HubTrustConf is the operator the node trusts: the files `fleetplane
// admin operator export` writes, or the JWTs inline.
type HubTrustConf struct {
	OperatorJWTFile      string `yaml:"operator_jwt_file"`
	SystemAccountJWTFile string `yaml:"system_account_jwt_file"`
	OperatorJWT          string `yaml:"operator_jwt"`
	SystemAccountJWT     string `yaml:"system_account_jwt"`
}

// ByteSize is a size in bytes, written as a number or with a unit: 512MiB,
// 4GiB, 100GB (K/M/G/T are powers of 1024 with or without "iB", as in
// nats-server; KB/MB/GB/TB are powers of 1000).
type ByteSize int64

// UnmarshalYAML accepts a number or a string with a unit.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = ByteSize(v)
	return nil
}

func parseByteSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("size %q: want a number of bytes or e.g. 512MiB, 4GiB", s)
	}
	mult := map[string]float64{"": 1, "B": 1,
		"K": 1 << 10, "KiB": 1 << 10, "M": 1 << 20, "MiB": 1 << 20, "G": 1 << 30, "GiB": 1 << 30, "T": 1 << 40, "TiB": 1 << 40,
		"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("size %q: unknown unit %q", s, unit)
	}
	return int64(f * mult), nil
}

// Defaults of hub.yaml (deploy/config/hub.yaml explains each).
const (
	defaultHubClientListen  = "0.0.0.0:4222"
	defaultHubLeafListen    = "0.0.0.0:7422"
	defaultHubMonitorListen = "127.0.0.1:8222"
	defaultHubLameDuck      = 30 * time.Second
	defaultHubLameDuckGrace = 10 * time.Second
	defaultHubDataDir       = "/var/lib/fleetplane-hub"
	defaultHubTLSDir        = "/etc/fleetplane/hub/tls"
)

func defaultHubFile() HubFile {
	return HubFile{
		LogLevel:            "info",
		LogFormat:           "json",
		Client:              HubClientConf{Listen: defaultHubClientListen},
		Leafnodes:           HubLeafConf{Listen: defaultHubLeafListen, Compression: hubnode.DefaultLeafCompression},
		Monitoring:          HubMonitorConf{Listen: defaultHubMonitorListen},
		JetStream:           HubJetStreamConf{SyncInterval: hubnode.DefaultSyncInterval},
		PingInterval:        hubnode.DefaultPingInterval,
		MaxPingsOut:         hubnode.DefaultMaxPingsOut,
		LameDuckDuration:    defaultHubLameDuck,
		LameDuckGracePeriod: defaultHubLameDuckGrace,
	}
}

// loadHubFile reads and validates hub.yaml.
func loadHubFile(path string) (*HubFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("hub config: %w", err)
	}
	f := defaultHubFile()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("hub config %s: %w", path, err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("hub config: %w", err)
	}
	f.dir = filepath.Dir(abs)
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("hub config %s: %w", path, err)
	}
	return &f, nil
}

// path resolves p against the file's directory.
func (f *HubFile) path(p string) string {
	if p == "" || filepath.IsAbs(p) || f.dir == "" {
		return p
	}
	return filepath.Join(f.dir, p)
}

// Validate checks the file as a whole (files it names included).
func (f *HubFile) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if f.ServerName == "" || strings.ContainsAny(f.ServerName, " \t\r\n") {
		bad("server_name is required (unique in the region, no spaces)")
	}
	if !controlplane.ValidRegionName(f.Region) {
		bad("region %q must be 1-32 characters of a-z, 0-9 and '-' (it is the cluster name)", f.Region)
	}
	if f.DataDir == "" {
		bad("data_dir is required")
	}
	if _, err := parseLevel(f.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if f.LogFormat != "json" && f.LogFormat != "text" {
		bad("log_format must be json or text, got %q", f.LogFormat)
	}
	checkListen := func(key, v string, optional bool) {
		if v == "" && optional {
			return
		}
		if _, _, err := splitAddr(v); err != nil {
			bad("%s %q: want host:port (%v)", key, v, err)
		}
	}
	checkTLS := func(key string, t *HubTLSConf) {
		if t == nil {
			return
		}
		if t.CertFile == "" || t.KeyFile == "" {
			bad("%s: cert_file and key_file are required", key)
			return
		}
		if _, err := f.tlsFiles(t, false).TLSConfig(); err != nil {
			bad("%s: %v", key, err)
		}
	}
	checkListen("client.listen", f.Client.Listen, false)
	checkTLS("client.tls", f.Client.TLS)
	checkListen("leafnodes.listen", f.Leafnodes.Listen, true)
	if f.Leafnodes.Listen != "" {
		host, _, _ := splitAddr(f.Leafnodes.Listen)
		if f.Leafnodes.TLS == nil && !hubnode.IsLoopback(host) {
			bad("leafnodes.tls is required: a leafnode listener on %q without TLS would take vehicle credentials in clear (only loopback may be plain)", f.Leafnodes.Listen)
		}
	}
	if t := f.Leafnodes.TLS; t != nil {
		if t.Verify != nil && *t.Verify {
			bad("leafnodes.tls.verify is not supported: vehicles authenticate with their JWT, not a client certificate")
		}
		checkTLS("leafnodes.tls", t)
		if t.CAFile != "" && t.CertFile != "" {
			if err := hubnode.VerifyChain(f.path(t.CertFile), f.path(t.KeyFile), f.path(t.CAFile)); err != nil {
				bad("leafnodes.tls: %v (vehicles get the region's CA bundle and would refuse this certificate)", err)
			}
		}
	}
	if !slices.Contains(hubnode.LeafCompressions, strings.ToLower(f.Leafnodes.Compression)) {
		bad("leafnodes.compression %q: want one of %s", f.Leafnodes.Compression, strings.Join(hubnode.LeafCompressions, ", "))
	}
	if c := f.Cluster; c != nil {
		checkListen("cluster.listen", c.Listen, false)
		if len(c.Routes) == 0 {
			bad("cluster.routes: list every node's route URL (nats-route://host:6222), this node's own included or not")
		}
		for _, r := range c.Routes {
			if u, err := url.Parse(r); err != nil || u.Host == "" || (u.Scheme != "nats-route" && u.Scheme != "nats" && u.Scheme != "tls") {
				bad("cluster.routes: %q: want nats-route://host:port", r)
			}
		}
		checkTLS("cluster.tls", c.TLS)
		if c.TLS != nil && c.TLS.CAFile == "" && (c.TLS.Verify == nil || *c.TLS.Verify) {
			bad("cluster.tls: ca_file is required to verify the other nodes (or set verify: false)")
		}
	}
	if g := f.Gateway; g != nil {
		if g.Name != "" && g.Name != f.Region {
			bad("gateway.name %q must equal the region %q (nats-server requires gateway name = cluster name)", g.Name, f.Region)
		}
		checkListen("gateway.listen", g.Listen, false)
		checkTLS("gateway.tls", g.TLS)
		if g.TLS != nil && g.TLS.CAFile == "" && (g.TLS.Verify == nil || *g.TLS.Verify) {
			bad("gateway.tls: ca_file is required to verify the other regions (or set verify: false)")
		}
		for _, r := range g.Gateways {
			if !controlplane.ValidRegionName(r.Name) || len(r.URLs) == 0 {
				bad("gateway.gateways: %q needs a region name and urls", r.Name)
			}
			for _, s := range r.URLs {
				if u, err := url.Parse(s); err != nil || u.Host == "" {
					bad("gateway.gateways %q: URL %q: want nats://host:7222", r.Name, s)
				}
			}
		}
	}
	checkListen("monitoring.listen", f.Monitoring.Listen, true)
	if f.JetStream.MaxMemory < 0 || f.JetStream.MaxStore < 0 {
		bad("jetstream.max_memory and max_store must not be negative")
	}
	if f.JetStream.SyncInterval <= 0 || f.JetStream.SyncInterval > 2*time.Minute {
		bad("jetstream.sync_interval must be between 1ns and 2m, got %s", f.JetStream.SyncInterval)
	}
	if f.PingInterval < time.Second {
		bad("ping_interval must be at least 1s, got %s", f.PingInterval)
	}
	if f.MaxPingsOut < 1 {
		bad("max_pings_out must be at least 1, got %d", f.MaxPingsOut)
	}
	if f.LameDuckDuration < 0 || (f.LameDuckDuration > 0 && f.LameDuckGracePeriod >= f.LameDuckDuration) {
		bad("lame_duck_grace_period (%s) must be shorter than lame_duck_duration (%s)", f.LameDuckGracePeriod, f.LameDuckDuration)
	}
	if _, err := f.trust(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (f *HubFile) tlsFiles(t *HubTLSConf, verifyDefault bool) hubnode.TLSFiles {
	verify := verifyDefault
	if t.Verify != nil {
		verify = *t.Verify
	}
	return hubnode.TLSFiles{CertFile: f.path(t.CertFile), KeyFile: f.path(t.KeyFile), CAFile: f.path(t.CAFile), Verify: verify}
}

// trust reads the operator and system account JWTs and checks that they
// belong together.
func (f *HubFile) trust() (natsauth.HubTrust, error) {
	read := func(key, inline, file string) (string, error) {
		switch {
		case inline != "" && file != "":
			return "", fmt.Errorf("trust: set %s or %s_file, not both", key, key)
		case inline != "":
			return strings.TrimSpace(inline), nil
		case file != "":
			b, err := os.ReadFile(f.path(file))
			if err != nil {
				return "", fmt.Errorf("trust: %s_file: %w", key, err)
			}
			return strings.TrimSpace(string(b)), nil
		}
		return "", fmt.Errorf("trust: %s or %s_file is required (fleetplane admin operator export writes the files)", key, key)
	}
	opJWT, err := read("operator_jwt", f.Trust.OperatorJWT, f.Trust.OperatorJWTFile)
	if err != nil {
		return natsauth.HubTrust{}, err
	}
	sysJWT, err := read("system_account_jwt", f.Trust.SystemAccountJWT, f.Trust.SystemAccountJWTFile)
	if err != nil {
		return natsauth.HubTrust{}, err
	}
	oc, err := jwt.DecodeOperatorClaims(opJWT)
	if err != nil {
		return natsauth.HubTrust{}, fmt.Errorf("trust: operator JWT: %w", err)
	}
	ac, err := jwt.DecodeAccountClaims(sysJWT)
	if err != nil {
		return natsauth.HubTrust{}, fmt.Errorf("trust: system account JWT: %w", err)
	}
	if oc.SystemAccount != ac.Subject {
		return natsauth.HubTrust{}, fmt.Errorf("trust: the operator names system account %s, the system account JWT is for %s", oc.SystemAccount, ac.Subject)
	}
	if ac.Issuer != oc.Subject && !oc.SigningKeys.Contains(ac.Issuer) {
		return natsauth.HubTrust{}, errors.New("trust: the system account JWT is not signed by this operator")
	}
	return natsauth.HubTrust{OperatorJWT: opJWT, SystemAccountPublicKey: ac.Subject, SystemAccountJWT: sysJWT}, nil
}

// NodeConfig turns the file into hubnode's configuration.
func (f *HubFile) NodeConfig(logger *slog.Logger) (hubnode.Config, error) {
	trust, err := f.trust()
	if err != nil {
		return hubnode.Config{}, err
	}
	c := hubnode.Config{
		Name: f.ServerName, Region: f.Region, Dir: f.path(f.DataDir), Tags: f.Tags,
		ClientAdvertise: f.Client.Advertise, ClientNoAdvertise: f.Client.NoAdvertise,
		LeafAdvertise: f.Leafnodes.Advertise, LeafNoAdvertise: f.Leafnodes.NoAdvertise,
		LeafCompression: f.Leafnodes.Compression,
		StoreDir:        f.path(f.JetStream.StoreDir), JetStreamMaxMemory: int64(f.JetStream.MaxMemory), JetStreamMaxStore: int64(f.JetStream.MaxStore),
		JetStreamDomain: f.JetStream.Domain, JetStreamUniqueTag: f.JetStream.UniqueTag,
		Trust: trust, SyncInterval: f.JetStream.SyncInterval, PingInterval: f.PingInterval, MaxPingsOut: f.MaxPingsOut,
		LameDuckDuration: f.LameDuckDuration, LameDuckGracePeriod: f.LameDuckGracePeriod,
		Logger: logger,
	}
	tlsConf := func(t *HubTLSConf, verifyDefault bool) (*tls.Config, error) {
		if t == nil {
			return nil, nil
		}
		return f.tlsFiles(t, verifyDefault).TLSConfig()
	}
	if c.ClientHost, c.ClientPort, err = splitAddr(f.Client.Listen); err != nil {
		return c, err
	}
	if c.ClientTLS, err = tlsConf(f.Client.TLS, false); err != nil {
		return c, err
	}
	if f.Leafnodes.Listen != "" {
		if c.LeafHost, c.LeafPort, err = splitAddr(f.Leafnodes.Listen); err != nil {
			return c, err
		}
		if c.LeafTLS, err = tlsConf(f.Leafnodes.TLS, false); err != nil {
			return c, err
		}
	}
	if cl := f.Cluster; cl != nil {
		if c.ClusterHost, c.ClusterPort, err = splitAddr(cl.Listen); err != nil {
			return c, err
		}
		c.ClusterAdvertise, c.Routes = cl.Advertise, cl.Routes
		if c.ClusterTLS, err = tlsConf(cl.TLS, true); err != nil {
			return c, err
		}
	}
	if g := f.Gateway; g != nil {
		gw := &hubnode.Gateway{Advertise: g.Advertise}
		if gw.Host, gw.Port, err = splitAddr(g.Listen); err != nil {
			return c, err
		}
		if gw.TLS, err = tlsConf(g.TLS, true); err != nil {
			return c, err
		}
		for _, r := range g.Gateways {
			gw.Remotes = append(gw.Remotes, hubnode.GatewayRemote{Name: r.Name, URLs: r.URLs})
		}
		c.Gateway = gw
	}
	if f.Monitoring.Listen != "" {
		if c.MonitorHost, c.MonitorPort, err = splitAddr(f.Monitoring.Listen); err != nil {
			return c, err
		}
	}
	return c, nil
}

const hubUsage = `usage: fleetplane hub --config hub.yaml [--check]

Runs one hub node (an embedded nats-server in operator mode) in the
foreground until SIGTERM/SIGINT, then stops in lame duck mode. hub.yaml is
documented in deploy/config/hub.yaml; fleetplane admin hub config writes one
from the control plane's configuration. --check asks a running node's
monitoring endpoint (/healthz) and exits 0 when it is healthy.
`

func runHub(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleetplane hub", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, hubUsage); fs.PrintDefaults() }
	configPath := fs.String("config", getenv("FLEETPLANE_HUB_CONFIG"), "hub.yaml (also FLEETPLANE_HUB_CONFIG)")
	check := fs.Bool("check", false, "check the running node's health through its monitoring listener and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("hub: unexpected arguments %q", fs.Args())}
	}
	if *configPath == "" {
		fs.Usage()
		return &usageError{"hub: --config is required"}
	}
	f, err := loadHubFile(*configPath)
	if err != nil {
		return err
	}
	if *check {
		return checkHub(ctx, f, stdout)
	}
	logger := newLogger(&Config{LogLevel: f.LogLevel, LogFormat: f.LogFormat}, stderr).With("node", f.ServerName, "region", f.Region)
	nc, err := f.NodeConfig(logger)
	if err != nil {
		return err
	}
	s, err := hubnode.Start(nc)
	if err != nil {
		return err
	}
	v, _ := s.Varz(nil)
	attrs := []any{"client", fmt.Sprintf("%s:%d", v.Host, v.Port)}
	if v.LeafNode.Port != 0 {
		attrs = append(attrs, "leafnodes", fmt.Sprintf("%s:%d", v.LeafNode.Host, v.LeafNode.Port), "leaf_tls", v.LeafNode.TLSRequired, "compression", nc.LeafCompression)
	}
	if v.Cluster.Port != 0 {
		attrs = append(attrs, "cluster", fmt.Sprintf("%s:%d", v.Cluster.Host, v.Cluster.Port), "routes", len(nc.Routes))
	}
	if v.Gateway.Port != 0 {
		attrs = append(attrs, "gateway", fmt.Sprintf("%s:%d", v.Gateway.Host, v.Gateway.Port))
	}
	if v.HTTPPort != 0 {
		attrs = append(attrs, "monitoring", fmt.Sprintf("%s:%d", v.HTTPHost, v.HTTPPort))
	}
	logger.Info("hub node running", attrs...)
	down := make(chan struct{})
	go func() { s.WaitForShutdown(); close(down) }()
	select {
	case <-ctx.Done():
	case <-down:
		return errors.New("hub node stopped unexpectedly (see its log)")
	}
	logger.Info("hub node stopping", "lame_duck", f.LameDuckDuration.String())
	hubnode.Stop(s, f.LameDuckDuration > 0)
	logger.Info("hub node stopped")
	return nil
}

// checkHub asks the node's /healthz (for container health checks: the
// image has no curl).
func checkHub(ctx context.Context, f *HubFile, stdout io.Writer) error {
	if f.Monitoring.Listen == "" {
		return errors.New("hub --check: monitoring.listen is off in the config")
	}
	host, port, err := splitAddr(f.Monitoring.Listen)
	if err != nil {
		return err
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, strconv.Itoa(port))+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("hub --check: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("hub --check: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	fmt.Fprintf(stdout, "%s ok\n", f.ServerName)
	return nil
}

// hubConfigTemplate is what `fleetplane admin hub config` writes: a
// complete hub.yaml for one node, with the operator inlined (no file to
// copy beside it). See deploy/config/hub.yaml for every key.
var hubConfigTemplate = template.Must(template.New("hub.yaml").Funcs(template.FuncMap{"q": strconv.Quote}).Parse(
	`# hub.yaml for node {{.Node}} of region {{.Region}}: fleetplane hub --config <this file>
# Written by "fleetplane admin hub config --region {{.Region}} --node {{.Node}}" from the control
# plane's configuration and its NATS operator. It holds no secret (public JWTs, file paths).
# Every key is explained in deploy/config/hub.yaml and docs/hubs.md.
server_name: {{q .Node}}
region: {{q .Region}}
data_dir: {{q .DataDir}}
log_level: info
log_format: json

client:
  listen: {{q .ClientListen}}
{{- if .ClientTLS}}
  tls:
    cert_file: {{q .CertFile}}
    key_file: {{q .KeyFile}}
    ca_file: {{q .CAFile}}
{{- end}}

# Vehicles. TLS 1.3 only; the certificate must chain to the CA the control plane hands
# vehicles (the region's ca_file). no_advertise: vehicles keep the region's leaf_urls
# rather than learning node addresses they may not reach or verify.
leafnodes:
  listen: {{q .LeafListen}}
  no_advertise: true
  compression: {{.Compression}}
  tls:
    cert_file: {{q .CertFile}}
    key_file: {{q .KeyFile}}
    ca_file: {{q .CAFile}}

# The region's nodes (every node, this one included: it skips itself).
cluster:
  listen: {{q .ClusterListen}}
  routes:
{{- range .Routes}}
    - {{q .}}
{{- end}}
{{- if .RouteTLS}}
  tls:  # mutual TLS: routes have no other authentication
    cert_file: {{q .CertFile}}
    key_file: {{q .KeyFile}}
    ca_file: {{q .CAFile}}
    verify: true
{{- end}}
{{- if .GatewayListen}}

# Other regions (a supercluster).
gateway:
  name: {{q .Region}}
  listen: {{q .GatewayListen}}
{{- if .RouteTLS}}
  tls:
    cert_file: {{q .CertFile}}
    key_file: {{q .KeyFile}}
    ca_file: {{q .CAFile}}
    verify: true
{{- end}}
  gateways:
{{- range .Gateways}}
    - name: {{q .Name}}
      urls: [{{range $i, $u := .URLs}}{{if $i}}, {{end}}{{q $u}}{{end}}]
{{- end}}
{{- end}}

monitoring:
  listen: {{q .MonitorListen}}

jetstream:
  # max_memory: 1GiB    # default: 75 % of RAM
  # max_store: 100GiB   # default: 75 % of the store's free disk
  sync_interval: 1s

ping_interval: 10s
max_pings_out: 3
lame_duck_duration: 30s
lame_duck_grace_period: 10s

trust:
  operator_jwt: {{q .OperatorJWT}}
  system_account_jwt: {{q .SystemAccountJWT}}
`))

type hubConfigData struct {
	Node, Region, DataDir                     string
	ClientListen, LeafListen, ClusterListen   string
	GatewayListen, MonitorListen, Compression string
	ClientTLS, RouteTLS                       bool
	CertFile, KeyFile, CAFile                 string
	Routes                                    []string
	Gateways                                  []HubGatewayRemote
	OperatorJWT, SystemAccountJWT             string
}

// listenOn is the listen address for a URL: its host when it is an IP
// address (bind exactly that interface), every interface for a name.
func listenOn(u *url.URL, defaultPort string) string {
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = defaultPort
	}
	if net.ParseIP(host) == nil {
		host = "0.0.0.0"
	}
	return net.JoinHostPort(host, port)
}

// nodeRouteURL is n's route URL: route_url, or its client URL's host on 6222.
func nodeRouteURL(n HubNodeConf) (string, error) {
	if n.RouteURL != "" {
		return n.RouteURL, nil
	}
	u, err := url.Parse(n.URL)
	if err != nil || u.Hostname() == "" {
		return "", fmt.Errorf("node %q: url %q has no host", n.Name, n.URL)
	}
	return "nats-route://" + net.JoinHostPort(u.Hostname(), "6222"), nil
}

// hubConfigFor renders node of region r from the control plane config.
func hubConfigFor(cfg *Config, regionName, node string, trust natsauth.HubTrust, dataDir, tlsDir string, routeTLS bool) ([]byte, error) {
	var r *RegionConf
	for i := range cfg.Regions {
		if cfg.Regions[i].Name == regionName {
			r = &cfg.Regions[i]
		}
	}
	if r == nil {
		return nil, fmt.Errorf("region %q is not in the configuration", regionName)
	}
	var n *HubNodeConf
	for i := range r.Nodes {
		if r.Nodes[i].Name == node {
			n = &r.Nodes[i]
		}
	}
	if n == nil {
		return nil, fmt.Errorf("region %q has no node %q in the configuration (regions[].nodes)", regionName, node)
	}
	cu, err := url.Parse(n.URL)
	if err != nil || cu.Hostname() == "" {
		return nil, fmt.Errorf("node %q: url %q has no host", n.Name, n.URL)
	}
	d := hubConfigData{Node: n.Name, Region: r.Name, DataDir: dataDir,
		ClientListen: listenOn(cu, "4222"), ClientTLS: cu.Scheme == "tls",
		LeafListen: cmp.Or(n.LeafListen, defaultHubLeafListen), MonitorListen: cmp.Or(n.MonitorListen, defaultHubMonitorListen),
		Compression: hubnode.DefaultLeafCompression, RouteTLS: routeTLS,
		CertFile: filepath.Join(tlsDir, n.Name+".pem"), KeyFile: filepath.Join(tlsDir, n.Name+"-key.pem"), CAFile: filepath.Join(tlsDir, "ca.pem"),
		OperatorJWT: trust.OperatorJWT, SystemAccountJWT: trust.SystemAccountJWT}
	own, err := nodeRouteURL(*n)
	if err != nil {
		return nil, err
	}
	ru, err := url.Parse(own)
	if err != nil || ru.Hostname() == "" {
		return nil, fmt.Errorf("node %q: route_url %q: want nats-route://host:port", n.Name, own)
	}
	d.ClusterListen = listenOn(ru, "6222")
	for _, o := range r.Nodes {
		ru, err := nodeRouteURL(o)
		if err != nil {
			return nil, err
		}
		d.Routes = append(d.Routes, ru)
	}
	withGW := 0
	for _, o := range r.Nodes {
		if o.GatewayURL != "" {
			withGW++
		}
	}
	if withGW != 0 && withGW != len(r.Nodes) {
		return nil, fmt.Errorf("region %q: set gateway_url on every node or on none", r.Name)
	}
	if n.GatewayURL != "" {
		gu, err := url.Parse(n.GatewayURL)
		if err != nil || gu.Hostname() == "" {
			return nil, fmt.Errorf("node %q: gateway_url %q: want nats://host:port", n.Name, n.GatewayURL)
		}
		d.GatewayListen = listenOn(gu, "7222")
		for _, other := range cfg.Regions {
			if other.Name == r.Name {
				continue
			}
			g := HubGatewayRemote{Name: other.Name}
			for _, o := range other.Nodes {
				if o.GatewayURL != "" {
					g.URLs = append(g.URLs, o.GatewayURL)
				}
			}
			if len(g.URLs) > 0 {
				d.Gateways = append(d.Gateways, g)
			}
		}
		if len(d.Gateways) == 0 {
			d.GatewayListen = "" // no other region to link to
		}
	}
	var buf bytes.Buffer
	if err := hubConfigTemplate.Execute(&buf, d); err != nil {
		return nil, err
	}
	// The output must load as it will on the hub (the TLS files live there,
	// so only the structure and the trust are checked here).
	var f HubFile
	dec := yaml.NewDecoder(bytes.NewReader(buf.Bytes()))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("generated hub config does not parse: %w", err)
	}
	if _, err := f.trust(); err != nil {
		return nil, fmt.Errorf("generated hub config: %w", err)
	}
	return buf.Bytes(), nil
}

// runAdminHubConfig is `fleetplane admin hub config`.
func runAdminHubConfig(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleetplane admin hub config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	region := fs.String("region", "", "region name (regions[].name in the control plane config, or a region of `admin region add`; required)")
	node := fs.String("node", "", "node name (regions[].nodes[].name; required)")
	out := fs.String("out", "", "write the file here (default: standard output)")
	dataDir := fs.String("data-dir", defaultHubDataDir, "the node's state directory on the hub machine")
	tlsDir := fs.String("tls-dir", defaultHubTLSDir, "directory on the hub machine holding <node>.pem, <node>-key.pem and ca.pem")
	routeTLS := fs.Bool("route-tls", true, "mutual TLS between nodes (routes, gateways) with the node's certificate; false only on a private network")
	cfg := defaultConfig()
	if err := loadConfig(fs, args, getenv, &cfg); err != nil {
		return err
	}
	if *region == "" || *node == "" {
		return &usageError{"admin hub config: --region and --node are required"}
	}
	if cfg.DatabaseURL == "" {
		return &usageError{"no database: set --database-url, FLEETPLANE_DATABASE_URL(_FILE) or DATABASE_URL"}
	}
	pool, err := postgres.Open(ctx, cfg.DatabaseURL, 2)
	if err != nil {
		return fmt.Errorf("database %s: %w", redactURL(cfg.DatabaseURL), err)
	}
	defer pool.Close()
	store := postgres.NewStore(pool)
	op, err := store.FindOperator(ctx)
	if controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
		return errors.New("no NATS operator yet: run `fleetplane admin operator init`")
	} else if err != nil {
		return err
	}
	// Regions added with `admin region add` (docs/regions.md) count too;
	// the configuration's entry wins, as it may carry route_url & co.
	if dbRegions, err := store.FindRegions(ctx); err != nil {
		fmt.Fprintf(stderr, "admin hub config: regions in the database not read (%v); using the configuration's only\n", err)
	} else {
		for _, r := range dbRegions {
			if slices.ContainsFunc(cfg.Regions, func(c RegionConf) bool { return c.Name == r.Name && len(c.Nodes) > 0 }) {
				continue
			}
			rc := RegionConf{Name: r.Name}
			for _, n := range r.Nodes {
				rc.Nodes = append(rc.Nodes, HubNodeConf{Name: n.Name, URL: n.URL})
			}
			cfg.Regions = slices.DeleteFunc(cfg.Regions, func(c RegionConf) bool { return c.Name == r.Name })
			cfg.Regions = append(cfg.Regions, rc)
		}
	}
	b, err := hubConfigFor(&cfg, *region, *node, natsissuer.HubTrust(op), *dataDir, *tlsDir, *routeTLS)
	if err != nil {
		return fmt.Errorf("admin hub config: %w", err)
	}
	if *out == "" {
		_, err := stdout.Write(b)
		return err
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		return fmt.Errorf("admin hub config: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s (node %s of region %s)\n", *out, *node, *region)
	return nil
}
