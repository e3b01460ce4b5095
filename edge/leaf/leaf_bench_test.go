package leaf_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/edge/leaf"
	"github.com/nats-io/nats.go/jetstream"
)

func startLeaf(tb testing.TB, c leaf.Config) *leaf.Leaf {
	tb.Helper()
	creds := filepath.Join(tb.TempDir(), "none.creds")
	if err := os.WriteFile(creds, nil, 0o600); err != nil {
		tb.Fatal(err)
	}
	c.Name, c.Domain, c.ClientPort, c.StoreDir = "vtest-v1", "vtest-v1", -1, tb.TempDir()
	// A hub that is never there: the local side is what is measured.
	c.HubURLs, c.CredsFile, c.ReconnectInterval = []string{"nats://127.0.0.1:1"}, creds, time.Hour
	l, err := leaf.Start(c)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(l.Close)
	return l
}

func TestStreamPolicy(t *testing.T) {
	l := startLeaf(t, leaf.Config{})
	nc, err := l.Connect("test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	cfg := leaf.StreamConfig("fleet.prod.veh.v1", 1<<20)
	if _, err := leaf.EnsureStream(ctx, js, cfg); err != nil {
		t.Fatal(err)
	}
	// Idempotent, and limits follow the config.
	cfg.MaxBytes = 2 << 20
	st, err := leaf.EnsureStream(ctx, js, cfg)
	if err != nil || st.CachedInfo().Config.MaxBytes != 2<<20 {
		t.Fatalf("update: %v", err)
	}
	// Another vehicle's subjects are refused.
	if _, err := leaf.EnsureStream(ctx, js, leaf.StreamConfig("fleet.prod.veh.v2", 1<<20)); err == nil {
		t.Fatal("a stream of another vehicle was accepted")
	}
	// Full: the oldest go, a publish is never refused.
	payload := make([]byte, 8<<10)
	for i := 0; i < 400; i++ {
		if _, err := js.Publish(ctx, "fleet.prod.veh.v1.state.position", payload); err != nil {
			t.Fatalf("publish %d into a full stream: %v", i, err)
		}
	}
	info, _ := st.Info(ctx)
	if info.State.Bytes > 2<<20 || info.State.FirstSeq == 1 || info.State.LastSeq != 400 {
		t.Fatalf("full stream state %+v", info.State)
	}
	lk := l.Link()
	if lk.Connected {
		t.Fatal("linked to a hub that does not exist")
	}
}

// BenchmarkSyncPolicy measures a JetStream sync publish (the caller waits
// for the local PubAck) into the vehicle stream with fsync on every write
// vs every second (docs/agent.md):
//
//	go test ./edge/leaf -run '^$' -bench SyncPolicy -benchtime 3000x
func BenchmarkSyncPolicy(b *testing.B) {
	for _, tc := range []struct {
		name string
		c    leaf.Config
	}{{"always", leaf.Config{SyncAlways: true}}, {"interval=1s", leaf.Config{SyncInterval: time.Second}}} {
		b.Run(tc.name, func(b *testing.B) {
			l := startLeaf(b, tc.c)
			nc, err := l.Connect("bench")
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			js, _ := jetstream.New(nc)
			ctx := context.Background()
			if _, err := leaf.EnsureStream(ctx, js, leaf.StreamConfig("fleet.prod.veh.v1", 1<<30)); err != nil {
				b.Fatal(err)
			}
			payload := make([]byte, 256)
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if _, err := js.Publish(ctx, "fleet.prod.veh.v1.state.position", payload); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			p := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }
			b.ReportMetric(float64(p(0.5).Microseconds()), "p50-µs")
			b.ReportMetric(float64(p(0.99).Microseconds()), "p99-µs")
			if testing.Verbose() {
				fmt.Printf("%s: p50 %s p99 %s\n", tc.name, p(0.5), p(0.99))
			}
		})
	}
}
