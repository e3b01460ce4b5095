package jobs

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"

	"github.com/fleetplane/fleetplane/controlplane"
)

// The usage jobs (controlplane/usage.go, billing_service.go), periodic
// like reconcile_accounts (reconcile.go): River inserts them on the
// elected leader only, at start and then every interval, and a job that is
// still queued or running keeps the next one from being inserted.
//
//   - meter_usage (controlplane.MeterUsageJob) runs MeterUsage every
//     Options.MeterInterval (default a minute): vehicle-days and hub
//     traffic.
//   - report_usage (controlplane.ReportUsageJob) runs ReportUsage every
//     Options.ReportInterval (default ten minutes): usage reports to Stripe.
//
// Neither is retried by River (one attempt): both are idempotent and run
// again at the next interval, which is the retry; a failed run is counted
// in the metrics and logged by River.

// UsageRunner meters and reports usage; controlplane.Service implements
// it. A runner given to New that also implements it gets both jobs.
type UsageRunner interface {
	MeterUsage(ctx context.Context) (*controlplane.MeterReport, error)
	ReportUsage(ctx context.Context) (*controlplane.UsageReportRun, error)
}

// Defaults of the usage jobs' options.
const (
	DefaultMeterInterval  = time.Minute
	DefaultReportInterval = 10 * time.Minute
	// reportTimeout bounds one report run (up to 1000 pending reports,
	// one provider call each).
	reportTimeout = 5 * time.Minute
)

// addUsage registers the usage workers and returns their periodic jobs
// and metrics when runner implements UsageRunner; an interval < 0 turns
// that job off.
func addUsage(workers *river.Workers, runner AccountPushRunner, opts Options) ([]*river.PeriodicJob, *UsageMetrics, error) {
	ur, ok := runner.(UsageRunner)
	if !ok || (opts.MeterInterval < 0 && opts.ReportInterval < 0) {
		return nil, nil, nil
	}
	m := newUsageMetrics()
	var periodic []*river.PeriodicJob
	if opts.MeterInterval >= 0 {
		if err := river.AddWorkerSafely(workers, &meterWorker{runner: ur, metrics: m}); err != nil {
			return nil, nil, fmt.Errorf("jobs: register meter_usage worker: %w", err)
		}
		periodic = append(periodic, river.NewPeriodicJob(river.PeriodicInterval(cmp.Or(opts.MeterInterval, DefaultMeterInterval)),
			func() (river.JobArgs, *river.InsertOpts) {
				return controlplane.MeterUsageJob{}, &river.InsertOpts{MaxAttempts: 1, UniqueOpts: reconcileUnique}
			},
			&river.PeriodicJobOpts{ID: controlplane.MeterUsageJob{}.Kind(), RunOnStart: true}))
	}
	if opts.ReportInterval >= 0 {
		if err := river.AddWorkerSafely(workers, &reportWorker{runner: ur, metrics: m}); err != nil {
			return nil, nil, fmt.Errorf("jobs: register report_usage worker: %w", err)
		}
		periodic = append(periodic, river.NewPeriodicJob(river.PeriodicInterval(cmp.Or(opts.ReportInterval, DefaultReportInterval)),
			func() (river.JobArgs, *river.InsertOpts) {
				return controlplane.ReportUsageJob{}, &river.InsertOpts{MaxAttempts: 1, UniqueOpts: reconcileUnique}
			},
			&river.PeriodicJobOpts{ID: controlplane.ReportUsageJob{}.Kind(), RunOnStart: true}))
	}
	return periodic, m, nil
}

type meterWorker struct {
	river.WorkerDefaults[controlplane.MeterUsageJob]
	runner  UsageRunner
	metrics *UsageMetrics
}

// Work runs one metering; a run that could not sample fails (a hub that
// did not answer is no failure: see MeterReport.HubError).
func (w *meterWorker) Work(ctx context.Context, job *river.Job[controlplane.MeterUsageJob]) error {
	rep, err := w.runner.MeterUsage(ctx)
	w.metrics.observeMeter(rep, err)
	if err != nil {
		return fmt.Errorf("meter usage: %w", err)
	}
	return nil
}

type reportWorker struct {
	river.WorkerDefaults[controlplane.ReportUsageJob]
	runner  UsageRunner
	metrics *UsageMetrics
}

