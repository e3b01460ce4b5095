package mavlink

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/bluenviron/gomavlib/v3/pkg/dialect"
	"github.com/bluenviron/gomavlib/v3/pkg/dialects/common"
	"github.com/bluenviron/gomavlib/v3/pkg/frame"
	"github.com/bluenviron/gomavlib/v3/pkg/message"
	"github.com/bluenviron/gomavlib/v3/pkg/streamwriter"
)

type noopPublisher struct{ n int }

func (p *noopPublisher) Publish(string, []byte) error { p.n++; return nil }

func dialectRW(tb testing.TB) *dialect.ReadWriter {
	tb.Helper()
	rw, err := commonRW()
	if err != nil {
		tb.Fatal(err)
	}
	return rw
}

func newStreamWriter(tb testing.TB, buf io.Writer, sys uint8) *streamwriter.Writer {
	tb.Helper()
	fw := &frame.Writer{ByteWriter: buf, DialectRW: dialectRW(tb)}
	if err := fw.Initialize(); err != nil {
		tb.Fatal(err)
	}
	w := &streamwriter.Writer{FrameWriter: fw, Version: streamwriter.V2, SystemID: sys, ComponentID: 1}
	if err := w.Initialize(); err != nil {
		tb.Fatal(err)
	}
	return w
}

// encode returns the wire bytes of msgs, sent by system 1 component 1.
func encode(tb testing.TB, msgs ...message.Message) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w := newStreamWriter(tb, &buf, 1)
	for _, m := range msgs {
		if err := w.Write(m); err != nil {
			tb.Fatal(err)
		}
	}
	return buf.Bytes()
}

func heartbeatMsg() *common.MessageHeartbeat {
	return &common.MessageHeartbeat{Type: common.MAV_TYPE_QUADROTOR, Autopilot: common.MAV_AUTOPILOT_ARDUPILOTMEGA,
		BaseMode: common.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED | common.MAV_MODE_FLAG_SAFETY_ARMED, CustomMode: 4, MavlinkVersion: 3}
}

// telemetryMsgs is one of each decoded message kind (heartbeat first).
func telemetryMsgs() []message.Message {
	return []message.Message{
		heartbeatMsg(),
		&common.MessageGlobalPositionInt{TimeBootMs: 1000, Lat: 473977420, Lon: 85455940, Alt: 500000, RelativeAlt: 12000, Vx: 100, Vy: -50, Vz: 10, Hdg: 9000},
		&common.MessageAttitude{TimeBootMs: 1000, Roll: 0.1, Pitch: -0.05, Yaw: 1.5},
		&common.MessageSysStatus{VoltageBattery: 16000, CurrentBattery: 1500, BatteryRemaining: 80, Load: 250},
		&common.MessageBatteryStatus{Voltages: [10]uint16{4000, 4000, 4000, 4000, 65535, 65535, 65535, 65535, 65535, 65535}, CurrentBattery: 1500, CurrentConsumed: 100, EnergyConsumed: 50, BatteryRemaining: 80, Temperature: 2500},
		&common.MessageGpsRawInt{TimeUsec: 1_700_000_000_000_000, FixType: common.GPS_FIX_TYPE_3D_FIX, Lat: 473977420, Lon: 85455940, Alt: 500000, Eph: 80, Epv: 120, Vel: 500, Cog: 9000, SatellitesVisible: 14},
		&common.MessageVfrHud{Airspeed: 5, Groundspeed: 5, Heading: 90, Throttle: 55, Alt: 500, Climb: 0.1},
		&common.MessageStatustext{Severity: common.MAV_SEVERITY_WARNING, Text: "Low battery"},
		&common.MessageCommandAck{Command: common.MAV_CMD_NAV_TAKEOFF, Result: common.MAV_RESULT_ACCEPTED},
	}
}

