// Package sim is a simulated autopilot speaking MAVLink (common dialect)
// over UDP: an ArduCopter-like quadrotor with a heartbeat carrying its armed
// state and mode, a moving position (it circles while it holds in the air),
// attitude, a draining battery and GPS, and that obeys arm, disarm, takeoff,
// land, rtl, goto (MAV_CMD_DO_REPOSITION) and set_mode with COMMAND_ACKs.
// `fleetplane-agent sim`, tests, benchmarks and `fleetplane dev
// --sim-vehicles` run it in process. It imports no other Fleetplane package
// except edge/mavlink's mode table.
package sim

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/bluenviron/gomavlib/v3"
	"github.com/bluenviron/gomavlib/v3/pkg/dialects/common"
	"github.com/bluenviron/gomavlib/v3/pkg/message"

	"github.com/fleetplane/fleetplane/edge/mavlink"
)

// ArduCopter custom modes the simulator acts on.
const (
	ModeStabilize uint32 = 0
	ModeGuided    uint32 = 4
	ModeLoiter    uint32 = 5
	ModeRTL       uint32 = 6
	ModeLand      uint32 = 9
)

// Config configures a simulator.
type Config struct {
	// UDP is where to send MAVLink (host:port of the gateway's udp-server
	// endpoint; the simulator is a UDP client and answers on the same
	// socket). Listen instead makes it a UDP server on host:port.
	UDP, Listen string

	SystemID    uint8   // default 1
	ComponentID uint8   // default 1 (MAV_COMP_ID_AUTOPILOT1)
	Lat, Lon    float64 // home, degrees; default 47.397742, 8.545594
	HomeAltMSL  float64 // metres; default 488

	// Tick is the physics and telemetry period (default 100 ms): position
	// and attitude are sent every tick, GPS and VFR_HUD every other tick,
	// heartbeat, SYS_STATUS and BATTERY_STATUS once a second.
	Tick   time.Duration
	Logger *slog.Logger
}

// State is a snapshot of the simulated vehicle.
type State struct {
	Armed        bool
	Mode         uint32
	ModeName     string
	Flying       bool
	LatDeg       float64
	LonDeg       float64
	AltRelM      float64
	BatteryPct   float64
	TargetAltM   float64
	CommandsSeen int
}

type phase int

const (
	landed phase = iota
	takingOff
	holding // circling
	going
	returning
	landing
)

// Sim is a running simulator.
type Sim struct {
	cfg       Config
	node      *gomavlib.Node
	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup

	mu         sync.Mutex
	armed      bool
	mode       uint32
	ph         phase
	n, e, alt  float64 // metres from home (north, east, up)
	vn, ve, vd float64
	targetN    float64
	targetE    float64
	targetAlt  float64
	center     [2]float64 // circle centre (n, e)
	angle      float64
	battery    float64 // percent
	consumed   float64 // mAh
	bootTime   time.Time
	ticks      int
	commands   int
	pendingTxt []string
}

const (
	circleRadius = 20.0 // m
	circleSpeed  = 5.0  // m/s
	cruiseSpeed  = 10.0 // m/s
	climbRate    = 2.5  // m/s
	landRate     = 1.0  // m/s
	rtlMinAlt    = 15.0 // m
	earthRadius  = 6378137.0
)

