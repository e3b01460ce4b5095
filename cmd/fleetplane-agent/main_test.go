package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr bool
		wantOut string
	}{
		{args: []string{"version"}, wantOut: "fleetplane-agent dev "},
		{args: []string{"help"}, wantOut: "Usage:"},
		{args: nil, wantErr: true},
		{args: []string{"bogus"}, wantErr: true},
		{args: []string{"enroll"}, wantErr: true},
		{args: []string{"enroll", "--server", "http://127.0.0.1:1", "--token", "fpe_x", "--dir", "/nonexistent/\x00"}, wantErr: true},
		{args: []string{"run", "--config", "/nonexistent/agent.yaml"}, wantErr: true},
		{args: []string{"status", "--http", "127.0.0.1:1"}, wantErr: true},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		err := run(context.Background(), tt.args, func(string) string { return "" }, &out, &errb)
		if (err != nil) != tt.wantErr {
			t.Errorf("run(%q) error = %v, want error %v", tt.args, err, tt.wantErr)
		}
		if !strings.Contains(out.String(), tt.wantOut) {
			t.Errorf("run(%q) stdout = %q, want it to contain %q", tt.args, out.String(), tt.wantOut)
		}
	}
}
