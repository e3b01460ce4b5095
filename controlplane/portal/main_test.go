package portal_test

// The portal's HTTP-level test environment, shared by every area's tests
// (account, fleet, settings). Each test gets a real controlplane.Service
// over its own throwaway Postgres (internal/pgtest), a real NATS issuer
// (signup needs one) and no hubs, the portal in an httptest.Server, and a
// capturing mailer; tests then drive the portal like a browser does:
//
//	e := newPortalEnv(t)                 // options: withService, withPortal, withTLS
//	owner := e.newAccount("Acme")        // signed up, confirmed, signed in (owner)
//	viewer := e.addMember(owner, controlplane.RoleViewer) // invited, password set, signed in
//	owner.get("/team").must(t, http.StatusOK)
//	owner.submit("/team", "/team/invite", url.Values{"email": {"a@b.example"}, "role": {"admin"}}).
//		must(t, http.StatusSeeOther)     // GET the page, post with its CSRF token
//	owner.post("/logout", nil)           // POST with the CSRF token of the last page
//	link := e.mailLink(addr, "/reset")  // waits for the mail; path?query of its link
//	before := snapshot(t, e.pool)        // ... and diffSnapshots(before, snapshot(t, e.pool))
//
// A browser keeps cookies, never follows redirects by itself (assert the
// Location, then b.follow(res)), and sends POSTs as a same-origin browser
// would (Origin, Sec-Fetch-Site); reqOpts change that. Rate limits are
// high unless a test lowers them with withPortal.

import (
	"context"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/mail"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/controlplane/portal"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/password"
	"github.com/fleetplane/fleetplane/internal/pgtest"
	"github.com/fleetplane/fleetplane/internal/seal"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// testPassword is every test account's password.
const testPassword = "correct horse battery staple"

// fastPasswords keeps argon2id cheap in tests.
var fastPasswords = password.Params{Memory: 64, Time: 1, Threads: 1}

// portalEnv is one portal over its own database.
type portalEnv struct {
	tb   testing.TB
	pool *pgxpool.Pool
	svc  *controlplane.Service
	srv  *httptest.Server
	mail *mail.Capture
	logs *lockedBuffer // the Service's and the portal's logs (JSON lines)
	opts portal.Options
	tls  bool

	mu    sync.Mutex
	taken map[int]bool // mails mailLink returned, by index
}

// envConfig is what newPortalEnv's options may change before it starts.
type envConfig struct {
	service controlplane.Config
	portal  portal.Options
	tls     bool
}

// withService changes the Service's configuration.
func withService(f func(*controlplane.Config)) func(*envConfig) {
	return func(c *envConfig) { f(&c.service) }
}

// withPortal changes the portal's options (e.g. lower rate limits).
func withPortal(f func(*portal.Options)) func(*envConfig) {
	return func(c *envConfig) { f(&c.portal) }
}

// withTLS serves the portal over HTTPS with secure cookies (__Host-
// prefix, Secure) instead of plain http with InsecureCookies.
func withTLS() func(*envConfig) { return func(c *envConfig) { c.tls = true } }

// newPortalEnv starts the portal over a real Service and Postgres.
func newPortalEnv(tb testing.TB, options ...func(*envConfig)) *portalEnv {
	tb.Helper()
	pool := pgtest.NewPool(tb)
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := httptest.NewUnstartedServer(nil)
	scheme := "http"
	c := envConfig{
		service: testServiceConfig(tb),
		portal: portal.Options{Logger: logger, InsecureCookies: true,
			LoginRatePerMinute: 10000, SignupRatePerMinute: 10000, ResetRatePerMinute: 10000},
	}
	for _, o := range options {
		o(&c)
	}
	if c.tls {
		scheme = "https"
		c.portal.InsecureCookies = false
	}
	base := scheme + "://" + srv.Listener.Addr().String()
	capture := mail.NewCapture()
	if c.service.Mailer == nil {
		c.service.Mailer = capture
	}
	if c.service.PublicURL == "" {
		c.service.PublicURL = base
	}
	if c.portal.PublicURL == "" {
		c.portal.PublicURL = base
	}
	svc := controlplane.NewService(postgres.NewStore(pool), c.service, logger)
	h, err := portal.New(svc, c.portal)
	if err != nil {
		tb.Fatalf("portal.New: %v", err)
	}
	srv.Config.Handler = h
	if c.tls {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	tb.Cleanup(srv.Close)
	return &portalEnv{tb: tb, pool: pool, svc: svc, srv: srv, mail: capture, logs: logs, opts: c.portal, tls: c.tls}
}

// testServiceConfig is the Service of the portal tests: a fresh NATS
// operator (as `fleetplane admin operator init` makes one), no hubs, one
// region, cheap passwords.
func testServiceConfig(tb testing.TB) controlplane.Config {
	tb.Helper()
	keys, err := seal.ParseKeyring("k1:" + seal.GenerateKey())
	if err != nil {
		tb.Fatal(err)
	}
	op, err := natsissuer.NewOperator(keys, "fleetplane-portal-test")
	if err != nil {
		tb.Fatalf("NewOperator: %v", err)
	}
	iss, err := natsissuer.New(keys, op)
	if err != nil {
		tb.Fatalf("natsissuer.New: %v", err)
	}
	tb.Cleanup(iss.Wipe)
	return controlplane.Config{
		Regions: []controlplane.Region{{Name: "europe", DisplayName: "Europe (Frankfurt)",
			LeafURLs: []string{"tls://hub-1.europe.example.com:7422"}, ClientURLs: []string{"tls://hub-1.europe.example.com:4222"}}},
		PasswordParams: fastPasswords,
		Issuer:         iss,
	}
}

// sessionCookie and csrfCookie are the cookies' names in this env.
func (e *portalEnv) sessionCookie() string { return e.cookieName("fp_session") }
func (e *portalEnv) csrfCookie() string    { return e.cookieName("fp_csrf") }

func (e *portalEnv) cookieName(base string) string {
	if e.tls {
		return "__Host-" + base
	}
	return base
}

// --- browsers ---

// browser is one user agent: a cookie jar, the CSRF token of the last
// page it fetched, and (for accounts made by the helpers) who it is.
type browser struct {
	e        *portalEnv
	tb       testing.TB
	c        *http.Client
	csrf     string
	email    string
	password string
}

// newBrowser returns a browser with an empty cookie jar.
func (e *portalEnv) newBrowser() *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		e.tb.Fatal(err)
	}
	c := &http.Client{
		Jar:           jar,
		Transport:     e.srv.Client().Transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}
	return &browser{e: e, tb: e.tb, c: c}
}

