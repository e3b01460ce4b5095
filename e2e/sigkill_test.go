package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/api"
	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/controlplane/twin"
	"github.com/fleetplane/fleetplane/edge/agent"
	"github.com/fleetplane/fleetplane/internal/devca"
	"github.com/fleetplane/fleetplane/internal/hubnode"
	"github.com/fleetplane/fleetplane/internal/password"
	"github.com/fleetplane/fleetplane/internal/pgtest"
	"github.com/fleetplane/fleetplane/internal/seal"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.yaml.in/yaml/v3"
)

// stack is a control plane (Postgres, issuer, hubs adapter, REST API) with
// one TLS hub node, a tenant, a fleet "drones" (env prod) and a one-use
// enrollment token.
type stack struct {
	svc     *controlplane.Service
	tctx    context.Context // the tenant's principal
	url     string          // the REST API
	token   string
	hub     *server.Server
	leafURL string
}

func newStack(tb testing.TB, ctx context.Context) *stack {
	tb.Helper()
	return newStackWith(tb, ctx, stackOptions{})
}

// stackOptions vary newStackWith's stack.
type stackOptions struct {
	log    *slog.Logger        // nil = discarded (E2E_LOG=1: stderr)
	mailer controlplane.Mailer // Config.Mailer
	// handler, when set, builds the HTTP server's handler around the
	// API's (publicURL is the server's URL, also Config.PublicURL).
	handler func(tb testing.TB, svc *controlplane.Service, publicURL string, apiHandler http.Handler) http.Handler
	// noTenant leaves out the tenant, its fleet and token (the browser
	// test signs up through the portal instead).
	noTenant bool
}

