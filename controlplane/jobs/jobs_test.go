package jobs_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/rivertype"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/jobs"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// runner records the jobs it runs and fails the first failFirst attempts
// of each tenant.
type runner struct {
	failFirst int
	mu        sync.Mutex
	attempts  map[string]int
	done      chan controlplane.AccountPushJob
}

func newRunner(failFirst int) *runner {
	return &runner{failFirst: failFirst, attempts: map[string]int{}, done: make(chan controlplane.AccountPushJob, 16)}
}

func (r *runner) RunAccountPush(ctx context.Context, job controlplane.AccountPushJob) error {
	r.mu.Lock()
	r.attempts[job.TenantID]++
	n := r.attempts[job.TenantID]
	r.mu.Unlock()
	if n <= r.failFirst {
		return controlplane.Errorf(controlplane.EUNAVAILABLE, "hub node hub-2 did not answer")
	}
	r.done <- job
	return nil
}

func (r *runner) attemptsOf(tenantID string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.attempts[tenantID]
}

// fastRetry retries after 10 ms.
type fastRetry struct{}

func (fastRetry) NextRetry(*rivertype.JobRow) time.Time { return time.Now().Add(10 * time.Millisecond) }

// MustJobs starts Jobs over pool (a fresh database when nil) and stops it at cleanup.
func MustJobs(tb testing.TB, pool *pgxpool.Pool, r jobs.AccountPushRunner, opts jobs.Options) *jobs.Jobs {
	tb.Helper()
	if pool == nil {
		pool = pgtest.NewPool(tb)
	}
	j, err := jobs.New(pool, r, slog.New(slog.NewTextHandler(io.Discard, nil)), opts)
	if err != nil {
		tb.Fatalf("jobs.New: %v", err)
	}
	if err := j.Start(context.Background()); err != nil {
		tb.Fatalf("Start: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := j.Stop(ctx); err != nil {
			tb.Errorf("Stop: %v", err)
		}
	})
	return j
}

func waitJob(tb testing.TB, r *runner, d time.Duration) controlplane.AccountPushJob {
	tb.Helper()
	select {
	case job := <-r.done:
		return job
	case <-time.After(d):
		tb.Fatalf("no job run within %s", d)
		return controlplane.AccountPushJob{}
	}
}

func TestAccountPushJobRuns(t *testing.T) {
	r := newRunner(0)
	j := MustJobs(t, nil, r, jobs.Options{})
	want := controlplane.AccountPushJob{TenantID: "3f1c2a9e-0000-4000-8000-000000000001", RevocationID: 42}

	start := time.Now()
	res, err := j.Client().Insert(context.Background(), want, nil)
	if err != nil {
		t.Fatalf("Insert: %v", err)
	}
	if res.Job.Kind != "account_push" {
		t.Fatalf("kind %q", res.Job.Kind)
	}
	if got := waitJob(t, r, 5*time.Second); got != want {
		t.Fatalf("runner got %+v, want %+v", got, want)
	}
	t.Logf("insert → run: %s", time.Since(start))

	// The job completes.
	waitState(t, j, res.Job.ID, rivertype.JobStateCompleted)
}

func TestAccountPushJobInTransaction(t *testing.T) {
	r := newRunner(0)
	pool := pgtest.NewPool(t)
	j := MustJobs(t, pool, r, jobs.Options{})
	ctx := context.Background()

	// Rolled back: never runs.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.InsertAccountPushTx(ctx, tx, controlplane.AccountPushJob{TenantID: "rolled-back"}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// Committed: runs.
	tx, err = pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.InsertAccountPushTx(ctx, tx, controlplane.AccountPushJob{TenantID: "committed"}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := waitJob(t, r, 5*time.Second); got.TenantID != "committed" {
		t.Fatalf("ran %+v", got)
	}
	time.Sleep(300 * time.Millisecond)
	if n := r.attemptsOf("rolled-back"); n != 0 {
		t.Fatalf("a rolled-back job ran %d times", n)
	}
}

func TestFailedPushIsRetried(t *testing.T) {
	r := newRunner(2)
	j := MustJobs(t, nil, r, jobs.Options{RetryPolicy: fastRetry{}})
	res, err := j.Client().Insert(context.Background(), controlplane.AccountPushJob{TenantID: "t1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := waitJob(t, r, 10*time.Second); got.TenantID != "t1" {
		t.Fatalf("ran %+v", got)
	}
	if n := r.attemptsOf("t1"); n != 3 {
		t.Fatalf("%d attempts, want 3 (two failures, then success)", n)
	}
	row := waitState(t, j, res.Job.ID, rivertype.JobStateCompleted)
	if len(row.Errors) != 2 || row.Attempt != 3 {
		t.Fatalf("job row: attempt %d, %d errors", row.Attempt, len(row.Errors))
	}
	if msg := row.Errors[0].Error; msg == "" || !strings.Contains(msg, "hub-2 did not answer") || !strings.Contains(msg, "attempt 1") {
		t.Fatalf("recorded error %q", msg)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := jobs.New(nil, newRunner(0), nil, jobs.Options{}); err == nil {
		t.Fatal("accepted a nil pool")
	}
	if _, err := jobs.New(pgtest.NewPool(t), nil, nil, jobs.Options{}); err == nil {
		t.Fatal("accepted a nil runner")
	}
	_, err := jobs.New(pgtest.NewPool(t), newRunner(0), nil, jobs.Options{FetchCooldown: time.Second, FetchPollInterval: time.Millisecond})
	if err == nil {
		t.Fatal("accepted a poll interval shorter than the cooldown")
	}
}

func waitState(tb testing.TB, j *jobs.Jobs, id int64, want rivertype.JobState) *rivertype.JobRow {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		row, err := j.Client().JobGet(context.Background(), id)
		if err != nil {
			tb.Fatal(err)
		}
		if row.State == want {
			return row
		}
		if time.Now().After(deadline) {
			tb.Fatalf("job %d is %s, want %s", id, row.State, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
