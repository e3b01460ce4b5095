package postgres

import (
	"bytes"
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// BeginIdempotent claims (scope, key) with an insert that does nothing on
// conflict, so that of concurrent first requests exactly one wins; the
// others read the winner's row.
func (s *Store) BeginIdempotent(ctx context.Context, scope, key string, requestHash []byte) (*controlplane.IdempotentResponse, error) {
	// A claim released between our insert and our read makes the row
	// vanish; then claim again. Twice is plenty: it takes a release racing
	// each attempt.
	for range 3 {
		tag, err := s.db.Exec(ctx, `
			INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3)
			ON CONFLICT (scope, key) DO NOTHING`,
			scope, key, requestHash)
		if err != nil {
			return nil, translate(err, "Idempotency-Key not found")
		}
		if tag.RowsAffected() == 1 {
			return &controlplane.IdempotentResponse{Fresh: true}, nil
		}
		var (
			hash   []byte
			status *int
			r      controlplane.IdempotentResponse
		)
		err = s.db.QueryRow(ctx, `
			SELECT request_hash, status, content_type, location, body
			FROM idempotency_keys WHERE scope = $1 AND key = $2`,
			scope, key,
		).Scan(&hash, &status, &r.ContentType, &r.Location, &r.Body)
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		} else if err != nil {
			return nil, translate(err, "Idempotency-Key not found")
		}
		switch {
		case !bytes.Equal(hash, requestHash):
			return nil, controlplane.Errorf(controlplane.EUNPROCESSABLE, "Idempotency-Key was already used with a different request body")
		case status == nil:
			return nil, controlplane.Errorf(controlplane.ECONFLICT, "a request with this Idempotency-Key is still in progress")
		}
		r.Status = *status
		return &r, nil
	}
	return nil, controlplane.Errorf(controlplane.ECONFLICT, "a request with this Idempotency-Key is still in progress")
}

// CompleteIdempotent stores the response of a claimed, in-flight key; a key
// that is not in flight is ENOTFOUND.
func (s *Store) CompleteIdempotent(ctx context.Context, scope, key string, r *controlplane.IdempotentResponse) error {
	tag, err := s.db.Exec(ctx, `
		UPDATE idempotency_keys
		SET status = $3, content_type = $4, location = $5, body = $6, completed_at = now()
		WHERE scope = $1 AND key = $2 AND status IS NULL`,
		scope, key, r.Status, r.ContentType, r.Location, r.Body)
	if err != nil {
		return translate(err, "Idempotency-Key not found")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ENOTFOUND, "no request with this Idempotency-Key is in progress")
	}
	return nil
}

// ReleaseIdempotent deletes an in-flight claim; a completed response stays.
// Releasing a key that is not claimed does nothing.
func (s *Store) ReleaseIdempotent(ctx context.Context, scope, key string) error {
	_, err := s.db.Exec(ctx, `DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND status IS NULL`, scope, key)
	return translate(err, "Idempotency-Key not found")
}

// DeleteExpiredIdempotencyKeys deletes keys created before before, in
// flight or not, and returns how many.
func (s *Store) DeleteExpiredIdempotencyKeys(ctx context.Context, before time.Time) (int64, error) {
	tag, err := s.db.Exec(ctx, `DELETE FROM idempotency_keys WHERE created_at < $1`, before)
	if err != nil {
		return 0, translate(err, "")
	}
	return tag.RowsAffected(), nil
}
