package jobs

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/fleetplane/fleetplane/controlplane"
)

// The reconcile_accounts periodic job (controlplane.ReconcileAccountsJob)
// runs the domain's ReconcileAccounts every Options.ReconcileInterval
// (default a minute) and once when a process becomes River's leader: River
// enqueues periodic jobs on the elected leader only, so one run happens
// per interval across all replicas, worked by whichever replica fetches it.
// A run that is still going keeps the next one from being inserted (unique
// while available, pending, scheduled, running or retryable).

// ReconcileRunner runs reconciliations; controlplane.Service implements it.
// A runner given to New that also implements it gets the periodic job.
type ReconcileRunner interface {
	ReconcileAccounts(ctx context.Context) (*controlplane.ReconcileReport, error)
	AccountsBehind(ctx context.Context) (int, error)
}

// Defaults of the reconciler's options.
const (
	DefaultReconcileInterval = time.Minute
	// reconcileTimeout bounds one run (River's job timeout is a minute;
	// with a node down, a run waits for it once per page of accounts).
	reconcileTimeout = 10 * time.Minute
)

// reconcileUnique lets one reconcile job exist at a time; completed and
// discarded ones do not count, so the next interval inserts a fresh one.
var reconcileUnique = river.UniqueOpts{ByState: []rivertype.JobState{
	rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRunning,
	rivertype.JobStateRetryable, rivertype.JobStateScheduled,
}}

// addReconcile registers the reconcile worker and returns its periodic job
// and metrics when runner implements ReconcileRunner and the interval is
// not negative.
func addReconcile(workers *river.Workers, runner AccountPushRunner, opts Options) ([]*river.PeriodicJob, *ReconcileMetrics, error) {
	rr, ok := runner.(ReconcileRunner)
	if !ok || opts.ReconcileInterval < 0 {
		return nil, nil, nil
	}
	m := newReconcileMetrics(rr)
	if err := river.AddWorkerSafely(workers, &reconcileWorker{runner: rr, metrics: m}); err != nil {
		return nil, nil, fmt.Errorf("jobs: register reconcile worker: %w", err)
	}
	every := cmp.Or(opts.ReconcileInterval, DefaultReconcileInterval)
	periodic := river.NewPeriodicJob(river.PeriodicInterval(every),
		func() (river.JobArgs, *river.InsertOpts) {
			return controlplane.ReconcileAccountsJob{}, &river.InsertOpts{MaxAttempts: 2, UniqueOpts: reconcileUnique}
		},
		&river.PeriodicJobOpts{ID: controlplane.ReconcileAccountsJob{}.Kind(), RunOnStart: true})
	return []*river.PeriodicJob{periodic}, m, nil
}

type reconcileWorker struct {
	river.WorkerDefaults[controlplane.ReconcileAccountsJob]
	runner  ReconcileRunner
	metrics *ReconcileMetrics
}

func (w *reconcileWorker) Timeout(*river.Job[controlplane.ReconcileAccountsJob]) time.Duration {
	return reconcileTimeout
}

// Work runs one reconciliation and records it; a run that could not ask
// the database or any hub node fails (and is retried once).
func (w *reconcileWorker) Work(ctx context.Context, job *river.Job[controlplane.ReconcileAccountsJob]) error {
	rep, err := w.runner.ReconcileAccounts(ctx)
	w.metrics.observe(rep, err)
	if err != nil {
		return fmt.Errorf("reconcile accounts (attempt %d): %w", job.Attempt, err)
	}
	return nil
}

// ReconcileMetrics is the Prometheus collector of the reconciler: what the
// runs in this process found and repaired, and the account backlog (read
// from the database at scrape time, so every replica reports it).
type ReconcileMetrics struct {
	runner ReconcileRunner

	runs                               *prometheus.CounterVec
	repaired, drifted, failed, proven  prometheus.Counter
	lastRun, lastSuccess, lastDuration prometheus.Gauge
	behindDesc                         *prometheus.Desc

	mu sync.Mutex // serializes observe
}

func newReconcileMetrics(r ReconcileRunner) *ReconcileMetrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	return &ReconcileMetrics{
		runner: r,
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetplane_reconcile_runs_total",
			Help: "Account reconciliation runs in this process, by result (ok, error)."}, []string{"result"}),
		drifted:  counter("fleetplane_reconcile_drift_found_total", "Accounts a hub node held without the latest JWT (older, newer or none), summed over runs."),
		repaired: counter("fleetplane_reconcile_accounts_repaired_total", "Accounts the reconciler pushed to every hub node."),
		failed:   counter("fleetplane_reconcile_repairs_failed_total", "Reconciler pushes that not every hub node acknowledged."),
		proven:   counter("fleetplane_reconcile_revocations_proven_total", "Pending revocations the reconciler proved after a repair."),
		lastRun: gauge("fleetplane_reconcile_last_run_timestamp_seconds",
			"Unix time at which the last reconciliation run in this process started."),
		lastSuccess: gauge("fleetplane_reconcile_last_success_timestamp_seconds",
			"Unix time at which the last successful reconciliation run in this process started."),
		lastDuration: gauge("fleetplane_reconcile_last_duration_seconds", "Duration of the last reconciliation run in this process."),
		behindDesc: prometheus.NewDesc("fleetplane_accounts_behind",
			"Tenant accounts whose latest version not every hub node has acknowledged (pushed_version < version).", nil, nil),
	}
}

func (m *ReconcileMetrics) observe(rep *controlplane.ReconcileReport, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.runs.WithLabelValues(result).Inc()
	if rep == nil {
		return
	}
	m.drifted.Add(float64(rep.Drifted))
	m.repaired.Add(float64(rep.Repaired))
	m.failed.Add(float64(rep.Failed))
	m.proven.Add(float64(rep.RevocationsProven))
	m.lastRun.Set(float64(rep.StartedAt.UnixNano()) / 1e9)
	m.lastDuration.Set(rep.Duration.Seconds())
	if err == nil {
		m.lastSuccess.Set(float64(rep.StartedAt.UnixNano()) / 1e9)
	}
}

// Describe implements prometheus.Collector.
func (m *ReconcileMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
	ch <- m.behindDesc
}

// Collect implements prometheus.Collector.
func (m *ReconcileMetrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// A database that does not answer leaves the gauge out rather than
	// failing the whole scrape (/readyz reports the database).
	if n, err := m.runner.AccountsBehind(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(m.behindDesc, prometheus.GaugeValue, float64(n))
	}
}

func (m *ReconcileMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.runs, m.drifted, m.repaired, m.failed, m.proven, m.lastRun, m.lastSuccess, m.lastDuration}
}

// ReconcileMetrics returns the reconciler's collector (register it with
// the process's registry), or nil when the runner does not reconcile.
func (j *Jobs) ReconcileMetrics() *ReconcileMetrics { return j.reconcile }

// InsertReconcile enqueues a reconciliation now (unless one is already
// queued or running), e.g. after a hub node came back.
func (j *Jobs) InsertReconcile(ctx context.Context) error {
	if j.reconcile == nil {
		return fmt.Errorf("jobs: the runner does not reconcile")
	}
	if _, err := j.client.Insert(ctx, controlplane.ReconcileAccountsJob{}, &river.InsertOpts{MaxAttempts: 2, UniqueOpts: reconcileUnique}); err != nil {
		return fmt.Errorf("jobs: insert reconcile: %w", err)
	}
	return nil
}
