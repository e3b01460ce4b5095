package jobs_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/jobs"
)

// reconciler is a runner that also reconciles: each run reports fixed
// numbers and, while hold is set, waits for release.
type reconciler struct {
	*runner
	runs    atomic.Int32
	started chan struct{}
	hold    atomic.Bool
	release chan struct{}
}

func newReconciler() *reconciler {
	return &reconciler{runner: newRunner(0), started: make(chan struct{}, 64), release: make(chan struct{})}
}

func (r *reconciler) ReconcileAccounts(ctx context.Context) (*controlplane.ReconcileReport, error) {
	r.runs.Add(1)
	r.started <- struct{}{}
	if r.hold.Load() {
		select {
		case <-r.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &controlplane.ReconcileReport{StartedAt: time.Now(), Duration: 5 * time.Millisecond,
		Accounts: 10, Drifted: 2, Behind: 1, Repaired: 2, RevocationsProven: 1}, nil
}

func (r *reconciler) AccountsBehind(context.Context) (int, error) { return 3, nil }

func waitStarted(tb testing.TB, r *reconciler, d time.Duration) {
	tb.Helper()
	select {
	case <-r.started:
	case <-time.After(d):
		tb.Fatalf("no reconcile run started within %s", d)
	}
}

func TestReconcileRunsOnStartAndPeriodically(t *testing.T) {
	r := newReconciler()
	j := MustJobs(t, nil, r, jobs.Options{ReconcileInterval: 300 * time.Millisecond})
	start := time.Now()
	waitStarted(t, r, 15*time.Second) // on start, once this client is leader
	t.Logf("first run %s after start", time.Since(start))
	waitStarted(t, r, 15*time.Second) // the next interval
	waitStarted(t, r, 15*time.Second)

	m := j.ReconcileMetrics()
	if m == nil {
		t.Fatal("no reconcile metrics for a runner that reconciles")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	got := gathered(t, reg)
	if got["fleetplane_accounts_behind"] != 3 {
		t.Fatalf("accounts_behind: %v", got)
	}
	if got[`fleetplane_reconcile_runs_total{result="ok"}`] < 2 {
		t.Fatalf("runs: %v", got)
	}
	// Counters add every run's numbers; gauges are set.
	for name, atLeast := range map[string]float64{
		"fleetplane_reconcile_drift_found_total":              4,
		"fleetplane_reconcile_accounts_repaired_total":        4,
		"fleetplane_reconcile_revocations_proven_total":       2,
		"fleetplane_reconcile_last_duration_seconds":          0.005,
		"fleetplane_reconcile_last_run_timestamp_seconds":     float64(start.Unix()),
		"fleetplane_reconcile_last_success_timestamp_seconds": float64(start.Unix()),
	} {
		if got[name] < atLeast {
			t.Errorf("%s = %v, want at least %v", name, got[name], atLeast)
		}
	}
	if v, ok := got["fleetplane_reconcile_repairs_failed_total"]; !ok || v != 0 {
		t.Errorf("repairs_failed_total = %v (present %v)", v, ok)
	}
}

// gathered returns every sample as name{labels} → value.
func gathered(tb testing.TB, reg *prometheus.Registry) map[string]float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"=\""+l.GetValue()+"\"")
			}
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			out[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return out
}

func TestReconcileRunsOneAtATime(t *testing.T) {
	r := newReconciler()
	r.hold.Store(true)
	j := MustJobs(t, nil, r, jobs.Options{ReconcileInterval: 100 * time.Millisecond})
	waitStarted(t, r, 15*time.Second)
	// While the first run is going, neither the interval nor an explicit
	// insert adds another job.
	if err := j.InsertReconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	res, err := j.Client().JobList(context.Background(), river.NewJobListParams().Kinds(controlplane.ReconcileAccountsJob{}.Kind()))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Jobs) != 1 || r.runs.Load() != 1 {
		t.Fatalf("%d reconcile jobs, %d runs while one is running; want 1", len(res.Jobs), r.runs.Load())
	}
	r.hold.Store(false)
	close(r.release)
	waitStarted(t, r, 15*time.Second) // the next interval inserts again
}

func TestNoReconcileWithoutAReconciler(t *testing.T) {
	j := MustJobs(t, nil, newRunner(0), jobs.Options{})
	if j.ReconcileMetrics() != nil {
		t.Fatal("reconcile metrics for a runner that does not reconcile")
	}
	if err := j.InsertReconcile(context.Background()); err == nil {
		t.Fatal("inserted a reconcile job without a worker")
	}
	r := newReconciler()
	j = MustJobs(t, nil, r, jobs.Options{ReconcileInterval: -1})
	if j.ReconcileMetrics() != nil {
		t.Fatal("reconcile metrics with the reconciler switched off")
	}
	time.Sleep(300 * time.Millisecond)
	if n := r.runs.Load(); n != 0 {
		t.Fatalf("%d reconcile runs with the reconciler switched off", n)
	}
}
