package mavlink

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/bluenviron/gomavlib/v3"
	"github.com/bluenviron/gomavlib/v3/pkg/dialect"
	"github.com/bluenviron/gomavlib/v3/pkg/dialects/common"
	"github.com/bluenviron/gomavlib/v3/pkg/frame"

	"github.com/fleetplane/fleetplane/internal/telemetry"
)

// Publisher publishes one message; *nats.Conn implements it.
type Publisher interface {
	Publish(subject string, data []byte) error
}

// Subject suffixes (after fleet.<env>.veh.<vid>.) the gateway publishes on;
// the keys of Config.RateLimits.
const (
	SuffixRaw = "raw.mavlink"
)

// DefaultRateLimits are the per-suffix limits in messages per second used
// when Config.RateLimits does not name a suffix. 0 means unlimited, a
// negative value turns the suffix off. Armed and mode events are never
// limited (they only fire on a change).
var DefaultRateLimits = map[string]float64{
	"state." + telemetry.KindPosition:  5,
	"state." + telemetry.KindAttitude:  5,
	"state." + telemetry.KindBattery:   1,
	"state." + telemetry.KindGPS:       1,
	"state." + telemetry.KindHeartbeat: 1,
	"state." + telemetry.KindHealth:    1,
	"state." + telemetry.KindVFR:       2,
	"evt." + telemetry.EventStatusText: 10,
	SuffixRaw:                          0,
}

// Kinds in a fixed order, so the hot path indexes arrays instead of maps.
const (
	kPosition = iota
	kAttitude
	kBattery
	kGPS
	kHeartbeat
	kHealth
	kVFR
	kArmed
	kMode
	kStatusText
	kRaw
	numKinds
)

var suffixes = [numKinds]string{
	"state." + telemetry.KindPosition, "state." + telemetry.KindAttitude, "state." + telemetry.KindBattery,
	"state." + telemetry.KindGPS, "state." + telemetry.KindHeartbeat, "state." + telemetry.KindHealth,
	"state." + telemetry.KindVFR, "evt." + telemetry.EventArmed, "evt." + telemetry.EventMode,
	"evt." + telemetry.EventStatusText, SuffixRaw,
}

// limiter is a GCRA rate limiter with a tolerance of half an interval: the
// long-run rate never exceeds the limit and a source at exactly the limit
// rate with jitter is not thinned out.
type limiter struct {
	interval time.Duration
	off      bool
	tat      time.Time
}

func newLimiter(hz float64) limiter {
	switch {
	case hz < 0:
		return limiter{off: true}
	case hz == 0 || math.IsInf(hz, 1) || math.IsNaN(hz):
		return limiter{}
	}
	return limiter{interval: time.Duration(float64(time.Second) / hz)}
}

func (l *limiter) allow(now time.Time) bool {
	if l.off {
		return false
	}
	if l.interval == 0 {
		return true
	}
	if now.Before(l.tat.Add(-l.interval / 2)) {
		return false
	}
	if l.tat.Before(now) {
		l.tat = now
	}
	l.tat = l.tat.Add(l.interval)
	return true
}

// vehicle is the autopilot the gateway talks to, learnt from its heartbeat
// (or fixed by Config.TargetSystem).
type vehicle struct {
	mu        sync.Mutex
	sys, comp uint8
	known     bool
	channel   *gomavlib.Channel
}

func (v *vehicle) get() (sys, comp uint8, ch *gomavlib.Channel, ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.sys, v.comp, v.channel, v.known
}

// decoder turns frames into JSON messages. handle is called from one
// goroutine only (the gateway's event loop, a benchmark or a fuzz target).
type decoder struct {
	subjects [numKinds]string
	limits   [numKinds]limiter
	pub      Publisher
	stats    *Stats
	log      *slog.Logger
	raw      bool
	rawBuf   bytes.Buffer
	rawW     *frame.Writer
	fixedSys uint8
	veh      vehicle
	onAck    func(sys, comp uint8, ack *common.MessageCommandAck)

	haveHB   bool
	armed    bool
	mode     string
	lastWarn time.Time

	cmdWarnMu   sync.Mutex
	lastCmdWarn time.Time
}

