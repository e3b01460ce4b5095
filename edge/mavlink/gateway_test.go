package mavlink_test

import (
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go"

	"github.com/fleetplane/fleetplane/edge/mavlink"
	"github.com/fleetplane/fleetplane/edge/sim"
	"github.com/fleetplane/fleetplane/internal/telemetry"
)

const prefix = "fleet.dev.veh.sim-1"

type env struct {
	nc   *nats.Conn
	c    *collector // everything published under prefix since before the gateway started
	gw   *mavlink.Gateway
	sim  *sim.Sim
	addr string
}

// freeUDPAddr returns a loopback UDP address that was free a moment ago
// (gomavlib does not report the port it bound).
func freeUDPAddr(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

func newEnv(t *testing.T, mod func(*mavlink.Config)) *env {
	t.Helper()
	opts := natsserver.DefaultTestOptions
	opts.Port = -1
	ns := natsserver.RunServer(&opts)
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)

	c := collect(t, nc)
	addr := freeUDPAddr(t)
	cfg := mavlink.Config{
		Env: "dev", VehicleID: "sim-1", Conn: nc,
		Endpoints:      []mavlink.Endpoint{{Kind: mavlink.EndpointUDPServer, Address: addr}},
		CommandTimeout: 500 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	gw, err := mavlink.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	s, err := sim.Start(sim.Config{UDP: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	e := &env{nc: nc, c: c, gw: gw, sim: s, addr: addr}
	waitFor(t, 10*time.Second, "the gateway to see the simulator's heartbeat", func() bool {
		_, _, ok := gw.Vehicle()
		return ok
	})
	return e
}

func waitFor(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) command(t *testing.T, verb string, body string) telemetry.CommandReply {
	t.Helper()
	m, err := e.nc.Request(prefix+".cmd."+verb, []byte(body), 10*time.Second)
	if err != nil {
		t.Fatalf("cmd.%s: %v", verb, err)
	}
	var r telemetry.CommandReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		t.Fatalf("cmd.%s reply %s: %v", verb, m.Data, err)
	}
	return r
}

type collector struct {
	mu   sync.Mutex
	msgs map[string][][]byte
}

func (c *collector) count(suffix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs[suffix])
}

func (c *collector) all(suffix string) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.msgs[suffix]...)
}

