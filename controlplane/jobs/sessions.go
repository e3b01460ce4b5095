package jobs

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/riverqueue/river"

	"github.com/fleetplane/fleetplane/controlplane"
)

// The cleanup_sessions periodic job (controlplane.CleanupSessionsJob)
// deletes expired and idle portal sessions and expired one-time links
// every Options.SessionCleanupInterval (default an hour), like the other
// periodic jobs: inserted by the leader, one at a time, not retried (the
// next interval is the retry). Expired rows are harmless meanwhile: the
// domain checks expiry on every use.

// SessionCleaner deletes expired sessions; controlplane.Service
// implements it. A runner given to New that also implements it gets the
// job.
type SessionCleaner interface {
	CleanupSessions(ctx context.Context) (int64, error)
}

// DefaultSessionCleanupInterval is Options.SessionCleanupInterval's default.
const DefaultSessionCleanupInterval = time.Hour

// addSessionCleanup registers the cleanup worker and returns its periodic
// job when runner implements SessionCleaner and the interval is not
// negative.
func addSessionCleanup(workers *river.Workers, runner AccountPushRunner, opts Options) ([]*river.PeriodicJob, error) {
	sc, ok := runner.(SessionCleaner)
	if !ok || opts.SessionCleanupInterval < 0 {
		return nil, nil
	}
	if err := river.AddWorkerSafely(workers, &cleanupSessionsWorker{runner: sc}); err != nil {
		return nil, fmt.Errorf("jobs: register cleanup_sessions worker: %w", err)
	}
	return []*river.PeriodicJob{river.NewPeriodicJob(
		river.PeriodicInterval(cmp.Or(opts.SessionCleanupInterval, DefaultSessionCleanupInterval)),
		func() (river.JobArgs, *river.InsertOpts) {
			return controlplane.CleanupSessionsJob{}, &river.InsertOpts{MaxAttempts: 1, UniqueOpts: reconcileUnique}
		},
		&river.PeriodicJobOpts{ID: controlplane.CleanupSessionsJob{}.Kind(), RunOnStart: true})}, nil
}

type cleanupSessionsWorker struct {
	river.WorkerDefaults[controlplane.CleanupSessionsJob]
	runner SessionCleaner
}

// Work runs one cleanup.
func (w *cleanupSessionsWorker) Work(ctx context.Context, _ *river.Job[controlplane.CleanupSessionsJob]) error {
	if _, err := w.runner.CleanupSessions(ctx); err != nil {
		return fmt.Errorf("cleanup sessions: %w", err)
	}
	return nil
}
