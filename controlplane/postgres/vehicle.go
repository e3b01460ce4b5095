package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// vehicleColumns reads a vehicle row aliased v joined with its fleet f.
const vehicleColumns = `v.id, v.tenant_id, v.fleet_id, f.slug, v.vehicle_id, v.name, v.labels, v.status,
	v.created_at, v.updated_at, v.enrolled_at, v.last_seen_at,
	coalesce(v.user_public_key, ''), v.credentials_expire_at, v.hostname, v.arch, v.agent_version,
	v.online, v.hub_node, v.last_disconnect_reason`

// vehicleJoin joins a vehicle to its fleet. The fleet key includes the
// tenant, as the foreign key does.
const vehicleJoin = ` JOIN fleets f ON f.tenant_id = v.tenant_id AND f.id = v.fleet_id `

func scanVehicle(row pgx.Row) (*controlplane.Vehicle, error) {
	v := &controlplane.Vehicle{}
	var status string
	err := row.Scan(&v.ID, &v.TenantID, &v.FleetID, &v.FleetSlug, &v.VehicleID, &v.Name, &v.Labels, &status,
		&v.CreatedAt, &v.UpdatedAt, &v.EnrolledAt, &v.LastSeenAt,
		&v.UserPublicKey, &v.CredentialsExpireAt, &v.Hostname, &v.Arch, &v.AgentVersion,
		&v.Online, &v.HubNode, &v.LastDisconnectReason)
	if err != nil {
		return nil, err
	}
	v.Status = controlplane.VehicleStatus(status)
	if v.Labels == nil {
		v.Labels = map[string]string{}
	}
	return v, nil
}

// CreateVehicle inserts v and sets its ID, FleetSlug, CreatedAt and
// UpdatedAt; an empty Status is pending, an empty UserPublicKey none. A
// fleet that is missing or belongs to another tenant is ENOTFOUND; a
// vehicle ID the tenant uses already is ECONFLICT, and so is a user key
// bound to another vehicle or grant. The vehicle's vehicle-day of today is
// recorded in the same statement (usage.go).
func (s *Store) CreateVehicle(ctx context.Context, v *controlplane.Vehicle) error {
	labels := v.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	status := v.Status
	if status == "" {
		status = controlplane.VehiclePending
	}
	err := s.db.QueryRow(ctx, `
		WITH v AS (
			INSERT INTO vehicles (tenant_id, fleet_id, vehicle_id, name, labels, status, enrolled_at, last_seen_at,
				user_public_key, credentials_expire_at, hostname, arch, agent_version)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, nullif($9, ''), $10, $11, $12, $13)
			RETURNING id, tenant_id, fleet_id, vehicle_id, status, created_at, updated_at
		), d AS (
			-- The vehicle-day of its creation, at once (usage.go).
			INSERT INTO usage_vehicle_days (tenant_id, day, vehicle_id)
			SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, vehicle_id FROM v WHERE status <> 'revoked'
			ON CONFLICT (tenant_id, day, vehicle_id) DO NOTHING
		)
		SELECT v.id, f.slug, v.created_at, v.updated_at FROM v`+vehicleJoin,
		v.TenantID, v.FleetID, v.VehicleID, v.Name, labels, string(status), v.EnrolledAt, v.LastSeenAt,
		v.UserPublicKey, v.CredentialsExpireAt, v.Hostname, v.Arch, v.AgentVersion,
	).Scan(&v.ID, &v.FleetSlug, &v.CreatedAt, &v.UpdatedAt)
	if isCode(err, codeForeignKeyViolation) || isCode(err, codeInvalidText) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "fleet not found")
	} else if err != nil {
		return translate(err, "vehicle not found")
	}
	v.Labels, v.Status = labels, status
	return nil
}

// FindVehicle returns a vehicle of one of the tenant's fleets by vehicle ID.
func (s *Store) FindVehicle(ctx context.Context, tenantID string, fleetID int64, vehicleID string) (*controlplane.Vehicle, error) {
	v, err := scanVehicle(s.db.QueryRow(ctx, `SELECT `+vehicleColumns+` FROM vehicles v`+vehicleJoin+`
		WHERE v.tenant_id = $1 AND v.fleet_id = $2 AND v.vehicle_id = $3`, tenantID, fleetID, vehicleID))
	if err != nil {
		return nil, translate(err, "vehicle not found")
	}
	return v, nil
}

