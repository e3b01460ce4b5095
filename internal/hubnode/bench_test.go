package hubnode_test

// Hub memory per vehicle, by leafnode compression, and the reconnect storm
// after a hub restart (docs/adr/0008-leafnode-compression.md).
//
//	go test ./internal/hubnode -run '^$' -bench LeafMemory -benchtime 1x -timeout 60m
//	go test ./internal/hubnode -run '^$' -bench ReconnectStorm -benchtime 1x -timeout 30m
//
// HUBNODE_BENCH_VEHICLES (default 100,500,1000) and
// HUBNODE_BENCH_COMPRESSION (default off,s2_auto,s2_fast) narrow the runs.
//
// # Method
//
// The hub node runs in the benchmark's process; the vehicles run in a child
// process (this test binary re-executed as TestLeafFleetProcess): one real
// nats-server leaf per vehicle, each with its own vehicle user creds, a TLS
// 1.3 remote to the hub verified with a dev CA, an in-process client that
// subscribes to the vehicle's commands and publishes a 200-byte position
// once a second, which a tenant service user on the hub receives. Running
// the leafs in the hub's process would mix their memory with the hub's: Go's
// heap statistics are per process. So the benchmark's process holds the hub
// (plus a handful of client connections) and nothing else, and its numbers
// are the hub's: the live heap (HeapAlloc) and goroutine stacks
// (StackInuse) after two forced GCs, before any vehicle connects and again
// after all are connected and 10 s of telemetry have flowed; the difference
// divided by the number of vehicles is the cost of one vehicle. RSS (after
// debug.FreeOSMemory) is reported as a cross-check; it also holds memory
// the runtime has not returned to the OS and is noisier.

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/fleetplane/fleetplane/internal/devca"
	"github.com/fleetplane/fleetplane/internal/hubnode"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
)

const (
	fleetSpecEnv       = "HUBNODE_LEAF_FLEET"
	vehiclesPerTenant  = 100
	benchPayloadBytes  = 200
	telemetryWarmup    = 10 * time.Second
	allConnectedWithin = 10 * time.Minute
)

func envList(name, def string) []string {
	v := os.Getenv(name)
	if v == "" {
		v = def
	}
	return strings.Split(v, ",")
}

func benchSizes(b *testing.B) []int {
	var out []int
	for _, s := range envList("HUBNODE_BENCH_VEHICLES", "100,500,1000") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			b.Fatalf("HUBNODE_BENCH_VEHICLES: %q", s)
		}
		out = append(out, n)
	}
	return out
}

func BenchmarkLeafMemory(b *testing.B) {
	for _, comp := range envList("HUBNODE_BENCH_COMPRESSION", "off,s2_auto,s2_fast") {
		for _, n := range benchSizes(b) {
			b.Run(fmt.Sprintf("compression=%s/vehicles=%d", comp, n), func(b *testing.B) {
				for range b.N {
					f := startBenchFleet(b, comp, n)
					f.measure(b)
					f.stop()
				}
			})
		}
	}
}

// BenchmarkReconnectStorm restarts the hub node (same directory and ports)
// under n connected vehicles and times until every vehicle is back.
func BenchmarkReconnectStorm(b *testing.B) {
	for _, comp := range envList("HUBNODE_BENCH_COMPRESSION", hubnode.DefaultLeafCompression) {
		for _, n := range benchSizes(b) {
			b.Run(fmt.Sprintf("compression=%s/vehicles=%d", comp, n), func(b *testing.B) {
				for range b.N {
					f := startBenchFleet(b, comp, n)
					f.restart(b)
					f.stop()
				}
			})
		}
	}
}

// benchFleet is a hub in this process and n vehicles in a child process.
type benchFleet struct {
	cfg      hubnode.Config
	hub      *server.Server
	n        int
	child    *exec.Cmd
	stdin    interface{ Close() error }
	exited   chan struct{} // closed when the child has exited
	exitErr  error
	received atomic.Int64
	base     memSample
	connect  time.Duration
}

type memSample struct {
	heap, stack, rss uint64
	goroutines       int
}

func sampleMemory() memSample {
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{heap: ms.HeapAlloc, stack: ms.StackInuse, rss: readRSS(), goroutines: runtime.NumGoroutine()}
}

