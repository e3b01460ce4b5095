package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// revocationColumns reads a revocation row. Nodes and connections are jsonb
// in the domain types' JSON form; the latency is whole microseconds.
const revocationColumns = `id, tenant_id, kind, target_id, user_public_key, account_version, status, requested_at,
	completed_at, nodes, connections, connections_remaining, latency_us, attempts, last_error`

func scanRevocation(row pgx.Row) (*controlplane.Revocation, error) {
	r := &controlplane.Revocation{}
	var latency *int64
	err := row.Scan(&r.ID, &r.TenantID, &r.Kind, &r.TargetID, &r.UserPublicKey, &r.AccountVersion, &r.Status, &r.RequestedAt,
		&r.CompletedAt, &r.Nodes, &r.Connections, &r.ConnectionsRemaining, &latency, &r.Attempts, &r.LastError)
	if err != nil {
		return nil, err
	}
	if latency != nil {
		r.Latency = time.Duration(*latency) * time.Microsecond
	}
	r.Nodes, r.Connections = nonNil(r.Nodes), nonNil(r.Connections)
	return r, nil
}

// latencyUS is r.Latency in microseconds, NULL until the revocation has
// completed with a latency.
func latencyUS(r *controlplane.Revocation) *int64 {
	if r.CompletedAt == nil && r.Latency == 0 {
		return nil
	}
	us := r.Latency.Microseconds()
	return &us
}

// CreateRevocation inserts r and sets its ID, and its RequestedAt when
// zero (to the database's clock); an empty Status is pending. A missing
// tenant is ENOTFOUND.
func (s *Store) CreateRevocation(ctx context.Context, r *controlplane.Revocation) error {
	var requested *time.Time
	if !r.RequestedAt.IsZero() {
		requested = &r.RequestedAt
	}
	if r.Status == "" {
		r.Status = controlplane.RevocationPending
	}
	err := s.db.QueryRow(ctx, `
		INSERT INTO revocations (tenant_id, kind, target_id, user_public_key, account_version, status, requested_at,
			completed_at, nodes, connections, connections_remaining, latency_us, attempts, last_error)
		VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()), $8, $9, $10, $11, $12, $13, $14)
		RETURNING id, requested_at`,
		r.TenantID, r.Kind, r.TargetID, r.UserPublicKey, r.AccountVersion, r.Status, requested,
		r.CompletedAt, nonNil(r.Nodes), nonNil(r.Connections), r.ConnectionsRemaining, latencyUS(r), r.Attempts, r.LastError,
	).Scan(&r.ID, &r.RequestedAt)
	if isCode(err, codeForeignKeyViolation) || isCode(err, codeInvalidText) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "tenant not found")
	}
	return translate(err, "revocation not found")
}

// UpdateRevocation writes r's Status, CompletedAt, Nodes, Connections,
// ConnectionsRemaining, Latency, Attempts and LastError to the tenant's
// revocation r.ID.
func (s *Store) UpdateRevocation(ctx context.Context, r *controlplane.Revocation) error {
	tag, err := s.db.Exec(ctx, `
		UPDATE revocations SET status = $3, completed_at = $4, nodes = $5, connections = $6,
			connections_remaining = $7, latency_us = $8, attempts = $9, last_error = $10
		WHERE tenant_id = $1 AND id = $2`,
		r.TenantID, r.ID, r.Status, r.CompletedAt, nonNil(r.Nodes), nonNil(r.Connections),
		r.ConnectionsRemaining, latencyUS(r), r.Attempts, r.LastError)
	if err != nil {
		return translate(err, "revocation not found")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ENOTFOUND, "revocation not found")
	}
	return nil
}

// FindRevocation returns one of the tenant's revocations.
func (s *Store) FindRevocation(ctx context.Context, tenantID string, id int64) (*controlplane.Revocation, error) {
	r, err := scanRevocation(s.db.QueryRow(ctx, `SELECT `+revocationColumns+` FROM revocations
		WHERE tenant_id = $1 AND id = $2`, tenantID, id))
	if err != nil {
		return nil, translate(err, "revocation not found")
	}
	return r, nil
}

// FindLatestRevocation returns the newest revocation of a vehicle or grant
// (kind RevokeVehicle or RevokeGrant, targetID its vehicle ID or grant ID).
func (s *Store) FindLatestRevocation(ctx context.Context, tenantID, kind, targetID string) (*controlplane.Revocation, error) {
	r, err := scanRevocation(s.db.QueryRow(ctx, `SELECT `+revocationColumns+` FROM revocations
		WHERE tenant_id = $1 AND kind = $2 AND target_id = $3
		ORDER BY id DESC LIMIT 1`, tenantID, kind, targetID))
	if err != nil {
		return nil, translate(err, "revocation not found")
	}
	return r, nil
}
