package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "fp.yaml")
	os.WriteFile(file, []byte("http_addr: 127.0.0.1:9000\nlog_level: debug\nsignup_rate_per_minute: 3\nregions:\n  - name: eu\n    display_name: Europe\n  - name: us\n"), 0o600)
	secret := filepath.Join(dir, "db")
	os.WriteFile(secret, []byte("postgres://u:hunter2@db/fp\n"), 0o600)

	env := map[string]string{
		"FLEETPLANE_CONFIG":            file,
		"FLEETPLANE_LOG_LEVEL":         "warn",
		"FLEETPLANE_DATABASE_URL_FILE": secret,
	}
	cfg := defaultConfig()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if err := loadConfig(fs, []string{"--signup-rate-per-minute", "7"}, mapEnv(env), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPAddr != "127.0.0.1:9000" { // file over default
		t.Errorf("HTTPAddr = %q", cfg.HTTPAddr)
	}
	if cfg.LogLevel != "warn" { // env over file
		t.Errorf("LogLevel = %q", cfg.LogLevel)
	}
	if cfg.SignupRatePerMinute != 7 { // flag over file
		t.Errorf("SignupRatePerMinute = %d", cfg.SignupRatePerMinute)
	}
	if cfg.DatabaseURL != "postgres://u:hunter2@db/fp" { // secret from a file, newline trimmed
		t.Errorf("DatabaseURL = %q", cfg.DatabaseURL)
	}
	if len(cfg.Regions) != 2 || cfg.Regions[0].DisplayName != "Europe" {
		t.Errorf("Regions = %+v", cfg.Regions)
	}
	if got := redactURL(cfg.DatabaseURL); strings.Contains(got, "hunter2") {
		t.Errorf("redactURL leaks the password: %q", got)
	}
	if cfg.ShutdownTimeout != 20*time.Second {
		t.Errorf("ShutdownTimeout = %v", cfg.ShutdownTimeout)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	dir := t.TempDir()
	unknown := filepath.Join(dir, "unknown.yaml")
	os.WriteFile(unknown, []byte("htp_addr: x\n"), 0o600)
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"bad flag value", []string{"--db-max-conns", "many"}, nil, "not an integer"},
		{"unknown file key", nil, map[string]string{"FLEETPLANE_CONFIG": unknown}, "htp_addr"},
		{"missing file", []string{"--config", filepath.Join(dir, "nope.yaml")}, nil, "no such file"},
		{"missing secret file", nil, map[string]string{"FLEETPLANE_DATABASE_URL_FILE": filepath.Join(dir, "nope")}, "FLEETPLANE_DATABASE_URL_FILE"},
		{"bad region", []string{"--regions", "Europe West"}, nil, "region name"},
		{"duplicate region", []string{"--regions", "eu,eu"}, nil, "configured twice"},
		{"bad log level", nil, map[string]string{"FLEETPLANE_LOG_LEVEL": "loud"}, "log_level"},
		{"bad addr", []string{"--http-addr", "8080"}, nil, "http_addr"},
		{"stray argument", []string{"extra"}, nil, "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaultConfig()
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			err := loadConfig(fs, tt.args, mapEnv(tt.env), &cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestRunUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"bogus"}, {"migrate"}, {"migrate", "sideways"}, {"admin"}, {"admin", "tenant", "create"}} {
		err := run(t.Context(), args, mapEnv(nil), io.Discard, io.Discard)
		if exitCode(err) != 2 {
			t.Errorf("run(%q) = %v (exit %d), want a usage error", args, err, exitCode(err))
		}
	}
	var out strings.Builder
	if err := run(t.Context(), []string{"version"}, mapEnv(nil), &out, io.Discard); err != nil || !strings.HasPrefix(out.String(), "fleetplane ") {
		t.Errorf("version: %q %v", out.String(), err)
	}
}
