// Package api is Fleetplane's REST API v1: an http.Handler over
// controlplane.Service, described by openapi.yaml (the source of truth,
// served at /v1/openapi.json) with request and response types generated
// from it (openapi.gen.go).
//
// Handlers return errors; one adapter (writeError) turns them into
// application/problem+json through one table of error codes. The package
// imports the domain (controlplane) and helpers (internal/httpx, and
// internal/agentdist for /install.sh and /downloads/); it never touches Postgres, NATS or Stripe, and no other adapter imports it
// but cmd/.
package api

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/httprate"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/agentdist"
)

// Options configure the API handler. The zero value is usable.
type Options struct {
	// Logger receives the access log and internal errors; nil discards them.
	Logger *slog.Logger
	// Registerer receives the HTTP metrics; nil keeps them unregistered.
	Registerer prometheus.Registerer
	// Gatherer is served at /metrics; nil = no /metrics route.
	Gatherer prometheus.Gatherer
	// SignupRatePerMinute limits POST /v1/signup per client IP (IPv6: per
	// /64); default 10.
	SignupRatePerMinute int
	// TrustProxyHeaders takes the client IP from X-Real-IP or
	// X-Forwarded-For. Set it only behind a proxy that sets them: otherwise
	// any client can choose its address (and dodge the signup limit).
	TrustProxyHeaders bool
	// MaxBodyBytes limits request bodies; default 1 MiB.
	MaxBodyBytes int64
	// EnrollRatePerMinute limits POST /v1/enroll, /v1/agent/nonce and
	// /v1/agent/renew together, per client IP (IPv6: per /64); default 60.
	EnrollRatePerMinute int
	// WebhookRatePerMinute limits POST /v1/billing/webhook per client IP
	// (IPv6: per /64); default 1200. Stripe delivers from a few addresses
	// in bursts (every tenant's invoice events at a period's end), and
	// retries what gets a 429 for days: keep it generous.
	WebhookRatePerMinute int
	// PublicURL is the control plane's public base URL, used in the install
	// one-liner of new enrollment tokens (e.g. https://fleetplane.example.com);
	// "" = the scheme and host the request came to.
	PublicURL string
	// Agents are the agent binaries served at /downloads/ for the install
	// script (/install.sh); nil = downloads answer 404.
	Agents *agentdist.Dir
	// LiveHeartbeat is the interval of the comment lines that keep a
	// GET /v1/fleets/{fleet}/live stream open through proxies; default 15 s.
	LiveHeartbeat time.Duration
}

// Defaults for Options.
const (
	DefaultSignupRatePerMinute        = 10
	DefaultEnrollRatePerMinute        = 60
	DefaultWebhookRatePerMinute       = 1200
	DefaultMaxBodyBytes         int64 = 1 << 20
	DefaultLiveHeartbeat              = 15 * time.Second
)

type server struct {
	svc     *controlplane.Service
	opts    Options
	log     *slog.Logger
	metrics *metrics
	mux     *chi.Mux
}

// New returns the HTTP handler of the API: /v1/..., /healthz, /readyz and,
// when opts.Gatherer is set, /metrics.
func New(svc *controlplane.Service, opts Options) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.SignupRatePerMinute <= 0 {
		opts.SignupRatePerMinute = DefaultSignupRatePerMinute
	}
	if opts.EnrollRatePerMinute <= 0 {
		opts.EnrollRatePerMinute = DefaultEnrollRatePerMinute
	}
	if opts.WebhookRatePerMinute <= 0 {
		opts.WebhookRatePerMinute = DefaultWebhookRatePerMinute
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.LiveHeartbeat <= 0 {
		opts.LiveHeartbeat = DefaultLiveHeartbeat
	}
	s := &server{svc: svc, opts: opts, log: opts.Logger, metrics: newMetrics(opts.Registerer), mux: chi.NewRouter()}
	s.routes()
	return s.mux
}

