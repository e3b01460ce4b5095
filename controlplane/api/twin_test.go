package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/api"
	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/controlplane/twin"
	"github.com/fleetplane/fleetplane/internal/hubnode"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// The digital-twin endpoints over a real hub node: the Service with the
// twin adapter, vehicles enrolled through the API that run a leaf and
// forward with PubAcks. Every exchange but the event stream's 200 is
// validated against openapi.yaml (the validating client reads whole
// bodies; the stream is read with a plain client and checked by hand).

func newTwinAPIEnv(tb testing.TB) *env {
	tb.Helper()
	pool := pgtest.NewPool(tb)
	cfg := testConfig(tb)
	hub, err := hubnode.Start(hubnode.Config{Name: "hub-1", Region: "europe", Dir: tb.TempDir(),
		ClientHost: "127.0.0.1", ClientPort: -1, LeafHost: "127.0.0.1", LeafPort: -1,
		Trust: natsissuer.HubTrust(cfg.Issuer.Operator())})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { hub.Shutdown(); hub.WaitForShutdown() })
	h, err := hubs.New([]hubs.Node{{Name: "hub-1", URL: hub.ClientURL()}}, cfg.Issuer.(*natsissuer.Issuer).SystemUserCreds(time.Hour),
		hubs.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for h.Ready(ctx) != nil && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	tw := twin.New(twin.Options{})
	tb.Cleanup(tw.Close)
	cfg.Regions = []controlplane.Region{{Name: "europe", DisplayName: "Europe",
		LeafURLs: []string{natstest.LeafURL(tb, hub)}, ClientURLs: []string{hub.ClientURL()},
		Nodes: []controlplane.HubNode{{Name: "hub-1", URL: hub.ClientURL()}}}}
	cfg.Hubs, cfg.Telemetry = h, tw
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	svc := controlplane.NewService(postgres.NewStore(pool), cfg, logger)
	reg := prometheus.NewRegistry()
	srv := httptest.NewServer(api.New(svc, api.Options{Logger: logger, Registerer: reg, Gatherer: reg,
		SignupRatePerMinute: 10000, EnrollRatePerMinute: 10000, LiveHeartbeat: 100 * time.Millisecond}))
	tb.Cleanup(srv.Close)
	e := &env{tb: tb, pool: pool, svc: svc, srv: srv, reg: reg, logs: logs}
	e.client = &http.Client{Transport: &validatingTransport{tb: tb, v: mustValidator(tb), base: srv.Client().Transport}}
	return e
}

// apiVehicle enrolls vid through the API and, when run, starts its leaf and
// a local client as the agent would.
type apiVehicle struct {
	id    string
	creds api.VehicleCredentials
	local *nats.Conn
	js    jetstream.JetStream
	seq   int
}

