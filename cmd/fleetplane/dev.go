package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/agentdist"
	"github.com/fleetplane/fleetplane/internal/devca"
	"github.com/fleetplane/fleetplane/internal/hubnode"
	"github.com/fleetplane/fleetplane/internal/pgserver"
	"github.com/fleetplane/fleetplane/internal/seal"
)

// devMasterKey reads the dev master key from path, creating it (0600) on
// first use. Production deployments provide FLEETPLANE_MASTER_KEY(_FILE).
func devMasterKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !os.IsNotExist(err) {
		return "", fmt.Errorf("dev master key: %w", err)
	}
	key := "dev:" + seal.GenerateKey()
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("dev master key: %w", err)
	}
	return key, nil
}

// devOperator returns the installation's operator, creating it on first run.
func devOperator(ctx context.Context, cfg *Config, logger *slog.Logger) (*controlplane.Operator, error) {
	keys, err := loadKeyring(cfg)
	if err != nil {
		return nil, err
	}
	pool, err := postgres.Open(ctx, cfg.DatabaseURL, 2)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	store := postgres.NewStore(pool)
	op, err := store.FindOperator(ctx)
	if controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
		if op, err = initOperator(ctx, store, keys, "fleetplane-dev"); err == nil {
			logger.Info("NATS operator created", "operator", op.PublicKey)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("NATS operator: %w", err)
	}
	return op, nil
}

// devHub is the embedded hub of `fleetplane dev`: one node, or a cluster
// of several on loopback, with a TLS leafnode listener whose certificate a
// development CA under the state directory signed.
type devHub struct {
	nodes  []*server.Server
	ca     *devca.CA
	client []string // client URLs, node order
	leaf   []string // leafnode URLs (tls://)
}

// startDevHub runs n hub nodes (operator mode, full resolver, JetStream)
// with their state under stateDir: node 1 in hub/ (where a single dev hub
// has always kept it, so pushed accounts survive), node i in hub-i/. Node 1
// listens on clientAddr/leafAddr, the others on free loopback ports. The
// leafnode listeners serve TLS 1.3 with a certificate from the dev CA in
// stateDir/ca (created once, then reused), for 127.0.0.1, ::1 and localhost.
func startDevHub(stateDir string, n int, clientAddr, leafAddr string, op *controlplane.Operator, logger *slog.Logger) (*devHub, error) {
	ch, cp, err := splitAddr(clientAddr)
	if err != nil {
		return nil, fmt.Errorf("--hub-client-addr: %w", err)
	}
	lh, lp, err := splitAddr(leafAddr)
	if err != nil {
		return nil, fmt.Errorf("--hub-leaf-addr: %w", err)
	}
	ca, err := devca.Open(filepath.Join(stateDir, "ca"))
	if err != nil {
		return nil, err
	}
	// A leaf listener beyond loopback (a real vehicle on the LAN) needs its
	// name in the certificate too; the CA stays, so enrolled vehicles keep
	// trusting it.
	hosts := slices.Clone(devca.LocalHosts)
	switch {
	case lh == "" || lh == "0.0.0.0" || lh == "::":
		if name, err := os.Hostname(); err == nil && name != "" {
			hosts = append(hosts, name)
		}
	case !slices.Contains(hosts, lh):
		hosts = append(hosts, lh)
	}
	cert, err := ca.Issue("hub", hosts)
	if err != nil {
		return nil, err
	}
	leafTLS, err := hubnode.TLSFiles{CertFile: cert.CertFile, KeyFile: cert.KeyFile}.TLSConfig()
	if err != nil {
		return nil, err
	}
	var routes []string
	var routePorts []int
	if n > 1 {
		// Every node of a JetStream cluster needs the route list at start.
		if routePorts, err = freeLoopbackPorts(n); err != nil {
			return nil, err
		}
		for _, p := range routePorts {
			routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
		}
	}
	h := &devHub{ca: ca}
	for i := range n {
		c := hubnode.Config{Name: fmt.Sprintf("hub-local-%d", i+1), Region: "local", Dir: filepath.Join(stateDir, "hub"),
			ClientHost: ch, ClientPort: cp, LeafHost: lh, LeafPort: lp, LeafTLS: leafTLS, Trust: natsissuer.HubTrust(op)}
		if i > 0 {
			c.Dir = filepath.Join(stateDir, fmt.Sprintf("hub-%d", i+1))
			c.ClientHost, c.ClientPort, c.LeafHost, c.LeafPort = "127.0.0.1", server.RANDOM_PORT, "127.0.0.1", server.RANDOM_PORT
		}
		if n > 1 {
			// A single node's standalone JetStream state stays apart from
			// the cluster's: switching --hub-nodes back and forth keeps both.
			c.StoreDir = filepath.Join(c.Dir, "jetstream-cluster")
			c.ClusterHost, c.ClusterPort, c.Routes = "127.0.0.1", routePorts[i], routes
		}
		s, err := hubnode.Start(c)
		if err != nil {
			h.stop()
			return nil, fmt.Errorf("embedded hub: %w (is a nats-server already listening? use --hub-client-addr/--hub-leaf-addr)", err)
		}
		h.nodes = append(h.nodes, s)
		client, leaf, err := hubURLs(s)
		if err != nil {
			h.stop()
			return nil, err
		}
		h.client, h.leaf = append(h.client, client), append(h.leaf, leaf)
		logger.Info("embedded hub node running", "name", s.Name(), "dir", c.Dir, "client", client, "leafnodes", leaf)
	}
	return h, nil
}