func newStackWith(tb testing.TB, ctx context.Context, o stackOptions) *stack {
	tb.Helper()
	log := o.log
	if os.Getenv("E2E_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	} else if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	store := postgres.NewStore(pgtest.NewPool(tb))
	keys, err := seal.ParseKeyring("t1:" + seal.GenerateKey())
	if err != nil {
		tb.Fatal(err)
	}
	op, err := natsissuer.NewOperator(keys, "e2e")
	if err != nil {
		tb.Fatal(err)
	}
	if err := store.CreateOperator(ctx, op); err != nil {
		tb.Fatal(err)
	}
	iss, err := natsissuer.New(keys, op)
	if err != nil {
		tb.Fatal(err)
	}
	ca, err := devca.Open(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := ca.Issue("hub-1", devca.LocalHosts)
	if err != nil {
		tb.Fatal(err)
	}
	leafTLS, err := hubnode.TLSFiles{CertFile: cert.CertFile, KeyFile: cert.KeyFile}.TLSConfig()
	if err != nil {
		tb.Fatal(err)
	}
	hub, err := hubnode.Start(hubnode.Config{Name: "hub-1", Region: "europe", Dir: tb.TempDir(),
		ClientHost: "127.0.0.1", ClientPort: -1, LeafHost: "127.0.0.1", LeafPort: -1, LeafTLS: leafTLS,
		Trust: natsissuer.HubTrust(iss.Operator())})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { hub.Shutdown(); hub.WaitForShutdown() })
	lz, err := hub.Varz(nil)
	if err != nil {
		tb.Fatal(err)
	}
	leafURL := "tls://127.0.0.1:" + itoa(lz.LeafNode.Port)
	h, err := hubs.New([]hubs.Node{{Name: "hub-1", URL: hub.ClientURL()}}, iss.SystemUserCreds(time.Hour), hubs.Options{Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	for h.Ready(ctx) != nil && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	tw := twin.New(twin.Options{Logger: log})
	tb.Cleanup(tw.Close)
	srv := httptest.NewUnstartedServer(nil)
	tb.Cleanup(srv.Close)
	publicURL := "http://" + srv.Listener.Addr().String()
	svc := controlplane.NewService(store, controlplane.Config{
		Regions: []controlplane.Region{{Name: "europe", LeafURLs: []string{leafURL},
			ClientURLs: []string{hub.ClientURL()}, CABundle: ca.Bundle()}},
		PasswordParams: password.Params{Memory: 64, Time: 1, Threads: 1},
		Issuer:         iss, Hubs: h, Presence: h, Telemetry: tw,
		PublicURL: publicURL, Mailer: o.mailer,
	}, log)
	pctx, pcancel := context.WithCancel(ctx)
	presenceDone := make(chan struct{})
	go func() { defer close(presenceDone); _ = svc.RunPresence(pctx) }()
	tb.Cleanup(func() { pcancel(); <-presenceDone })
	var handler http.Handler = api.New(svc, api.Options{Logger: log})
	if o.handler != nil {
		handler = o.handler(tb, svc, publicURL, handler)
	}
	srv.Config.Handler = handler
	srv.Start()
	if o.noTenant {
		return &stack{svc: svc, url: srv.URL, hub: hub, leafURL: leafURL}
	}
	sctx := controlplane.NewContextWithRequestMeta(ctx, controlplane.RequestMeta{SourceIP: "198.51.100.7", RequestID: "e2e"})
	res, err := svc.Signup(sctx, controlplane.SignupRequest{Organisation: "Acme", Email: "ops@acme.example", Password: "correct horse battery"})
	if err != nil {
		tb.Fatal(err)
	}
	p, err := svc.Authenticate(sctx, res.APIKey.Secret)
	if err != nil {
		tb.Fatal(err)
	}
	tctx := controlplane.NewContextWithPrincipal(sctx, p)
	if _, err := svc.CreateFleet(tctx, controlplane.FleetCreate{Slug: "drones", Environment: "prod"}); err != nil {
		tb.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	tok, err := svc.CreateEnrollmentToken(tctx, "drones", controlplane.EnrollmentTokenCreate{ExpiresAt: &exp, MaxUses: 1})
	if err != nil {
		tb.Fatal(err)
	}
	return &stack{svc: svc, tctx: tctx, url: srv.URL, token: tok.Secret, hub: hub, leafURL: leafURL}
}

// agentBinary builds cmd/fleetplane-agent into dir (the Go build cache
// makes repeated builds a link step).
func agentBinary(dir string) (string, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "fleetplane-agent")
	cmd := exec.Command(gobin, "build", "-o", bin, "../cmd/fleetplane-agent")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// binaryAgent is a vehicle enrolled into dir, run as a subprocess of the
// real agent binary.
type binaryAgent struct {
	bin, dir, dataDir string
	vehicle           string
	prefix            string // fleet.<env>.veh.<vid>
	listen            string // the local NATS client address
	cmd               *exec.Cmd
	log               bytes.Buffer
}

func freeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// enrollBinaryAgent enrolls vehicle vid and writes local ports (and
// optionally a mavlink section) into its agent.yaml.
func enrollBinaryAgent(tb testing.TB, ctx context.Context, s *stack, vid string, mavlinkEndpoints []string) *binaryAgent {
	tb.Helper()
	dir := tb.TempDir()
	bin, err := agentBinary(dir)
	if err != nil {
		if _, lerr := exec.LookPath("go"); lerr != nil {
			tb.Skipf("needs the go tool on PATH to build the agent binary: %v", lerr)
		}
		tb.Fatal(err)
	}
	a := &binaryAgent{bin: bin, dir: filepath.Join(dir, "etc"), dataDir: filepath.Join(dir, "var"), vehicle: vid}
	cfg, creds, err := agent.Enroll(ctx, agent.EnrollOptions{Server: s.url, Token: s.token, VehicleID: vid,
		Dir: a.dir, DataDir: a.dataDir, Version: "e2e"})
	if err != nil {
		tb.Fatal(err)
	}
	a.prefix = creds.SubjectPrefix
	a.listen = freeAddr(tb)
	cfg.Listen, cfg.HTTP = a.listen, freeAddr(tb)
	cfg.ReconnectInterval = 250 * time.Millisecond
	if len(mavlinkEndpoints) > 0 {
		var n yaml.Node
		if err := n.Encode(map[string]any{"endpoints": mavlinkEndpoints}); err != nil {
			tb.Fatal(err)
		}
		cfg.MAVLink = &n
	}
	if err := cfg.Write(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(a.kill)
	return a
}

func (a *binaryAgent) start(tb testing.TB) {
	tb.Helper()
	a.cmd = exec.Command(a.bin, "run", "--dir", a.dir, "--data-dir", a.dataDir, "--log-level", "warn")
	a.cmd.Stdout, a.cmd.Stderr = &a.log, &a.log
	if err := a.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
}

// kill SIGKILLs the process (no shutdown, no store flush) and reaps it.
func (a *binaryAgent) kill() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGKILL)
	_ = a.cmd.Wait()
	a.cmd = nil
}

// TestAgentSIGKILL: the agent binary is killed with SIGKILL while an
// on-vehicle service publishes with JetStream acks from the local stream,
// then restarted on the same directories; every message the local stream
// acknowledged reaches hub history exactly once.
func TestAgentSIGKILL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s := newStack(t, ctx)
	a := enrollBinaryAgent(t, ctx, s, "Drone-K", nil)
	a.start(t)

	nc, err := nats.Connect("nats://"+a.listen, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(256))
	if err != nil {
		t.Fatal(err)
	}
	subject := a.prefix + ".state.position"

	var mu sync.Mutex
	acked := map[int]bool{}
	var failed int
	stop := make(chan struct{})
	done := make(chan struct{})
	// Bursts of asynchronous publishes outpace the forwarder, so the kill
	// lands with a backlog in the local stream and acks in flight.
	go func() {
		defer close(done)
		const burst = 100
		for n := 0; ; n += burst {
			select {
			case <-stop:
				return
			default:
			}
			futs := make([]jetstream.PubAckFuture, 0, burst)
			for i := range burst {
				f, err := js.PublishAsync(subject, fmt.Appendf(nil, `{"schema":1,"n":%d}`, n+i))
				if err != nil {
					break
				}
				futs = append(futs, f)
			}
			ok := make([]bool, len(futs))
			timeout := time.After(2 * time.Second)
		wait:
			for i, f := range futs {
				select {
				case <-f.Ok():
					ok[i] = true
				case <-f.Err():
				case <-timeout:
					break wait
				}
			}
			mu.Lock()
			for i, o := range ok {
				if o {
					acked[n+i] = true
				}
			}
			failed += burst - len(slices.DeleteFunc(ok, func(b bool) bool { return !b }))
			mu.Unlock()
			if len(futs) < burst {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()
	nacked := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	waitAcked := func(n int) {
		for nacked() < n {
			if ctx.Err() != nil {
				t.Fatalf("only %d of %d publishes acked; agent log:\n%s", nacked(), n, a.log.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitAcked(2000)
	a.kill()
	killedAt := nacked()
	inHub := len(history(t, s, a.vehicle))
	time.Sleep(300 * time.Millisecond) // publishes fail while the agent is down
	a.start(t)
	waitAcked(killedAt + 1000)
	close(stop)
	<-done
	mu.Lock()
	total, nfail := len(acked), failed
	mu.Unlock()
	t.Logf("%d publishes acked (%d before the kill, of which %d were in hub history at the kill), %d failed",
		total, killedAt, inHub, nfail)

	// Every acked message is in hub history exactly once.
	var seen map[int]int
	for {
		seen = history(t, s, a.vehicle)
		missing := 0
		mu.Lock()
		for n := range acked {
			if seen[n] == 0 {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d of %d acked messages never reached hub history; agent log:\n%s", missing, total, a.log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	for n, c := range seen {
		if c != 1 {
			t.Errorf("message %d is %d times in hub history", n, c)
		}
	}
}

// history counts the vehicle's state.position messages in hub history by
// their payload counter.
func history(t *testing.T, s *stack, vid string) map[int]int {
	t.Helper()
	seen := map[int]int{}
	q := controlplane.HistoryQuery{Kind: "state.position", Limit: controlplane.MaxHistoryLimit}
	for {
		page, err := s.svc.VehicleHistory(s.tctx, "drones", vid, q)
		if err != nil {
			return seen
		}
		for _, m := range page.Items {
			var p struct{ N int }
			if err := json.Unmarshal(m.Data, &p); err != nil {
				t.Fatalf("history payload %q: %v", m.Data, err)
			}
			seen[p.N]++
		}
		if page.NextCursor == "" {
			return seen
		}
		q.Cursor = page.NextCursor
	}
}
