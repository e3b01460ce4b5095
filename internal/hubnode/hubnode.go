// Package hubnode builds and runs one embedded nats-server hub node in
// operator mode (DESIGN.md §1): the full directory account resolver with the
// system account preloaded, a client listener, a TLS 1.3 leafnode listener
// for vehicles with leaf interest isolated, routes to the other nodes of the
// region, optional gateways to other regions, JetStream with a deliberate
// sync policy and limits, tuned pings and a deliberate leafnode compression.
// `fleetplane hub` runs one node per process; `fleetplane dev` and tests run
// one or more in process.
//
// It imports nats-server, the jwt library and internal/natsauth only.
package hubnode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/fleetplane/fleetplane/internal/natsauth"
)

// Defaults applied by Options to zero fields.
const (
	// DefaultSyncInterval: the server's 2-minute default can lose
	// acknowledged writes on power loss or an OS crash (Jepsen, NATS
	// 2.12.1). With R3 a write is acknowledged only once a majority of the
	// nodes holds it, so losing one node's last second is repaired from its
	// peers; a whole-region power cut loses at most about a second.
	DefaultSyncInterval = time.Second
	// DefaultPingInterval × DefaultMaxPingsOut = 30 s until a dead link
	// (a vehicle whose LTE dropped without a FIN) is noticed, instead of
	// the server's 2 min × 2.
	DefaultPingInterval = 10 * time.Second
	DefaultMaxPingsOut  = 3
	// DefaultLeafCompression is the leafnode listener's compression: "off",
	// chosen by measurement (docs/adr/0008-leafnode-compression.md). With
	// "off" on the hub the link is uncompressed whatever the vehicle asks.
	DefaultLeafCompression = server.CompressionOff
	// DefaultRegion is the cluster name when none is given.
	DefaultRegion = "local"
)

// LeafCompressions are the accepted values of Config.LeafCompression.
var LeafCompressions = []string{
	server.CompressionOff, server.CompressionAccept, server.CompressionS2Auto,
	server.CompressionS2Fast, server.CompressionS2Better, server.CompressionS2Best,
}

// Config is one hub node.
type Config struct {
	Name   string // server name, unique in the region (the control plane matches push replies on it)
	Region string // cluster name (and gateway name); DefaultRegion if empty
	Dir    string // state: jwt/ (resolver) and, unless StoreDir is set, jetstream/
	// Tags are server tags (az:eu-central-1a) for JetStream placement.
	Tags []string

	// ClientHost/ClientPort is the client listener (0 = the server's
	// default 4222, -1 = random). ClientTLS nil = plain.
	ClientHost      string
	ClientPort      int
	ClientTLS       *tls.Config
	ClientAdvertise string
	// ClientNoAdvertise stops gossiping the other nodes' client URLs to
	// clients (for nodes behind a load balancer).
	ClientNoAdvertise bool

	// LeafHost/LeafPort is the vehicles' leafnode listener (0 = none, -1 =
	// random). LeafTLS is required unless the host is a loopback address;
	// its MinVersion is raised to TLS 1.3.
	LeafHost      string
	LeafPort      int
	LeafTLS       *tls.Config
	LeafAdvertise string
	// LeafNoAdvertise stops gossiping the region's leafnode URLs to
	// vehicles: behind a load balancer they must keep using its address.
	LeafNoAdvertise bool
	// LeafCompression is one of LeafCompressions; "" = DefaultLeafCompression.
	LeafCompression string

	// ClusterHost/ClusterPort is the route listener (ClusterPort 0 = no
	// cluster, -1 = random); Routes are the other nodes' route URLs
	// (nats-route://host:port). The cluster name is the region.
	// ClusterTLS (optional) should verify peers (mutual TLS): routes have
	// no other authentication.
	ClusterHost      string
	ClusterPort      int
	ClusterAdvertise string
	Routes           []string
	ClusterTLS       *tls.Config

	// Gateway links this region to others (a supercluster); nil = none.
	Gateway *Gateway

	// MonitorHost/MonitorPort serve the HTTP monitoring endpoints (/varz,
	// /healthz, ...); MonitorPort 0 = off, -1 = random.
	MonitorHost string
	MonitorPort int

	// StoreDir is JetStream's directory; "" = Dir/jetstream.
	StoreDir string
	// JetStreamMaxMemory/JetStreamMaxStore cap JetStream (bytes); 0 = the
	// server's default (75 % of RAM / of the store's free disk).
	JetStreamMaxMemory int64
	JetStreamMaxStore  int64
	// JetStreamDomain names the hub's JetStream domain ("" = none).
	JetStreamDomain string
	// JetStreamUniqueTag spreads a stream's replicas over servers whose tag
	// with this prefix differs (e.g. "az:").
	JetStreamUniqueTag string

	Trust natsauth.HubTrust
	// SyncInterval is how often JetStream fsyncs; DefaultSyncInterval if 0.
	SyncInterval time.Duration
	// PingInterval and MaxPingsOut detect dead links; defaults
	// DefaultPingInterval and DefaultMaxPingsOut.
	PingInterval time.Duration
	MaxPingsOut  int
	// LameDuckDuration spreads the closing of connections on
	// LameDuckShutdown so vehicles reconnect to the other nodes gradually;
	// LameDuckGracePeriod is the pause before the first close.
	LameDuckDuration    time.Duration
	LameDuckGracePeriod time.Duration

	// Logger receives the server's log (debug lines only when it is enabled
	// for slog.LevelDebug). Log sends it to stderr instead, in nats-server's
	// own format. Neither: silent.
	Logger *slog.Logger
	Log    bool
}

