package mavlink

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/bluenviron/gomavlib/v3"
	"github.com/bluenviron/gomavlib/v3/pkg/dialects/common"
	"github.com/nats-io/nats.go"

	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/telemetry"
)

// Config configures a Gateway.
type Config struct {
	Env       string     // fleet environment, e.g. "prod"
	VehicleID string     // subject token of this vehicle
	Endpoints []Endpoint // links to the autopilot; at least one

	// Conn is the connection to the vehicle's local leaf node: telemetry
	// is published and cmd.> subscribed on it. Publisher, when set,
	// replaces Conn for telemetry (tests, benchmarks).
	Conn      *nats.Conn
	Publisher Publisher

	// SystemID and ComponentID of the gateway on the MAVLink network.
	// Defaults: 254 and 191 (MAV_COMP_ID_ONBOARD_COMPUTER).
	SystemID, ComponentID uint8
	// TargetSystem fixes the autopilot's system ID; 0 adopts the first
	// system whose heartbeat comes from an autopilot.
	TargetSystem uint8

	// RateLimits per subject suffix in messages/s ("state.position": 5);
	// see DefaultRateLimits for the keys and defaults.
	RateLimits map[string]float64
	// Raw also publishes every frame from the vehicle, as MAVLink bytes, on
	// fleet.<env>.veh.<vid>.raw.mavlink (rate limit key "raw.mavlink").
	Raw bool
	// RequestStreams asks ArduPilot for its telemetry streams
	// (REQUEST_DATA_STREAM), needed when no GCS has configured SRx_ rates.
	RequestStreams bool

	// CommandTimeout is the wait for a COMMAND_ACK per attempt (default 1 s);
	// CommandRetries the number of retransmissions (default 2; -1 for none).
	CommandTimeout time.Duration
	CommandRetries int

	Stats  *Stats       // optional; counters
	Logger *slog.Logger // optional
}