// Start starts a simulator.
func Start(cfg Config) (*Sim, error) {
	if cfg.SystemID == 0 {
		cfg.SystemID = 1
	}
	if cfg.ComponentID == 0 {
		cfg.ComponentID = 1
	}
	if cfg.Lat == 0 && cfg.Lon == 0 {
		cfg.Lat, cfg.Lon = 47.397742, 8.545594
	}
	if cfg.HomeAltMSL == 0 {
		cfg.HomeAltMSL = 488
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 100 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Lat < -90 || cfg.Lat > 90 || cfg.Lon < -180 || cfg.Lon > 180 {
		return nil, fmt.Errorf("sim: home %v,%v out of range", cfg.Lat, cfg.Lon)
	}
	var ep gomavlib.EndpointConf
	switch {
	case cfg.UDP != "" && cfg.Listen != "":
		return nil, errors.New("sim: set UDP or Listen, not both")
	case cfg.UDP != "":
		ep = gomavlib.EndpointUDPClient{Address: cfg.UDP}
	case cfg.Listen != "":
		ep = gomavlib.EndpointUDPServer{Address: cfg.Listen}
	default:
		return nil, errors.New("sim: no UDP address")
	}
	s := &Sim{cfg: cfg, stop: make(chan struct{}), mode: ModeStabilize, battery: 100, bootTime: time.Now()}
	s.node = &gomavlib.Node{
		Endpoints:        []gomavlib.EndpointConf{ep},
		Dialect:          common.Dialect,
		OutVersion:       gomavlib.V2,
		OutSystemID:      cfg.SystemID,
		OutComponentID:   cfg.ComponentID,
		HeartbeatDisable: true, // ours carries the armed state and mode
	}
	if err := s.node.Initialize(); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	s.wg.Add(2)
	go s.events()
	go s.run()
	return s, nil
}

// Close stops the simulator; it sends nothing afterwards. It may be called
// more than once.
func (s *Sim) Close() {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.node.Close()
		s.wg.Wait()
	})
}

// State returns a snapshot.
func (s *Sim) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	lat, lon := s.latLon(s.n, s.e)
	return State{Armed: s.armed, Mode: s.mode, ModeName: modeName(s.mode), Flying: s.ph != landed,
		LatDeg: lat, LonDeg: lon, AltRelM: s.alt, BatteryPct: s.battery, TargetAltM: s.targetAlt, CommandsSeen: s.commands}
}

// copterModes are the modes the simulator accepts (a subset of ArduCopter's).
var copterModes = map[uint32]bool{ModeStabilize: true, 2: true, ModeGuided: true, ModeLoiter: true, ModeRTL: true, ModeLand: true, 16: true}

func modeName(m uint32) string {
	return mavlink.ModeName(common.MAV_AUTOPILOT_ARDUPILOTMEGA, common.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, m)
}

func (s *Sim) latLon(n, e float64) (float64, float64) {
	lat := s.cfg.Lat + n/earthRadius*180/math.Pi
	lon := s.cfg.Lon + e/(earthRadius*math.Cos(s.cfg.Lat*math.Pi/180))*180/math.Pi
	return lat, lon
}

func (s *Sim) local(lat, lon float64) (n, e float64) {
	n = (lat - s.cfg.Lat) * math.Pi / 180 * earthRadius
	e = (lon - s.cfg.Lon) * math.Pi / 180 * earthRadius * math.Cos(s.cfg.Lat*math.Pi/180)
	return n, e
}

func (s *Sim) events() {
	defer s.wg.Done()
	for evt := range s.node.Events() {
		fr, ok := evt.(*gomavlib.EventFrame)
		if !ok {
			continue
		}
		var ack *common.MessageCommandAck
		switch m := fr.Message().(type) {
		case *common.MessageCommandLong:
			if m.TargetSystem != 0 && m.TargetSystem != s.cfg.SystemID {
				continue
			}
			p := [7]float64{float64(m.Param1), float64(m.Param2), float64(m.Param3), float64(m.Param4), float64(m.Param5), float64(m.Param6), float64(m.Param7)}
			ack = &common.MessageCommandAck{Command: m.Command, Result: s.command(m.Command, p)}
		case *common.MessageCommandInt:
			if m.TargetSystem != 0 && m.TargetSystem != s.cfg.SystemID {
				continue
			}
			var res common.MAV_RESULT
			if m.Command == common.MAV_CMD_DO_REPOSITION {
				if m.Frame != common.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT && m.Frame != common.MAV_FRAME_GLOBAL_RELATIVE_ALT {
					res = common.MAV_RESULT_COMMAND_UNSUPPORTED_MAV_FRAME
				} else {
					res = s.reposition(float64(m.X)/1e7, float64(m.Y)/1e7, float64(m.Z))
				}
			} else {
				p := [7]float64{float64(m.Param1), float64(m.Param2), float64(m.Param3), float64(m.Param4), float64(m.X) / 1e7, float64(m.Y) / 1e7, float64(m.Z)}
				res = s.command(m.Command, p)
			}
			ack = &common.MessageCommandAck{Command: m.Command, Result: res}
		case *common.MessageSetPositionTargetGlobalInt:
			if m.TargetSystem == s.cfg.SystemID {
				s.reposition(float64(m.LatInt)/1e7, float64(m.LonInt)/1e7, float64(m.Alt))
			}
			continue
		default:
			continue
		}
		s.mu.Lock()
		s.commands++
		s.mu.Unlock()
		ack.TargetSystem, ack.TargetComponent = fr.SystemID(), fr.ComponentID()
		_ = s.node.WriteMessageTo(fr.Channel, ack)
		s.flushText()
	}
}