func newDecoder(prefix string, rates map[string]float64, pub Publisher, stats *Stats, log *slog.Logger, raw bool, fixedSys uint8) (*decoder, error) {
	d := &decoder{pub: pub, stats: stats, log: log, raw: raw, fixedSys: fixedSys}
	for k := range numKinds {
		d.subjects[k] = prefix + "." + suffixes[k]
		hz, ok := rates[suffixes[k]]
		if !ok {
			hz = DefaultRateLimits[suffixes[k]]
		}
		d.limits[k] = newLimiter(hz)
	}
	if raw {
		rw, err := commonRW()
		if err != nil {
			return nil, err
		}
		d.rawW = &frame.Writer{ByteWriter: &d.rawBuf, DialectRW: rw}
		if err := d.rawW.Initialize(); err != nil {
			return nil, err
		}
	}
	if fixedSys != 0 {
		d.veh.sys = fixedSys
	}
	return d, nil
}

// commonRW is the common dialect's encoder/decoder, built once (it is
// costly: reflection over every message) and read-only afterwards.
var commonRW = sync.OnceValues(func() (*dialect.ReadWriter, error) {
	rw := &dialect.ReadWriter{Dialect: common.Dialect}
	return rw, rw.Initialize()
})

func f64(x float64) *float64 { return &x }

func header(now time.Time, sys, comp uint8, vt *float64) telemetry.Header {
	return telemetry.Header{V: telemetry.Version, VehicleTime: vt, ReceivedAt: now, SystemID: sys, ComponentID: comp}
}

func bootTime(ms uint32) *float64 { return f64(float64(ms) / 1e3) }

// handle decodes one frame received on ch (nil in benchmarks and fuzzing)
// at now, and publishes what it yields.
func (d *decoder) handle(fr frame.Frame, ch *gomavlib.Channel, now time.Time) {
	d.stats.FramesReceived.Add(1)
	sys, comp := fr.GetSystemID(), fr.GetComponentID()
	msg := fr.GetMessage()

	if hb, ok := msg.(*common.MessageHeartbeat); ok {
		d.heartbeat(hb, sys, comp, ch, now)
		d.passRaw(fr, now)
		return
	}
	vsys, vcomp, _, known := d.veh.get()
	if !known || sys != vsys {
		d.stats.FramesIgnored.Add(1)
		return
	}
	// Telemetry counts only from the autopilot component (a gimbal also
	// sends ATTITUDE); status texts and ACKs from any component of the
	// vehicle.
	switch m := msg.(type) {
	case *common.MessageCommandAck:
		if d.onAck != nil {
			d.onAck(sys, comp, m)
		}
		return
	case *common.MessageStatustext:
		d.statusText(m, sys, comp, now)
		d.passRaw(fr, now)
		return
	}
	if comp != vcomp {
		d.stats.FramesIgnored.Add(1)
		return
	}
	switch m := msg.(type) {
	case *common.MessageGlobalPositionInt:
		if d.allow(kPosition, now) {
			p := telemetry.Position{
				Header: header(now, sys, comp, bootTime(m.TimeBootMs)),
				LatDeg: float64(m.Lat) / 1e7, LonDeg: float64(m.Lon) / 1e7,
				AltMSLM: float64(m.Alt) / 1e3, AltRelM: float64(m.RelativeAlt) / 1e3,
				VNorthMPS: float64(m.Vx) / 100, VEastMPS: float64(m.Vy) / 100, VDownMPS: float64(m.Vz) / 100,
			}
			if m.Hdg != math.MaxUint16 {
				p.HeadingDeg = f64(float64(m.Hdg) / 100)
			}
			d.emit(kPosition, &p)
		}
	case *common.MessageAttitude:
		if d.allow(kAttitude, now) {
			d.emit(kAttitude, &telemetry.Attitude{
				Header:  header(now, sys, comp, bootTime(m.TimeBootMs)),
				RollRad: float64(m.Roll), PitchRad: float64(m.Pitch), YawRad: float64(m.Yaw),
				RollRateRadS: float64(m.Rollspeed), PitchRateRadS: float64(m.Pitchspeed), YawRateRadS: float64(m.Yawspeed),
			})
		}
	case *common.MessageSysStatus:
		if d.allow(kHealth, now) {
			h := telemetry.Health{
				Header:         header(now, sys, comp, nil),
				SensorsPresent: uint32(m.OnboardControlSensorsPresent), SensorsEnabled: uint32(m.OnboardControlSensorsEnabled),
				SensorsHealthy:   uint32(m.OnboardControlSensorsHealth),
				SensorsUnhealthy: uint32(m.OnboardControlSensorsEnabled &^ m.OnboardControlSensorsHealth),
				LoadPct:          float64(m.Load) / 10, DropRateCommPct: float64(m.DropRateComm) / 100, ErrorsComm: m.ErrorsComm,
			}
			if m.VoltageBattery != math.MaxUint16 {
				h.VoltageV = f64(float64(m.VoltageBattery) / 1e3)
			}
			if m.CurrentBattery != -1 {
				h.CurrentA = f64(float64(m.CurrentBattery) / 100)
			}
			if m.BatteryRemaining >= 0 {
				h.RemainingPct = f64(float64(m.BatteryRemaining))
			}
			d.emit(kHealth, &h)
		}
	case *common.MessageBatteryStatus:
		if d.allow(kBattery, now) {
			d.emit(kBattery, batteryOf(m, header(now, sys, comp, nil)))
		}
	case *common.MessageGpsRawInt:
		if d.allow(kGPS, now) {
			var vt *float64
			if m.TimeUsec != 0 {
				vt = f64(float64(m.TimeUsec) / 1e6)
			}
			g := telemetry.GPS{
				Header:  header(now, sys, comp, vt),
				FixType: uint8(m.FixType), Fix: strings.TrimPrefix(m.FixType.String(), "GPS_FIX_TYPE_"),
				LatDeg: float64(m.Lat) / 1e7, LonDeg: float64(m.Lon) / 1e7, AltMSLM: float64(m.Alt) / 1e3,
			}
			if m.Eph != math.MaxUint16 {
				g.HDOP = f64(float64(m.Eph) / 100)
			}
			if m.Epv != math.MaxUint16 {
				g.VDOP = f64(float64(m.Epv) / 100)
			}
			if m.Vel != math.MaxUint16 {
				g.SpeedMPS = f64(float64(m.Vel) / 100)
			}
			if m.Cog != math.MaxUint16 {
				g.CourseDeg = f64(float64(m.Cog) / 100)
			}
			if m.SatellitesVisible != math.MaxUint8 {
				s := m.SatellitesVisible
				g.Satellites = &s
			}
			d.emit(kGPS, &g)
		}
	case *common.MessageVfrHud:
		if d.allow(kVFR, now) {
			d.emit(kVFR, &telemetry.VFR{
				Header:      header(now, sys, comp, nil),
				AirspeedMPS: float64(m.Airspeed), GroundspeedMPS: float64(m.Groundspeed),
				HeadingDeg: float64(m.Heading), ThrottlePct: float64(m.Throttle),
				AltMSLM: float64(m.Alt), ClimbMPS: float64(m.Climb),
			})
		}
	default:
		d.stats.FramesIgnored.Add(1)
	}
	d.passRaw(fr, now)
}

