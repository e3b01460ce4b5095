package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/fleetplane/fleetplane/internal/natstest"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// TestDevHubCluster runs `fleetplane dev --hub-nodes 3`: three hub nodes on
// loopback form one cluster, every node trusts the enrolled vehicle's
// account, the leafnode listeners serve TLS with the dev CA, and the CA
// bundle reaches the vehicle at enrollment. A vehicle on node 3 is heard by
// a grant connected to node 1 (through the cluster's routes).
func TestDevHubCluster(t *testing.T) {
	state := t.TempDir()
	base, stdout, stop := startRun(t, map[string]string{"DATABASE_URL": pgtest.NewURL(t)}, append(devArgs(state), "--hub-nodes", "3")...)
	key := readDevEnv(filepath.Join(state, "dev.env"))["FLEETPLANE_API_KEY"]
	c := &client{t: t, base: base, key: key}
	for _, f := range []string{"ca-key.pem", "hub-key.pem"} {
		if st, err := os.Stat(filepath.Join(state, "ca", f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("dev CA %s: %v %v, want mode 0600", f, st, err)
		}
	}
	caPEM, err := os.ReadFile(filepath.Join(state, "ca", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), filepath.Join(state, "ca", "ca.pem")) {
		t.Errorf("dev did not print where the hub CA is:\n%s", stdout)
	}

	tok := c.do("POST", "/v1/fleets/demo/enrollment-tokens", map[string]any{
		"expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "max_uses": 1}, 201)
	kp, _ := nkeys.CreateUser()
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	enr := (&client{t: t, base: base}).do("POST", "/v1/enroll", map[string]any{"token": tok["token"], "public_key": pub,
		"vehicle_id": "Drone-3", "hostname": "jetson-3", "arch": "arm64", "agent_version": "test"}, 201)
	var leafURLs []string
	for _, u := range enr["leaf_urls"].([]any) {
		leafURLs = append(leafURLs, u.(string))
	}
	if len(leafURLs) != 3 || !strings.HasPrefix(leafURLs[0], "tls://127.0.0.1:") {
		t.Fatalf("leaf_urls = %v, want three tls:// URLs", leafURLs)
	}
	if enr["ca_bundle"] != string(caPEM) {
		t.Fatalf("enrollment ca_bundle = %v, want the dev CA", enr["ca_bundle"])
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(enr["ca_bundle"].(string))) {
		t.Fatal("ca_bundle holds no certificate")
	}
	creds := filepath.Join(t.TempDir(), "vehicle.creds")
	writeCreds(t, creds, enr["jwt"].(string), seed)
	// The third node: the account reached it too (pushed to every node).
	leaf := natstest.RunLeaf(t, leafURLs[2], creds, natstest.WithRemoteTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}))
	waitFor(t, 10*time.Second, "vehicle leaf connected over TLS to node 3", func() bool { return leaf.NumLeafNodes() == 1 })

	gkp, _ := nkeys.CreateUser()
	gpub, _ := gkp.PublicKey()
	gseed, _ := gkp.Seed()
	g := c.do("POST", "/v1/grants", map[string]any{
		"scopes":     []any{map[string]any{"fleet": "demo", "categories": []string{"state"}}},
		"expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "public_key": gpub}, 201)
	grantCreds := filepath.Join(t.TempDir(), "grant.creds")
	writeCreds(t, grantCreds, g["jwt"].(string), gseed)
	node1 := fmt.Sprint(c.do("GET", "/v1/grants/"+g["id"].(string)+"/context", nil, 200)["url"]) // the first client URL
	gc, err := nats.Connect(node1, nats.UserCredentials(grantCreds), nats.NoReconnect())
	if err != nil {
		t.Fatalf("grant on node 1 (%s): %v", node1, err)
	}
	defer gc.Close()
	sub, _ := gc.SubscribeSync("fleet.dev.veh.*.state.>")
	_ = gc.Flush()
	vc, err := nats.Connect(leaf.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer vc.Close()
	waitFor(t, 10*time.Second, "telemetry from node 3 reaches a grant on node 1", func() bool {
		_ = vc.Publish("fleet.dev.veh.Drone-3.state.position", []byte(`{"lat":1}`))
		_, err := sub.NextMsg(100 * time.Millisecond)
		return err == nil
	})
	// The control plane reaches the vehicle on node 3 through its tenant
	// service user (dev's client listener is plain while the region has a
	// CA bundle for the leaf listener: that must not force TLS).
	if _, err := vc.Subscribe("fleet.dev.veh.Drone-3.cmd.>", func(m *nats.Msg) { _ = m.Respond([]byte(`{"ok":true}`)) }); err != nil {
		t.Fatal(err)
	}
	_ = vc.Flush()
	waitFor(t, 10*time.Second, "a command answered through the cluster", func() bool {
		r := c.do("POST", "/v1/fleets/demo/vehicles/Drone-3/commands", map[string]any{"command": "rtl", "timeout_ms": 2000}, 0)
		return r["reply"] != nil
	})
	waitFor(t, 10*time.Second, "Drone-3 online on a hub node", func() bool {
		v := c.do("GET", "/v1/fleets/demo/vehicles/Drone-3", nil, 200)
		return v["online"] == true
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestDevSimVehicles is what a newcomer sees after `make run` with
// --sim-vehicles: simulated vehicles enroll through the API with the real
// agent code, show online, and their positions reach the fleet state.
func TestDevSimVehicles(t *testing.T) {
	state := t.TempDir()
	base, _, stop := startRun(t, map[string]string{"DATABASE_URL": pgtest.NewURL(t)}, append(devArgs(state), "--sim-vehicles", "2")...)
	key := readDevEnv(filepath.Join(state, "dev.env"))["FLEETPLANE_API_KEY"]
	c := &client{t: t, base: base, key: key}
	waitFor(t, 60*time.Second, "two simulated vehicles online with positions in the fleet state", func() bool {
		st := c.do("GET", "/v1/fleets/demo/state", nil, 0)
		items, _ := st["items"].([]any)
		withPos := 0
		for _, it := range items {
			if m, _ := it.(map[string]any); m != nil && m["message"] != nil {
				withPos++
			}
		}
		v := c.do("GET", "/v1/fleets/demo/vehicles?online=true", nil, 0)
		online, _ := v["items"].([]any)
		return withPos == 2 && len(online) == 2
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