func newTestDecoder(tb testing.TB, pub Publisher, rates map[string]float64) *decoder {
	tb.Helper()
	d, err := newDecoder("fleet.dev.veh.v1", rates, pub, &Stats{}, slog.New(slog.DiscardHandler), true, 0)
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

func unlimited() map[string]float64 {
	m := map[string]float64{}
	for k := range DefaultRateLimits {
		m[k] = 0
	}
	return m
}

// decodeAll runs every frame in b through d; parse errors are counted like
// the gateway's event loop does.
func decodeAll(d *decoder, rw *dialect.ReadWriter, b []byte) {
	r := &frame.Reader{BufByteReader: bufio.NewReader(bytes.NewReader(b)), DialectRW: rw}
	if err := r.Initialize(); err != nil {
		panic(err)
	}
	now := time.Unix(1_700_000_000, 0)
	for {
		fr, err := r.Read()
		if err != nil {
			var re frame.ReadError
			if errors.As(err, &re) {
				d.stats.FramesMalformed.Add(1)
				continue
			}
			return
		}
		d.handle(fr, nil, now)
		now = now.Add(time.Millisecond)
	}
}

func FuzzDecode(f *testing.F) {
	rw := dialectRW(f)
	all := encode(f, telemetryMsgs()...)
	f.Add(all)
	f.Add(all[:len(all)/2])
	f.Add([]byte{0xFE, 0x00})
	f.Add([]byte{0xFD, 0xFF, 0, 0, 0, 1, 1, 0, 0, 0})
	f.Add(encode(f, &common.MessageAttitude{Roll: float32(math.NaN())}))
	hb := encode(f, heartbeatMsg())
	f.Fuzz(func(t *testing.T, b []byte) {
		pub := &noopPublisher{}
		d := newTestDecoder(t, pub, unlimited())
		// The vehicle is known up front so that arbitrary telemetry frames
		// are decoded, not only those after a heartbeat.
		d.veh.sys, d.veh.comp, d.veh.known = 1, 1, true
		decodeAll(d, rw, b)
		decodeAll(d, rw, append(hb[:len(hb):len(hb)], b...))
	})
}

func TestDecodeEveryKind(t *testing.T) {
	pub := &recordingPublisher{}
	d := newTestDecoder(t, pub, unlimited())
	var acks int
	d.onAck = func(_, _ uint8, _ *common.MessageCommandAck) { acks++ }
	decodeAll(d, dialectRW(t), encode(t, telemetryMsgs()...))
	for _, s := range []string{"state.heartbeat", "evt.armed", "evt.mode", "state.position", "state.attitude", "state.health",
		"state.battery", "state.gps", "state.vfr", "evt.statustext", "raw.mavlink"} {
		if pub.subjects["fleet.dev.veh.v1."+s] == 0 {
			t.Errorf("nothing on %s: %v", s, pub.subjects)
		}
	}
	if acks != 1 {
		t.Errorf("acks %d", acks)
	}
	// A frame from another system is ignored once the vehicle is known.
	before := len(pub.subjects)
	var buf bytes.Buffer
	_ = newStreamWriter(t, &buf, 9).Write(heartbeatMsg())
	decodeAll(d, dialectRW(t), buf.Bytes())
	if d.stats.FramesIgnored.Load() == 0 || len(pub.subjects) != before {
		t.Error("second autopilot not ignored")
	}
}

type recordingPublisher struct{ subjects map[string]int }

func (p *recordingPublisher) Publish(s string, _ []byte) error {
	if p.subjects == nil {
		p.subjects = map[string]int{}
	}
	p.subjects[s]++
	return nil
}

func FuzzCommandPayload(f *testing.F) {
	for _, s := range []struct{ verb, body string }{
		{"arm", ""}, {"arm", `{"force":true}`}, {"disarm", "null"}, {"takeoff", `{"alt":10}`},
		{"goto", `{"lat":47.4,"lon":8.5,"alt":20}`}, {"set_mode", `{"mode":"GUIDED"}`}, {"set_mode", `{"mode":"custom:4"}`},
		{"land", "{}"}, {"rtl", `{"alt":1}`}, {"takeoff", `{"alt":1e309}`}, {"goto", `{"lat":-0,"lon":180,"alt":-500} `},
	} {
		f.Add(s.verb, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, verb string, payload []byte) {
		c, err := ParseCommand(verb, payload)
		if err != nil {
			return
		}
		if !inRange(c.AltM, MinAltM, MaxAltM) || !inRange(c.LatDeg, -90, 90) || !inRange(c.LonDeg, -180, 180) {
			t.Fatalf("accepted out-of-range command %+v from %q", c, payload)
		}
		if verb == VerbTakeoff && c.AltM <= 0 {
			t.Fatalf("takeoff to %v accepted", c.AltM)
		}
		m := c.Message(1, 1, 0)
		if m == nil {
			t.Fatal("no message")
		}
		// It must encode as a valid frame and decode back to the same command.
		var buf bytes.Buffer
		if err := newStreamWriter(t, &buf, 254).Write(m); err != nil {
			t.Fatalf("encode %+v: %v", m, err)
		}
		r := &frame.Reader{BufByteReader: bufio.NewReader(&buf), DialectRW: dialectRW(t)}
		_ = r.Initialize()
		fr, err := r.Read()
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		switch got := fr.GetMessage().(type) {
		case *common.MessageCommandLong:
			if got.Command != c.MAVCommand() {
				t.Fatalf("command %v, want %v", got.Command, c.MAVCommand())
			}
		case *common.MessageCommandInt:
			if got.Command != c.MAVCommand() {
				t.Fatalf("command %v, want %v", got.Command, c.MAVCommand())
			}
		default:
			t.Fatalf("unexpected %T", got)
		}
	})
}

func TestParseEndpoint(t *testing.T) {
	for in, want := range map[string]Endpoint{
		"serial:/dev/ttyTHS1:921600": {Kind: EndpointSerial, Address: "/dev/ttyTHS1", Baud: 921600},
		"udp-server:0.0.0.0:14550":   {Kind: EndpointUDPServer, Address: "0.0.0.0:14550"},
		"udp-client:10.0.0.2:14550":  {Kind: EndpointUDPClient, Address: "10.0.0.2:14550"},
		"tcp-client:127.0.0.1:5760":  {Kind: EndpointTCPClient, Address: "127.0.0.1:5760"},
		"tcp-server:[::1]:5760":      {Kind: EndpointTCPServer, Address: "[::1]:5760"},
	} {
		got, err := ParseEndpoint(in)
		if err != nil || got != want || got.String() != in {
			t.Errorf("ParseEndpoint(%q) = %+v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "serial:/dev/x", "serial:/dev/x:fast", "udp-server:14550", "http:x:1", "udp-client:"} {
		if _, err := ParseEndpoint(bad); err == nil {
			t.Errorf("ParseEndpoint(%q) accepted", bad)
		}
	}
}

func TestLimiter(t *testing.T) {
	l := newLimiter(5)
	t0 := time.Unix(0, 0)
	n := 0
	for i := range 1000 { // 100 Hz for 10 s
		if l.allow(t0.Add(time.Duration(i) * 10 * time.Millisecond)) {
			n++
		}
	}
	if n < 49 || n > 52 {
		t.Fatalf("5 Hz limiter passed %d of 1000 at 100 Hz over 10 s", n)
	}
	if off := newLimiter(-1); off.allow(t0) {
		t.Fatal("disabled limiter passed")
	}
	un := newLimiter(0)
	if !un.allow(t0) {
		t.Fatal("unlimited limiter dropped")
	}
	if !un.allow(t0) {
		t.Fatal("unlimited limiter dropped")
	}
}

// cycleReader repeats b forever.
type cycleReader struct {
	b   []byte
	off int
}

func (r *cycleReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.b[r.off:])
		n += c
		r.off = (r.off + c) % len(r.b)
	}
	return n, nil
}