func (s *Store) findVehicleByID(ctx context.Context, tenantID string, id int64) (*controlplane.Vehicle, error) {
	v, err := scanVehicle(s.db.QueryRow(ctx, `SELECT `+vehicleColumns+` FROM vehicles v`+vehicleJoin+`
		WHERE v.tenant_id = $1 AND v.id = $2`, tenantID, id))
	if err != nil {
		return nil, translate(err, "vehicle not found")
	}
	return v, nil
}

// FindVehicles lists the tenant's vehicles by vehicle ID (bytewise: the
// column is COLLATE "C"), one page after f.After.
func (s *Store) FindVehicles(ctx context.Context, tenantID string, f controlplane.VehicleFilter) ([]*controlplane.Vehicle, error) {
	q, args := findVehiclesQuery(tenantID, f)
	rows, err := s.db.Query(ctx, q, args...)
	vs, err := collect(rows, err, scanVehicle)
	if err != nil {
		return nil, translate(err, "tenant not found")
	}
	return vs, nil
}

// findVehiclesQuery builds the keyset query of FindVehicles. Each filter is
// a condition the indexes serve: (tenant_id, fleet_id, vehicle_id) or
// (tenant_id, vehicle_id) for the order and the ranges, the GIN index for
// labels.
func findVehiclesQuery(tenantID string, f controlplane.VehicleFilter) (string, []any) {
	w := newWhere("v.tenant_id", tenantID)
	if f.FleetID != nil {
		w.add("v.fleet_id = ?", *f.FleetID)
	}
	if f.FleetSlug != nil {
		w.add("f.slug = ?", *f.FleetSlug)
	}
	if f.Status != nil {
		w.add("v.status = ?", string(*f.Status))
	}
	if f.VehicleIDPrefix != nil && *f.VehicleIDPrefix != "" {
		// A range rather than LIKE: it needs no escaping of '_' and stays
		// an index range scan in generic (cached) plans. Every string that
		// starts with p sorts in [p, p+"\x7f") bytewise, because vehicle IDs
		// are ASCII below 0x7f.
		p := *f.VehicleIDPrefix
		w.add("v.vehicle_id >= ? AND v.vehicle_id < ?", p, p+"\x7f")
	}
	if f.Label != nil {
		w.add("v.labels @> ?::jsonb", map[string]string{f.Label.Key: f.Label.Value})
	}
	if f.Online != nil {
		w.add("v.online = ?", *f.Online)
	}
	if f.After != "" {
		w.add("v.vehicle_id > ?", f.After)
	}
	q := `SELECT ` + vehicleColumns + ` FROM vehicles v` + vehicleJoin + w.String() + ` ORDER BY v.vehicle_id` + w.limit(f.Limit)
	return q, w.args
}

// CountVehicles counts the tenant's vehicles in every fleet and status (the
// billable unit).
func (s *Store) CountVehicles(ctx context.Context, tenantID string) (int, error) {
	var n int
	err := s.db.QueryRow(ctx, `SELECT count(*) FROM vehicles WHERE tenant_id = $1`, tenantID).Scan(&n)
	if err != nil {
		return 0, translate(err, "tenant not found")
	}
	return n, nil
}

// UpdateVehicle applies the fields of c that are set and returns the
// vehicle. Labels, when set, replace all labels.
func (s *Store) UpdateVehicle(ctx context.Context, tenantID string, id int64, c controlplane.VehicleChange) (*controlplane.Vehicle, error) {
	if c.Name == nil && c.Labels == nil && c.Status == nil {
		return s.findVehicleByID(ctx, tenantID, id)
	}
	var labels map[string]string // nil: unchanged
	if c.Labels != nil {
		labels = *c.Labels
		if labels == nil {
			labels = map[string]string{}
		}
	}
	var status *string
	if c.Status != nil {
		st := string(*c.Status)
		status = &st
	}
	v, err := scanVehicle(s.db.QueryRow(ctx, `
		WITH v AS (
			UPDATE vehicles SET
				name = coalesce($3, name),
				labels = coalesce($4::jsonb, labels),
				status = coalesce($5, status),
				updated_at = now()
			WHERE tenant_id = $1 AND id = $2
			RETURNING *
		)
		SELECT `+vehicleColumns+` FROM v`+vehicleJoin,
		tenantID, id, c.Name, labels, status))
	if err != nil {
		return nil, translate(err, "vehicle not found")
	}
	return v, nil
}

// DeleteVehicle deletes one of the tenant's vehicles.
func (s *Store) DeleteVehicle(ctx context.Context, tenantID string, id int64) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM vehicles WHERE tenant_id = $1 AND id = $2`, tenantID, id)
	if err != nil {
		return translate(err, "vehicle not found")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ENOTFOUND, "vehicle not found")
	}
	return nil
}
