package postgres_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// TestMigrations runs every migration up, all the way down and up again on
// an empty database, and checks the version and the tables at each step.
func TestMigrations(t *testing.T) {
	t.Parallel()
	url := pgtest.NewEmptyURL(t)
	ctx := context.Background()
	tables := func() []string {
		t.Helper()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		rows, _ := conn.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations' ORDER BY 1`)
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return names
	}
	wantVersion := func(want uint) {
		t.Helper()
		v, dirty, err := postgres.MigrateVersion(url)
		if err != nil || v != want || dirty {
			t.Fatalf("MigrateVersion = %d, %v, %v; want %d, clean", v, dirty, err, want)
		}
	}
	all := "api_keys audit_events fleets idempotency_keys memberships tenants users vehicles"

	wantVersion(0)
	for round := 1; round <= 2; round++ {
		if err := postgres.MigrateUp(url); err != nil {
			t.Fatalf("round %d: up: %v", round, err)
		}
		if err := postgres.MigrateUp(url); err != nil {
			t.Fatalf("round %d: up again (no change): %v", round, err)
		}
		wantVersion(1)
		if got := strings.Join(tables(), " "); got != all {
			t.Fatalf("round %d: tables after up = %s, want %s", round, got, all)
		}
		if round == 1 {
			if err := postgres.MigrateDown(url, 0); err != nil {
				t.Fatalf("down: %v", err)
			}
		} else if err := postgres.MigrateDown(url, 5); err != nil {
			t.Fatalf("down 5 (more than applied): %v", err)
		}
		wantVersion(0)
		if got := tables(); len(got) != 0 {
			t.Fatalf("round %d: tables left after down: %v", round, got)
		}
	}
	if err := postgres.MigrateDown(url, 0); err != nil {
		t.Errorf("down at version 0: %v", err)
	}
}

func TestMigrateBadURL(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"host=localhost dbname=x", "mysql://u:secret@h/db", "::"} {
		err := postgres.MigrateUp(u)
		if err == nil || !strings.Contains(err.Error(), "postgres://") || strings.Contains(err.Error(), "secret") {
			t.Errorf("MigrateUp(%q) = %v", u, err)
		}
	}
}
