package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkAgentRSS runs the real agent binary (store-and-forward to a TLS
// hub) while an on-vehicle service publishes 200 msg/s of position
// telemetry with local JetStream acks for RSS_SECONDS (default 20 s), then
// reports the agent's VmRSS (goal < 40 MB) and the size of the stripped
// static linux/arm64 binary:
//
//	go test ./e2e -run '^$' -bench AgentRSS -benchtime 1x
func BenchmarkAgentRSS(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	secs := 20
	if v, err := strconv.Atoi(os.Getenv("RSS_SECONDS")); err == nil && v > 0 {
		secs = v
	}
	s := newStack(b, ctx)
	a := enrollBinaryAgent(b, ctx, s, "Drone-R", nil)
	a.start(b)
	nc, err := nats.Connect("nats://"+a.listen, nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	subject := a.prefix + ".state.position"
	// Wait until the agent's local stream answers.
	for {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		_, err := js.Publish(pctx, a.prefix+".state.probe", []byte(`{"schema":1}`))
		pcancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			b.Fatalf("the agent never acked a publish: %v; agent log:\n%s", err, a.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.ResetTimer()
	var peak, rss int64
	var sent int
	for i := 0; i < b.N; i++ {
		tick := time.NewTicker(5 * time.Millisecond) // 200 msg/s
		end := time.Now().Add(time.Duration(secs) * time.Second)
		n := 0
		for now := range tick.C {
			if now.After(end) {
				break
			}
			payload := fmt.Appendf(nil, `{"schema":1,"n":%d,"lat":47.397742,"lon":8.545594,"alt_msl":512.3,"alt_rel":24.3,"hdg":181.5}`, n)
			pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
			if _, err := js.Publish(pctx, subject, payload); err != nil {
				pcancel()
				b.Fatalf("publish %d: %v; agent log:\n%s", n, err, a.log.String())
			}
			pcancel()
			n++
			if n%200 == 0 {
				if r := vmRSS(b, a.cmd.Process.Pid); r > peak {
					peak = r
				}
			}
		}
		tick.Stop()
		sent = n
		rss = vmRSS(b, a.cmd.Process.Pid)
	}
	b.StopTimer()
	b.ReportMetric(float64(sent)/float64(secs), "msg/s")
	b.ReportMetric(float64(rss)/(1<<20), "rss-MiB")
	b.ReportMetric(float64(peak)/(1<<20), "peak-rss-MiB")
	if size, err := arm64BinarySize(b.TempDir()); err != nil {
		b.Logf("arm64 build: %v", err)
	} else {
		b.ReportMetric(float64(size)/(1<<20), "arm64-bin-MiB")
	}
}

// vmRSS reads VmRSS (bytes) of pid.
func vmRSS(tb testing.TB, pid int) int64 {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb << 10
		}
	}
	tb.Fatal("no VmRSS in /proc status")
	return 0
}

// arm64BinarySize builds the release agent (static, stripped, linux/arm64)
// and returns its size.
func arm64BinarySize(dir string) (int64, error) {
	bin := filepath.Join(dir, "fleetplane-agent-arm64")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "../cmd/fleetplane-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("%v\n%s", err, out)
	}
	st, err := os.Stat(bin)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}
