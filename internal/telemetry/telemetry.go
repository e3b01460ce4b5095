// Package telemetry is the versioned JSON schema of vehicle telemetry and
// events (DESIGN §3): what the edge agent's MAVLink gateway publishes on
// fleet.<env>.veh.<vid>.state.<kind> and .evt.<kind>, and what the control
// plane reads back from hub history. It is shared by both sides, so it
// imports nothing but the standard library.
//
// Every payload carries "v" (the schema version), "received_at" (the agent's
// wall clock when the MAVLink frame arrived, RFC 3339 UTC) and, when the
// MAVLink message has a timestamp, "vehicle_time" (seconds, on the
// autopilot's clock: since boot for time_boot_ms, or the UNIX epoch when
// GPS_RAW_INT.time_usec is a UNIX time). Quantities are SI units and the unit
// is in the field name: degrees for latitude/longitude/heading (the aviation
// convention), metres, m/s, radians, volts, amperes, percent 0-100.
// Optional fields are omitted when the autopilot reports "unknown".
//
// Compatibility: adding a field keeps v=1; renaming, removing or changing
// the unit of a field bumps V.
package telemetry

import "time"

// Version is the schema version written in every payload's "v".
const Version = 1

// State kinds (fleet.<env>.veh.<vid>.state.<kind>).
const (
	KindPosition  = "position"
	KindAttitude  = "attitude"
	KindBattery   = "battery"
	KindGPS       = "gps"
	KindHeartbeat = "heartbeat"
	KindHealth    = "health"
	KindVFR       = "vfr"
)

// Event kinds (fleet.<env>.veh.<vid>.evt.<kind>).
const (
	EventArmed      = "armed"
	EventMode       = "mode"
	EventStatusText = "statustext"
)

// StateKinds lists every state kind.
var StateKinds = []string{KindPosition, KindAttitude, KindBattery, KindGPS, KindHeartbeat, KindHealth, KindVFR}

// EventKinds lists every event kind.
var EventKinds = []string{EventArmed, EventMode, EventStatusText}

// Header is embedded in every payload.
type Header struct {
	V           int       `json:"v"`
	VehicleTime *float64  `json:"vehicle_time,omitempty"`
	ReceivedAt  time.Time `json:"received_at"`
	SystemID    uint8     `json:"system_id"`
	ComponentID uint8     `json:"component_id"`
}

// Position is GLOBAL_POSITION_INT.
type Position struct {
	Header
	LatDeg     float64  `json:"lat_deg"`
	LonDeg     float64  `json:"lon_deg"`
	AltMSLM    float64  `json:"alt_msl_m"`
	AltRelM    float64  `json:"alt_rel_m"`
	VNorthMPS  float64  `json:"vn_mps"`
	VEastMPS   float64  `json:"ve_mps"`
	VDownMPS   float64  `json:"vd_mps"`
	HeadingDeg *float64 `json:"heading_deg,omitempty"`
}

// Attitude is ATTITUDE.
type Attitude struct {
	Header
	RollRad       float64 `json:"roll_rad"`
	PitchRad      float64 `json:"pitch_rad"`
	YawRad        float64 `json:"yaw_rad"`
	RollRateRadS  float64 `json:"roll_rate_rad_s"`
	PitchRateRadS float64 `json:"pitch_rate_rad_s"`
	YawRateRadS   float64 `json:"yaw_rate_rad_s"`
}

// Battery is BATTERY_STATUS.
type Battery struct {
	Header
	ID           uint8    `json:"id"`
	VoltageV     *float64 `json:"voltage_v,omitempty"`
	CurrentA     *float64 `json:"current_a,omitempty"`
	RemainingPct *float64 `json:"remaining_pct,omitempty"`
	ConsumedAh   *float64 `json:"consumed_ah,omitempty"`
	EnergyJ      *float64 `json:"energy_j,omitempty"`
	TemperatureC *float64 `json:"temperature_c,omitempty"`
	TimeLeftS    *float64 `json:"time_left_s,omitempty"`
}

