// Package jobs runs Fleetplane's durable background jobs on River
// (riverqueue.com), in the same Postgres as the domain, so a job can be
// inserted in the transaction of the change it follows (an outbox).
//
// Jobs: controlplane.AccountPushJob (below) and the periodic
// controlplane.ReconcileAccountsJob (reconcile.go), MeterUsageJob and
// ReportUsageJob (usage.go), CleanupSessionsJob (sessions.go). The push
// worker calls the domain's RunAccountPush and returns its error, so River
// retries a failed push with its default backoff (attempt⁴ seconds plus
// jitter: ~1 s, 16 s, 81 s, ...; 25 attempts) unless Options.RetryPolicy
// says otherwise.
//
// River's tables come from migrations 000002/000003 (River's own SQL).
//
// It may import controlplane, River (river, riverpgxv5), pgx and the
// Prometheus client; never another adapter.
package jobs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// AccountPushRunner runs an account push; controlplane.Service implements it.
type AccountPushRunner interface {
	RunAccountPush(ctx context.Context, job controlplane.AccountPushJob) error
}

// Defaults of Options.
//
// River learns of a new job through LISTEN/NOTIFY at insert and then
// fetches at most every FetchCooldown, so a fresh push starts within
// ~DefaultFetchCooldown. FetchPollInterval is the fallback when a
// notification is missed and the delay before a short retry (one due
// sooner than River's 5 s scheduler interval, which River makes available
// at once but does not announce) is picked up. A poll is one indexed query;
// 200 ms costs five queries a second per process.
const (
	DefaultWorkers           = 10
	DefaultFetchCooldown     = 20 * time.Millisecond  // River: 100 ms
	DefaultFetchPollInterval = 200 * time.Millisecond // River: 1 s
	DefaultJobTimeout        = time.Minute            // River's default
)

// Options tune Jobs; the zero value gives the defaults above.
type Options struct {
	Workers           int           // concurrent jobs in this process
	FetchCooldown     time.Duration // minimum pause between fetches
	FetchPollInterval time.Duration // fallback poll; ≥ FetchCooldown
	JobTimeout        time.Duration // a push attempt's context deadline
	// RetryPolicy replaces River's default backoff (tests use a fast one).
	RetryPolicy river.ClientRetryPolicy
	// MaxAttempts overrides River's 25 attempts.
	MaxAttempts int
	// ReconcileInterval is how often the reconcile_accounts job runs when
	// the runner also implements ReconcileRunner (reconcile.go); default
	// DefaultReconcileInterval, negative = never.
	ReconcileInterval time.Duration
	// MeterInterval and ReportInterval are how often the meter_usage and
	// report_usage jobs run when the runner also implements UsageRunner
	// (usage.go); defaults DefaultMeterInterval and DefaultReportInterval,
	// negative = never.
	MeterInterval  time.Duration
	ReportInterval time.Duration
	// SessionCleanupInterval is how often the cleanup_sessions job runs
	// when the runner also implements SessionCleaner (sessions.go);
	// default DefaultSessionCleanupInterval, negative = never.
	SessionCleanupInterval time.Duration
}

// Jobs is the River client with Fleetplane's workers registered.
type Jobs struct {
	client    *river.Client[pgx.Tx]
	reconcile *ReconcileMetrics // nil when the runner does not reconcile
	usage     *UsageMetrics     // nil when the runner does not meter usage
}

// New builds the client; Start begins working jobs.
func New(pool *pgxpool.Pool, runner AccountPushRunner, logger *slog.Logger, opts Options) (*Jobs, error) {
	if pool == nil || runner == nil {
		return nil, errors.New("jobs: a pool and a runner are required")
	}
	if logger == nil {
		logger = slog.Default()
	}
	workers := river.NewWorkers()
	if err := river.AddWorkerSafely(workers, &accountPushWorker{runner: runner}); err != nil {
		return nil, fmt.Errorf("jobs: register account push worker: %w", err)
	}
	periodic, reconcile, err := addReconcile(workers, runner, opts)
	if err != nil {
		return nil, err
	}
	usagePeriodic, usage, err := addUsage(workers, runner, opts)
	if err != nil {
		return nil, err
	}
	periodic = append(periodic, usagePeriodic...)
	sessionPeriodic, err := addSessionCleanup(workers, runner, opts)
	if err != nil {
		return nil, err
	}
	periodic = append(periodic, sessionPeriodic...)
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Queues: map[string]river.QueueConfig{
			river.QueueDefault: {MaxWorkers: cmp.Or(opts.Workers, DefaultWorkers)},
		},
		Workers:           workers,
		PeriodicJobs:      periodic,
		FetchCooldown:     cmp.Or(opts.FetchCooldown, DefaultFetchCooldown),
		FetchPollInterval: cmp.Or(opts.FetchPollInterval, DefaultFetchPollInterval),
		JobTimeout:        cmp.Or(opts.JobTimeout, DefaultJobTimeout),
		RetryPolicy:       opts.RetryPolicy,
		MaxAttempts:       opts.MaxAttempts,
		Logger:            logger.With("component", "river"),
	})
	if err != nil {
		return nil, fmt.Errorf("jobs: river client: %w", err)
	}
	return &Jobs{client: client, reconcile: reconcile, usage: usage}, nil
}

// Start begins fetching and working jobs; it returns once started.
func (j *Jobs) Start(ctx context.Context) error {
	if err := j.client.Start(ctx); err != nil {
		return fmt.Errorf("jobs: start: %w", err)
	}
	return nil
}

// Stop stops fetching and waits for running jobs until ctx ends; then it
// cancels them (they are retried later, by this or another process).
func (j *Jobs) Stop(ctx context.Context) error {
	err := j.client.Stop(ctx)
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err2 := j.client.StopAndCancel(cctx); err2 != nil {
			return fmt.Errorf("jobs: stop: %w (then cancel: %v)", err, err2)
		}
		return nil
	}
	return fmt.Errorf("jobs: stop: %w", err)
}

// Client is the River client, for inserting jobs and tests.
func (j *Jobs) Client() *river.Client[pgx.Tx] { return j.client }

// InsertAccountPushTx enqueues an account push in tx, the transaction of
// the change it pushes.
func (j *Jobs) InsertAccountPushTx(ctx context.Context, tx pgx.Tx, job controlplane.AccountPushJob) error {
	if _, err := j.client.InsertTx(ctx, tx, job, nil); err != nil {
		return fmt.Errorf("jobs: insert account push for tenant %s: %w", job.TenantID, err)
	}
	return nil
}

// InsertAccountPush enqueues an account push on its own.
func (j *Jobs) InsertAccountPush(ctx context.Context, job controlplane.AccountPushJob) error {
	if _, err := j.client.Insert(ctx, job, nil); err != nil {
		return fmt.Errorf("jobs: insert account push for tenant %s: %w", job.TenantID, err)
	}
	return nil
}

type accountPushWorker struct {
	river.WorkerDefaults[controlplane.AccountPushJob]
	runner AccountPushRunner
}

// Work returns the runner's error as is (wrapped): River records it on the
// job and retries with backoff.
func (w *accountPushWorker) Work(ctx context.Context, job *river.Job[controlplane.AccountPushJob]) error {
	if err := w.runner.RunAccountPush(ctx, job.Args); err != nil {
		return fmt.Errorf("account push for tenant %s (attempt %d): %w", job.Args.TenantID, job.Attempt, err)
	}
	return nil
}
