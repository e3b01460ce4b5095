// Package hubnode builds and runs one embedded nats-server hub node in
// operator mode (DESIGN.md §1): the full directory account resolver with the
// system account preloaded, a client listener, a leafnode listener for
// vehicles with leaf interest isolated, JetStream with a deliberate sync
// policy, and tuned pings. `fleetplane dev` runs one in process; the hubs
// issue grows it into `fleetplane hub` with clustering and gateways.
//
// It imports nats-server, the jwt library and internal/natsauth only.
package hubnode

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/fleetplane/fleetplane/internal/natsauth"
)

// Config is one hub node.
type Config struct {
	Name       string // server name, unique in the region
	Region     string // cluster name
	Dir        string // state: jwt/ (resolver) and jetstream/
	ClientHost string
	ClientPort int // -1 = random
	LeafHost   string
	LeafPort   int         // -1 = random
	LeafTLS    *tls.Config // nil = plain (loopback dev only)
	// ClusterHost/ClusterPort is the route listener (ClusterPort 0 = no
	// cluster, -1 = random); Routes are the other nodes' route URLs
	// (nats-route://host:port). The cluster name is the region.
	ClusterHost string
	ClusterPort int
	Routes      []string
	Trust      natsauth.HubTrust
	// SyncInterval is how often JetStream fsyncs. The server's 2-minute
	// default can lose acknowledged writes on power loss; hubs default to
	// 1 s here (R3 replication covers a single node's loss in between).
	SyncInterval time.Duration
	// PingInterval and MaxPingsOut detect dead links (vehicles on LTE):
	// default 10 s × 3 = 30 s instead of the server's 2 min × 2.
	PingInterval time.Duration
	MaxPingsOut  int
	// Log sends the server's log to stderr.
	Log bool
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
		c.SyncInterval = time.Second
	}
	if c.PingInterval == 0 {
		c.PingInterval = 10 * time.Second
	}
	if c.MaxPingsOut == 0 {
		c.MaxPingsOut = 3
	}
	if c.Region == "" {
		c.Region = "local"
	}
	o := &server.Options{
		ServerName:       c.Name,
		Host:             c.ClientHost,
		Port:             c.ClientPort,
		NoSigs:           true,
		NoLog:            !c.Log,
		JetStream:        true,
		StoreDir:         filepath.Join(c.Dir, "jetstream"),
		SyncInterval:     c.SyncInterval,
		TrustedOperators: []*jwt.OperatorClaims{oc},
		SystemAccount:    c.Trust.SystemAccountPublicKey,
		AccountResolver:  res,
		PingInterval:     c.PingInterval,
		MaxPingsOut:      c.MaxPingsOut,
		LeafNode: server.LeafNodeOpts{
			Host:                    c.LeafHost,
			Port:                    c.LeafPort,
			TLSConfig:               c.LeafTLS,
			IsolateLeafnodeInterest: true,
		},
	}
	if c.LeafTLS != nil {
		o.LeafNode.TLSTimeout = 5
	}
	if c.ClusterPort != 0 {
		o.Cluster = server.ClusterOpts{Name: c.Region, Host: c.ClusterHost, Port: c.ClusterPort}
		for _, r := range c.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("hubnode: route %q: %w", r, err)
			}
			o.Routes = append(o.Routes, u)
		}
	}
	return o, nil
}

// Start starts a hub node and waits until it accepts connections.
func Start(c Config) (*server.Server, error) {
	o, err := Options(c)
	if err != nil {
		return nil, err
	}
	s, err := server.NewServer(o)
	if err != nil {
		return nil, fmt.Errorf("hubnode: %w", err)
	}
	if c.Log {
		s.ConfigureLogger()
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("hubnode: %s did not become ready", c.Name)
	}
	return s, nil
}
