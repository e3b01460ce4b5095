// Package forward is the vehicle's store-and-forward forwarder (DESIGN.md §3
// option (b), docs/adr/0009-store-and-forward.md): it reads the vehicle's
// local JetStream stream (state + evt) through a durable consumer and
// republishes every message fleet.<env>.veh.<vid>.<rest> to the hub as
// ingest.<env>.<vid>.<rest> with Nats-Msg-Id <prefix>-<local stream seq>,
// acking it locally only after its own hub PubAck.
//
// Guarantees: per-vehicle order and exactly-once into hub history. Messages
// are acked locally strictly in stream order; the first failure holds the
// whole forwarder (never skip ahead): in-flight state is dropped, the
// consumer is reset to its ack floor and the failed message is re-sent alone
// (a probe) until it is acked; only then is the window reopened. A re-sent
// message that was stored before (lost PubAck) is recognised by the hub's
// dedupe window (same Msg-Id).
//
// It imports nats.go only (never controlplane, never nats-server).
package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Config configures a Forwarder.
type Config struct {
	// Local is the vehicle's local JetStream (domain-local connection).
	Local jetstream.JetStream
	// LocalStream is the local stream of the vehicle's state + evt subjects.
	LocalStream string
	// Durable is the name of the forwarder's durable consumer on LocalStream.
	Durable string
	// Hub is a connection to the LOCAL leaf server whose traffic crosses the
	// leaf link to the hub; it must use nats.CustomInboxPrefix(
	// natsauth.VehicleInboxPrefix(vid)) so PubAcks can come back.
	Hub *nats.Conn
	// IngestPrefix is ingest.<env>.<vid> (natsauth.IngestSubject).
	IngestPrefix string
	// SubjectPrefix is fleet.<env>.veh.<vid> (natsauth.VehicleSubjectPrefix).
	SubjectPrefix string
	// MsgIDPrefix starts every Nats-Msg-Id, typically the vehicle ID; the
	// forwarder appends the local stream's creation time, so a wiped local
	// store never reuses an ID: <MsgIDPrefix>-<created, base 36>-<seq>.
	MsgIDPrefix string
	// AckTimeout is how long to wait for a hub PubAck (default 2 s).
	AckTimeout time.Duration
	// Window is how many publishes may await their PubAck at once
	// (default 256; 1 = stop-and-wait).
	Window int
	// RetryBackoff is the pause before re-sending after a failure
	// (default 250 ms).
	RetryBackoff time.Duration
	// Resume (optional) returns the Nats-Msg-Id of the vehicle's last
	// message in hub history ("" if none). After the forwarder has been
	// holding for longer than ResumeAfter it asks, right before a re-send
	// pass, and acks every unacked local message up to that ID's local seq
	// without re-sending it: they were stored, only their PubAcks were lost.
	// This covers outages longer than the hub's dedupe window. An error is
	// logged and the pass re-sends as usual (dedupe may still cover it).
	Resume func(ctx context.Context) (lastMsgID string, err error)
	// ResumeAfter is how long the forwarder must have been holding before
	// it calls Resume (default 2 min); it calls it at most every
	// ResumeAfter/4.
	ResumeAfter time.Duration
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Stats is a snapshot of the forwarder's counters.
type Stats struct {
	Backlog         uint64 // local messages not yet acked by the hub (approximate)
	Forwarded       uint64 // messages acked by the hub (including duplicates)
	Duplicates      uint64 // PubAcks that reported a duplicate (a re-sent message)
	Retries         uint64 // failures that held the forwarder and re-sent from the ack floor
	Skipped         uint64 // local messages outside SubjectPrefix (acked, not forwarded)
	OrderViolations uint64 // a re-sent message was new although a later one had been stored
	Resumed         uint64 // local messages acked without re-sending: already in hub history (Resume)
	LastHubSeq      uint64 // hub stream sequence of the last forwarded message
	LastLocalSeq    uint64 // local stream sequence of the last forwarded message
	LastError       string
}

// Forwarder forwards one vehicle's local stream to the hub.
type Forwarder struct {
	cfg   Config
	log   *slog.Logger
	hubJS jetstream.JetStream
	mu    sync.Mutex
	st    Stats
	// suspect is a local seq that failed while a later message was stored:
	// its retry must be a duplicate.
	suspect uint64
	// holdingSince is when the current run of failures began (zero while
	// forwarding works); lastResume is when Resume was last called.
	holdingSince, lastResume time.Time
}

// New checks cfg and returns a Forwarder; Run starts it.
func New(cfg Config) (*Forwarder, error) {
	switch {
	case cfg.Local == nil || cfg.Hub == nil:
		return nil, errors.New("forward: Local and Hub are required")
	case cfg.LocalStream == "" || cfg.Durable == "":
		return nil, errors.New("forward: LocalStream and Durable are required")
	case cfg.IngestPrefix == "" || cfg.SubjectPrefix == "" || cfg.MsgIDPrefix == "":
		return nil, errors.New("forward: IngestPrefix, SubjectPrefix and MsgIDPrefix are required")
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = 2 * time.Second
	}
	if cfg.Window <= 0 {
		cfg.Window = 256
	}
	if cfg.RetryBackoff <= 0 {
		cfg.RetryBackoff = 250 * time.Millisecond
	}
	if cfg.ResumeAfter <= 0 {
		cfg.ResumeAfter = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	hjs, err := jetstream.New(cfg.Hub,
		jetstream.WithPublishAsyncMaxPending(cfg.Window*2),
		jetstream.WithPublishAsyncTimeout(cfg.AckTimeout))
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	return &Forwarder{cfg: cfg, log: cfg.Logger.With("component", "forward"), hubJS: hjs}, nil
}

// Stats returns a snapshot of the counters.
func (f *Forwarder) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

func (f *Forwarder) update(fn func(*Stats)) {
	f.mu.Lock()
	fn(&f.st)
	f.mu.Unlock()
}

type inflight struct {
	msg     jetstream.Msg
	seq     uint64
	future  jetstream.PubAckFuture
	resumed bool // already in hub history: ack locally, never sent
}

// errHold is a failure that holds the forwarder: re-send from the ack floor.
type errHold struct{ err error }

func (e errHold) Error() string { return e.err.Error() }

// Run forwards until ctx ends; it returns ctx's error, or an error that
// makes forwarding impossible (local stream missing). Transient failures
// (link down, hub errors) are retried forever, in order.
func (f *Forwarder) Run(ctx context.Context) error {
	for {
		err := f.run(ctx, f.resumePoint(ctx))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		f.mu.Lock()
		if f.holdingSince.IsZero() {
			f.holdingSince = time.Now()
		}
		f.mu.Unlock()
		var hold errHold
		if !errors.As(err, &hold) && err != nil {
			f.log.Warn("forwarder setup failed, retrying", "err", err)
		}
		f.update(func(s *Stats) { s.Retries++; s.LastError = err.Error() })
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(f.cfg.RetryBackoff):
		}
	}
}

// resumePoint calls cfg.Resume when the forwarder has been holding for
// longer than ResumeAfter (at most every ResumeAfter/4) and returns the hub's
// last Msg-Id for this vehicle, or "".
func (f *Forwarder) resumePoint(ctx context.Context) string {
	if f.cfg.Resume == nil {
		return ""
	}
	now := time.Now()
	f.mu.Lock()
	due := !f.holdingSince.IsZero() && now.Sub(f.holdingSince) > f.cfg.ResumeAfter &&
		now.Sub(f.lastResume) >= f.cfg.ResumeAfter/4
	if due {
		f.lastResume = now
	}
	f.mu.Unlock()
	if !due {
		return ""
	}
	id, err := f.cfg.Resume(ctx)
	if err != nil {
		f.log.Warn("resume point unavailable, re-sending (hub dedupe may absorb it)", "err", err)
		return ""
	}
	return id
}

// run is one pass: (re)attach the consumer at its ack floor, probe with one
// message, then forward with the full window until the first failure.
// Unacked local messages up to resumeID's local seq (same prefix and stream
// creation) are acked without re-sending.
func (f *Forwarder) run(ctx context.Context, resumeID string) error {
	stream, err := f.cfg.Local.Stream(ctx, f.cfg.LocalStream)
	if err != nil {
		return fmt.Errorf("forward: local stream %s: %w", f.cfg.LocalStream, err)
	}
	idPrefix := f.cfg.MsgIDPrefix + "-" + strconv.FormatInt(stream.CachedInfo().Created.UnixNano(), 36) + "-"
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       f.cfg.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		// Redelivery is driven by ResetConsumer, never by the ack timer: a
		// message held during a long outage must not come back out of order.
		AckWait:       24 * time.Hour,
		MaxAckPending: f.cfg.Window * 2,
	})
	if err != nil {
		return fmt.Errorf("forward: consumer: %w", err)
	}
	// Deliver again from ack floor + 1: whatever was delivered but not acked
	// (a previous pass or a crashed process) is re-sent in order.
	if _, err := f.cfg.Local.ResetConsumer(ctx, f.cfg.LocalStream, f.cfg.Durable); err != nil {
		return fmt.Errorf("forward: reset consumer: %w", err)
	}

	var resumeTo uint64
	if rest, ok := strings.CutPrefix(resumeID, idPrefix); ok {
		if n, err := strconv.ParseUint(rest, 10, 64); err == nil {
			resumeTo = n
			f.log.Info("resuming after the hub's last stored message", "msg_id", resumeID)
		}
	} else if resumeID != "" {
		f.log.Info("hub's last message is of another local store, ignored", "msg_id", resumeID)
	}

	window := 1 // probe until the first PubAck of this pass
	var queue []inflight
	var lastFetched uint64
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if room := window - len(queue); room > 0 && (len(queue) == 0 || room >= window/2) {
			var msgs []jetstream.Msg
			if len(queue) == 0 {
				// Idle: block (briefly, to notice ctx) for the next message.
				m, err := cons.Next(jetstream.FetchMaxWait(500 * time.Millisecond))
				if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
					continue
				}
				if err != nil {
					return fmt.Errorf("forward: fetch: %w", err)
				}
				msgs, room = append(msgs, m), room-1
			}
			if room > 0 {
				batch, err := cons.FetchNoWait(room)
				if err != nil {
					return fmt.Errorf("forward: fetch: %w", err)
				}
				for m := range batch.Messages() {
					msgs = append(msgs, m)
				}
				if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
					return fmt.Errorf("forward: fetch: %w", err)
				}
			}
			for _, m := range msgs {
				meta, err := m.Metadata()
				if err != nil {
					return fmt.Errorf("forward: metadata: %w", err)
				}
				seq := meta.Sequence.Stream
				if seq <= lastFetched { // a redelivery of a message already in flight
					continue
				}
				lastFetched = seq
				f.update(func(s *Stats) { s.Backlog = meta.NumPending + uint64(len(queue)) + 1 })
				if seq <= resumeTo {
					queue = append(queue, inflight{msg: m, seq: seq, resumed: true}) // in hub history already
					continue
				}
				rest, ok := strings.CutPrefix(m.Subject(), f.cfg.SubjectPrefix+".")
				if !ok {
					f.log.Warn("not forwarding a message outside the vehicle's subjects", "subject", m.Subject(), "seq", seq)
					queue = append(queue, inflight{msg: m, seq: seq}) // acked in order, never sent
					continue
				}
				out := &nats.Msg{Subject: f.cfg.IngestPrefix + "." + rest, Data: m.Data(), Header: nats.Header{}}
				for k, v := range m.Headers() {
					out.Header[k] = v
				}
				// No library retries: nats.go re-sends a no-responders
				// message on its own timer, behind later messages (order!).
				fut, err := f.hubJS.PublishMsgAsync(out, jetstream.WithMsgID(idPrefix+strconv.FormatUint(seq, 10)),
					jetstream.WithRetryAttempts(0))
				if err != nil {
					return errHold{fmt.Errorf("forward: publish seq %d: %w", seq, err)}
				}
				queue = append(queue, inflight{msg: m, seq: seq, future: fut})
			}
		}
		if len(queue) == 0 {
			continue
		}
		// Settle the head in order.
		head := queue[0]
		if head.future == nil {
			if err := head.msg.Ack(); err != nil {
				return errHold{fmt.Errorf("forward: local ack %d: %w", head.seq, err)}
			}
			queue = queue[1:]
			f.update(func(s *Stats) {
				if !head.resumed {
					s.Skipped++
					return
				}
				s.Resumed++
				s.LastLocalSeq = head.seq
				if s.Backlog > 0 {
					s.Backlog--
				}
			})
			if head.resumed {
				f.mu.Lock()
				if f.suspect != 0 && f.suspect <= head.seq {
					f.suspect = 0 // stored before: no re-send to check
				}
				f.mu.Unlock()
			}
			continue
		}
		var ack *jetstream.PubAck
		timer := time.NewTimer(f.cfg.AckTimeout)
		select {
		case ack = <-head.future.Ok():
		case err = <-head.future.Err():
		case <-timer.C:
			err = errors.New("PubAck timeout")
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		}
		timer.Stop()
		if ack == nil {
			f.noteLaterStored(head.seq, queue[1:])
			return errHold{fmt.Errorf("forward: hub publish of local seq %d: %w", head.seq, err)}
		}
		if err := head.msg.Ack(); err != nil {
			return errHold{fmt.Errorf("forward: local ack %d: %w", head.seq, err)}
		}
		queue = queue[1:]
		f.settled(head.seq, ack)
		if window == 1 {
			window = f.cfg.Window
		}
	}
}

