// Package portal is the customer web portal: server-rendered pages
// (html/template, web/templates) over the same controlplane.Service as the
// REST API, with server-side sessions, CSRF tokens on every state-changing
// form, a strict Content-Security-Policy (no inline script or style: the
// little JavaScript there is lives in web/static) and rate limits on the
// account forms.
//
// It may import controlplane, web, internal/httpx, internal/telemetry (the
// payload schema), chi, httprate and the
// standard library; never another adapter.
package portal

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/httprate"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/httpx"
	"github.com/fleetplane/fleetplane/web"
)

// Defaults of Options.
const (
	DefaultLoginRatePerMinute  = 10
	DefaultSignupRatePerMinute = 5
	DefaultResetRatePerMinute  = 5
)

// Options configure the portal.
type Options struct {
	Logger *slog.Logger
	// PublicURL is the portal's origin (https://fleet.example.com): form
	// posts must come from it, and it decides whether cookies are Secure.
	PublicURL string
	// InsecureCookies drops the Secure attribute (and the __Host- prefix)
	// of cookies: only for plain-http development on localhost.
	InsecureCookies bool
	// TrustProxyHeaders takes the client IP from X-Real-IP or
	// X-Forwarded-For (only behind a trusted proxy).
	TrustProxyHeaders bool
	// Per client IP (IPv6: /64) and minute; 0 = default.
	LoginRatePerMinute  int
	SignupRatePerMinute int
	ResetRatePerMinute  int
	// API, when set, serves the REST API's paths (APIPaths) next to the
	// portal: the handler New returns is then the whole site.
	API http.Handler
	// Templates and Static default to the embedded web.Templates() and
	// web.Static().
	Templates fs.FS
	Static    fs.FS
}

type server struct {
	svc    *controlplane.Service
	opts   Options
	log    *slog.Logger
	pages  map[string]*template.Template
	origin string // scheme://host of PublicURL ("" = not checked)
	secure bool
	mux    chi.Router
}

// New returns the portal's handler. It parses every template at once, so
// a broken template fails here, not on the first request.
func New(svc *controlplane.Service, opts Options) (http.Handler, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Templates == nil {
		opts.Templates = web.Templates()
	}
	if opts.Static == nil {
		opts.Static = web.Static()
	}
	s := &server{svc: svc, opts: opts, log: opts.Logger, mux: chi.NewRouter(), secure: !opts.InsecureCookies}
	if opts.PublicURL != "" {
		u, err := url.Parse(opts.PublicURL)
		if err != nil || u.Scheme == "" || u.Host == "" {
			return nil, fmt.Errorf("portal: PublicURL %q is not an absolute URL", opts.PublicURL)
		}
		s.origin = u.Scheme + "://" + u.Host
	}
	if err := s.parseTemplates(); err != nil {
		return nil, err
	}
	s.routes()
	if opts.API == nil {
		return s.mux, nil
	}
	mux := http.NewServeMux()
	for _, p := range APIPaths {
		mux.Handle(p, opts.API)
	}
	mux.Handle("/", s.mux)
	return mux, nil
}

// APIPaths are the paths (ServeMux patterns) of the REST API, health and
// metrics, install script and agent downloads; the portal has all others.
var APIPaths = []string{"/v1/", "/healthz", "/readyz", "/metrics", "/install.sh", "/downloads/"}

func (s *server) routes() {
	r := s.mux
	r.Use(s.begin, s.recoverer, s.loadSession)
	r.NotFound(s.handle(func(w http.ResponseWriter, r *http.Request) error {
		return controlplane.Errorf(controlplane.ENOTFOUND, "there is no page at %s", r.URL.Path)
	}))
	static := http.StripPrefix("/static/", http.FileServerFS(s.opts.Static))
	r.Get("/static/*", func(w http.ResponseWriter, r *http.Request) {
		// Files only: no directory listings.
		if st, err := fs.Stat(s.opts.Static, strings.TrimPrefix(path.Clean(r.URL.Path), "/static/")); err != nil || st.IsDir() {
			s.renderError(w, r, controlplane.Errorf(controlplane.ENOTFOUND, "there is no file at %s", r.URL.Path))
			return
		}
		w.Header().Set("Cache-Control", "public, max-age=300")
		static.ServeHTTP(w, r)
	})
	r.Get("/", s.handle(s.landing))
	r.Group(s.accountRoutes) // account.go: signup, login, logout, reset, invite, team
	r.Group(func(r chi.Router) {
		r.Use(s.requireSession)
		r.Group(s.fleetRoutes)    // fleet.go: dashboard, fleets, vehicles, live, commands
		r.Group(s.settingsRoutes) // settings.go: tokens, grants, API keys, usage and billing, audit
	})
}

