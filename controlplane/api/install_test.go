package api_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane/api"
	"github.com/fleetplane/fleetplane/internal/agentdist"
)

// fakeAgent is a stand-in fleetplane-agent: `version` prints its arch,
// `enroll` appends its arguments to $FAKE_AGENT_LOG, refuses tokens that
// start with fpe_bad the way the real one reports a 401, and otherwise
// writes a config file into --dir.
const fakeAgent = `#!/bin/sh
case $1 in
version) echo "fleetplane-agent fake-%s linux/%s" ;;
enroll)
	shift
	echo "enroll $*" >>"$FAKE_AGENT_LOG"
	dir=
	while [ $# -gt 0 ]; do
		case $1 in
		--token) case $2 in fpe_bad*) echo "POST /v1/enroll: 401" >&2; echo "fleetplane-agent: enroll: the enrollment token is not valid (unknown, expired, revoked or used up)" >&2; exit 1 ;; esac ;;
		--dir) dir=$2 ;;
		esac
		shift
	done
	echo "vehicle: v1" >"$dir/agent.yaml" || exit 1
	echo "enrolled as vehicle v1 in fleet demo"
	;;
*) echo "fake agent: unknown command $1" >&2; exit 2 ;;
esac
`

type installEnv struct {
	*env
	agents string // directory served at /downloads/
	log    string // the fake agent's enroll log
}

func newInstallEnv(t *testing.T) *installEnv {
	t.Helper()
	for _, tool := range []string{"sh", "curl", "sha256sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required (make deps installs it): %v", tool, err)
		}
	}
	dir := t.TempDir()
	for _, arch := range agentdist.Arches {
		writeFile(t, filepath.Join(dir, agentdist.BinaryName(arch)), fmt.Sprintf(fakeAgent, "1", arch))
	}
	e := newEnv(t, func(o *api.Options) { o.Agents = agentdist.NewDir(dir) })
	return &installEnv{env: e, agents: dir, log: filepath.Join(t.TempDir(), "enroll.log")}
}

type installRun struct {
	code           int
	stdout, stderr string
}

// install runs the one-liner as documented, with real curl and sh:
// curl -fsSL <url>/install.sh | sh -s -- args. path is prepended to PATH.
func (e *installEnv) install(t *testing.T, path string, args ...string) installRun {
	t.Helper()
	return e.runScript(t, path, nil, `curl -fsSL "$URL/install.sh" | sh -s -- "$@"`, args...)
}

