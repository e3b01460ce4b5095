package stripemock_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/internal/stripemock"
)

func TestMain(m *testing.M) {
	code := m.Run()
	stripemock.CloseShared()
	os.Exit(code)
}

func TestStartAnswersOnLoopback(t *testing.T) {
	s := stripemock.MustStart(t)
	u, err := url.Parse(s.URL)
	if err != nil || u.Scheme != "http" || u.Hostname() != "127.0.0.1" || u.Port() == "" || u.Port() == "0" {
		t.Fatalf("URL = %q, want http://127.0.0.1:<port>", s.URL)
	}
	if s.StartDuration <= 0 {
		t.Errorf("StartDuration = %v", s.StartDuration)
	}
	t.Logf("stripe-mock started in %v", s.StartDuration)

	req, _ := http.NewRequest(http.MethodGet, s.URL+"/v1/customers/cus_123", nil)
	req.Header.Set("Authorization", "Bearer "+stripemock.TestKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c struct{ ID, Object string }
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || resp.StatusCode != 200 || c.Object != "customer" {
		t.Fatalf("GET customer: %d %+v %v", resp.StatusCode, c, err)
	}
}

func TestCloseKillsTheProcess(t *testing.T) {
	s, err := stripemock.Start(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	pid := s.Pid()
	s.Close()
	s.Close() // idempotent
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	// Reaped by Close: the pid no longer names a process of ours.
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("kill(%d, 0) after Close = %v, want ESRCH", pid, err)
	}
	if _, err := http.Get(s.URL); err == nil {
		t.Fatalf("%s still answers after Close", s.URL)
	}
}

func TestStartBinaryFailsClearly(t *testing.T) {
	_, err := stripemock.StartBinary(context.Background(), "/nonexistent/stripe-mock", nil)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/stripe-mock") {
		t.Fatalf("missing binary: err = %v", err)
	}

	// A binary that exits at once: the error says so and carries its stderr.
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	_, err = stripemock.StartBinary(context.Background(), sh, nil)
	if err == nil || !strings.Contains(err.Error(), "exited before listening") || !strings.Contains(err.Error(), "stderr:") {
		t.Fatalf("exiting binary: err = %v", err)
	}

	// A binary that never prints its address: the context bounds the wait.
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	// sleep rejects stripe-mock's flags; use a script that ignores them.
	script := t.TempDir() + "/silent"
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec "+sleep+" 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = stripemock.StartBinary(ctx, script, nil)
	if err == nil || !strings.Contains(err.Error(), "did not report its address") {
		t.Fatalf("silent binary: err = %v", err)
	}
}

func TestSharedIsOnePerBinary(t *testing.T) {
	a, b := stripemock.Shared(t), stripemock.Shared(t)
	if a != b {
		t.Fatal("Shared started two servers")
	}
}

func TestRecorder(t *testing.T) {
	s := stripemock.Shared(t)
	rec := &stripemock.Recorder{}
	form := url.Values{"customer": {"cus_rec"}, "return_url": {"https://example.test/back?a=1&b=2"}}
	req, _ := http.NewRequest(http.MethodPost, s.URL+"/v1/billing_portal/sessions", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+stripemock.TestKey)
	req.Header.Set("Idempotency-Key", "key-1")
	resp, err := rec.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// stripe-mock echoes the customer: the body reached it intact.
	var ps struct{ Customer, ReturnURL string }
	if err := json.NewDecoder(resp.Body).Decode(&ps); err != nil || resp.StatusCode != 200 || ps.Customer != "cus_rec" {
		t.Fatalf("portal session: %d %+v %v", resp.StatusCode, ps, err)
	}

	getReq, _ := http.NewRequest(http.MethodGet, s.URL+"/v1/customers?limit=3", nil)
	getReq.Header.Set("Authorization", "Bearer "+stripemock.TestKey)
	resp2, err := rec.Client().Do(getReq)
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()

	got := rec.Requests()
	if len(got) != 2 {
		t.Fatalf("recorded %d requests, want 2", len(got))
	}
	p := got[0]
	if p.Method != "POST" || p.Path != "/v1/billing_portal/sessions" || p.IdempotencyKey != "key-1" ||
		p.Form.Encode() != form.Encode() {
		t.Errorf("recorded %+v", p)
	}
	if g := got[1]; g.Method != "GET" || g.Path != "/v1/customers" || g.Form.Get("limit") != "3" || g.IdempotencyKey != "" {
		t.Errorf("recorded %+v", g)
	}
	if last, ok := rec.Last(); !ok || last.Path != "/v1/customers" {
		t.Errorf("Last = %+v, %v", last, ok)
	}
	rec.Reset()
	if _, ok := rec.Last(); ok || len(rec.Requests()) != 0 {
		t.Error("Reset kept requests")
	}
}

func TestRecorderFailAfter(t *testing.T) {
	s := stripemock.Shared(t)
	rec := &stripemock.Recorder{}
	post := func(customer string) error {
		req, _ := http.NewRequest(http.MethodPost, s.URL+"/v1/billing_portal/sessions",
			strings.NewReader(url.Values{"customer": {customer}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "Bearer "+stripemock.TestKey)
		resp, err := rec.Client().Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	rec.FailAfter(2) // the second request from now on loses its answer
	if err := post("cus_1"); err != nil {
		t.Fatalf("first: %v", err)
	}
	for _, c := range []string{"cus_2", "cus_3"} {
		if err := post(c); !errors.Is(err, stripemock.ErrAnswerLost) {
			t.Fatalf("%s: err = %v, want ErrAnswerLost", c, err)
		}
	}
	rec.FailAfter(0)
	if err := post("cus_4"); err != nil {
		t.Fatalf("after FailAfter(0): %v", err)
	}
	var got []string
	for _, r := range rec.Requests() {
		got = append(got, r.Form.Get("customer"))
	}
	if strings.Join(got, ",") != "cus_1,cus_2,cus_3,cus_4" {
		t.Fatalf("recorded %v: a lost answer's request is recorded too", got)
	}
}

// BenchmarkStart measures what a test binary pays for its stripe-mock:
// exec to first answered request, plus Close.
func BenchmarkStart(b *testing.B) {
	if _, err := stripemock.Binary(); err != nil { // the first call may build it
		b.Fatal(err)
	}
	for b.Loop() {
		s, err := stripemock.Start(context.Background(), nil)
		if err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
}