func (h *devHub) stop() {
	for i := len(h.nodes) - 1; i >= 0; i-- {
		hubnode.Stop(h.nodes[i], false)
	}
}

// region fills the dev region with the hub's URLs, nodes and CA bundle
// (handed to vehicles at enrollment).
func (h *devHub) region(r *RegionConf) {
	r.ClientURLs, r.LeafURLs, r.Nodes = h.client, h.leaf, nil
	for i, s := range h.nodes {
		r.Nodes = append(r.Nodes, HubNodeConf{Name: s.Name(), URL: h.client[i]})
	}
	r.CAFile, r.caBundle = h.ca.CAFile(), h.ca.Bundle()
}

// freeLoopbackPorts returns n ports that were free on 127.0.0.1 a moment ago.
func freeLoopbackPorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// splitAddr splits host:port; port 0 means any free port (nats-server's -1).
func splitAddr(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 0 || n > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if n == 0 {
		n = server.RANDOM_PORT
	}
	return h, n, nil
}

// hubURLs returns the client and leafnode URLs a running hub listens on
// (tls:// for a TLS leafnode listener).
func hubURLs(s *server.Server) (client, leaf string, err error) {
	v, err := s.Varz(nil)
	if err != nil {
		return "", "", err
	}
	host := func(h string) string {
		if h == "" || h == "0.0.0.0" || h == "::" {
			return "127.0.0.1"
		}
		return h
	}
	scheme := "nats"
	if v.LeafNode.TLSRequired {
		scheme = "tls"
	}
	return fmt.Sprintf("nats://%s", net.JoinHostPort(host(v.Host), strconv.Itoa(v.Port))),
		fmt.Sprintf("%s://%s", scheme, net.JoinHostPort(host(v.LeafNode.Host), strconv.Itoa(v.LeafNode.Port))), nil
}

const (
	demoOrg   = "Demo Fleet Co"
	demoEmail = "demo@fleetplane.localhost"
)