// response is a received answer, body read.
type response struct {
	status int
	header http.Header
	body   string
	path   string // what was requested
}

// must asserts the status.
func (r *response) must(tb testing.TB, status int) *response {
	tb.Helper()
	if r.status != status {
		tb.Fatalf("%s: status %d, want %d; Location %q; body:\n%.3000s", r.path, r.status, status, r.header.Get("Location"), r.body)
	}
	return r
}

// redirectsTo asserts a 303 to exactly location and returns the response.
func (r *response) redirectsTo(tb testing.TB, location string) *response {
	tb.Helper()
	r.must(tb, http.StatusSeeOther)
	if got := r.header.Get("Location"); got != location {
		tb.Fatalf("%s: redirects to %q, want %q", r.path, got, location)
	}
	return r
}

// contains asserts that the body contains every s (HTML-escaped first).
func (r *response) contains(tb testing.TB, ss ...string) *response {
	tb.Helper()
	for _, s := range ss {
		if !strings.Contains(r.body, s) && !strings.Contains(r.body, html.EscapeString(s)) {
			tb.Fatalf("%s: body lacks %q:\n%.3000s", r.path, s, r.body)
		}
	}
	return r
}

// lacks asserts that the body contains none of ss (raw or HTML-escaped).
func (r *response) lacks(tb testing.TB, ss ...string) *response {
	tb.Helper()
	for _, s := range ss {
		if s == "" {
			tb.Fatalf("lacks: empty string")
		}
		if strings.Contains(r.body, s) || strings.Contains(r.body, html.EscapeString(s)) {
			tb.Fatalf("%s: body contains %q:\n%.3000s", r.path, s, r.body)
		}
	}
	return r
}