// runScript runs script with sh -c, args as $@, extra added to the
// environment and path prepended to PATH.
func (e *installEnv) runScript(t *testing.T, path string, extra []string, script string, args ...string) installRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", append([]string{"-c", script, "sh"}, args...)...)
	env := append(os.Environ(), "URL="+e.srv.URL, "FAKE_AGENT_LOG="+e.log)
	env = append(env, extra...)
	if path != "" {
		env = append(env, "PATH="+path+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := installRun{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running the installer: %v", err)
	}
	return r
}

// mustFail asserts exit 1 with exactly one line on stderr that contains want.
func (r installRun) mustFail(t *testing.T, want string) {
	t.Helper()
	if r.code != 1 {
		t.Fatalf("exit %d, want 1\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "fleetplane: error: ") || !strings.Contains(lines[0], want) {
		t.Fatalf("stderr must be one error line containing %q, got:\n%s", want, r.stderr)
	}
}

func (r installRun) mustSucceed(t *testing.T) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
}

func (e *installEnv) enrollCalls(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(e.log)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func TestInstallScript(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t)
	arch := map[string]string{"amd64": "amd64", "arm64": "arm64"}[runtime.GOARCH]
	if arch == "" {
		t.Skipf("the agent is built for amd64 and arm64 only; this is %s (CI runs it on amd64)", runtime.GOARCH)
	}
	prefix := filepath.Join(t.TempDir(), "agent")
	bin := filepath.Join(prefix, "bin", "fleetplane-agent")
	etc := filepath.Join(prefix, "etc", "fleetplane-agent")
	data := filepath.Join(prefix, "var", "lib", "fleetplane-agent")

	// Success.
	r := e.install(t, "", "--token", "fpe_good_token", "--vehicle-id", "v1", "--prefix", prefix)
	r.mustSucceed(t)
	if got, want := mustRead(t, bin), mustRead(t, filepath.Join(e.agents, agentdist.BinaryName(arch))); got != want {
		t.Fatal("installed binary differs from the served one")
	}
	if st, err := os.Stat(bin); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("binary mode: %v %v", st, err)
	}
	for _, d := range []string{etc, data} {
		if st, err := os.Stat(d); err != nil || st.Mode().Perm() != 0o700 {
			t.Fatalf("%s: %v %v", d, st, err)
		}
	}
	calls := e.enrollCalls(t)
	wantCall := fmt.Sprintf("enroll --server %s --token fpe_good_token --dir %s --data-dir %s --vehicle-id v1", e.srv.URL, etc, data)
	if len(calls) != 1 || calls[0] != wantCall {
		t.Fatalf("enroll calls %q, want [%q]", calls, wantCall)
	}
	if !strings.Contains(r.stdout, "start the agent with: "+bin+" run --dir "+etc+" --data-dir "+data) ||
		!strings.Contains(r.stdout, "enrolled as vehicle v1") || !strings.Contains(r.stdout, "fake-1 linux/"+arch) {
		t.Errorf("stdout:\n%s", r.stdout)
	}
	if entries, _ := os.ReadDir(filepath.Dir(bin)); len(entries) != 1 {
		t.Errorf("bin dir holds %v, want the binary only", entries)
	}
	before, _ := os.Stat(bin)

	// Re-running changes nothing: same binary kept, no second enrollment,
	// and no token needed.
	r = e.install(t, "", "--prefix", prefix)
	r.mustSucceed(t)
	if !strings.Contains(r.stdout, "already enrolled") || !strings.Contains(r.stdout, "up to date") {
		t.Errorf("re-run stdout:\n%s", r.stdout)
	}
	if after, _ := os.Stat(bin); !after.ModTime().Equal(before.ModTime()) || !os.SameFile(before, after) {
		t.Error("re-run replaced an identical binary")
	}
	if n := len(e.enrollCalls(t)); n != 1 {
		t.Errorf("re-run enrolled again (%d calls)", n)
	}

	// A new release on the server: the binary is replaced, the vehicle
	// stays enrolled.
	writeFile(t, filepath.Join(e.agents, agentdist.BinaryName(arch)), fmt.Sprintf(fakeAgent, "2", arch))
	r = e.install(t, "", "--token", "fpe_good_token", "--prefix", prefix)
	r.mustSucceed(t)
	if !strings.Contains(r.stdout, "installed "+bin+" (fleetplane-agent fake-2") || len(e.enrollCalls(t)) != 1 {
		t.Errorf("upgrade: stdout:\n%s\nenroll calls %q", r.stdout, e.enrollCalls(t))
	}

	// --force enrolls again.
	e.install(t, "", "--token", "fpe_other", "--prefix", prefix, "--force").mustSucceed(t)
	if calls := e.enrollCalls(t); len(calls) != 2 || !strings.HasSuffix(calls[1], "--force") {
		t.Errorf("--force: enroll calls %q", calls)
	}

	// --force with a bad token on an enrolled machine: fails, and keeps
	// what was there.
	e.install(t, "", "--token", "fpe_bad", "--prefix", prefix, "--force").mustFail(t, "enrollment failed: fleetplane-agent: enroll: the enrollment token is not valid")
	if _, err := os.Stat(filepath.Join(etc, "agent.yaml")); err != nil {
		t.Errorf("a failed re-enrollment removed the config: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(bin)); len(entries) != 1 {
		t.Errorf("bin dir after failure holds %v", entries)
	}
}

func TestInstallScriptFailuresChangeNothing(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t)
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skipf("the agent is built for amd64 and arm64 only; this is %s (CI runs it on amd64)", runtime.GOARCH)
	}
	// fakeUname reports Linux on machine.
	fakeUname := func(machine string) string {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "uname"), "#!/bin/sh\ncase $1 in -m) echo "+machine+" ;; *) echo Linux ;; esac\n")
		return dir
	}
	closed := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return "http://" + addr
	}()
	nothingAt := func(t *testing.T, prefix string) {
		t.Helper()
		if _, err := os.Stat(prefix); !os.IsNotExist(err) {
			entries, _ := filepath.Glob(filepath.Join(prefix, "*", "*"))
			t.Fatalf("the failed install left %s behind: %v", prefix, entries)
		}
		if len(e.enrollCalls(t)) > 1 {
			t.Fatalf("enroll called: %q", e.enrollCalls(t))
		}
	}
	t.Run("bad token", func(t *testing.T) {
		prefix := filepath.Join(t.TempDir(), "p")
		e.install(t, "", "--token", "fpe_bad_token", "--prefix", prefix).
			mustFail(t, "enrollment failed: fleetplane-agent: enroll: the enrollment token is not valid (unknown, expired, revoked or used up)")
		nothingAt(t, prefix)
	})
	t.Run("no token", func(t *testing.T) {
		prefix := filepath.Join(t.TempDir(), "p")
		e.install(t, "", "--prefix", prefix).mustFail(t, "--token is required")
		nothingAt(t, prefix)
	})
	t.Run("unreachable server", func(t *testing.T) {
		prefix := filepath.Join(t.TempDir(), "p")
		// The script as served by a control plane that has gone away since.
		script := filepath.Join(t.TempDir(), "install.sh")
		writeFile(t, script, string(agentdist.Script(closed)))
		e.runScript(t, "", []string{"SCRIPT=" + script}, `sh "$SCRIPT" "$@"`, "--token", "fpe_good", "--prefix", prefix).
			mustFail(t, "cannot reach the Fleetplane server at "+closed)
		nothingAt(t, prefix)
	})
	t.Run("unsupported architecture", func(t *testing.T) {
		prefix := filepath.Join(t.TempDir(), "p")
		e.install(t, fakeUname("riscv64"), "--token", "fpe_good", "--prefix", prefix).
			mustFail(t, "unsupported architecture riscv64: the Fleetplane agent is built for arm64 (aarch64) and amd64 (x86_64)")
		nothingAt(t, prefix)
	})
	t.Run("checksum mismatch", func(t *testing.T) {
		prefix := filepath.Join(t.TempDir(), "p")
		// aarch64 → arm64, whose checksum file is made wrong here.
		sumFile := filepath.Join(e.agents, agentdist.BinaryName("arm64")+agentdist.ChecksumSuffix)
		writeFile(t, sumFile, strings.Repeat("ab", 32)+"  "+agentdist.BinaryName("arm64")+"\n")
		defer os.Remove(sumFile)
		e.install(t, fakeUname("aarch64"), "--token", "fpe_good", "--prefix", prefix).
			mustFail(t, "checksum mismatch for fleetplane-agent-linux-arm64: expected "+strings.Repeat("ab", 32))
		nothingAt(t, prefix)
	})
	t.Run("no binary for the architecture", func(t *testing.T) {
		prefix := filepath.Join(t.TempDir(), "p")
		bin := filepath.Join(e.agents, agentdist.BinaryName("arm64"))
		keep := mustRead(t, bin)
		os.Remove(bin)
		defer writeFile(t, bin, keep)
		e.install(t, fakeUname("arm64"), "--token", "fpe_good", "--prefix", prefix).
			mustFail(t, "the server has no checksum for the linux/arm64 agent")
		nothingAt(t, prefix)
	})
	t.Run("arm64 through aarch64", func(t *testing.T) {
		prefix := filepath.Join(t.TempDir(), "p")
		r := e.install(t, fakeUname("aarch64"), "--token", "fpe_good", "--prefix", prefix)
		r.mustSucceed(t)
		if !strings.Contains(mustRead(t, filepath.Join(prefix, "bin", "fleetplane-agent")), "linux/arm64") {
			t.Error("aarch64 did not get the arm64 binary")
		}
	})
	t.Run("bad option", func(t *testing.T) {
		e.install(t, "", "--tokn", "x").mustFail(t, "unknown option --tokn")
	})
}

