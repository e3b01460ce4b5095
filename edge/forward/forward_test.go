package forward_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/edge/forward"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// proxy is a TCP proxy between a leaf and the hub that a test can cut
// (close every connection and refuse new ones) and restore.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
	// dropDown discards every byte from the hub to the leaf (publishes
	// still reach the hub, their PubAcks never come back).
	dropDown atomic.Bool
}

func newProxy(tb testing.TB, target string) *proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go p.accept()
	tb.Cleanup(func() { _ = ln.Close(); p.Cut() })
	return p
}

func (p *proxy) URL() string { return "nats://" + p.ln.Addr().String() }

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) { _, _ = io.Copy(dst, src); _ = dst.Close(); _ = src.Close() }
		go pipe(up, c)
		go pipe(&dropWriter{Conn: c, drop: &p.dropDown}, up)
	}
}

// dropWriter discards writes while drop is set.
type dropWriter struct {
	net.Conn
	drop *atomic.Bool
}

func (w *dropWriter) Write(b []byte) (int, error) {
	if w.drop.Load() {
		return len(b), nil
	}
	return w.Conn.Write(b)
}

// Cut closes every proxied connection and refuses new ones.
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		_ = c.Close()
		delete(p.conns, c)
	}
}

// Restore accepts connections again.
func (p *proxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

const (
	env         = "prod"
	vid         = "Drone-7"
	localStream = "LOCAL"
	durable     = "forwarder"
)

// rig is a hub with a tenant's TWIN stream and one vehicle leaf (local
// JetStream in its own domain) linked through a proxy.
type rig struct {
	tb       testing.TB
	hub      *server.Server
	twin     jetstream.Stream
	proxy    *proxy
	creds    string
	storeDir string
	leaf     *server.Server
}

func newRig(tb testing.TB) *rig {
	tb.Helper()
	return newRigDedupe(tb, 2*time.Minute)
}

// newRigDedupe is newRig with the hub stream's dedupe window set.
func newRigDedupe(tb testing.TB, dedupe time.Duration) *rig {
	tb.Helper()
	op := natstest.MustOperator(tb)
	// No advertise: otherwise the leaf learns the hub's own leaf URL and
	// reconnects around the proxy.
	hub := natstest.RunOperatorServer(tb, op, natstest.WithOptions(func(o *server.Options) { o.LeafNode.NoAdvertise = true }))
	sys := natstest.ConnectSystem(tb, hub, op)
	tn := natstest.NewTenant(tb, op, natsauth.AccountSpec{Name: "acme", TenantID: "tenant-acme", Limits: natsauth.Unlimited()})
	tn.Push(tb, sys)
	svc := natstest.Connect(tb, hub.ClientURL(), tn.Service(tb, "cp"), nats.CustomInboxPrefix(natsauth.ServiceInboxPrefix("cp")))
	js, err := jetstream.New(svc)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: natsauth.HistoryStream, Subjects: []string{natsauth.IngestStreamSubjects}, Storage: jetstream.FileStorage,
		SubjectTransform: &jetstream.SubjectTransformConfig{
			Source: natsauth.IngestTransformSource, Destination: natsauth.IngestTransformDestination,
		},
		Duplicates: dedupe, AllowDirect: true, DenyDelete: true, DenyPurge: true,
	}); err != nil {
		tb.Fatal(err)
	}
	// Read history back as an all-powerful tenant user (the service user
	// may not create consumers).
	ajs, err := jetstream.New(natstest.Connect(tb, hub.ClientURL(), tn.Admin(tb)))
	if err != nil {
		tb.Fatal(err)
	}
	twin, err := ajs.Stream(ctx, natsauth.HistoryStream)
	if err != nil {
		tb.Fatal(err)
	}
	r := &rig{
		tb: tb, hub: hub, twin: twin,
		proxy:    newProxy(tb, natstest.LeafURL(tb, hub)[len("nats://"):]),
		creds:    natstest.WriteCreds(tb, tn.Vehicle(tb, natsauth.VehicleIdentity{TenantID: "tenant-acme", Fleet: "survey", Env: env, VehicleID: vid}, time.Time{})),
		storeDir: tb.TempDir(),
	}
	r.startLeaf()
	natstest.WaitLeafCount(tb, hub, 1, 10*time.Second)
	return r
}

