package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/httpx"
)

// requestInfo is what the middlewares learn about a request. It travels in
// the context as a pointer so that the authentication middleware, deep in
// the chain, can tell the access log (at the top) who the tenant was.
type requestInfo struct {
	id       string
	clientIP string
	tenant   string
}

type requestInfoKey struct{}

func requestInfoFrom(ctx context.Context) *requestInfo {
	if ri, ok := ctx.Value(requestInfoKey{}).(*requestInfo); ok {
		return ri
	}
	return &requestInfo{}
}

// begin assigns the request ID and resolves the client IP.
func (s *server) begin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-ID")
		if !validRequestID(id) {
			id = newRequestID()
		}
		ri := &requestInfo{id: id, clientIP: s.clientIP(r)}
		w.Header().Set("X-Request-ID", id)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		ctx := context.WithValue(r.Context(), requestInfoKey{}, ri)
		ctx = controlplane.NewContextWithRequestMeta(ctx, controlplane.RequestMeta{SourceIP: ri.clientIP, RequestID: id})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// validRequestID accepts an incoming X-Request-ID only when it is short and
// harmless in logs, headers and the audit log.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.:", c) >= 0) {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b[:])
}

// clientIP is the caller's address (httpx.ClientIP).
func (s *server) clientIP(r *http.Request) string {
	return httpx.ClientIP(r, s.opts.TrustProxyHeaders)
}

// metrics are the HTTP server's Prometheus metrics.
type metrics struct {
	duration *prometheus.HistogramVec
	inFlight prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fleetplane_http_request_duration_seconds",
			Help:    "Duration of HTTP requests by method, route pattern and status code.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method", "route", "code"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fleetplane_http_requests_in_flight",
			Help: "HTTP requests being served.",
		}),
	}
	if reg != nil {
		m.duration = register(reg, m.duration)
		m.inFlight = register(reg, m.inFlight)
	}
	return m
}

// register registers c, or returns the collector already registered under
// its name (a second handler on the same registry shares the metrics).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic("api: registering metrics: " + err.Error())
	}
	return c
}

// metricMethod bounds the method label to the methods the API knows.
func metricMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodHead, http.MethodOptions:
		return m
	}
	return "OTHER"
}

func routePattern(r *http.Request) string {
	if rctx := chi.RouteContext(r.Context()); rctx != nil {
		if p := rctx.RoutePattern(); p != "" {
			return p
		}
	}
	return "unmatched"
}

// observe records metrics and writes the access log. It logs no headers
// and no bodies: they carry API keys, passwords and secrets.
func (s *server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		s.metrics.inFlight.Inc()
		defer s.metrics.inFlight.Dec()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		d := time.Since(start)
		status := ww.Status()
		if status == 0 {
			status = http.StatusOK
		}
		route := routePattern(r) // the pattern, not the path: bounded label values
		s.metrics.duration.WithLabelValues(metricMethod(r.Method), route, strconv.Itoa(status)).Observe(d.Seconds())
		ri := requestInfoFrom(r.Context())
		level := slog.LevelInfo
		if status >= 500 {
			level = slog.LevelError
		}
		s.log.LogAttrs(r.Context(), level, "http request",
			slog.String("method", r.Method),
			slog.String("route", route),
			slog.String("path", r.URL.Path),
			slog.Int("status", status),
			slog.Duration("duration", d),
			slog.Int("bytes", ww.BytesWritten()),
			slog.String("request_id", ri.id),
			slog.String("tenant", ri.tenant),
			slog.String("client_ip", ri.clientIP),
		)
	})
}

// recoverer turns a panic into a logged 500 problem.
func (s *server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler { //nolint:errorlint // sentinel compared as net/http does
				panic(v)
			}
			s.log.ErrorContext(r.Context(), "panic serving request", "request_id", requestInfoFrom(r.Context()).id,
				"method", r.Method, "route", routePattern(r), "panic", v, "stack", string(debug.Stack()))
			if ww, ok := w.(middleware.WrapResponseWriter); ok && ww.Status() != 0 {
				return // the response has begun; nothing sensible can be added
			}
			s.writeProblem(w, r, http.StatusInternalServerError, controlplane.EINTERNAL, "internal error", nil)
		}()
		next.ServeHTTP(w, r)
	})
}

// authenticate resolves the bearer API key to a principal, or answers 401.
func (s *server) authenticate(next http.Handler) http.Handler {
	return s.handle(func(w http.ResponseWriter, r *http.Request) error {
		h := r.Header.Get("Authorization")
		if h == "" {
			return controlplane.Errorf(controlplane.EUNAUTHORIZED, "missing Authorization header: expected Bearer fpk_<id>_<secret>")
		}
		scheme, token, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "Bearer") {
			return controlplane.Errorf(controlplane.EUNAUTHORIZED, "malformed Authorization header: expected Bearer fpk_<id>_<secret>")
		}
		p, err := s.svc.Authenticate(r.Context(), strings.TrimSpace(token))
		if err != nil {
			return err
		}
		requestInfoFrom(r.Context()).tenant = p.TenantID
		next.ServeHTTP(w, r.WithContext(controlplane.NewContextWithPrincipal(r.Context(), p)))
		return nil
	})
}
