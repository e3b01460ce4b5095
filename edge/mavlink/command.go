package mavlink

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/bluenviron/gomavlib/v3/pkg/dialects/common"
	"github.com/bluenviron/gomavlib/v3/pkg/message"
)

// Command verbs (fleet.<env>.veh.<vid>.cmd.<verb>).
const (
	VerbArm     = "arm"
	VerbDisarm  = "disarm"
	VerbTakeoff = "takeoff"
	VerbLand    = "land"
	VerbRTL     = "rtl"
	VerbGoto    = "goto"
	VerbSetMode = "set_mode"
)

// MaxCommandPayload bounds a command request body.
const MaxCommandPayload = 4096

// Limits of command arguments (metres, relative to home).
const (
	MaxAltM = 10000
	MinAltM = -500
)

// Command is a parsed, validated command request.
type Command struct {
	Verb       string
	AltM       float64 // takeoff, goto: metres above home
	LatDeg     float64 // goto
	LonDeg     float64 // goto
	Mode       string  // set_mode, as given
	CustomMode uint32  // set_mode, resolved
	Force      bool    // arm, disarm: MAVLink's 21196 magic (bypass checks)
}

// ErrUnknownVerb is returned by ParseCommand for a verb it does not know.
var ErrUnknownVerb = errors.New("unknown command")

type commandArgs struct {
	Alt   *float64 `json:"alt"`
	Lat   *float64 `json:"lat"`
	Lon   *float64 `json:"lon"`
	Mode  *string  `json:"mode"`
	Force *bool    `json:"force"`
}

// ParseCommand parses and validates the JSON body of cmd.<verb>. An empty
// body (or null, or {}) is valid for verbs without arguments. Unknown
// fields, fields the verb does not take, trailing data and non-finite or
// out-of-range numbers are errors.
func ParseCommand(verb string, payload []byte) (Command, error) {
	c := Command{Verb: verb}
	var allowed []string
	switch verb {
	case VerbArm, VerbDisarm:
		allowed = []string{"force"}
	case VerbLand, VerbRTL:
	case VerbTakeoff:
		allowed = []string{"alt"}
	case VerbGoto:
		allowed = []string{"lat", "lon", "alt"}
	case VerbSetMode:
		allowed = []string{"mode"}
	default:
		return c, fmt.Errorf("%w %q (arm, disarm, takeoff, land, rtl, goto, set_mode)", ErrUnknownVerb, verb)
	}
	if len(payload) > MaxCommandPayload {
		return c, fmt.Errorf("payload of %d bytes exceeds %d", len(payload), MaxCommandPayload)
	}
	var a commandArgs
	if len(bytes.TrimSpace(payload)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(payload))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&a); err != nil {
			return c, fmt.Errorf("invalid JSON: %w", err)
		}
		if dec.More() {
			return c, fmt.Errorf("invalid JSON: trailing data after the object")
		}
		if _, err := dec.Token(); err == nil {
			return c, fmt.Errorf("invalid JSON: trailing data after the object")
		}
	}
	present := map[string]bool{"alt": a.Alt != nil, "lat": a.Lat != nil, "lon": a.Lon != nil, "mode": a.Mode != nil, "force": a.Force != nil}
	for name, ok := range present {
		if ok && !contains(allowed, name) {
			return c, fmt.Errorf("%s takes no %q", verb, name)
		}
	}
	for _, name := range allowed {
		if !present[name] && name != "force" {
			return c, fmt.Errorf("%s needs %q", verb, name)
		}
	}
	if a.Force != nil {
		c.Force = *a.Force
	}
	if a.Alt != nil {
		if !inRange(*a.Alt, MinAltM, MaxAltM) || (verb == VerbTakeoff && *a.Alt <= 0) {
			return c, fmt.Errorf("alt %v out of range (takeoff: 0 < alt <= %d; goto: %d..%d metres above home)", *a.Alt, MaxAltM, MinAltM, MaxAltM)
		}
		c.AltM = *a.Alt
	}
	if a.Lat != nil {
		if !inRange(*a.Lat, -90, 90) {
			return c, fmt.Errorf("lat %v out of range -90..90", *a.Lat)
		}
		c.LatDeg = *a.Lat
	}
	if a.Lon != nil {
		if !inRange(*a.Lon, -180, 180) {
			return c, fmt.Errorf("lon %v out of range -180..180", *a.Lon)
		}
		c.LonDeg = *a.Lon
	}
	if a.Mode != nil {
		n, ok := ModeNumber(*a.Mode)
		if !ok {
			return c, fmt.Errorf("unknown mode %q (an ArduCopter mode name such as GUIDED, or a custom_mode number)", *a.Mode)
		}
		c.Mode, c.CustomMode = *a.Mode, n
	}
	return c, nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func inRange(x, lo, hi float64) bool { return !math.IsNaN(x) && x >= lo && x <= hi }

// forceMagic is param2 of MAV_CMD_COMPONENT_ARM_DISARM that bypasses
// pre-arm checks / allows disarming in flight.
const forceMagic = 21196

var nan = float32(math.NaN())

// MAVCommand is the MAV_CMD the command is sent as.
func (c Command) MAVCommand() common.MAV_CMD {
	switch c.Verb {
	case VerbArm, VerbDisarm:
		return common.MAV_CMD_COMPONENT_ARM_DISARM
	case VerbTakeoff:
		return common.MAV_CMD_NAV_TAKEOFF
	case VerbLand:
		return common.MAV_CMD_NAV_LAND
	case VerbRTL:
		return common.MAV_CMD_NAV_RETURN_TO_LAUNCH
	case VerbGoto:
		return common.MAV_CMD_DO_REPOSITION
	default:
		return common.MAV_CMD_DO_SET_MODE
	}
}

// Message builds the MAVLink message for the target: COMMAND_LONG, except
// goto, which is COMMAND_INT MAV_CMD_DO_REPOSITION (integer lat/lon keep
// centimetre precision, and unlike SET_POSITION_TARGET_GLOBAL_INT it is
// acknowledged with COMMAND_ACK). confirmation counts retransmissions.
func (c Command) Message(sys, comp, confirmation uint8) message.Message {
	long := &common.MessageCommandLong{TargetSystem: sys, TargetComponent: comp, Command: c.MAVCommand(), Confirmation: confirmation}
	switch c.Verb {
	case VerbArm, VerbDisarm:
		if c.Verb == VerbArm {
			long.Param1 = 1
		}
		if c.Force {
			long.Param2 = forceMagic
		}
	case VerbTakeoff:
		long.Param4, long.Param5, long.Param6, long.Param7 = nan, nan, nan, float32(c.AltM)
	case VerbLand:
		long.Param4, long.Param5, long.Param6 = nan, nan, nan
	case VerbGoto:
		return &common.MessageCommandInt{
			TargetSystem: sys, TargetComponent: comp,
			Frame:   common.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT,
			Command: common.MAV_CMD_DO_REPOSITION,
			Param1:  -1, // default ground speed
			Param2:  float32(common.MAV_DO_REPOSITION_FLAGS_CHANGE_MODE),
			Param4:  nan, // keep yaw
			X:       int32(math.Round(c.LatDeg * 1e7)), Y: int32(math.Round(c.LonDeg * 1e7)), Z: float32(c.AltM),
		}
	case VerbSetMode:
		long.Param1 = float32(common.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED)
		long.Param2 = float32(c.CustomMode)
	}
	return long
}