// Gateway is the gateway listener of a node and the regions it links to.
type Gateway struct {
	Host      string
	Port      int // -1 = random
	Advertise string
	TLS       *tls.Config // used for both the listener and the outbound links
	// Remotes are the regions to connect to (this region may be listed too,
	// as in a config file shared by every region).
	Remotes []GatewayRemote
}

// GatewayRemote is another region's gateway URLs (nats://host:7222).
type GatewayRemote struct {
	Name string
	URLs []string
}

// Options returns the nats-server options for c.
func Options(c Config) (*server.Options, error) {
	if c.Name == "" || c.Dir == "" {
		return nil, errors.New("hubnode: Name and Dir are required")
	}
	oc, err := c.Trust.OperatorClaims()
	if err != nil {
		return nil, err
	}
	if c.Region == "" {
		c.Region = DefaultRegion
	}
	if strings.ContainsAny(c.Region, " \t\r\n") {
		return nil, fmt.Errorf("hubnode: region %q: no spaces allowed", c.Region)
	}
	if c.LeafPort != 0 && c.LeafTLS == nil && !IsLoopback(c.LeafHost) {
		return nil, fmt.Errorf("hubnode: refusing a leafnode listener on %q without TLS: vehicles would send their credentials in clear (configure TLS, or listen on 127.0.0.1)", c.LeafHost)
	}
	if c.LeafCompression == "" {
		c.LeafCompression = DefaultLeafCompression
	}
	c.LeafCompression = strings.ToLower(c.LeafCompression)
	if !slices.Contains(LeafCompressions, c.LeafCompression) {
		return nil, fmt.Errorf("hubnode: leafnode compression %q: want one of %s", c.LeafCompression, strings.Join(LeafCompressions, ", "))
	}
	if c.JetStreamMaxMemory < 0 || c.JetStreamMaxStore < 0 {
		return nil, errors.New("hubnode: JetStream limits must not be negative")
	}
	if c.LameDuckDuration > 0 && c.LameDuckGracePeriod >= c.LameDuckDuration {
		return nil, fmt.Errorf("hubnode: lame duck grace period %s must be shorter than the duration %s", c.LameDuckGracePeriod, c.LameDuckDuration)
	}

	jwtDir := filepath.Join(c.Dir, "jwt")
	if err := os.MkdirAll(jwtDir, 0o700); err != nil {
		return nil, fmt.Errorf("hubnode: %w", err)
	}
	res, err := server.NewDirAccResolver(jwtDir, 0, time.Minute, server.NoDelete, server.FetchTimeout(2*time.Second))
	if err != nil {
		return nil, fmt.Errorf("hubnode: account resolver: %w", err)
	}
	for pub, tok := range c.Trust.ResolverPreload() {
		if err := res.Store(pub, tok); err != nil {
			return nil, fmt.Errorf("hubnode: preload the system account: %w", err)
		}
	}
	if c.SyncInterval == 0 {
		c.SyncInterval = DefaultSyncInterval
	}
	if c.PingInterval == 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.MaxPingsOut == 0 {
		c.MaxPingsOut = DefaultMaxPingsOut
	}
	if c.StoreDir == "" {
		c.StoreDir = filepath.Join(c.Dir, "jetstream")
	}
	o := &server.Options{
		ServerName:         c.Name,
		Host:               c.ClientHost,
		Port:               c.ClientPort,
		ClientAdvertise:    c.ClientAdvertise,
		NoSigs:             true,
		NoLog:              !c.Log,
		JetStream:          true,
		StoreDir:           c.StoreDir,
		JetStreamMaxMemory: c.JetStreamMaxMemory,
		JetStreamMaxStore:  c.JetStreamMaxStore,
		JetStreamDomain:    c.JetStreamDomain,
		JetStreamUniqueTag: strings.ToLower(strings.TrimSpace(c.JetStreamUniqueTag)), // as nats-server's config parser does
		SyncInterval:       c.SyncInterval,
		TrustedOperators:   []*jwt.OperatorClaims{oc},
		SystemAccount:      c.Trust.SystemAccountPublicKey,
		AccountResolver:    res,
		PingInterval:       c.PingInterval,
		MaxPingsOut:        c.MaxPingsOut,
		HTTPHost:           c.MonitorHost,
		HTTPPort:           c.MonitorPort,
		LameDuckDuration:   c.LameDuckDuration,
		LeafNode: server.LeafNodeOpts{
			Host:                    c.LeafHost,
			Port:                    c.LeafPort,
			Advertise:               c.LeafAdvertise,
			NoAdvertise:             c.LeafNoAdvertise,
			Compression:             server.CompressionOpts{Mode: c.LeafCompression},
			IsolateLeafnodeInterest: true,
		},
	}
	if c.LameDuckDuration > 0 {
		// The server's default grace period (10 s) must stay below the duration.
		o.LameDuckGracePeriod = c.LameDuckGracePeriod
		if o.LameDuckGracePeriod == 0 {
			o.LameDuckGracePeriod = min(10*time.Second, c.LameDuckDuration/2)
		}
	}
	for _, t := range c.Tags {
		o.Tags = append(o.Tags, strings.ToLower(strings.TrimSpace(t)))
	}
	if c.ClientTLS != nil {
		o.TLS, o.TLSConfig, o.TLSTimeout = true, c.ClientTLS, 5
	}
	if c.LeafTLS != nil {
		lt := c.LeafTLS.Clone()
		if lt.MinVersion < tls.VersionTLS13 {
			lt.MinVersion = tls.VersionTLS13
		}
		o.LeafNode.TLSConfig, o.LeafNode.TLSTimeout = lt, 5
	}
	if c.ClusterPort != 0 {
		o.Cluster = server.ClusterOpts{Name: c.Region, Host: c.ClusterHost, Port: c.ClusterPort,
			Advertise: c.ClusterAdvertise, NoAdvertise: c.ClientNoAdvertise}
		if c.ClusterTLS != nil {
			o.Cluster.TLSConfig, o.Cluster.TLSTimeout = c.ClusterTLS, 5
		}
		for _, r := range c.Routes {
			u, err := url.Parse(r)
			if err != nil || u.Host == "" {
				return nil, fmt.Errorf("hubnode: route %q: want nats-route://host:port", r)
			}
			o.Routes = append(o.Routes, u)
		}
		if len(o.Routes) == 0 {
			// nats-server: "JetStream cluster requires configured routes".
			return nil, errors.New("hubnode: a cluster listener needs routes: list every node's route URL (this node's own is skipped)")
		}
	} else if len(c.Routes) > 0 {
		return nil, errors.New("hubnode: routes need a cluster listener (ClusterPort)")
	}
	if g := c.Gateway; g != nil {
		o.Gateway = server.GatewayOpts{Name: c.Region, Host: g.Host, Port: g.Port, Advertise: g.Advertise,
			TLSConfig: g.TLS, RejectUnknown: true}
		if g.TLS != nil {
			o.Gateway.TLSTimeout = 5
		}
		for _, r := range g.Remotes {
			if r.Name == "" || len(r.URLs) == 0 {
				return nil, fmt.Errorf("hubnode: gateway %q needs a name and URLs", r.Name)
			}
			rg := &server.RemoteGatewayOpts{Name: r.Name}
			for _, s := range r.URLs {
				u, err := url.Parse(s)
				if err != nil || u.Host == "" {
					return nil, fmt.Errorf("hubnode: gateway %q URL %q: want nats://host:port", r.Name, s)
				}
				rg.URLs = append(rg.URLs, u)
			}
			o.Gateway.Gateways = append(o.Gateway.Gateways, rg)
		}
	}
	return o, nil
}

