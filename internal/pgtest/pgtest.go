// Package pgtest gives tests a real, throwaway Postgres database each.
//
// A test package calls Main from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// Main uses the server at TEST_DATABASE_URL (a postgres:// URL of a
// superuser, PostgreSQL 15 or later) when it is set, and otherwise starts an
// ephemeral server (internal/pgserver) in a temporary directory for the
// test binary. It applies the schema migrations once, into a template
// database named after a hash of the migration files, so that test binaries
// sharing a server share the template. NewURL and NewPool then copy the
// template into a fresh database per test (milliseconds) and drop it when
// the test ends. When Postgres cannot be had, Main fails the run: tests that
// need a database never skip.
//
// It imports the standard library, pgx, internal/pgserver, internal/pgmigrate
// and migrations; never controlplane or its adapters.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetplane/fleetplane/internal/pgmigrate"
	"github.com/fleetplane/fleetplane/internal/pgserver"
	"github.com/fleetplane/fleetplane/migrations"
)

// EnvURL names the variable that points tests at an existing server.
const EnvURL = "TEST_DATABASE_URL"

// dirPrefix names the temporary directories of ephemeral servers, so that
// a later run can find those whose test binary died without cleaning up.
const dirPrefix = "fleetplane-pgtest-"

// state is set up by Main for the whole test binary.
var state struct {
	baseURL  *url.URL      // server URL; the path (database) is replaced per database
	admin    *pgxpool.Pool // connected to the maintenance database of baseURL
	template string        // database holding the migrated schema
}

// Main runs the tests of m against Postgres and exits with their code.
func Main(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if !flag.Parsed() {
		flag.Parse()
	}
	logf := func(format string, args ...any) {
		if testing.Verbose() {
			fmt.Fprintf(os.Stderr, "pgtest: "+format+"\n", args...)
		}
	}
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		if os.Getenv(EnvURL) != "" {
			fmt.Fprintf(os.Stderr, "pgtest: these tests need Postgres: check the server at %s\n", EnvURL)
		} else {
			fmt.Fprintf(os.Stderr, "pgtest: these tests need Postgres: install the server binaries (apt-get install postgresql) or set %s\n", EnvURL)
		}
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()

	// The signal handler below runs cleanup on its own goroutine.
	var (
		mu       sync.Mutex
		cleanups []func()
		once     sync.Once
		server   atomic.Pointer[pgserver.Server]
	)
	addCleanup := func(fn func()) {
		mu.Lock()
		defer mu.Unlock()
		cleanups = append(cleanups, fn)
	}
	stopServer := func() {
		if srv := server.Load(); srv != nil {
			if err := srv.Stop(); err != nil {
				fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
			}
		}
	}
	cleanup := func() {
		once.Do(func() {
			mu.Lock()
			fns := slices.Clone(cleanups)
			mu.Unlock()
			for _, fn := range slices.Backward(fns) {
				fn()
			}
		})
	}
	defer cleanup()
	// Ctrl-C or a kill must not leave a server behind.
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigc
		fmt.Fprintf(os.Stderr, "pgtest: %v: stopping Postgres\n", sig)
		// The server first: that ends the sessions tests hold, which
		// closing the pools would otherwise wait for.
		stopServer()
		cleanup()
		os.Exit(1)
	}()

	adminURL := os.Getenv(EnvURL)
	if adminURL == "" {
		reapOrphans(logf)
		dir, err := os.MkdirTemp("", dirPrefix)
		if err != nil {
			return fail(err)
		}
		addCleanup(func() { os.RemoveAll(dir) })
		if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return fail(err)
		}
		srv, err := pgserver.Start(ctx, pgserver.Options{Dir: dir, Ephemeral: true, Logf: logf})
		if err != nil {
			return fail(err)
		}
		server.Store(srv)
		addCleanup(stopServer)
		adminURL = srv.URL("postgres")
	}
	u, err := url.Parse(adminURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return fail(fmt.Errorf("%s must be a postgres:// URL", EnvURL))
	}
	state.baseURL = u
	cfg, err := pgxpool.ParseConfig(adminURL)
	if err != nil {
		return fail(err)
	}
	cfg.MaxConns = 4
	if state.admin, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return fail(err)
	}
	addCleanup(state.admin.Close)
	if state.template, err = ensureTemplate(ctx, adminURL); err != nil {
		return fail(err)
	}
	logf("Postgres ready with template %s in %v", state.template, time.Since(start).Round(time.Millisecond))
	return m.Run()
}

// NewURL creates a database holding the migrated schema, for tb alone, and
// returns its URL. The database is dropped when tb ends.
func NewURL(tb testing.TB) string {
	tb.Helper()
	return newDatabase(tb, state.template)
}

