package portal_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/controlplane/twin"
	"github.com/fleetplane/fleetplane/internal/hubnode"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
)

// HTTP-level tests of the fleet pages (fleet.go): without telemetry (the
// pages still work from Postgres) and over a real hub node with the twin
// adapter, presence and vehicles that run a leaf with credentials the
// Service issued, as the agent does.

// --- helpers ---

// principalCtx is a context carrying the browser's principal, for Service
// calls the tests make on the user's behalf (creating vehicles, tokens).
func (b *browser) principalCtx() context.Context {
	b.tb.Helper()
	p, _, err := b.e.svc.SessionAuth(context.Background(), b.sessionToken())
	if err != nil {
		b.tb.Fatalf("SessionAuth: %v", err)
	}
	return controlplane.NewContextWithPrincipal(context.Background(), p)
}

// createFleet creates a fleet through the form and returns its page.
func (b *browser) createFleet(slug string) *response {
	b.tb.Helper()
	b.submit("/fleets", "/fleets", url.Values{"slug": {slug}, "name": {"Fleet " + slug}, "environment": {"prod"}, "region": {"europe"}}).
		redirectsTo(b.tb, "/fleets/"+slug+"?m=fleet-created")
	return b.get("/fleets/"+slug+"?m=fleet-created").must(b.tb, http.StatusOK)
}

