package postgres

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

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

// TestIdentityListPlans: the newest-first keyset queries of tokens and
// grants read their (..., created_at, id) index backwards, the cursor's
// row comparison included, with no sort.
func TestIdentityListPlans(t *testing.T) {
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
	for _, after := range []string{"", "abcdefghijklmnop"} {
		for table, query := range map[string]func() (string, []any){
			"enrollment_tokens": func() (string, []any) {
				return findEnrollmentTokensQuery(tenant, controlplane.EnrollmentTokenFilter{FleetID: 1, After: after, Limit: 51})
			},
			"grants": func() (string, []any) {
				return findGrantsQuery(tenant, controlplane.GrantFilter{After: after, Limit: 51})
			},
		} {
			q, args := query()
			rows, err := conn.Query(ctx, "EXPLAIN "+q, args...)
			if err != nil {
				t.Fatal(err)
			}
			plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			text := strings.Join(plan, "\n")
			if strings.Contains(text, "Seq Scan on "+table) || strings.Contains(text, "Sort") || !strings.Contains(text, "Index Scan Backward") ||
				(after != "" && !strings.Contains(text, "ROW(created_at, id) < ROW(")) {
				t.Errorf("%s after %q: no index serves the query:\n%s", table, after, text)
			}
		}
	}
}
