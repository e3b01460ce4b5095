package hubnode_test

// The global tier (docs/global.md), proven in one process: two regions,
// "europe" and "americas", each a 3-node operator-mode hub cluster started
// with hubnode.Start, joined by gateways (hubnode.Config.Gateway) into a
// supercluster. A command
// from a service user in europe reaches a vehicle homed in americas, and a
// tenant's history stream in europe is mirrored into americas, readable
// there with europe entirely down.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetplane/fleetplane/internal/hubnode"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
)

const (
	europe   = "europe"
	americas = "americas"
	// nodesPerRegion: R3 streams need three JetStream servers per cluster.
	nodesPerRegion = 3
)

// region is one hub cluster of the supercluster.
type region struct {
	name     string
	routes   []string // every node's route URL (hub.yaml cluster.routes)
	gateways []string // every node's gateway URL (what other regions list)
	nodes    []*server.Server
}

func (r *region) shutdown() {
	for _, s := range r.nodes {
		s.Shutdown()
	}
	for _, s := range r.nodes {
		s.WaitForShutdown()
	}
}

// freePorts finds n free loopback ports for listeners that must be known
// before the first node starts: every node's route list and every
// region's gateway list (a clustered JetStream server refuses to start
// without configured routes), as they are in a real hub.yaml. It picks
// them below the kernel's ephemeral range, so that no outgoing connection
// of the servers starting meanwhile can take one before its listener
// binds it (with ":0" ports that happened in about one run in ten).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				low = v
			}
		}
	}
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 || low <= 11000 {
			t.Fatalf("no free ports below the ephemeral range (%d)", low)
		}
		p := 10000 + rand.IntN(low-10000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		defer l.Close()
		ports = append(ports, p)
	}
	return ports
}

// startSupercluster starts one 3-node hub cluster per name, joined by
// gateways, with hubnode.Start: gateway name = cluster name = region, one
// remote per other region listing all of its gateway URLs (hubnode rejects
// gateways from unlisted regions). Every node lists every route of its
// region, itself included (the server skips itself).
func startSupercluster(t *testing.T, op *natsauth.Operator, names ...string) []*region {
	t.Helper()
	ports := freePorts(t, 2*nodesPerRegion*len(names))
	routePort := func(i, j int) int { return ports[2*(i*nodesPerRegion+j)] }
	gatewayPort := func(i, j int) int { return ports[2*(i*nodesPerRegion+j)+1] }
	regions := make([]*region, len(names))
	for i, name := range names {
		r := &region{name: name}
		for j := range nodesPerRegion {
			r.routes = append(r.routes, fmt.Sprintf("nats-route://127.0.0.1:%d", routePort(i, j)))
			r.gateways = append(r.gateways, fmt.Sprintf("nats://127.0.0.1:%d", gatewayPort(i, j)))
		}
		regions[i] = r
	}
	for i, r := range regions {
		var remotes []hubnode.GatewayRemote
		for _, other := range regions {
			if other != r {
				remotes = append(remotes, hubnode.GatewayRemote{Name: other.name, URLs: other.gateways})
			}
		}
		for j := range nodesPerRegion {
			s, err := hubnode.Start(hubnode.Config{
				Name: fmt.Sprintf("%s-%d", r.name, j+1), Region: r.name, Dir: t.TempDir(),
				ClientHost: "127.0.0.1", ClientPort: -1,
				LeafHost: "127.0.0.1", LeafPort: -1,
				ClusterHost: "127.0.0.1", ClusterPort: routePort(i, j), Routes: r.routes,
				Gateway: &hubnode.Gateway{Host: "127.0.0.1", Port: gatewayPort(i, j), Remotes: remotes},
				Trust:   op.HubTrust(), Log: os.Getenv("NATSTEST_LOG") != "",
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				s.Shutdown()
				s.WaitForShutdown()
			})
			r.nodes = append(r.nodes, s)
		}
	}
	return regions
}