// NewEmptyURL creates an empty database (no migrations applied), for tb
// alone, and returns its URL. The database is dropped when tb ends.
func NewEmptyURL(tb testing.TB) string {
	tb.Helper()
	return newDatabase(tb, "template0")
}

// NewPool returns a pool connected to a fresh database from NewURL. The
// pool is closed, then the database dropped, when tb ends.
func NewPool(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	u := NewURL(tb)
	pool, err := pgxpool.New(context.Background(), u)
	if err != nil {
		tb.Fatalf("pgtest: connecting to the test database: %v", err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

func newDatabase(tb testing.TB, template string) string {
	tb.Helper()
	if state.admin == nil {
		tb.Fatal("pgtest: call pgtest.Main(m) from TestMain first")
	}
	name := databaseName(tb.Name())
	ctx := context.Background()
	// FILE_COPY copies the template's files instead of writing them all
	// to the WAL: much faster for a small schema.
	_, err := state.admin.Exec(ctx, "CREATE DATABASE "+ident(name)+" TEMPLATE "+ident(template)+" STRATEGY FILE_COPY")
	if err != nil {
		tb.Fatalf("pgtest: creating database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		if _, err := state.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)"); err != nil {
			tb.Errorf("pgtest: dropping database %s: %v", name, err)
		}
	})
	return databaseURL(name)
}

// ensureTemplate makes sure the template database for the current
// migrations exists, and returns its name. Concurrent test binaries on one
// server serialise on an advisory lock; one that died half-way leaves a
// database that is not marked as a template yet, which the next one drops
// and builds again.
func ensureTemplate(ctx context.Context, adminURL string) (string, error) {
	sum, err := migrationsHash()
	if err != nil {
		return "", err
	}
	name := "fleetplane_tmpl_" + hex.EncodeToString(sum[:8])
	return name, buildTemplate(ctx, adminURL, name, int64(binary.BigEndian.Uint64(sum[8:16])))
}

// buildTemplate creates and migrates template database name unless it
// exists, holding advisory lock lockKey meanwhile.
func buildTemplate(ctx context.Context, adminURL, name string, lockKey int64) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", redacted(adminURL), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return fmt.Errorf("locking the template: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockKey)

	var isTemplate bool
	err = conn.QueryRow(ctx, "SELECT datistemplate FROM pg_database WHERE datname = $1", name).Scan(&isTemplate)
	switch {
	case err == nil && isTemplate:
		return nil
	case err == nil:
		if _, err := conn.Exec(ctx, "DROP DATABASE "+ident(name)+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("dropping the half-built template %s: %w", name, err)
		}
	case !errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("looking for the template: %w", err)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+ident(name)+" TEMPLATE template0"); err != nil {
		return fmt.Errorf("creating the template %s: %w", name, err)
	}
	if err := pgmigrate.Up(databaseURL(name)); err != nil {
		return fmt.Errorf("migrating the template %s: %w", name, err)
	}
	// No connections: CREATE DATABASE ... TEMPLATE fails while anyone is
	// connected to the template.
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+ident(name)+" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"); err != nil {
		return fmt.Errorf("marking %s as a template: %w", name, err)
	}
	return nil
}

// migrationsHash hashes the names and contents of the migration files.
func migrationsHash() ([]byte, error) {
	h := sha256.New()
	err := fs.WalkDir(migrations.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(migrations.FS, path)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", path, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hashing migrations: %w", err)
	}
	return h.Sum(nil), nil
}

// reapOrphans stops the servers and removes the directories of ephemeral
// servers whose test binary died without cleaning up (a timeout panic, a
// SIGKILL).
func reapOrphans(logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner.pid"))
		if err != nil {
			continue // being set up, or not ours
		}
		pid, err := strconv.Atoi(string(b))
		if err != nil || pid <= 0 || alive(pid) {
			continue // its owner still runs
		}
		logf("removing %s, left by test process %d", dir, pid)
		if err := pgserver.Kill(dir); err != nil {
			logf("%v", err)
			continue
		}
		os.RemoveAll(dir)
	}
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func databaseURL(name string) string {
	u := *state.baseURL
	u.Path = "/" + name
	u.RawPath = ""
	return u.String()
}

// databaseName derives a unique database name from a test name, readable
// when one is left behind.
func databaseName(testName string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
		if b.Len() >= 30 {
			break
		}
	}
	return "fptest_" + b.String() + "_" + strings.ToLower(rand.Text()[:10])
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

func redacted(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(malformed URL)"
	}
	return u.Redacted()
}
