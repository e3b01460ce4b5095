package pgtest_test

import (
	"context"
	"strings"
	"testing"

	"github.com/fleetplane/fleetplane/internal/pgtest"
)

func TestSnapshot(t *testing.T) {
	pool := pgtest.NewPool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO tenants (name, plan) VALUES ('Acme', 'free')`); err != nil {
		t.Fatal(err)
	}
	before := pgtest.Snapshot(t, pool, "tenants.updated_at")
	if _, err := pool.Exec(ctx, `UPDATE tenants SET updated_at = now() + interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
	if d := pgtest.DiffSnapshots(before, pgtest.Snapshot(t, pool, "tenants.updated_at")); d != "" {
		t.Fatalf("an ignored column changed the snapshot: %s", d)
	}
	if _, err := pool.Exec(ctx, `UPDATE tenants SET name = 'Acme 2'`); err != nil {
		t.Fatal(err)
	}
	d := pgtest.DiffSnapshots(before, pgtest.Snapshot(t, pool, "tenants.updated_at"))
	if !strings.HasPrefix(d, "tenants: 1 rows") || strings.Contains(d, ";") {
		t.Fatalf("diff after a change = %q", d)
	}
}
