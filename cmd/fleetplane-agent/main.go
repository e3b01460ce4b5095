// Command fleetplane-agent is the Fleetplane edge agent that runs on each
// vehicle: an embedded NATS leaf node with local store-and-forward and a
// MAVLink gateway (DESIGN §6). It is built as one static binary
// (CGO_ENABLED=0) for linux/arm64 and linux/amd64. It never imports the
// control plane; shared code lives in internal/.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/fleetplane/fleetplane/edge/agent"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// simCommand is `fleetplane-agent sim`, set by sim.go when it is built in.
var simCommand func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error

const usage = `fleetplane-agent — the Fleetplane vehicle agent

Usage:
  fleetplane-agent enroll --server URL --token T [--vehicle-id ID] [--dir DIR] [--data-dir DIR] [--force]
                          enroll this vehicle (the token may also come from FLEETPLANE_ENROLL_TOKEN)
  fleetplane-agent run [--config FILE | --dir DIR] [--data-dir DIR] [--log-level L]
                          run the agent (leaf node, local store, renewal, /healthz /metrics /status)
  fleetplane-agent status [--config FILE | --http ADDR] [--json]
                          ask the running agent for link, hub, backlog, heartbeat and rates
  fleetplane-agent sim    a simulated MAVLink autopilot
  fleetplane-agent version

The config file defaults to $FLEETPLANE_AGENT_CONFIG or /etc/fleetplane-agent/agent.yaml.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fleetplane-agent:", err)
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("no command given")
	}
	switch args[0] {
	case "version", "--version":
		fmt.Fprintf(stdout, "fleetplane-agent %s %s/%s\n", version, runtime.GOOS, runtime.GOARCH)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	case "enroll":
		return enrollCmd(ctx, args[1:], getenv, stdout, stderr)
	case "run":
		return runCmd(ctx, args[1:], getenv, stderr)
	case "status":
		return statusCmd(ctx, args[1:], getenv, stdout, stderr)
	case "sim":
		if simCommand == nil {
			return errors.New("this build has no simulator")
		}
		return simCommand(ctx, args[1:], getenv, stdout, stderr)
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func defaultConfigPath(getenv func(string) string) string {
	if p := getenv("FLEETPLANE_AGENT_CONFIG"); p != "" {
		return p
	}
	return filepath.Join(agent.DefaultDir, agent.ConfigName)
}

func enrollCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("enroll", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o agent.EnrollOptions
	fs.StringVar(&o.Server, "server", getenv("FLEETPLANE_SERVER"), "the control plane's URL")
	fs.StringVar(&o.Token, "token", getenv("FLEETPLANE_ENROLL_TOKEN"), "the enrollment token (fpe_...)")
	fs.StringVar(&o.VehicleID, "vehicle-id", "", "the vehicle ID (when the token does not fix one; generated when absent)")
	fs.StringVar(&o.Dir, "dir", agent.DefaultDir, "config directory")
	fs.StringVar(&o.DataDir, "data-dir", agent.DefaultDataDir, "data directory (local store)")
	fs.BoolVar(&o.Force, "force", false, "replace an existing enrollment (a new key; the old one is revoked)")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the control plane")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.Server == "" || o.Token == "" {
		return errors.New("enroll: --server and --token are required")
	}
	o.Version = version
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	cfg, creds, err := agent.Enroll(ctx, o)
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	fmt.Fprintf(stdout, "enrolled as vehicle %s of fleet %s (region %s); config %s; credentials expire %s\n",
		creds.Vehicle.VehicleID, creds.Vehicle.Fleet, creds.Region, cfg.Path(), creds.ExpiresAt.Format(time.RFC3339))
	return nil
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

func runCmd(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", defaultConfigPath(getenv), "agent config file")
	dir := fs.String("dir", "", "config directory (the config is DIR/agent.yaml; overrides --config)")
	dataDir := fs.String("data-dir", "", "data directory (overrides data_dir of the config)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	if *dir != "" {
		*path = filepath.Join(*dir, agent.ConfigName)
	}
	cfg, err := agent.LoadConfig(*path)
	if err != nil {
		return err
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	return agent.Run(ctx, agent.Options{Config: cfg, Version: version, Logger: log, Forward: agent.StoreAndForward})
}

func statusCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", defaultConfigPath(getenv), "agent config file (for its http address)")
	addr := fs.String("http", "", "the agent's HTTP address (default: from the config)")
	dir := fs.String("dir", "", "config directory (overrides --config)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir != "" {
		*path = filepath.Join(*dir, agent.ConfigName)
	}
	if *addr == "" {
		cfg, err := agent.LoadConfig(*path)
		if err != nil {
			return err
		}
		if cfg.HTTP == "" || cfg.HTTP == "off" {
			return fmt.Errorf("%s has no http listener (http: off): status needs it", *path)
		}
		*addr = cfg.HTTP
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := agent.FetchStatus(ctx, strings.TrimPrefix(*addr, "http://"))
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	s.WriteText(stdout)
	return nil
}
