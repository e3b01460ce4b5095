// Package leaf runs the vehicle's embedded nats-server: a leaf node with a
// client listener on the loopback for on-vehicle services, a local
// JetStream in the vehicle's own domain holding the vehicle's telemetry
// stream, and one TLS remote to the region's hubs authenticated with the
// vehicle's creds.
//
// It may import nats-server, nats.go and internal/natsauth; never the
// control plane or internal/hubnode (that is the hub side).
package leaf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults, chosen for a vehicle on a cellular link (docs/agent.md).
const (
	// PingInterval × MaxPingsOut bounds how long a dead link goes
	// unnoticed: the remote is declared dead after MaxPingsOut unanswered
	// pings, i.e. within 20–30 s (the server's default is 2 min × 2).
	DefaultPingInterval = 10 * time.Second
	DefaultMaxPingsOut  = 2
	// DefaultReconnectInterval is the wait between attempts; nats-server
	// adds up to the same again as jitter on connection failures, so a
	// region restarting does not see every vehicle at once.
	DefaultReconnectInterval = 2 * time.Second
	// DefaultSyncInterval is how often the local store fsyncs (docs/agent.md).
	DefaultSyncInterval = time.Second
	// DefaultBufferBytes bounds the local telemetry stream.
	DefaultBufferBytes = 1 << 30
)

// StreamName is the vehicle's local telemetry stream. The store-and-forward
// forwarder is its only consumer (work-queue retention: what is in the
// stream is exactly what has not reached the hub yet).
const StreamName = "TELEMETRY"

// Config is one vehicle leaf.
type Config struct {
	// Name is the server name, unique per vehicle on a hub (the hub replaces
	// an existing link with the same name and account): the JetStream domain.
	Name string
	// Domain is the local JetStream domain.
	Domain string
	// ClientHost/ClientPort is the listener for on-vehicle services
	// (127.0.0.1:4222; port -1 = random, for tests).
	ClientHost string
	ClientPort int
	// StoreDir holds the local JetStream store.
	StoreDir string
	// MaxStore caps JetStream's disk use (bytes); 0 = buffer + 64 MiB.
	MaxStore int64
	// SyncAlways fsyncs every write; otherwise every SyncInterval.
	SyncAlways   bool
	SyncInterval time.Duration

	// HubURLs are the region's leafnode URLs (tls://host:port).
	HubURLs []string
	// CredsFile is re-read by nats-server on every (re)connect.
	CredsFile string
	// CAFile verifies the hubs ("" = the system roots).
	CAFile string
	// TLSConfig overrides CAFile when set (tests).
	TLSConfig *tls.Config

	PingInterval      time.Duration
	MaxPingsOut       int
	ReconnectInterval time.Duration

	// Logger receives the server's notices, warnings and errors (nil = none).
	Logger *slog.Logger
	// Debug also logs the server's debug lines.
	Debug bool
}

func (c *Config) defaults() {
	if c.ClientHost == "" {
		c.ClientHost = "127.0.0.1"
	}
	if c.ClientPort == 0 {
		c.ClientPort = 4222
	}
	if c.PingInterval <= 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.MaxPingsOut <= 0 {
		c.MaxPingsOut = DefaultMaxPingsOut
	}
	if c.ReconnectInterval <= 0 {
		c.ReconnectInterval = DefaultReconnectInterval
	}
	if !c.SyncAlways && c.SyncInterval <= 0 {
		c.SyncInterval = DefaultSyncInterval
	}
}

// ServerOptions builds the nats-server options for c.
func ServerOptions(c Config) (*server.Options, error) {
	c.defaults()
	if c.Name == "" || c.Domain == "" || c.StoreDir == "" {
		return nil, errors.New("leaf: Name, Domain and StoreDir are required")
	}
	if len(c.HubURLs) == 0 || c.CredsFile == "" {
		return nil, errors.New("leaf: HubURLs and CredsFile are required")
	}
	urls := make([]*url.URL, 0, len(c.HubURLs))
	useTLS := false
	for _, s := range c.HubURLs {
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("leaf: hub URL %q: want tls://host:port", s)
		}
		if u.Scheme == "tls" {
			useTLS = true
		}
		urls = append(urls, u)
	}
	tc := c.TLSConfig
	if tc == nil && (useTLS || c.CAFile != "") {
		tc = &tls.Config{MinVersion: tls.VersionTLS12}
		if c.CAFile != "" {
			pem, err := os.ReadFile(c.CAFile)
			if err != nil {
				return nil, fmt.Errorf("leaf: CA bundle: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("leaf: CA bundle %s holds no PEM certificate", c.CAFile)
			}
			tc.RootCAs = pool
		}
	}
	maxStore := c.MaxStore
	if maxStore <= 0 {
		maxStore = DefaultBufferBytes + 64<<20
	}
	o := &server.Options{
		ServerName: c.Name,
		Host:       c.ClientHost,
		Port:       c.ClientPort,
		// The cluster name must differ from the hubs' (a region's name);
		// no cluster listener is started.
		Cluster:           server.ClusterOpts{Name: "vehicle-" + c.Name},
		NoSigs:            true,
		NoLog:             c.Logger == nil,
		Debug:             c.Debug,
		HTTPPort:          0,
		PingInterval:      c.PingInterval,
		MaxPingsOut:       c.MaxPingsOut,
		JetStream:         true,
		JetStreamDomain:   c.Domain,
		StoreDir:          c.StoreDir,
		JetStreamMaxStore: maxStore,
		// Telemetry is not kept in memory streams; keep JetStream's memory
		// budget small on an 8 GB Jetson shared with the autopilot stack.
		JetStreamMaxMemory: 16 << 20,
		SyncAlways:         c.SyncAlways,
		SyncInterval:       c.SyncInterval,
		LeafNode: server.LeafNodeOpts{
			ReconnectInterval: c.ReconnectInterval,
			Remotes: []*server.RemoteLeafOpts{{
				URLs:        urls,
				Credentials: c.CredsFile,
				TLS:         tc != nil,
				TLSConfig:   tc,
				// Off, as the hubs (ADR 0008): with the hub at "off" nothing
				// would be compressed anyway; saying so avoids the S2 buffers.
				Compression:      server.CompressionOpts{Mode: server.CompressionOff},
				FirstInfoTimeout: 10 * time.Second,
				DialTimeout:      10 * time.Second,
			}},
		},
	}
	return o, nil
}

