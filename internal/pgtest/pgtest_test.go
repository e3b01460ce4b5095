package pgtest

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { Main(m) }

func TestNewURLHasSchemaAndIsDropped(t *testing.T) {
	ctx := context.Background()
	var name string
	t.Run("inner", func(t *testing.T) {
		pool := NewPool(t)
		if err := pool.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(name, "fptest_testnewurlhasschemaand") {
			t.Errorf("database name %q does not tell the test", name)
		}
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM vehicles").Scan(&n); err != nil {
			t.Fatalf("the migrated schema is missing: %v", err)
		}
		// Databases are independent: a write here is not seen elsewhere.
		if _, err := pool.Exec(ctx, "INSERT INTO tenants (name, plan) VALUES ('t', 'free')"); err != nil {
			t.Fatal(err)
		}
	})
	var exists bool
	if err := state.admin.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil || exists {
		t.Errorf("database %s left after its test: exists=%v err=%v", name, exists, err)
	}
	conn := mustConnect(t, NewURL(t))
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM tenants").Scan(&n); err != nil || n != 0 {
		t.Errorf("a fresh database has %d tenants (%v)", n, err)
	}
}

func TestNewEmptyURL(t *testing.T) {
	conn := mustConnect(t, NewEmptyURL(t))
	var n int
	err := conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&n)
	if err != nil || n != 0 {
		t.Errorf("empty database has %d tables (%v)", n, err)
	}
}

// TestEnsureTemplate: a second call reuses the template; a half-built one
// (not yet marked as a template, as a crash would leave it) is rebuilt.
func TestEnsureTemplate(t *testing.T) {
	ctx := context.Background()
	admin := databaseURL(state.baseURL.Path[1:])
	name, err := ensureTemplate(ctx, admin)
	if err != nil || name != state.template {
		t.Fatalf("ensureTemplate = %q, %v; want %q", name, err, state.template)
	}

	// A half-built template under another name, not to disturb other tests.
	const half = "fptest_half_built_template"
	mustAdminExec(t, "CREATE DATABASE "+half)
	t.Cleanup(func() {
		mustAdminExec(t, "ALTER DATABASE "+half+" WITH IS_TEMPLATE false ALLOW_CONNECTIONS true")
		mustAdminExec(t, "DROP DATABASE "+half+" WITH (FORCE)")
	})
	func() {
		conn := mustConnect(t, databaseURL(half))
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "CREATE TABLE junk (x int)"); err != nil {
			t.Fatal(err)
		}
	}()
	if err := buildTemplate(ctx, admin, half, 42); err != nil {
		t.Fatal(err)
	}
	var isTemplate bool
	if err := state.admin.QueryRow(ctx, "SELECT datistemplate FROM pg_database WHERE datname = $1", half).Scan(&isTemplate); err != nil || !isTemplate {
		t.Fatalf("rebuilt template not marked: %v, %v", isTemplate, err)
	}
	conn := mustConnect(t, newDatabase(t, half))
	var tables string
	err = conn.QueryRow(ctx, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables)
	if err != nil || strings.Contains(tables, "junk") || !strings.Contains(tables, "vehicles") {
		t.Errorf("tables of the rebuilt template: %s, %v", tables, err)
	}
}

func mustAdminExec(tb testing.TB, sql string) {
	tb.Helper()
	if _, err := state.admin.Exec(context.Background(), sql); err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
}

func mustConnect(tb testing.TB, url string) *pgx.Conn {
	tb.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
