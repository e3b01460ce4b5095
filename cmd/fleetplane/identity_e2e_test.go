package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// startConfigServer starts a stock nats-server from a configuration file, the
// way `nats-server -c file` would.
// dir "" = a temporary directory; includes are relative to dir.
func startConfigServer(t *testing.T, dir, conf string) *server.Server {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	p := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(p, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := server.ProcessConfigFile(p)
	if err != nil {
		t.Fatalf("config %s: %v\n%s", p, err, conf)
	}
	o.NoSigs, o.NoLog = true, true
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	return s
}

// TestIdentityEndToEnd drives the identity layer through the binary's entry
// point and stock tooling: `admin operator init/export`, a hub started from
// the exported configuration, `serve` pushing to it, enrollment over HTTP
// with a key made on the "vehicle", the vehicle creds as a stock
// nats-server leaf remote, a grant used by nats.go (and the nats CLI when
// installed), and a revocation proven on the hub.
func TestIdentityEndToEnd(t *testing.T) {
	env := operatorEnv(t, "DATABASE_URL", pgtest.NewURL(t))
	ctx := context.Background()
	var out, errb bytes.Buffer

	// init refuses to overwrite the operator.
	if err := run(ctx, []string{"admin", "operator", "init"}, mapEnv(env), &out, &errb); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second operator init: %v", err)
	}
	out.Reset()
	if err := run(ctx, []string{"admin", "operator", "init", "--if-missing"}, mapEnv(env), &out, &errb); err != nil || !strings.Contains(out.String(), "(unchanged)") {
		t.Fatalf("operator init --if-missing: %v, %q", err, out.String())
	}
	// export writes the hub material; a hub runs from it.
	hubDir := t.TempDir()
	jwtDir := filepath.Join(hubDir, "jwt")
	if err := run(ctx, []string{"admin", "operator", "export", "--dir", hubDir, "--resolver-dir", jwtDir}, mapEnv(env), &out, &errb); err != nil {
		t.Fatalf("operator export: %v\n%s", err, errb.String())
	}
	hub := startConfigServer(t, hubDir, fmt.Sprintf(`
server_name: hub-e2e
listen: "127.0.0.1:-1"
leafnodes { listen: "127.0.0.1:-1", isolate_leafnode_interest: true }
jetstream { store_dir: %q }
include %q
`, filepath.Join(hubDir, "js"), natsissuer.HubConfigFile))
	_, leafURL, err := hubURLs(hub)
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(t.TempDir(), "controlplane.yaml")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`
regions:
  - name: europe
    leaf_urls: [%q]
    client_urls: [%q]
    nodes: [{name: hub-e2e, url: %q}]
`, leafURL, hub.ClientURL(), hub.ClientURL())), 0o600); err != nil {
		t.Fatal(err)
	}
	base, _, stop := startRun(t, env, "serve", "--config", cfgFile, "--http-addr", "127.0.0.1:0")

	anon := &client{t: t, base: base}
	signup := anon.do("POST", "/v1/signup", map[string]any{
		"organisation": "Acme Drones", "email": "ops@acme.example", "password": "correct horse battery staple"}, 201)
	c := &client{t: t, base: base, key: signup["api_key"].(map[string]any)["secret"].(string)}
	c.do("POST", "/v1/fleets", map[string]any{"slug": "survey", "environment": "prod"}, 201)
	tok := c.do("POST", "/v1/fleets/survey/enrollment-tokens", map[string]any{
		"expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "max_uses": 2}, 201)
	if !strings.Contains(tok["install_command"].(string), tok["token"].(string)) {
		t.Fatalf("install command = %v", tok["install_command"])
	}

	// The vehicle makes its key; only the public half travels.
	kp, _ := nkeys.CreateUser()
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	enr := anon.do("POST", "/v1/enroll", map[string]any{"token": tok["token"], "public_key": pub,
		"vehicle_id": "Drone-7", "hostname": "jetson-7", "arch": "arm64", "agent_version": "test"}, 201)
	if enr["subject_prefix"] != "fleet.prod.veh.Drone-7" || enr["leaf_urls"].([]any)[0] != leafURL {
		t.Fatalf("enrollment = %v", enr)
	}
	credsFile := filepath.Join(t.TempDir(), "vehicle.creds")
	writeCreds(t, credsFile, enr["jwt"].(string), seed)

	// A stock nats-server leaf with the vehicle creds as its remote.
	leaf := startConfigServer(t, "", fmt.Sprintf(`
server_name: vehicle-drone-7
listen: "127.0.0.1:-1"
leafnodes { reconnect: "100ms", remotes: [ { url: %q, credentials: %q } ] }
`, leafURL, credsFile))
	waitFor(t, 5*time.Second, "vehicle leaf connected", func() bool { return hub.NumLeafNodes() == 1 })
	// Presence, from the hub's connect event.
	waitFor(t, 10*time.Second, "vehicle online in the API", func() bool {
		v := c.do("GET", "/v1/fleets/survey/vehicles/Drone-7", nil, 200)
		return v["online"] == true && v["hub_node"] == "hub-e2e"
	})

	// Telemetry forwarded into hub history (as the agent's forwarder does)
	// reads back through the twin API; a command reaches the vehicle.
	vlocal, err := nats.Connect(leaf.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer vlocal.Close()
	if _, err := vlocal.Subscribe("fleet.prod.veh.Drone-7.cmd.>", func(m *nats.Msg) {
		_ = m.Respond([]byte(`{"result":"accepted"}`))
	}); err != nil {
		t.Fatal(err)
	}
	_ = vlocal.Flush()
	waitFor(t, 10*time.Second, "vehicle history through the API", func() bool {
		msg := nats.NewMsg("ingest.prod.Drone-7.state.position")
		msg.Header.Set("Nats-Msg-Id", "Drone-7-1")
		msg.Data = []byte(`{"lat":52.0}`)
		_ = vlocal.PublishMsg(msg)
		h := c.do("GET", "/v1/fleets/survey/vehicles/Drone-7/history", nil, 200)
		items, _ := h["items"].([]any)
		return len(items) == 1 && items[0].(map[string]any)["kind"] == "state.position"
	})
	st := c.do("GET", "/v1/fleets/survey/vehicles/Drone-7/state", nil, 200)
	if !strings.Contains(fmt.Sprint(st), "state.position") {
		t.Fatalf("vehicle state = %v", st)
	}
	var cmd map[string]any
	waitFor(t, 10*time.Second, "a command answered by the vehicle", func() bool {
		cmd = c.do("POST", "/v1/fleets/survey/vehicles/Drone-7/commands", map[string]any{"command": "land", "timeout_ms": 2000}, 0)
		return cmd["reply"] != nil
	})
	if fmt.Sprint(cmd["reply"]) != "map[result:accepted]" {
		t.Fatalf("command result = %v", cmd)
	}

	// A grant for a partner who brings its own key, read-only on state.
	gkp, _ := nkeys.CreateUser()
	gpub, _ := gkp.PublicKey()
	gseed, _ := gkp.Seed()
	dry := c.do("POST", "/v1/grants?dry_run=true", map[string]any{
		"scopes":     []any{map[string]any{"fleet": "survey", "categories": []string{"state"}}},
		"expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "public_key": gpub}, 200)
	if fmt.Sprint(dry["subscribe"]) != "[fleet.prod.veh.*.state.>]" || dry["jwt"] != nil {
		t.Fatalf("dry run = %v", dry)
	}
	g := c.do("POST", "/v1/grants", map[string]any{"description": "partner",
		"scopes":     []any{map[string]any{"fleet": "survey", "categories": []string{"state"}}},
		"expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "public_key": gpub}, 201)
	if g["creds"] != nil {
		t.Fatal("a grant with the partner's own key returned creds")
	}
	grantCreds := filepath.Join(t.TempDir(), "grant.creds")
	writeCreds(t, grantCreds, g["jwt"].(string), gseed)
	cliCtx := c.do("GET", "/v1/grants/"+g["id"].(string)+"/context", nil, 200)
	if cliCtx["url"] != hub.ClientURL() {
		t.Fatalf("grant context = %v", cliCtx)
	}

	gc, err := nats.Connect(hub.ClientURL(), nats.UserCredentials(grantCreds), nats.NoReconnect(),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	sub, _ := gc.SubscribeSync("fleet.prod.veh.*.state.>")
	_ = gc.Flush()
	vc, err := nats.Connect(leaf.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer vc.Close()
	waitFor(t, 5*time.Second, "grant receives vehicle telemetry", func() bool {
		_ = vc.Publish("fleet.prod.veh.Drone-7.state.position", []byte(`{"lat":52.1}`))
		_, err := sub.NextMsg(100 * time.Millisecond)
		return err == nil
	})
	// The grant may not publish commands: the server says so.
	perm := make(chan error, 1)
	gc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { perm <- err })
	_ = gc.Publish("fleet.prod.veh.Drone-7.cmd.land", nil)
	select {
	case err := <-perm:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("grant publish error = %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no permissions violation for a grant publishing a command")
	}

	// The nats CLI with the grant creds, when installed (CI installs it).
	if natsCLI, err := exec.LookPath("nats"); err == nil {
		cmd := exec.Command(natsCLI, "--server", hub.ClientURL(), "--creds", grantCreds, "sub", "fleet.prod.veh.*.state.>", "--count", "1", "--raw")
		var cliOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &cliOut, &cliOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		deadline := time.After(10 * time.Second)
	loop:
		for {
			_ = vc.Publish("fleet.prod.veh.Drone-7.state.position", []byte(`{"lat":52.2}`))
			select {
			case err := <-done:
				if err != nil || !strings.Contains(cliOut.String(), `{"lat":52.2}`) {
					t.Fatalf("nats sub with the grant creds: %v\n%s", err, cliOut.String())
				}
				break loop
			case <-deadline:
				_ = cmd.Process.Kill()
				t.Fatalf("nats sub got nothing:\n%s", cliOut.String())
			case <-time.After(200 * time.Millisecond):
			}
		}
	} else if os.Getenv("FLEETPLANE_REQUIRE_NATS_CLI") != "" {
		t.Fatal("the nats CLI is required (FLEETPLANE_REQUIRE_NATS_CLI) but not on PATH")
	} else {
		t.Log("nats CLI not installed: skipped its part (make tools installs it)")
	}

	// Revoke the vehicle through the API: proven, disconnected, stays out.
	rev := c.do("POST", "/v1/fleets/survey/vehicles/Drone-7/revoke", nil, 200)
	if rev["status"] != "proven" || rev["connections_remaining"].(float64) != 0 {
		t.Fatalf("revocation = %v", rev)
	}
	nodes := rev["nodes"].([]any)
	if len(nodes) != 1 || nodes[0].(map[string]any)["node"] != "hub-e2e" || nodes[0].(map[string]any)["ok"] != true {
		t.Fatalf("revocation nodes = %v", nodes)
	}
	if hub.NumLeafNodes() != 0 {
		t.Fatal("the revoked vehicle is still connected")
	}
	time.Sleep(400 * time.Millisecond)
	if hub.NumLeafNodes() != 0 {
		t.Fatal("the revoked vehicle reconnected")
	}
	v := c.do("GET", "/v1/fleets/survey/vehicles/Drone-7", nil, 200)
	if v["status"] != "revoked" || v["revocation"] == nil {
		t.Fatalf("vehicle after revoke = %v", v)
	}
	waitFor(t, 10*time.Second, "revoked vehicle offline in the API", func() bool {
		v := c.do("GET", "/v1/fleets/survey/vehicles/Drone-7", nil, 200)
		return v["online"] == false && v["last_disconnect_reason"] != nil
	})
	// Revoke the grant: its connection closes.
	closed := make(chan struct{})
	gc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	c.do("DELETE", "/v1/grants/"+g["id"].(string), nil, 200)
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
		t.Fatal("revoked grant still connected")
	}

	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var mb bytes.Buffer
	_, _ = mb.ReadFrom(resp.Body)
	resp.Body.Close()
	if !strings.Contains(mb.String(), `fleetplane_hub_node_up{node="hub-e2e"} 1`) {
		t.Errorf("/metrics lacks the hub node's status")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func writeCreds(t *testing.T, path, jwt string, seed []byte) {
	t.Helper()
	b, err := natsauth.FormatCreds(jwt, seed)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
