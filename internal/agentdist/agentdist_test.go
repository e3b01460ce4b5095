package agentdist

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestUnitIsTheDeployedOne(t *testing.T) {
	b, err := os.ReadFile("../../deploy/systemd/fleetplane-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != SystemdUnit {
		t.Fatal("internal/agentdist/fleetplane-agent.service differs from deploy/systemd/fleetplane-agent.service: copy the deploy one over")
	}
	if strings.Contains(SystemdUnit, "FLEETPLANE_UNIT_EOF") {
		t.Fatal("the unit contains the script's here-document delimiter")
	}
}

func TestScriptBindsTheURLAsOneWord(t *testing.T) {
	for _, u := range []string{
		"https://fleetplane.example.com",
		"http://127.0.0.1:8080/",
		"http://evil$(touch /tmp/pwned)`id`'\"; rm -rf /",
	} {
		s := string(Script(u))
		if strings.Contains(s, serverURLPlaceholder) || strings.Contains(s, unitPlaceholder) {
			t.Fatalf("placeholders left in the script for %q", u)
		}
		// Ask sh what the variable holds.
		probe := strings.Replace(s, "\nmain \"$@\"\n", "\nprintf '%s' \"$FLEETPLANE_SERVER_URL\"\n", 1)
		out, err := exec.Command("sh", "-c", probe).CombinedOutput()
		if err != nil {
			t.Fatalf("%q: %v: %s", u, err, out)
		}
		if want := strings.TrimRight(u, "/"); string(out) != want {
			t.Errorf("FLEETPLANE_SERVER_URL = %q, want %q", out, want)
		}
	}
}

func TestScriptSyntaxAndShellcheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "install.sh")
	if err := os.WriteFile(path, Script("https://fleetplane.example.com"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("sh", "-n", path).CombinedOutput(); err != nil {
		t.Fatalf("sh -n: %v: %s", err, out)
	}
	if !strings.HasSuffix(string(Script("x")), "main \"$@\"\n") {
		t.Fatal("the script must end by calling main, so that a cut download runs nothing")
	}
	sc, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Skip("shellcheck not installed (apt-get install shellcheck)")
	}
	if out, err := exec.Command(sc, "-s", "sh", path).CombinedOutput(); err != nil {
		t.Fatalf("shellcheck: %v\n%s", err, out)
	}
}

func TestDirServesOnlyTheAllowList(t *testing.T) {
	dir := t.TempDir()
	bin := []byte("\x7fELF fake agent")
	mustWrite(t, filepath.Join(dir, BinaryName("amd64")), bin)
	mustWrite(t, filepath.Join(dir, "secret.txt"), []byte("no"))
	d := NewDir(dir)
	for _, name := range []string{"", "secret.txt", "../agentdist_test.go", "fleetplane-agent-linux-amd64/", "fleetplane-agent-linux-386", "fleetplane-agent-linux-amd64.sha512"} {
		if _, err := d.Open(name); !errors.Is(err, ErrNotFound) {
			t.Errorf("Open(%q) = %v, want ErrNotFound", name, err)
		}
	}
	// On the list but missing.
	for _, name := range []string{BinaryName("arm64"), BinaryName("arm64") + ChecksumSuffix} {
		if _, err := d.Open(name); !errors.Is(err, ErrNotFound) {
			t.Errorf("Open(%q) = %v, want ErrNotFound", name, err)
		}
	}
	sum := sha256.Sum256(bin)
	want := hex.EncodeToString(sum[:])
	f := mustOpen(t, d, BinaryName("amd64"))
	if !f.Binary || f.SHA256 != want || string(readAll(t, f)) != string(bin) {
		t.Errorf("binary: %+v", f)
	}
	// No checksum file: computed, in sha256sum's format.
	f = mustOpen(t, d, BinaryName("amd64")+ChecksumSuffix)
	if got := string(readAll(t, f)); f.Binary || got != want+"  "+BinaryName("amd64")+"\n" {
		t.Errorf("computed checksum file %q", got)
	}
	// A checksum file on disk is served as written, even when wrong: the
	// vehicle's verification is what catches a damaged binary.
	mustWrite(t, filepath.Join(dir, BinaryName("amd64")+ChecksumSuffix), []byte(strings.Repeat("0", 64)+"  x\n"))
	f = mustOpen(t, d, BinaryName("amd64")+ChecksumSuffix)
	if got := string(readAll(t, f)); !strings.HasPrefix(got, strings.Repeat("0", 64)) || f.SHA256 != want {
		t.Errorf("checksum file on disk: %q, etag %s", got, f.SHA256)
	}
	// A replaced binary gets a new checksum (cache keyed by size and mtime).
	bin2 := []byte("\x7fELF fake agent, version 2")
	mustWrite(t, filepath.Join(dir, BinaryName("amd64")), bin2)
	sum2 := sha256.Sum256(bin2)
	if f := mustOpen(t, d, BinaryName("amd64")); f.SHA256 != hex.EncodeToString(sum2[:]) {
		t.Errorf("after replacing the binary: checksum %s", f.SHA256)
	}
}