// --- request plumbing ---

type ctxKey int

const (
	sessionKey ctxKey = iota
	tokenKey
)

// sessionFrom returns the request's session, or nil.
func sessionFrom(ctx context.Context) *controlplane.Session {
	sess, _ := ctx.Value(sessionKey).(*controlplane.Session)
	return sess
}

// begin sets the request metadata the Service audits and the security
// headers every response carries.
func (s *server) begin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := newID(16)
		ctx := controlplane.NewContextWithRequestMeta(r.Context(), controlplane.RequestMeta{
			SourceIP: httpx.ClientIP(r, s.opts.TrustProxyHeaders), RequestID: id,
		})
		h := w.Header()
		h.Set("X-Request-ID", id)
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
			"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()")
		if s.secure {
			h.Set("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

func (s *server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.ErrorContext(r.Context(), "portal: panic", "panic", v, "path", r.URL.Path)
				s.renderError(w, r, errors.New("panic"))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// Cookie names: __Host- binds the cookie to this exact origin over HTTPS.
func (s *server) cookieName(base string) string {
	if s.secure {
		return "__Host-" + base
	}
	return base
}

// loadSession resolves the session cookie, if any. A bad or expired
// cookie is cleared; the request goes on signed out.
func (s *server) loadSession(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie(s.cookieName("fp_session"))
		if err != nil || c.Value == "" {
			next.ServeHTTP(w, r)
			return
		}
		p, sess, err := s.svc.SessionAuth(r.Context(), c.Value)
		if err != nil {
			if controlplane.ErrorCode(err) != controlplane.EUNAUTHORIZED {
				s.renderError(w, r, err)
				return
			}
			s.clearSessionCookie(w)
			next.ServeHTTP(w, r)
			return
		}
		ctx := controlplane.NewContextWithPrincipal(r.Context(), p)
		ctx = context.WithValue(ctx, sessionKey, sess)
		ctx = context.WithValue(ctx, tokenKey, c.Value)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// requireSession sends signed-out requests to the login page (GET) or
// answers 401 (other methods).
func (s *server) requireSession(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sessionFrom(r.Context()) != nil {
			next.ServeHTTP(w, r)
			return
		}
		if r.Method == http.MethodGet {
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		s.renderError(w, r, controlplane.Errorf(controlplane.EUNAUTHORIZED, "your session has ended; sign in again"))
	})
}

// setSessionCookie stores a new session's token: HttpOnly, Secure (but in
// plain-http dev), SameSite=Lax (links from e-mails and Stripe's redirect
// back arrive signed in; cross-site posts do not carry it), scoped to /.
func (s *server) setSessionCookie(w http.ResponseWriter, created *controlplane.SessionCreated) {
	http.SetCookie(w, &http.Cookie{
		Name: s.cookieName("fp_session"), Value: created.Token, Path: "/",
		Expires: created.ExpiresAt, HttpOnly: true, Secure: s.secure, SameSite: http.SameSiteLaxMode,
	})
}

func (s *server) clearSessionCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: s.cookieName("fp_session"), Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: s.secure, SameSite: http.SameSiteLaxMode})
}

// --- CSRF ---
//
// Signed-in forms carry the session's CSRF secret (page.CSRFField);
// signed-out forms (login, signup, reset) a double-submit token: a random
// value in a SameSite=Strict cookie and in the form. Every POST must also
// come from the portal's own origin when the browser says where it comes
// from (Origin, else Sec-Fetch-Site).

const csrfField = "csrf"

// preCSRF returns the signed-out CSRF token, setting its cookie when new.
func (s *server) preCSRF(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(s.cookieName("fp_csrf")); err == nil && len(c.Value) >= 32 {
		return c.Value
	}
	v := newID(32)
	http.SetCookie(w, &http.Cookie{Name: s.cookieName("fp_csrf"), Value: v, Path: "/", HttpOnly: true,
		Secure: s.secure, SameSite: http.SameSiteStrictMode})
	return v
}

// checkCSRF verifies a state-changing request: origin, then the token of
// the session (or, signed out, the double-submit cookie). It parses the
// form (bodies up to 1 MiB).
func (s *server) checkCSRF(w http.ResponseWriter, r *http.Request) error {
	forbidden := controlplane.Errorf(controlplane.EFORBIDDEN, "the form has expired or did not come from this site; reload the page and try again")
	if o := r.Header.Get("Origin"); o != "" && s.origin != "" && o != s.origin {
		return forbidden
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" {
		return forbidden
	}
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	if err := r.ParseForm(); err != nil {
		return controlplane.Errorf(controlplane.EINVALID, "the form could not be read")
	}
	got := r.PostForm.Get(csrfField)
	want := ""
	if sess := sessionFrom(r.Context()); sess != nil {
		want = sess.CSRF
	} else if c, err := r.Cookie(s.cookieName("fp_csrf")); err == nil {
		want = c.Value
	}
	if want == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		return forbidden
	}
	return nil
}

