package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"

	"github.com/fleetplane/fleetplane/edge/enroll"
)

// EnrollOptions are the inputs of `fleetplane-agent enroll`.
type EnrollOptions struct {
	Server    string
	Token     string
	VehicleID string // optional
	Dir       string // config directory (DefaultDir)
	DataDir   string // data directory (DefaultDataDir)
	Force     bool   // replace an existing enrollment
	Version   string // agent version, sent for display
	Hostname  string // "" = os.Hostname
	HTTP      *http.Client
}

// ErrEnrolled is returned when the directory already holds an enrollment
// and Force is not set.
var ErrEnrolled = errors.New("already enrolled")

// Enroll generates the vehicle's nkey, enrolls it with the control plane and
// writes agent.yaml, enrollment.json, the seed, the creds and the CA bundle
// into o.Dir. Nothing is written unless the control plane accepted the
// token; the seed never leaves the machine (only its public key is sent).
func Enroll(ctx context.Context, o EnrollOptions) (*Config, *enroll.Credentials, error) {
	if o.Server == "" || o.Token == "" {
		return nil, nil, errors.New("--server and --token are required")
	}
	if o.Dir == "" {
		o.Dir = DefaultDir
	}
	if o.DataDir == "" {
		o.DataDir = DefaultDataDir
	}
	var err error
	if o.Dir, err = filepath.Abs(o.Dir); err != nil {
		return nil, nil, err
	}
	if o.DataDir, err = filepath.Abs(o.DataDir); err != nil {
		return nil, nil, err
	}
	cfg := DefaultConfig(o.Server, o.Dir, o.DataDir)
	if !o.Force {
		if e, err := LoadEnrollment(cfg.EnrollmentFile); err == nil {
			return nil, nil, fmt.Errorf("%w as vehicle %q of fleet %q (%s): re-run with --force to replace it", ErrEnrolled, e.Vehicle.VehicleID, e.Vehicle.Fleet, o.Dir)
		} else if _, serr := os.Stat(cfg.path); serr == nil {
			return nil, nil, fmt.Errorf("%w (%s exists): re-run with --force to replace it", ErrEnrolled, cfg.path)
		}
	}
	// Fail on an unwritable directory before spending the token.
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("config directory: %w", err)
	}
	if err := checkWritable(o.Dir); err != nil {
		return nil, nil, fmt.Errorf("config directory %s is not writable (run as root?): %w", o.Dir, err)
	}
	kp, err := enroll.NewKey()
	if err != nil {
		return nil, nil, err
	}
	pub, _ := kp.PublicKey()
	host := o.Hostname
	if host == "" {
		host, _ = os.Hostname()
	}
	c := &enroll.Client{Server: o.Server, HTTP: o.HTTP, UserAgent: "fleetplane-agent/" + o.Version}
	creds, err := c.Enroll(ctx, enroll.Request{Token: o.Token, PublicKey: pub, VehicleID: o.VehicleID,
		Hostname: host, Arch: runtime.GOARCH, AgentVersion: o.Version})
	if err != nil {
		var p *enroll.Problem
		if errors.As(err, &p) && p.Status == http.StatusUnauthorized {
			return nil, nil, fmt.Errorf("enrollment token rejected (%s); ask the fleet's operator for a new token", p.Detail)
		}
		return nil, nil, err
	}
	if err := enroll.WriteSeed(cfg.SeedFile, kp); err != nil {
		return nil, nil, fmt.Errorf("write seed: %w", err)
	}
	if err := enroll.WriteCreds(cfg.CredsFile, creds.JWT, kp); err != nil {
		return nil, nil, fmt.Errorf("write creds: %w", err)
	}
	ca := filepath.Join(o.Dir, CAName)
	if creds.CABundle != nil && *creds.CABundle != "" {
		if err := enroll.WriteFileAtomic(ca, []byte(*creds.CABundle), 0o644); err != nil {
			return nil, nil, fmt.Errorf("write CA bundle: %w", err)
		}
		cfg.CAFile = ca
	} else {
		_ = os.Remove(ca)
	}
	if err := writeEnrollment(cfg.EnrollmentFile, creds); err != nil {
		return nil, nil, fmt.Errorf("write enrollment: %w", err)
	}
	if old, err := LoadConfig(cfg.path); err == nil && o.Force {
		// Keep the operator's settings (listeners, buffer, MAVLink).
		old.Server, old.DataDir, old.CAFile = o.Server, o.DataDir, cfg.CAFile
		cfg = old
	}
	if err := cfg.Write(); err != nil {
		return nil, nil, fmt.Errorf("write config: %w", err)
	}
	if err := os.MkdirAll(o.DataDir, 0o750); err != nil {
		return nil, nil, fmt.Errorf("data directory: %w", err)
	}
	return cfg, creds, nil
}

func checkWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return err
	}
	name := f.Name()
	_ = f.Close()
	return os.Remove(name)
}
