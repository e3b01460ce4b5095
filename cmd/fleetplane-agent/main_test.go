package main

import (
	"bytes"
	"context"
	"os"
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
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		err := run(context.Background(), tt.args, os.Getenv, &out, &errb)
		if (err != nil) != tt.wantErr {
			t.Errorf("run(%q) error = %v, want error %v", tt.args, err, tt.wantErr)
		}
		if !strings.Contains(out.String(), tt.wantOut) {
			t.Errorf("run(%q) stdout = %q, want it to contain %q", tt.args, out.String(), tt.wantOut)
		}
	}
}
