// Package agent is the vehicle agent's orchestration: the files of an
// enrollment (Enroll), the running agent (Run: embedded leaf, local
// telemetry stream, backlog alerts, JWT renewal, the forwarder hook,
// /healthz, /metrics and /status) and the status report.
//
// It may import edge/enroll, edge/leaf, internal/natsauth, nats-server,
// nats.go and client_golang; never the control plane.
package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/fleetplane/fleetplane/edge/enroll"
	"github.com/fleetplane/fleetplane/edge/leaf"
	"go.yaml.in/yaml/v3"
)

// Default locations of an installed agent.
const (
	DefaultDir     = "/etc/fleetplane-agent"
	DefaultDataDir = "/var/lib/fleetplane-agent"
	ConfigName     = "agent.yaml"
	DefaultListen  = "127.0.0.1:4222"
	DefaultHTTP    = "127.0.0.1:9090"
)

// Files of an enrollment, inside the config directory.
const (
	SeedName       = "vehicle.nk"      // the nkey seed, 0600, never sent anywhere
	CredsName      = "vehicle.creds"   // JWT + seed, 0600, rewritten on renewal
	CAName         = "ca.pem"          // hub CA bundle (absent = system roots)
	EnrollmentName = "enrollment.json" // the control plane's last answer, without the JWT
)

// Config is agent.yaml: written by enroll, edited by the operator, read by
// run. Relative paths are relative to the file's directory.
type Config struct {
	// Server is the control plane's URL (enrollment and renewal).
	Server string `yaml:"server"`
	// DataDir holds the local JetStream store (jetstream/).
	DataDir string `yaml:"data_dir"`
	// Listen is the NATS client listener for on-vehicle services.
	Listen string `yaml:"listen"`
	// HTTP serves /healthz, /metrics and /status ("" or "off" = none).
	HTTP string `yaml:"http"`

	// Sync is the local store's fsync policy: "always", or an interval
	// ("1s", the default). See docs/agent.md.
	Sync string `yaml:"sync"`
	// BufferBytes bounds the local telemetry stream (oldest dropped when full).
	BufferBytes int64 `yaml:"buffer_bytes"`

	PingInterval      time.Duration `yaml:"ping_interval"`
	MaxPingsOut       int           `yaml:"max_pings_out"`
	ReconnectInterval time.Duration `yaml:"reconnect_interval"`

	SeedFile       string `yaml:"seed_file"`
	CredsFile      string `yaml:"creds_file"`
	CAFile         string `yaml:"ca_file,omitempty"`
	EnrollmentFile string `yaml:"enrollment_file"`

	// MAVLink is the gateway's section, decoded by edge/mavlink.
	MAVLink *yaml.Node `yaml:"mavlink,omitempty"`

	// path is where the config was read from.
	path string
}

// DefaultConfig is the configuration enroll writes for dir and dataDir.
func DefaultConfig(server, dir, dataDir string) *Config {
	return &Config{
		Server:            server,
		DataDir:           dataDir,
		Listen:            DefaultListen,
		HTTP:              DefaultHTTP,
		Sync:              leaf.DefaultSyncInterval.String(),
		BufferBytes:       leaf.DefaultBufferBytes,
		PingInterval:      leaf.DefaultPingInterval,
		MaxPingsOut:       leaf.DefaultMaxPingsOut,
		ReconnectInterval: leaf.DefaultReconnectInterval,
		SeedFile:          filepath.Join(dir, SeedName),
		CredsFile:         filepath.Join(dir, CredsName),
		EnrollmentFile:    filepath.Join(dir, EnrollmentName),
		path:              filepath.Join(dir, ConfigName),
	}
}

// LoadConfig reads agent.yaml.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no agent config at %s: enroll first (fleetplane-agent enroll --server URL --token T)", path)
		}
		return nil, err
	}
	c := DefaultConfig("", filepath.Dir(path), DefaultDataDir)
	if err := yaml.Unmarshal(b, c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c.path = path
	dir := filepath.Dir(path)
	for _, p := range []*string{&c.DataDir, &c.SeedFile, &c.CredsFile, &c.CAFile, &c.EnrollmentFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Validate checks the settings.
func (c *Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen %q: %w", c.Listen, err)
	}
	if c.HTTP != "" && c.HTTP != "off" {
		if _, _, err := net.SplitHostPort(c.HTTP); err != nil {
			return fmt.Errorf("http %q: %w", c.HTTP, err)
		}
	}
	if _, _, err := c.sync(); err != nil {
		return err
	}
	if c.BufferBytes < 1<<20 {
		return fmt.Errorf("buffer_bytes %d: want at least 1 MiB", c.BufferBytes)
	}
	if c.DataDir == "" || c.SeedFile == "" || c.CredsFile == "" || c.EnrollmentFile == "" {
		return errors.New("data_dir, seed_file, creds_file and enrollment_file are required")
	}
	return nil
}

func (c *Config) sync() (always bool, every time.Duration, err error) {
	if c.Sync == "always" {
		return true, 0, nil
	}
	if c.Sync == "" {
		return false, leaf.DefaultSyncInterval, nil
	}
	d, err := time.ParseDuration(c.Sync)
	if err != nil || d <= 0 {
		return false, 0, fmt.Errorf("sync %q: want \"always\" or a duration like 1s", c.Sync)
	}
	return false, d, nil
}

// Path is the file the config was read from or will be written to.
func (c *Config) Path() string { return c.path }

// Write writes the config (mode 0640: it holds no secret, but paths to them).
func (c *Config) Write() error {
	b, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	head := []byte("# fleetplane-agent configuration (docs/agent.md). Written by `fleetplane-agent enroll`;\n# edit freely, then restart the agent.\n")
	return enroll.WriteFileAtomic(c.path, append(head, b...), 0o640)
}

// Enrollment is what the agent keeps of the control plane's last answer
// (enrollment.json): everything but the JWT, which lives in the creds file.
type Enrollment = enroll.Credentials

// LoadEnrollment reads enrollment.json.
func LoadEnrollment(path string) (*Enrollment, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var e Enrollment
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &e, nil
}

func writeEnrollment(path string, c *enroll.Credentials) error {
	e := *c
	e.JWT = ""
	b, err := json.MarshalIndent(&e, "", "  ")
	if err != nil {
		return err
	}
	return enroll.WriteFileAtomic(path, append(b, '\n'), 0o640)
}
