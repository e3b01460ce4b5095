package mavlink

import (
	"strconv"
	"strings"

	"github.com/bluenviron/gomavlib/v3/pkg/dialects/common"
)

// copterModes are ArduCopter's custom_mode numbers (ArduPilot
// ArduCopter/mode.h). Mode names are only defined for ArduPilot
// (HEARTBEAT.autopilot = MAV_AUTOPILOT_ARDUPILOTMEGA) multirotors; for other
// autopilots the mode is reported as "custom:<n>" and set_mode takes the
// number (PX4 packs main/sub mode into custom_mode; see docs/mavlink.md).
var copterModes = map[uint32]string{
	0: "STABILIZE", 1: "ACRO", 2: "ALT_HOLD", 3: "AUTO", 4: "GUIDED", 5: "LOITER",
	6: "RTL", 7: "CIRCLE", 9: "LAND", 11: "DRIFT", 13: "SPORT", 14: "FLIP",
	15: "AUTOTUNE", 16: "POSHOLD", 17: "BRAKE", 18: "THROW", 19: "AVOID_ADSB",
	20: "GUIDED_NOGPS", 21: "SMART_RTL", 22: "FLOWHOLD", 23: "FOLLOW", 24: "ZIGZAG",
	25: "SYSTEMID", 26: "AUTOROTATE", 27: "AUTO_RTL",
}

var copterModeNumbers = func() map[string]uint32 {
	m := make(map[string]uint32, len(copterModes))
	for n, s := range copterModes {
		m[s] = n
	}
	return m
}()

// ModeName names a heartbeat's mode.
func ModeName(autopilot common.MAV_AUTOPILOT, baseMode common.MAV_MODE_FLAG, customMode uint32) string {
	if baseMode&common.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED != 0 {
		if autopilot == common.MAV_AUTOPILOT_ARDUPILOTMEGA {
			if s, ok := copterModes[customMode]; ok {
				return s
			}
		}
		return "custom:" + strconv.FormatUint(uint64(customMode), 10)
	}
	return "base:" + strconv.FormatUint(uint64(baseMode), 10)
}

// ModeNumber resolves a set_mode argument: an ArduCopter mode name (case
// insensitive) or a custom_mode number, bare or as "custom:<n>".
func ModeNumber(mode string) (uint32, bool) {
	s := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(mode)), "CUSTOM:")
	if n, ok := copterModeNumbers[s]; ok {
		return n, true
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(n), true
}
