package controlplane_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/controlplane/twin"
	"github.com/fleetplane/fleetplane/internal/hubnode"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
	"github.com/fleetplane/fleetplane/internal/password"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// The digital-twin tests wire the Service to Postgres, the natsissuer, the
// hubs client, the twin adapter and real hub nodes (one, or a three-node
// JetStream cluster), and vehicles that enroll through the Service, run a
// leaf with the issued credentials and forward with PubAcks as the agent's
// forwarder does (ingest.<env>.<vid>.<rest>, Nats-Msg-Id <vid>-<seq>).

type twinEnv struct {
	svc   *controlplane.Service
	pool  *pgxpool.Pool
	nodes []*server.Server
	tw    *twin.Twin
	iss   *natsissuer.Issuer
}

// newTwinEnv starts n hub nodes (a cluster when n > 1) in region europe.
func newTwinEnv(tb testing.TB, n int) *twinEnv {
	tb.Helper()
	pool := pgtest.NewPool(tb)
	store := postgres.NewStore(pool)
	iss := mustIssuer(tb, store)
	e := &twinEnv{pool: pool, iss: iss}
	region := controlplane.Region{Name: "europe", DisplayName: "Europe"}
	var hubNodes []hubs.Node
	var routes []string
	ports := freePorts(tb, n)
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	for i := range n {
		cfg := hubnode.Config{Name: fmt.Sprintf("hub-%d", i+1), Region: "europe", Dir: tb.TempDir(),
			ClientHost: "127.0.0.1", ClientPort: -1, LeafHost: "127.0.0.1", LeafPort: -1,
			Trust: natsissuer.HubTrust(iss.Operator())}
		if n > 1 {
			// Every node lists every route, its own included (skipped).
			cfg.ClusterHost, cfg.ClusterPort, cfg.Routes = "127.0.0.1", ports[i], routes
		}
		s, err := hubnode.Start(cfg)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		e.nodes = append(e.nodes, s)
		hubNodes = append(hubNodes, hubs.Node{Name: cfg.Name, URL: s.ClientURL()})
		region.Nodes = append(region.Nodes, controlplane.HubNode{Name: cfg.Name, URL: s.ClientURL()})
		region.ClientURLs = append(region.ClientURLs, s.ClientURL())
		region.LeafURLs = append(region.LeafURLs, natstest.LeafURL(tb, s))
	}
	if n > 1 {
		waitFor(tb, 20*time.Second, "JetStream meta leader", func() error {
			for _, s := range e.nodes {
				if s.JetStreamIsLeader() {
					return nil
				}
			}
			return errors.New("none yet")
		})
	}
	h, err := hubs.New(hubNodes, iss.SystemUserCreds(time.Hour), hubs.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for h.Ready(ctx) != nil && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	e.tw = twin.New(twin.Options{})
	tb.Cleanup(e.tw.Close)
	e.svc = controlplane.NewService(store, controlplane.Config{
		Regions:        []controlplane.Region{region},
		PasswordParams: password.Params{Memory: 64, Time: 1, Threads: 1},
		Issuer:         iss,
		Hubs:           h,
		Telemetry:      e.tw,
		PushTimeout:    20 * time.Second, // R3 stream creation on a busy machine
	}, nil)
	return e
}

// freePorts finds n free loopback ports for route listeners that every
// node must know before the first starts, below the kernel's ephemeral
// range so that no outgoing connection takes one meanwhile (as
// internal/hubnode's supercluster test does).
func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				low = v
			}
		}
	}
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 || low <= 11000 {
			tb.Fatalf("no free ports below the ephemeral range (%d)", low)
		}
		p := 10000 + rand.IntN(low-10000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		defer l.Close()
		ports = append(ports, p)
	}
	return ports
}

