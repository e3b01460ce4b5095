package postgres_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// TestMigrations runs every migration up, all the way down and up again on
// an empty database, and checks the version and the tables at each step,
// and that nothing of the schema (types, functions) outlives its down.
func TestMigrations(t *testing.T) {
	t.Parallel()
	url := pgtest.NewEmptyURL(t)
	ctx := context.Background()
	strings1 := func(q string) string {
		t.Helper()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		rows, _ := conn.Query(ctx, q)
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(names, " ")
	}
	tables := func() string {
		return strings1(`SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations' ORDER BY 1`)
	}
	// Functions and types other than the tables' own row types.
	others := func() string {
		return strings1(`
			SELECT 'function ' || proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
			UNION ALL
			SELECT 'type ' || typname FROM pg_type
			WHERE typnamespace = 'public'::regnamespace AND typtype <> 'c' AND typelem = 0 AND typrelid = 0
			ORDER BY 1`)
	}
	wantVersion := func(want uint) {
		t.Helper()
		v, dirty, err := postgres.MigrateVersion(url)
		if err != nil || v != want || dirty {
			t.Fatalf("MigrateVersion = %d, %v, %v; want %d, clean", v, dirty, err, want)
		}
	}
	core := "api_keys audit_events fleets idempotency_keys memberships tenants users vehicles"
	river := "river_job river_leader river_migration river_queue"
	// Tables at each version, from 1 up (compared as sorted sets).
	want := []string{
		core,
		core + " " + river + " river_client river_client_queue",
		core + " " + river + " river_notification",
		core + " " + river + " river_notification" +
			" agent_nonces enrollment_tokens grants nats_accounts nats_operator nats_user_keys revocations",
		core + " " + river + " river_notification" +
			" agent_nonces enrollment_tokens grants nats_accounts nats_operator nats_user_keys revocations" +
			" regions",
		// 6: vehicle presence adds columns only.
		core + " " + river + " river_notification" +
			" agent_nonces enrollment_tokens grants nats_accounts nats_operator nats_user_keys revocations" +
			" regions",
		core + " " + river + " river_notification" +
			" agent_nonces enrollment_tokens grants nats_accounts nats_operator nats_user_keys revocations" +
			" regions tenant_streams",
		// 8: plan grace adds columns only.
		core + " " + river + " river_notification" +
			" agent_nonces enrollment_tokens grants nats_accounts nats_operator nats_user_keys revocations" +
			" regions tenant_streams",
		core + " " + river + " river_notification" +
			" agent_nonces enrollment_tokens grants nats_accounts nats_operator nats_user_keys revocations" +
			" regions tenant_streams" +
			" billing_events billing_subscriptions usage_daily usage_hub_counters usage_reports usage_vehicle_days",
		core + " " + river + " river_notification" +
			" agent_nonces enrollment_tokens grants nats_accounts nats_operator nats_user_keys revocations" +
			" regions tenant_streams" +
			" billing_events billing_subscriptions usage_daily usage_hub_counters usage_reports usage_vehicle_days" +
			" sessions user_tokens",
		// 11: membership acceptance adds a column only.
		core + " " + river + " river_notification" +
			" agent_nonces enrollment_tokens grants nats_accounts nats_operator nats_user_keys revocations" +
			" regions tenant_streams" +
			" billing_events billing_subscriptions usage_daily usage_hub_counters usage_reports usage_vehicle_days" +
			" sessions user_tokens",
	}
	last := uint(len(want))

	wantVersion(0)
	for round := 1; round <= 2; round++ {
		if err := postgres.MigrateUp(url); err != nil {
			t.Fatalf("round %d: up: %v", round, err)
		}
		if err := postgres.MigrateUp(url); err != nil {
			t.Fatalf("round %d: up again (no change): %v", round, err)
		}
		wantVersion(last)
		if got := sortedWords(tables()); got != sortedWords(want[last-1]) {
			t.Fatalf("round %d: tables after up = %s, want %s", round, got, sortedWords(want[last-1]))
		}
		if round == 1 {
			// One step at a time: each down leaves the previous version.
			for v := last - 1; v >= 1; v-- {
				if err := postgres.MigrateDown(url, 1); err != nil {
					t.Fatalf("down to %d: %v", v, err)
				}
				wantVersion(v)
				if got := sortedWords(tables()); got != sortedWords(want[v-1]) {
					t.Fatalf("tables at version %d = %s, want %s", v, got, sortedWords(want[v-1]))
				}
			}
			if err := postgres.MigrateDown(url, 0); err != nil {
				t.Fatalf("down: %v", err)
			}
		} else if err := postgres.MigrateDown(url, int(last)+5); err != nil {
			t.Fatalf("down %d (more than applied): %v", last+5, err)
		}
		wantVersion(0)
		if got := tables(); got != "" {
			t.Fatalf("round %d: tables left after down: %v", round, got)
		}
		if got := others(); got != "" {
			t.Fatalf("round %d: left after down: %v", round, got)
		}
	}
	if err := postgres.MigrateDown(url, 0); err != nil {
		t.Errorf("down at version 0: %v", err)
	}
}

func sortedWords(s string) string {
	w := strings.Fields(s)
	slices.Sort(w)
	return strings.Join(w, " ")
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