// waitFor polls f every 10 ms until it returns nil or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitSupercluster waits for a full mesh (routes within each region, an
// outbound gateway from every node to the other region) and for one
// JetStream meta leader that knows all six servers: the meta group spans
// the supercluster (one JetStream domain), not one cluster.
func waitSupercluster(t *testing.T, regions ...*region) {
	t.Helper()
	var all []*server.Server
	for _, r := range regions {
		all = append(all, r.nodes...)
	}
	waitFor(t, 20*time.Second, "supercluster mesh", func() error {
		for _, s := range all {
			if n := s.NumRoutes(); n < nodesPerRegion-1 {
				return fmt.Errorf("%s: %d routes", s.Name(), n)
			}
			if n := s.NumOutboundGateways(); n != len(regions)-1 {
				return fmt.Errorf("%s: %d outbound gateways", s.Name(), n)
			}
		}
		return nil
	})
	waitFor(t, 20*time.Second, "JetStream meta leader with every server", func() error {
		for _, s := range all {
			if s.JetStreamIsLeader() {
				if peers := s.JetStreamClusterPeers(); len(peers) != len(all) {
					return fmt.Errorf("meta leader %s knows %d peers: %v", s.Name(), len(peers), peers)
				}
				return nil
			}
		}
		return fmt.Errorf("no meta leader")
	})
}

// pushAccountCountReplies pushes an account JWT over a system connection and
// returns how many "jwt updated" replies arrived before quiet passed
// without one more.
func pushAccountCountReplies(t *testing.T, sys *nats.Conn, accountJWT string, want int, quiet time.Duration) int {
	t.Helper()
	sub, err := sys.SubscribeSync(sys.NewRespInbox())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := sys.PublishRequest(natstest.ClaimsUpdateSubject, sub.Subject, []byte(accountJWT)); err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		wait := 5 * time.Second // until the expected replies are in
		if n >= want {
			wait = quiet // then: no more than that
		}
		m, err := sub.NextMsg(wait)
		if err != nil {
			return n
		}
		var r server.ServerAPIClaimUpdateResponse
		if err := json.Unmarshal(m.Data, &r); err != nil || r.Data == nil || r.Data.Code != 200 {
			t.Fatalf("push: reply %s", m.Data)
		}
		n++
	}
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p)]
}

// measureRequests sends n requests and returns the round trips.
func measureRequests(t *testing.T, nc *nats.Conn, subject string, n int) []time.Duration {
	t.Helper()
	rtts := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if _, err := nc.Request(subject, []byte(`{}`), 2*time.Second); err != nil {
			t.Fatalf("request %s: %v", subject, err)
		}
		rtts = append(rtts, time.Since(start))
	}
	return rtts
}

func TestSupercluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts six hub nodes")
	}
	op := natstest.MustOperator(t)
	regions := startSupercluster(t, op, europe, americas)
	eu, am := regions[0], regions[1]
	waitSupercluster(t, eu, am)

	// The control plane pushes a tenant once, to any node: the system
	// account's interest crosses the gateways, so every full-resolver node
	// of both regions answers.
	tn := natstest.NewTenant(t, op, natsauth.AccountSpec{Name: "acme", TenantID: "acme", Limits: natsauth.Unlimited()})
	sys := natstest.ConnectSystem(t, eu.nodes[0], op)
	if n := pushAccountCountReplies(t, sys, tn.JWT(t), 2*nodesPerRegion, 300*time.Millisecond); n != 2*nodesPerRegion {
		t.Fatalf("push: %d \"jwt updated\" replies, want one per node of both regions (%d)", n, 2*nodesPerRegion)
	}

	t.Run("command crosses the gateway", func(t *testing.T) {
		const vid = "V1"
		home := am.nodes[1]
		leaf := natstest.RunVehicleLeaf(t, home, tn.Vehicle(t, natsauth.VehicleIdentity{
			TenantID: "acme", Fleet: "drones", Env: "prod", VehicleID: vid}, time.Time{}))
		natstest.WaitLeafCount(t, home, 1, 5*time.Second)
		local, err := nats.Connect(leaf.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		defer local.Close()
		cmd := natsauth.VehicleSubjectPrefix("prod", vid) + ".cmd.land"
		if _, err := local.Subscribe(cmd, func(m *nats.Msg) { _ = m.Respond([]byte(`{"result":"accepted"}`)) }); err != nil {
			t.Fatal(err)
		}
		if err := local.Flush(); err != nil {
			t.Fatal(err)
		}

		// The requester is in the other region; its replies must come
		// back under the vehicle's own tree (natsauth.CommandReplies).
		svc := natstest.Connect(t, eu.nodes[0].ClientURL(), tn.Service(t, "cp"),
			nats.CustomInboxPrefix(natsauth.ServiceReplyPrefix("prod", vid)))
		waitFor(t, 10*time.Second, "first command across the gateway", func() error {
			m, err := svc.Request(cmd, []byte(`{}`), 250*time.Millisecond)
			if err == nil && string(m.Data) != `{"result":"accepted"}` {
				return fmt.Errorf("reply %q", m.Data)
			}
			return err
		})
		const n = 200
		cross := measureRequests(t, svc, cmd, n)
		// The same from the vehicle's home region, for comparison.
		near := natstest.Connect(t, am.nodes[0].ClientURL(), tn.Service(t, "cp"),
			nats.CustomInboxPrefix(natsauth.ServiceReplyPrefix("prod", vid)))
		waitFor(t, 5*time.Second, "first command in the home region", func() error {
			_, err := near.Request(cmd, []byte(`{}`), 250*time.Millisecond)
			return err
		})
		same := measureRequests(t, near, cmd, n)
		t.Logf("command round trip, %d requests: europe→americas vehicle p50 %v p99 %v; same region p50 %v p99 %v",
			n, percentile(cross, .5), percentile(cross, .99), percentile(same, .5), percentile(same, .99))
	})

	t.Run("history mirrored into the other region", func(t *testing.T) {
		const mirrorName = "HISTORY_" + americas
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// An admin: these streams are not the service user's (it may
		// touch natsauth.HistoryStream only).
		svc := natstest.Connect(t, eu.nodes[0].ClientURL(), tn.Admin(t))
		js, err := jetstream.New(svc)
		if err != nil {
			t.Fatal(err)
		}
		// As the control plane's tenant provisioning creates them: the
		// origin in the tenant's home region, the mirror in the other.
		origin, err := js.CreateStream(ctx, jetstream.StreamConfig{
			Name: "HISTORY", Subjects: []string{natsauth.IngestStreamSubjects},
			SubjectTransform: &jetstream.SubjectTransformConfig{
				Source: natsauth.IngestTransformSource, Destination: natsauth.IngestTransformDestination,
			},
			Duplicates: time.Minute, AllowDirect: true,
			Replicas: 3, Placement: &jetstream.Placement{Cluster: europe},
		})
		if err != nil {
			t.Fatal(err)
		}
		created := time.Now()
		mirror, err := js.CreateStream(ctx, jetstream.StreamConfig{
			Name: mirrorName, Mirror: &jetstream.StreamSource{Name: "HISTORY"},
			AllowDirect: true, Replicas: 3, Placement: &jetstream.Placement{Cluster: americas},
		})
		if err != nil {
			t.Fatal(err)
		}
		for s, want := range map[jetstream.Stream]string{origin: europe, mirror: americas} {
			ci := s.CachedInfo().Cluster
			if ci == nil || ci.Name != want || len(ci.Replicas) != 2 {
				t.Fatalf("stream %s placed in %+v, want R3 in %s", s.CachedInfo().Config.Name, ci, want)
			}
		}

		// One JetStream namespace per account across the supercluster: a
		// second history stream for the tenant in americas can neither take
		// the same name nor capture the same subjects.
		for name, code := range map[string]jetstream.ErrorCode{
			"HISTORY":            jetstream.JSErrCodeStreamNameInUse,
			"HISTORY_AMERICAS_2": jetstream.ErrorCode(server.JSStreamSubjectOverlapErr),
		} {
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{natsauth.IngestStreamSubjects},
				Replicas: 3, Placement: &jetstream.Placement{Cluster: americas}})
			var apiErr *jetstream.APIError
			if !errors.As(err, &apiErr) || apiErr.ErrorCode != code {
				t.Fatalf("second ingest stream %s in americas: want error %d, got %v", name, code, err)
			}
		}

		// A vehicle homed in europe forwards into the origin.
		const vid = "E1"
		leaf := natstest.RunVehicleLeaf(t, eu.nodes[2], tn.Vehicle(t, natsauth.VehicleIdentity{
			TenantID: "acme", Fleet: "drones", Env: "prod", VehicleID: vid}, time.Time{}))
		natstest.WaitLeafCount(t, eu.nodes[2], 1, 5*time.Second)
		local, err := nats.Connect(leaf.ClientURL(), nats.CustomInboxPrefix(natsauth.VehicleInboxPrefix(vid)))
		if err != nil {
			t.Fatal(err)
		}
		defer local.Close()
		ljs, err := jetstream.New(local)
		if err != nil {
			t.Fatal(err)
		}
		ingest := natsauth.IngestSubject("prod", vid) + ".state.position"
		const (
			n          = 100
			lagSamples = 20
		)
		publish := func(i int) error {
			c, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer cancel()
			_, err := ljs.Publish(c, ingest, []byte(strconv.Itoa(i)), jetstream.WithMsgID(fmt.Sprintf("%s-%d", vid, i)))
			return err
		}
		waitFor(t, 10*time.Second, "first ingest publish", func() error { return publish(1) })
		start := time.Now()
		for i := 2; i <= n; i++ {
			if err := publish(i); err != nil {
				t.Fatalf("publish %d: %v", i, err)
			}
		}
		published := time.Since(start)
		waitFor(t, 10*time.Second, "mirror caught up", func() error {
			info, err := mirror.Info(ctx)
			if err != nil {
				return err
			}
			if info.State.Msgs != n {
				return fmt.Errorf("mirror has %d of %d", info.State.Msgs, n)
			}
			return nil
		})
		t.Logf("mirror: %d messages published in europe in %v; all in the americas mirror %v after the first, %v after the mirror was created",
			n, published, time.Since(start), time.Since(created))

		// Steady-state lag: one more message at a time, polled in americas.
		reader := natstest.Connect(t, am.nodes[2].ClientURL(), tn.Admin(t))
		var lags []time.Duration
		for i := n + 1; i <= n+lagSamples; i++ {
			start := time.Now()
			if err := publish(i); err != nil {
				t.Fatalf("publish %d: %v", i, err)
			}
			for {
				if _, err := directGetBatch(reader, mirrorName, uint64(i), 1); err == nil {
					break
				}
				if time.Since(start) > 5*time.Second {
					t.Fatalf("message %d not in the mirror after 5 s", i)
				}
				time.Sleep(100 * time.Microsecond)
			}
			lags = append(lags, time.Since(start))
		}
		t.Logf("mirror lag (publish in europe → direct get in americas), %d samples: p50 %v p90 %v max %v",
			lagSamples, percentile(lags, .5), percentile(lags, .9), percentile(lags, 1))
		total := n + lagSamples

		// Europe goes down entirely. Americas alone is no quorum of the
		// supercluster's meta group (3 of 6 servers): no stream or consumer
		// can be created, but the mirror's own R3 group is in americas and
		// direct gets are answered by its replicas.
		rjs, err := jetstream.New(reader)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rjs.CreateStream(ctx, jetstream.StreamConfig{Name: "EVENTS_AMERICAS", Subjects: []string{"fleet.*.veh.*.evt.>"},
			Storage: jetstream.MemoryStorage, Replicas: 3, Placement: &jetstream.Placement{Cluster: americas}}); err != nil {
			t.Fatal(err)
		}
		eu.shutdown()
		// The mirror answers direct gets under its own name and, as it
		// inherits the origin's AllowDirect (MirrorDirect), under the
		// origin's: readers in americas need not know that europe is down.
		for _, name := range []string{mirrorName, "HISTORY"} {
			var got []*nats.Msg
			waitFor(t, 10*time.Second, "direct get "+name+" with europe down", func() error {
				var err error
				got, err = directGetBatch(reader, name, 1, total)
				return err
			})
			// All of it, in order, under the canonical subjects.
			for i, m := range got {
				want := natsauth.VehicleSubjectPrefix("prod", vid) + ".state.position"
				if m.Header.Get(jetstream.SequenceHeader) != strconv.Itoa(i+1) || m.Header.Get(jetstream.SubjectHeader) != want || string(m.Data) != strconv.Itoa(i+1) {
					t.Fatalf("%s message %d: subject %s seq %s data %q", name, i+1,
						m.Header.Get(jetstream.SubjectHeader), m.Header.Get(jetstream.SequenceHeader), m.Data)
				}
			}
		}
		// Streams homed in americas keep storing: their Raft groups are
		// in americas.
		waitFor(t, 10*time.Second, "publish into a stream homed in americas", func() error {
			c, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			ack, err := rjs.Publish(c, "fleet.prod.veh.A1.evt.alert", []byte("europe is down"), jetstream.WithMsgID("A1-1"))
			if err == nil && (ack.Stream != "EVENTS_AMERICAS" || ack.Sequence != 1) {
				return fmt.Errorf("ack %+v", ack)
			}
			return err
		})

		// What needs the meta layer fails until europe returns: after a
		// timeout, or "JetStream system temporarily unavailable" (503) once
		// americas knows it has no meta leader. Which one depends on where
		// the leader was (see docs/global.md); never a new consumer.
		c, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err = rjs.CreateOrUpdateConsumer(c, mirrorName, jetstream.ConsumerConfig{Durable: "late"})
		if err == nil {
			t.Fatalf("consumer created without meta quorum; meta layer in americas: %s", metaState(am))
		}
		t.Logf("europe down: %d messages read in americas; consumer creation: %v", total, err)
	})
}