// GPS is GPS_RAW_INT.
type GPS struct {
	Header
	FixType    uint8    `json:"fix_type"`
	Fix        string   `json:"fix"`
	LatDeg     float64  `json:"lat_deg"`
	LonDeg     float64  `json:"lon_deg"`
	AltMSLM    float64  `json:"alt_msl_m"`
	HDOP       *float64 `json:"hdop,omitempty"`
	VDOP       *float64 `json:"vdop,omitempty"`
	SpeedMPS   *float64 `json:"speed_mps,omitempty"`
	CourseDeg  *float64 `json:"course_deg,omitempty"`
	Satellites *uint8   `json:"satellites,omitempty"`
}

// Heartbeat is HEARTBEAT, with the armed flag and the mode name decoded.
type Heartbeat struct {
	Header
	Type         uint8  `json:"type"`
	Autopilot    uint8  `json:"autopilot"`
	BaseMode     uint8  `json:"base_mode"`
	CustomMode   uint32 `json:"custom_mode"`
	SystemStatus string `json:"system_status"`
	Armed        bool   `json:"armed"`
	Mode         string `json:"mode"`
}

// Health is SYS_STATUS.
type Health struct {
	Header
	SensorsPresent   uint32   `json:"sensors_present"`
	SensorsEnabled   uint32   `json:"sensors_enabled"`
	SensorsHealthy   uint32   `json:"sensors_healthy"`
	SensorsUnhealthy uint32   `json:"sensors_unhealthy"`
	LoadPct          float64  `json:"load_pct"`
	VoltageV         *float64 `json:"voltage_v,omitempty"`
	CurrentA         *float64 `json:"current_a,omitempty"`
	RemainingPct     *float64 `json:"remaining_pct,omitempty"`
	DropRateCommPct  float64  `json:"drop_rate_comm_pct"`
	ErrorsComm       uint16   `json:"errors_comm"`
}

// VFR is VFR_HUD.
type VFR struct {
	Header
	AirspeedMPS    float64 `json:"airspeed_mps"`
	GroundspeedMPS float64 `json:"groundspeed_mps"`
	HeadingDeg     float64 `json:"heading_deg"`
	ThrottlePct    float64 `json:"throttle_pct"`
	AltMSLM        float64 `json:"alt_msl_m"`
	ClimbMPS       float64 `json:"climb_mps"`
}

// ArmedEvent is published on evt.armed on every armed/disarmed transition,
// and once for the first heartbeat the agent sees (Initial true), so a
// consumer learns the state after an agent restart.
type ArmedEvent struct {
	Header
	Armed   bool `json:"armed"`
	Initial bool `json:"initial,omitempty"`
}

// ModeEvent is published on evt.mode on every mode change (and once for the
// first heartbeat, Initial true).
type ModeEvent struct {
	Header
	Mode         string `json:"mode"`
	PreviousMode string `json:"previous_mode,omitempty"`
	CustomMode   uint32 `json:"custom_mode"`
	BaseMode     uint8  `json:"base_mode"`
	Initial      bool   `json:"initial,omitempty"`
}

// StatusTextEvent is STATUSTEXT.
type StatusTextEvent struct {
	Header
	Severity     uint8  `json:"severity"`
	SeverityName string `json:"severity_name"`
	Text         string `json:"text"`
}

// CommandReply is the JSON reply of the vehicle to a cmd.<verb> request.
// OK is true only for MAV_RESULT_ACCEPTED. Result is the MAV_RESULT code
// and ResultText its name, both omitted when no COMMAND_ACK came back
// (Error then says why: "timeout", "bad_request", "unknown_command",
// "no_vehicle", "send_failed").
type CommandReply struct {
	OK         bool    `json:"ok"`
	Result     *int    `json:"result,omitempty"`
	ResultText string  `json:"result_text,omitempty"`
	Error      string  `json:"error,omitempty"`
	Message    string  `json:"message,omitempty"`
	LatencyMS  float64 `json:"latency_ms"`
}
