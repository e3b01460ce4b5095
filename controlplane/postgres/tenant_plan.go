package postgres

import (
	"context"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Tenant plans and their grace (migration 000008, controlplane/plan.go).

const tenantColumns = `id, name, plan, coalesce(grace_plan, ''), grace_until, coalesce(stripe_customer_id, ''), billing_status, created_at, updated_at`

func tenantDest(t *controlplane.Tenant) []any {
	return []any{&t.ID, &t.Name, &t.Plan, &t.GracePlan, &t.GraceUntil, &t.StripeCustomerID, &t.BillingStatus, &t.CreatedAt, &t.UpdatedAt}
}

// LockTenant returns a tenant with its row locked FOR NO KEY UPDATE (which
// does not block inserts of rows referencing it).
func (s *Store) LockTenant(ctx context.Context, id string) (*controlplane.Tenant, error) {
	t := &controlplane.Tenant{}
	err := s.db.QueryRow(ctx, `SELECT `+tenantColumns+` FROM tenants WHERE id = $1 FOR NO KEY UPDATE`, id).
		Scan(tenantDest(t)...)
	if err != nil {
		return nil, translate(err, "tenant not found")
	}
	return t, nil
}

// UpdateTenantPlan stores t's plan and grace and sets UpdatedAt.
func (s *Store) UpdateTenantPlan(ctx context.Context, t *controlplane.Tenant) error {
	var grace *string
	if t.GracePlan != "" {
		grace = &t.GracePlan
	}
	err := s.db.QueryRow(ctx, `
		UPDATE tenants SET plan = $2, grace_plan = $3, grace_until = $4, updated_at = now()
		WHERE id = $1 RETURNING updated_at`, t.ID, t.Plan, grace, t.GraceUntil,
	).Scan(&t.UpdatedAt)
	return translate(err, "tenant not found")
}

// FindTenantsGraceExpired returns the tenants whose grace ended by at.
func (s *Store) FindTenantsGraceExpired(ctx context.Context, at time.Time, limit int) ([]string, error) {
	rows, err := s.db.Query(ctx, `
		SELECT id FROM tenants WHERE grace_until <= $1 ORDER BY grace_until LIMIT $2`, at, limit)
	if err != nil {
		return nil, translate(err, "")
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, translate(rows.Err(), "")
}

// CountActiveGrants counts a tenant's unrevoked grants not expired at at.
func (s *Store) CountActiveGrants(ctx context.Context, tenantID string, at time.Time) (int, error) {
	var n int
	err := s.db.QueryRow(ctx, `
		SELECT count(*) FROM grants WHERE tenant_id = $1 AND revoked_at IS NULL AND expires_at > $2`,
		tenantID, at).Scan(&n)
	if err != nil {
		return 0, translate(err, "tenant not found")
	}
	return n, nil
}
