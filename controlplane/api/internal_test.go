package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// TestRecoverAndInternalErrors checks the paths no real handler should
// take: a panic and an error without a code. Both answer a 500 problem
// that says "internal error" and nothing else, and both are logged with
// the request ID.
func TestRecoverAndInternalErrors(t *testing.T) {
	var logs bytes.Buffer
	s := &server{log: slog.New(slog.NewJSONHandler(&logs, nil)), metrics: newMetrics(nil), mux: chi.NewRouter(),
		opts: Options{MaxBodyBytes: DefaultMaxBodyBytes}}
	s.mux.Use(s.begin, s.observe, s.recoverer)
	s.mux.Get("/panic", func(http.ResponseWriter, *http.Request) { panic("boom: the handler is broken") })
	s.mux.Get("/uncoded", s.handle(func(http.ResponseWriter, *http.Request) error {
		return errors.New("pq: password authentication failed for user secret-user")
	}))
	s.mux.Get("/coded", s.handle(func(http.ResponseWriter, *http.Request) error {
		return controlplane.Errorf(controlplane.EUNAVAILABLE, "hub europe unavailable")
	}))
	s.mux.Get("/unknown-code", s.handle(func(http.ResponseWriter, *http.Request) error {
		return controlplane.Errorf("made_up", "should not be shown")
	}))

	for _, c := range []struct {
		path, log string
		status    int
		detail    string
	}{
		{"/panic", "boom: the handler is broken", 500, "internal error"},
		{"/uncoded", "password authentication failed", 500, "internal error"},
		{"/coded", "", 503, "hub europe unavailable"},
		{"/unknown-code", "should not be shown", 500, "internal error"},
	} {
		logs.Reset()
		req := httptest.NewRequest("GET", c.path, nil)
		req.Header.Set("X-Request-ID", "rid-"+strings.Trim(c.path, "/"))
		w := httptest.NewRecorder()
		s.mux.ServeHTTP(w, req)
		if w.Code != c.status || w.Header().Get("Content-Type") != problemContentType {
			t.Errorf("%s: %d %q", c.path, w.Code, w.Header().Get("Content-Type"))
		}
		var p Problem
		if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
			t.Fatal(err)
		}
		if p.Detail != c.detail || p.RequestId != "rid-"+strings.Trim(c.path, "/") || p.Status != c.status {
			t.Errorf("%s: %+v", c.path, p)
		}
		if c.log != "" && (!strings.Contains(logs.String(), c.log) || !strings.Contains(logs.String(), `"request_id":"rid-`)) {
			t.Errorf("%s: log lacks %q and the request ID: %s", c.path, c.log, logs.String())
		}
		if strings.Contains(w.Body.String(), "secret-user") || strings.Contains(w.Body.String(), "boom") {
			t.Errorf("%s: internals leak: %s", c.path, w.Body.String())
		}
	}
}

func TestClientIP(t *testing.T) {
	for _, c := range []struct {
		trust             bool
		remote, real, xff string
		want              string
	}{
		{false, "192.0.2.1:1234", "198.51.100.1", "198.51.100.2", "192.0.2.1"},
		{true, "192.0.2.1:1234", "198.51.100.1", "198.51.100.2", "198.51.100.1"},
		{true, "192.0.2.1:1234", "", "203.0.113.7, 198.51.100.2", "198.51.100.2"},
		{true, "192.0.2.1:1234", "not-an-ip", "garbage", "192.0.2.1"},
		{true, "[2001:db8::1]:443", "", "", "2001:db8::1"},
		{false, "[::ffff:192.0.2.9]:80", "", "", "192.0.2.9"},
	} {
		s := &server{opts: Options{TrustProxyHeaders: c.trust}}
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = c.remote
		if c.real != "" {
			r.Header.Set("X-Real-IP", c.real)
		}
		if c.xff != "" {
			r.Header.Set("X-Forwarded-For", c.xff)
		}
		if got := s.clientIP(r); got != c.want {
			t.Errorf("%+v: %q", c, got)
		}
	}
}