// readRSS is VmRSS from /proc/self/status in bytes (0 where there is none).
func readRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// reconnectForever undoes natstest.Connect's NoReconnect: the tenant
// service users must survive the hub restart.
func reconnectForever(o *nats.Options) error {
	o.AllowReconnect, o.MaxReconnect, o.ReconnectWait = true, -1, 100*time.Millisecond
	return nil
}

// fleetSpec is what the child process gets.
type fleetSpec struct {
	LeafURL  string
	CAFile   string
	Vehicles []fleetVehicle
}

type fleetVehicle struct {
	Creds string
	Name  string // leaf server name
	Env   string
	ID    string
}

func startBenchFleet(b *testing.B, compression string, n int) *benchFleet {
	b.Helper()
	op := natstest.MustOperator(b)
	ca, err := devca.Open(filepath.Join(b.TempDir(), "ca"))
	if err != nil {
		b.Fatal(err)
	}
	cert, err := ca.Issue("hub", devca.LocalHosts)
	if err != nil {
		b.Fatal(err)
	}
	leafTLS, err := hubnode.TLSFiles{CertFile: cert.CertFile, KeyFile: cert.KeyFile}.TLSConfig()
	if err != nil {
		b.Fatal(err)
	}
	f := &benchFleet{n: n, cfg: hubnode.Config{Name: "hub-bench", Region: "bench", Dir: b.TempDir(),
		ClientHost: "127.0.0.1", ClientPort: -1, LeafHost: "127.0.0.1", LeafPort: -1, LeafTLS: leafTLS,
		LeafCompression: compression, Trust: op.HubTrust(), Log: os.Getenv("NATSTEST_LOG") != ""}}
	if f.hub, err = hubnode.Start(f.cfg); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { hubnode.Stop(f.hub, false) })
	// Restarts reuse the ports the first start picked.
	v, _ := f.hub.Varz(nil)
	f.cfg.ClientPort, f.cfg.LeafPort = v.Port, v.LeafNode.Port

	sys := natstest.ConnectSystem(b, f.hub, op)
	credsDir := b.TempDir()
	spec := fleetSpec{LeafURL: fmt.Sprintf("tls://127.0.0.1:%d", v.LeafNode.Port), CAFile: ca.CAFile()}
	for t := 0; t*vehiclesPerTenant < n; t++ {
		tn := natstest.NewTenant(b, op, natsauth.AccountSpec{Name: fmt.Sprintf("tenant-%d", t), TenantID: fmt.Sprintf("t%d", t), Limits: natsauth.Unlimited()})
		tn.Push(b, sys)
		// A tenant client on the hub listens to all telemetry: its
		// interest reaches every vehicle, so telemetry crosses the links.
		svc := natstest.Connect(b, f.hub.ClientURL(), tn.Admin(b), reconnectForever)
		if _, err := svc.Subscribe(natsauth.SubjectRoot+".>", func(*nats.Msg) { f.received.Add(1) }); err != nil {
			b.Fatal(err)
		}
		if err := svc.Flush(); err != nil {
			b.Fatal(err)
		}
		for i := t * vehiclesPerTenant; i < min(n, (t+1)*vehiclesPerTenant); i++ {
			id := natsauth.VehicleIdentity{TenantID: tn.Spec.TenantID, Fleet: "drones", Env: "prod", VehicleID: fmt.Sprintf("V%04d", i)}
			u := tn.Vehicle(b, id, time.Now().Add(24*time.Hour))
			creds, err := u.Creds()
			if err != nil {
				b.Fatal(err)
			}
			p := filepath.Join(credsDir, id.VehicleID+".creds")
			if err := os.WriteFile(p, creds, 0o600); err != nil {
				b.Fatal(err)
			}
			spec.Vehicles = append(spec.Vehicles, fleetVehicle{Creds: p, Name: fmt.Sprintf("veh-%s-%s", id.TenantID, id.VehicleID), Env: id.Env, ID: id.VehicleID})
		}
	}
	specFile := filepath.Join(b.TempDir(), "fleet.json")
	sb, _ := json.Marshal(spec)
	if err := os.WriteFile(specFile, sb, 0o600); err != nil {
		b.Fatal(err)
	}

	f.base = sampleMemory()
	f.child = exec.Command(os.Args[0], "-test.run=^TestLeafFleetProcess$", "-test.timeout=0")
	f.child.Env = append(os.Environ(), fleetSpecEnv+"="+specFile)
	f.child.Stderr = os.Stderr
	stdin, err := f.child.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	f.stdin = stdin
	out, err := f.child.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := f.child.Start(); err != nil {
		b.Fatal(err)
	}
	f.exited = make(chan struct{})
	go func() {
		// The child's stdout: its READY line, and test output when it fails.
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if !strings.HasPrefix(sc.Text(), "READY") {
				fmt.Fprintln(os.Stderr, "vehicle process:", sc.Text())
			}
		}
		f.exitErr = f.child.Wait()
		close(f.exited)
	}()
	b.Cleanup(f.stop)
	f.waitLeafs(b, start)
	f.connect = time.Since(start)
	return f
}

