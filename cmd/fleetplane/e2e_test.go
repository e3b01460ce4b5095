package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// logWatcher is the stderr of a run under test: it keeps the output for
// failure messages and reports the address of the HTTP listener.
type logWatcher struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	addr chan string
	line []byte
}

func newLogWatcher() *logWatcher { return &logWatcher{addr: make(chan string, 1)} }

func (w *logWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	w.line = append(w.line, p...)
	for {
		i := bytes.IndexByte(w.line, '\n')
		if i < 0 {
			break
		}
		line := w.line[:i]
		w.line = w.line[i+1:]
		var rec struct{ Msg, Addr string }
		if json.Unmarshal(line, &rec) == nil && rec.Msg == "http server listening" {
			w.addr <- rec.Addr
		} else if s := string(line); strings.Contains(s, "msg=\"http server listening\"") {
			if _, a, ok := strings.Cut(s, "addr="); ok {
				w.addr <- strings.Fields(a)[0]
			}
		}
	}
	return len(p), nil
}

func (w *logWatcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// startRun calls run with args in the background and returns the base URL
// once /readyz answers 200, and a stop function that cancels the context
// and returns run's error.
func startRun(t *testing.T, env map[string]string, args ...string) (baseURL string, stdout *bytes.Buffer, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := newLogWatcher()
	stdout = &bytes.Buffer{}
	var outMu sync.Mutex
	errc := make(chan error, 1)
	getenv := func(k string) string { return env[k] }
	go func() {
		errc <- run(ctx, args, getenv, lockedWriter{&outMu, stdout}, logs)
	}()
	var addr string
	select {
	case addr = <-logs.addr:
	case err := <-errc:
		cancel()
		t.Fatalf("run %q exited early: %v\nlogs:\n%s", args, err, logs)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatalf("run %q did not start listening\nlogs:\n%s", args, logs)
	}
	baseURL = "http://" + addr
	waitReady(t, baseURL)
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-errc:
			case <-time.After(30 * time.Second):
				runErr = fmt.Errorf("run did not stop within 30s\nlogs:\n%s", logs)
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return baseURL, stdout, stop
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func waitReady(t *testing.T, baseURL string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(baseURL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/readyz not ready: %v", baseURL, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// client is a tiny JSON client for the end-to-end tests.
type client struct {
	t    *testing.T
	base string
	key  string
}

func (c *client) do(method, path string, body any, wantStatus int) map[string]any {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if wantStatus != 0 && resp.StatusCode != wantStatus {
		c.t.Fatalf("%s %s: status %d, want %d; body: %s", method, path, resp.StatusCode, wantStatus, raw)
	}
	out := map[string]any{}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			c.t.Fatalf("%s %s: body is not a JSON object: %s", method, path, raw)
		}
	}
	return out
}

// TestEndToEnd drives the real binary entry point: serve on a :0 port, then
// signup → API key → fleet → vehicles over HTTP.
func TestEndToEnd(t *testing.T) {
	env := operatorEnv(t, "FLEETPLANE_DATABASE_URL", pgtest.NewURL(t))
	base, _, stop := startRun(t, env,
		"serve", "--http-addr", "127.0.0.1:0", "--log-level", "debug")

	anon := &client{t: t, base: base}
	anon.do("GET", "/healthz", nil, 200)
	spec := anon.do("GET", "/v1/openapi.json", nil, 200)
	if spec["openapi"] == nil {
		t.Fatalf("openapi.json has no openapi field")
	}

	signup := anon.do("POST", "/v1/signup", map[string]any{
		"organisation": "Acme Drones", "email": "ops@acme.example", "password": "correct horse battery staple",
	}, 201)
	key := signup["api_key"].(map[string]any)["secret"].(string)
	if !strings.HasPrefix(key, "fpk_") {
		t.Fatalf("signup api key %q lacks fpk_ prefix", key)
	}
	c := &client{t: t, base: base, key: key}

	tenant := c.do("GET", "/v1/tenant", nil, 200)
	if tenant["name"] != "Acme Drones" || tenant["plan"] != "free" {
		t.Fatalf("tenant = %v", tenant)
	}
	// A second, narrower key works, and is shown once.
	k2 := c.do("POST", "/v1/api-keys", map[string]any{"name": "ci", "role": "viewer"}, 201)
	viewer := &client{t: t, base: base, key: k2["secret"].(string)}
	viewer.do("GET", "/v1/fleets", nil, 200)
	viewer.do("POST", "/v1/fleets", map[string]any{"slug": "nope"}, 403)

	regions := c.do("GET", "/v1/regions", nil, 200)
	if items := regions["items"].([]any); len(items) != 1 {
		t.Fatalf("regions = %v", regions)
	}
	c.do("POST", "/v1/fleets", map[string]any{"slug": "survey", "name": "Survey drones", "environment": "prod"}, 201)
	for i := range 5 {
		c.do("POST", "/v1/fleets/survey/vehicles", map[string]any{"vehicle_id": fmt.Sprintf("drone-%02d", i)}, 201)
	}
	page := c.do("GET", "/v1/fleets/survey/vehicles?limit=3", nil, 200)
	if n := len(page["items"].([]any)); n != 3 || page["next_cursor"] == nil {
		t.Fatalf("first page: %d items, next_cursor %v", n, page["next_cursor"])
	}
	page2 := c.do("GET", "/v1/fleets/survey/vehicles?limit=3&cursor="+page["next_cursor"].(string), nil, 200)
	if n := len(page2["items"].([]any)); n != 2 || page2["next_cursor"] != nil {
		t.Fatalf("second page: %d items, next_cursor %v", n, page2["next_cursor"])
	}
	v := c.do("PATCH", "/v1/fleets/survey/vehicles/drone-01", map[string]any{"name": "Lead", "labels": map[string]string{"site": "north"}}, 200)
	if v["name"] != "Lead" {
		t.Fatalf("patched vehicle = %v", v)
	}
	c.do("GET", "/v1/fleets/survey/vehicles?label=site=north", nil, 200)
	c.do("DELETE", "/v1/fleets/survey/vehicles/drone-04", nil, 204)
	c.do("GET", "/v1/fleets/survey/vehicles/drone-04", nil, 404)
	c.do("DELETE", "/v1/fleets/survey", nil, 409) // still has vehicles

	audit := c.do("GET", "/v1/audit-events?limit=100", nil, 200)
	actions := map[string]int{}
	for _, e := range audit["items"].([]any) {
		actions[e.(map[string]any)["action"].(string)]++
	}
	for action, want := range map[string]int{"tenant.create": 1, "api_key.create": 2, "fleet.create": 1, "vehicle.create": 5, "vehicle.update": 1, "vehicle.delete": 1} {
		if actions[action] != want {
			t.Errorf("audit: %d %s events, want %d (all: %v)", actions[action], action, want, actions)
		}
	}

	metrics, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(metrics.Body)
	metrics.Body.Close()
	for _, want := range []string{"fleetplane_http_request_duration_seconds", "fleetplane_db_pool_"} {
		if !bytes.Contains(mb, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("graceful shutdown: %v", err)
	}
}

func TestMigrateAndAdmin(t *testing.T) {
	dbURL := pgtest.NewURL(t)
	env := operatorEnv(t, "DATABASE_URL", dbURL)
	var out, errb bytes.Buffer
	ctx := context.Background()
	if err := run(ctx, []string{"migrate", "version"}, mapEnv(env), &out, &errb); err != nil {
		t.Fatalf("migrate version: %v\n%s", err, errb.String())
	}
	if !strings.HasPrefix(out.String(), "schema version ") {
		t.Fatalf("migrate version printed %q", out.String())
	}
	// The database URL can come from a file, as a secret would.
	secretFile := filepath.Join(t.TempDir(), "db-url")
	if err := os.WriteFile(secretFile, []byte(dbURL+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	err := run(ctx, []string{"admin", "tenant", "create", "--name", "Beta Ops", "--email", "Owner@Beta.example", "--plan", "scale", "--json"},
		mapEnv(map[string]string{"FLEETPLANE_DATABASE_URL_FILE": secretFile, "FLEETPLANE_MASTER_KEY": env["FLEETPLANE_MASTER_KEY"]}), &out, &errb)
	if err != nil {
		t.Fatalf("admin tenant create: %v\n%s", err, errb.String())
	}
	var created tenantCreated
	if err := json.Unmarshal(out.Bytes(), &created); err != nil {
		t.Fatalf("admin output is not JSON: %v\n%s", err, out.String())
	}
	if created.Tenant.Plan != "scale" || created.Owner.Email != "owner@beta.example" || !strings.HasPrefix(created.APIKey.Secret, "fpk_") {
		t.Fatalf("admin created %+v", created)
	}
	// The same e-mail again is a clear error, not a second tenant.
	err = run(ctx, []string{"admin", "tenant", "create", "--name", "Beta Again", "--email", "owner@beta.example"}, mapEnv(env), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("duplicate admin tenant create: err = %v", err)
	}
	// Down and up again round-trips the schema.
	if err := run(ctx, []string{"migrate", "down", "--all"}, mapEnv(env), &out, &errb); err != nil {
		t.Fatalf("migrate down --all: %v", err)
	}
	out.Reset()
	if err := run(ctx, []string{"migrate", "up"}, mapEnv(env), &out, &errb); err != nil {
		t.Fatalf("migrate up: %v", err)
	}
	if !strings.HasPrefix(out.String(), "schema version ") || strings.Contains(out.String(), "dirty") {
		t.Fatalf("migrate up printed %q", out.String())
	}
}

// TestDev runs `fleetplane dev` twice against one state directory: the
// first run seeds the demo tenant and writes dev.env, the second reuses the
// key. It uses the test's database through DATABASE_URL; TestDevLocalPostgres
// covers the Postgres that dev starts itself.
func TestDev(t *testing.T) {
	dbURL := pgtest.NewURL(t)
	state := t.TempDir()
	env := map[string]string{"DATABASE_URL": dbURL}
	base, stdout, stop := startRun(t, env, devArgs(state)...)
	envFile := readDevEnv(filepath.Join(state, "dev.env"))
	key := envFile["FLEETPLANE_API_KEY"]
	if envFile["FLEETPLANE_URL"] != base || !strings.HasPrefix(key, "fpk_") {
		t.Fatalf("dev.env = %v (base %s)", envFile, base)
	}
	if !strings.Contains(stdout.String(), key) {
		t.Errorf("dev did not print the API key; stdout:\n%s", stdout)
	}
	c := &client{t: t, base: base, key: key}
	c.do("GET", "/v1/fleets/demo", nil, 200)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(state, "dev.env"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("dev.env mode: %v %v", st, err)
	}
	caPEM, err := os.ReadFile(filepath.Join(state, "ca", "ca.pem"))
	if err != nil {
		t.Fatalf("dev CA: %v", err)
	}

	base2, _, stop2 := startRun(t, env, devArgs(state)...)
	if got := readDevEnv(filepath.Join(state, "dev.env"))["FLEETPLANE_API_KEY"]; got != key {
		t.Errorf("second dev run issued a new key although the old one works")
	}
	(&client{t: t, base: base2, key: key}).do("GET", "/v1/tenant", nil, 200)
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(filepath.Join(state, "ca", "ca.pem")); !bytes.Equal(again, caPEM) {
		t.Error("the second dev run made a new CA: vehicles enrolled before would no longer trust the hub")
	}

	// dev.env lost, database kept: dev issues a fresh key for the demo tenant.
	os.Remove(filepath.Join(state, "dev.env"))
	base3, _, _ := startRun(t, env, devArgs(state)...)
	key3 := readDevEnv(filepath.Join(state, "dev.env"))["FLEETPLANE_API_KEY"]
	if key3 == "" || key3 == key {
		t.Fatalf("third dev run: key %q", key3)
	}
	(&client{t: t, base: base3, key: key3}).do("GET", "/v1/fleets/demo", nil, 200)
}

// TestDevLocalPostgres is what `make run` does: dev starts its own Postgres
// under the state directory and stops it on Ctrl-C (context cancel).
func TestDevLocalPostgres(t *testing.T) {
	state := t.TempDir()
	// Postgres runs as the postgres user when the tests run as root: it
	// must be able to enter the test's temporary directories.
	for _, d := range []string{state, filepath.Dir(state)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	base, _, stop := startRun(t, map[string]string{}, devArgs(state)...)
	key := readDevEnv(filepath.Join(state, "dev.env"))["FLEETPLANE_API_KEY"]
	(&client{t: t, base: base, key: key}).do("GET", "/v1/fleets/demo", nil, 200)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(state, "pg", "data", "postmaster.pid")); !os.IsNotExist(err) {
		t.Fatalf("Postgres still running after dev stopped (postmaster.pid: %v)", err)
	}
}

func mapEnv(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// devArgs runs dev on free ports: tests run in parallel with each other
// (and maybe beside a developer's `make run`).
func devArgs(state string) []string {
	return []string{"dev", "--http-addr", "127.0.0.1:0", "--state-dir", state,
		"--hub-client-addr", "127.0.0.1:0", "--hub-leaf-addr", "127.0.0.1:0"}
}

// operatorEnv returns an environment with the database URL under dbVar and
// a fresh master key, and creates the NATS operator with
// `fleetplane admin operator init`.
func operatorEnv(t *testing.T, dbVar, dbURL string) map[string]string {
	t.Helper()
	var out bytes.Buffer
	run(context.Background(), []string{"admin", "master-key", "generate"}, mapEnv(nil), &out, io.Discard)
	env := map[string]string{dbVar: dbURL, "FLEETPLANE_MASTER_KEY": strings.TrimSpace(out.String()),
		"FLEETPLANE_MAIL_TO_LOG": "true"} // serve needs SMTP or this
	if err := run(context.Background(), []string{"migrate", "up"}, mapEnv(env), io.Discard, io.Discard); err != nil {
		t.Fatalf("migrate up: %v", err)
	}
	var errb bytes.Buffer
	out.Reset()
	if err := run(context.Background(), []string{"admin", "operator", "init"}, mapEnv(env), &out, &errb); err != nil {
		t.Fatalf("admin operator init: %v\n%s", err, errb.String())
	}
	if !strings.Contains(out.String(), "operator fleetplane created: O") {
		t.Fatalf("admin operator init printed %q", out.String())
	}
	return env
}