func TestDirWhileBuilding(t *testing.T) {
	d := NewDir(t.TempDir())
	d.setBuilding(true, nil)
	if _, err := d.Open(BinaryName("arm64")); !errors.Is(err, ErrBuilding) {
		t.Fatalf("while building: %v", err)
	}
	d.setBuilding(false, errors.New("compile error"))
	if _, err := d.Open(BinaryName("arm64")); !errors.Is(err, ErrBuildFailed) || !strings.Contains(err.Error(), "compile error") {
		t.Fatalf("after a failed build: %v", err)
	}
	if _, err := d.Open("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("not on the list while building: %v", err)
	}
}

// TestBuild cross-compiles the real agent for this machine's architecture
// (the go build cache keeps repeated runs cheap).
func TestBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	arch := runtime.GOARCH
	if arch != "amd64" && arch != "arm64" {
		t.Skip("agent is built for amd64 and arm64 only")
	}
	out := t.TempDir()
	mustWrite(t, filepath.Join(out, BinaryName(arch)+ChecksumSuffix), []byte("stale"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := Build(ctx, out, BuildOptions{ModuleDir: "../..", Version: "test-1", Arches: []string{arch}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, BinaryName(arch)+ChecksumSuffix)); !os.IsNotExist(err) {
		t.Errorf("a stale checksum file must be removed: %v", err)
	}
	if runtime.GOOS == "linux" {
		v, err := exec.Command(filepath.Join(out, BinaryName(arch)), "version").Output()
		if err != nil || !strings.Contains(string(v), "test-1") {
			t.Errorf("built agent version: %q, %v", v, err)
		}
	}
	// Built with the wrong module directory: a clear error.
	if err := Build(ctx, t.TempDir(), BuildOptions{ModuleDir: t.TempDir(), Arches: []string{arch}}); err == nil || !strings.Contains(err.Error(), "go build") {
		t.Errorf("build outside the module: %v", err)
	}
}

func TestForDevPrefersTheConfiguredDir(t *testing.T) {
	d := ForDev(context.Background(), DevOptions{AgentDir: "/opt/agents", StateDir: t.TempDir()})
	if d.Path() != "/opt/agents" {
		t.Fatalf("dir %s", d.Path())
	}
	// No source, no dist: an empty dir under the state directory.
	state := t.TempDir()
	d = ForDev(context.Background(), DevOptions{StateDir: state, ModuleDir: t.TempDir()})
	if d.Path() != filepath.Join(state, "dist") {
		t.Fatalf("dir %s", d.Path())
	}
	// make agents output in ModuleDir/dist.
	mod := t.TempDir()
	mustWrite(t, filepath.Join(mod, "dist", BinaryName(Arches[0])), []byte("x"))
	d = ForDev(context.Background(), DevOptions{StateDir: state, ModuleDir: mod})
	if d.Path() != filepath.Join(mod, "dist") {
		t.Fatalf("dir %s", d.Path())
	}
}

func mustWrite(tb testing.TB, path string, b []byte) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o755); err != nil {
		tb.Fatal(err)
	}
}

func mustOpen(tb testing.TB, d *Dir, name string) *File {
	tb.Helper()
	f, err := d.Open(name)
	if err != nil {
		tb.Fatalf("Open(%q): %v", name, err)
	}
	tb.Cleanup(func() { f.Close() })
	return f
}

func readAll(tb testing.TB, f *File) []byte {
	tb.Helper()
	b, err := io.ReadAll(f.Content)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