func (f *benchFleet) waitLeafs(b *testing.B, since time.Time) {
	b.Helper()
	for f.hub.NumLeafNodes() < f.n {
		if time.Since(since) > allConnectedWithin {
			b.Fatalf("%d of %d vehicles connected after %s", f.hub.NumLeafNodes(), f.n, allConnectedWithin)
		}
		select {
		case <-f.exited:
			b.Fatalf("the vehicle process exited: %v", f.exitErr)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (f *benchFleet) measure(b *testing.B) {
	before := f.received.Load()
	time.Sleep(telemetryWarmup)
	rate := float64(f.received.Load()-before) / telemetryWarmup.Seconds()
	if rate < 0.5*float64(f.n) {
		b.Fatalf("telemetry: %.0f msg/s reached the hub from %d vehicles, want ~%d", rate, f.n, f.n)
	}
	m := sampleMemory()
	if got := f.hub.NumLeafNodes(); got != f.n {
		b.Fatalf("%d leafs after the warm-up, want %d", got, f.n)
	}
	per := func(after, before uint64) float64 { return (float64(after) - float64(before)) / float64(f.n) / 1024 }
	b.ReportMetric(per(m.heap, f.base.heap), "heap-KiB/vehicle")
	b.ReportMetric(per(m.heap+m.stack, f.base.heap+f.base.stack), "heap+stack-KiB/vehicle")
	b.ReportMetric(per(m.rss, f.base.rss), "rss-KiB/vehicle")
	b.ReportMetric(float64(m.goroutines-f.base.goroutines)/float64(f.n), "goroutines/vehicle")
	b.ReportMetric(f.connect.Seconds(), "s-to-connect-all")
	b.ReportMetric(rate, "msgs/s")
	b.ReportMetric(0, "ns/op") // wall time of setup is not the result
}

// restart stops the hub and starts it again on the same directory and
// ports, and times until every vehicle is back. Leafs retry every second.
func (f *benchFleet) restart(b *testing.B) {
	hubnode.Stop(f.hub, false)
	start := time.Now()
	hub, err := hubnode.Start(f.cfg)
	if err != nil {
		b.Fatal(err)
	}
	f.hub = hub
	ready := time.Since(start)
	f.waitLeafs(b, start)
	all := time.Since(start)
	// Telemetry flows again once the tenant service users have reconnected.
	before := f.received.Load()
	time.Sleep(3 * time.Second)
	b.ReportMetric(ready.Seconds(), "s-hub-ready")
	b.ReportMetric(all.Seconds(), "s-all-back")
	b.ReportMetric(float64(f.received.Load()-before)/3, "msgs/s-after")
	m := sampleMemory()
	b.ReportMetric((float64(m.heap+m.stack)-float64(f.base.heap+f.base.stack))/float64(f.n)/1024, "heap+stack-KiB/vehicle-after")
	b.ReportMetric(0, "ns/op")
}

func (f *benchFleet) stop() {
	if f.exited == nil {
		return
	}
	select {
	case <-f.exited:
		return
	default:
	}
	f.stdin.Close() // the child shuts its leafs down and exits
	select {
	case <-f.exited:
	case <-time.After(time.Minute):
		_ = f.child.Process.Kill()
		<-f.exited
	}
}

// TestLeafFleetProcess is the benchmarks' vehicle process: it runs only
// when re-executed with HUBNODE_LEAF_FLEET set, starts one leaf (plus a
// telemetry client) per vehicle, prints READY, and stops when its stdin
// closes.
func TestLeafFleetProcess(t *testing.T) {
	specFile := os.Getenv(fleetSpecEnv)
	if specFile == "" {
		t.Skip("the benchmarks' vehicle process")
	}
	b, err := os.ReadFile(specFile)
	if err != nil {
		t.Fatal(err)
	}
	var spec fleetSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(spec.CAFile)
	if err != nil || !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("CA %s: %v", spec.CAFile, err)
	}
	u, err := url.Parse(spec.LeafURL)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		servers []*server.Server
		conns   []*nats.Conn
		errs    []error
		wg      sync.WaitGroup
		next    atomic.Int64
		quit    = make(chan struct{})
		payload = []byte(`{"v":1,"lat":48.1374,"lon":11.5755,"alt":512.4,"hdg":271.5,"spd":12.3,"ts":"2026-01-01T00:00:00Z","pad":"` + strings.Repeat("x", 64) + `"}`)
	)
	payload = payload[:min(len(payload), benchPayloadBytes)]
	for range 4 { // start leafs four at a time
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(spec.Vehicles) {
					return
				}
				v := spec.Vehicles[i]
				s, nc, err := startFleetLeaf(u, pool, v)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					servers, conns = append(servers, s), append(conns, nc)
				}
				mu.Unlock()
				if err != nil {
					return
				}
				go publishTelemetry(nc, natsauth.VehicleSubjectPrefix(v.Env, v.ID)+".state.position", payload, quit)
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d leafs failed to start, first: %v", len(errs), errs[0])
	}
	fmt.Println("READY", len(servers))
	_, _ = bufio.NewReader(os.Stdin).ReadString(0) // until the benchmark closes our stdin
	close(quit)
	var sw sync.WaitGroup
	for i, s := range servers {
		sw.Add(1)
		go func() {
			defer sw.Done()
			conns[i].Close()
			s.Shutdown()
		}()
	}
	sw.Wait()
}