func (s *Sim) say(format string, args ...any) {
	s.pendingTxt = append(s.pendingTxt, fmt.Sprintf(format, args...))
}

// command executes one command and returns its MAV_RESULT.
func (s *Sim) command(cmd common.MAV_CMD, p [7]float64) common.MAV_RESULT {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch cmd {
	case common.MAV_CMD_COMPONENT_ARM_DISARM:
		force := p[1] == 21196
		if p[0] == 1 {
			if s.battery < 10 && !force {
				s.say("PreArm: Battery below minimum arming capacity")
				return common.MAV_RESULT_DENIED
			}
			if !s.armed {
				s.armed = true
				s.say("Arming motors")
			}
			return common.MAV_RESULT_ACCEPTED
		}
		if s.ph != landed && !force {
			s.say("Disarm: vehicle is flying")
			return common.MAV_RESULT_DENIED
		}
		if s.armed {
			s.armed, s.ph, s.alt = false, landed, 0
			s.say("Disarming motors")
		}
		return common.MAV_RESULT_ACCEPTED
	case common.MAV_CMD_NAV_TAKEOFF:
		alt := p[6]
		if !s.armed {
			s.say("Takeoff: arm first")
			return common.MAV_RESULT_DENIED
		}
		if math.IsNaN(alt) || alt <= 0 || alt > 10000 {
			return common.MAV_RESULT_DENIED
		}
		if s.ph != landed {
			return common.MAV_RESULT_TEMPORARILY_REJECTED
		}
		s.mode, s.ph, s.targetAlt = ModeGuided, takingOff, alt
		s.say("Takeoff to %.0f m", alt)
		return common.MAV_RESULT_ACCEPTED
	case common.MAV_CMD_NAV_LAND:
		if s.ph == landed {
			return common.MAV_RESULT_DENIED
		}
		s.mode, s.ph = ModeLand, landing
		s.say("Landing")
		return common.MAV_RESULT_ACCEPTED
	case common.MAV_CMD_NAV_RETURN_TO_LAUNCH:
		if s.ph == landed {
			return common.MAV_RESULT_DENIED
		}
		s.startRTL()
		return common.MAV_RESULT_ACCEPTED
	case common.MAV_CMD_DO_SET_MODE:
		if uint32(p[0])&uint32(common.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED) == 0 {
			return common.MAV_RESULT_DENIED
		}
		m := uint32(p[1])
		if _, known := copterModes[m]; !known {
			s.say("Mode change to %d failed: unknown mode", m)
			return common.MAV_RESULT_DENIED
		}
		s.setMode(m)
		return common.MAV_RESULT_ACCEPTED
	case common.MAV_CMD_DO_REPOSITION:
		return s.repositionLocked(p[4], p[5], p[6])
	}
	return common.MAV_RESULT_UNSUPPORTED
}

func (s *Sim) setMode(m uint32) {
	if s.mode != m {
		s.say("Mode %s", modeName(m))
	}
	s.mode = m
	if s.ph == landed {
		return
	}
	switch m {
	case ModeLand:
		s.ph = landing
	case ModeRTL:
		s.startRTL()
	default:
		if s.ph != takingOff {
			s.hold()
		}
	}
}

func (s *Sim) startRTL() {
	s.mode, s.ph = ModeRTL, returning
	s.targetN, s.targetE, s.targetAlt = 0, 0, math.Max(s.alt, rtlMinAlt)
	s.say("RTL")
}

func (s *Sim) hold() {
	s.ph = holding
	s.angle = 0
	s.center = [2]float64{s.n - circleRadius, s.e}
}

func (s *Sim) reposition(lat, lon, alt float64) common.MAV_RESULT {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.repositionLocked(lat, lon, alt)
}

