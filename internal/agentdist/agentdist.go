// Package agentdist distributes the Fleetplane agent: the install script the
// control plane serves at /install.sh (Script) and the directory of static
// agent binaries it serves at /downloads/ (Dir), which `fleetplane dev` can
// fill by building the agent on start (ForDev, build.go).
//
// It imports only the standard library; the HTTP endpoints live in
// controlplane/api, the configuration in cmd/fleetplane.
package agentdist

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// installScript is the template of /install.sh; Script fills it in.
//
//go:embed install.sh
var installScript string

// SystemdUnit is deploy/systemd/fleetplane-agent.service (a test keeps the
// copy in this package equal to it); the install script carries it.
//
//go:embed fleetplane-agent.service
var SystemdUnit string

const (
	serverURLPlaceholder = "@@SERVER_URL@@"
	unitPlaceholder      = "@@SYSTEMD_UNIT@@\n" // a line of its own
)

// Arches are the architectures the agent is built and served for.
var Arches = []string{"amd64", "arm64"}

// BinaryName is the download name of the agent for linux/arch.
func BinaryName(arch string) string { return "fleetplane-agent-linux-" + arch }

// ChecksumSuffix names the checksum file of a binary: "<hex>  <name>\n",
// as sha256sum writes it.
const ChecksumSuffix = ".sha256"

// Downloads is the fixed allow-list of files under /downloads/: each
// binary and its checksum. Nothing else in the directory is ever served.
var Downloads = func() []string {
	var out []string
	for _, a := range Arches {
		out = append(out, BinaryName(a), BinaryName(a)+ChecksumSuffix)
	}
	return out
}()

// Script returns the install script bound to the control plane at
// serverURL (scheme://host[:port][/path], no trailing slash needed). The
// URL is single-quoted for sh, so whatever a Host header carried stays one
// inert word.
func Script(serverURL string) []byte {
	s := strings.Replace(installScript, serverURLPlaceholder, shellQuote(strings.TrimRight(serverURL, "/")), 1)
	unit := SystemdUnit
	if !strings.HasSuffix(unit, "\n") {
		unit += "\n"
	}
	return []byte(strings.Replace(s, unitPlaceholder, unit, 1))
}

// shellQuote returns s as one single-quoted sh word.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Errors of Dir.Open.
var (
	// ErrNotFound: the name is not on the allow-list or the file is missing.
	ErrNotFound = errors.New("not found")
	// ErrBuilding: the binaries are being built (fleetplane dev); retry soon.
	ErrBuilding = errors.New("the agent binaries are being built")
	// ErrBuildFailed: building them failed (fleetplane dev logs why).
	ErrBuildFailed = errors.New("building the agent binaries failed")
)

// Dir is a directory of agent binaries (fleetplane-agent-linux-<arch>) and
// their checksum files, as `make agents` writes them into dist/. A missing
// checksum file is computed from the binary. Safe for concurrent use; the
// directory is read on every Open, so replacing a binary (by rename) takes
// effect at once.
type Dir struct {
	path string

	mu       sync.Mutex
	sums     map[string]sumEntry // binary name → checksum of a size+mtime
	building bool
	buildErr error
}

type sumEntry struct {
	size  int64
	mtime time.Time
	sum   string
}

// NewDir serves the agent binaries in path.
func NewDir(path string) *Dir {
	return &Dir{path: path, sums: map[string]sumEntry{}}
}

// Path is the directory.
func (d *Dir) Path() string { return d.path }

// File is one open download. Close it.
type File struct {
	Name    string
	ModTime time.Time
	// SHA256 is the hex checksum of the binary (the file itself, or the
	// binary a checksum file describes): a strong ETag for both.
	SHA256 string
	// Binary is true for an executable, false for a checksum file.
	Binary  bool
	Content io.ReadSeeker
	close   func() error
}

// Close releases the file.
func (f *File) Close() error {
	if f.close == nil {
		return nil
	}
	return f.close()
}

// Open opens the download name: ErrNotFound unless it is on the
// allow-list and present, ErrBuilding (or the build's error) while
// `fleetplane dev` builds the binaries and none are there yet.
func (d *Dir) Open(name string) (*File, error) {
	if !slices.Contains(Downloads, name) {
		return nil, ErrNotFound
	}
	binName := strings.TrimSuffix(name, ChecksumSuffix)
	bin, err := os.Open(filepath.Join(d.path, binName))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			if err := d.buildState(); err != nil {
				return nil, err
			}
			return nil, ErrNotFound
		}
		return nil, err
	}
	sum, st, err := d.checksum(bin, binName)
	if err != nil {
		bin.Close()
		return nil, err
	}
	if name == binName {
		return &File{Name: name, ModTime: st.ModTime(), SHA256: sum, Binary: true, Content: bin, close: bin.Close}, nil
	}
	bin.Close()
	// A checksum file from `make agents` is served as written: a binary
	// damaged on disk since then then fails verification on the vehicle.
	if f, err := os.Open(filepath.Join(d.path, name)); err == nil {
		fst, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		return &File{Name: name, ModTime: fst.ModTime(), SHA256: sum, Content: f, close: f.Close}, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	line := sum + "  " + binName + "\n"
	return &File{Name: name, ModTime: st.ModTime(), SHA256: sum, Content: strings.NewReader(line)}, nil
}

// checksum returns the SHA-256 of the open binary, cached per size and
// modification time (a 20 MB binary takes tens of milliseconds to hash).
func (d *Dir) checksum(f *os.File, name string) (string, os.FileInfo, error) {
	st, err := f.Stat()
	if err != nil {
		return "", nil, err
	}
	if !st.Mode().IsRegular() {
		return "", nil, fmt.Errorf("%s is not a regular file", name)
	}
	d.mu.Lock()
	e, ok := d.sums[name]
	d.mu.Unlock()
	if ok && e.size == st.Size() && e.mtime.Equal(st.ModTime()) {
		return e.sum, st, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", nil, err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	d.mu.Lock()
	d.sums[name] = sumEntry{size: st.Size(), mtime: st.ModTime(), sum: sum}
	d.mu.Unlock()
	return sum, st, nil
}

func (d *Dir) buildState() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.building {
		return ErrBuilding
	}
	if d.buildErr != nil {
		return fmt.Errorf("%w: %v", ErrBuildFailed, d.buildErr)
	}
	return nil
}

func (d *Dir) setBuilding(building bool, err error) {
	d.mu.Lock()
	d.building, d.buildErr = building, err
	d.mu.Unlock()
}