// startLeaf starts (or restarts, on the same store) the vehicle leaf and
// ensures the local stream.
func (r *rig) startLeaf() {
	r.tb.Helper()
	r.leaf = natstest.RunLeaf(r.tb, r.proxy.URL(), r.creds, natstest.WithJetStream(true),
		natstest.WithLeafReconnect(100*time.Millisecond),
		natstest.WithOptions(func(o *server.Options) {
			o.JetStreamDomain = "veh-" + vid
			o.StoreDir = r.storeDir
		}))
	nc := r.local()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:     localStream,
		Subjects: []string{natsauth.VehicleSubjectPrefix(env, vid) + ".state.>", natsauth.VehicleSubjectPrefix(env, vid) + ".evt.>"},
		Storage:  jetstream.FileStorage,
	}); err != nil {
		r.tb.Fatal(err)
	}
}

// local connects to the leaf's client port with the vehicle inbox prefix.
func (r *rig) local() *nats.Conn {
	r.tb.Helper()
	nc, err := nats.Connect(r.leaf.ClientURL(), nats.CustomInboxPrefix(natsauth.VehicleInboxPrefix(vid)), nats.MaxReconnects(-1))
	if err != nil {
		r.tb.Fatal(err)
	}
	r.tb.Cleanup(nc.Close)
	return nc
}

// startForwarder runs a forwarder until the returned stop is called.
func (r *rig) startForwarder(window int) (*forward.Forwarder, func()) {
	r.tb.Helper()
	return r.startForwarderResume(window, nil, 0)
}

// startForwarderResume is startForwarder with Config.Resume/ResumeAfter.
func (r *rig) startForwarderResume(window int, resume func(context.Context) (string, error), after time.Duration) (*forward.Forwarder, func()) {
	r.tb.Helper()
	lnc, hnc := r.local(), r.local()
	ljs, err := jetstream.New(lnc)
	if err != nil {
		r.tb.Fatal(err)
	}
	f, err := forward.New(forward.Config{
		Local: ljs, LocalStream: localStream, Durable: durable, Hub: hnc,
		IngestPrefix: natsauth.IngestSubject(env, vid), SubjectPrefix: natsauth.VehicleSubjectPrefix(env, vid),
		MsgIDPrefix: vid, AckTimeout: time.Second, Window: window, RetryBackoff: 50 * time.Millisecond,
		Resume: resume, ResumeAfter: after,
	})
	if err != nil {
		r.tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done; lnc.Close(); hnc.Close() }) }
	r.tb.Cleanup(stop)
	return f, stop
}

// publisher publishes numbered messages into the local stream, alternating
// two subjects, and counts what the local stream acknowledged.
type publisher struct {
	js    jetstream.JetStream
	acked atomic.Uint64 // highest counter acked by the local stream
	next  uint64
}

var subjects = []string{".state.position", ".evt.mode"}

func (p *publisher) publish(ctx context.Context) error {
	n := p.next + 1
	subj := natsauth.VehicleSubjectPrefix(env, vid) + subjects[n%2]
	if _, err := p.js.Publish(ctx, subj, []byte(strconv.FormatUint(n, 10))); err != nil {
		return err
	}
	p.next = n
	p.acked.Store(n)
	return nil
}

// publishFor publishes at about rate msg/s for d.
func (p *publisher) publishFor(tb testing.TB, d time.Duration, rate int) {
	tb.Helper()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		<-tick.C
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := p.publish(ctx)
		cancel()
		if err != nil {
			tb.Fatalf("local publish: %v", err)
		}
	}
}

