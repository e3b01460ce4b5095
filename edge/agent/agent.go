package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/fleetplane/fleetplane/edge/enroll"
	"github.com/fleetplane/fleetplane/edge/forward"
	"github.com/fleetplane/fleetplane/edge/leaf"
	"github.com/fleetplane/fleetplane/edge/mavlink"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"
)

// ForwardEnv is what the store-and-forward forwarder (edge/forward) runs with.
type ForwardEnv struct {
	// Local is an in-process connection to the leaf: the local JetStream
	// (domain Domain) with the stream Stream.
	Local  *nats.Conn
	Stream string
	Domain string
	// Hub is an in-process connection whose inbox prefix is the vehicle's
	// (InboxPrefix): a publish to IngestSubject crosses the leaf link and the
	// hub's PubAck comes back to it.
	Hub           *nats.Conn
	VehicleID     string
	SubjectPrefix string
	IngestSubject string
	InboxPrefix   string
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
	// ReportStats lets the forwarder publish its counters to /status.
	ReportStats func(func() forward.Stats)
	// Resume asks the control plane for the vehicle's last message in hub
	// history (forward.Config.Resume).
	Resume func(ctx context.Context) (string, error)
}

// Forwarder runs until ctx ends; an error other than ctx's stops the agent.
type Forwarder func(ctx context.Context, env ForwardEnv) error

// Options configure Start.
type Options struct {
	Config  *Config
	Version string
	Logger  *slog.Logger
	// Forward is the store-and-forward forwarder; nil = none (telemetry
	// stays in the local stream).
	Forward Forwarder
	// ClientPort overrides the port of Config.Listen (-1 = random, tests).
	ClientPort int
	// HTTPListener overrides Config.HTTP (tests pass a :0 listener).
	HTTPListener net.Listener
	// MonitorInterval is how often the backlog and rates are sampled (2 s).
	MonitorInterval time.Duration
	// HTTP is the client for renewals (nil = default).
	HTTP *http.Client
	// MAVLink overrides the configuration's mavlink section (dev's
	// simulated vehicles); nil = use the configuration.
	MAVLink *MAVLinkConfig
}

// Agent is a running vehicle agent.
type Agent struct {
	opts    Options
	cfg     *Config
	log     *slog.Logger
	leaf    *leaf.Leaf
	local   *nats.Conn
	hub     *nats.Conn
	js      jetstream.JetStream
	kp      nkeys.KeyPair
	client  *enroll.Client
	m       *metrics
	httpSrv *http.Server
	httpLn  net.Listener
	gw      *mavlink.Gateway
	started time.Time
	// fwdStats reads the forwarder's counters (nil until it runs).
	fwdStats func() forward.Stats

	mu     sync.Mutex
	enr    *Enrollment
	status Status

	cancel context.CancelFunc
	wg     sync.WaitGroup
	errc   chan error
}

// Run starts the agent and runs it until ctx ends, then shuts it down.
func Run(ctx context.Context, o Options) error {
	a, err := Start(ctx, o)
	if err != nil {
		return err
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-a.errc:
	}
	a.Close()
	return runErr
}

