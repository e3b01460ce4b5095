package postgres_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
)

func TestIdempotency(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()
	const scope = "tenant:1"
	h1, h2 := hashOf("body 1"), hashOf("body 2")

	// Fresh claim.
	r, err := s.BeginIdempotent(ctx, scope, "k1", h1)
	if err != nil || !r.Fresh {
		t.Fatalf("first Begin = %+v, %v; want Fresh", r, err)
	}
	// In flight: same body waits, another body is refused.
	_, err = s.BeginIdempotent(ctx, scope, "k1", h1)
	WantCode(t, err, controlplane.ECONFLICT)
	_, err = s.BeginIdempotent(ctx, scope, "k1", h2)
	WantCode(t, err, controlplane.EUNPROCESSABLE)
	// The same key in another scope is another key.
	if r, err := s.BeginIdempotent(ctx, "tenant:2", "k1", h2); err != nil || !r.Fresh {
		t.Fatalf("other scope = %+v, %v; want Fresh", r, err)
	}

	// Completed: the stored response comes back, not Fresh.
	resp := &controlplane.IdempotentResponse{Status: 201, ContentType: "application/json", Location: "/v1/fleets/a", Body: []byte(`{"slug":"a"}`)}
	if err := s.CompleteIdempotent(ctx, scope, "k1", resp); err != nil {
		t.Fatal(err)
	}
	WantCode(t, s.CompleteIdempotent(ctx, scope, "k1", resp), controlplane.ENOTFOUND)
	WantCode(t, s.CompleteIdempotent(ctx, scope, "never", resp), controlplane.ENOTFOUND)
	r, err = s.BeginIdempotent(ctx, scope, "k1", h1)
	if err != nil || r.Fresh || r.Status != 201 || r.ContentType != resp.ContentType || r.Location != resp.Location || string(r.Body) != string(resp.Body) {
		t.Fatalf("replay = %+v, %v; want %+v", r, err, resp)
	}
	_, err = s.BeginIdempotent(ctx, scope, "k1", h2)
	WantCode(t, err, controlplane.EUNPROCESSABLE)
	// Releasing a completed key keeps its response.
	if err := s.ReleaseIdempotent(ctx, scope, "k1"); err != nil {
		t.Fatal(err)
	}
	if r, err := s.BeginIdempotent(ctx, scope, "k1", h1); err != nil || r.Fresh {
		t.Fatalf("after releasing a completed key: %+v, %v", r, err)
	}

	// Released in flight: the key can be claimed again, even with another body.
	if r, err := s.BeginIdempotent(ctx, scope, "k2", h1); err != nil || !r.Fresh {
		t.Fatal(r, err)
	}
	if err := s.ReleaseIdempotent(ctx, scope, "k2"); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseIdempotent(ctx, scope, "k2"); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if r, err := s.BeginIdempotent(ctx, scope, "k2", h2); err != nil || !r.Fresh {
		t.Fatalf("after release = %+v, %v; want Fresh", r, err)
	}
	// A response with no body replays as no body.
	if err := s.CompleteIdempotent(ctx, scope, "k2", &controlplane.IdempotentResponse{Status: 204}); err != nil {
		t.Fatal(err)
	}
	if r, err := s.BeginIdempotent(ctx, scope, "k2", h2); err != nil || r.Status != 204 || len(r.Body) != 0 {
		t.Fatalf("204 replay = %+v, %v", r, err)
	}

	// Expiry deletes by creation time, completed or not.
	MustExec(t, pool, `UPDATE idempotency_keys SET created_at = now() - interval '2 days' WHERE scope = 'tenant:1'`)
	n, err := s.DeleteExpiredIdempotencyKeys(ctx, time.Now().Add(-24*time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("DeleteExpiredIdempotencyKeys = %d, %v; want 2", n, err)
	}
	if r, err := s.BeginIdempotent(ctx, scope, "k1", h2); err != nil || !r.Fresh {
		t.Fatalf("after expiry = %+v, %v; want Fresh", r, err)
	}
}

// TestIdempotencyConcurrent: of many simultaneous first requests with one
// key, exactly one gets the claim; the others are told it is in progress.
func TestIdempotencyConcurrent(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	const n = 10
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		results = make([]*controlplane.IdempotentResponse, n)
		errs    = make([]error, n)
	)
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], errs[i] = s.BeginIdempotent(ctx, "tenant:c", "race", hashOf("same"))
		})
	}
	close(start)
	wg.Wait()
	fresh := 0
	for i := range n {
		switch {
		case errs[i] == nil && results[i].Fresh:
			fresh++
		case controlplane.ErrorCode(errs[i]) == controlplane.ECONFLICT:
		default:
			t.Errorf("goroutine %d: %+v, %v", i, results[i], errs[i])
		}
	}
	if fresh != 1 {
		t.Errorf("%d fresh claims, want exactly 1", fresh)
	}
}