// waitHub waits until the hub holds n messages and checks them: counters
// 1..n exactly once each, in order, under the canonical subjects.
func (r *rig) waitHub(tb testing.TB, n uint64, timeout time.Duration) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	defer cancel()
	deadline := time.Now().Add(timeout)
	var last uint64
	for {
		info, err := r.twin.Info(ctx)
		if err != nil {
			tb.Fatal(err)
		}
		last = info.State.Msgs
		if last >= n {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("hub holds %d messages after %s, want %d", last, timeout, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let late duplicates land, if any
	checkHub(tb, ctx, r.twin, n)
}

func checkHub(tb testing.TB, ctx context.Context, twin jetstream.Stream, n uint64) {
	tb.Helper()
	cons, err := twin.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	info, err := twin.Info(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	if info.State.Msgs != n {
		tb.Errorf("hub holds %d messages, want %d", info.State.Msgs, n)
	}
	prefix := natsauth.VehicleSubjectPrefix(env, vid)
	var want uint64 = 1
	for i := uint64(0); i < info.State.Msgs; i++ {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			tb.Fatalf("read hub message %d: %v", i+1, err)
		}
		got, err := strconv.ParseUint(string(m.Data()), 10, 64)
		if err != nil {
			tb.Fatalf("hub message %q: %v", m.Data(), err)
		}
		if got != want {
			tb.Fatalf("hub message %d holds counter %d, want %d (lost, duplicated or reordered)", i+1, got, want)
		}
		if m.Subject() != prefix+subjects[got%2] {
			tb.Fatalf("hub message %d subject %s", i+1, m.Subject())
		}
		want++
	}
}

func newPublisher(tb testing.TB, r *rig) *publisher {
	js, err := jetstream.New(r.local())
	if err != nil {
		tb.Fatal(err)
	}
	return &publisher{js: js}
}

func checkStats(tb testing.TB, f *forward.Forwarder) {
	tb.Helper()
	if st := f.Stats(); st.OrderViolations != 0 {
		tb.Fatalf("stats: %+v", st)
	}
}

// 1. A link cut of a few seconds while publishing at a steady rate.
func TestLinkCut(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	f, _ := r.startForwarder(0)
	p := newPublisher(t, r)
	cut := 3 * time.Second
	if os.Getenv("FORWARD_LONG") != "" {
		cut = 60 * time.Second
	}
	p.publishFor(t, time.Second, 200)
	r.proxy.Cut()
	time.Sleep(100 * time.Millisecond)
	t.Logf("leafs after cut: %d", r.hub.NumLeafNodes())
	p.publishFor(t, cut, 200)
	r.proxy.Restore()
	p.publishFor(t, time.Second, 200)
	r.waitHub(t, p.acked.Load(), 30*time.Second)
	checkStats(t, f)
	t.Logf("stats: %+v", f.Stats())
}

// 2. A flapping link: many short cuts.
func TestFlappingLink(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	f, _ := r.startForwarder(0)
	p := newPublisher(t, r)
	for i := 0; i < 20; i++ {
		p.publishFor(t, 150*time.Millisecond, 500)
		r.proxy.Cut()
		p.publishFor(t, time.Duration(50+i*10)*time.Millisecond, 500)
		if testing.Verbose() {
			t.Logf("cut %d: leafs %d, stats %+v", i, r.hub.NumLeafNodes(), f.Stats())
		}
		r.proxy.Restore()
	}
	p.publishFor(t, 500*time.Millisecond, 500)
	r.waitHub(t, p.acked.Load(), 30*time.Second)
	checkStats(t, f)
	t.Logf("stats: %+v", f.Stats())
}

// 3. The forwarder and the leaf server torn down mid-flight without
// graceful steps, then restarted on the same store.
func TestCrashRestart(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	for round := 0; round < 3; round++ {
		_, stop := r.startForwarder(0)
		p := newPublisher(t, r)
		p.next = r.localLast(t)
		p.publishFor(t, 700*time.Millisecond, 1000)
		// Crash: the leaf goes away under the forwarder's feet.
		r.leaf.Shutdown()
		stop()
		r.leaf.WaitForShutdown()
		r.startLeaf()
	}
	_, _ = r.startForwarder(0)
	n := r.localLast(t)
	r.waitHub(t, n, 30*time.Second)
}

// localLast is the local stream's last sequence (= the last counter, since
// every local publish was acked in order).
func (r *rig) localLast(tb testing.TB) uint64 {
	tb.Helper()
	js, _ := jetstream.New(r.local())
	s, err := js.Stream(context.Background(), localStream)
	if err != nil {
		tb.Fatal(err)
	}
	return s.CachedInfo().State.LastSeq
}

// 4. A wiped local store starts sequences at 1 again: new Msg-Id prefix,
// no false dedupe.
func TestWipedLocalStore(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	_, stop := r.startForwarder(0)
	p := newPublisher(t, r)
	for i := 0; i < 50; i++ {
		if err := p.publish(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	r.waitHub(t, 50, 20*time.Second)
	stop()
	r.leaf.Shutdown()
	r.leaf.WaitForShutdown()
	if err := os.RemoveAll(r.storeDir); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // distinct creation time even on coarse clocks
	r.startLeaf()
	f, _ := r.startForwarder(0)
	p = newPublisher(t, r)
	p.next = 50 // counters continue, local sequences restart at 1
	for i := 0; i < 50; i++ {
		if err := p.publish(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	r.waitHub(t, 100, 20*time.Second)
	if st := f.Stats(); st.Duplicates != 0 {
		t.Fatalf("false dedupe: %+v", st)
	}
}

// hubMsgs is the number of messages in hub history.
func (r *rig) hubMsgs(tb testing.TB) uint64 {
	tb.Helper()
	info, err := r.twin.Info(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return info.State.Msgs
}

// lostPubAcks stores a burst on the hub whose PubAcks never reach the
// vehicle, then cuts the link for longer than the hub's 2 s dedupe window (a
// 1 s PubAck timeout: the first probe re-send is still deduped) and
// restores it. It returns the forwarder and how many messages were published.
func lostPubAcks(t *testing.T, withResume bool) (*rig, *forward.Forwarder, uint64) {
	r := newRigDedupe(t, 2*time.Second)
	var resume func(context.Context) (string, error)
	if withResume {
		// What the control plane's ingest-position endpoint does: the last
		// message of the vehicle's subjects in hub history.
		resume = func(ctx context.Context) (string, error) {
			m, err := r.twin.GetLastMsgForSubject(ctx, natsauth.VehicleSubjectPrefix(env, vid)+".>")
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return "", nil
			}
			if err != nil {
				return "", err
			}
			return m.Header.Get(jetstream.MsgIDHeader), nil
		}
	}
	f, _ := r.startForwarderResume(0, resume, 300*time.Millisecond)
	p := newPublisher(t, r)
	for i := 0; i < 20; i++ {
		if err := p.publish(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	r.waitHub(t, 20, 20*time.Second)
	// Stored, but the PubAcks are lost.
	r.proxy.dropDown.Store(true)
	for i := 0; i < 30; i++ {
		if err := p.publish(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// The forwarder sends what it fetched before the first PubAck timeout,
	// then holds (probing): wait until some of the burst is stored.
	deadline := time.Now().Add(10 * time.Second)
	for r.hubMsgs(t) <= 20 {
		if time.Now().After(deadline) {
			t.Fatalf("hub holds %d messages, want > 20", r.hubMsgs(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // a PubAck timeout: the forwarder holds
	// A full outage longer than the dedupe window.
	r.proxy.Cut()
	r.proxy.dropDown.Store(false)
	time.Sleep(4 * time.Second)
	r.proxy.Restore()
	for i := 0; i < 10; i++ {
		if err := p.publish(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	return r, f, p.acked.Load()
}

// 5. PubAcks lost and an outage longer than the hub's dedupe window: the
// re-sent messages are stored twice unless the forwarder asks the hub's
// resume point first.
func TestLostPubAcksBeyondDedupe(t *testing.T) {
	t.Parallel()
	t.Run("without resume", func(t *testing.T) {
		t.Parallel()
		r, f, n := lostPubAcks(t, false)
		deadline := time.Now().Add(15 * time.Second)
		for f.Stats().LastLocalSeq < n {
			if time.Now().After(deadline) {
				t.Fatalf("not forwarded: %+v", f.Stats())
			}
			time.Sleep(20 * time.Millisecond)
		}
		if got := r.hubMsgs(t); got <= n {
			t.Fatalf("hub holds %d messages for %d published: the test did not produce duplicates (stats %+v)", got, n, f.Stats())
		}
		t.Logf("without resume: hub holds %d for %d published, stats %+v", r.hubMsgs(t), n, f.Stats())
	})
	t.Run("with resume", func(t *testing.T) {
		t.Parallel()
		r, f, n := lostPubAcks(t, true)
		r.waitHub(t, n, 15*time.Second)
		checkStats(t, f)
		if st := f.Stats(); st.Resumed == 0 {
			t.Fatalf("nothing resumed: %+v", st)
		}
		t.Logf("with resume: stats %+v", f.Stats())
	})
}
