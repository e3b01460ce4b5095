package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// fleetColumns reads a fleet row aliased f, with its vehicle count.
const fleetColumns = `f.id, f.tenant_id, f.slug, f.name, f.description, f.environment, f.region,
	(SELECT count(*) FROM vehicles v WHERE v.tenant_id = f.tenant_id AND v.fleet_id = f.id),
	f.created_at, f.updated_at`

func scanFleet(row pgx.Row) (*controlplane.Fleet, error) {
	f := &controlplane.Fleet{}
	err := row.Scan(&f.ID, &f.TenantID, &f.Slug, &f.Name, &f.Description, &f.Environment, &f.Region,
		&f.VehicleCount, &f.CreatedAt, &f.UpdatedAt)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// CreateFleet inserts f and sets its ID, CreatedAt and UpdatedAt. A slug
// the tenant uses already is ECONFLICT.
func (s *Store) CreateFleet(ctx context.Context, f *controlplane.Fleet) error {
	err := s.db.QueryRow(ctx, `
		INSERT INTO fleets (tenant_id, slug, name, description, environment, region)
		VALUES ($1, $2, $3, $4, $5, $6)
		RETURNING id, created_at, updated_at`,
		f.TenantID, f.Slug, f.Name, f.Description, f.Environment, f.Region,
	).Scan(&f.ID, &f.CreatedAt, &f.UpdatedAt)
	if isCode(err, codeForeignKeyViolation) || isCode(err, codeInvalidText) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "tenant not found")
	}
	if err != nil {
		return translate(err, "fleet not found")
	}
	f.VehicleCount = 0
	return nil
}

// FindFleetBySlug returns one of the tenant's fleets.
func (s *Store) FindFleetBySlug(ctx context.Context, tenantID, slug string) (*controlplane.Fleet, error) {
	f, err := scanFleet(s.db.QueryRow(ctx, `SELECT `+fleetColumns+` FROM fleets f WHERE f.tenant_id = $1 AND f.slug = $2`, tenantID, slug))
	if err != nil {
		return nil, translate(err, "fleet not found")
	}
	return f, nil
}

func (s *Store) findFleetByID(ctx context.Context, tenantID string, id int64) (*controlplane.Fleet, error) {
	f, err := scanFleet(s.db.QueryRow(ctx, `SELECT `+fleetColumns+` FROM fleets f WHERE f.tenant_id = $1 AND f.id = $2`, tenantID, id))
	if err != nil {
		return nil, translate(err, "fleet not found")
	}
	return f, nil
}

// FindFleets lists the tenant's fleets by slug.
func (s *Store) FindFleets(ctx context.Context, tenantID string, ff controlplane.FleetFilter) ([]*controlplane.Fleet, error) {
	w := newWhere("f.tenant_id", tenantID)
	if ff.After != "" {
		w.add("f.slug > ?", ff.After)
	}
	q := `SELECT ` + fleetColumns + ` FROM fleets f ` + w.String() + ` ORDER BY f.slug` + w.limit(ff.Limit)
	rows, err := s.db.Query(ctx, q, w.args...)
	fleets, err := collect(rows, err, scanFleet)
	if err != nil {
		return nil, translate(err, "tenant not found")
	}
	return fleets, nil
}

// UpdateFleet changes the fields of u that are set and returns the fleet.
func (s *Store) UpdateFleet(ctx context.Context, tenantID string, id int64, u controlplane.FleetUpdate) (*controlplane.Fleet, error) {
	if u.Name == nil && u.Description == nil {
		return s.findFleetByID(ctx, tenantID, id)
	}
	f, err := scanFleet(s.db.QueryRow(ctx, `
		UPDATE fleets f SET
			name = coalesce($3, f.name),
			description = coalesce($4, f.description),
			updated_at = now()
		WHERE f.tenant_id = $1 AND f.id = $2
		RETURNING `+fleetColumns,
		tenantID, id, u.Name, u.Description))
	if err != nil {
		return nil, translate(err, "fleet not found")
	}
	return f, nil
}

// DeleteFleet deletes an empty fleet; one that still has vehicles is
// ECONFLICT (the vehicles' foreign key restricts the delete).
func (s *Store) DeleteFleet(ctx context.Context, tenantID string, id int64) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM fleets WHERE tenant_id = $1 AND id = $2`, tenantID, id)
	if isCode(err, codeForeignKeyViolation) {
		return controlplane.Errorf(controlplane.ECONFLICT, "fleet still has vehicles")
	} else if err != nil {
		return translate(err, "fleet not found")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ENOTFOUND, "fleet not found")
	}
	return nil
}