// --- handlers, rendering, errors ---

type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// handle adapts a handlerFunc: state-changing methods pass the CSRF check
// first; a returned error renders the error page.
func (s *server) handle(h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if err := s.checkCSRF(w, r); err != nil {
				s.renderError(w, r, err)
				return
			}
		}
		if err := h(w, r); err != nil {
			s.renderError(w, r, err)
		}
	}
}

// limit rate-limits a route per client IP (IPv6 per /64).
func (s *server) limit(perMinute int, what string) func(http.Handler) http.Handler {
	return httprate.LimitBy(perMinute, time.Minute,
		func(r *http.Request) (string, error) {
			return httprate.CanonicalizeIP(httpx.ClientIP(r, s.opts.TrustProxyHeaders)), nil
		},
		httprate.WithLimitHandler(func(w http.ResponseWriter, r *http.Request) {
			s.renderError(w, r, controlplane.Errorf(controlplane.ERATELIMIT, "too many %s from your address; wait a minute and try again", what))
		}))
}

// page is what every template gets.
type page struct {
	Title   string
	Nav     string // the main navigation's current entry
	Session *controlplane.Session
	Flash   *flash
	Error   *pageError
	Data    any
	csrf    string
}

// CSRFField is the hidden input every form must include.
func (p *page) CSRFField() template.HTML {
	return template.HTML(`<input type="hidden" name="csrf" value="` + template.HTMLEscapeString(p.csrf) + `">`)
}

// CSRF is the token itself (for data attributes of script-driven posts).
func (p *page) CSRF() string { return p.csrf }

// Can reports whether the signed-in user holds at least role (templates
// hide what the role does not allow; the Service enforces it).
func (p *page) Can(role string) bool {
	return p.Session != nil && p.Session.Role.AtLeast(controlplane.Role(role))
}

type flash struct{ Kind, Text string }

type pageError struct {
	Message string
	Fields  []string
}

// flashes are the messages a redirect may ask for (?m=key): fixed texts,
// so a link cannot make the portal say something else.
var flashes = map[string]flash{
	"signed-out":     {"ok", "You are signed out."},
	"check-mail":     {"ok", "Check your e-mail: we sent you a link to continue."},
	"password-set":   {"ok", "Your password is set. Sign in with it."},
	"saved":          {"ok", "Saved."},
	"revoked":        {"ok", "Revoked."},
	"deleted":        {"ok", "Deleted."},
	"checkout-done":  {"ok", "Thank you! Your plan is updated as soon as Stripe confirms the payment."},
	"checkout-again": {"warn", "The checkout was cancelled; your plan is unchanged."},
	"fleet-created":  {"ok", "Fleet created. Create an enrollment token to add vehicles."},
	"invited":        {"ok", "Invitation sent."},
	"removed":        {"ok", "Removed from the team."},
}

// newPage starts a page for the request: session, CSRF token, flash.
func (s *server) newPage(w http.ResponseWriter, r *http.Request, title, nav string) *page {
	p := &page{Title: title, Nav: nav, Session: sessionFrom(r.Context())}
	if p.Session != nil {
		p.csrf = p.Session.CSRF
	} else {
		p.csrf = s.preCSRF(w, r)
	}
	if f, ok := flashes[r.URL.Query().Get("m")]; ok {
		p.Flash = &f
	}
	return p
}

// parseTemplates parses layout.html with each page template.
func (s *server) parseTemplates() error {
	names, err := fs.Glob(s.opts.Templates, "*.html")
	if err != nil {
		return err
	}
	s.pages = map[string]*template.Template{}
	for _, name := range names {
		if name == "layout.html" || strings.HasPrefix(name, "_") {
			continue
		}
		t, err := template.New(name).Funcs(funcs).ParseFS(s.opts.Templates, "layout.html", "_*.html", name)
		if err != nil {
			return fmt.Errorf("portal: template %s: %w", name, err)
		}
		s.pages[name] = t
	}
	return nil
}

// show renders page template name with a new page of title, nav and data.
func (s *server) show(w http.ResponseWriter, r *http.Request, status int, name, title, nav string, data any) {
	p := s.newPage(w, r, title, nav)
	p.Data = data
	s.render(w, r, status, name, p)
}