func (w *reportWorker) Timeout(*river.Job[controlplane.ReportUsageJob]) time.Duration {
	return reportTimeout
}

// Work runs one usage report round; reports that failed are sent again by
// the next run.
func (w *reportWorker) Work(ctx context.Context, job *river.Job[controlplane.ReportUsageJob]) error {
	run, err := w.runner.ReportUsage(ctx)
	w.metrics.observeReport(run, err)
	if err != nil {
		return fmt.Errorf("report usage: %w", err)
	}
	return nil
}

// UsageMetrics is the Prometheus collector of the usage jobs in this
// process.
type UsageMetrics struct {
	meterRuns, reportRuns                  *prometheus.CounterVec
	vehicleDays, created, reported, failed prometheus.Counter
	nodesAnswered, nodesExpected, tenants  prometheus.Gauge
	meterLastSuccess, reportLastSuccess    prometheus.Gauge

	mu sync.Mutex // serializes observe*
}

func newUsageMetrics() *UsageMetrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	return &UsageMetrics{
		meterRuns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetplane_usage_meter_runs_total",
			Help: "Usage metering runs in this process, by result (ok; hub_error: vehicle-days sampled, hub statistics unavailable; error)."},
			[]string{"result"}),
		reportRuns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetplane_usage_report_runs_total",
			Help: "Usage report runs in this process, by result (ok, error)."}, []string{"result"}),
		vehicleDays: counter("fleetplane_usage_vehicle_days_added_total", "Vehicle-day rows the metering runs of this process added."),
		created:     counter("fleetplane_usage_reports_created_total", "Usage reports frozen for sending."),
		reported:    counter("fleetplane_usage_reports_reported_total", "Usage reports the billing provider accepted."),
		failed:      counter("fleetplane_usage_reports_failed_total", "Usage report attempts that failed (sent again by the next run)."),
		nodesAnswered: gauge("fleetplane_usage_hub_nodes_answered",
			"Hub nodes whose account statistics the last metering run read."),
		nodesExpected: gauge("fleetplane_usage_hub_nodes_expected",
			"Hub nodes the last metering run asked for account statistics."),
		tenants: gauge("fleetplane_usage_tenants_sampled", "Tenants the last metering run sampled."),
		meterLastSuccess: gauge("fleetplane_usage_meter_last_success_timestamp_seconds",
			"Unix time at which the last successful metering run in this process ended."),
		reportLastSuccess: gauge("fleetplane_usage_report_last_success_timestamp_seconds",
			"Unix time at which the last successful usage report run in this process ended."),
	}
}

func (m *UsageMetrics) observeMeter(rep *controlplane.MeterReport, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	result := "ok"
	switch {
	case err != nil:
		result = "error"
	case rep != nil && rep.HubError != "":
		result = "hub_error"
	}
	m.meterRuns.WithLabelValues(result).Inc()
	if rep != nil {
		m.vehicleDays.Add(float64(rep.VehicleDays))
		m.tenants.Set(float64(rep.Tenants))
		if rep.HubError == "" {
			m.nodesAnswered.Set(float64(rep.NodesAnswered))
			m.nodesExpected.Set(float64(rep.NodesExpected))
		} else {
			m.nodesAnswered.Set(0)
		}
	}
	if err == nil {
		m.meterLastSuccess.Set(float64(time.Now().UnixNano()) / 1e9)
	}
}

func (m *UsageMetrics) observeReport(run *controlplane.UsageReportRun, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.reportRuns.WithLabelValues(result).Inc()
	if run != nil {
		m.created.Add(float64(run.Created))
		m.reported.Add(float64(run.Reported))
		m.failed.Add(float64(run.Failed))
	}
	if err == nil {
		m.reportLastSuccess.Set(float64(time.Now().UnixNano()) / 1e9)
	}
}

func (m *UsageMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.meterRuns, m.reportRuns, m.vehicleDays, m.created, m.reported, m.failed,
		m.nodesAnswered, m.nodesExpected, m.tenants, m.meterLastSuccess, m.reportLastSuccess}
}

// Describe implements prometheus.Collector.
func (m *UsageMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *UsageMetrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

// UsageMetrics returns the usage jobs' collector (register it with the
// process's registry), or nil when the runner does not meter usage.
func (j *Jobs) UsageMetrics() *UsageMetrics { return j.usage }