// commandsAudited counts the tenant's vehicle.command audit events.
func (e *portalEnv) commandsAudited(tb testing.TB) int {
	tb.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_events WHERE action = 'vehicle.command'`).Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n
}

// waitUntil retries f until it returns nil.
func waitUntil(tb testing.TB, timeout time.Duration, what string, f func() error) {
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

// fleetEnv is the portal over a real hub node: the Service has the hubs
// client (pushes and presence), the twin adapter (history, live feed,
// commands) and runs presence.
type fleetEnv struct {
	*portalEnv
	hub *server.Server
}

func newFleetEnv(tb testing.TB) *fleetEnv {
	tb.Helper()
	fe := &fleetEnv{}
	e := newPortalEnv(tb, withService(func(c *controlplane.Config) {
		iss := c.Issuer.(*natsissuer.Issuer)
		hub, err := hubnode.Start(hubnode.Config{Name: "hub-1", Region: "europe", Dir: tb.TempDir(),
			ClientHost: "127.0.0.1", ClientPort: -1, LeafHost: "127.0.0.1", LeafPort: -1,
			Trust: natsissuer.HubTrust(iss.Operator())})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { hub.Shutdown(); hub.WaitForShutdown() })
		h, err := hubs.New([]hubs.Node{{Name: "hub-1", URL: hub.ClientURL()}}, iss.SystemUserCreds(time.Hour),
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
		c.Regions = []controlplane.Region{{Name: "europe", DisplayName: "Europe",
			LeafURLs: []string{natstest.LeafURL(tb, hub)}, ClientURLs: []string{hub.ClientURL()},
			Nodes: []controlplane.HubNode{{Name: "hub-1", URL: hub.ClientURL()}}}}
		c.Hubs, c.Telemetry, c.Presence = h, tw, h
		c.PresenceInterval = time.Second
		fe.hub = hub
	}))
	fe.portalEnv = e
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.svc.RunPresence(ctx)
	}()
	tb.Cleanup(func() { cancel(); <-done })
	return fe
}

// simVehicle is an enrolled vehicle running a leaf, with a local client as
// the agent has one.
type simVehicle struct {
	id    string
	creds *controlplane.VehicleCredentials
	local *nats.Conn
	js    jetstream.JetStream
	seq   int
}

// enroll enrolls vid in fleet (through a token the owner creates) and,
// when run, starts its leaf and waits until the hub and the Service see
// it online.
func (fe *fleetEnv) enroll(tb testing.TB, owner *browser, fleet, vid string, run bool) *simVehicle {
	tb.Helper()
	ctx := owner.principalCtx()
	exp := time.Now().Add(time.Hour)
	tok, err := fe.svc.CreateEnrollmentToken(ctx, fleet, controlplane.EnrollmentTokenCreate{ExpiresAt: &exp, VehicleID: vid})
	if err != nil {
		tb.Fatal(err)
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		tb.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	c, err := fe.svc.Enroll(context.Background(), controlplane.EnrollRequest{Token: tok.Secret, PublicKey: pub, VehicleID: vid})
	if err != nil {
		tb.Fatalf("Enroll(%s): %v", vid, err)
	}
	v := &simVehicle{id: vid, creds: c}
	if !run {
		return v
	}
	creds, err := natsauth.FormatCreds(c.JWT, seed)
	if err != nil {
		tb.Fatal(err)
	}
	p := filepath.Join(tb.TempDir(), vid+".creds")
	if err := os.WriteFile(p, creds, 0o600); err != nil {
		tb.Fatal(err)
	}
	leaf := natstest.RunLeaf(tb, c.LeafURLs[0], p, natstest.WithLeafReconnect(100*time.Millisecond))
	waitUntil(tb, 10*time.Second, vid+" leaf link", func() error {
		if leaf.NumLeafNodes() != 1 {
			return errors.New("not connected")
		}
		return nil
	})
	if v.local, err = nats.Connect(leaf.ClientURL(), nats.CustomInboxPrefix(c.InboxPrefix)); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(v.local.Close)
	if v.js, err = jetstream.New(v.local); err != nil {
		tb.Fatal(err)
	}
	waitUntil(tb, 15*time.Second, vid+" online", func() error {
		got, err := fe.svc.Vehicle(ctx, fleet, vid)
		if err != nil {
			return err
		}
		if !got.Online {
			return errors.New("offline")
		}
		return nil
	})
	return v
}

// forward stores a message in hub history as the agent's forwarder does.
func (v *simVehicle) forward(tb testing.TB, kind string, data any) {
	tb.Helper()
	v.seq++
	b, err := json.Marshal(data)
	if err != nil {
		tb.Fatal(err)
	}
	waitUntil(tb, 15*time.Second, "forward "+kind, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := v.js.Publish(ctx, v.creds.IngestSubject+"."+kind, b, jetstream.WithMsgID(fmt.Sprintf("%s-%d", v.id, v.seq)))
		return err
	})
}

// position is a state.position payload (internal/telemetry's schema).
func position(lat, lon, alt float64, at time.Time) map[string]any {
	return map[string]any{"v": 1, "received_at": at.UTC().Format(time.RFC3339Nano), "system_id": 1, "component_id": 1,
		"lat_deg": lat, "lon_deg": lon, "alt_msl_m": 488 + alt, "alt_rel_m": alt, "vn_mps": 0, "ve_mps": 0, "vd_mps": 0}
}

// liveStream reads the fleet page's event stream.
type liveStream struct {
	cancel context.CancelFunc
	events chan map[string]any
	first  string // the first line
}

// openLive opens GET /fleets/{fleet}/live as the browser and decodes its
// "vehicle" events in the background.
func (b *browser) openLive(fleet string) *liveStream {
	b.tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, b.e.srv.URL+"/fleets/"+fleet+"/live", nil)
	req.Header.Set("Accept", "text/event-stream")
	res, err := b.c.Do(req)
	if err != nil {
		cancel()
		b.tb.Fatal(err)
	}
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
		cancel()
		b.tb.Fatalf("live: status %d, content type %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(res.Body)
	if !sc.Scan() {
		cancel()
		b.tb.Fatal("live: no first line")
	}
	ls := &liveStream{cancel: cancel, events: make(chan map[string]any, 1024), first: sc.Text()}
	go func() {
		defer res.Body.Close()
		defer close(ls.events)
		event := ""
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: ") && event == "vehicle":
				var m map[string]any
				if json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &m) == nil {
					ls.events <- m
				}
			case line == "":
				event = ""
			}
		}
	}()
	b.tb.Cleanup(cancel)
	return ls
}

// waitEvent returns the first event that match accepts.
func (ls *liveStream) waitEvent(tb testing.TB, what string, match func(map[string]any) bool) map[string]any {
	tb.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case m, ok := <-ls.events:
			if !ok {
				tb.Fatalf("live: stream ended waiting for %s", what)
			}
			if match(m) {
				return m
			}
		case <-timeout:
			tb.Fatalf("live: no event %s", what)
		}
	}
}

var (
	markerRe  = regexp.MustCompile(`<g id="marker-([A-Za-z0-9_-]+)" class="marker (online|offline)"[^>]*transform="translate\(([-0-9.]+) ([-0-9.]+)\)"`)
	trackRe   = regexp.MustCompile(`<polyline id="track-([A-Za-z0-9_-]+)" class="track" data-vehicle="[^"]*" points="([^"]*)"`)
	pictureRe = regexp.MustCompile(`<svg id="fleet-picture"[^>]*data-w="(\d+)" data-h="(\d+)" data-lat0="([-0-9.]+)" data-lon0="([-0-9.]+)" data-k="([-0-9.]+)" data-scale="([-0-9.]+)"`)
)

// pictureOf parses the fleet picture: its projection and each vehicle's
// marker position and track length.
type pictureOf struct {
	w, h, lat0, lon0, k, scale float64
	markers                    map[string][2]float64
	online                     map[string]bool
	tracks                     map[string]int
}

func parsePicture(tb testing.TB, body string) *pictureOf {
	tb.Helper()
	m := pictureRe.FindStringSubmatch(body)
	if m == nil {
		tb.Fatalf("no fleet picture in:\n%.4000s", body)
	}
	f := func(s string) float64 {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			tb.Fatal(err)
		}
		return v
	}
	p := &pictureOf{w: f(m[1]), h: f(m[2]), lat0: f(m[3]), lon0: f(m[4]), k: f(m[5]), scale: f(m[6]),
		markers: map[string][2]float64{}, online: map[string]bool{}, tracks: map[string]int{}}
	for _, mm := range markerRe.FindAllStringSubmatch(body, -1) {
		p.markers[mm[1]] = [2]float64{f(mm[3]), f(mm[4])}
		p.online[mm[1]] = mm[2] == "online"
	}
	for _, mm := range trackRe.FindAllStringSubmatch(body, -1) {
		p.tracks[mm[1]] = len(strings.Fields(mm[2]))
	}
	return p
}

// at projects a position with the picture's published projection (what
// fleet.js does with live positions).
func (p *pictureOf) at(lat, lon float64) (x, y float64) {
	return p.w/2 + (lon-p.lon0)*p.k*p.scale, p.h/2 - (lat-p.lat0)*p.scale
}

// --- without telemetry ---

func TestFleetPagesWithoutTelemetry(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Acme Fleet")
	viewer := e.addMember(owner, controlplane.RoleViewer)

	owner.get("/dashboard").must(t, http.StatusOK).contains(t, "No fleets yet", `id="usage-meter"`, "<strong>free</strong>")
	owner.get("/fleets").must(t, http.StatusOK).contains(t, `id="create-fleet"`, `<option value="europe" selected>Europe (Frankfurt)</option>`)

	// Bad input re-renders the form with what was typed; a taken slug is 409.
	owner.submit("/fleets", "/fleets", url.Values{"slug": {"Not A Slug"}, "name": {"Mine"}, "region": {"europe"}}).
		must(t, http.StatusBadRequest).contains(t, "slug: must be", `value="Not A Slug"`, `value="Mine"`)
	owner.submit("/fleets", "/fleets", url.Values{"slug": {"drones"}, "region": {"mars"}}).
		must(t, http.StatusBadRequest).contains(t, "unknown region")
	page := owner.createFleet("drones")
	page.contains(t, "Fleet created.", "Fleet drones", "No vehicles in this fleet yet", `data-live-url="/fleets/drones/live"`, `src="/static/fleet.js"`)
	owner.submit("/fleets", "/fleets", url.Values{"slug": {"drones"}, "region": {"europe"}}).
		must(t, http.StatusConflict).contains(t, "already exists")

	// A registered vehicle shows from Postgres; telemetry says why it is missing.
	ctx := owner.principalCtx()
	if _, err := e.svc.CreateVehicle(ctx, "drones", controlplane.VehicleCreate{VehicleID: "V1", Name: "North"}); err != nil {
		t.Fatal(err)
	}
	page = owner.get("/fleets/drones").must(t, http.StatusOK)
	page.contains(t, `<tr id="vehicle-V1" data-vehicle="V1">`, `href="/fleets/drones/vehicles/V1"`,
		`<td data-field="online"><span class="status offline" data-online="false">Offline</span></td>`,
		`<td data-field="status">pending</td>`, `id="telemetry-error"`, "telemetry is not configured", `id="fleet-picture-empty"`)
	owner.get("/fleets/drones/vehicles/V1").must(t, http.StatusOK).
		contains(t, `id="vehicle-facts" data-vehicle="V1"`, `id="telemetry-error"`, `id="commands-unavailable"`, "this one is pending").
		lacks(t, `id="command-form"`, `id="revoke-button"`)
	var st struct {
		Vehicles []map[string]any `json:"vehicles"`
	}
	res := owner.get("/fleets/drones/status.json").must(t, http.StatusOK)
	if err := json.Unmarshal([]byte(res.body), &st); err != nil || len(st.Vehicles) != 1 || st.Vehicles[0]["vehicle"] != "V1" ||
		st.Vehicles[0]["online"] != false || st.Vehicles[0]["status"] != "pending" || !strings.HasPrefix(res.header.Get("Content-Type"), "application/json") {
		t.Fatalf("status.json = %s (%v)", res.body, err)
	}
	owner.get("/fleets/drones/live").must(t, http.StatusServiceUnavailable)

	// The dashboard: the fleet's counts, usage and (owner) recent events.
	owner.get("/dashboard").must(t, http.StatusOK).contains(t, `<tr data-fleet="drones">`, `<td data-field="online">0</td>`,
		`<td data-field="offline">1</td>`, "<code>fleet.create</code>", "<code>vehicle.create</code>", `id="usage-meter"`)

	// Viewers: no forms, 403 on posts (and nothing changes), no audit log.
	viewer.get("/dashboard").must(t, http.StatusOK).contains(t, "visible to admins").lacks(t, "<code>fleet.create</code>")
	viewer.get("/fleets").must(t, http.StatusOK).contains(t, "Fleet drones").lacks(t, `id="create-fleet"`)
	viewer.get("/fleets/drones/vehicles/V1").must(t, http.StatusOK).contains(t, "can watch vehicles but not command").
		lacks(t, `id="command-form"`, `id="revoke-button"`)
	before := snapshot(t, e.pool)
	viewer.post("/fleets", url.Values{"slug": {"other"}, "region": {"europe"}}).must(t, http.StatusForbidden)
	viewer.post("/fleets/drones/vehicles/V1/commands", url.Values{"command": {"rtl"}}).must(t, http.StatusForbidden)
	viewer.post("/fleets/drones/vehicles/V1/commands", url.Values{"command": {"rtl"}, "confirm": {"1"}}).must(t, http.StatusForbidden)
	viewer.post("/fleets/drones/vehicles/V1/revoke", url.Values{"confirm": {"1"}}).must(t, http.StatusForbidden)
	if d := diffSnapshots(before, snapshot(t, e.pool)); d != "" {
		t.Fatalf("a viewer's posts changed the database: %s", d)
	}

	// A command to a pending vehicle: confirmed, then refused by the Service.
	owner.get("/fleets/drones/vehicles/V1").must(t, http.StatusOK)
	owner.post("/fleets/drones/vehicles/V1/commands", url.Values{"command": {"land"}}).must(t, http.StatusOK).
		contains(t, `id="confirm-command-button"`, `<code id="confirm-command-verb">land</code>`)
	owner.post("/fleets/drones/vehicles/V1/commands", url.Values{"command": {"land"}, "confirm": {"1"}}).
		must(t, http.StatusConflict).contains(t, "cannot receive commands")
	owner.post("/fleets/drones/vehicles/V1/commands", url.Values{"command": {"goto"}, "lat": {"100"}, "lon": {"8"}, "alt": {"10"}}).
		must(t, http.StatusBadRequest).contains(t, "lat: must be a number")
	// Without a CSRF token nothing is confirmed or sent.
	owner.post("/fleets/drones/vehicles/V1/commands", url.Values{"command": {"land"}, "confirm": {"1"}, "csrf": {""}}).
		must(t, http.StatusForbidden)

	// Unknown things are 404; signed out is the login page.
	owner.get("/fleets/nope").must(t, http.StatusNotFound)
	owner.get("/fleets/drones/vehicles/nope").must(t, http.StatusNotFound)
	e.newBrowser().get("/fleets/drones").must(t, http.StatusSeeOther)
	if n := e.commandsAudited(t); n != 0 {
		t.Fatalf("%d commands audited, want 0 (none reached a hub)", n)
	}
}

// --- over a real hub ---

func TestFleetPagesLive(t *testing.T) {
	t.Parallel()
	e := newFleetEnv(t)
	owner := e.newAccount("Acme Live")
	viewer := e.addMember(owner, controlplane.RoleViewer)
	owner.createFleet("drones")
	v1 := e.enroll(t, owner, "drones", "V1", true)
	v2 := e.enroll(t, owner, "drones", "V2", true)
	e.enroll(t, owner, "drones", "V3", false) // enrolled, never connects

	// History: a short track for V1, one position for V2, battery and mode.
	now := time.Now()
	track := [][2]float64{{47.3970, 8.5450}, {47.3975, 8.5455}, {47.3980, 8.5462}, {47.3984, 8.5470}}
	for i, p := range track {
		v1.forward(t, "state.position", position(p[0], p[1], 10+float64(i)*5, now.Add(time.Duration(i-len(track))*time.Second)))
	}
	v1.forward(t, "state.battery", map[string]any{"v": 1, "received_at": now.UTC(), "remaining_pct": 87.4})
	v1.forward(t, "state.heartbeat", map[string]any{"v": 1, "received_at": now.UTC(), "mode": "GUIDED", "armed": true})
	v2.forward(t, "state.position", position(47.3990, 8.5400, 0, now))

	// The fleet page: table and picture.
	page := owner.get("/fleets/drones").must(t, http.StatusOK).lacks(t, `id="telemetry-error"`)
	page.contains(t,
		`<td data-field="online"><span class="status online" data-online="true">Online</span></td>`,
		`<td data-field="battery">87 %</td>`, `data-mode="GUIDED" data-armed="true">GUIDED (armed)</td>`,
		`<td data-field="position">47.3984, 8.547 · 25 m</td>`, `<span id="fleet-online-count">2</span>`)
	pic := parsePicture(t, page.body)
	if len(pic.markers) != 2 || !pic.online["V1"] || !pic.online["V2"] {
		t.Fatalf("markers %+v", pic)
	}
	for vid, p := range map[string][2]float64{"V1": track[len(track)-1], "V2": {47.3990, 8.5400}} {
		x, y := pic.at(p[0], p[1])
		got := pic.markers[vid]
		if math.Abs(got[0]-x) > 0.1 || math.Abs(got[1]-y) > 0.1 {
			t.Errorf("%s marker at %v, its position projects to (%.1f, %.1f)", vid, got, x, y)
		}
		if got[0] < 0 || got[0] > pic.w || got[1] < 0 || got[1] > pic.h {
			t.Errorf("%s marker %v outside the picture", vid, got)
		}
	}
	if pic.tracks["V1"] != len(track) || pic.tracks["V2"] != 0 {
		t.Fatalf("tracks %v, want V1 %d points", pic.tracks, len(track))
	}
	// North is up: V2 (north-west of V1's end) is above and left of it.
	if pic.markers["V2"][1] >= pic.markers["V1"][1] || pic.markers["V2"][0] >= pic.markers["V1"][0] {
		t.Fatalf("V2 %v is not north-west of V1 %v", pic.markers["V2"], pic.markers["V1"])
	}

	// The vehicle page: latest telemetry and the charts.
	vp := owner.get("/fleets/drones/vehicles/V1?window=15m").must(t, http.StatusOK)
	vp.contains(t, `<dd data-field="battery">87 %</dd>`, `<option value="15m" selected>`, `id="chart-altitude"`, `id="chart-battery"`,
		`<code>state.heartbeat</code>`, `id="command-form"`, `id="command-rtl"`, `id="goto-form"`, `id="revoke-button"`,
		`id="goto-lat" step="any" min="-90" max="90" required value="47.3984"`)
	alt := regexp.MustCompile(`(?s)id="chart-altitude".*?<polyline class="series" points="([^"]*)"`).FindStringSubmatch(vp.body)
	if alt == nil || len(strings.Fields(alt[1])) != len(track) {
		t.Fatalf("altitude chart: %v", alt)
	}
	if !regexp.MustCompile(`(?s)id="chart-battery".*?<circle class="series-dot"`).MatchString(vp.body) {
		t.Fatal("battery chart has no dot for its one sample")
	}
	for _, w := range []string{"1h", "6h", "24h", "bogus"} {
		owner.get("/fleets/drones/vehicles/V1?window="+w).must(t, http.StatusOK).contains(t, `id="chart-altitude"`)
	}
	viewer.get("/fleets/drones/vehicles/V1").must(t, http.StatusOK).lacks(t, `id="command-form"`, `id="revoke-button"`)

	// The live feed: presence first, then what a vehicle publishes.
	live := owner.openLive("drones")
	if live.first != ": live" {
		t.Fatalf("first line %q", live.first)
	}
	live.waitEvent(t, "V1 online", func(m map[string]any) bool { return m["vehicle"] == "V1" && m["online"] == true })
	waitUntil(t, 20*time.Second, "a live position", func() error {
		// Published until the feed has it (its subscription may still be
		// on its way to the hub).
		if err := v1.local.Publish(v1.creds.SubjectPrefix+".state.position", mustJSON(t, position(47.4001, 8.5501, 42, time.Now()))); err != nil {
			return err
		}
		_ = v1.local.Flush()
		select {
		case m := <-live.events:
			if m["vehicle"] == "V1" && m["lat"] == 47.4001 && m["lon"] == 8.5501 && m["alt"] == 42.0 {
				return nil
			}
			return fmt.Errorf("event %v", m)
		case <-time.After(200 * time.Millisecond):
			return errors.New("no event yet")
		}
	})
	_ = v1.local.Publish(v1.creds.SubjectPrefix+".state.battery", mustJSON(t, map[string]any{"remaining_pct": 55.0}))
	_ = v1.local.Publish(v1.creds.SubjectPrefix+".evt.mode", mustJSON(t, map[string]any{"mode": "RTL"}))
	// (Two subscriptions, state.> and evt.>: no order between them.)
	var battery, mode bool
	live.waitEvent(t, "battery and mode", func(m map[string]any) bool {
		battery = battery || (m["vehicle"] == "V1" && m["battery"] == 55.0)
		mode = mode || (m["vehicle"] == "V1" && m["mode"] == "RTL")
		return battery && mode
	})

	// Commands: a POST without confirm=1 only shows the confirmation.
	var mu sync.Mutex
	var got []string
	if _, err := v1.local.Subscribe(v1.creds.SubjectPrefix+".cmd.>", func(m *nats.Msg) {
		mu.Lock()
		got = append(got, m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]+" "+string(m.Data))
		mu.Unlock()
		_ = m.Respond([]byte(`{"ok":true,"result":0,"result_text":"MAV_RESULT_ACCEPTED","latency_ms":12.5}`))
	}); err != nil {
		t.Fatal(err)
	}
	_ = v1.local.Flush()
	received := func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), got...) }
	base := "/fleets/drones/vehicles/V1"
	owner.get(base).must(t, http.StatusOK)
	owner.post(base+"/commands", url.Values{"command": {"rtl"}}).must(t, http.StatusOK).
		contains(t, `<form method="post" action="/fleets/drones/vehicles/V1/commands" id="confirm-command"`,
			`<input type="hidden" name="confirm" value="1">`, `id="confirm-command-button"`, `<code id="confirm-command-payload">{}</code>`)
	owner.post(base+"/commands", url.Values{"command": {"goto"}, "lat": {"47.41"}, "lon": {"8.55"}, "alt": {"30"}}).must(t, http.StatusOK).
		contains(t, `<code id="confirm-command-payload">{&#34;alt&#34;:30,&#34;lat&#34;:47.41,&#34;lon&#34;:8.55}</code>`,
			`<input type="hidden" name="lat" value="47.41">`)
	// The viewer cannot send it even with confirm=1.
	viewer.get(base).must(t, http.StatusOK)
	viewer.post(base+"/commands", url.Values{"command": {"rtl"}, "confirm": {"1"}}).must(t, http.StatusForbidden)
	if n := e.commandsAudited(t); n != 0 || len(received()) != 0 {
		t.Fatalf("before any confirmation: %d audited, vehicle got %v", n, received())
	}
	// Confirmed: sent once, the reply shown.
	res := owner.post(base+"/commands", url.Values{"command": {"rtl"}, "confirm": {"1"}}).must(t, http.StatusOK)
	res.contains(t, `<section id="command-reply" data-outcome="accepted" data-command="rtl">`, `<code id="command-result">MAV_RESULT_ACCEPTED</code>`,
		`<dd id="command-ok">yes</dd>`, `id="command-latency"`, "fleet.prod.veh.V1.cmd.rtl", "12.5 ms")
	res = owner.post(base+"/commands", url.Values{"command": {"goto"}, "lat": {"47.41"}, "lon": {"8.55"}, "alt": {"30"}, "confirm": {"1"}}).must(t, http.StatusOK)
	res.contains(t, `data-outcome="accepted" data-command="goto"`)
	if r := received(); len(r) != 2 || r[0] != "rtl {}" || r[1] != `goto {"alt":30,"lat":47.41,"lon":8.55}` {
		t.Fatalf("the vehicle received %q", r)
	}
	if n := e.commandsAudited(t); n != 2 {
		t.Fatalf("%d commands audited, want 2", n)
	}
	// A vehicle that is not connected: the clear 504.
	owner.post("/fleets/drones/vehicles/V3/commands", url.Values{"command": {"land"}, "confirm": {"1"}}).must(t, http.StatusGatewayTimeout).
		contains(t, `data-outcome="offline"`, `id="command-error"`, `vehicle "V3" is offline`)

	// Revocation: confirmation first; a viewer cannot; then the proof, and
	// the live feed reports V2 offline.
	owner.get("/fleets/drones/vehicles/V2").must(t, http.StatusOK)
	owner.post("/fleets/drones/vehicles/V2/revoke", nil).must(t, http.StatusOK).contains(t, `id="confirm-revoke-button"`)
	viewer.get("/fleets/drones/vehicles/V2").must(t, http.StatusOK)
	viewer.post("/fleets/drones/vehicles/V2/revoke", url.Values{"confirm": {"1"}}).must(t, http.StatusForbidden)
	if v, err := e.svc.Vehicle(owner.principalCtx(), "drones", "V2"); err != nil || v.Status != controlplane.VehicleActive || !v.Online {
		t.Fatalf("V2 before the confirmed revoke: %+v, %v", v, err)
	}
	owner.get("/fleets/drones/vehicles/V2").must(t, http.StatusOK)
	owner.post("/fleets/drones/vehicles/V2/revoke", url.Values{"confirm": {"1"}}).must(t, http.StatusOK).
		contains(t, `<section id="revoke-result" data-status="proven">`, `<dd id="revoke-connections">0</dd>`, `<th scope="row">hub-1</th>`)
	live.waitEvent(t, "V2 offline", func(m map[string]any) bool {
		return m["vehicle"] == "V2" && m["online"] == false && m["status"] == "revoked"
	})
	owner.get("/fleets/drones").must(t, http.StatusOK).contains(t, `<td data-field="status">revoked</td>`)
	owner.get("/fleets/drones/vehicles/V2").must(t, http.StatusOK).contains(t, `id="vehicle-revocation"`, "proven on every hub node").
		lacks(t, `id="revoke-button"`, `id="command-form"`)

	// The client going away ends the stream.
	live.cancel()
	for range live.events {
	}

	// A dense history: the track is thinned, the chart sampled by time
	// slices (more than one history page in the window).
	const n = 1100
	for i := range n {
		v1.seq++
		p := position(47.40+float64(i)*1e-5, 8.55, 30, time.Now())
		if _, err := v1.js.PublishAsync(v1.creds.IngestSubject+".state.position", mustJSON(t, p), jetstream.WithMsgID(fmt.Sprintf("V1-%d", v1.seq))); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-v1.js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("async publishes not acknowledged")
	}
	page = owner.get("/fleets/drones").must(t, http.StatusOK)
	pic = parsePicture(t, page.body)
	if n := pic.tracks["V1"]; n < 100 || n > 120 {
		t.Fatalf("V1 track of %d points, want it thinned to at most 120", n)
	}
	if x, y := pic.at(47.40+float64(n-1)*1e-5, 8.55); math.Abs(pic.markers["V1"][0]-x) > 0.1 || math.Abs(pic.markers["V1"][1]-y) > 0.1 {
		t.Fatalf("V1 marker %v, want at its last position (%.1f, %.1f)", pic.markers["V1"], x, y)
	}
	owner.get("/fleets/drones/vehicles/V1?window=24h").must(t, http.StatusOK).contains(t, `id="chart-altitude"`)
	vp = owner.get("/fleets/drones/vehicles/V1?window=15m").must(t, http.StatusOK)
	alt = regexp.MustCompile(`(?s)id="chart-altitude".*?<(polyline class="series" points="([^"]*)"|circle class="series-dot")`).FindStringSubmatch(vp.body)
	if alt == nil || len(strings.Fields(alt[2])) > 120 {
		t.Fatalf("sampled altitude chart: %v", alt)
	}
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