// Leaf is a running vehicle server.
type Leaf struct {
	*server.Server
	cfg Config
}

// Start starts the server and waits until it accepts clients and JetStream
// is up. It does not wait for the hub link.
func Start(c Config) (*Leaf, error) {
	c.defaults()
	o, err := ServerOptions(c)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.StoreDir, 0o750); err != nil {
		return nil, fmt.Errorf("leaf: store dir: %w", err)
	}
	s, err := server.NewServer(o)
	if err != nil {
		return nil, fmt.Errorf("leaf: %w", err)
	}
	if c.Logger != nil {
		s.SetLoggerV2(&slogLogger{l: c.Logger.With("component", "nats")}, c.Debug, false, false)
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, errors.New("leaf: server not ready after 30 s (is the client port in use?)")
	}
	return &Leaf{Server: s, cfg: c}, nil
}

// Close shuts the server down and waits for it (flushes the store).
func (l *Leaf) Close() {
	l.Shutdown()
	l.WaitForShutdown()
}

// Connect opens an in-process client connection (no TCP).
func (l *Leaf) Connect(name string, opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{nats.InProcessServer(l.Server), nats.Name(name), nats.MaxReconnects(-1)}
	return nats.Connect("", append(base, opts...)...)
}

// Link is the state of the hub link.
type Link struct {
	Connected bool   `json:"connected"`
	Hub       string `json:"hub,omitempty"`  // the hub node's server name
	Addr      string `json:"addr,omitempty"` // ip:port of the hub
	RTT       string `json:"rtt,omitempty"`
	// InMsgs/OutMsgs count messages received from / sent to the hub on the
	// current link.
	InMsgs  int64 `json:"in_msgs"`
	OutMsgs int64 `json:"out_msgs"`
	// ID is the server's connection ID of the link (for Reconnect).
	ID uint64 `json:"-"`
}

// Link reports the hub link.
func (l *Leaf) Link() Link {
	lz, err := l.Leafz(nil)
	if err != nil || len(lz.Leafs) == 0 {
		return Link{}
	}
	li := lz.Leafs[0]
	return Link{Connected: true, Hub: li.Name, Addr: fmt.Sprintf("%s:%d", li.IP, li.Port), RTT: li.RTT,
		InMsgs: li.InMsgs, OutMsgs: li.OutMsgs, ID: li.ID}
}

// Reconnect closes the hub link; the server reconnects after its reconnect
// interval and re-reads the creds file (a renewed JWT takes effect).
func (l *Leaf) Reconnect() error {
	lk := l.Link()
	if !lk.Connected {
		return nil
	}
	return l.DisconnectClientByID(lk.ID)
}

// StreamConfig is the local telemetry stream of a vehicle whose subject tree
// is prefix (fleet.<env>.veh.<vid>): its state and events, on disk, at most
// maxBytes. When full, the oldest messages are dropped (DiscardOld): the
// freshest telemetry matters most after a long outage, and a publisher on
// the vehicle is never refused (docs/agent.md).
func StreamConfig(prefix string, maxBytes int64) jetstream.StreamConfig {
	if maxBytes <= 0 {
		maxBytes = DefaultBufferBytes
	}
	return jetstream.StreamConfig{
		Name:        StreamName,
		Description: "telemetry of " + prefix + " not yet forwarded to the hub",
		Subjects:    []string{prefix + ".state.>", prefix + ".evt.>"},
		Retention:   jetstream.WorkQueuePolicy,
		Discard:     jetstream.DiscardOld,
		MaxBytes:    maxBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    1,
		Duplicates:  time.Minute,
	}
}

// EnsureStream creates the local stream or updates its limits; it refuses a
// stream of another vehicle's subjects (an enrollment changed under a kept
// data directory) rather than silently mixing them.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	st, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return js.CreateStream(ctx, cfg)
	}
	if err != nil {
		return nil, err
	}
	old := st.CachedInfo().Config
	if strings.Join(old.Subjects, ",") != strings.Join(cfg.Subjects, ",") {
		return nil, fmt.Errorf("local stream %s holds %v, not %v: the data directory belongs to another enrollment (move it away)", cfg.Name, old.Subjects, cfg.Subjects)
	}
	if old.MaxBytes == cfg.MaxBytes && old.Discard == cfg.Discard {
		return st, nil
	}
	return js.UpdateStream(ctx, cfg)
}

// slogLogger adapts slog to nats-server's Logger.
type slogLogger struct{ l *slog.Logger }

func (s *slogLogger) Noticef(format string, v ...any) { s.l.Info(fmt.Sprintf(format, v...)) }
func (s *slogLogger) Warnf(format string, v ...any)   { s.l.Warn(fmt.Sprintf(format, v...)) }
func (s *slogLogger) Fatalf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s *slogLogger) Errorf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s *slogLogger) Debugf(format string, v ...any)  { s.l.Debug(fmt.Sprintf(format, v...)) }
func (s *slogLogger) Tracef(format string, v ...any)  { s.l.Debug(fmt.Sprintf(format, v...)) }