// render executes page template name with p into a buffer first, so a
// template error never leaves half a page.
func (s *server) render(w http.ResponseWriter, r *http.Request, status int, name string, p *page) {
	s.execute(w, r, status, name, "layout", p)
}

// execute runs template tmpl of page pageName (the whole page: "layout")
// into a buffer, then writes it with status.
func (s *server) execute(w http.ResponseWriter, r *http.Request, status int, pageName, tmpl string, p *page) {
	t, ok := s.pages[pageName]
	if !ok {
		s.log.ErrorContext(r.Context(), "portal: no template", "name", pageName)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, tmpl, p); err != nil {
		s.log.ErrorContext(r.Context(), "portal: rendering", "template", pageName, "part", tmpl, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// statusOf maps domain error codes to HTTP status codes.
var statusOf = map[string]int{
	controlplane.EINVALID:         http.StatusBadRequest,
	controlplane.EUNAUTHORIZED:    http.StatusUnauthorized,
	controlplane.EPAYMENTREQUIRED: http.StatusPaymentRequired,
	controlplane.EFORBIDDEN:       http.StatusForbidden,
	controlplane.ENOTFOUND:        http.StatusNotFound,
	controlplane.ECONFLICT:        http.StatusConflict,
	controlplane.EUNPROCESSABLE:   http.StatusUnprocessableEntity,
	controlplane.ETOOLARGE:        http.StatusRequestEntityTooLarge,
	controlplane.ERATELIMIT:       http.StatusTooManyRequests,
	controlplane.EUNAVAILABLE:     http.StatusServiceUnavailable,
	controlplane.ETIMEOUT:         http.StatusGatewayTimeout,
	controlplane.ENOTIMPLEMENTED:  http.StatusNotImplemented,
}

// renderError renders the error page. Internal errors are logged with the
// request ID and shown without detail.
func (s *server) renderError(w http.ResponseWriter, r *http.Request, err error) {
	code := controlplane.ErrorCode(err)
	status, ok := statusOf[code]
	msg := controlplane.ErrorMessage(err)
	if !ok {
		status = http.StatusInternalServerError
		msg = "Something went wrong on our side. The error is logged (request " + w.Header().Get("X-Request-ID") + ")."
		s.log.ErrorContext(r.Context(), "portal: internal error", "path", r.URL.Path, "err", err)
	}
	p := s.newPage(w, r, http.StatusText(status), "")
	p.Error = formError(err)
	p.Error.Message = msg
	if status == http.StatusUnauthorized && r.Method == http.MethodGet {
		p.Data = "/login?next=" + url.QueryEscape(r.URL.RequestURI())
	}
	s.render(w, r, status, "error.html", p)
}

// formError is the page error of a failed form submission, for handlers
// that render the form again with the user's input.
func formError(err error) *pageError {
	pe := &pageError{Message: controlplane.ErrorMessage(err)}
	var e *controlplane.Error
	if errors.As(err, &e) && len(e.Fields) > 1 {
		for _, f := range e.Fields {
			pe.Fields = append(pe.Fields, f.Field+": "+f.Message)
		}
	}
	return pe
}

// redirect answers 303 to a local path (never an absolute or
// scheme-relative URL: no open redirects), with an optional flash key.
func redirect(w http.ResponseWriter, r *http.Request, to, flashKey string) {
	if !localPath(to) {
		to = "/dashboard"
	}
	if flashKey != "" {
		sep := "?"
		if strings.Contains(to, "?") {
			sep = "&"
		}
		to += sep + "m=" + url.QueryEscape(flashKey)
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// localPath reports whether p is a path on this site: it starts with one
// slash (not "//" or "/\", which browsers treat as another host).
func localPath(p string) bool {
	return strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "//") && !strings.HasPrefix(p, "/\\") &&
		path.Clean("/"+strings.TrimPrefix(p, "/")) != "" &&
		// Browsers drop tabs and newlines from URLs ("/\t/evil" is
		// "//evil"): no control characters at all.
		!strings.ContainsFunc(p, func(c rune) bool { return c < 0x20 || c == 0x7f })
}

func newID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// landing is the front page: the product for visitors, the dashboard for
// signed-in users.
func (s *server) landing(w http.ResponseWriter, r *http.Request) error {
	if sessionFrom(r.Context()) != nil {
		http.Redirect(w, r, "/dashboard", http.StatusSeeOther)
		return nil
	}
	s.render(w, r, http.StatusOK, "landing.html", s.newPage(w, r, "Messaging for drone and vehicle fleets", ""))
	return nil
}
