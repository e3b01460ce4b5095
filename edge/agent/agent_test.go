package agent_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/edge/agent"
	"github.com/fleetplane/fleetplane/edge/enroll"
	"github.com/fleetplane/fleetplane/edge/forward"
	"github.com/fleetplane/fleetplane/internal/devca"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// fakeCP mimics the control plane's vehicle endpoints with JWTs issued by
// natsauth for a real hub.
type fakeCP struct {
	t       *testing.T
	tenant  *natstest.Tenant
	leafURL string
	ca      string
	ttl     time.Duration // JWT lifetime
	token   string

	mu       sync.Mutex
	pub      string // the enrolled key
	nonce    string
	renewals int
	bodies   []string
}

func (f *fakeCP) issue(pub string) enroll.Credentials {
	sk, err := f.tenant.Keys.Vehicle.KeyPair()
	if err != nil {
		f.t.Fatal(err)
	}
	now := time.Now()
	exp := now.Add(f.ttl)
	id := natsauth.VehicleIdentity{TenantID: "t1", Fleet: "drones", Env: "prod", VehicleID: "v1"}
	j, err := natsauth.IssueVehicleJWT(sk, f.tenant.Keys.Account.Public, pub, id, exp)
	if err != nil {
		f.t.Fatal(err)
	}
	ca := f.ca
	return enroll.Credentials{Vehicle: enroll.Vehicle{VehicleID: "v1", Fleet: "drones"}, JWT: j,
		ExpiresAt: exp, RenewAfter: now.Add(f.ttl / 2), Account: f.tenant.Keys.Account.Public, Region: "europe",
		LeafURLs: []string{f.leafURL}, CABundle: &ca,
		SubjectPrefix: natsauth.VehicleSubjectPrefix("prod", "v1"), IngestSubject: natsauth.IngestSubject("prod", "v1"),
		InboxPrefix: natsauth.VehicleInboxPrefix("v1"), JetStreamDomain: "vt1-v1"}
}

func problem(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"type": "about:blank", "title": http.StatusText(status), "status": status, "detail": detail, "code": "x", "request_id": "r"})
}

func (f *fakeCP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bodies = append(f.bodies, string(b))
	var req map[string]string
	_ = json.Unmarshal(b, &req)
	reply := func(status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	switch r.URL.Path {
	case "/v1/enroll":
		if req["token"] != f.token {
			problem(w, 401, "The enrollment token is not valid.")
			return
		}
		f.pub = req["public_key"]
		reply(201, f.issue(f.pub))
	case "/v1/agent/nonce":
		if req["public_key"] != f.pub {
			problem(w, 401, "no such vehicle")
			return
		}
		f.nonce = "nonce-" + time.Now().String()
		reply(201, map[string]any{"nonce": f.nonce, "expires_at": time.Now().Add(time.Minute)})
	case "/v1/agent/renew":
		kp, _ := nkeys.FromPublicKey(f.pub)
		sig, _ := base64.RawURLEncoding.DecodeString(req["signature"])
		if req["nonce"] != f.nonce || kp.Verify([]byte(f.nonce), sig) != nil {
			problem(w, 401, "proof rejected")
			return
		}
		f.nonce = ""
		f.renewals++
		reply(200, f.issue(f.pub))
	default:
		http.NotFound(w, r)
	}
}

type env struct {
	hub    *server.Server
	tenant *natstest.Tenant
	cp     *fakeCP
	srv    *httptest.Server
	dir    string
	data   string
}

func newEnv(t *testing.T, ttl time.Duration) *env {
	t.Helper()
	ca, err := devca.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.Issue("hub", devca.LocalHosts)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	op := natstest.MustOperator(t)
	hub := natstest.RunOperatorServer(t, op, natstest.WithLeafTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}))
	tn := natstest.NewTenant(t, op, natsauth.AccountSpec{Name: "acme", TenantID: "t1", Limits: natsauth.Unlimited()})
	tn.Push(t, natstest.ConnectSystem(t, hub, op))
	cp := &fakeCP{t: t, tenant: tn, leafURL: natstest.LeafURL(t, hub), ca: ca.Bundle(), ttl: ttl, token: "fpe_good"}
	srv := httptest.NewServer(cp)
	t.Cleanup(srv.Close)
	d := t.TempDir()
	return &env{hub: hub, tenant: tn, cp: cp, srv: srv, dir: filepath.Join(d, "etc"), data: filepath.Join(d, "var")}
}