// metaState describes what r's nodes know of the JetStream meta group.
func metaState(r *region) string {
	var b strings.Builder
	for _, s := range r.nodes {
		jsz, err := s.Jsz(nil)
		if err != nil || jsz.Meta == nil {
			fmt.Fprintf(&b, "%s: %v; ", s.Name(), err)
			continue
		}
		fmt.Fprintf(&b, "%s: leader %q size %d quorum %d; ", s.Name(), jsz.Meta.Leader, jsz.Meta.Size, jsz.Meta.QuorumNeeded)
	}
	return b.String()
}

// directGetBatch reads n messages from seq on with one direct-get batch
// request ($JS.API.DIRECT.GET.<stream>), answered by any replica of the
// stream without the JetStream meta leader. The batch ends with a 204
// status message.
func directGetBatch(nc *nats.Conn, stream string, seq uint64, n int) ([]*nats.Msg, error) {
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	req, _ := json.Marshal(server.JSApiMsgGetRequest{Seq: seq, Batch: n})
	if err := nc.PublishRequest("$JS.API.DIRECT.GET."+stream, inbox, req); err != nil {
		return nil, err
	}
	var msgs []*nats.Msg
	for {
		m, err := sub.NextMsg(time.Second)
		if err != nil {
			return nil, fmt.Errorf("after %d messages: %w", len(msgs), err)
		}
		if st := m.Header.Get("Status"); st != "" {
			if st == "204" && len(msgs) == n {
				return msgs, nil
			}
			return nil, fmt.Errorf("status %s %s after %d messages", st, m.Header.Get("Description"), len(msgs))
		}
		msgs = append(msgs, m)
	}
}