// setCookie returns the response's Set-Cookie for name, or nil.
func (r *response) setCookie(name string) *http.Cookie {
	for _, c := range (&http.Response{Header: r.header}).Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// reqOpt changes a request before it is sent.
type reqOpt func(*http.Request)

// withHeader sets a request header ("" value: removes it).
func withHeader(k, v string) reqOpt {
	return func(r *http.Request) {
		if v == "" {
			r.Header.Del(k)
		} else {
			r.Header.Set(k, v)
		}
	}
}

// do sends a request; form (when not nil) is the urlencoded body. POSTs
// carry Origin and Sec-Fetch-Site as a same-origin browser sends them.
func (b *browser) do(method, path string, form url.Values, opts ...reqOpt) *response {
	b.tb.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.e.srv.URL+path, body)
	if err != nil {
		b.tb.Fatalf("%s %s: %v", method, path, err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if method != http.MethodGet && method != http.MethodHead {
		req.Header.Set("Origin", b.e.srv.URL)
		req.Header.Set("Sec-Fetch-Site", "same-origin")
	}
	req.Header.Set("User-Agent", "portal-test")
	for _, o := range opts {
		o(req)
	}
	res, err := b.c.Do(req)
	if err != nil {
		b.tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		b.tb.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	r := &response{status: res.StatusCode, header: res.Header, body: string(raw), path: method + " " + path}
	if tok := csrfOf(r.body); tok != "" {
		b.csrf = tok
	}
	return r
}

// get fetches a page.
func (b *browser) get(path string, opts ...reqOpt) *response {
	b.tb.Helper()
	return b.do(http.MethodGet, path, nil, opts...)
}

// post sends form, adding the CSRF token of the last page fetched unless
// form has one ("csrf" set, even to "", is left alone).
func (b *browser) post(path string, form url.Values, opts ...reqOpt) *response {
	b.tb.Helper()
	if form == nil {
		form = url.Values{}
	}
	if _, ok := form["csrf"]; !ok {
		form = cloneValues(form)
		form.Set("csrf", b.csrf)
	}
	return b.do(http.MethodPost, path, form, opts...)
}

// submit fetches page (which must answer 200), then posts form to action
// with the page's CSRF token, as a person filling in the form does.
func (b *browser) submit(page, action string, form url.Values, opts ...reqOpt) *response {
	b.tb.Helper()
	p := b.get(page).must(b.tb, http.StatusOK)
	tok := csrfOf(p.body)
	if tok == "" {
		b.tb.Fatalf("GET %s: no CSRF token on the page", page)
	}
	form = cloneValues(form)
	form.Set("csrf", tok)
	return b.do(http.MethodPost, action, form, opts...)
}

// follow GETs the Location of a redirect.
func (b *browser) follow(r *response) *response {
	b.tb.Helper()
	loc := r.header.Get("Location")
	if r.status < 300 || r.status > 399 || loc == "" {
		b.tb.Fatalf("%s: not a redirect (status %d, Location %q)", r.path, r.status, loc)
	}
	return b.get(loc)
}

// cookie returns the value of the jar's cookie name ("" when none).
func (b *browser) cookie(name string) string {
	u, _ := url.Parse(b.e.srv.URL)
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == name {
			return c.Value
		}
	}
	return ""
}

// setCookie puts a cookie into the jar, as another site or script might.
func (b *browser) setCookie(name, value string) {
	u, _ := url.Parse(b.e.srv.URL)
	b.c.Jar.SetCookies(u, []*http.Cookie{{Name: name, Value: value, Path: "/", Secure: b.e.tls}})
}

// sessionToken is the browser's session cookie ("" when signed out).
func (b *browser) sessionToken() string { return b.cookie(b.e.sessionCookie()) }

// session resolves the browser's session through the Service (fails the
// test when it has none that works).
func (b *browser) session() *controlplane.Session {
	b.tb.Helper()
	_, sess, err := b.e.svc.SessionAuth(context.Background(), b.sessionToken())
	if err != nil {
		b.tb.Fatalf("the browser of %s has no working session: %v", b.email, err)
	}
	return sess
}

// login signs in through the form.
func (b *browser) login(email, password string) *response {
	b.tb.Helper()
	return b.submit("/login", "/login", url.Values{"email": {email}, "password": {password}})
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]*)"`)

// csrfOf returns the first CSRF token in a page ("" when none).
func csrfOf(body string) string {
	if m := csrfRe.FindStringSubmatch(body); m != nil {
		return html.UnescapeString(m[1])
	}
	return ""
}

// withoutCSRF replaces every CSRF token of a page with a placeholder (to
// compare two pages).
func withoutCSRF(body string) string {
	return csrfRe.ReplaceAllString(body, `name="csrf" value="…"`)
}

func cloneValues(v url.Values) url.Values {
	c := url.Values{}
	for k, vs := range v {
		c[k] = append([]string(nil), vs...)
	}
	return c
}

// --- accounts ---

var emailSeq atomic.Int64

// newEmail returns an address no other test uses.
func newEmail(who string) string {
	return fmt.Sprintf("%s%d-%d@example.com", who, emailSeq.Add(1), time.Now().UnixNano())
}

// signup posts the signup form and asserts the "check your e-mail" redirect.
func (b *browser) signup(org, email, password string) {
	b.tb.Helper()
	b.submit("/signup", "/signup", url.Values{"organisation": {org}, "email": {email}, "password": {password}}).
		redirectsTo(b.tb, "/signup?m=check-mail")
}

// newAccount signs up a new organisation through the portal, confirms
// the address through the mailed link and returns the owner's browser,
// signed in.
func (e *portalEnv) newAccount(org string) *browser {
	e.tb.Helper()
	b := e.newBrowser()
	b.email, b.password = newEmail("owner"), testPassword
	b.signup(org, b.email, b.password)
	link := e.mailLink(b.email, "/confirm")
	b.submit(link, "/confirm", url.Values{"token": {tokenOf(e.tb, link)}, "password": {b.password}}).redirectsTo(e.tb, "/dashboard")
	b.session() // signed in
	return b
}

// addMember has admin invite a new address with role; the invitee sets a
// password through the mailed link, which signs it in. It returns the
// invitee's browser.
func (e *portalEnv) addMember(admin *browser, role controlplane.Role) *browser {
	e.tb.Helper()
	b := e.newBrowser()
	b.email, b.password = newEmail(string(role)), testPassword
	admin.submit("/team", "/team/invite", url.Values{"email": {b.email}, "role": {string(role)}}).
		redirectsTo(e.tb, "/team?m=invited")
	link := e.mailLink(b.email, "/invite")
	b.submit(link, "/invite", url.Values{"token": {tokenOf(e.tb, link)}, "password": {b.password}}).
		redirectsTo(e.tb, "/dashboard")
	if got := b.session().Role; got != role {
		e.tb.Fatalf("invited as %s, signed in as %s", role, got)
	}
	return b
}

// --- mail ---

// The Service mails after its call returned: the helpers below wait for
// mails (up to mailWait) rather than expect them at once.
const mailWait = 10 * time.Second

var linkRe = regexp.MustCompile(`https?://[^\s<>"]+`)

// mailsTo returns the mails captured so far for addr, oldest first.
func (e *portalEnv) mailsTo(addr string) []controlplane.Mail {
	var out []controlplane.Mail
	for _, m := range e.mail.Mails() {
		if strings.EqualFold(m.To, addr) {
			out = append(out, m)
		}
	}
	return out
}

// waitMails waits until n mails to addr arrived and returns them.
func (e *portalEnv) waitMails(addr string, n int) []controlplane.Mail {
	e.tb.Helper()
	deadline := time.Now().Add(mailWait)
	for {
		ms := e.mailsTo(addr)
		if len(ms) >= n {
			return ms
		}
		if time.Now().After(deadline) {
			e.tb.Fatalf("%d mails to %s after %v, want %d: %+v", len(ms), addr, mailWait, n, ms)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mailLink waits for the next mail to addr with a link to the portal page
// path ("/confirm", "/reset", "/invite") and returns the link's
// path?query. Each mail is returned once, oldest first, so a flow that
// mails the same kind twice gets the second link the second time. The
// link must point at the portal's public URL.
func (e *portalEnv) mailLink(addr, path string) string {
	e.tb.Helper()
	deadline := time.Now().Add(mailWait)
	for {
		for i, m := range e.mail.Mails() {
			if !strings.EqualFold(m.To, addr) || e.mailTaken(i, false) {
				continue
			}
			for _, l := range linkRe.FindAllString(m.Text, -1) {
				u, err := url.Parse(l)
				if err != nil || u.Path != path {
					continue
				}
				if got := u.Scheme + "://" + u.Host; got != e.srv.URL {
					e.tb.Fatalf("mailed link %s is not on the portal's URL %s", l, e.srv.URL)
				}
				e.mailTaken(i, true)
				return u.RequestURI()
			}
		}
		if time.Now().After(deadline) {
			e.tb.Fatalf("no mail to %s with a link to %s after %v; mails: %+v", addr, path, mailWait, e.mailsTo(addr))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mailTaken reports whether mailLink returned mail i already; take marks it.
func (e *portalEnv) mailTaken(i int, take bool) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.taken == nil {
		e.taken = map[int]bool{}
	}
	was := e.taken[i]
	if take {
		e.taken[i] = true
	}
	return was
}

// tokenOf returns the token query parameter of a link.
func tokenOf(tb testing.TB, link string) string {
	tb.Helper()
	u, err := url.Parse(link)
	if err != nil || u.Query().Get("token") == "" {
		tb.Fatalf("link %q has no token", link)
	}
	return u.Query().Get("token")
}

// --- database snapshots ---

// snapshot fingerprints every table (pgtest.Snapshot), leaving out the
// columns that change on reads.
func snapshot(tb testing.TB, pool *pgxpool.Pool) map[string]string {
	tb.Helper()
	return pgtest.Snapshot(tb, pool, "api_keys.last_used_at", "sessions.last_seen_at")
}

// diffSnapshots describes what differs between two snapshots ("" = nothing).
func diffSnapshots(a, b map[string]string) string { return pgtest.DiffSnapshots(a, b) }

// --- misc ---

// lockedBuffer collects logs written from many goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
