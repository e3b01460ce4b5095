package postgres

import (
	"context"
	"strings"
	"testing"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// TestFindVehiclesPlans checks that the indexes can serve every vehicle
// query: with sequential scans and sorts priced out, a plan that still
// holds one means no index fits (a collation mismatch between ORDER BY and
// the index would show up as a Sort).
func TestFindVehiclesPlans(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET enable_seqscan = off; SET enable_sort = off`); err != nil {
		t.Fatal(err)
	}
	const tenant = "00000000-0000-0000-0000-000000000001"
	fleet := int64(1)
	status := controlplane.VehicleActive
	for _, tc := range []struct {
		name string
		f    controlplane.VehicleFilter
	}{
		{"fleet page", controlplane.VehicleFilter{FleetID: &fleet, After: "v0100", Limit: 51}},
		{"fleet prefix", controlplane.VehicleFilter{FleetID: &fleet, VehicleIDPrefix: ptr("dr"), Limit: 51}},
		{"tenant page", controlplane.VehicleFilter{After: "v0100", Limit: 51}},
		{"fleet status", controlplane.VehicleFilter{FleetID: &fleet, Status: &status, Limit: 51}},
		{"label", controlplane.VehicleFilter{Label: &controlplane.LabelSelector{Key: "site", Value: "north"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, args := findVehiclesQuery(tenant, tc.f)
			rows, err := conn.Query(ctx, "EXPLAIN "+q, args...)
			if err != nil {
				t.Fatal(err)
			}
			var plan []string
			for rows.Next() {
				var line string
				if err := rows.Scan(&line); err != nil {
					t.Fatal(err)
				}
				plan = append(plan, line)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			text := strings.Join(plan, "\n")
			if strings.Contains(text, "Seq Scan on vehicles") || strings.Contains(text, "Sort") {
				t.Errorf("no index serves the query:\n%s", text)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
