// Package e2e_test runs the control plane and the edge agent together: the
// only place allowed to import both sides (edge never imports controlplane).
package e2e_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/edge/agent"
	"github.com/fleetplane/fleetplane/edge/enroll"
	"github.com/fleetplane/fleetplane/edge/sim"
	"github.com/fleetplane/fleetplane/internal/pgtest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestAgentEnrollAndRun: a real control plane (Postgres, issuer, hubs
// adapter, REST API) and a TLS hub node; the agent enrolls over HTTP with a
// fleet token, runs, shows online, and what an on-vehicle service publishes
// on the agent's loopback port reaches a grant on the hub.
func TestAgentEnrollAndRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("E2E_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}

	s := newStack(t, ctx)
	svc, tctx, srv, hub, leafURL := s.svc, s.tctx, s.url, s.hub, s.leafURL
	exp := time.Now().Add(time.Hour)

	// The agent: enroll, then run on random local ports.
	dir := t.TempDir()
	if _, _, err := agent.Enroll(ctx, agent.EnrollOptions{Server: srv, Token: "fpe_wrong_token", Dir: filepath.Join(dir, "etc"), DataDir: filepath.Join(dir, "var")}); err == nil || !strings.Contains(err.Error(), "enrollment token rejected") {
		t.Fatalf("bad token: %v", err)
	}
	cfg, creds, err := agent.Enroll(ctx, agent.EnrollOptions{Server: srv, Token: s.token, VehicleID: "Drone-1",
		Dir: filepath.Join(dir, "etc"), DataDir: filepath.Join(dir, "var"), Version: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	if creds.Vehicle.VehicleID != "Drone-1" || cfg.CAFile == "" || creds.LeafURLs[0] != leafURL {
		t.Fatalf("enrollment: %+v", creds)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A simulated autopilot talks MAVLink over UDP to the agent's gateway.
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gwAddr := udp.LocalAddr().String()
	udp.Close()
	a, err := agent.Start(ctx, agent.Options{Config: cfg, Version: "e2e", Logger: log, ClientPort: -1,
		HTTPListener: ln, MonitorInterval: 100 * time.Millisecond, Forward: agent.StoreAndForward,
		MAVLink: &agent.MAVLinkConfig{Endpoints: []string{"udp-server:" + gwAddr}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	sm, err := sim.Start(sim.Config{UDP: gwAddr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sm.Close)

	// Online in the control plane.
	for {
		v, err := svc.Vehicle(tctx, "drones", "Drone-1")
		if err != nil {
			t.Fatal(err)
		}
		if v.Online {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("vehicle never online; agent status %+v", a.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		s, err := agent.FetchStatus(ctx, a.HTTPAddr())
		if err != nil {
			t.Fatal(err)
		}
		if s.Link.Connected && s.Link.Hub == "hub-1" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("agent status %+v", s)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A grant on the hub receives what an on-vehicle service publishes on
	// the agent's loopback listener.
	g, err := svc.CreateGrant(tctx, controlplane.GrantCreate{Description: "partner",
		Subscribe: []string{"fleet.prod.veh.*.state.>"}, ExpiresAt: &exp})
	if err != nil {
		t.Fatal(err)
	}
	kp, err := nkeys.ParseDecoratedNKey(g.Creds)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	gc, err := nats.Connect(hub.ClientURL(), nats.UserJWTAndSeed(g.JWT, string(seed)), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	sub, err := gc.SubscribeSync("fleet.prod.veh.*.state.>")
	if err != nil {
		t.Fatal(err)
	}
	_ = gc.Flush()
	if !strings.HasPrefix(a.ClientURL(), "nats://127.0.0.1:") {
		t.Fatalf("client URL %s: want the loopback", a.ClientURL())
	}
	local, err := nats.Connect(a.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	for {
		_ = local.Publish(creds.SubjectPrefix+".state.position", []byte(`{"schema":1,"lat":48.1}`))
		m, err := sub.NextMsg(100 * time.Millisecond)
		// The simulator publishes too: look for this service's message.
		if err == nil && string(m.Data) == `{"schema":1,"lat":48.1}` {
			if m.Subject != "fleet.prod.veh.Drone-1.state.position" {
				t.Fatalf("grant got %s", m.Subject)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the grant never received the vehicle's telemetry")
		}
	}

	// The simulator's telemetry went through the gateway, the local stream
	// and the forwarder into hub history, readable through the API.
	for {
		page, err := svc.VehicleHistory(tctx, "drones", "Drone-1", controlplane.HistoryQuery{Kind: "state.heartbeat", Limit: 10})
		if err == nil && len(page.Items) > 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no simulator heartbeat in hub history: %v; agent status %+v", err, a.Status())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The forwarder's resume point: the Nats-Msg-Id of the vehicle's last
	// stored message, for the key that signs a nonce.
	vkp, err := enroll.ReadSeed(cfg.SeedFile)
	if err != nil {
		t.Fatal(err)
	}
	last, err := (&enroll.Client{Server: srv}).IngestPosition(ctx, vkp)
	if err != nil || !strings.HasPrefix(last, "Drone-1-") {
		t.Fatalf("ingest position = %q, %v", last, err)
	}
	other, _ := nkeys.CreateUser()
	if _, err := (&enroll.Client{Server: srv}).IngestPosition(ctx, other); err == nil {
		t.Fatal("a key no vehicle holds got an ingest position")
	}

	// An API command reaches the simulator and comes back with its ACK.
	var res2 *controlplane.CommandResult
	for {
		res2, err = svc.SendCommand(tctx, "drones", "Drone-1", controlplane.CommandRequest{Command: "arm", TimeoutMS: 3000})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("arm command: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	st, err := agent.FetchStatus(ctx, a.HTTPAddr())
	if err != nil || st.Forward == nil || st.Forward.Forwarded == 0 || st.Forward.OrderViolations != 0 {
		t.Fatalf("agent status forward counters: %+v, %v", st, err)
	}
	if resp, err := http.Get("http://" + a.HTTPAddr() + "/metrics"); err != nil {
		t.Fatal(err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, m := range []string{"fleetplane_agent_forwarded_total", "fleetplane_agent_forward_order_violations_total 0"} {
			if !strings.Contains(string(b), m) {
				t.Errorf("agent /metrics lacks %s", m)
			}
		}
	}
	if !strings.Contains(string(res2.Reply), `"ok":true`) {
		t.Fatalf("arm reply = %s", res2.Reply)
	}
	for !sm.State().Armed {
		if ctx.Err() != nil {
			t.Fatal("the simulator never armed")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