// Start starts the leaf, the local stream, the monitors, the renewal loop,
// the forwarder and the HTTP endpoints.
func Start(ctx context.Context, o Options) (_ *Agent, err error) {
	if o.Config == nil {
		return nil, errors.New("agent: no config")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MonitorInterval <= 0 {
		o.MonitorInterval = 2 * time.Second
	}
	cfg := o.Config
	enr, err := LoadEnrollment(cfg.EnrollmentFile)
	if err != nil {
		return nil, fmt.Errorf("enrollment: %w (enroll first)", err)
	}
	kp, err := enroll.ReadSeed(cfg.SeedFile)
	if err != nil {
		return nil, err
	}
	always, every, err := cfg.sync()
	if err != nil {
		return nil, err
	}
	host, portS, _ := net.SplitHostPort(cfg.Listen)
	port, err := strconv.Atoi(portS)
	if err != nil {
		return nil, fmt.Errorf("listen %q: %w", cfg.Listen, err)
	}
	if o.ClientPort != 0 {
		port = o.ClientPort
	}
	a := &Agent{opts: o, cfg: cfg, log: o.Logger.With("vehicle", enr.Vehicle.VehicleID), kp: kp, enr: enr,
		client:  &enroll.Client{Server: cfg.Server, HTTP: o.HTTP, UserAgent: "fleetplane-agent/" + o.Version},
		started: time.Now(), errc: make(chan error, 4)}
	a.m = newMetrics(o.Version, cfg.BufferBytes)
	a.m.credsExpiry.Set(float64(enr.ExpiresAt.Unix()))
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	a.leaf, err = leaf.Start(leaf.Config{
		Name: enr.JetStreamDomain, Domain: enr.JetStreamDomain,
		ClientHost: host, ClientPort: port,
		StoreDir: filepath.Join(cfg.DataDir, "jetstream"), MaxStore: cfg.BufferBytes + 64<<20,
		SyncAlways: always, SyncInterval: every,
		HubURLs: enr.LeafURLs, CredsFile: cfg.CredsFile, CAFile: cfg.CAFile,
		PingInterval: cfg.PingInterval, MaxPingsOut: cfg.MaxPingsOut, ReconnectInterval: cfg.ReconnectInterval,
		Logger: a.log,
	})
	if err != nil {
		return nil, err
	}
	if a.local, err = a.leaf.Connect("agent"); err != nil {
		return nil, err
	}
	if a.hub, err = a.leaf.Connect("agent-hub", nats.CustomInboxPrefix(enr.InboxPrefix)); err != nil {
		return nil, err
	}
	if a.js, err = jetstream.New(a.local); err != nil {
		return nil, err
	}
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = leaf.EnsureStream(sctx, a.js, leaf.StreamConfig(enr.SubjectPrefix, cfg.BufferBytes))
	scancel()
	if err != nil {
		return nil, fmt.Errorf("local stream: %w", err)
	}
	if _, err = a.local.Subscribe(enr.SubjectPrefix+".state.heartbeat", func(*nats.Msg) {
		now := time.Now()
		a.mu.Lock()
		a.status.LastHeartbeat = &now
		a.mu.Unlock()
	}); err != nil {
		return nil, err
	}
	mcfg := o.MAVLink
	if mcfg == nil {
		if mcfg, err = cfg.mavlinkConfig(); err != nil {
			return nil, err
		}
	}
	if err = a.startGateway(mcfg, envOf(enr.SubjectPrefix), enr.Vehicle.VehicleID); err != nil {
		return nil, err
	}
	if err := a.startHTTP(); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.cancel = cancel
	a.sample(time.Now())
	a.goLoop(func() { a.monitorLoop(rctx) })
	a.goLoop(func() { a.renewLoop(rctx) })
	if o.Forward != nil {
		env := ForwardEnv{Local: a.local, Stream: leaf.StreamName, Domain: enr.JetStreamDomain, Hub: a.hub,
			VehicleID: enr.Vehicle.VehicleID, SubjectPrefix: enr.SubjectPrefix, IngestSubject: enr.IngestSubject,
			InboxPrefix: enr.InboxPrefix, Logger: a.log.With("component", "forward"), Registerer: a.m.reg,
			ReportStats: func(f func() forward.Stats) { a.mu.Lock(); a.fwdStats = f; a.mu.Unlock() },
			Resume:      func(ctx context.Context) (string, error) { return a.client.IngestPosition(ctx, a.kp) }}
		a.setForwarder("running")
		a.goLoop(func() {
			if err := o.Forward(rctx, env); err != nil && rctx.Err() == nil {
				a.setForwarder("stopped: " + err.Error())
				a.errc <- fmt.Errorf("forwarder: %w", err)
			}
		})
	} else {
		a.setForwarder("not configured")
		a.log.Warn("no store-and-forward forwarder: telemetry stays in the local stream")
	}
	a.log.Info("agent started", "client", a.leaf.ClientURL(), "http", a.HTTPAddr(), "hubs", enr.LeafURLs,
		"domain", enr.JetStreamDomain, "sync", cfg.Sync, "buffer_bytes", cfg.BufferBytes)
	return a, nil
}

func (a *Agent) goLoop(f func()) {
	a.wg.Add(1)
	go func() { defer a.wg.Done(); f() }()
}

func (a *Agent) setForwarder(s string) {
	a.mu.Lock()
	a.status.Forwarder = s
	a.mu.Unlock()
}

// Close stops everything and shuts the leaf down (flushing the store).
func (a *Agent) Close() {
	if a.cancel != nil {
		a.cancel()
	}
	a.wg.Wait()
	if a.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = a.httpSrv.Shutdown(ctx)
		cancel()
	}
	if a.gw != nil {
		a.gw.Close()
	}
	if a.hub != nil {
		a.hub.Close()
	}
	if a.local != nil {
		_ = a.local.Drain()
	}
	if a.leaf != nil {
		a.leaf.Close()
	}
	a.log.Info("agent stopped")
}

