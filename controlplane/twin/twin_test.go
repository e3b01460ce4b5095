package twin_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/twin"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
)

// The adapter's tests run a real operator-mode hub (natstest), a tenant
// account built with natsauth, service users signed with its service role
// key as the domain signs them, and vehicle leafs that forward with PubAcks
// as the agent does. The Service-level tests (controlplane/telemetry_test.go)
// add Postgres, the issuer and clusters.

type fixture struct {
	hub    *server.Server
	tn     *natstest.Tenant
	tw     *twin.Twin
	target controlplane.TelemetryTarget
	minted atomic.Int32
	ttl    atomic.Int64 // service user lifetime, ns
}

func newFixture(t *testing.T, opts twin.Options) *fixture {
	t.Helper()
	op := natstest.MustOperator(t)
	f := &fixture{hub: natstest.RunOperatorServer(t, op)}
	f.tn = natstest.NewTenant(t, op, natsauth.AccountSpec{Name: "acme", TenantID: "acme", Limits: natsauth.Unlimited()})
	f.tn.Push(t, natstest.ConnectSystem(t, f.hub, op))
	f.tw = twin.New(opts)
	t.Cleanup(f.tw.Close)
	f.ttl.Store(int64(time.Hour))
	f.target = controlplane.TelemetryTarget{TenantID: "acme", Stream: controlplane.TwinStream,
		Region:      controlplane.Region{Name: "europe", ClientURLs: []string{f.hub.ClientURL()}},
		Credentials: f.serviceUser}
	return f
}

// serviceUser mints a service user the way the Service does.
func (f *fixture) serviceUser(ctx context.Context) (*controlplane.ServiceUser, error) {
	f.minted.Add(1)
	k, err := natsauth.NewUserKey()
	if err != nil {
		return nil, err
	}
	sk, err := f.tn.Keys.Service.KeyPair()
	if err != nil {
		return nil, err
	}
	exp := time.Now().Add(time.Duration(f.ttl.Load()))
	j, err := natsauth.IssueServiceJWT(sk, f.tn.Keys.Account.Public, k.Public, controlplane.ServiceUserName, exp)
	if err != nil {
		return nil, err
	}
	return &controlplane.ServiceUser{Name: controlplane.ServiceUserName, InboxPrefix: natsauth.ServiceInboxPrefix(controlplane.ServiceUserName),
		JWT: j, Seed: k.Seed, ExpiresAt: exp}, nil
}

var testSpec = controlplane.StreamSpec{Name: controlplane.TwinStream, Replicas: 3, MaxAge: time.Hour,
	Duplicates: 2 * time.Minute, StorageBudget: 300 << 20}

func (f *fixture) ensure(t *testing.T) {
	t.Helper()
	if _, err := f.tw.EnsureStream(context.Background(), f.target, testSpec); err != nil {
		t.Fatal(err)
	}
}

// vehicle is a vehicle leaf and its local client, as the agent has them.
type vehicle struct {
	id    string
	local *nats.Conn
	js    jetstream.JetStream
	seq   int
}