// runDev runs the whole system in one process for local development: a
// Postgres it starts and keeps under the state directory (or DATABASE_URL),
// migrations, a seeded demo tenant and the HTTP server on loopback.
func runDev(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleetplane dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", ".fleetplane", "where dev keeps its Postgres data, hub state, master key and dev.env")
	hubClientAddr := fs.String("hub-client-addr", "127.0.0.1:4222", "the embedded hub's client listener (nats CLI, grants)")
	hubLeafAddr := fs.String("hub-leaf-addr", "127.0.0.1:7422", "the embedded hub's leafnode listener (vehicles, TLS with the dev CA)")
	hubNodes := fs.Int("hub-nodes", 1, "embedded hub nodes: 1, or 3 for a JetStream R3 cluster (the first listens on --hub-*-addr, the others on free ports)")
	billingMode := fs.String("billing", "off", "billing: off (free plan only) or stripe-mock (Stripe's mock server; simulate webhooks with `fleetplane admin billing send-event`)")
	simVehicles := fs.Int("sim-vehicles", 0, "simulated vehicles to enroll and run in the demo fleet (the real agent code with a simulated autopilot each)")
	cfg := defaultConfig()
	cfg.HTTPAddr = "127.0.0.1:8080"
	cfg.LogFormat = "text"
	cfg.Regions = []RegionConf{{Name: "local", DisplayName: "Local (dev)"}}
	cfg.MailToLog = true // links of portal signups appear in the log
	if err := loadConfig(fs, args, getenv, &cfg); err != nil {
		return err
	}
	if *hubNodes < 1 || *hubNodes > 7 {
		return &usageError{fmt.Sprintf("--hub-nodes must be 1-7, got %d", *hubNodes)}
	}
	logger := newLogger(&cfg, stderr)
	if err := os.MkdirAll(*stateDir, 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}

	if cfg.DatabaseURL == "" {
		logger.Info("starting local Postgres", "dir", filepath.Join(*stateDir, "pg"))
		pg, err := pgserver.Start(ctx, pgserver.Options{
			Dir:  filepath.Join(*stateDir, "pg"),
			Logf: func(format string, args ...any) { logger.Debug(fmt.Sprintf(format, args...)) },
		})
		if err != nil {
			return fmt.Errorf("local Postgres: %w", err)
		}
		defer func() {
			logger.Info("stopping local Postgres")
			if err := pg.Stop(); err != nil {
				logger.Error("stopping local Postgres", "err", err)
			}
		}()
		if err := pg.CreateDatabase(ctx, "fleetplane"); err != nil {
			return fmt.Errorf("local Postgres: %w", err)
		}
		cfg.DatabaseURL = pg.URL("fleetplane")
	}
	if err := postgres.MigrateUp(cfg.DatabaseURL); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if cfg.MasterKey == "" {
		var err error
		if cfg.MasterKey, err = devMasterKey(filepath.Join(*stateDir, "master.key")); err != nil {
			return err
		}
	}
	op, err := devOperator(ctx, &cfg, logger)
	if err != nil {
		return err
	}
	hub, err := startDevHub(*stateDir, *hubNodes, *hubClientAddr, *hubLeafAddr, op, logger)
	if err != nil {
		return err
	}
	defer func() {
		logger.Info("stopping the embedded hub")
		hub.stop()
	}()
	hub.region(&cfg.Regions[0])
	// JetStream reserves each stream's max bytes on the hub: the scale
	// plan's 100 GiB account (80 GiB history) does not fit a laptop's
	// hub, so dev gives scale tenants 4 GiB unless configured.
	if pc := cfg.Plans[controlplane.PlanScale]; pc.JetStreamDisk == nil {
		disk := int64(4 << 30)
		pc.JetStreamDisk = &disk
		if cfg.Plans == nil {
			cfg.Plans = map[string]PlanConf{}
		}
		cfg.Plans[controlplane.PlanScale] = pc
	}
	// Listen first: links in e-mails and Stripe's return URLs need the
	// public URL, and with --http-addr :0 only the listener knows the port.
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (is another fleetplane dev running? use --http-addr)", cfg.HTTPAddr, err)
	}
	defer ln.Close() // Serve closes it too; a second Close is harmless
	if cfg.PublicURL == "" {
		cfg.PublicURL = "http://" + ln.Addr().String()
	}
	stopBilling, err := devBilling(ctx, &cfg, *billingMode, *stateDir, logger)
	if err != nil {
		return err
	}
	defer stopBilling()
	// /downloads/ for the install one-liner: --agent-dir, else built here.
	cfg.agents = agentdist.ForDev(ctx, agentdist.DevOptions{AgentDir: cfg.AgentDir, StateDir: *stateDir, Logger: logger})

	a, err := newApp(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer a.Close()

	envPath := filepath.Join(*stateDir, "dev.env")
	key, err := seedDemo(ctx, a, envPath, logger)
	if err != nil {
		return fmt.Errorf("seed demo tenant: %w", err)
	}
	demoPassword, err := demoPortalPassword(ctx, a, envPath)
	if err != nil {
		return fmt.Errorf("demo portal password: %w", err)
	}
	url := cfg.PublicURL
	if err := writeDevEnv(envPath, url, key); err != nil {
		return err
	}
	if err := appendDevEnv(envPath, map[string]string{"FLEETPLANE_DEMO_EMAIL": demoEmail, "FLEETPLANE_DEMO_PASSWORD": demoPassword}); err != nil {
		return err
	}
	if cfg.billingOn() {
		// What `fleetplane admin billing send-event` needs, for a shell
		// that sourced dev.env.
		if err := appendDevEnv(envPath, map[string]string{"FLEETPLANE_PUBLIC_URL": cfg.PublicURL,
			"FLEETPLANE_STRIPE_WEBHOOK_SECRET": cfg.StripeWebhookSecret, "FLEETPLANE_DATABASE_URL": cfg.DatabaseURL}); err != nil {
			ln.Close()
			return err
		}
	}
	fmt.Fprintf(stdout, `
Fleetplane is running.

  Portal / API   %s
  Portal login   %s / %s
  API key        %s
  Saved to       %s   (source it: set -a; . %s; set +a)
  Hub            %s (clients, nats CLI)   %s (vehicles, leafnodes)
  Hub CA         %s   (vehicles get it at enrollment)

Try it:
  curl -s -H "Authorization: Bearer $FLEETPLANE_API_KEY" $FLEETPLANE_URL/v1/fleets
  curl -s $FLEETPLANE_URL/v1/openapi.json | head

Ctrl-C stops everything, including the local Postgres.
`, url, demoEmail, demoPassword, key, envPath, envPath, strings.Join(hub.client, ", "), strings.Join(hub.leaf, ", "), hub.ca.CAFile())
	if *simVehicles > 0 {
		if *simVehicles > controlplane.FreeVehicleLimit {
			ln.Close()
			return &usageError{fmt.Sprintf("--sim-vehicles: at most %d (the demo tenant is on the free plan)", controlplane.FreeVehicleLimit)}
		}
		// The agents enroll through this server, so they start once it
		// serves; they stop before it does.
		simCtx, simCancel := context.WithCancel(ctx)
		simDone := make(chan func(), 1)
		go func() {
			stop, err := startSimVehicles(simCtx, a, url, key, *stateDir, *simVehicles, logger)
			if err != nil {
				if simCtx.Err() == nil {
					logger.Error("simulated vehicles did not start", "err", err)
				}
				stop = func() {}
			} else {
				fmt.Fprintf(stdout, "  %d simulated vehicles are flying in fleet \"demo\": curl -s -H \"Authorization: Bearer $FLEETPLANE_API_KEY\" $FLEETPLANE_URL/v1/fleets/demo/state\n", *simVehicles)
			}
			simDone <- stop
		}()
		defer func() {
			simCancel()
			(<-simDone)()
		}()
	}
	return a.Serve(ctx, ln)
}