func (s *server) routes() {
	r := s.mux
	// Outermost first: the request ID and client IP exist before anything
	// logs; metrics and the access log see the status of recovered panics.
	r.Use(s.begin, s.observe, s.recoverer)
	r.NotFound(s.handle(s.notFound))
	r.MethodNotAllowed(s.handle(s.methodNotAllowed))

	r.Get("/healthz", s.handle(s.health))
	r.Get("/readyz", s.handle(s.ready))
	if s.opts.Gatherer != nil {
		r.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(s.opts.Gatherer, promhttp.HandlerOpts{}))
	}
	r.Get("/v1/openapi.json", s.handle(s.openAPI))
	s.installRoutes(r) // install.go: /install.sh, /downloads/{file}

	signupLimit := s.rateLimiter(s.opts.SignupRatePerMinute, "signups")
	r.With(signupLimit.Handler, s.idempotentPublic("signup", signupNote)).Post("/v1/signup", s.handle(s.signup))

	// Vehicles authenticate with a token or a signature, not an API key.
	// The three routes share one budget per address.
	enrollLimit := s.rateLimiter(s.opts.EnrollRatePerMinute, "enrollment and renewal requests")
	r.With(enrollLimit.Handler, s.idempotentPublic("enroll", nil)).Post("/v1/enroll", s.handle(s.enroll))
	r.With(enrollLimit.Handler, s.idempotentPublic("agent", nil)).Post("/v1/agent/nonce", s.handle(s.createAgentNonce))
	r.With(enrollLimit.Handler, s.idempotentPublic("agent", nil)).Post("/v1/agent/renew", s.handle(s.renewAgent))
	r.With(enrollLimit.Handler).Post("/v1/agent/ingest-position", s.handle(s.agentIngestPosition))

	// Stripe authenticates with its signature; no Idempotency-Key (the
	// event ID is the key) and no API key. Its own budget: Stripe's bursts
	// must not eat the vehicles' and vice versa.
	webhookLimit := s.rateLimiter(s.opts.WebhookRatePerMinute, "webhook deliveries")
	r.With(webhookLimit.Handler).Post("/v1/billing/webhook", s.handle(s.billingWebhook))

	r.Group(func(r chi.Router) {
		r.Use(s.authenticate)
		r.Get("/v1/tenant", s.handle(s.getTenant))

		r.Get("/v1/api-keys", s.handle(s.listAPIKeys))
		r.With(s.idempotent(apiKeyNote)).Post("/v1/api-keys", s.handle(s.createAPIKey))
		r.Delete("/v1/api-keys/{id}", s.handle(s.revokeAPIKey))

		r.Get("/v1/fleets", s.handle(s.listFleets))
		r.With(s.idempotent(nil)).Post("/v1/fleets", s.handle(s.createFleet))
		r.Get("/v1/fleets/{fleet}", s.handle(s.getFleet))
		r.Patch("/v1/fleets/{fleet}", s.handle(s.updateFleet))
		r.Delete("/v1/fleets/{fleet}", s.handle(s.deleteFleet))

		r.Get("/v1/fleets/{fleet}/vehicles", s.handle(s.listVehicles))
		r.With(s.idempotent(nil)).Post("/v1/fleets/{fleet}/vehicles", s.handle(s.createVehicle))
		r.Get("/v1/fleets/{fleet}/vehicles/{vehicle}", s.handle(s.getVehicle))
		r.Patch("/v1/fleets/{fleet}/vehicles/{vehicle}", s.handle(s.updateVehicle))
		r.Delete("/v1/fleets/{fleet}/vehicles/{vehicle}", s.handle(s.deleteVehicle))
		r.With(s.idempotent(nil)).Post("/v1/fleets/{fleet}/vehicles/{vehicle}/credentials", s.handle(s.issueVehicleCredentials))
		r.With(s.idempotent(nil)).Post("/v1/fleets/{fleet}/vehicles/{vehicle}/revoke", s.handle(s.revokeVehicle))
		s.twinRoutes(r) // twin.go

		r.Get("/v1/fleets/{fleet}/enrollment-tokens", s.handle(s.listEnrollmentTokens))
		r.With(s.idempotent(enrollmentTokenNote)).Post("/v1/fleets/{fleet}/enrollment-tokens", s.handle(s.createEnrollmentToken))
		r.Get("/v1/fleets/{fleet}/enrollment-tokens/{id}", s.handle(s.getEnrollmentToken))
		r.Delete("/v1/fleets/{fleet}/enrollment-tokens/{id}", s.handle(s.revokeEnrollmentToken))

		r.Get("/v1/grants", s.handle(s.listGrants))
		r.With(s.idempotent(grantNote)).Post("/v1/grants", s.handle(s.createGrant))
		r.Get("/v1/grants/{id}", s.handle(s.getGrant))
		r.Delete("/v1/grants/{id}", s.handle(s.revokeGrant))
		r.Get("/v1/grants/{id}/context", s.handle(s.getGrantContext))

		s.billingRoutes(r) // billing.go: usage, checkout, portal

		r.Get("/v1/regions", s.handle(s.listRegions))
		r.Get("/v1/audit-events", s.handle(s.listAuditEvents))
	})
}

// rateLimiter limits requests per client IP (IPv6: per /64) to perMinute;
// what describes the requests in the 429 problem. One limiter used on
// several routes gives them one shared budget.
func (s *server) rateLimiter(perMinute int, what string) *httprate.RateLimiter {
	return httprate.NewRateLimiter(perMinute, time.Minute,
		httprate.WithKeyFuncs(func(r *http.Request) (string, error) {
			return httprate.CanonicalizeIP(requestInfoFrom(r.Context()).clientIP), nil
		}),
		httprate.WithLimitHandler(s.handle(func(w http.ResponseWriter, r *http.Request) error {
			return controlplane.Errorf(controlplane.ERATELIMIT,
				"too many %s from this address; retry in %s seconds", what, w.Header().Get("Retry-After"))
		})),
		httprate.WithErrorHandler(func(w http.ResponseWriter, r *http.Request, err error) {
			s.writeError(w, r, err)
		}),
	)
}

// handlerFunc is an HTTP handler that returns its error instead of writing it.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// handle adapts h: a returned error becomes a problem+json response.
func (s *server) handle(h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	}
}