// waitFor retries f until it returns nil.
func waitFor(tb testing.TB, timeout time.Duration, what string, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tenant signs up and creates fleets (env prod) in europe.
func (e *twinEnv) tenant(tb testing.TB, org string, fleets ...string) context.Context {
	tb.Helper()
	ctx, _ := MustSignup(tb, e.svc, org, strings.ToLower(strings.ReplaceAll(org, " ", ""))+"@example.com")
	for _, f := range fleets {
		if _, err := e.svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: f, Environment: "prod"}); err != nil {
			tb.Fatal(err)
		}
	}
	return ctx
}

// twinVehicle is an enrolled vehicle: its leaf and local client as the
// agent runs them.
type twinVehicle struct {
	id    string
	creds *controlplane.VehicleCredentials
	leaf  *server.Server
	local *nats.Conn
	js    jetstream.JetStream
	seq   int
}

// vehicle enrolls vid in fleet and, when run, starts its leaf (remotes to
// every node of the region).
func (e *twinEnv) vehicle(tb testing.TB, ctx context.Context, fleet, vid string, run bool) *twinVehicle {
	tb.Helper()
	exp := time.Now().Add(time.Hour)
	tok, err := e.svc.CreateEnrollmentToken(ctx, fleet, controlplane.EnrollmentTokenCreate{ExpiresAt: &exp, VehicleID: vid})
	if err != nil {
		tb.Fatal(err)
	}
	k := newVehicleKey(tb)
	c, err := e.svc.Enroll(context.Background(), controlplane.EnrollRequest{Token: tok.Secret, PublicKey: k.pub, VehicleID: vid})
	if err != nil {
		tb.Fatalf("Enroll(%s): %v", vid, err)
	}
	v := &twinVehicle{id: vid, creds: c}
	if !run {
		return v
	}
	creds, err := natsauth.FormatCreds(c.JWT, k.seed)
	if err != nil {
		tb.Fatal(err)
	}
	p := filepath.Join(tb.TempDir(), "vehicle.creds")
	if err := os.WriteFile(p, creds, 0o600); err != nil {
		tb.Fatal(err)
	}
	var urls []*url.URL
	for _, s := range c.LeafURLs {
		u, _ := url.Parse(s)
		urls = append(urls, u)
	}
	v.leaf = natstest.RunLeaf(tb, c.LeafURLs[0], p, natstest.WithLeafReconnect(100*time.Millisecond),
		natstest.WithOptions(func(o *server.Options) { o.LeafNode.Remotes[0].URLs = urls }))
	waitFor(tb, 10*time.Second, vid+" leaf link", func() error {
		if v.leaf.NumLeafNodes() != 1 {
			return errors.New("not connected")
		}
		return nil
	})
	if v.local, err = nats.Connect(v.leaf.ClientURL(), nats.CustomInboxPrefix(c.InboxPrefix)); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(v.local.Close)
	if v.js, err = jetstream.New(v.local); err != nil {
		tb.Fatal(err)
	}
	return v
}

// forward publishes one message of kind to the hub history as the
// forwarder does, holding and retrying it until it is acknowledged.
func (v *twinVehicle) forward(tb testing.TB, kind string, data any) *jetstream.PubAck {
	tb.Helper()
	v.seq++
	b, err := json.Marshal(data)
	if err != nil {
		tb.Fatal(err)
	}
	var ack *jetstream.PubAck
	waitFor(tb, 15*time.Second, "forward "+kind, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		ack, err = v.js.Publish(ctx, v.creds.IngestSubject+"."+kind, b, jetstream.WithMsgID(fmt.Sprintf("%s-%d", v.id, v.seq)))
		return err
	})
	return ack
}

func tenantStreamRow(tb testing.TB, pool *pgxpool.Pool) (hash string, replicas int, maxBytes int64, updated time.Time) {
	tb.Helper()
	if err := pool.QueryRow(context.Background(), `SELECT config_hash, replicas, max_bytes, updated_at FROM tenant_streams`).
		Scan(&hash, &replicas, &maxBytes, &updated); err != nil {
		tb.Fatalf("tenant_streams: %v", err)
	}
	return
}

