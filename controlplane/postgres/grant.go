package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// grantColumns reads a grant row. Scopes and time windows are jsonb in the
// domain types' JSON form; source CIDRs come back as canonical text.
const grantColumns = `id, tenant_id, description, user_public_key, scopes, publish, subscribe, expires_at,
	source_cidrs::text[], time_windows, locale, connection_types, region, created_by, created_at, revoked_at`

func scanGrant(row pgx.Row) (*controlplane.Grant, error) {
	g := &controlplane.Grant{}
	err := row.Scan(&g.ID, &g.TenantID, &g.Description, &g.UserPublicKey, &g.Scopes, &g.Publish, &g.Subscribe, &g.ExpiresAt,
		&g.SourceCIDRs, &g.TimeWindows, &g.Locale, &g.ConnectionTypes, &g.Region, &g.CreatedBy, &g.CreatedAt, &g.RevokedAt)
	if err != nil {
		return nil, err
	}
	g.Scopes, g.TimeWindows = nonNil(g.Scopes), nonNil(g.TimeWindows)
	return g, nil
}

// CreateGrant inserts g and sets its CreatedAt. A missing tenant is
// ENOTFOUND; a user key bound to another grant or a vehicle is ECONFLICT;
// a CIDR that is not a canonical prefix is EINVALID.
func (s *Store) CreateGrant(ctx context.Context, g *controlplane.Grant) error {
	cidrs, err := canonicalCIDRs(g.SourceCIDRs)
	if err != nil {
		return err
	}
	err = s.db.QueryRow(ctx, `
		INSERT INTO grants (id, tenant_id, description, user_public_key, scopes, publish, subscribe, expires_at,
			source_cidrs, time_windows, locale, connection_types, region, created_by, revoked_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text[]::cidr[], $10, $11, $12, $13, $14, $15)
		RETURNING created_at`,
		g.ID, g.TenantID, g.Description, g.UserPublicKey, nonNil(g.Scopes), nonNil(g.Publish), nonNil(g.Subscribe), g.ExpiresAt,
		cidrs, nonNil(g.TimeWindows), g.Locale, nonNil(g.ConnectionTypes), g.Region, g.CreatedBy, g.RevokedAt,
	).Scan(&g.CreatedAt)
	if isCode(err, codeForeignKeyViolation) || isCode(err, codeInvalidText) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "tenant not found")
	} else if err != nil {
		return translate(err, "grant not found")
	}
	g.SourceCIDRs = cidrs
	return nil
}

// FindGrant returns one of the tenant's grants, revoked or expired or not.
func (s *Store) FindGrant(ctx context.Context, tenantID, id string) (*controlplane.Grant, error) {
	g, err := scanGrant(s.db.QueryRow(ctx, `SELECT `+grantColumns+` FROM grants WHERE tenant_id = $1 AND id = $2`, tenantID, id))
	if err != nil {
		return nil, translate(err, "grant not found")
	}
	return g, nil
}

// FindGrants lists the tenant's grants newest first: by created_at, then
// ID, both descending, f.After being the ID of the previous page's last
// grant (see FindEnrollmentTokens). Unless f.IncludeInactive, grants that
// are revoked or expired at f.Now (the database's clock when zero) are left
// out.
func (s *Store) FindGrants(ctx context.Context, tenantID string, f controlplane.GrantFilter) ([]*controlplane.Grant, error) {
	q, args := findGrantsQuery(tenantID, f)
	rows, err := s.db.Query(ctx, q, args...)
	gs, err := collect(rows, err, scanGrant)
	if err != nil {
		return nil, translate(err, "tenant not found")
	}
	return gs, nil
}

// findGrantsQuery builds the keyset query of FindGrants, served by the
// index on (tenant_id, created_at, id) read backwards.
func findGrantsQuery(tenantID string, f controlplane.GrantFilter) (string, []any) {
	w := newWhere("tenant_id", tenantID)
	if !f.IncludeInactive {
		var now *time.Time
		if !f.Now.IsZero() {
			now = &f.Now
		}
		w.add("revoked_at IS NULL AND expires_at > coalesce(?::timestamptz, now())", now)
	}
	if f.After != "" {
		w.add("(created_at, id) < (SELECT c.created_at, c.id FROM grants c WHERE c.tenant_id = $1 AND c.id = ?)", f.After)
	}
	q := `SELECT ` + grantColumns + ` FROM grants ` + w.String() + ` ORDER BY created_at DESC, id DESC` + w.limit(f.Limit)
	return q, w.args
}

// RevokeGrant sets revoked_at; a missing or already revoked grant is
// ENOTFOUND.
func (s *Store) RevokeGrant(ctx context.Context, tenantID, id string, at time.Time) error {
	tag, err := s.db.Exec(ctx, `
		UPDATE grants SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL`,
		tenantID, id, at)
	if err != nil {
		return translate(err, "grant not found")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ENOTFOUND, "grant not found")
	}
	return nil
}