func startFleetLeaf(hub *url.URL, roots *x509.CertPool, v fleetVehicle) (*server.Server, *nats.Conn, error) {
	o := &server.Options{
		ServerName: v.Name,
		DontListen: true,
		NoLog:      true,
		NoSigs:     true,
		Cluster:    server.ClusterOpts{Name: v.Name},
		LeafNode: server.LeafNodeOpts{Remotes: []*server.RemoteLeafOpts{{
			URLs:        []*url.URL{hub},
			Credentials: v.Creds,
			TLS:         true,
			TLSConfig:   &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13},
		}}},
	}
	s, err := server.NewServer(o)
	if err != nil {
		return nil, nil, err
	}
	go s.Start()
	if !s.ReadyForConnections(time.Minute) {
		s.Shutdown()
		return nil, nil, fmt.Errorf("leaf %s not ready", v.Name)
	}
	// Generous timeouts: a thousand servers start on two shared cores.
	nc, err := nats.Connect("", nats.InProcessServer(s), nats.Name(v.Name), nats.Timeout(time.Minute))
	if err != nil {
		s.Shutdown()
		return nil, nil, err
	}
	// The agent's command handler: interest that crosses to the hub.
	if _, err := nc.Subscribe(natsauth.VehicleSubjectPrefix(v.Env, v.ID)+".cmd.>", func(*nats.Msg) {}); err != nil {
		nc.Close()
		s.Shutdown()
		return nil, nil, err
	}
	return s, nc, nil
}

// publishTelemetry publishes one position a second, starting at a random
// offset so the fleet does not publish in lockstep.
func publishTelemetry(nc *nats.Conn, subject string, payload []byte, quit <-chan struct{}) {
	select {
	case <-time.After(time.Duration(time.Now().UnixNano() % int64(time.Second))):
	case <-quit:
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		_ = nc.Publish(subject, payload)
		select {
		case <-t.C:
		case <-quit:
			return
		}
	}
}