// ClientURL is the local NATS URL for on-vehicle services.
func (a *Agent) ClientURL() string { return a.leaf.ClientURL() }

// Leaf is the embedded server.
func (a *Agent) Leaf() *leaf.Leaf { return a.leaf }

// HTTPAddr is the address of /healthz, /metrics and /status ("" = off).
func (a *Agent) HTTPAddr() string {
	if a.httpLn == nil {
		return ""
	}
	return a.httpLn.Addr().String()
}

// Enrollment is the current enrollment (updated by renewals).
func (a *Agent) Enrollment() Enrollment {
	a.mu.Lock()
	defer a.mu.Unlock()
	return *a.enr
}

// Renew renews the JWT now: proof of possession, creds rewritten
// atomically, then the hub link is reconnected so the new JWT is used
// (nats-server re-reads the creds file on every connect, but a live link
// keeps the JWT it authenticated with until the hub closes it at exp).
func (a *Agent) Renew(ctx context.Context) error {
	c, err := a.client.Renew(ctx, a.kp)
	if err != nil {
		a.m.renewals.WithLabelValues("error").Inc()
		a.mu.Lock()
		a.status.Credentials.LastError = err.Error()
		a.mu.Unlock()
		return err
	}
	if err := enroll.WriteCreds(a.cfg.CredsFile, c.JWT, a.kp); err != nil {
		return fmt.Errorf("write creds: %w", err)
	}
	if err := writeEnrollment(a.cfg.EnrollmentFile, c); err != nil {
		return fmt.Errorf("write enrollment: %w", err)
	}
	now := time.Now()
	a.mu.Lock()
	e := *c
	e.JWT = ""
	a.enr = &e
	a.status.Credentials.LastRenewal = &now
	a.status.Credentials.LastError = ""
	a.mu.Unlock()
	a.m.renewals.WithLabelValues("ok").Inc()
	a.m.credsExpiry.Set(float64(c.ExpiresAt.Unix()))
	a.log.Info("credentials renewed", "expires_at", c.ExpiresAt, "renew_after", c.RenewAfter)
	if err := a.leaf.Reconnect(); err != nil {
		a.log.Warn("reconnect after renewal", "err", err)
	}
	return nil
}

