// Package mavlink is the agent's MAVLink gateway (DESIGN §6): it talks to the
// autopilot over gomavlib (common dialect) on serial, UDP or TCP endpoints,
// decodes telemetry into the versioned JSON of internal/telemetry and
// publishes it on fleet.<env>.veh.<vid>.state.<kind> / .evt.<kind> through a
// NATS connection to the vehicle's local leaf node, and turns
// fleet.<env>.veh.<vid>.cmd.<verb> requests into COMMAND_LONG/COMMAND_INT,
// answering with the autopilot's COMMAND_ACK.
//
// It may import internal/... and never controlplane/... (see docs/mavlink.md).
package mavlink

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/bluenviron/gomavlib/v3"
)

// Endpoint kinds.
const (
	EndpointSerial    = "serial"
	EndpointUDPServer = "udp-server"
	EndpointUDPClient = "udp-client"
	EndpointTCPServer = "tcp-server"
	EndpointTCPClient = "tcp-client"
)

// Endpoint is one link to the autopilot. Its text form (ParseEndpoint,
// String) is used in config files and flags:
//
//	serial:/dev/ttyTHS1:921600   serial device and baud
//	udp-server:0.0.0.0:14550     listen for UDP (the autopilot sends to us)
//	udp-client:192.168.2.1:14550 send UDP to the autopilot
//	tcp-server:127.0.0.1:5760    accept TCP
//	tcp-client:127.0.0.1:5760    connect over TCP (SITL's default)
type Endpoint struct {
	Kind    string `json:"kind" yaml:"kind"`
	Address string `json:"address,omitempty" yaml:"address,omitempty"` // host:port, or the device path for serial
	Baud    int    `json:"baud,omitempty" yaml:"baud,omitempty"`
}

// ParseEndpoint parses the text form of an Endpoint.
func ParseEndpoint(s string) (Endpoint, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok || rest == "" {
		return Endpoint{}, fmt.Errorf("mavlink: endpoint %q: want kind:address (serial:/dev/ttyX:57600, udp-server:0.0.0.0:14550, ...)", s)
	}
	e := Endpoint{Kind: kind, Address: rest}
	if kind == EndpointSerial {
		i := strings.LastIndex(rest, ":")
		if i < 0 {
			return Endpoint{}, fmt.Errorf("mavlink: serial endpoint %q: want serial:<device>:<baud>", s)
		}
		baud, err := strconv.Atoi(rest[i+1:])
		if err != nil {
			return Endpoint{}, fmt.Errorf("mavlink: serial endpoint %q: bad baud: %w", s, err)
		}
		e.Address, e.Baud = rest[:i], baud
	}
	return e, e.Validate()
}

// String is the text form accepted by ParseEndpoint.
func (e Endpoint) String() string {
	if e.Kind == EndpointSerial {
		return fmt.Sprintf("%s:%s:%d", e.Kind, e.Address, e.Baud)
	}
	return e.Kind + ":" + e.Address
}

// Validate checks the endpoint.
func (e Endpoint) Validate() error {
	switch e.Kind {
	case EndpointSerial:
		if e.Address == "" || e.Baud <= 0 {
			return fmt.Errorf("mavlink: serial endpoint needs a device and a positive baud rate")
		}
	case EndpointUDPServer, EndpointUDPClient, EndpointTCPServer, EndpointTCPClient:
		if !strings.Contains(e.Address, ":") {
			return fmt.Errorf("mavlink: %s endpoint %q: want host:port", e.Kind, e.Address)
		}
	default:
		return fmt.Errorf("mavlink: unknown endpoint kind %q (serial, udp-server, udp-client, tcp-server, tcp-client)", e.Kind)
	}
	return nil
}

func (e Endpoint) conf() gomavlib.EndpointConf {
	switch e.Kind {
	case EndpointSerial:
		return gomavlib.EndpointSerial{Device: e.Address, Baud: e.Baud}
	case EndpointUDPServer:
		return gomavlib.EndpointUDPServer{Address: e.Address}
	case EndpointUDPClient:
		return gomavlib.EndpointUDPClient{Address: e.Address}
	case EndpointTCPServer:
		return gomavlib.EndpointTCPServer{Address: e.Address}
	default:
		return gomavlib.EndpointTCPClient{Address: e.Address}
	}
}