func TestTwinProvisioning(t *testing.T) {
	t.Parallel()
	e := newTwinEnv(t, 1)
	ctx := e.tenant(t, "Acme") // no fleet, no stream
	var n int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM tenant_streams`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("streams before the first fleet: %d, %v", n, err)
	}
	if _, err := e.svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: "drones", Environment: "prod"}); err != nil {
		t.Fatal(err)
	}
	hash, replicas, maxBytes, updated := tenantStreamRow(t, e.pool)
	limits := controlplane.DefaultPlanLimits(controlplane.PlanFree)
	if replicas != 1 || maxBytes != limits.JetStreamDisk*80/100 {
		t.Fatalf("record: replicas %d, max bytes %d", replicas, maxBytes)
	}
	// On the hub, with the free plan's retention and dedupe window.
	tenantID := controlplane.PrincipalFromContext(ctx).TenantID
	a, err := postgres.NewStore(e.pool).FindAccount(context.Background(), tenantID, false)
	if err != nil {
		t.Fatal(err)
	}
	svcUser, err := serviceConn(e, a)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(svcUser)
	info, err := js.Stream(context.Background(), controlplane.TwinStream)
	if err != nil {
		t.Fatal(err)
	}
	policy := controlplane.DefaultHistoryPolicy(controlplane.PlanFree)
	if c := info.CachedInfo().Config; c.MaxAge != policy.Retention || c.Duplicates != policy.DedupeWindow || c.MaxBytes != maxBytes {
		t.Fatalf("stream config %+v", c)
	}

	// Another fleet in the same region and the push job: nothing to do.
	if _, err := e.svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: "more", Environment: "staging"}); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.RunAccountPush(context.Background(), controlplane.AccountPushJob{TenantID: tenantID}); err != nil {
		t.Fatal(err)
	}
	if h2, _, _, u2 := tenantStreamRow(t, e.pool); h2 != hash || !u2.Equal(updated) {
		t.Fatal("an up-to-date stream was provisioned again")
	}
	// A changed configuration (as after a plan change) is applied by the
	// push job.
	if _, err := e.pool.Exec(context.Background(), `UPDATE tenant_streams SET config_hash = 'stale'`); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.RunAccountPush(context.Background(), controlplane.AccountPushJob{TenantID: tenantID}); err != nil {
		t.Fatal(err)
	}
	if h2, _, _, u2 := tenantStreamRow(t, e.pool); h2 != hash || !u2.After(updated) {
		t.Fatalf("not re-applied: %s %v", h2, u2)
	}
}

// serviceConn connects as a fresh service user of account a (with its own
// inbox prefix: natsauth.ServiceScope allows no other).
func serviceConn(e *twinEnv, a *controlplane.Account) (*nats.Conn, error) {
	k, err := natsauth.NewUserKey()
	if err != nil {
		return nil, err
	}
	j, err := e.iss.SignService(a, k.Public, "test", time.Now().Add(time.Hour))
	if err != nil {
		return nil, err
	}
	return nats.Connect(e.nodes[0].ClientURL(), nats.UserJWTAndSeed(j, string(k.Seed)),
		nats.CustomInboxPrefix(natsauth.ServiceInboxPrefix("test")))
}

type pos struct {
	Vehicle string `json:"vehicle"`
	Window  int    `json:"window"`
	I       int    `json:"i"`
}

func TestTwinHistoryStateLiveAndCommands(t *testing.T) {
	t.Parallel()
	e := newTwinEnv(t, 1)
	ctx := e.tenant(t, "Acme", "drones", "other") // both in env prod
	v1 := e.vehicle(t, ctx, "drones", "V1", true)
	v2 := e.vehicle(t, ctx, "drones", "V2", true)
	e.vehicle(t, ctx, "drones", "V3", false) // enrolled, never connects
	o1 := e.vehicle(t, ctx, "other", "O1", true)

	// Three windows of V1 positions, with V2 and O1 interleaved and their
	// boundaries recorded between PubAcks.
	const perWindow = 7
	var bounds []time.Time
	for w := range 3 {
		bounds = append(bounds, time.Now())
		time.Sleep(2 * time.Millisecond)
		for i := range perWindow {
			v1.forward(t, "state.position", pos{"V1", w, i})
			v2.forward(t, "state.position", pos{"V2", w, i})
			o1.forward(t, "state.position", pos{"O1", w, i})
		}
		time.Sleep(2 * time.Millisecond)
	}
	bounds = append(bounds, time.Now())
	v1.forward(t, "state.battery", map[string]int{"pct": 77})
	v1.forward(t, "evt.armed", map[string]bool{"armed": true})

	history := func(q controlplane.HistoryQuery) []*controlplane.TwinMessage {
		t.Helper()
		var out []*controlplane.TwinMessage
		for {
			p, err := e.svc.VehicleHistory(ctx, "drones", "V1", q)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, p.Items...)
			if p.NextCursor == "" {
				return out
			}
			q.Cursor = p.NextCursor
		}
	}
	for w := range 3 {
		got := history(controlplane.HistoryQuery{Since: &bounds[w], Until: &bounds[w+1], Limit: 3})
		if len(got) != perWindow {
			t.Fatalf("window %d: %d messages, want %d", w, len(got), perWindow)
		}
		for i, m := range got {
			var p pos
			if err := json.Unmarshal(m.Data, &p); err != nil || p != (pos{"V1", w, i}) || m.Kind != "state.position" ||
				m.VehicleID != "V1" || m.Subject != "fleet.prod.veh.V1.state.position" {
				t.Fatalf("window %d message %d: %+v (%s)", w, i, m, m.Data)
			}
		}
	}
	all := history(controlplane.HistoryQuery{Limit: 5})
	if len(all) != 3*perWindow+2 {
		t.Fatalf("all history: %d", len(all))
	}
	if evts := history(controlplane.HistoryQuery{Kind: "evt"}); len(evts) != 1 || evts[0].Kind != "evt.armed" {
		t.Fatalf("events: %+v", evts)
	}
	for _, bad := range []controlplane.HistoryQuery{{Limit: 1001}, {Kind: "cmd"}, {Kind: "state.a.b"}, {Cursor: "nope"},
		{Since: &bounds[1], Until: &bounds[0]}} {
		if _, err := e.svc.VehicleHistory(ctx, "drones", "V1", bad); controlplane.ErrorCode(err) != controlplane.EINVALID {
			t.Errorf("%+v: %v", bad, err)
		}
	}
	if _, err := e.svc.VehicleHistory(ctx, "drones", "O1", controlplane.HistoryQuery{}); controlplane.ErrorCode(err) != controlplane.ENOTFOUND {
		t.Errorf("another fleet's vehicle: %v", err)
	}

	// Latest state: the last message per kind.
	st, err := e.svc.VehicleState(as(ctx, controlplane.RoleViewer), "drones", "V1", nil)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, m := range st.Messages {
		kinds[m.Kind] = string(m.Data)
	}
	if len(kinds) != 3 || kinds["state.position"] != `{"vehicle":"V1","window":2,"i":6}` || kinds["state.battery"] != `{"pct":77}` ||
		kinds["evt.armed"] != `{"armed":true}` {
		t.Fatalf("state = %v", kinds)
	}
	if st, err := e.svc.VehicleState(ctx, "drones", "V1", &bounds[1]); err != nil || len(st.Messages) != 1 ||
		string(st.Messages[0].Data) != `{"vehicle":"V1","window":0,"i":6}` {
		t.Fatalf("state as of the end of window 0: %+v, %v", st, err)
	}

	// Fleet state: every vehicle of the fleet, V3 without a position, not O1.
	fs, err := e.svc.FleetState(ctx, "drones", controlplane.FleetStateQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(fs.Items) != 3 || fs.Items[0].VehicleID != "V1" || fs.Items[1].VehicleID != "V2" || fs.Items[2].VehicleID != "V3" ||
		fs.Items[2].Message != nil || string(fs.Items[1].Message.Data) != `{"vehicle":"V2","window":2,"i":6}` {
		t.Fatalf("fleet state = %+v", fs.Items)
	}
	page, err := e.svc.FleetState(ctx, "drones", controlplane.FleetStateQuery{PageRequest: controlplane.PageRequest{Limit: 2}})
	if err != nil || len(page.Items) != 2 || page.NextCursor == "" {
		t.Fatalf("fleet state page: %+v, %v", page, err)
	}
	if page, err = e.svc.FleetState(ctx, "drones", controlplane.FleetStateQuery{PageRequest: controlplane.PageRequest{Limit: 2, Cursor: page.NextCursor}}); err != nil ||
		len(page.Items) != 1 || page.Items[0].VehicleID != "V3" || page.NextCursor != "" {
		t.Fatalf("fleet state page 2: %+v, %v", page, err)
	}

	// Live: V1's message published after the feed opened; O1 (another
	// fleet in the same environment) filtered out.
	lctx, lcancel := context.WithCancel(ctx)
	feed, err := e.svc.FleetLive(lctx, "drones")
	if err != nil {
		t.Fatal(err)
	}
	var got *controlplane.TwinMessage
	waitFor(t, 10*time.Second, "live message", func() error {
		_ = o1.local.Publish("fleet.prod.veh.O1.state.position", []byte(`{"o":1}`))
		_ = v1.local.Publish("fleet.prod.veh.V1.evt.mode", []byte(`{"mode":"GUIDED"}`))
		select {
		case got = <-feed.C:
			return nil
		case <-time.After(50 * time.Millisecond):
			return errors.New("nothing yet")
		}
	})
	if got.VehicleID != "V1" || got.Kind != "evt.mode" || string(got.Data) != `{"mode":"GUIDED"}` {
		t.Fatalf("live = %+v", got)
	}
	lcancel()
	for m := range feed.C {
		if m.VehicleID != "V1" {
			t.Fatalf("live from another fleet: %+v", m)
		}
	}

	// Commands.
	if _, err := v1.local.Subscribe(v1.creds.SubjectPrefix+".cmd.>", func(m *nats.Msg) {
		_ = m.Respond([]byte(`{"result":"accepted","cmd":"` + m.Subject[strings.LastIndexByte(m.Subject, '.')+1:] + `"}`))
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := v2.local.Subscribe(v2.creds.SubjectPrefix+".cmd.>", func(*nats.Msg) {}); err != nil { // never answers
		t.Fatal(err)
	}
	_ = v1.local.Flush()
	_ = v2.local.Flush()
	var res *controlplane.CommandResult
	waitFor(t, 10*time.Second, "first command", func() error {
		res, err = e.svc.SendCommand(ctx, "drones", "V1", controlplane.CommandRequest{Command: "takeoff",
			Params: json.RawMessage(`{"alt": 10}`), TimeoutMS: 500})
		return err
	})
	if string(res.Reply) != `{"result":"accepted","cmd":"takeoff"}` || res.Subject != "fleet.prod.veh.V1.cmd.takeoff" {
		t.Fatalf("command result = %+v (%s)", res, res.Reply)
	}
	_, err = e.svc.SendCommand(ctx, "drones", "V3", controlplane.CommandRequest{Command: "land"})
	if controlplane.ErrorCode(err) != controlplane.ETIMEOUT || !strings.Contains(controlplane.ErrorMessage(err), "offline (no responders") {
		t.Fatalf("offline vehicle: %v", err)
	}
	waitFor(t, 10*time.Second, "silent responder", func() error {
		_, err = e.svc.SendCommand(ctx, "drones", "V2", controlplane.CommandRequest{Command: "rtl", TimeoutMS: 150})
		if msg := controlplane.ErrorMessage(err); !strings.Contains(msg, "did not answer within 150 ms") {
			return fmt.Errorf("%v", err)
		}
		return nil
	})
	for name, bad := range map[string]controlplane.CommandRequest{
		"verb":      {Command: "selfdestruct"},
		"token":     {Command: "arm.>"},
		"array":     {Command: "arm", Params: json.RawMessage(`[1]`)},
		"bad json":  {Command: "arm", Params: json.RawMessage(`{`)},
		"too large": {Command: "arm", Params: json.RawMessage(`{"x":"` + strings.Repeat("a", controlplane.MaxCommandParamsBytes) + `"}`)},
		"timeout":   {Command: "arm", TimeoutMS: 99},
		"timeout+":  {Command: "arm", TimeoutMS: 30001},
	} {
		if _, err := e.svc.SendCommand(ctx, "drones", "V1", bad); controlplane.ErrorCode(err) != controlplane.EINVALID {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := e.svc.SendCommand(as(ctx, controlplane.RoleViewer), "drones", "V1", controlplane.CommandRequest{Command: "arm"}); controlplane.ErrorCode(err) != controlplane.EFORBIDDEN {
		t.Errorf("viewer: %v", err)
	}
	// Audited, with the outcome.
	action := "vehicle.command"
	evs, err := e.svc.AuditEvents(ctx, controlplane.AuditQuery{Action: action})
	if err != nil {
		t.Fatal(err)
	}
	outcomes := map[string]int{}
	for _, ev := range evs.Items {
		outcomes[ev.Details["outcome"].(string)]++
		if ev.TargetID == "V1" && ev.Details["outcome"] == "ok" && (ev.Details["command"] != "takeoff" || ev.Details["params_bytes"] != float64(11)) {
			t.Errorf("audit details = %v", ev.Details)
		}
	}
	if outcomes["ok"] < 1 || outcomes["offline"] != 1 || outcomes["timeout"] < 1 {
		t.Fatalf("audited outcomes = %v", outcomes)
	}
}

func TestTwinNotConfigured(t *testing.T) {
	t.Parallel()
	svc := MustService(t)
	ctx, _ := MustSignup(t, svc, "Acme", "acme@example.com")
	if _, err := svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: "drones"}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateVehicle(ctx, "drones", controlplane.VehicleCreate{VehicleID: "V1"}); err != nil {
		t.Fatal(err)
	}
	_, err := svc.VehicleState(ctx, "drones", "V1", nil)
	if controlplane.ErrorCode(err) != controlplane.EUNAVAILABLE || !strings.Contains(controlplane.ErrorMessage(err), "not configured") {
		t.Fatalf("state: %v", err)
	}
	if _, err := svc.VehicleState(ctx, "drones", "nope", nil); controlplane.ErrorCode(err) != controlplane.ENOTFOUND {
		t.Fatalf("unknown vehicle: %v", err)
	}
	if _, err := svc.FleetLive(ctx, "nope"); controlplane.ErrorCode(err) != controlplane.ENOTFOUND {
		t.Fatalf("unknown fleet: %v", err)
	}
	if _, err := svc.FleetState(ctx, "drones", controlplane.FleetStateQuery{}); controlplane.ErrorCode(err) != controlplane.EUNAVAILABLE {
		t.Fatalf("fleet state: %v", err)
	}
}

// TestTwinNodeLossKeepsAckedMessages: in a three-node region (history R3),
// one vehicle forwards with PubAcks while the stream's leader node is shut
// down. Every message whose PubAck the vehicle got is in hub history
// exactly once and in order (read back through the Service).
func TestTwinNodeLossKeepsAckedMessages(t *testing.T) {
	if testing.Short() {
		t.Skip("three-node cluster and a leader election")
	}
	t.Parallel()
	e := newTwinEnv(t, 3)
	ctx := e.tenant(t, "Acme", "drones")
	if _, replicas, _, _ := tenantStreamRow(t, e.pool); replicas != 3 {
		t.Fatalf("history has %d replicas, want 3", replicas)
	}
	v := e.vehicle(t, ctx, "drones", "V1", true)
	v.forward(t, "state.position", map[string]int{"i": 0})

	// The forwarder: one message at a time, each held and retried with the
	// same Nats-Msg-Id until its PubAck arrives.
	var acked, retries atomic.Int64
	acked.Store(1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; ; i++ {
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				_, err := v.js.Publish(c, v.creds.IngestSubject+".state.position", fmt.Appendf(nil, `{"i":%d}`, i),
					jetstream.WithMsgID("V1-"+strconv.Itoa(i+1)))
				cancel()
				if err == nil {
					acked.Add(1)
					break
				}
				retries.Add(1)
				time.Sleep(50 * time.Millisecond)
			}
		}
	}()
	waitFor(t, 20*time.Second, "200 acknowledged", func() error {
		if acked.Load() < 200 {
			return errors.New("not yet")
		}
		return nil
	})
	// Shut the stream's leader down.
	tenantID := controlplane.PrincipalFromContext(ctx).TenantID
	a, err := postgres.NewStore(e.pool).FindAccount(context.Background(), tenantID, false)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := serviceConn(e, a)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	s, err := js.Stream(context.Background(), controlplane.TwinStream)
	if err != nil {
		t.Fatal(err)
	}
	leader := s.CachedInfo().Cluster.Leader
	nc.Close()
	var victim *server.Server
	for _, n := range e.nodes {
		if n.Name() == leader {
			victim = n
		}
	}
	if victim == nil {
		t.Fatalf("leader %q is not a node", leader)
	}
	killedAt := acked.Load()
	victim.Shutdown()
	victim.WaitForShutdown()
	waitFor(t, 60*time.Second, "200 more acknowledged after the shutdown", func() error {
		if acked.Load() < killedAt+200 {
			return errors.New("not yet")
		}
		return nil
	})
	close(stop)
	wg.Wait()
	n := acked.Load()

	// Read back through the Service: the retries' duplicates are not
	// stored, nothing acknowledged is missing.
	var got []*controlplane.TwinMessage
	waitFor(t, 30*time.Second, "history complete", func() error {
		got = got[:0]
		q := controlplane.HistoryQuery{Limit: controlplane.MaxHistoryLimit}
		for {
			p, err := e.svc.VehicleHistory(ctx, "drones", "V1", q)
			if err != nil {
				return err
			}
			got = append(got, p.Items...)
			if p.NextCursor == "" {
				break
			}
			q.Cursor = p.NextCursor
		}
		if int64(len(got)) < n {
			return fmt.Errorf("%d of %d acknowledged messages in history", len(got), n)
		}
		return nil
	})
	seen := map[int]bool{}
	for j, m := range got {
		var p struct{ I int }
		if err := json.Unmarshal(m.Data, &p); err != nil {
			t.Fatal(err)
		}
		if seen[p.I] {
			t.Fatalf("message %d stored twice", p.I)
		}
		seen[p.I] = true
		if p.I != j {
			t.Fatalf("position %d holds message %d: order broken", j, p.I)
		}
	}
	for i := range int(n) {
		if !seen[i] {
			t.Fatalf("acknowledged message %d missing", i)
		}
	}
	t.Logf("node %s (stream leader) shut down after %d acks; %d acknowledged in all, %d stored (the last publish may be stored unacknowledged), %d publish retries",
		leader, killedAt, n, len(got), retries.Load())
}
