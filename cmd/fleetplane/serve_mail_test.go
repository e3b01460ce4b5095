package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestServeRefusesMailToNowhere: without SMTP, serve starts only when told
// that writing sign-in links to the log is acceptable (development).
func TestServeRefusesMailToNowhere(t *testing.T) {
	t.Parallel()
	var out, errb bytes.Buffer
	env := map[string]string{"DATABASE_URL": "postgres://unused.invalid/db"}
	err := run(context.Background(), []string{"serve", "--http-addr", "127.0.0.1:0"}, mapEnv(env), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "no smtp_addr") || !strings.Contains(err.Error(), "mail_to_log") {
		t.Fatalf("serve without SMTP: %v", err)
	}
}
