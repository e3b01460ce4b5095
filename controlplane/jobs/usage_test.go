package jobs_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/jobs"
)

// meterer is a runner that also meters and reports usage: metering runs
// alternate between a clean run and one whose hub could not be read;
// reporting fails every other run.
type meterer struct {
	*runner
	meters, reports atomic.Int32
	metered         chan struct{}
	reported        chan struct{}
}

func newMeterer() *meterer {
	return &meterer{runner: newRunner(0), metered: make(chan struct{}, 64), reported: make(chan struct{}, 64)}
}

func (m *meterer) MeterUsage(context.Context) (*controlplane.MeterReport, error) {
	n := m.meters.Add(1)
	defer func() { m.metered <- struct{}{} }()
	rep := &controlplane.MeterReport{Day: time.Now().UTC().Truncate(24 * time.Hour), Tenants: 3, VehicleDays: 5,
		NodesAnswered: 2, NodesExpected: 3}
	if n%2 == 0 {
		rep.NodesAnswered, rep.NodesExpected, rep.HubError = 0, 0, "hubs: no hub node connected"
	}
	return rep, nil
}

func (m *meterer) ReportUsage(context.Context) (*controlplane.UsageReportRun, error) {
	n := m.reports.Add(1)
	defer func() { m.reported <- struct{}{} }()
	if n%2 == 0 {
		return &controlplane.UsageReportRun{Created: 1, Failed: 1}, errors.New("1 of 1 usage reports failed")
	}
	return &controlplane.UsageReportRun{Created: 2, Reported: 2}, nil
}

func waitOn(tb testing.TB, ch chan struct{}, what string, d time.Duration) {
	tb.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		tb.Fatalf("no %s run within %s", what, d)
	}
}

func TestUsageJobsRunOnStartAndPeriodically(t *testing.T) {
	m := newMeterer()
	start := time.Now()
	j := MustJobs(t, nil, m, jobs.Options{ReconcileInterval: -1, MeterInterval: 200 * time.Millisecond, ReportInterval: 300 * time.Millisecond})
	for range 2 {
		waitOn(t, m.metered, "meter_usage", 15*time.Second)
		waitOn(t, m.reported, "report_usage", 15*time.Second)
	}
	t.Logf("two runs of each %s after start", time.Since(start))
	// Each run completed (or was discarded, for a failed report): no
	// retries pile up, and the next interval inserts a fresh job.
	waitOn(t, m.metered, "meter_usage", 15*time.Second)

	um := j.UsageMetrics()
	if um == nil {
		t.Fatal("no usage metrics for a runner that meters")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(um)
	got := gathered(t, reg)
	for name, atLeast := range map[string]float64{
		`fleetplane_usage_meter_runs_total{result="ok"}`:         1,
		`fleetplane_usage_meter_runs_total{result="hub_error"}`:  1,
		`fleetplane_usage_report_runs_total{result="ok"}`:        1,
		`fleetplane_usage_report_runs_total{result="error"}`:     1,
		"fleetplane_usage_vehicle_days_added_total":              15,
		"fleetplane_usage_reports_created_total":                 3,
		"fleetplane_usage_reports_reported_total":                2,
		"fleetplane_usage_reports_failed_total":                  1,
		"fleetplane_usage_tenants_sampled":                       3,
		"fleetplane_usage_meter_last_success_timestamp_seconds":  float64(start.Unix()),
		"fleetplane_usage_report_last_success_timestamp_seconds": float64(start.Unix()),
	} {
		if got[name] < atLeast {
			t.Errorf("%s = %v, want at least %v (all: %v)", name, got[name], atLeast, got)
		}
	}
	if _, ok := got["fleetplane_usage_hub_nodes_expected"]; !ok {
		t.Errorf("no hub nodes gauge: %v", got)
	}
	if _, ok := got[`fleetplane_usage_meter_runs_total{result="error"}`]; ok {
		t.Errorf("a meter run counted as failed: %v", got)
	}

	// The kinds are the documented ones.
	for _, kind := range []string{"meter_usage", "report_usage"} {
		res, err := j.Client().JobList(context.Background(), river.NewJobListParams().Kinds(kind))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Jobs) == 0 {
			t.Errorf("no %s jobs in River", kind)
		}
	}
}

func TestUsageJobsOff(t *testing.T) {
	j := MustJobs(t, nil, newRunner(0), jobs.Options{ReconcileInterval: -1})
	if j.UsageMetrics() != nil {
		t.Fatal("usage metrics for a runner that does not meter")
	}
	m := newMeterer()
	j = MustJobs(t, nil, m, jobs.Options{ReconcileInterval: -1, MeterInterval: -1, ReportInterval: 100 * time.Millisecond})
	if j.UsageMetrics() == nil {
		t.Fatal("no usage metrics with reporting on")
	}
	waitOn(t, m.reported, "report_usage", 15*time.Second)
	time.Sleep(300 * time.Millisecond)
	if n := m.meters.Load(); n != 0 {
		t.Fatalf("%d meter runs with metering switched off", n)
	}
}
