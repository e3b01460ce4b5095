package twin

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/fleetplane/fleetplane/controlplane"
)

// liveBuffer is a live subscription's buffer; a reader that falls further
// behind loses messages (counted) instead of making the server treat the
// tenant connection as a slow consumer.
const liveBuffer = 1024

// liveSub is a core subscription of the tenant's service user on live
// subjects.
type liveSub struct {
	ch      chan *controlplane.TwinMessage
	dropped atomic.Uint64
	subs    []*nats.Subscription
	release func()
	c       *conn

	mu     sync.Mutex
	closed bool
	stop   func() bool // stops the context watch
	once   sync.Once
}

var _ controlplane.LiveSubscription = (*liveSub)(nil)

func (l *liveSub) Messages() <-chan *controlplane.TwinMessage { return l.ch }
func (l *liveSub) Dropped() uint64                            { return l.dropped.Load() }

// Close unsubscribes and closes Messages.
func (l *liveSub) Close() {
	l.once.Do(func() {
		l.mu.Lock()
		stop := l.stop
		l.mu.Unlock()
		if stop != nil {
			stop()
		}
		for _, s := range l.subs {
			_ = s.Unsubscribe()
		}
		l.end()
		l.c.subsMu.Lock()
		delete(l.c.subs, l)
		l.c.subsMu.Unlock()
		l.release()
	})
}

// end closes the channel once; deliver never sends after it.
func (l *liveSub) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.ch)
	}
}

func (l *liveSub) deliver(m *nats.Msg) {
	tm := &controlplane.TwinMessage{Subject: m.Subject, ReceivedAt: time.Now().UTC(), Data: m.Data}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	select {
	case l.ch <- tm:
	default:
		l.dropped.Add(1)
	}
}

// endSubs ends c's live subscriptions when the connection is closed for
// good (their readers see Messages closed).
func (c *conn) endSubs() {
	c.subsMu.Lock()
	subs := make([]*liveSub, 0, len(c.subs))
	for l := range c.subs {
		subs = append(subs, l)
	}
	c.subsMu.Unlock()
	for _, l := range subs {
		l.end()
	}
}

// Subscribe delivers live messages on subjects (core NATS, not history)
// until the subscription is closed or ctx ends. The subscription holds the
// tenant's connection open; across a reconnect nats.go restores it (what
// was published meanwhile is not replayed: history has it).
func (tw *Twin) Subscribe(ctx context.Context, t controlplane.TelemetryTarget, subjects []string) (controlplane.LiveSubscription, error) {
	if len(subjects) == 0 {
		return nil, controlplane.Errorf(controlplane.EINVALID, "a live subscription needs subjects")
	}
	c, release, err := tw.acquire(ctx, t)
	if err != nil {
		return nil, err
	}
	l := &liveSub{ch: make(chan *controlplane.TwinMessage, liveBuffer), release: release, c: c}
	c.subsMu.Lock()
	c.subs[l] = struct{}{}
	c.subsMu.Unlock()
	for _, s := range subjects {
		sub, err := c.nc.Subscribe(s, l.deliver)
		if err != nil {
			l.Close()
			return nil, unavailable(t, "subscribing to "+s, err)
		}
		// Pending limits well above the channel: drops happen in
		// deliver, counted, never as a slow-consumer error.
		_ = sub.SetPendingLimits(64*1024, 64<<20)
		l.subs = append(l.subs, sub)
	}
	// The subscription is live on the server before the caller goes on
	// (a message published after Subscribe returns is delivered).
	ctx2, cancel := tw.withTimeout(ctx)
	defer cancel()
	if err := c.nc.FlushWithContext(ctx2); err != nil {
		l.Close()
		return nil, unavailable(t, "subscribing", err)
	}
	stop := context.AfterFunc(ctx, l.Close)
	l.mu.Lock()
	l.stop = stop
	l.mu.Unlock()
	return l, nil
}

// Request sends r.Data to r.Subject with a reply subject under
// r.ReplyPrefix (a vehicle may publish only in its own tree, see
// natsauth.CommandReplies) and waits for one reply.
func (tw *Twin) Request(ctx context.Context, t controlplane.TelemetryTarget, r controlplane.TelemetryRequest) ([]byte, error) {
	if r.Timeout <= 0 || r.Subject == "" || r.ReplyPrefix == "" {
		return nil, controlplane.Errorf(controlplane.EINVALID, "a request needs a subject, a reply prefix and a timeout")
	}
	c, release, err := tw.acquire(ctx, t)
	if err != nil {
		return nil, err
	}
	defer release()
	reply := r.ReplyPrefix + "." + nuid.Next()
	sub, err := c.nc.SubscribeSync(reply)
	if err != nil {
		return nil, unavailable(t, "subscribing to the reply", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.nc.PublishRequest(r.Subject, reply, r.Data); err != nil {
		return nil, unavailable(t, "sending the request", err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	m, err := sub.NextMsgWithContext(ctx)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, controlplane.ErrNoResponders
	case errors.Is(err, context.DeadlineExceeded):
		return nil, controlplane.ErrRequestTimeout
	case err != nil:
		return nil, unavailable(t, "waiting for the reply", err)
	}
	return m.Data, nil
}
