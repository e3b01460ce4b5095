package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Telemetry side of the store (controlplane.TelemetryStore): the records of
// the tenants' history streams (migration 000007) and the fleet lookups the
// digital twin needs.

const tenantStreamColumns = `tenant_id, region, stream, config_hash, replicas, max_age_seconds, max_bytes,
	duplicates_seconds, provisioned_at, updated_at`

func scanTenantStream(row pgx.Row) (*controlplane.TenantStream, error) {
	ts := &controlplane.TenantStream{}
	var maxAge, dup int64
	if err := row.Scan(&ts.TenantID, &ts.Region, &ts.Stream, &ts.ConfigHash, &ts.Replicas, &maxAge, &ts.MaxBytes,
		&dup, &ts.ProvisionedAt, &ts.UpdatedAt); err != nil {
		return nil, err
	}
	ts.MaxAge, ts.Duplicates = time.Duration(maxAge)*time.Second, time.Duration(dup)*time.Second
	return ts, nil
}

// FindTenantStreams lists a tenant's provisioned history streams by region.
func (s *Store) FindTenantStreams(ctx context.Context, tenantID string) ([]*controlplane.TenantStream, error) {
	rows, err := s.db.Query(ctx, `SELECT `+tenantStreamColumns+` FROM tenant_streams WHERE tenant_id = $1 ORDER BY region`, tenantID)
	out, err := collect(rows, err, scanTenantStream)
	if err != nil {
		return nil, translate(err, "tenant not found")
	}
	return out, nil
}

// SetTenantStream inserts or replaces the record of (TenantID, Region); the
// first insert's ProvisionedAt is kept. A missing tenant is ENOTFOUND.
func (s *Store) SetTenantStream(ctx context.Context, ts *controlplane.TenantStream) error {
	err := s.db.QueryRow(ctx, `
		INSERT INTO tenant_streams (tenant_id, region, stream, config_hash, replicas, max_age_seconds, max_bytes, duplicates_seconds)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (tenant_id, region) DO UPDATE SET
			stream = excluded.stream, config_hash = excluded.config_hash, replicas = excluded.replicas,
			max_age_seconds = excluded.max_age_seconds, max_bytes = excluded.max_bytes,
			duplicates_seconds = excluded.duplicates_seconds, updated_at = now()
		RETURNING provisioned_at, updated_at`,
		ts.TenantID, ts.Region, ts.Stream, ts.ConfigHash, ts.Replicas, int64(ts.MaxAge/time.Second), ts.MaxBytes,
		int64(ts.Duplicates/time.Second),
	).Scan(&ts.ProvisionedAt, &ts.UpdatedAt)
	if isCode(err, codeForeignKeyViolation) || isCode(err, codeInvalidText) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "tenant not found")
	}
	return translate(err, "tenant stream not found")
}

// FindFleetRegions lists the distinct regions of a tenant's fleets.
func (s *Store) FindFleetRegions(ctx context.Context, tenantID string) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT DISTINCT region FROM fleets WHERE tenant_id = $1 ORDER BY region`, tenantID)
	out, err := collect(rows, err, scanString)
	if err != nil {
		return nil, translate(err, "tenant not found")
	}
	return out, nil
}

// FindVehicleIDs lists a fleet's vehicle IDs in order, after `after`.
func (s *Store) FindVehicleIDs(ctx context.Context, tenantID string, fleetID int64, after string, limit int) ([]string, error) {
	rows, err := s.db.Query(ctx, `
		SELECT vehicle_id FROM vehicles
		WHERE tenant_id = $1 AND fleet_id = $2 AND vehicle_id > $3
		ORDER BY vehicle_id LIMIT $4`, tenantID, fleetID, after, limit)
	out, err := collect(rows, err, scanString)
	if err != nil {
		return nil, translate(err, "tenant not found")
	}
	return out, nil
}

func scanString(row pgx.Row) (string, error) {
	var s string
	err := row.Scan(&s)
	return s, err
}