func (e *env) twinVehicle(key, fleet, vid string, run bool) *apiVehicle {
	e.tb.Helper()
	k := newUserKey(e.tb)
	v := &apiVehicle{id: vid, creds: e.mustEnroll(key, fleet, k, vid)}
	if !run {
		return v
	}
	creds, err := natsauth.FormatCreds(v.creds.Jwt, []byte(k.seed(e.tb)))
	if err != nil {
		e.tb.Fatal(err)
	}
	p := filepath.Join(e.tb.TempDir(), "vehicle.creds")
	if err := os.WriteFile(p, creds, 0o600); err != nil {
		e.tb.Fatal(err)
	}
	leaf := natstest.RunLeaf(e.tb, v.creds.LeafUrls[0], p, natstest.WithLeafReconnect(100*time.Millisecond))
	deadline := time.Now().Add(10 * time.Second)
	for leaf.NumLeafNodes() != 1 {
		if time.Now().After(deadline) {
			e.tb.Fatalf("%s: leaf not connected", vid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if v.local, err = nats.Connect(leaf.ClientURL(), nats.CustomInboxPrefix(v.creds.InboxPrefix)); err != nil {
		e.tb.Fatal(err)
	}
	e.tb.Cleanup(v.local.Close)
	v.js, _ = jetstream.New(v.local)
	return v
}

// forward stores one message in hub history as the forwarder does.
func (v *apiVehicle) forward(tb testing.TB, kind, data string) {
	tb.Helper()
	v.seq++
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := v.js.Publish(ctx, v.creds.IngestSubject+"."+kind, []byte(data), jetstream.WithMsgID(fmt.Sprintf("%s-%d", v.id, v.seq)))
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("forward %s: %v", kind, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTwinEndpoints(t *testing.T) {
	t.Parallel()
	e := newTwinAPIEnv(t)
	tn := e.signup("Acme")
	e.createFleet(tn.key, "drones")
	viewer := e.createKey(tn.key, "viewer", api.KeyRoleViewer).Secret
	member := e.createKey(tn.key, "member", api.KeyRoleMember).Secret
	v1 := e.twinVehicle(tn.key, "drones", "V1", true)
	e.twinVehicle(tn.key, "drones", "V2", false) // never connects
	base := "/v1/fleets/drones/vehicles/V1"

	// Nothing stored yet.
	var st api.VehicleState
	e.do("GET", base+"/state", viewer, nil).must(t, 200, &st)
	if st.VehicleId != "V1" || len(st.Messages) != 0 {
		t.Fatalf("empty state = %+v", st)
	}
	var fs api.FleetState
	e.do("GET", "/v1/fleets/drones/state", viewer, nil).must(t, 200, &fs)
	if fs.Kind != "state.position" || len(fs.Items) != 2 || fs.Items[0].Message != nil || fs.Items[1].Message != nil {
		t.Fatalf("empty fleet state = %+v", fs)
	}

	for i := range 5 {
		v1.forward(t, "state.position", fmt.Sprintf(`{"lat": 48.1, "i": %d}`, i))
	}
	mid := time.Now()
	time.Sleep(2 * time.Millisecond)
	v1.forward(t, "state.raw", "not json \xff")
	v1.forward(t, "evt.armed", `{"armed":true}`)

	// History, in pages of 2; the payload comes back as JSON.
	var all []api.TwinMessage
	path := base + "/history?limit=2"
	for pages := 0; ; pages++ {
		var page api.TwinMessageList
		e.do("GET", path, viewer, nil).must(t, 200, &page)
		all = append(all, page.Items...)
		if page.NextCursor == nil {
			break
		}
		path = base + "/history?limit=2&cursor=" + url.QueryEscape(*page.NextCursor)
	}
	if len(all) != 7 || all[0].Kind != "state.position" || all[0].Subject != "fleet.prod.veh.V1.state.position" ||
		string(*all[0].Data) != `{"lat":48.1,"i":0}` || all[5].Kind != "state.raw" || string(*all[5].Data) != "\"not json \uFFFD\"" {
		t.Fatalf("history = %d items: %+v", len(all), all)
	}
	var since api.TwinMessageList
	e.do("GET", base+"/history?since="+url.QueryEscape(mid.Format(time.RFC3339Nano))+"&kind=evt", viewer, nil).must(t, 200, &since)
	if len(since.Items) != 1 || since.Items[0].Kind != "evt.armed" || since.NextCursor != nil {
		t.Fatalf("since mid, events = %+v", since)
	}
	var until api.TwinMessageList
	e.do("GET", base+"/history?until="+url.QueryEscape(mid.Format(time.RFC3339Nano)), viewer, nil).must(t, 200, &until)
	if len(until.Items) != 5 {
		t.Fatalf("until mid: %d", len(until.Items))
	}

	// Latest per kind; fleet state.
	e.do("GET", base+"/state", viewer, nil).must(t, 200, &st)
	kinds := map[string]string{}
	for _, m := range st.Messages {
		kinds[m.Kind] = string(*m.Data)
	}
	if len(kinds) != 3 || kinds["state.position"] != `{"lat":48.1,"i":4}` || kinds["evt.armed"] != `{"armed":true}` {
		t.Fatalf("state = %v", kinds)
	}
	e.do("GET", "/v1/fleets/drones/state?limit=1", viewer, nil).must(t, 200, &fs)
	if len(fs.Items) != 1 || fs.Items[0].VehicleId != "V1" || string(*fs.Items[0].Message.Data) != `{"lat":48.1,"i":4}` || fs.NextCursor == nil {
		t.Fatalf("fleet state = %+v", fs)
	}

	// Commands.
	if _, err := v1.local.Subscribe(v1.creds.SubjectPrefix+".cmd.>", func(m *nats.Msg) {
		if strings.HasSuffix(m.Subject, ".rtl") {
			return // a command handler that hangs
		}
		_ = m.Respond([]byte(`{"result":"accepted","params":` + string(m.Data) + `}`))
	}); err != nil {
		t.Fatal(err)
	}
	_ = v1.local.Flush()
	var res api.CommandResult
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := e.do("POST", base+"/commands", member, map[string]any{"command": "goto", "params": map[string]float64{"lat": 1.5}, "timeout_ms": 500})
		if r.status == 200 {
			r.must(t, 200, &res)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("command: %d %s", r.status, r.body)
		}
		time.Sleep(20 * time.Millisecond) // the responder's interest is on its way
	}
	if res.Command != "goto" || res.Subject != "fleet.prod.veh.V1.cmd.goto" || string(*res.Reply) != `{"result":"accepted","params":{"lat":1.5}}` {
		t.Fatalf("command result = %+v %s", res, *res.Reply)
	}
	p := e.do("POST", "/v1/fleets/drones/vehicles/V2/commands", member, map[string]any{"command": "land"}).problem(t, 504)
	if p.Code != api.ProblemCodeTimeout || !strings.Contains(p.Detail, `vehicle "V2" is offline (no responders`) {
		t.Fatalf("offline: %+v", p)
	}
	p = e.do("POST", base+"/commands", member, map[string]any{"command": "rtl", "timeout_ms": 150}).problem(t, 504)
	if p.Code != api.ProblemCodeTimeout || p.Detail != `vehicle "V1" did not answer within 150 ms` {
		t.Fatalf("silent: %+v", p)
	}
	e.do("POST", base+"/commands", viewer, map[string]any{"command": "arm"}).problem(t, 403)
	e.do("POST", base+"/commands", member, map[string]any{"command": "selfdestruct"}, malformed()).problem(t, 400)
	e.do("POST", base+"/commands", member, map[string]any{"command": "arm", "params": []int{1}}, malformed()).problem(t, 400)
	e.do("POST", base+"/commands", member, map[string]any{"command": "arm", "timeout_ms": 50}, malformed()).problem(t, 400)
	big := map[string]any{"command": "arm", "params": map[string]string{"x": strings.Repeat("a", 17<<10)}}
	e.do("POST", base+"/commands", member, big).problem(t, 400)
	var evs api.AuditEventList
	e.do("GET", "/v1/audit-events?action=vehicle.command", tn.key, nil).must(t, 200, &evs)
	if len(evs.Items) < 3 || evs.Items[0].Details["outcome"] != "timeout" || evs.Items[1].Details["outcome"] != "offline" ||
		evs.Items[1].TargetId != "V2" || evs.Items[0].Details["latency_ms"] == nil {
		t.Fatalf("audit = %+v", evs.Items)
	}

	// Unknown fleet or vehicle: 404 everywhere; bad parameters: 400.
	for _, path := range []string{"/v1/fleets/nope/state", "/v1/fleets/nope/live", "/v1/fleets/drones/vehicles/nope/state",
		"/v1/fleets/drones/vehicles/nope/history", "/v1/fleets/nope/vehicles/V1/history"} {
		e.do("GET", path, viewer, nil).problem(t, 404)
	}
	e.do("POST", "/v1/fleets/drones/vehicles/nope/commands", member, map[string]any{"command": "arm"}).problem(t, 404)
	for _, q := range []string{"limit=1001", "limit=0", "kind=cmd", "since=yesterday", "cursor=abc", "bogus=1",
		"since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z"} {
		e.do("GET", base+"/history?"+q, viewer, nil, malformed()).problem(t, 400)
	}
	e.do("GET", "/v1/fleets/drones/state?kind=state", viewer, nil, malformed()).problem(t, 400)
}

// TestTwinLiveStream reads the event stream with a plain client: a message
// published after the stream opened arrives as an event, heartbeats keep
// coming, and the handler ends when the client goes away.
func TestTwinLiveStream(t *testing.T) {
	t.Parallel()
	e := newTwinAPIEnv(t)
	tn := e.signup("Acme")
	e.createFleet(tn.key, "drones")
	e.do("POST", "/v1/fleets", tn.key, api.FleetCreate{Slug: "other", Environment: ptr("prod")}).must(t, 201, nil)
	v1 := e.twinVehicle(tn.key, "drones", "V1", true)
	o1 := e.twinVehicle(tn.key, "other", "O1", true) // same environment, other fleet

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/v1/fleets/drones/live", nil)
	req.Header.Set("Authorization", "Bearer "+tn.key)
	res, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("live: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	if l := <-lines; l != ": live" {
		t.Fatalf("first line %q", l)
	}
	// Published after the stream opened (and retried while the interest
	// travels to the leafs); O1 must never show up.
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				_ = o1.local.Publish("fleet.prod.veh.O1.state.position", []byte(`{"o":1}`))
				_ = v1.local.Publish("fleet.prod.veh.V1.state.position", []byte(`{"lat":48.1}`))
			}
		}
	}()
	defer close(stop)
	var heartbeats, events int
	timeout := time.After(20 * time.Second)
	for heartbeats < 2 || events < 2 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("stream ended")
			}
			switch {
			case l == ": heartbeat":
				heartbeats++
			case strings.HasPrefix(l, "data: "):
				var m api.LiveMessage
				if err := json.Unmarshal([]byte(l[len("data: "):]), &m); err != nil {
					t.Fatal(err)
				}
				if m.VehicleId != "V1" || m.Kind != "state.position" || string(*m.Data) != `{"lat":48.1}` || m.ReceivedAt.IsZero() {
					t.Fatalf("event = %+v", m)
				}
				events++
			case l == "event: message", l == "":
			default:
				t.Fatalf("unexpected line %q", l)
			}
		case <-timeout:
			t.Fatalf("%d heartbeats, %d events", heartbeats, events)
		}
	}
	// The client goes away: the handler ends (the request leaves the
	// in-flight gauge).
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for inFlight(t, e) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the live handler outlived its client")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func inFlight(tb testing.TB, e *env) float64 {
	tb.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "fleetplane_http_requests_in_flight" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

// Without telemetry configured the endpoints answer 503 (after the usual
// 404s for unknown fleets and vehicles).
func TestTwinNotConfigured(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tn := e.signup("Acme")
	e.createFleet(tn.key, "drones")
	e.createVehicle(tn.key, "drones", "V1", nil)
	for _, r := range []*response{
		e.do("GET", "/v1/fleets/drones/vehicles/V1/state", tn.key, nil),
		e.do("GET", "/v1/fleets/drones/vehicles/V1/history", tn.key, nil),
		e.do("GET", "/v1/fleets/drones/state", tn.key, nil),
		e.do("GET", "/v1/fleets/drones/live", tn.key, nil),
	} {
		if p := r.problem(t, 503); !strings.Contains(p.Detail, "telemetry is not configured") {
			t.Errorf("detail %q", p.Detail)
		}
	}
	// A pending vehicle cannot take commands at all.
	e.do("POST", "/v1/fleets/drones/vehicles/V1/commands", tn.key, map[string]any{"command": "arm"}).problem(t, 409)
	e.do("GET", "/v1/fleets/drones/vehicles/V9/state", tn.key, nil).problem(t, 404)
}