// TestInstallScriptRealAgent installs the real agent, built here, with a
// real enrollment token: the agent's own enroll talks to this server.
func TestInstallScriptRealAgent(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("-short: this test builds the agent binary (CI runs it: make test has no -short)")
	}
	arch := runtime.GOARCH
	if runtime.GOOS != "linux" || (arch != "amd64" && arch != "arm64") {
		t.Skip("needs linux/amd64 or linux/arm64")
	}
	e := newInstallEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := agentdist.Build(ctx, e.agents, agentdist.BuildOptions{ModuleDir: "../..", Version: "install-test", Arches: []string{arch}}); err != nil {
		t.Fatal(err)
	}
	help, _ := exec.Command(filepath.Join(e.agents, agentdist.BinaryName(arch)), "enroll", "--help").CombinedOutput()
	if strings.Contains(string(help), "unknown command") {
		t.Fatalf("fleetplane-agent has no enroll command:\n%s", help)
	}
	a := e.signup("Install Co")
	e.createFleet(a.key, "field")
	tok := e.createToken(a.key, "field", tokenIn(1))
	prefix := filepath.Join(t.TempDir(), "p")

	// An unknown token: the agent's message, one line, nothing installed.
	bad := e.runScript(t, "", nil, `curl -fsSL "$URL/install.sh" | sh -s -- "$@"`, "--token", tok.Token+"x", "--prefix", prefix)
	t.Logf("bad token: %s", bad.stderr)
	bad.mustFail(t, "enrollment failed: fleetplane-agent: enroll: ")
	if !strings.Contains(bad.stderr, "token") {
		t.Errorf("the message does not say what was wrong: %s", bad.stderr)
	}
	if _, err := os.Stat(prefix); !os.IsNotExist(err) {
		t.Fatalf("a failed enrollment left %s", prefix)
	}

	// The install_command of the token, without sudo, with --prefix.
	cmd := strings.Replace(tok.InstallCommand, "sudo sh", "sh", 1) + ` --vehicle-id real-1 --prefix "$PREFIX"`
	r := e.runScript(t, "", []string{"PREFIX=" + prefix}, cmd)
	r.mustSucceed(t)
	if !strings.Contains(r.stdout, "install-test") {
		t.Errorf("stdout:\n%s", r.stdout)
	}
	if !strings.Contains(r.stdout, "enrolled as vehicle real-1") {
		t.Errorf("stdout:\n%s", r.stdout)
	}
	e.do("GET", "/v1/fleets/field/vehicles/real-1", a.key, nil).must(t, 200, nil)
	if _, err := os.Stat(filepath.Join(prefix, "etc", "fleetplane-agent", "agent.yaml")); err != nil {
		t.Fatal(err)
	}
	// Re-running with the same (now used up) token changes nothing.
	r = e.runScript(t, "", []string{"PREFIX=" + prefix}, cmd)
	r.mustSucceed(t)
	if !strings.Contains(r.stdout, "already enrolled") || !strings.Contains(r.stdout, "up to date") {
		t.Errorf("re-run stdout:\n%s", r.stdout)
	}
}

