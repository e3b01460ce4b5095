package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/pgserver"
)

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
	stateDir := fs.String("state-dir", ".fleetplane", "where dev keeps its Postgres data and dev.env")
	cfg := defaultConfig()
	cfg.HTTPAddr = "127.0.0.1:8080"
	cfg.LogFormat = "text"
	cfg.Regions = []RegionConf{{Name: "local", DisplayName: "Local (dev)"}}
	if err := loadConfig(fs, args, getenv, &cfg); err != nil {
		return err
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
	cfg.MigrateOnStart = true

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
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (is another fleetplane dev running? use --http-addr)", cfg.HTTPAddr, err)
	}
	url := cfg.PublicURL
	if url == "" {
		url = "http://" + ln.Addr().String()
	}
	if err := writeDevEnv(envPath, url, key); err != nil {
		ln.Close()
		return err
	}
	fmt.Fprintf(stdout, `
Fleetplane is running.

  Portal / API   %s
  API key        %s
  Saved to       %s   (source it: set -a; . %s; set +a)

Try it:
  curl -s -H "Authorization: Bearer $FLEETPLANE_API_KEY" $FLEETPLANE_URL/v1/fleets
  curl -s $FLEETPLANE_URL/v1/openapi.json | head

Ctrl-C stops everything, including the local Postgres.
`, url, key, envPath, envPath)
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

func writeDevEnv(path, url, key string) error {
	content := fmt.Sprintf("# written by fleetplane dev\nFLEETPLANE_URL=%s\nFLEETPLANE_API_KEY=%s\n", url, key)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
