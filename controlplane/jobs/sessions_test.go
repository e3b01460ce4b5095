package jobs_test

import (
	"context"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane/jobs"
)

// cleaner is a runner that also cleans up sessions.
type cleaner struct {
	*runner
	runs chan struct{}
}

func (c *cleaner) CleanupSessions(context.Context) (int64, error) {
	c.runs <- struct{}{}
	return 3, nil
}

func TestSessionCleanupRunsOnStartAndPeriodically(t *testing.T) {
	c := &cleaner{runner: newRunner(0), runs: make(chan struct{}, 64)}
	MustJobs(t, nil, c, jobs.Options{ReconcileInterval: -1, SessionCleanupInterval: 200 * time.Millisecond})
	for i := range 2 {
		select {
		case <-c.runs:
		case <-time.After(15 * time.Second):
			t.Fatalf("cleanup run %d did not start within 15s", i+1)
		}
	}
}