// seedDemo makes sure the demo tenant and its "demo" fleet exist and returns
// an API key for it: the one saved in dev.env while it still works, a new
// one otherwise.
func seedDemo(ctx context.Context, a *app, envPath string, logger *slog.Logger) (string, error) {
	key := readDevEnv(envPath)["FLEETPLANE_API_KEY"]
	var p *controlplane.Principal
	if key != "" {
		var err error
		if p, err = a.svc.Authenticate(ctx, key); err != nil {
			logger.Info("saved demo API key no longer works; issuing a new one", "reason", controlplane.ErrorMessage(err))
			key = ""
		}
	}
	if key == "" {
		res, err := a.svc.AdminCreateTenant(ctx, demoOrg, demoEmail, controlplane.PlanFree)
		switch controlplane.ErrorCode(err) {
		case "":
			key = res.APIKey.Secret
			logger.Info("demo tenant created", "tenant", res.Tenant.ID)
		case controlplane.ECONFLICT:
			k, err := a.svc.AdminCreateAPIKey(ctx, demoEmail, "dev")
			if err != nil {
				return "", err
			}
			key = k.Secret
		default:
			return "", err
		}
		if p, err = a.svc.Authenticate(ctx, key); err != nil {
			return "", err
		}
	}
	pctx := controlplane.NewContextWithPrincipal(ctx, p)
	_, err := a.svc.CreateFleet(pctx, controlplane.FleetCreate{Slug: "demo", Name: "Demo fleet", Environment: "dev"})
	if err != nil && controlplane.ErrorCode(err) != controlplane.ECONFLICT {
		return "", err
	}
	return key, nil
}

// demoPortalPassword gives the demo owner a portal password: the one saved
// in dev.env, else a new random one (set through the Service, so the
// address counts as confirmed).
func demoPortalPassword(ctx context.Context, a *app, envPath string) (string, error) {
	if pw := readDevEnv(envPath)["FLEETPLANE_DEMO_PASSWORD"]; pw != "" {
		return pw, nil
	}
	raw := make([]byte, 12)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	pw := "demo-" + base64.RawURLEncoding.EncodeToString(raw)
	return pw, a.svc.AdminSetPassword(ctx, demoEmail, pw)
}

func readDevEnv(path string) map[string]string {
	out := map[string]string{}
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if ok && !strings.HasPrefix(k, "#") {
			out[k] = strings.Trim(v, `"'`)
		}
	}
	return out
}

// appendDevEnv adds variables to dev.env.
func appendDevEnv(path string, vars map[string]string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		fmt.Fprintf(f, "%s=%s\n", k, vars[k])
	}
	return f.Close()
}

func writeDevEnv(path, url, key string) error {
	content := fmt.Sprintf("# written by fleetplane dev\nFLEETPLANE_URL=%s\nFLEETPLANE_API_KEY=%s\n", url, key)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
