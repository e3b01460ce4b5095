package leaf_test

import (
	"slices"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/edge/leaf"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// BenchmarkLocalLatency measures the request/reply round trip between two
// on-vehicle clients over TCP on 127.0.0.1, through the agent's leaf
// (edge/leaf, linked to an operator-mode hub with vehicle creds, local
// JetStream on) and through a plain nats-server with default options, in
// the same run: the two are interleaved request by request so the noise
// of a shared machine hits both alike. Goal: ratio ≤ 1.2, leaf p99 < 1 ms.
//
//	go test ./edge/leaf -run '^$' -bench LocalLatency -benchtime 20000x
func BenchmarkLocalLatency(b *testing.B) {
	const vid = "v1"
	op := natstest.MustOperator(b)
	hub := natstest.RunOperatorServer(b, op)
	sys := natstest.ConnectSystem(b, hub, op)
	tn := natstest.NewTenant(b, op, natsauth.AccountSpec{Name: "acme", TenantID: "t1", Limits: natsauth.Unlimited()})
	tn.Push(b, sys)
	creds := natstest.WriteCreds(b, tn.Vehicle(b, natsauth.VehicleIdentity{TenantID: "t1", Fleet: "drones", Env: "prod", VehicleID: vid}, time.Time{}))
	l, err := leaf.Start(leaf.Config{Name: "t1-" + vid, Domain: "t1-" + vid, ClientPort: -1, StoreDir: b.TempDir(),
		HubURLs: []string{natstest.LeafURL(b, hub)}, CredsFile: creds})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(l.Close)
	for deadline := time.Now().Add(10 * time.Second); !l.Link().Connected; {
		if time.Now().After(deadline) {
			b.Fatal("the leaf never linked to the hub")
		}
		time.Sleep(10 * time.Millisecond)
	}

	plain, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		b.Fatal(err)
	}
	go plain.Start()
	if !plain.ReadyForConnections(10 * time.Second) {
		b.Fatal("plain server not ready")
	}
	b.Cleanup(func() { plain.Shutdown(); plain.WaitForShutdown() })

	subject := "fleet.prod.veh." + vid + ".svc.echo"
	inbox := natsauth.VehicleInboxPrefix(vid)
	pair := func(url string) *nats.Conn {
		srv, err := nats.Connect(url)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(srv.Close)
		if _, err := srv.Subscribe(subject, func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
			b.Fatal(err)
		}
		_ = srv.Flush()
		cli, err := nats.Connect(url, nats.CustomInboxPrefix(inbox))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(cli.Close)
		return cli
	}
	viaLeaf, viaPlain := pair(l.ClientURL()), pair(plain.ClientURL())
	payload := make([]byte, 128)
	rt := func(nc *nats.Conn) time.Duration {
		t0 := time.Now()
		if _, err := nc.Request(subject, payload, 2*time.Second); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	for range 200 { // warm up
		rt(viaLeaf)
		rt(viaPlain)
	}
	lat := [2][]time.Duration{make([]time.Duration, 0, b.N), make([]time.Duration, 0, b.N)}
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			lat[0] = append(lat[0], rt(viaLeaf))
			lat[1] = append(lat[1], rt(viaPlain))
		} else {
			lat[1] = append(lat[1], rt(viaPlain))
			lat[0] = append(lat[0], rt(viaLeaf))
		}
	}
	b.StopTimer()
	q := func(l []time.Duration, p float64) float64 {
		return float64(l[int(p*float64(len(l)-1))].Nanoseconds()) / 1e3
	}
	for _, l := range lat {
		slices.Sort(l)
	}
	b.ReportMetric(q(lat[0], 0.5), "leaf-p50-µs")
	b.ReportMetric(q(lat[0], 0.99), "leaf-p99-µs")
	b.ReportMetric(q(lat[1], 0.5), "plain-p50-µs")
	b.ReportMetric(q(lat[1], 0.99), "plain-p99-µs")
	b.ReportMetric(q(lat[0], 0.5)/q(lat[1], 0.5), "p50-ratio")
	b.ReportMetric(q(lat[0], 0.99)/q(lat[1], 0.99), "p99-ratio")
}
