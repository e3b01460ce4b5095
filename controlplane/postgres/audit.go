package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

const auditColumns = `id, tenant_id, at, actor_type, actor_id, action, target_type, target_id, source_ip, request_id, details`

func scanAuditEvent(row pgx.Row) (*controlplane.AuditEvent, error) {
	e := &controlplane.AuditEvent{}
	err := row.Scan(&e.ID, &e.TenantID, &e.At, &e.ActorType, &e.ActorID, &e.Action, &e.TargetType, &e.TargetID,
		&e.SourceIP, &e.RequestID, &e.Details)
	if err != nil {
		return nil, err
	}
	return e, nil
}

// CreateAuditEvent inserts e and sets its ID, and its At unless set: the
// transaction's start time, so that every event of one change has the same.
func (s *Store) CreateAuditEvent(ctx context.Context, e *controlplane.AuditEvent) error {
	var at *time.Time
	if !e.At.IsZero() {
		at = &e.At
	}
	err := s.db.QueryRow(ctx, `
		INSERT INTO audit_events (tenant_id, at, actor_type, actor_id, action, target_type, target_id, source_ip, request_id, details)
		VALUES ($1, coalesce($2, now()), $3, $4, $5, $6, $7, $8, $9, $10)
		RETURNING id, at`,
		e.TenantID, at, e.ActorType, e.ActorID, e.Action, e.TargetType, e.TargetID, e.SourceIP, e.RequestID, e.Details,
	).Scan(&e.ID, &e.At)
	if isCode(err, codeForeignKeyViolation) || isCode(err, codeInvalidText) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "tenant not found")
	}
	return translate(err, "audit event not found")
}

// FindAuditEvents lists the tenant's events newest first (by ID), with IDs
// below f.Before when it is set. Since is inclusive, Until exclusive.
func (s *Store) FindAuditEvents(ctx context.Context, tenantID string, f controlplane.AuditFilter) ([]*controlplane.AuditEvent, error) {
	w := newWhere("tenant_id", tenantID)
	if f.Action != nil {
		w.add("action = ?", *f.Action)
	}
	if f.TargetType != nil {
		w.add("target_type = ?", *f.TargetType)
	}
	if f.TargetID != nil {
		w.add("target_id = ?", *f.TargetID)
	}
	if f.Since != nil {
		w.add("at >= ?", *f.Since)
	}
	if f.Until != nil {
		w.add("at < ?", *f.Until)
	}
	if f.Before > 0 {
		w.add("id < ?", f.Before)
	}
	q := `SELECT ` + auditColumns + ` FROM audit_events ` + w.String() + ` ORDER BY id DESC` + w.limit(f.Limit)
	rows, err := s.db.Query(ctx, q, w.args...)
	evs, err := collect(rows, err, scanAuditEvent)
	if err != nil {
		return nil, translate(err, "tenant not found")
	}
	return evs, nil
}
