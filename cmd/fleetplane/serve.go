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
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/api"
	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/controlplane/jobs"
	"github.com/fleetplane/fleetplane/controlplane/mail"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/controlplane/portal"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/controlplane/twin"
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
	// The portal mails sign-in, reset and invitation links: written to the
	// log they are as good as passwords to whoever reads it.
	if cfg.SMTPAddr == "" && !cfg.MailToLog {
		return &usageError{"no smtp_addr: the portal's e-mails (confirmation, reset, invitations) need an SMTP server; " +
			"set mail_to_log: true only where the log is as private as the mailboxes (development)"}
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
	issuer   *natsissuer.Issuer
	hubs     *hubs.Hubs // nil when no hub nodes are configured
	twin     *twin.Twin
	jobs     *jobs.Jobs
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
	a := &app{cfg: cfg, logger: logger, pool: pool}
	if err := a.wire(ctx); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// wire builds the adapters over the open pool.
func (a *app) wire(ctx context.Context) error {
	cfg := a.cfg
	keys, err := loadKeyring(&cfg)
	if err != nil {
		return err
	}
	store := postgres.NewStore(a.pool)
	op, err := store.FindOperator(ctx)
	if controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
		return errors.New("no NATS operator yet: run `fleetplane admin operator init` once")
	} else if err != nil {
		return fmt.Errorf("loading the NATS operator: %w", err)
	}
	if a.issuer, err = natsissuer.New(keys, op); err != nil {
		return err
	}
	a.registry = prometheus.NewRegistry()
	a.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		postgres.NewPoolCollector(a.pool),
	)
	// Regions live in Postgres; the configured ones are upserted first.
	// Hub connections are made here, so a new region needs a restart.
	regions, hubNodes, err := loadRegions(ctx, store, cfg)
	if err != nil {
		return err
	}
	scfg := controlplane.Config{
		Regions:              regions,
		Issuer:               a.issuer,
		VehicleCredentialTTL: cfg.VehicleCredentialTTL,
		MaxGrantTTL:          cfg.MaxGrantTTL,
		Plans:                cfg.domainPlans(),
		PlanGrace:            cfg.PlanGrace,
		PublicURL:            cfg.PublicURL,
	}
	if scfg.Billing, err = cfg.billing(a.logger); err != nil {
		return err
	}
	if scfg.Mailer, err = cfg.mailer(a.logger); err != nil {
		return err
	}
	if scfg.Billing == nil {
		a.logger.Info("billing is off: tenants keep their plan (change it with `fleetplane admin tenant plan`)")
	}
	if len(hubNodes) > 0 {
		// The control plane's system user lives a day and is minted
		// afresh on every (re)connect: no system user seed is stored.
		if a.hubs, err = hubs.New(hubNodes, a.issuer.SystemUserCreds(24*time.Hour), hubs.Options{Logger: a.logger}); err != nil {
			return err
		}
		a.registry.MustRegister(a.hubs)
		scfg.Hubs = a.hubs
		scfg.Presence = a.hubs
		scfg.HubStats = a.hubs
	} else {
		a.logger.Warn("no hub nodes configured: account JWTs are not pushed anywhere")
	}
	// Tenant streams, digital-twin reads, live updates and commands, as
	// each tenant's own least-privilege service user.
	a.twin = twin.New(twin.Options{Logger: a.logger})
	scfg.Telemetry = a.twin
	a.svc = controlplane.NewService(store, scfg, a.logger)
	if a.jobs, err = jobs.New(a.pool, a.svc, a.logger, jobs.Options{Workers: cfg.JobWorkers}); err != nil {
		return err
	}
	if m := a.jobs.ReconcileMetrics(); m != nil {
		a.registry.MustRegister(m)
	}
	if m := a.jobs.UsageMetrics(); m != nil {
		a.registry.MustRegister(m)
	}
	apiHandler := api.New(a.svc, api.Options{
		Logger:               a.logger,
		Registerer:           a.registry,
		Gatherer:             a.registry,
		SignupRatePerMinute:  cfg.SignupRatePerMinute,
		EnrollRatePerMinute:  cfg.EnrollRatePerMinute,
		WebhookRatePerMinute: cfg.WebhookRatePerMinute,
		TrustProxyHeaders:    cfg.TrustProxyHeaders,
		PublicURL:            cfg.PublicURL,
		Agents:               cfg.agentDist(), // /downloads/ for /install.sh
	})
	a.handler, err = portal.New(a.svc, portal.Options{
		API:       apiHandler, // the API's paths go to the API, the rest to the portal
		Logger:    a.logger.With("component", "portal"),
		PublicURL: cfg.PublicURL,
		// Plain-http development only: browsers drop Secure cookies there.
		InsecureCookies:     strings.HasPrefix(cfg.PublicURL, "http://"),
		TrustProxyHeaders:   cfg.TrustProxyHeaders,
		SignupRatePerMinute: cfg.SignupRatePerMinute,
	})
	return err
}

func (a *app) Close() {
	if a.twin != nil {
		a.twin.Close()
	}
	if a.hubs != nil {
		a.hubs.Close()
	}
	if a.issuer != nil {
		a.issuer.Wipe()
	}
	a.pool.Close()
}

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
	if a.hubs != nil {
		// Every replica follows presence: events are shared out through a
		// queue group, and reconciliation is idempotent.
		go func() {
			if err := a.svc.RunPresence(ctx); err != nil && ctx.Err() == nil {
				a.logger.Error("vehicle presence stopped", "err", err)
			}
		}()
	}
	if err := a.jobs.Start(ctx); err != nil {
		return fmt.Errorf("job workers: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
		defer cancel()
		if err := a.jobs.Stop(sctx); err != nil {
			a.logger.Warn("stopping job workers", "err", err)
		}
	}()
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

// pruneIdempotencyKeys forgets old Idempotency-Keys and expired agent
// nonces hourly. Every replica
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
		if n, err := a.svc.PruneAgentNonces(ctx); err != nil && ctx.Err() == nil {
			a.logger.Warn("pruning agent nonces failed", "err", err)
		} else if n > 0 {
			a.logger.Info("pruned expired agent nonces", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// mailer is the portal's e-mail sender: SMTP when configured, else the
// log (development: the confirmation and reset links appear in the log).
func (c *Config) mailer(logger *slog.Logger) (controlplane.Mailer, error) {
	if c.SMTPAddr == "" {
		if c.MailToLog {
			logger.Warn("mail_to_log: the portal's e-mails, with their sign-in links, are written to the log")
		}
		return mail.NewLogMailer(logger.With("component", "mail")), nil
	}
	if c.SMTPFrom == "" {
		return nil, errors.New("smtp_from is required with smtp_addr")
	}
	return mail.NewSMTPMailer(mail.SMTPConfig{Addr: c.SMTPAddr, From: c.SMTPFrom,
		Username: c.SMTPUsername, Password: c.SMTPPassword, Insecure: c.SMTPInsecure})
}