func (e *env) enroll(t *testing.T, force bool) (*agent.Config, error) {
	t.Helper()
	cfg, _, err := agent.Enroll(context.Background(), agent.EnrollOptions{Server: e.srv.URL, Token: "fpe_good", Dir: e.dir, DataDir: e.data, Force: force, Version: "test"})
	return cfg, err
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestEnroll(t *testing.T) {
	e := newEnv(t, time.Hour)
	cfg, err := e.enroll(t, false)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{agent.SeedName: 0o600, agent.CredsName: 0o600, agent.CAName: 0o644, agent.ConfigName: 0o640, agent.EnrollmentName: 0o640} {
		if got := mode(t, filepath.Join(e.dir, name)); got != want {
			t.Errorf("%s: mode %v, want %v", name, got, want)
		}
	}
	kp, err := enroll.ReadSeed(cfg.SeedFile)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	for _, b := range e.cp.bodies {
		if strings.Contains(b, string(seed)) {
			t.Fatal("the seed was sent to the control plane")
		}
	}
	if e.cp.pub != pub {
		t.Fatalf("enrolled key %s, seed's key %s", e.cp.pub, pub)
	}
	loaded, err := agent.LoadConfig(cfg.Path())
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Server != e.srv.URL || loaded.CAFile == "" || loaded.PingInterval != 10*time.Second {
		t.Fatalf("config round trip: %+v", loaded)
	}
	if en, err := agent.LoadEnrollment(cfg.EnrollmentFile); err != nil || en.JWT != "" || en.Vehicle.VehicleID != "v1" {
		t.Fatalf("enrollment.json: %+v, %v (the JWT belongs in the creds file only)", en, err)
	}

	// Again: refused without --force, accepted with it (a new key).
	if _, err := e.enroll(t, false); !errors.Is(err, agent.ErrEnrolled) {
		t.Fatalf("second enroll: %v, want ErrEnrolled", err)
	}
	if _, err := e.enroll(t, true); err != nil {
		t.Fatal(err)
	}
	if e.cp.pub == pub {
		t.Fatal("--force kept the old key")
	}
}

func TestEnrollErrors(t *testing.T) {
	e := newEnv(t, time.Hour)
	_, _, err := agent.Enroll(context.Background(), agent.EnrollOptions{Server: e.srv.URL, Token: "fpe_bad", Dir: e.dir, DataDir: e.data})
	if err == nil || !strings.Contains(err.Error(), "enrollment token rejected (The enrollment token is not valid.)") {
		t.Fatalf("bad token: %v", err)
	}
	if _, err := os.Stat(e.dir); err == nil {
		if ents, _ := os.ReadDir(e.dir); len(ents) != 0 {
			t.Fatalf("a rejected enrollment wrote %v", ents)
		}
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String()
	_ = ln.Close()
	_, _, err = agent.Enroll(context.Background(), agent.EnrollOptions{Server: dead, Token: "fpe_good", Dir: e.dir, DataDir: e.data})
	if !errors.Is(err, enroll.ErrUnreachable) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("unreachable: %v", err)
	}
	_, _, err = agent.Enroll(context.Background(), agent.EnrollOptions{Server: "cp.example.com", Token: "fpe_good", Dir: e.dir, DataDir: e.data})
	if err == nil || !strings.Contains(err.Error(), "bad server URL") {
		t.Fatalf("no scheme: %v", err)
	}
}

func startAgent(t *testing.T, cfg *agent.Config, o agent.Options) *agent.Agent {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o.Config, o.ClientPort, o.HTTPListener = cfg, -1, ln
	if o.MonitorInterval == 0 {
		o.MonitorInterval = 100 * time.Millisecond
	}
	if os.Getenv("NATSTEST_LOG") != "" {
		o.Logger = slogStderr()
	}
	a, err := agent.Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a
}

func waitFor(t *testing.T, what string, d time.Duration, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRun(t *testing.T) {
	e := newEnv(t, time.Hour)
	cfg, err := e.enroll(t, false)
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, cfg, agent.Options{Version: "test"})
	waitFor(t, "the hub link", 15*time.Second, func() bool { return a.Status().Link.Connected })

	// A hub-side subscriber sees live state; the local stream keeps a copy.
	hubc := natstest.Connect(t, e.hub.ClientURL(), e.tenant.Admin(t))
	sub, err := hubc.SubscribeSync("fleet.prod.veh.v1.>")
	if err != nil {
		t.Fatal(err)
	}
	_ = hubc.Flush()
	local, err := nats.Connect(a.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	waitFor(t, "hub interest on the leaf", 10*time.Second, func() bool {
		_ = local.Publish("fleet.prod.veh.v1.state.heartbeat", []byte(`{"schema":1}`))
		_ = local.Flush()
		_, err := sub.NextMsg(100 * time.Millisecond)
		return err == nil
	})
	waitFor(t, "status", 5*time.Second, func() bool {
		s := a.Status()
		return s.Backlog.Messages > 0 && s.LastHeartbeat != nil
	})

	// The HTTP endpoints.
	get := func(path string) string {
		resp, err := http.Get("http://" + a.HTTPAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %s %s", path, resp.Status, b)
		}
		return string(b)
	}
	if got := get("/healthz"); got != "ok\n" {
		t.Fatalf("/healthz = %q", got)
	}
	m := get("/metrics")
	for _, want := range []string{"fleetplane_agent_link_up 1", "fleetplane_agent_backlog_messages", "fleetplane_agent_credentials_expiry_timestamp_seconds"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	s, err := agent.FetchStatus(context.Background(), a.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	if !s.Link.Connected || s.Vehicle != "v1" || s.Link.Hub != e.hub.Name() || s.Backlog.Messages == 0 || s.Forwarder != "not configured" {
		t.Fatalf("status: %+v", s)
	}
	var text strings.Builder
	s.WriteText(&text)
	if !strings.Contains(text.String(), "link         up: hub "+e.hub.Name()) {
		t.Fatalf("status text:\n%s", text.String())
	}
}

// TestRenew: a JWT that expires 4 s after issue is renewed at renew_after
// (2 s) and the link survives the old JWT's expiry with the new one.
func TestRenew(t *testing.T) {
	e := newEnv(t, 4*time.Second)
	cfg, err := e.enroll(t, false)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(cfg.CredsFile)
	a := startAgent(t, cfg, agent.Options{Version: "test"})
	waitFor(t, "the hub link", 15*time.Second, func() bool { return a.Status().Link.Connected })
	first := a.Enrollment().ExpiresAt
	waitFor(t, "a renewal", 15*time.Second, func() bool { return a.Enrollment().ExpiresAt.After(first) })
	after, _ := os.ReadFile(cfg.CredsFile)
	if string(after) == string(before) {
		t.Fatal("creds file not rewritten")
	}
	if got := mode(t, cfg.CredsFile); got != 0o600 {
		t.Fatalf("renewed creds mode %v", got)
	}
	// Past the first JWT's expiry, the link is up with a renewed JWT.
	time.Sleep(time.Until(first) + 1500*time.Millisecond)
	waitFor(t, "the link after the first JWT expired", 15*time.Second, func() bool { return a.Status().Link.Connected })
	lz, err := e.hub.Leafz(nil)
	if err != nil || len(lz.Leafs) != 1 {
		t.Fatalf("hub leafz: %+v %v", lz, err)
	}
}

func TestBacklogFull(t *testing.T) {
	e := newEnv(t, time.Hour)
	cfg, err := e.enroll(t, false)
	if err != nil {
		t.Fatal(err)
	}
	cfg.BufferBytes = 1 << 20
	a := startAgent(t, cfg, agent.Options{Version: "test"})
	local, err := nats.Connect(a.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	alerts, err := local.SubscribeSync("fleet.prod.veh.v1.agent.backlog")
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 4096)
	for i := 0; i < 400; i++ { // ~1.6 MiB into a 1 MiB buffer
		if err := local.Publish("fleet.prod.veh.v1.state.position", payload); err != nil {
			t.Fatal(err)
		}
	}
	_ = local.Flush()
	waitFor(t, "the buffer to count as full", 10*time.Second, func() bool { return a.Status().Backlog.Full })
	m, err := alerts.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("no agent.backlog event: %v", err)
	}
	var ev agent.BacklogEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil || !ev.Full || ev.MaxBytes != 1<<20 {
		t.Fatalf("agent.backlog event %s: %v", m.Data, err)
	}
	s := a.Status()
	if s.Backlog.Bytes > 1<<20 || s.Backlog.FirstSeq == 1 {
		t.Fatalf("backlog %+v: want the oldest dropped and at most 1 MiB", s.Backlog)
	}
}

// TestForwarderHook runs edge/forward through the agent's hook against the
// work-queue stream: stored telemetry reaches a hub stream on ingest.> and
// leaves the local backlog.
func TestForwarderHook(t *testing.T) {
	e := newEnv(t, time.Hour)
	cfg, err := e.enroll(t, false)
	if err != nil {
		t.Fatal(err)
	}
	hubc := natstest.Connect(t, e.hub.ClientURL(), e.tenant.Admin(t))
	hjs, _ := jetstream.New(hubc)
	ctx := context.Background()
	if _, err := hjs.CreateStream(ctx, jetstream.StreamConfig{Name: "TWIN", Subjects: []string{"ingest.>"}, Duplicates: 5 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	fwd := func(ctx context.Context, env agent.ForwardEnv) error {
		js, err := jetstream.New(env.Local)
		if err != nil {
			return err
		}
		f, err := forward.New(forward.Config{Local: js, LocalStream: env.Stream, Durable: "forwarder", Hub: env.Hub,
			IngestPrefix: env.IngestSubject, SubjectPrefix: env.SubjectPrefix, MsgIDPrefix: env.VehicleID, Logger: env.Logger})
		if err != nil {
			return err
		}
		if err := f.Run(ctx); ctx.Err() == nil {
			return err
		}
		return nil
	}
	a := startAgent(t, cfg, agent.Options{Version: "test", Forward: fwd})
	local, err := nats.Connect(a.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	for i := 0; i < 100; i++ {
		_ = local.Publish("fleet.prod.veh.v1.state.position", []byte(`{"i":`+strconv.Itoa(i)+`}`))
	}
	_ = local.Flush()
	waitFor(t, "100 messages in the hub stream and an empty backlog", 20*time.Second, func() bool {
		st, err := hjs.Stream(ctx, "TWIN")
		if err != nil {
			return false
		}
		info, _ := st.Info(ctx)
		return info.State.Msgs == 100 && a.Status().Backlog.Messages == 0
	})
}