func batteryOf(m *common.MessageBatteryStatus, h telemetry.Header) *telemetry.Battery {
	b := &telemetry.Battery{Header: h, ID: m.Id}
	var mv uint32
	for _, c := range m.Voltages {
		if c == math.MaxUint16 {
			break
		}
		if c != math.MaxUint16-1 { // 65534: cell above 65.534 V, not summed
			mv += uint32(c)
		}
	}
	if m.Voltages[0] != math.MaxUint16 {
		b.VoltageV = f64(float64(mv) / 1e3)
	}
	if m.CurrentBattery != -1 {
		b.CurrentA = f64(float64(m.CurrentBattery) / 100)
	}
	if m.BatteryRemaining >= 0 {
		b.RemainingPct = f64(float64(m.BatteryRemaining))
	}
	if m.CurrentConsumed != -1 {
		b.ConsumedAh = f64(float64(m.CurrentConsumed) / 1e3)
	}
	if m.EnergyConsumed != -1 {
		b.EnergyJ = f64(float64(m.EnergyConsumed) * 100)
	}
	if m.Temperature != math.MaxInt16 {
		b.TemperatureC = f64(float64(m.Temperature) / 100)
	}
	if m.TimeRemaining > 0 {
		b.TimeLeftS = f64(float64(m.TimeRemaining))
	}
	return b
}

