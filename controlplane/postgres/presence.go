package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Presence is keyed by the vehicle's user key (unique across tenants); the
// account join makes sure an event from one account never touches another
// tenant's vehicle. The rules are controlplane/presence.go's; the
// conditions in the WHERE clauses are what makes them hold under concurrent
// writers (several replicas, events racing a reconciliation): Postgres
// re-checks them on the locked row.

// SetVehicleOnline records connection c as the vehicle's open link unless
// the recorded link started at or after c.Start. In the same statement, a
// vehicle that came online gets its vehicle-day of at's UTC day marked
// online (usage.go).
func (s *Store) SetVehicleOnline(ctx context.Context, c controlplane.LeafConn, at time.Time) (bool, error) {
	var n int
	err := s.db.QueryRow(ctx, `
		WITH u AS (
			UPDATE vehicles v SET
				online = true, hub_node = $2, presence_conn_id = $3, presence_conn_start = $4,
				last_seen_at = greatest(v.last_seen_at, $5::timestamptz)
			FROM nats_accounts a
			WHERE v.user_public_key = $1 AND a.tenant_id = v.tenant_id AND a.public_key = $6
			  AND (v.presence_conn_start IS NULL OR v.presence_conn_start < $4)
			RETURNING v.tenant_id, v.vehicle_id, v.status
		), d AS (
			INSERT INTO usage_vehicle_days (tenant_id, day, vehicle_id, online)
			SELECT tenant_id, ($5::timestamptz AT TIME ZONE 'UTC')::date, vehicle_id, true FROM u WHERE status <> 'revoked'
			ON CONFLICT (tenant_id, day, vehicle_id) DO UPDATE SET online = true WHERE NOT usage_vehicle_days.online
		)
		SELECT count(*) FROM u`,
		c.User, c.Node, int64(c.ID), c.Start, at, c.Account).Scan(&n)
	if err != nil {
		return false, translate(err, "vehicle not found")
	}
	return n > 0, nil
}

// SetVehicleOffline records that connection c closed, when c is the
// recorded link or started after it.
func (s *Store) SetVehicleOffline(ctx context.Context, c controlplane.LeafConn, at time.Time, reason string) (bool, error) {
	tag, err := s.db.Exec(ctx, `
		UPDATE vehicles v SET
			online = false, hub_node = $2, presence_conn_id = $3, presence_conn_start = $4,
			last_seen_at = greatest(v.last_seen_at, $5), last_disconnect_reason = $7
		FROM nats_accounts a
		WHERE v.user_public_key = $1 AND a.tenant_id = v.tenant_id AND a.public_key = $6
		  AND (v.presence_conn_start IS NULL OR v.presence_conn_start < $4
		       OR (v.presence_conn_start = $4 AND v.hub_node = $2 AND v.presence_conn_id = $3))`,
		c.User, c.Node, int64(c.ID), c.Start, at, c.Account, reason)
	if err != nil {
		return false, translate(err, "vehicle not found")
	}
	return tag.RowsAffected() > 0, nil
}

// FindVehiclePresence returns every online vehicle and every vehicle
// holding one of userKeys.
func (s *Store) FindVehiclePresence(ctx context.Context, userKeys []string) ([]*controlplane.VehiclePresence, error) {
	if userKeys == nil {
		userKeys = []string{}
	}
	rows, err := s.db.Query(ctx, `
		SELECT v.tenant_id, v.vehicle_id, v.user_public_key, coalesce(a.public_key, ''),
			v.online, v.hub_node, v.presence_conn_id, v.presence_conn_start,
			v.last_seen_at, v.last_disconnect_reason
		FROM vehicles v LEFT JOIN nats_accounts a ON a.tenant_id = v.tenant_id
		WHERE v.user_public_key IS NOT NULL AND (v.online OR v.user_public_key = ANY($1))`, userKeys)
	out, err := collect(rows, err, func(row pgx.Row) (*controlplane.VehiclePresence, error) {
		p := &controlplane.VehiclePresence{}
		var id *int64
		var start *time.Time
		if err := row.Scan(&p.TenantID, &p.VehicleID, &p.UserKey, &p.Account, &p.Online, &p.HubNode,
			&id, &start, &p.LastSeenAt, &p.LastDisconnectReason); err != nil {
			return nil, err
		}
		if id != nil {
			p.ConnID = uint64(*id)
		}
		if start != nil {
			p.ConnStart = *start
		}
		return p, nil
	})
	if err != nil {
		return nil, translate(err, "vehicle not found")
	}
	return out, nil
}

// presenceBatch bounds the rows of one UpdateVehiclePresence statement.
const presenceBatch = 1000

// UpdateVehiclePresence applies the changes whose From matches the row, a
// batch per statement.
func (s *Store) UpdateVehiclePresence(ctx context.Context, changes []controlplane.PresenceChange) (int, error) {
	total := 0
	for len(changes) > 0 {
		n := min(len(changes), presenceBatch)
		k, err := s.updatePresence(ctx, changes[:n])
		total += k
		if err != nil {
			return total, err
		}
		changes = changes[n:]
	}
	return total, nil
}

func (s *Store) updatePresence(ctx context.Context, changes []controlplane.PresenceChange) (int, error) {
	n := len(changes)
	var (
		keys                 = make([]string, n)
		fromOnline, toOnline = make([]bool, n), make([]bool, n)
		fromNode, toNode     = make([]string, n), make([]string, n)
		fromID, toID         = make([]*int64, n), make([]*int64, n)
		fromStart, toStart   = make([]*time.Time, n), make([]*time.Time, n)
		lastSeen             = make([]time.Time, n)
		reasons              = make([]string, n)
	)
	conn := func(st controlplane.PresenceState) (*int64, *time.Time) {
		if st.ConnStart.IsZero() {
			return nil, nil
		}
		id, start := int64(st.ConnID), st.ConnStart
		return &id, &start
	}
	for i, c := range changes {
		keys[i], reasons[i], lastSeen[i] = c.UserKey, c.Reason, c.LastSeenAt
		fromOnline[i], fromNode[i] = c.From.Online, c.From.HubNode
		fromID[i], fromStart[i] = conn(c.From)
		toOnline[i], toNode[i] = c.To.Online, c.To.HubNode
		toID[i], toStart[i] = conn(c.To)
	}
	tag, err := s.db.Exec(ctx, `
		UPDATE vehicles v SET
			online = c.to_online, hub_node = c.to_node,
			presence_conn_id = c.to_id, presence_conn_start = c.to_start,
			last_seen_at = greatest(v.last_seen_at, c.last_seen),
			last_disconnect_reason = CASE WHEN c.to_online THEN v.last_disconnect_reason ELSE c.reason END
		FROM unnest($1::text[], $2::bool[], $3::text[], $4::bigint[], $5::timestamptz[],
		            $6::bool[], $7::text[], $8::bigint[], $9::timestamptz[], $10::timestamptz[], $11::text[])
			AS c(user_key, from_online, from_node, from_id, from_start,
			     to_online, to_node, to_id, to_start, last_seen, reason)
		WHERE v.user_public_key = c.user_key
		  AND v.online = c.from_online AND v.hub_node = c.from_node
		  AND v.presence_conn_id IS NOT DISTINCT FROM c.from_id
		  AND v.presence_conn_start IS NOT DISTINCT FROM c.from_start`,
		keys, fromOnline, fromNode, fromID, fromStart, toOnline, toNode, toID, toStart, lastSeen, reasons)
	if err != nil {
		return 0, translate(err, "vehicle not found")
	}
	return int(tag.RowsAffected()), nil
}