func (f *fixture) vehicle(t *testing.T, vid string) *vehicle {
	t.Helper()
	leaf := natstest.RunVehicleLeaf(t, f.hub, f.tn.Vehicle(t, natsauth.VehicleIdentity{
		TenantID: "acme", Fleet: "drones", Env: "prod", VehicleID: vid}, time.Time{}))
	deadline := time.Now().Add(5 * time.Second)
	for leaf.NumLeafNodes() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("leaf did not connect")
		}
		time.Sleep(5 * time.Millisecond)
	}
	local, err := nats.Connect(leaf.ClientURL(), nats.CustomInboxPrefix(natsauth.VehicleInboxPrefix(vid)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(local.Close)
	js, err := jetstream.New(local)
	if err != nil {
		t.Fatal(err)
	}
	return &vehicle{id: vid, local: local, js: js}
}

// forward publishes kind (e.g. state.position) to the vehicle's ingest
// subject with the forwarder's message ID and waits for the PubAck,
// retrying while the hub's interest has not reached the leaf yet.
func (v *vehicle) forward(t *testing.T, kind, data string) *jetstream.PubAck {
	t.Helper()
	v.seq++
	subj := natsauth.IngestSubject("prod", v.id) + "." + kind
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		ack, err := v.js.Publish(ctx, subj, []byte(data), jetstream.WithMsgID(fmt.Sprintf("%s-%d", v.id, v.seq)))
		cancel()
		if err == nil {
			return ack
		}
		if time.Now().After(deadline) {
			t.Fatalf("forward %s: %v", subj, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEnsureStream(t *testing.T) {
	t.Parallel()
	f := newFixture(t, twin.Options{})
	ctx := context.Background()
	a, err := f.tw.EnsureStream(ctx, f.target, testSpec)
	if err != nil {
		t.Fatal(err)
	}
	// A single server: R3 is not possible, R1 with the whole budget.
	if !a.Created || a.Updated || a.Replicas != 1 || a.MaxBytes != 300<<20 || a.MaxAge != time.Hour || a.Duplicates != 2*time.Minute {
		t.Fatalf("applied = %+v", a)
	}
	if a, err = f.tw.EnsureStream(ctx, f.target, testSpec); err != nil || a.Created || a.Updated {
		t.Fatalf("second ensure: %+v, %v", a, err)
	}
	changed := testSpec
	changed.MaxAge, changed.StorageBudget = 2*time.Hour, natsauth.NoLimit
	if a, err = f.tw.EnsureStream(ctx, f.target, changed); err != nil || !a.Updated || a.MaxBytes != -1 {
		t.Fatalf("changed ensure: %+v, %v", a, err)
	}

	// What the hub has.
	// An admin: the purge must be refused by the stream (DenyPurge), not
	// by the service user's permissions, which exclude purges anyway.
	svc := natstest.Connect(t, f.hub.ClientURL(), f.tn.Admin(t))
	js, _ := jetstream.New(svc)
	s, err := js.Stream(ctx, controlplane.TwinStream)
	if err != nil {
		t.Fatal(err)
	}
	c := s.CachedInfo().Config
	if c.Storage != jetstream.FileStorage || !c.AllowDirect || !c.DenyDelete || !c.DenyPurge || c.AllowMsgTTL || c.AllowRollup ||
		c.MaxAge != 2*time.Hour || c.Duplicates != 2*time.Minute || c.SubjectTransform == nil ||
		c.SubjectTransform.Destination != natsauth.IngestTransformDestination || c.Subjects[0] != "ingest.>" {
		t.Fatalf("stream config = %+v", c)
	}
	// Deletes and purges are refused.
	if err := s.Purge(ctx); err == nil {
		t.Fatal("purge allowed")
	}
	// A drifted stream (changed by hand) is brought back.
	c.MaxAge = 3 * time.Hour
	if _, err := js.UpdateStream(ctx, c); err != nil {
		t.Fatal(err)
	}
	if a, err = f.tw.EnsureStream(ctx, f.target, changed); err != nil || !a.Updated {
		t.Fatalf("drift: %+v, %v", a, err)
	}
	if info, err := s.Info(ctx); err != nil || info.Config.MaxAge != 2*time.Hour {
		t.Fatalf("after drift: %+v, %v", info, err)
	}
}

func TestReadHistoryAndLast(t *testing.T) {
	t.Parallel()
	f := newFixture(t, twin.Options{})
	f.ensure(t)
	ctx := context.Background()
	v1, v2 := f.vehicle(t, "V1"), f.vehicle(t, "V2")
	ack := v1.forward(t, "state.position", `{"i":1}`)
	if ack.Stream != controlplane.TwinStream || ack.Sequence != 1 {
		t.Fatalf("ack = %+v", ack)
	}
	for i := 2; i <= 10; i++ {
		v1.forward(t, "state.position", fmt.Sprintf(`{"i":%d}`, i))
		v2.forward(t, "state.position", fmt.Sprintf(`{"i":%d}`, i))
	}
	mid := time.Now()
	time.Sleep(5 * time.Millisecond)
	v1.forward(t, "state.battery", `{"pct":80}`)
	v1.forward(t, "evt.armed", `{"armed":true}`)
	last := v1.forward(t, "state.position", `{"i":11}`)
	// A forwarder retry of the last message is a duplicate, not stored.
	v1.seq--
	if dup := v1.forward(t, "state.position", `{"i":11}`); !dup.Duplicate || dup.Sequence != last.Sequence {
		t.Fatalf("retry = %+v", dup)
	}

	read := func(q controlplane.ReadQuery) *controlplane.ReadResult {
		t.Helper()
		r, err := f.tw.ReadMessages(ctx, f.target, q)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// Pages of V1's history: 13 messages, in order, under the canonical subject.
	var all []*controlplane.TwinMessage
	q := controlplane.ReadQuery{Subject: "fleet.prod.veh.V1.>", Limit: 4}
	for pages := 0; ; pages++ {
		r := read(q)
		all = append(all, r.Messages...)
		if r.NextSeq == 0 {
			if pages != 3 {
				t.Fatalf("%d pages", pages+1)
			}
			break
		}
		q.StartSeq = r.NextSeq
	}
	if len(all) != 13 || all[0].Subject != "fleet.prod.veh.V1.state.position" || string(all[0].Data) != `{"i":1}` ||
		all[12].Sequence != last.Sequence {
		t.Fatalf("history = %d messages, first %+v", len(all), all[0])
	}
	for i := 1; i < len(all); i++ {
		if all[i].Sequence <= all[i-1].Sequence || all[i].StoredAt.Before(all[i-1].StoredAt) {
			t.Fatalf("out of order at %d", i)
		}
	}
	// Since mid: the last three; until mid: the first ten.
	if r := read(controlplane.ReadQuery{Subject: "fleet.prod.veh.V1.>", StartTime: &mid, Limit: 100}); len(r.Messages) != 3 || r.NextSeq != 0 {
		t.Fatalf("since mid: %d, next %d", len(r.Messages), r.NextSeq)
	}
	if r := read(controlplane.ReadQuery{Subject: "fleet.prod.veh.V1.>", Until: &mid, Limit: 100}); len(r.Messages) != 10 || r.NextSeq != 0 {
		t.Fatalf("until mid: %d, next %d", len(r.Messages), r.NextSeq)
	}
	// A full page whose next message is past until has no next page.
	if r := read(controlplane.ReadQuery{Subject: "fleet.prod.veh.V1.>", Until: &mid, Limit: 10}); len(r.Messages) != 10 || r.NextSeq != 0 {
		t.Fatalf("until mid, limit 10: %d, next %d", len(r.Messages), r.NextSeq)
	}
	// By kind; nothing after the end.
	if r := read(controlplane.ReadQuery{Subject: "fleet.prod.veh.V1.evt.>", Limit: 100}); len(r.Messages) != 1 {
		t.Fatalf("events: %d", len(r.Messages))
	}
	future := time.Now().Add(time.Hour)
	if r := read(controlplane.ReadQuery{Subject: "fleet.prod.veh.V1.>", StartTime: &future, Limit: 10}); len(r.Messages) != 0 {
		t.Fatalf("future: %d", len(r.Messages))
	}

	// Latest per kind, now and as of mid.
	lastOf := func(upTo *time.Time, subjects ...string) map[string]string {
		t.Helper()
		ms, err := f.tw.LastMessages(ctx, f.target, controlplane.LastQuery{Subjects: subjects, UpTo: upTo})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, m := range ms {
			out[m.Subject] = string(m.Data)
		}
		return out
	}
	got := lastOf(nil, "fleet.prod.veh.V1.state.>", "fleet.prod.veh.V1.evt.>")
	if len(got) != 3 || got["fleet.prod.veh.V1.state.position"] != `{"i":11}` || got["fleet.prod.veh.V1.state.battery"] != `{"pct":80}` ||
		got["fleet.prod.veh.V1.evt.armed"] != `{"armed":true}` {
		t.Fatalf("latest = %v", got)
	}
	if got := lastOf(&mid, "fleet.prod.veh.V1.state.>", "fleet.prod.veh.V1.evt.>"); len(got) != 1 || got["fleet.prod.veh.V1.state.position"] != `{"i":10}` {
		t.Fatalf("latest as of mid = %v", got)
	}
	if got := lastOf(nil, "fleet.prod.veh.*.state.position"); len(got) != 2 || got["fleet.prod.veh.V2.state.position"] != `{"i":10}` {
		t.Fatalf("fleet positions = %v", got)
	}
	if got := lastOf(nil, "fleet.prod.veh.V3.state.position"); len(got) != 0 {
		t.Fatalf("unknown vehicle = %v", got)
	}
}

func TestMissingStreamAndUnreachableHub(t *testing.T) {
	t.Parallel()
	f := newFixture(t, twin.Options{FailureBackoff: time.Hour})
	ctx := context.Background()
	_, err := f.tw.ReadMessages(ctx, f.target, controlplane.ReadQuery{Subject: "fleet.>", Limit: 1})
	if controlplane.ErrorCode(err) != controlplane.ENOTFOUND {
		t.Fatalf("no stream: %v", err)
	}
	down := f.target
	down.TenantID = "other"
	down.Region.ClientURLs = []string{"nats://127.0.0.1:1"}
	before := f.minted.Load()
	for range 3 {
		if _, err := f.tw.LastMessages(ctx, down, controlplane.LastQuery{Subjects: []string{"fleet.>"}}); controlplane.ErrorCode(err) != controlplane.EUNAVAILABLE {
			t.Fatalf("unreachable: %v", err)
		}
	}
	if n := f.minted.Load() - before; n != 1 {
		t.Fatalf("%d service users minted for a hub that is down, want 1 (backoff)", n)
	}
	none := f.target
	none.TenantID, none.Region.ClientURLs = "third", nil
	if _, err := f.tw.LastMessages(ctx, none, controlplane.LastQuery{Subjects: []string{"fleet.>"}}); controlplane.ErrorCode(err) != controlplane.EUNAVAILABLE {
		t.Fatalf("no URLs: %v", err)
	}
}

func TestLiveAndRequests(t *testing.T) {
	t.Parallel()
	f := newFixture(t, twin.Options{})
	ctx := context.Background()
	v := f.vehicle(t, "V1")
	sub, err := f.tw.Subscribe(ctx, f.target, []string{"fleet.prod.veh.*.state.>"})
	if err != nil {
		t.Fatal(err)
	}
	// Interest reaches the leaf asynchronously: publish until seen.
	var got *controlplane.TwinMessage
	for got == nil {
		if err := v.local.Publish("fleet.prod.veh.V1.state.position", []byte(`{"live":true}`)); err != nil {
			t.Fatal(err)
		}
		select {
		case got = <-sub.Messages():
		case <-time.After(50 * time.Millisecond):
		}
	}
	if got.Subject != "fleet.prod.veh.V1.state.position" || string(got.Data) != `{"live":true}` || got.Sequence != 0 || got.ReceivedAt.IsZero() {
		t.Fatalf("live = %+v", got)
	}
	sub.Close()
	if _, ok := <-drainUntilClosed(sub.Messages()); ok {
		t.Fatal("messages after Close")
	}

	// Commands: a responder on the vehicle, replies under its own tree.
	cmd := "fleet.prod.veh.V1.cmd.arm"
	if _, err := v.local.Subscribe(cmd, func(m *nats.Msg) { _ = m.Respond([]byte(`{"ok":true,"got":` + string(m.Data) + `}`)) }); err != nil {
		t.Fatal(err)
	}
	_ = v.local.Flush()
	req := controlplane.TelemetryRequest{Subject: cmd, ReplyPrefix: natsauth.ServiceReplyPrefix("prod", "V1"),
		Data: []byte(`{"x":1}`), Timeout: 500 * time.Millisecond}
	var reply []byte
	deadline := time.Now().Add(5 * time.Second)
	for reply, err = f.tw.Request(ctx, f.target, req); err != nil; reply, err = f.tw.Request(ctx, f.target, req) {
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if string(reply) != `{"ok":true,"got":{"x":1}}` {
		t.Fatalf("reply = %s", reply)
	}
	// No responder anywhere: no responders, at once.
	req.Subject = "fleet.prod.veh.V1.cmd.land"
	start := time.Now()
	if _, err := f.tw.Request(ctx, f.target, req); !errors.Is(err, controlplane.ErrNoResponders) {
		t.Fatalf("no responder: %v", err)
	}
	if d := time.Since(start); d >= req.Timeout {
		t.Errorf("no responders took the whole timeout (%v)", d)
	}
	// A responder that does not answer: timeout.
	if _, err := v.local.Subscribe("fleet.prod.veh.V1.cmd.rtl", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	_ = v.local.Flush()
	req.Subject, req.Timeout = "fleet.prod.veh.V1.cmd.rtl", 200*time.Millisecond
	deadline = time.Now().Add(5 * time.Second)
	for {
		_, err = f.tw.Request(ctx, f.target, req)
		if errors.Is(err, controlplane.ErrRequestTimeout) {
			break
		}
		if !errors.Is(err, controlplane.ErrNoResponders) || time.Now().After(deadline) {
			t.Fatalf("silent responder: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // interest still on its way
	}
}

func drainUntilClosed(ch <-chan *controlplane.TwinMessage) <-chan *controlplane.TwinMessage {
	for range ch {
	}
	return ch
}

func TestConnectionCache(t *testing.T) {
	t.Parallel()
	f := newFixture(t, twin.Options{IdleTimeout: 200 * time.Millisecond, MaxConnAge: time.Hour})
	f.ensure(t)
	ctx := context.Background()
	for range 5 {
		if _, err := f.tw.LastMessages(ctx, f.target, controlplane.LastQuery{Subjects: []string{"fleet.>"}}); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.minted.Load(); n != 1 {
		t.Fatalf("%d service users for one connection", n)
	}
	if f.tw.Connections() != 1 {
		t.Fatalf("%d connections", f.tw.Connections())
	}
	// Idle: closed by the janitor; a live subscription keeps it open.
	sub, err := f.tw.Subscribe(ctx, f.target, []string{"fleet.*.veh.*.state.>"}) // the service user may not subscribe to fleet.>
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if f.tw.Connections() != 1 {
		t.Fatal("a connection with a live subscription was closed")
	}
	sub.Close()
	deadline := time.Now().Add(5 * time.Second)
	for f.tw.Connections() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle connection not closed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := f.tw.LastMessages(ctx, f.target, controlplane.LastQuery{Subjects: []string{"fleet.>"}}); err != nil {
		t.Fatal(err)
	}
	if n := f.minted.Load(); n != 2 {
		t.Fatalf("%d service users after reopening, want 2", n)
	}
}

// A connection outlives its service user: the server closes it at the
// JWT's expiry and nats.go reconnects with a fresh user from the
// credentials callback; a live subscription carries on.
func TestServiceUserRenewedOnReconnect(t *testing.T) {
	t.Parallel()
	f := newFixture(t, twin.Options{MaxConnAge: time.Hour})
	f.ttl.Store(int64(2 * time.Second))
	v := f.vehicle(t, "V1")
	ctx := context.Background()
	sub, err := f.tw.Subscribe(ctx, f.target, []string{"fleet.prod.veh.V1.state.>"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	f.ttl.Store(int64(time.Hour))
	// After the first user expired, messages still flow.
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; ; i++ {
		_ = v.local.Publish("fleet.prod.veh.V1.state.position", []byte(strconv.Itoa(i)))
		select {
		case m, ok := <-sub.Messages():
			if !ok {
				t.Fatal("live subscription ended at the service user's expiry")
			}
			if f.minted.Load() >= 2 && time.Since(m.ReceivedAt) < time.Second {
				return // delivered on the renewed connection
			}
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no message after renewal (%d users minted)", f.minted.Load())
		}
	}
}