func (d *decoder) heartbeat(hb *common.MessageHeartbeat, sys, comp uint8, ch *gomavlib.Channel, now time.Time) {
	// Only an autopilot's heartbeat identifies the vehicle: GCSs, companion
	// computers and this gateway itself send MAV_AUTOPILOT_INVALID.
	if hb.Autopilot == common.MAV_AUTOPILOT_INVALID {
		d.stats.FramesIgnored.Add(1)
		return
	}
	d.veh.mu.Lock()
	switch {
	case !d.veh.known && (d.fixedSys == 0 || d.fixedSys == sys):
		d.veh.sys, d.veh.comp, d.veh.known = sys, comp, true
		d.log.Info("mavlink: vehicle found", "system_id", sys, "component_id", comp, "autopilot", hb.Autopilot.String(), "type", hb.Type.String())
	case !d.veh.known || d.veh.sys != sys || d.veh.comp != comp:
		d.veh.mu.Unlock()
		d.stats.FramesIgnored.Add(1)
		return
	}
	if ch != nil {
		d.veh.channel = ch
	}
	d.veh.mu.Unlock()

	armed := hb.BaseMode&common.MAV_MODE_FLAG_SAFETY_ARMED != 0
	mode := ModeName(hb.Autopilot, hb.BaseMode, hb.CustomMode)
	if d.allow(kHeartbeat, now) {
		d.emit(kHeartbeat, &telemetry.Heartbeat{
			Header: header(now, sys, comp, nil),
			Type:   uint8(hb.Type), Autopilot: uint8(hb.Autopilot), BaseMode: uint8(hb.BaseMode), CustomMode: hb.CustomMode,
			SystemStatus: strings.TrimPrefix(hb.SystemStatus.String(), "MAV_STATE_"), Armed: armed, Mode: mode,
		})
	}
	first := !d.haveHB
	if first || armed != d.armed {
		d.emit(kArmed, &telemetry.ArmedEvent{Header: header(now, sys, comp, nil), Armed: armed, Initial: first})
	}
	if first || mode != d.mode {
		d.emit(kMode, &telemetry.ModeEvent{Header: header(now, sys, comp, nil), Mode: mode, PreviousMode: d.mode,
			CustomMode: hb.CustomMode, BaseMode: uint8(hb.BaseMode), Initial: first})
	}
	d.haveHB, d.armed, d.mode = true, armed, mode
}

func (d *decoder) statusText(m *common.MessageStatustext, sys, comp uint8, now time.Time) {
	if !d.allow(kStatusText, now) {
		return
	}
	d.emit(kStatusText, &telemetry.StatusTextEvent{
		Header:   header(now, sys, comp, nil),
		Severity: uint8(m.Severity), SeverityName: strings.TrimPrefix(m.Severity.String(), "MAV_SEVERITY_"),
		Text: strings.ToValidUTF8(m.Text, "\uFFFD"),
	})
}

func (d *decoder) allow(k int, now time.Time) bool {
	if d.limits[k].allow(now) {
		return true
	}
	d.stats.add(&d.stats.rateLimited, suffixes[k])
	return false
}

func (d *decoder) emit(k int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only non-finite floats (NaN/Inf from the autopilot) get here.
		d.stats.FramesMalformed.Add(1)
		d.warn("mavlink: message not representable as JSON", "subject", suffixes[k], "err", err)
		return
	}
	d.publish(k, b)
}

func (d *decoder) publish(k int, b []byte) {
	if err := d.pub.Publish(d.subjects[k], b); err != nil {
		d.stats.PublishErrors.Add(1)
		d.warn("mavlink: publish failed", "subject", d.subjects[k], "err", err)
		return
	}
	d.stats.add(&d.stats.published, suffixes[k])
}

// passRaw publishes the frame as it came off the wire (re-encoded, so it is
// byte-identical for well-formed frames) on raw.mavlink when enabled.
func (d *decoder) passRaw(fr frame.Frame, now time.Time) {
	if !d.raw || !d.allow(kRaw, now) {
		return
	}
	d.rawBuf.Reset()
	if err := d.rawW.Write(fr); err != nil {
		d.stats.FramesMalformed.Add(1)
		return
	}
	d.publish(kRaw, bytes.Clone(d.rawBuf.Bytes()))
	d.stats.RawPublished.Add(1)
}

// warn logs at most once a second so a flood of bad frames cannot flood the
// log.
func (d *decoder) warn(msg string, args ...any) {
	if now := time.Now(); now.Sub(d.lastWarn) >= time.Second {
		d.lastWarn = now
		d.log.Warn(msg, args...)
	}
}

// warnCommand logs command failures, at most once a second (it runs on the
// command goroutine, so it has its own clock).
func (d *decoder) warnCommand(msg string, args ...any) {
	d.cmdWarnMu.Lock()
	defer d.cmdWarnMu.Unlock()
	if now := time.Now(); now.Sub(d.lastCmdWarn) >= time.Second {
		d.lastCmdWarn = now
		d.log.Warn(msg, args...)
	}
}
