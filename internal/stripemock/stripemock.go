// Package stripemock runs stripe-mock, Stripe's own mock of its API
// (github.com/stripe/stripe-mock, a Go tool dependency of this module), as
// a child process listening on 127.0.0.1. Tests and `fleetplane dev` point
// stripe-go at Server.URL instead of api.stripe.com; nothing here imitates
// Stripe by hand. A Recorder captures the requests a client sends, so tests
// can assert the exact parameters.
//
// stripe-mock is stateless: it validates each request against Stripe's
// OpenAPI spec and answers with a fixture, so one server can be shared by
// every test of a binary (Shared) and requests never see each other.
//
// It imports the standard library only (testing for the MustStart and
// Shared helpers); never controlplane or its adapters.
package stripemock

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestKey is a secret key stripe-mock accepts (it wants "sk_test_<anything>").
const TestKey = "sk_test_fleetplane"

// StartTimeout bounds a start when the caller's context has no deadline.
const StartTimeout = 30 * time.Second

// listenPrefix is what stripe-mock prints (main.go, getPortListener) once
// its HTTP listener is bound.
const listenPrefix = "Listening for HTTP at address: "

// Server is a running stripe-mock.
type Server struct {
	// URL is the HTTP base URL, e.g. http://127.0.0.1:41234 (stripe-go's
	// BackendConfig.URL).
	URL string
	// StartDuration is how long the start took, from exec to the first
	// answered request.
	StartDuration time.Duration

	cmd       *exec.Cmd
	done      chan struct{} // closed once the process has exited and its output is drained
	stderr    *tailBuffer
	closeOnce sync.Once
	waitErr   error // set before done is closed
}

var binary = sync.OnceValues(resolveBinary)

// Binary returns the path of the stripe-mock binary: the module's pinned
// tool (`go tool -n stripe-mock`, which builds it on first use; this needs
// the go command and a working directory inside the module), else a
// stripe-mock on PATH. It is resolved once per process.
func Binary() (string, error) { return binary() }

func resolveBinary() (string, error) {
	var goErr error
	if goCmd, err := exec.LookPath("go"); err != nil {
		goErr = err
	} else {
		var stderr bytes.Buffer
		cmd := exec.Command(goCmd, "tool", "-n", "stripe-mock")
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if path := strings.TrimSpace(string(out)); err == nil && path != "" {
			return path, nil
		}
		goErr = fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	if path, err := exec.LookPath("stripe-mock"); err == nil {
		return path, nil
	}
	return "", fmt.Errorf("stripemock: no stripe-mock binary: `go tool -n stripe-mock` failed (%v; run it inside the fleetplane module) and there is no stripe-mock on PATH", goErr)
}

// Start starts the module's stripe-mock (see Binary). ctx bounds the start
// only (StartTimeout when it has no deadline); the server runs until Close.
// logger receives stripe-mock's output at debug level; nil discards it.
func Start(ctx context.Context, logger *slog.Logger) (*Server, error) {
	path, err := Binary()
	if err != nil {
		return nil, err
	}
	return StartBinary(ctx, path, logger)
}

// StartBinary starts the stripe-mock binary at path, like Start.
func StartBinary(ctx context.Context, path string, logger *slog.Logger) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, StartTimeout)
		defer cancel()
	}
	begin := time.Now()

	// Both listeners on loopback with system-chosen ports: with only
	// -http-addr, stripe-mock would also open HTTPS on :12112 on every
	// interface (and fail when another instance holds that port).
	cmd := exec.Command(path, "-http-addr", "127.0.0.1:0", "-https-addr", "127.0.0.1:0")
	setProcAttr(cmd)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("stripemock: %w", err)
	}
	s := &Server{cmd: cmd, done: make(chan struct{}), stderr: &tailBuffer{max: 4096}}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("stripemock: starting %s: %w", path, err)
	}

	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if a, ok := strings.CutPrefix(line, listenPrefix); ok {
				select {
				case addr <- strings.TrimSpace(a):
				default:
				}
			}
			logger.Debug(line, "component", "stripe-mock")
		}
		// Drain whatever is left (a line longer than the scanner's buffer
		// stops Scan) so that stripe-mock never blocks on a full pipe.
		_, _ = io.Copy(io.Discard, stdout)
		s.waitErr = cmd.Wait()
		close(s.done)
	}()

	fail := func(format string, args ...any) (*Server, error) {
		s.Close()
		msg := fmt.Sprintf(format, args...)
		if tail := strings.TrimSpace(s.stderr.String()); tail != "" {
			msg += "; stderr: " + tail
		}
		return nil, errors.New("stripemock: " + msg)
	}
	select {
	case a := <-addr:
		s.URL = "http://" + a
	case <-s.done:
		return fail("%s exited before listening (%v)", path, s.waitErr)
	case <-ctx.Done():
		return fail("%s did not report its address: %v", path, ctx.Err())
	}
	if err := s.waitAnswer(ctx); err != nil {
		return fail("%s at %s does not answer: %v", path, s.URL, err)
	}
	s.StartDuration = time.Since(begin)
	logger.Debug("stripe-mock started", "url", s.URL, "pid", cmd.Process.Pid, "took", s.StartDuration)
	return s, nil
}

// waitAnswer polls until stripe-mock answers an HTTP request (any status).
func (s *Server) waitAnswer(ctx context.Context) error {
	client := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{}).DialContext, DisableKeepAlives: true}}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/v1/customers", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+TestKey)
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("exited (%v)", s.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Close kills stripe-mock and waits until it has exited. It is safe to call
// more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		_ = s.cmd.Process.Kill() // stripe-mock keeps no state worth a graceful stop
		<-s.done
	})
}

// Done is closed when the stripe-mock process has exited.
func (s *Server) Done() <-chan struct{} { return s.done }

// Pid is the process ID of stripe-mock.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// MustStart starts a stripe-mock for one test and stops it when the test
// ends; it fails the test with the reason when stripe-mock cannot start
// (tests that need it never skip).
func MustStart(tb testing.TB) *Server {
	tb.Helper()
	s, err := Start(context.Background(), nil)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(s.Close)
	return s
}

var shared struct {
	mu  sync.Mutex
	srv *Server
	err error
}

// Shared returns the test binary's one stripe-mock, starting it on first
// use. It fails tb when stripe-mock cannot start. CloseShared (from
// TestMain, after m.Run) stops it; on Linux it also dies with the test
// binary, so a TestMain that ends in os.Exit leaves no process behind.
func Shared(tb testing.TB) *Server {
	tb.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv == nil && shared.err == nil {
		shared.srv, shared.err = Start(context.Background(), nil)
	}
	if shared.err != nil {
		tb.Fatalf("%v", shared.err)
	}
	return shared.srv
}

// CloseShared stops the server Shared started, if any.
func CloseShared() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv != nil {
		shared.srv.Close()
		shared.srv = nil
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = b.buf[len(b.buf)-b.max:]
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