// renewLoop renews at renew_after plus a jitter (so a fleet enrolled at
// once does not renew at once), retrying with jittered exponential backoff
// from 10 s to 5 min; a 403 (vehicle disabled or revoked) stops it.
func (a *Agent) renewLoop(ctx context.Context) {
	for {
		e := a.Enrollment()
		wait := time.Until(e.RenewAfter)
		if span := e.ExpiresAt.Sub(e.RenewAfter); span > 0 && wait > 0 {
			wait += time.Duration(rand.Int64N(int64(span/10) + 1))
		}
		if !sleep(ctx, wait) {
			return
		}
		backoff := 10 * time.Second
		for {
			rctx, cancel := context.WithTimeout(ctx, time.Minute)
			err := a.Renew(rctx)
			cancel()
			if err == nil || ctx.Err() != nil {
				break
			}
			var p *enroll.Problem
			if errors.As(err, &p) && p.Status == http.StatusForbidden {
				a.log.Error("renewal refused: the vehicle is disabled or revoked; enroll again with a fresh key", "err", err)
				return
			}
			d := backoff/2 + time.Duration(rand.Int64N(int64(backoff)))
			if errors.As(err, &p) && p.RetryAfter > d {
				d = p.RetryAfter
			}
			a.log.Warn("renewal failed; retrying", "err", err, "in", d.Round(time.Second), "expires_at", e.ExpiresAt)
			if !sleep(ctx, d) {
				return
			}
			backoff = min(backoff*2, 5*time.Minute)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (a *Agent) monitorLoop(ctx context.Context) {
	t := time.NewTicker(a.opts.MonitorInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			a.sample(now)
		}
	}
}

// fullRatio is the fill level at which the buffer counts as full: with
// DiscardOld, a stream at its limit stays there while the oldest messages
// are dropped.
const fullRatio = 0.95

// sample reads the link and the local stream, updates the rates, the
// metrics and the backlog alert.
func (a *Agent) sample(now time.Time) {
	lk := a.leaf.Link()
	var inMsgs int64
	if v, err := a.leaf.Varz(nil); err == nil {
		inMsgs = v.InMsgs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	var info *jetstream.StreamInfo
	if st, err := a.js.Stream(ctx, leaf.StreamName); err == nil {
		info = st.CachedInfo()
	} else {
		a.log.Warn("local stream info", "err", err)
	}
	cancel()

	a.mu.Lock()
	s := &a.status
	prev := s.sampled
	dt := now.Sub(prev.at).Seconds()
	if prev.at.IsZero() || dt <= 0 {
		dt = 0
	}
	if lk.Connected != s.Link.Connected || lk.Addr != s.Link.Addr {
		s.LinkChanged = &now
		if lk.Connected {
			a.log.Info("hub link up", "hub", lk.Hub, "addr", lk.Addr)
		} else if prev.at.IsZero() {
			a.log.Info("hub link down (connecting)")
		} else {
			a.log.Warn("hub link down")
		}
	}
	rate := func(cur, old int64) float64 {
		if dt == 0 || cur < old {
			return 0
		}
		return float64(cur-old) / dt
	}
	if lk.ID == prev.linkID {
		s.Rates.ToHubPerSec = rate(lk.OutMsgs, prev.out)
		s.Rates.FromHubPerSec = rate(lk.InMsgs, prev.in)
	} else {
		s.Rates.ToHubPerSec, s.Rates.FromHubPerSec = 0, 0
	}
	s.Rates.LocalInPerSec = rate(inMsgs, prev.localIn)
	s.Link = lk
	cur := sampled{at: now, linkID: lk.ID, out: lk.OutMsgs, in: lk.InMsgs, localIn: inMsgs, lastSeq: prev.lastSeq}
	var event *BacklogEvent
	if info != nil {
		st := info.State
		if st.LastSeq >= prev.lastSeq {
			s.Rates.StoredPerSec = rate(int64(st.LastSeq), int64(prev.lastSeq))
		}
		cur.lastSeq = st.LastSeq
		full := float64(st.Bytes) >= fullRatio*float64(info.Config.MaxBytes)
		s.Backlog = Backlog{Messages: st.Msgs, Bytes: st.Bytes, MaxBytes: info.Config.MaxBytes, Full: full,
			FirstSeq: st.FirstSeq, LastSeq: st.LastSeq}
		if full != prev.full || (full && now.Sub(prev.alerted) >= time.Minute) {
			event = &BacklogEvent{Schema: 1, Time: now.UTC(), Full: full, Messages: st.Msgs, Bytes: st.Bytes, MaxBytes: info.Config.MaxBytes}
			cur.alerted = now
		} else {
			cur.alerted = prev.alerted
		}
		cur.full = full
	}
	s.sampled = cur
	a.m.observe(s)
	prefix := a.enr.SubjectPrefix
	a.mu.Unlock()

	if event != nil {
		if event.Full {
			if !prev.full {
				a.m.fullEvents.Inc()
			}
			a.log.Warn("local buffer full: the oldest unforwarded telemetry is being dropped",
				"messages", event.Messages, "bytes", event.Bytes, "max_bytes", event.MaxBytes)
		} else if prev.full {
			a.log.Info("local buffer no longer full", "messages", event.Messages, "bytes", event.Bytes)
		}
		if event.Full || prev.full {
			b, _ := json.Marshal(event)
			if err := a.local.Publish(prefix+".agent.backlog", b); err != nil {
				a.log.Warn("publish agent.backlog", "err", err)
			}
		}
	}
}

// BacklogEvent is published on <prefix>.agent.backlog when the local buffer
// becomes full (then every minute while it stays full) and when it drains.
type BacklogEvent struct {
	Schema   int       `json:"schema"`
	Time     time.Time `json:"ts"`
	Full     bool      `json:"full"`
	Messages uint64    `json:"messages"`
	Bytes    uint64    `json:"bytes"`
	MaxBytes int64     `json:"max_bytes"`
}