func collect(t *testing.T, nc *nats.Conn) *collector {
	t.Helper()
	c := &collector{msgs: map[string][][]byte{}}
	sub, err := nc.Subscribe(prefix+".>", func(m *nats.Msg) {
		if strings.Contains(m.Subject, ".cmd.") {
			return
		}
		c.mu.Lock()
		c.msgs[strings.TrimPrefix(m.Subject, prefix+".")] = append(c.msgs[strings.TrimPrefix(m.Subject, prefix+".")], m.Data)
		c.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTelemetryEveryKindAndRateLimits(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(cfg *mavlink.Config) {
		cfg.RateLimits = map[string]float64{"state.position": 5, "state.attitude": 2}
		cfg.Raw = true
	})
	c := e.c
	if r := e.command(t, "arm", ""); !r.OK {
		t.Fatalf("arm: %+v", r)
	}
	want := []string{"raw.mavlink", "evt.armed", "evt.statustext"}
	for _, k := range telemetry.StateKinds {
		want = append(want, "state."+k)
	}
	waitFor(t, 15*time.Second, "every telemetry kind", func() bool {
		for _, k := range want {
			if c.count(k) == 0 {
				return false
			}
		}
		return true
	})
	// Let 3 s of telemetry accumulate for the rate limits.
	time.Sleep(3500 * time.Millisecond)

	for _, k := range want[1:] {
		for _, b := range c.all(k) {
			var h telemetry.Header
			if err := json.Unmarshal(b, &h); err != nil {
				t.Fatalf("%s: %s: %v", k, b, err)
			}
			if h.V != telemetry.Version || h.ReceivedAt.IsZero() || h.SystemID != 1 {
				t.Fatalf("%s: bad header in %s", k, b)
			}
		}
	}
	var p telemetry.Position
	mustJSON(t, c.all("state.position")[0], &p)
	if p.LatDeg < 47.39 || p.LatDeg > 47.41 || p.LonDeg < 8.54 || p.LonDeg > 8.56 || p.VehicleTime == nil {
		t.Fatalf("position %+v", p)
	}
	var b telemetry.Battery
	mustJSON(t, c.all("state.battery")[0], &b)
	if b.VoltageV == nil || *b.VoltageV < 13 || *b.VoltageV > 17 || b.RemainingPct == nil {
		t.Fatalf("battery %+v", b)
	}
	var g telemetry.GPS
	mustJSON(t, c.all("state.gps")[0], &g)
	if g.Fix != "3D_FIX" || g.Satellites == nil || *g.Satellites != 14 || g.HDOP == nil || *g.HDOP != 0.8 {
		t.Fatalf("gps %+v", g)
	}
	var hb telemetry.Heartbeat
	mustJSON(t, c.all("state.heartbeat")[0], &hb)
	if hb.Mode != "STABILIZE" || hb.Autopilot != 3 {
		t.Fatalf("heartbeat %+v", hb)
	}
	armed := c.all("evt.armed")
	var first, last telemetry.ArmedEvent
	mustJSON(t, armed[0], &first)
	mustJSON(t, armed[len(armed)-1], &last)
	if first.Armed || !first.Initial || !last.Armed || len(armed) != 2 {
		t.Fatalf("armed events: %s", armed)
	}
	var txt telemetry.StatusTextEvent
	mustJSON(t, c.all("evt.statustext")[0], &txt)
	if txt.Text != "Arming motors" || txt.SeverityName != "INFO" {
		t.Fatalf("statustext %+v", txt)
	}

	// Rate limits, judged on the gateway's own clock (received_at), so
	// scheduling delays between gateway and subscriber do not matter: in
	// any window W at most W*rate + 2 messages (GCRA, half-interval
	// tolerance). The simulator sends position and attitude at 10 Hz.
	for k, rate := range map[string]float64{"state.position": 5, "state.attitude": 2} {
		times := receivedAt(t, c.all(k))
		const w = 2 * time.Second
		for i := range times {
			n := 0
			for j := i; j < len(times) && times[j].Sub(times[i]) < w; j++ {
				n++
			}
			if max := int(w.Seconds()*rate) + 2; n > max {
				t.Fatalf("%s: %d messages in %s, limit %v/s", k, n, w, rate)
			}
		}
		if e.gw.Stats().RateLimited(k) == 0 {
			t.Fatalf("%s: nothing rate limited at 10 Hz in", k)
		}
	}
	if n := len(receivedAt(t, c.all("state.position"))); n < 10 {
		t.Fatalf("only %d positions in > 4 s at 5 Hz", n)
	}
}

func receivedAt(t *testing.T, msgs [][]byte) []time.Time {
	var ts []time.Time
	for _, b := range msgs {
		var h telemetry.Header
		mustJSON(t, b, &h)
		ts = append(ts, h.ReceivedAt)
	}
	return ts
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
}

func TestCommandsFlight(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	c := e.c
	if r := e.command(t, "arm", ""); !r.OK || r.Result == nil || *r.Result != 0 || r.ResultText != "MAV_RESULT_ACCEPTED" {
		t.Fatalf("arm: %+v", r)
	}
	r := e.command(t, "takeoff", `{"alt": 3}`)
	if !r.OK || r.LatencyMS <= 0 {
		t.Fatalf("takeoff: %+v", r)
	}
	waitFor(t, 10*time.Second, "the simulator to climb", func() bool {
		s := e.sim.State()
		return s.Armed && s.AltRelM > 1
	})
	waitFor(t, 10*time.Second, "a climbing position on NATS", func() bool {
		for _, b := range c.all("state.position") {
			var p telemetry.Position
			mustJSON(t, b, &p)
			if p.AltRelM > 1 {
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, "the takeoff to finish", func() bool { return e.sim.State().AltRelM >= 3 })
	st := e.sim.State()
	if r := e.command(t, "goto", `{"lat": 47.3980, "lon": 8.5460, "alt": 6}`); !r.OK {
		t.Fatalf("goto: %+v", r)
	}
	waitFor(t, 10*time.Second, "the simulator to head for the goto target", func() bool { return e.sim.State().AltRelM > st.AltRelM+0.5 })
	if r := e.command(t, "set_mode", `{"mode": "loiter"}`); !r.OK || e.sim.State().ModeName != "LOITER" {
		t.Fatalf("set_mode: %+v, sim %+v", r, e.sim.State())
	}
	waitFor(t, 10*time.Second, "evt.mode LOITER", func() bool {
		for _, b := range c.all("evt.mode") {
			var m telemetry.ModeEvent
			mustJSON(t, b, &m)
			if m.Mode == "LOITER" && m.PreviousMode == "GUIDED" {
				return true
			}
		}
		return false
	})
	if r := e.command(t, "disarm", ""); r.OK || r.ResultText != "MAV_RESULT_DENIED" {
		t.Fatalf("disarm in flight: %+v", r)
	}
	if r := e.command(t, "rtl", ""); !r.OK || e.sim.State().ModeName != "RTL" {
		t.Fatalf("rtl: %+v", r)
	}
	if r := e.command(t, "land", ""); !r.OK || e.sim.State().ModeName != "LAND" {
		t.Fatalf("land: %+v", r)
	}
}

func TestCommandRejected(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	r := e.command(t, "takeoff", `{"alt": 10}`)
	if r.OK || r.Result == nil || *r.Result != 2 || r.ResultText != "MAV_RESULT_DENIED" || r.Error != "" {
		t.Fatalf("takeoff while disarmed: %+v", r)
	}
	if e.sim.State().Flying {
		t.Fatal("simulator flies after a rejected takeoff")
	}
	if r := e.command(t, "set_mode", `{"mode": "77"}`); r.OK || r.ResultText != "MAV_RESULT_DENIED" {
		t.Fatalf("unknown custom mode: %+v", r)
	}
}

func TestCommandTimeoutWhenSimStopped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *mavlink.Config) { c.CommandTimeout, c.CommandRetries = 200*time.Millisecond, 1 })
	e.sim.Close()
	r := e.command(t, "arm", "")
	if r.OK || r.Error != "timeout" || r.Result != nil || r.LatencyMS < 400 {
		t.Fatalf("arm with the simulator stopped: %+v", r)
	}
	if n := e.gw.Stats().CommandsTimedOut.Load(); n != 1 {
		t.Fatalf("timed out counter %d", n)
	}
}

func TestMalformedCommandsAndFrames(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	for _, tc := range []struct{ verb, body, code string }{
		{"takeoff", `{"alt":"high"}`, "bad_request"},
		{"takeoff", `{}`, "bad_request"},
		{"goto", `{"lat":91,"lon":0,"alt":5}`, "bad_request"},
		{"arm", `{"alt":5}`, "bad_request"},
		{"arm", `{"force":true} x`, "bad_request"},
		{"fly", ``, "unknown_command"},
		{"set_mode", `{"mode":"WARP"}`, "bad_request"},
	} {
		r := e.command(t, tc.verb, tc.body)
		if r.OK || r.Error != tc.code || r.Message == "" {
			t.Fatalf("%s %s: %+v", tc.verb, tc.body, r)
		}
	}
	if n := e.gw.Stats().CommandsBad.Load(); n != 7 {
		t.Fatalf("bad command counter %d, want 7", n)
	}
	if e.sim.State().CommandsSeen != 0 {
		t.Fatal("a malformed command reached the autopilot")
	}

	// Garbage datagrams on the MAVLink link are counted, and the gateway
	// keeps working.
	conn, err := net.Dial("udp4", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	before := e.gw.Stats().FramesMalformed.Load()
	for _, junk := range [][]byte{{0x00, 0x01}, {0xFD, 0x09, 0, 0, 0, 1, 1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xAA, 0xBB}, []byte("hello")} {
		if _, err := conn.Write(junk); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "malformed frames to be counted", func() bool { return e.gw.Stats().FramesMalformed.Load() > before })
	if r := e.command(t, "arm", ""); !r.OK {
		t.Fatalf("arm after junk: %+v", r)
	}
}
