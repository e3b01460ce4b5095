package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/api"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
)

func runServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleetplane serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := defaultConfig()
	if err := loadConfig(fs, args, getenv, &cfg); err != nil {
		return err
	}
	if cfg.DatabaseURL == "" {
		return &usageError{"no database: set --database-url, FLEETPLANE_DATABASE_URL(_FILE) or DATABASE_URL"}
	}
	logger := newLogger(&cfg, stderr)
	a, err := newApp(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer a.Close()
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.HTTPAddr, err)
	}
	return a.Serve(ctx, ln)
}

// app is the control plane wired together: the adapters are built here and
// nowhere else.
type app struct {
	cfg      Config
	logger   *slog.Logger
	pool     *pgxpool.Pool
	svc      *controlplane.Service
	handler  http.Handler
	registry *prometheus.Registry
}

func newApp(ctx context.Context, cfg Config, logger *slog.Logger) (*app, error) {
	if cfg.MigrateOnStart {
		logger.Info("applying migrations")
		if err := postgres.MigrateUp(cfg.DatabaseURL); err != nil {
			return nil, fmt.Errorf("migrate: %w", err)
		}
	}
	pool, err := postgres.Open(ctx, cfg.DatabaseURL, int32(cfg.DBMaxConns))
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", redactURL(cfg.DatabaseURL), err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		postgres.NewPoolCollector(pool),
	)
	svc := controlplane.NewService(postgres.NewStore(pool), controlplane.Config{
		Regions: cfg.domainRegions(),
	}, logger)
	h := api.New(svc, api.Options{
		Logger:              logger,
		Registerer:          reg,
		Gatherer:            reg,
		SignupRatePerMinute: cfg.SignupRatePerMinute,
		TrustProxyHeaders:   cfg.TrustProxyHeaders,
	})
	return &app{cfg: cfg, logger: logger, pool: pool, svc: svc, handler: h, registry: reg}, nil
}

func (a *app) Close() { a.pool.Close() }

// Serve serves HTTP on ln until ctx is done, then drains in-flight requests
// for up to the shutdown timeout.
func (a *app) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(a.logger.Handler(), slog.LevelWarn),
	}
	go a.pruneIdempotencyKeys(ctx)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	a.logger.Info("http server listening", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	a.logger.Info("shutting down", "timeout", a.cfg.ShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("http shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	a.logger.Info("http server stopped")
	return nil
}

// pruneIdempotencyKeys forgets old Idempotency-Keys hourly. Every replica
// runs it; the DELETE is idempotent, so that is harmless.
func (a *app) pruneIdempotencyKeys(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		n, err := a.svc.PruneIdempotencyKeys(ctx)
		if err != nil && ctx.Err() == nil {
			a.logger.Warn("pruning idempotency keys failed", "err", err)
		} else if n > 0 {
			a.logger.Info("pruned idempotency keys", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
