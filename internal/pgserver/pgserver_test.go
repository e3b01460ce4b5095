package pgserver_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/internal/pgserver"
)

// TestServerLifecycle creates a cluster, keeps data across a restart on the
// same directory, takes over a server left running on it, and reports a
// start that cannot bind its port with the tail of the log.
func TestServerLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(MustTempDir(t), "pg")
	o := pgserver.Options{Dir: dir, Ephemeral: true, Logf: t.Logf}

	s1 := MustStart(t, ctx, o)
	if err := s1.CreateDatabase(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if err := s1.CreateDatabase(ctx, "app"); err != nil {
		t.Fatalf("creating an existing database: %v", err)
	}
	MustExec(t, ctx, s1.URL("app"), "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
	if err := s1.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s1.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	// Same directory again: the cluster is reused, not re-initialised.
	s2 := MustStart(t, ctx, o)
	if got := MustQueryInt(t, ctx, s2.URL("app"), "SELECT v FROM kept"); got != 42 {
		t.Fatalf("after restart: got %d, want 42", got)
	}

	// s2 "crashes" (we forget it without stopping): the next Start on the
	// directory must stop it and come up on its own port.
	s3 := MustStart(t, ctx, o)
	if s3.Port() == s2.Port() {
		t.Fatalf("s3 reuses port %d", s3.Port())
	}
	if c, err := pgx.Connect(ctx, s2.URL("app")); err == nil {
		c.Close(ctx)
		t.Fatal("the leftover server on the old port still answers")
	}
	if got := MustQueryInt(t, ctx, s3.URL("app"), "SELECT v FROM kept"); got != 42 {
		t.Fatalf("after takeover: got %d, want 42", got)
	}

	// Kill is the cleanup for a server whose owner died: immediate
	// shutdown, found through the pid file. Stop after it has nothing to do.
	if err := pgserver.Kill(dir); err != nil {
		t.Fatal(err)
	}
	if c, err := pgx.Connect(ctx, s3.URL("app")); err == nil {
		c.Close(ctx)
		t.Fatal("the server still answers after Kill")
	}
	if err := pgserver.Kill(dir); err != nil {
		t.Errorf("Kill without a server: %v", err)
	}
	if err := s3.Stop(); err != nil {
		t.Errorf("Stop after Kill: %v", err)
	}

	// A port that is taken: Start fails and says why, from the server log.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	o.Port = l.Addr().(*net.TCPAddr).Port
	s4, err := pgserver.Start(ctx, o)
	if err == nil {
		s4.Stop()
		t.Fatal("Start on a busy port succeeded")
	}
	for _, want := range []string{"starting postgres", strconv.Itoa(o.Port), "postgres.log (tail)", "could not"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func TestStartErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := pgserver.Start(ctx, pgserver.Options{}); err == nil || !strings.Contains(err.Error(), "Dir is required") {
		t.Errorf("no Dir: got %v", err)
	}
	bin := t.TempDir()
	_, err := pgserver.Start(ctx, pgserver.Options{Dir: t.TempDir(), BinDir: bin})
	if err == nil || !strings.Contains(err.Error(), bin) || !strings.Contains(err.Error(), "initdb") {
		t.Errorf("bad BinDir: got %v", err)
	}
	if os.Geteuid() == 0 {
		// A directory the postgres user cannot enter.
		locked := filepath.Join(MustTempDir(t), "locked")
		if err := os.Mkdir(locked, 0o700); err != nil {
			t.Fatal(err)
		}
		_, err := pgserver.Start(ctx, pgserver.Options{Dir: filepath.Join(locked, "pg")})
		if err == nil || !strings.Contains(err.Error(), "cannot enter "+locked) {
			t.Errorf("unreachable Dir: got %v", err)
		}
	}
}

func TestURL(t *testing.T) {
	// URL needs no running server; only the port matters.
	s := &pgserver.Server{}
	if got, want := s.URL("db"), "postgres://postgres@127.0.0.1:0/db?sslmode=disable"; got != want {
		t.Errorf("URL = %q, want %q", got, want)
	}
}

// MustTempDir returns a directory the postgres user can reach when the test
// runs as root (t.TempDir's parent is private to root).
func MustTempDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "fleetplane-pgserver-test-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return dir
}

func MustStart(tb testing.TB, ctx context.Context, o pgserver.Options) *pgserver.Server {
	tb.Helper()
	s, err := pgserver.Start(ctx, o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Stop() })
	return s
}

func MustExec(tb testing.TB, ctx context.Context, url, sql string) {
	tb.Helper()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, sql); err != nil {
		tb.Fatal(err)
	}
}

func MustQueryInt(tb testing.TB, ctx context.Context, url, sql string) int {
	tb.Helper()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, sql).Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n
}
