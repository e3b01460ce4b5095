package agent

import (
	"fmt"
	"strings"
	"time"

	"github.com/fleetplane/fleetplane/edge/mavlink"
)

// MAVLinkConfig is the agent configuration's `mavlink:` section: where the
// autopilot is and how telemetry is published (docs/mavlink.md).
//
//	mavlink:
//	  endpoints: ["serial:/dev/ttyTHS1:921600"]   # or udp-server:0.0.0.0:14550, tcp-client:host:port
//	  target_system: 1          # 0 = the first autopilot heard
//	  rate_limits: {state.position: 5}
//	  raw: false                # also publish raw frames on ...raw.mavlink
//	  request_streams: true     # ask ArduPilot for its data streams
//	  command_timeout: 1s
type MAVLinkConfig struct {
	Endpoints      []string           `yaml:"endpoints"`
	TargetSystem   uint8              `yaml:"target_system"`
	RateLimits     map[string]float64 `yaml:"rate_limits"`
	Raw            bool               `yaml:"raw"`
	RequestStreams bool               `yaml:"request_streams"`
	CommandTimeout time.Duration      `yaml:"command_timeout"`
}

// mavlinkConfig decodes the `mavlink:` section (nil when absent).
func (c *Config) mavlinkConfig() (*MAVLinkConfig, error) {
	if c.MAVLink == nil {
		return nil, nil
	}
	var m MAVLinkConfig
	if err := c.MAVLink.Decode(&m); err != nil {
		return nil, fmt.Errorf("mavlink: %w", err)
	}
	return &m, nil
}

// startGateway starts the MAVLink gateway on the local connection when the
// configuration names autopilot endpoints.
func (a *Agent) startGateway(m *MAVLinkConfig, env, vehicleID string) error {
	if m == nil || len(m.Endpoints) == 0 {
		a.log.Info("no MAVLink endpoints configured: the gateway is off")
		return nil
	}
	var eps []mavlink.Endpoint
	for _, s := range m.Endpoints {
		ep, err := mavlink.ParseEndpoint(s)
		if err != nil {
			return fmt.Errorf("mavlink endpoint %q: %w", s, err)
		}
		eps = append(eps, ep)
	}
	stats := &mavlink.Stats{}
	gw, err := mavlink.Start(mavlink.Config{Env: env, VehicleID: vehicleID, Endpoints: eps, Conn: a.local,
		TargetSystem: m.TargetSystem, RateLimits: m.RateLimits, Raw: m.Raw, RequestStreams: m.RequestStreams,
		CommandTimeout: m.CommandTimeout, Stats: stats, Logger: a.log.With("component", "mavlink")})
	if err != nil {
		return fmt.Errorf("mavlink gateway: %w", err)
	}
	if err := a.m.reg.Register(stats.Collector()); err != nil {
		gw.Close()
		return fmt.Errorf("mavlink metrics: %w", err)
	}
	a.gw = gw
	return nil
}

// envOf returns <env> of a subject prefix fleet.<env>.veh.<vid>.
func envOf(subjectPrefix string) string {
	parts := strings.Split(subjectPrefix, ".")
	if len(parts) < 4 {
		return ""
	}
	return parts[1]
}
