package agentdist

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// AgentPackage is the agent's main package, relative to the module root.
const AgentPackage = "./cmd/fleetplane-agent"

// BuildOptions configure Build.
type BuildOptions struct {
	// Go is the go command; default "go" from PATH.
	Go string
	// ModuleDir is the root of the fleetplane module (it holds
	// cmd/fleetplane-agent); default the working directory.
	ModuleDir string
	// Version is stamped into the binary (main.version); default "dev".
	Version string
	// Arches to build; default Arches.
	Arches []string
}

// Build cross-compiles the static agent (CGO_ENABLED=0, GOOS=linux) for
// each architecture into dir, as `make agents` does, and puts each binary
// in place with a rename. It writes no checksum files: Dir computes them
// from the binary, so a download and its checksum can never disagree while
// a rebuild replaces the binary (a stale one from an earlier `make agents`
// is removed).
func Build(ctx context.Context, dir string, o BuildOptions) error {
	if o.Go == "" {
		o.Go = "go"
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if len(o.Arches) == 0 {
		o.Arches = Arches
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for _, arch := range o.Arches {
		name := BinaryName(arch)
		tmp := filepath.Join(abs, "."+name+".tmp")
		cmd := exec.CommandContext(ctx, o.Go, "build", "-trimpath",
			"-ldflags", "-s -w -X main.version="+o.Version, "-o", tmp, AgentPackage)
		cmd.Dir = o.ModuleDir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("go build %s for linux/%s: %v: %s", AgentPackage, arch, err, strings.TrimSpace(out.String()))
		}
		if err := os.Remove(filepath.Join(abs, name+ChecksumSuffix)); err != nil && !os.IsNotExist(err) {
			os.Remove(tmp)
			return err
		}
		if err := os.Rename(tmp, filepath.Join(abs, name)); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	return nil
}

// DevOptions configure ForDev.
type DevOptions struct {
	// AgentDir is the configured directory (--agent-dir); when set it is
	// served as it is.
	AgentDir string
	// StateDir is fleetplane dev's state directory; builds go to
	// StateDir/dist.
	StateDir string
	// ModuleDir is where the fleetplane source may be (default the
	// working directory, where `make run` starts dev).
	ModuleDir string
	// Go is the go command; default "go" when it is on PATH.
	Go     string
	Logger *slog.Logger
}

// ForDev returns the agent directory of `fleetplane dev`, so that the
// install one-liner works locally:
//
//  1. AgentDir, when configured, as it is;
//  2. else, with a Go toolchain on PATH and the agent's source in
//     ModuleDir: StateDir/dist, built in the background until ctx ends
//     (the go build cache makes a restart cheap; a previous build is served
//     meanwhile, and downloads answer 503 "being built" when there is none);
//  3. else ModuleDir/dist when `make agents` filled it;
//  4. else StateDir/dist as an earlier build left it; when empty, downloads
//     answer 404 and the log says how to get binaries.
func ForDev(ctx context.Context, o DevOptions) *Dir {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.AgentDir != "" {
		log.Info("agent downloads", "dir", o.AgentDir)
		return NewDir(o.AgentDir)
	}
	if o.ModuleDir == "" {
		o.ModuleDir = "."
	}
	goCmd := o.Go
	if goCmd == "" {
		goCmd, _ = exec.LookPath("go")
	}
	out := filepath.Join(o.StateDir, "dist")
	if _, err := os.Stat(filepath.Join(o.ModuleDir, AgentPackage, "main.go")); err == nil && goCmd != "" {
		d := NewDir(out)
		d.setBuilding(true, nil)
		go func() {
			start := time.Now()
			log.Info("building the agent for /downloads in the background", "dir", out)
			err := Build(ctx, out, BuildOptions{Go: goCmd, ModuleDir: o.ModuleDir})
			d.setBuilding(false, err)
			switch {
			case ctx.Err() != nil:
			case err != nil:
				log.Error("building the agent failed: /downloads has no binaries", "err", err)
			default:
				log.Info("agent built: the install one-liner works", "dir", out, "took", time.Since(start).Round(time.Millisecond))
			}
		}()
		return d
	}
	dist := filepath.Join(o.ModuleDir, "dist")
	if _, err := os.Stat(filepath.Join(dist, BinaryName(Arches[0]))); err == nil {
		log.Info("agent downloads from make agents", "dir", dist)
		return NewDir(dist)
	}
	if _, err := os.Stat(filepath.Join(out, BinaryName(Arches[0]))); err == nil {
		log.Info("agent downloads from an earlier build (no Go toolchain or source here to rebuild)", "dir", out)
		return NewDir(out)
	}
	log.Warn("no agent binaries for /downloads: run `make agents`, or pass --agent-dir", "dir", out)
	return NewDir(out)
}