func (f *Forwarder) settled(seq uint64, ack *jetstream.PubAck) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.suspect != 0 && seq == f.suspect {
		// A later message was stored while this one failed: it must have
		// been stored before (duplicate), or per-vehicle order is broken.
		if !ack.Duplicate {
			f.st.OrderViolations++
			f.log.Error("per-vehicle order violated on the hub: a message was stored after a later one", "seq", seq)
		}
		f.suspect = 0
	}
	f.holdingSince = time.Time{}
	f.st.Forwarded++
	if ack.Duplicate {
		f.st.Duplicates++
	}
	f.st.LastHubSeq, f.st.LastLocalSeq = ack.Sequence, seq
	if f.st.Backlog > 0 {
		f.st.Backlog--
	}
}

// noteLaterStored remembers the failed head when a later in-flight message
// has a PubAck already (the hub stored it): the head's retry is checked.
func (f *Forwarder) noteLaterStored(head uint64, rest []inflight) {
	for _, in := range rest {
		if in.future == nil {
			continue
		}
		select {
		case a := <-in.future.Ok():
			if a != nil && !a.Duplicate {
				f.mu.Lock()
				if f.suspect == 0 {
					f.suspect = head
				}
				f.mu.Unlock()
				return
			}
		default:
		}
	}
}