func (s *Sim) repositionLocked(lat, lon, alt float64) common.MAV_RESULT {
	if math.IsNaN(lat) || math.IsNaN(lon) || lat < -90 || lat > 90 || lon < -180 || lon > 180 {
		return common.MAV_RESULT_DENIED
	}
	if s.ph == landed || s.ph == takingOff {
		s.say("Reposition: not flying")
		return common.MAV_RESULT_DENIED
	}
	if math.IsNaN(alt) {
		alt = s.alt
	}
	s.targetN, s.targetE = s.local(lat, lon)
	if math.Hypot(s.targetN, s.targetE) > 50000 {
		s.say("Reposition: target too far")
		return common.MAV_RESULT_DENIED
	}
	s.targetAlt = math.Max(alt, 1)
	s.mode, s.ph = ModeGuided, going
	return common.MAV_RESULT_ACCEPTED
}

func (s *Sim) run() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	dt := s.cfg.Tick.Seconds()
	perSecond := max(1, int(time.Second/s.cfg.Tick))
	for {
		s.mu.Lock()
		s.step(dt)
		msgs := s.telemetry(perSecond)
		s.ticks++
		s.mu.Unlock()
		for _, m := range msgs {
			_ = s.node.WriteMessageAll(m)
		}
		s.flushText()
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

func (s *Sim) flushText() {
	s.mu.Lock()
	txt := s.pendingTxt
	s.pendingTxt = nil
	s.mu.Unlock()
	for _, t := range txt {
		s.cfg.Logger.Info("sim: " + t)
		_ = s.node.WriteMessageAll(&common.MessageStatustext{Severity: common.MAV_SEVERITY_INFO, Text: t})
	}
}

// moveTo flies towards (n, e, alt) and reports arrival.
func (s *Sim) moveTo(n, e, alt, dt float64) bool {
	dn, de := n-s.n, e-s.e
	d := math.Hypot(dn, de)
	step := cruiseSpeed * dt
	if d <= step {
		s.n, s.e, s.vn, s.ve = n, e, 0, 0
	} else {
		s.vn, s.ve = dn/d*cruiseSpeed, de/d*cruiseSpeed
		s.n += s.vn * dt
		s.e += s.ve * dt
	}
	da := alt - s.alt
	s.vd = 0
	if math.Abs(da) <= climbRate*dt {
		s.alt = alt
	} else {
		s.vd = -math.Copysign(climbRate, da)
		s.alt -= s.vd * dt
	}
	return d <= step && s.alt == alt
}

func (s *Sim) step(dt float64) {
	switch s.ph {
	case landed:
		s.vn, s.ve, s.vd, s.alt = 0, 0, 0, 0
	case takingOff:
		s.vn, s.ve, s.vd = 0, 0, -climbRate
		s.alt += climbRate * dt
		if s.alt >= s.targetAlt {
			s.alt, s.vd = s.targetAlt, 0
			s.hold()
		}
	case holding:
		s.angle += circleSpeed / circleRadius * dt
		n := s.center[0] + circleRadius*math.Cos(s.angle)
		e := s.center[1] + circleRadius*math.Sin(s.angle)
		s.vn, s.ve, s.vd = (n-s.n)/dt, (e-s.e)/dt, 0
		s.n, s.e = n, e
	case going:
		if s.moveTo(s.targetN, s.targetE, s.targetAlt, dt) {
			s.say("Reached destination")
			s.hold()
		}
	case returning:
		if s.moveTo(0, 0, s.targetAlt, dt) {
			s.mode, s.ph = ModeLand, landing
			s.say("Landing at home")
		}
	case landing:
		s.vn, s.ve, s.vd = 0, 0, landRate
		s.alt -= landRate * dt
		if s.alt <= 0 {
			s.alt, s.vd, s.ph, s.armed = 0, 0, landed, false
			s.say("Landed, disarming")
		}
	}
	current := 0.5
	switch {
	case s.ph != landed:
		current = 15
	case s.armed:
		current = 2
	}
	s.consumed += current * 1000 * dt / 3600
	s.battery = math.Max(0, 100-s.consumed/5000*100) // 5 Ah pack
}

func (s *Sim) telemetry(perSecond int) []message.Message {
	now := time.Since(s.bootTime)
	bootMs := uint32(now.Milliseconds())
	lat, lon := s.latLon(s.n, s.e)
	heading := math.Mod(math.Atan2(s.ve, s.vn)*180/math.Pi+360, 360)
	speed := math.Hypot(s.vn, s.ve)
	var roll float64
	if s.ph == holding {
		roll = math.Atan(speed * speed / (circleRadius * 9.81))
	}
	pitch := -speed / cruiseSpeed * 0.15
	var throttle uint16
	if s.ph != landed {
		throttle = 55
	}
	msgs := []message.Message{
		&common.MessageGlobalPositionInt{
			TimeBootMs: bootMs, Lat: int32(math.Round(lat * 1e7)), Lon: int32(math.Round(lon * 1e7)),
			Alt: int32((s.cfg.HomeAltMSL + s.alt) * 1000), RelativeAlt: int32(s.alt * 1000),
			Vx: int16(s.vn * 100), Vy: int16(s.ve * 100), Vz: int16(s.vd * 100), Hdg: uint16(heading * 100),
		},
		&common.MessageAttitude{TimeBootMs: bootMs, Roll: float32(roll), Pitch: float32(pitch), Yaw: float32(heading * math.Pi / 180)},
	}
	if s.ticks%2 == 0 {
		msgs = append(msgs,
			&common.MessageGpsRawInt{
				TimeUsec: uint64(time.Now().UnixMicro()), FixType: common.GPS_FIX_TYPE_3D_FIX,
				Lat: int32(math.Round(lat * 1e7)), Lon: int32(math.Round(lon * 1e7)), Alt: int32((s.cfg.HomeAltMSL + s.alt) * 1000),
				Eph: 80, Epv: 120, Vel: uint16(speed * 100), Cog: uint16(heading * 100), SatellitesVisible: 14,
			},
			&common.MessageVfrHud{Airspeed: float32(speed), Groundspeed: float32(speed), Heading: int16(heading),
				Throttle: throttle, Alt: float32(s.cfg.HomeAltMSL + s.alt), Climb: float32(-s.vd)})
	}
	if s.ticks%perSecond == 0 {
		base := common.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED | common.MAV_MODE_FLAG_STABILIZE_ENABLED | common.MAV_MODE_FLAG_GUIDED_ENABLED
		status := common.MAV_STATE_STANDBY
		if s.armed {
			base |= common.MAV_MODE_FLAG_SAFETY_ARMED
			status = common.MAV_STATE_ACTIVE
		}
		volt := 13.2 + 3.6*s.battery/100
		current := 0.5
		if s.ph != landed {
			current = 15
		} else if s.armed {
			current = 2
		}
		sensors := common.MAV_SYS_STATUS_SENSOR_3D_GYRO | common.MAV_SYS_STATUS_SENSOR_3D_ACCEL | common.MAV_SYS_STATUS_SENSOR_3D_MAG |
			common.MAV_SYS_STATUS_SENSOR_ABSOLUTE_PRESSURE | common.MAV_SYS_STATUS_SENSOR_GPS | common.MAV_SYS_STATUS_SENSOR_BATTERY
		cells := [10]uint16{}
		for i := range cells {
			cells[i] = math.MaxUint16
		}
		for i := range 4 {
			cells[i] = uint16(volt / 4 * 1000)
		}
		msgs = append(msgs,
			&common.MessageHeartbeat{Type: common.MAV_TYPE_QUADROTOR, Autopilot: common.MAV_AUTOPILOT_ARDUPILOTMEGA,
				BaseMode: base, CustomMode: s.mode, SystemStatus: status, MavlinkVersion: 3},
			&common.MessageSysStatus{OnboardControlSensorsPresent: sensors, OnboardControlSensorsEnabled: sensors, OnboardControlSensorsHealth: sensors,
				Load: 250, VoltageBattery: uint16(volt * 1000), CurrentBattery: int16(current * 100), BatteryRemaining: int8(s.battery)},
			&common.MessageBatteryStatus{Id: 0, BatteryFunction: common.MAV_BATTERY_FUNCTION_ALL, Type: common.MAV_BATTERY_TYPE_LIPO,
				Temperature: 2500, Voltages: cells, CurrentBattery: int16(current * 100), CurrentConsumed: int32(s.consumed),
				EnergyConsumed: int32(s.consumed * 14.8 * 3.6 / 100), BatteryRemaining: int8(s.battery)},
		)
	}
	return msgs
}