// IsLoopback reports whether host (a listen host) only accepts local
// connections. "" and 0.0.0.0 listen everywhere.
func IsLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// Start starts a hub node and waits until it accepts connections. It does
// not wait for the rest of its cluster.
func Start(c Config) (*server.Server, error) {
	o, err := Options(c)
	if err != nil {
		return nil, err
	}
	s, err := server.NewServer(o)
	if err != nil {
		return nil, fmt.Errorf("hubnode: %w", err)
	}
	switch {
	case c.Logger != nil:
		s.SetLoggerV2(slogLogger{c.Logger}, c.Logger.Enabled(context.Background(), slog.LevelDebug), false, false)
	case c.Log:
		s.ConfigureLogger()
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("hubnode: %s did not become ready (a port in use? see its log)", c.Name)
	}
	return s, nil
}

// Stop stops s and returns when it is down. With lameDuck (for nodes
// configured with a LameDuckDuration) it first enters lame duck mode:
// listeners close, JetStream leadership moves to the other nodes, and
// connections close spread over the duration, so vehicles reconnect to the
// rest of the region gradually instead of all at once.
func Stop(s *server.Server, lameDuck bool) {
	if lameDuck {
		s.LameDuckShutdown()
	}
	s.Shutdown()
	s.WaitForShutdown()
}
