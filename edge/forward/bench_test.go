package forward_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkReplay buffers messages locally while the link is cut, then
// restores it and measures the time until hub history holds all of them
// (each checked: exactly once, in order). FORWARD_REPLAY_N overrides the
// 100,000 messages. Run with -benchtime=1x:
//
//	go test ./edge/forward -run '^$' -bench Replay -benchtime=1x
func BenchmarkReplay(b *testing.B) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("FORWARD_REPLAY_N")); err == nil && v > 0 {
		n = v
	}
	for _, window := range []int{1, 64, 256, 1024} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				r := newRig(b)
				r.proxy.Cut()
				natsWaitLeafs(b, r, 0)
				publishBurst(b, r, n)
				f, _ := r.startForwarder(window)
				b.StartTimer()
				start := time.Now()
				r.proxy.Restore()
				waitCount(b, r, uint64(n))
				el := time.Since(start)
				b.StopTimer()
				checkHub(b, context.Background(), r.twin, uint64(n))
				b.ReportMetric(float64(n)/el.Seconds(), "msg/s")
				b.ReportMetric(el.Seconds(), "s_to_complete")
				st := f.Stats()
				b.ReportMetric(float64(st.Duplicates), "dups")
				b.ReportMetric(float64(st.OrderViolations), "order_violations")
			}
		})
	}
}

// BenchmarkSteady measures forwarding throughput with the link up: b.N
// messages published locally as fast as possible while the forwarder runs.
func BenchmarkSteady(b *testing.B) {
	for _, window := range []int{1, 256} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			r := newRig(b)
			f, _ := r.startForwarder(window)
			b.ResetTimer()
			start := time.Now()
			publishBurst(b, r, b.N)
			waitCount(b, r, uint64(b.N))
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/el.Seconds(), "msg/s")
			if st := f.Stats(); st.OrderViolations != 0 {
				b.Fatalf("stats %+v", st)
			}
		})
	}
}

func natsWaitLeafs(tb testing.TB, r *rig, n int) {
	tb.Helper()
	for i := 0; r.hub.NumLeafNodes() != n; i++ {
		if i > 1000 {
			tb.Fatalf("leafs %d, want %d", r.hub.NumLeafNodes(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// publishBurst stores n numbered messages in the local stream with async
// publishes.
func publishBurst(tb testing.TB, r *rig, n int) {
	tb.Helper()
	js, err := jetstream.New(r.local(), jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		tb.Fatal(err)
	}
	prefix := natsauth.VehicleSubjectPrefix(env, vid)
	for i := 1; i <= n; i++ {
		for {
			_, err := js.PublishAsync(prefix+subjects[i%2], []byte(strconv.Itoa(i)))
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				continue // the local stream is behind: retry this one (order kept)
			}
			if err != nil {
				tb.Fatal(err)
			}
			break
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(2 * time.Minute):
		tb.Fatal("local publishes not acked")
	}
}

func waitCount(tb testing.TB, r *rig, n uint64) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		info, err := r.twin.Info(context.Background())
		if err != nil {
			tb.Fatal(err)
		}
		if info.State.Msgs >= n {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("hub holds %d of %d", info.State.Msgs, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