func TestInstallEndpoints(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t)
	name := agentdist.BinaryName("arm64")
	bin := mustRead(t, filepath.Join(e.agents, name))
	sum := sha256.Sum256([]byte(bin))
	hexSum := hex.EncodeToString(sum[:])

	r := e.do("GET", "/install.sh", "", nil).must(t, 200, nil)
	if ct := r.header.Get("Content-Type"); ct != "text/plain; charset=utf-8" || r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("install.sh headers %v", r.header)
	}
	if !strings.Contains(string(r.body), "FLEETPLANE_SERVER_URL='"+e.srv.URL+"'") {
		t.Errorf("script not bound to %s", e.srv.URL)
	}
	h := e.do("HEAD", "/install.sh", "", nil).must(t, 200, nil)
	if len(h.body) != 0 || h.header.Get("Content-Length") != fmt.Sprint(len(r.body)) {
		t.Errorf("HEAD install.sh: %d bytes, Content-Length %s", len(h.body), h.header.Get("Content-Length"))
	}
	// A query string is ignored (cache busters).
	e.do("GET", "/install.sh?v=2", "", nil).must(t, 200, nil)

	r = e.do("GET", "/downloads/"+name, "", nil).must(t, 200, nil)
	if string(r.body) != bin || r.header.Get("Content-Type") != "application/octet-stream" ||
		r.header.Get("ETag") != `"`+hexSum+`"` || r.header.Get("Cache-Control") != "public, no-cache" || r.header.Get("Last-Modified") == "" {
		t.Errorf("binary: %v", r.header)
	}
	h = e.do("HEAD", "/downloads/"+name, "", nil).must(t, 200, nil)
	if len(h.body) != 0 || h.header.Get("Content-Length") != fmt.Sprint(len(bin)) || h.header.Get("ETag") == "" {
		t.Errorf("HEAD binary: %v", h.header)
	}
	e.do("GET", "/downloads/"+name, "", nil, withHeader("If-None-Match", `"`+hexSum+`"`)).must(t, http.StatusNotModified, nil)
	r = e.do("GET", "/downloads/"+name+".sha256", "", nil).must(t, 200, nil)
	if string(r.body) != hexSum+"  "+name+"\n" || r.header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Errorf("checksum %q %v", r.body, r.header)
	}

	for _, path := range []string{"/downloads/fleetplane-agent-linux-386", "/downloads/install.sh",
		"/downloads/..%2f..%2fetc%2fpasswd", "/downloads/%2e%2e", "/downloads/" + name + "%00"} {
		p := e.do("GET", path, "", nil).problem(t, http.StatusNotFound)
		if path == "/downloads/fleetplane-agent-linux-386" && !strings.Contains(p.Detail, "fleetplane-agent-linux-arm64") {
			t.Errorf("404 detail %q", p.Detail)
		}
	}
	e.do("GET", "/downloads/../../etc/passwd", "", nil).problem(t, http.StatusNotFound)
	e.do("HEAD", "/downloads/nope", "", nil).must(t, http.StatusNotFound, nil)
	e.do("POST", "/downloads/"+name, "", nil).problem(t, http.StatusMethodNotAllowed)

	// No agent directory configured.
	bare := newEnv(t)
	p := bare.do("GET", "/downloads/"+name, "", nil).problem(t, http.StatusNotFound)
	if !strings.Contains(p.Detail, "no agent binaries") {
		t.Errorf("without agents: %q", p.Detail)
	}
	// The public URL wins over the request's host.
	pub := newEnv(t, func(o *api.Options) { o.PublicURL = "https://cp.example.com/" })
	r = pub.do("GET", "/install.sh", "", nil).must(t, 200, nil)
	if !strings.Contains(string(r.body), "FLEETPLANE_SERVER_URL='https://cp.example.com'\n") {
		t.Error("script not bound to the public URL")
	}
}

func writeFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), 0o755); err != nil {
		tb.Fatal(err)
	}
}

func mustRead(tb testing.TB, path string) string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}