func (c *Config) setDefaults() {
	if c.SystemID == 0 {
		c.SystemID = 254
	}
	if c.ComponentID == 0 {
		c.ComponentID = 191
	}
	if c.CommandTimeout <= 0 {
		c.CommandTimeout = time.Second
	}
	if c.CommandRetries == 0 {
		c.CommandRetries = 2
	} else if c.CommandRetries < 0 {
		c.CommandRetries = 0
	}
	if c.Stats == nil {
		c.Stats = &Stats{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if err := natsauth.ValidateEnv(c.Env); err != nil {
		return err
	}
	if err := natsauth.ValidateVehicleID(c.VehicleID); err != nil {
		return err
	}
	if len(c.Endpoints) == 0 {
		return errors.New("mavlink: no endpoint configured")
	}
	for _, e := range c.Endpoints {
		if err := e.Validate(); err != nil {
			return err
		}
	}
	if c.Conn == nil && c.Publisher == nil {
		return errors.New("mavlink: neither Conn nor Publisher set")
	}
	for k := range c.RateLimits {
		if _, ok := DefaultRateLimits[k]; !ok {
			return fmt.Errorf("mavlink: rate limit for unknown subject suffix %q", k)
		}
	}
	return nil
}

// Gateway bridges one autopilot and the local NATS leaf.
type Gateway struct {
	cfg    Config
	prefix string
	node   *gomavlib.Node
	dec    *decoder
	sub    *nats.Subscription
	done   chan struct{}

	cmdMu   sync.Mutex // one command in flight, as the MAVLink command protocol expects
	pmu     sync.Mutex
	pending *pendingCmd
}

type pendingCmd struct {
	cmd  common.MAV_CMD
	acks chan *common.MessageCommandAck
}

// Start opens the endpoints, starts decoding and subscribes to commands.
func Start(cfg Config) (*Gateway, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pub := cfg.Publisher
	if pub == nil {
		pub = cfg.Conn
	}
	g := &Gateway{cfg: cfg, prefix: natsauth.VehicleSubjectPrefix(cfg.Env, cfg.VehicleID), done: make(chan struct{})}
	dec, err := newDecoder(g.prefix, cfg.RateLimits, pub, cfg.Stats, cfg.Logger, cfg.Raw, cfg.TargetSystem)
	if err != nil {
		return nil, err
	}
	dec.onAck = g.onAck
	g.dec = dec

	eps := make([]gomavlib.EndpointConf, len(cfg.Endpoints))
	for i, e := range cfg.Endpoints {
		eps[i] = e.conf()
	}
	g.node = &gomavlib.Node{
		Endpoints:              eps,
		Dialect:                common.Dialect,
		OutVersion:             gomavlib.V2,
		OutSystemID:            cfg.SystemID,
		OutComponentID:         cfg.ComponentID,
		HeartbeatPeriod:        time.Second,
		HeartbeatSystemType:    int(common.MAV_TYPE_ONBOARD_CONTROLLER),
		HeartbeatAutopilotType: int(common.MAV_AUTOPILOT_INVALID),
		StreamRequestEnable:    cfg.RequestStreams,
	}
	if err := g.node.Initialize(); err != nil {
		return nil, fmt.Errorf("mavlink: %w", err)
	}
	go g.loop()

	if cfg.Conn != nil {
		g.sub, err = cfg.Conn.Subscribe(g.prefix+".cmd.>", g.onCommand)
		if err != nil {
			g.node.Close()
			<-g.done
			return nil, fmt.Errorf("mavlink: subscribe commands: %w", err)
		}
	}
	return g, nil
}

// Stats returns the gateway's counters.
func (g *Gateway) Stats() *Stats { return g.cfg.Stats }

// Vehicle reports the autopilot's system and component ID once its
// heartbeat was seen.
func (g *Gateway) Vehicle() (systemID, componentID uint8, ok bool) {
	s, c, _, ok := g.dec.veh.get()
	return s, c, ok
}

// Close stops the command subscription and the MAVLink node.
func (g *Gateway) Close() {
	if g.sub != nil {
		_ = g.sub.Unsubscribe()
	}
	g.node.Close()
	<-g.done
}

func (g *Gateway) loop() {
	defer close(g.done)
	log := g.cfg.Logger
	for evt := range g.node.Events() {
		switch e := evt.(type) {
		case *gomavlib.EventFrame:
			g.dec.handle(e.Frame, e.Channel, time.Now())
		case *gomavlib.EventParseError:
			g.cfg.Stats.FramesMalformed.Add(1)
			g.dec.warn("mavlink: malformed frame", "err", e.Error)
		case *gomavlib.EventChannelOpen:
			log.Info("mavlink: channel open", "channel", e.Channel.String())
		case *gomavlib.EventChannelClose:
			log.Info("mavlink: channel closed", "channel", e.Channel.String(), "err", e.Error)
		}
	}
}

func (g *Gateway) onAck(_, _ uint8, ack *common.MessageCommandAck) {
	// An ACK addressed to another GCS is not ours (target fields are a
	// MAVLink 2 extension; 0 means unset).
	if ack.TargetSystem != 0 && ack.TargetSystem != g.cfg.SystemID {
		return
	}
	g.pmu.Lock()
	defer g.pmu.Unlock()
	if g.pending != nil && g.pending.cmd == ack.Command {
		select {
		case g.pending.acks <- ack:
		default:
		}
	}
}

func (g *Gateway) onCommand(m *nats.Msg) {
	start := time.Now()
	verb := strings.TrimPrefix(m.Subject, g.prefix+".cmd.")
	reply := g.execute(verb, m.Data)
	reply.LatencyMS = float64(time.Since(start).Microseconds()) / 1e3
	outcome := reply.ResultText
	if outcome == "" {
		outcome = reply.Error
	}
	if !strings.Contains(verb, ".") && len(verb) <= 32 {
		g.cfg.Stats.command(verb, outcome)
	} else {
		g.cfg.Stats.command("invalid", outcome)
	}
	if reply.Error != "" {
		g.dec.warnCommand("mavlink: command failed", "verb", verb, "error", reply.Error, "message", reply.Message)
	}
	if m.Reply == "" {
		return
	}
	b, _ := json.Marshal(reply)
	if err := m.Respond(b); err != nil {
		g.cfg.Logger.Warn("mavlink: command reply failed", "verb", verb, "err", err)
	}
}

func (g *Gateway) execute(verb string, payload []byte) telemetry.CommandReply {
	c, err := ParseCommand(verb, payload)
	if err != nil {
		g.cfg.Stats.CommandsBad.Add(1)
		code := "bad_request"
		if errors.Is(err, ErrUnknownVerb) {
			code = "unknown_command"
		}
		return telemetry.CommandReply{Error: code, Message: err.Error()}
	}
	return g.Send(c)
}

// Send sends a command to the autopilot and waits for its final
// COMMAND_ACK, retransmitting after each CommandTimeout without one.
func (g *Gateway) Send(c Command) telemetry.CommandReply {
	sys, comp, ch, ok := g.dec.veh.get()
	if !ok || ch == nil {
		return telemetry.CommandReply{Error: "no_vehicle", Message: "no autopilot heartbeat seen yet"}
	}
	g.cmdMu.Lock()
	defer g.cmdMu.Unlock()
	p := &pendingCmd{cmd: c.MAVCommand(), acks: make(chan *common.MessageCommandAck, 8)}
	g.pmu.Lock()
	g.pending = p
	g.pmu.Unlock()
	defer func() {
		g.pmu.Lock()
		g.pending = nil
		g.pmu.Unlock()
	}()

	timer := time.NewTimer(g.cfg.CommandTimeout)
	defer timer.Stop()
	inProgress := false
	for attempt := 0; ; {
		if !inProgress {
			if err := g.node.WriteMessageTo(ch, c.Message(sys, comp, uint8(attempt))); err != nil {
				return telemetry.CommandReply{Error: "send_failed", Message: err.Error()}
			}
		}
		select {
		case ack := <-p.acks:
			if ack.Result == common.MAV_RESULT_IN_PROGRESS {
				// The autopilot works on it: stop retransmitting, wait
				// another timeout for the final ACK.
				inProgress = true
				timer.Reset(g.cfg.CommandTimeout)
				continue
			}
			r := int(ack.Result)
			return telemetry.CommandReply{OK: ack.Result == common.MAV_RESULT_ACCEPTED, Result: &r, ResultText: ack.Result.String()}
		case <-timer.C:
			attempt++
			if attempt > g.cfg.CommandRetries {
				g.cfg.Stats.CommandsTimedOut.Add(1)
				return telemetry.CommandReply{Error: "timeout", Message: fmt.Sprintf("no COMMAND_ACK for %s after %d attempt(s) of %s", c.MAVCommand(), attempt, g.cfg.CommandTimeout)}
			}
			inProgress = false
			timer.Reset(g.cfg.CommandTimeout)
		}
	}
}
