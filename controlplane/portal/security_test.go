package portal_test

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/portal"
)

// TestCSRFRejected: a state-changing request without the right token, or
// from another site, is refused with 403 and changes nothing.
func TestCSRFRejected(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Acme")
	member := e.addMember(owner, controlplane.RoleMember)
	memberID := member.session().UserID
	ownerCSRF := csrfOf(owner.get("/team").must(t, http.StatusOK).body)
	memberCSRF := csrfOf(member.get("/team").must(t, http.StatusOK).body)
	if ownerCSRF == "" || ownerCSRF == memberCSRF {
		t.Fatalf("CSRF tokens: owner %q, member %q", ownerCSRF, memberCSRF)
	}
	invitee := newEmail("invitee")
	mails := len(e.mail.Mails())

	type attack struct {
		name string
		csrf []string // nil: no csrf field at all
		opts []reqOpt
	}
	attacks := func(right string, other string) []attack {
		return []attack{
			{"no token", nil, nil},
			{"empty token", []string{""}, nil},
			{"wrong token", []string{strings.Repeat("A", len(right))}, nil},
			{"token twice, the first wrong", []string{"wrong", right}, nil},
			{"another session's token", []string{other}, nil},
			{"cross-site Origin", []string{right}, []reqOpt{withHeader("Origin", "https://evil.example")}},
			{"Origin null", []string{right}, []reqOpt{withHeader("Origin", "null")}},
			{"same host, other scheme", []string{right}, []reqOpt{withHeader("Origin", strings.Replace(e.srv.URL, "http://", "https://", 1))}},
			{"Sec-Fetch-Site cross-site", []string{right}, []reqOpt{withHeader("Origin", ""), withHeader("Sec-Fetch-Site", "cross-site")}},
		}
	}
	signedIn := []struct {
		path string
		form url.Values
	}{
		{"/team/invite", url.Values{"email": {invitee}, "role": {"admin"}}},
		{"/team/" + memberID + "/role", url.Values{"role": {"admin"}}},
		{"/team/" + memberID + "/remove", url.Values{}},
		{"/logout", url.Values{}},
	}
	before := snapshot(t, e.pool)
	for _, target := range signedIn {
		for _, a := range attacks(ownerCSRF, memberCSRF) {
			form := cloneValues(target.form)
			if a.csrf != nil {
				form["csrf"] = a.csrf
			}
			res := owner.do(http.MethodPost, target.path, form, a.opts...)
			if res.status != http.StatusForbidden {
				t.Errorf("POST %s, %s: status %d, want 403", target.path, a.name, res.status)
			}
			if res.setCookie(e.sessionCookie()) != nil {
				t.Errorf("POST %s, %s: the session cookie was changed", target.path, a.name)
			}
		}
	}
	if d := diffSnapshots(before, snapshot(t, e.pool)); d != "" {
		t.Fatalf("refused requests changed the database: %s", d)
	}
	if n := len(e.mail.Mails()); n != mails {
		t.Fatalf("refused requests sent %d mails", n-mails)
	}
	owner.session() // still signed in
	if got := member.session().Role; got != controlplane.RoleMember {
		t.Fatalf("member's role %s after refused requests", got)
	}

	// The signed-out forms carry a double-submit token.
	creds := url.Values{"email": {owner.email}, "password": {owner.password}}
	signedOut := []struct {
		path string
		form url.Values
	}{
		{"/login", creds},
		{"/signup", url.Values{"organisation": {"Evil"}, "email": {newEmail("victim")}, "password": {testPassword}}},
		{"/reset", url.Values{"email": {owner.email}}},
	}
	b := e.newBrowser()
	right := csrfOf(b.get("/login").must(t, http.StatusOK).body)
	other := csrfOf(e.newBrowser().get("/login").body)
	for _, target := range signedOut {
		for _, a := range attacks(right, other) {
			form := cloneValues(target.form)
			if a.csrf != nil {
				form["csrf"] = a.csrf
			}
			res := b.do(http.MethodPost, target.path, form, a.opts...)
			if res.status != http.StatusForbidden {
				t.Errorf("POST %s signed out, %s: status %d, want 403", target.path, a.name, res.status)
			}
		}
		// A token without its cookie (another browser's page) is refused.
		form := cloneValues(target.form)
		form.Set("csrf", right)
		if res := e.newBrowser().do(http.MethodPost, target.path, form); res.status != http.StatusForbidden {
			t.Errorf("POST %s with a token but no cookie: status %d, want 403", target.path, res.status)
		}
	}
	if b.sessionToken() != "" {
		t.Fatal("a refused login set a session")
	}
	if d := diffSnapshots(before, snapshot(t, e.pool)); d != "" {
		t.Fatalf("refused signed-out requests changed the database: %s", d)
	}
	if n := len(e.mail.Mails()); n != mails {
		t.Fatalf("refused signed-out requests sent %d mails", n-mails)
	}

	// The same requests with the right token go through (the refusals
	// above were not for some other reason).
	b.post("/login", creds).redirectsTo(t, "/dashboard")
	owner.post("/team/invite", url.Values{"csrf": {ownerCSRF}, "email": {invitee}, "role": {"admin"}}).redirectsTo(t, "/team?m=invited")
}

// TestSessionFixation: sign-in always makes a new session; a session the
// browser carried before is not the one after, and no longer works.
func TestSessionFixation(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Acme")
	ctx := context.Background()

	// A cookie value chosen by an attacker before sign-in.
	b := e.newBrowser()
	planted := "fps_aaaaaaaaaaaaaaaa_" + strings.Repeat("b", 43)
	b.setCookie(e.sessionCookie(), planted)
	b.login(owner.email, owner.password).redirectsTo(t, "/dashboard")
	if tok := b.sessionToken(); tok == "" || tok == planted {
		t.Fatalf("session token after sign-in %q (planted %q)", tok, planted)
	}

	// The attacker's own working session planted in the victim's browser:
	// signing in replaces it, and the planted one is dead.
	attacker := e.newAccount("Evil")
	attackerTok := attacker.sessionToken()
	victim := e.newBrowser()
	victim.setCookie(e.sessionCookie(), attackerTok)
	victim.get("/team").must(t, http.StatusOK).contains(t, attacker.email)
	victim.post("/login", url.Values{"email": {owner.email}, "password": {owner.password}}).redirectsTo(t, "/dashboard")
	if tok := victim.sessionToken(); tok == attackerTok {
		t.Fatal("the planted session survived sign-in")
	}
	if got := victim.session().Email; got != owner.email {
		t.Fatalf("signed in as %s, want %s", got, owner.email)
	}
	if _, _, err := e.svc.SessionAuth(ctx, attackerTok); controlplane.ErrorCode(err) != controlplane.EUNAUTHORIZED {
		t.Fatalf("the planted session after sign-in: %v, want EUNAUTHORIZED", err)
	}
	attacker.get("/team").redirectsTo(t, "/login?next=%2Fteam")

	// Signing in again in the same browser rotates the token.
	old := owner.sessionToken()
	owner.get("/team").must(t, http.StatusOK)
	owner.post("/login", url.Values{"email": {owner.email}, "password": {owner.password}}).redirectsTo(t, "/dashboard")
	if owner.sessionToken() == old {
		t.Fatal("signing in again kept the session token")
	}
	if _, _, err := e.svc.SessionAuth(ctx, old); controlplane.ErrorCode(err) != controlplane.EUNAUTHORIZED {
		t.Fatalf("the previous session: %v, want EUNAUTHORIZED", err)
	}
	owner.get("/team").must(t, http.StatusOK)

	// So does confirming an address while signed in as somebody else.
	c := e.newBrowser()
	c.setCookie(e.sessionCookie(), owner.sessionToken())
	ownerTok := owner.sessionToken()
	email := newEmail("second")
	c.get("/team").must(t, http.StatusOK)
	c.post("/signup", url.Values{"organisation": {"Second"}, "email": {email}, "password": {testPassword}}).
		redirectsTo(t, "/signup?m=check-mail")
	link := e.mailLink(email, "/confirm")
	c.get(link).must(t, http.StatusOK)
	c.post("/confirm", url.Values{"token": {tokenOf(t, link)}, "password": {testPassword}}).redirectsTo(t, "/dashboard")
	if c.sessionToken() == ownerTok || c.session().Email != email {
		t.Fatal("confirming did not start a new session")
	}
	if _, _, err := e.svc.SessionAuth(ctx, ownerTok); controlplane.ErrorCode(err) != controlplane.EUNAUTHORIZED {
		t.Fatalf("the session the browser carried before confirming: %v, want EUNAUTHORIZED", err)
	}
}

// TestLogout: the token is dead afterwards, even replayed; other sessions
// of the user live on.
func TestLogout(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Acme")
	elsewhere := e.newBrowser()
	elsewhere.login(owner.email, owner.password).redirectsTo(t, "/dashboard")
	tok := owner.sessionToken()
	csrf := csrfOf(owner.get("/team").body)

	res := owner.submit("/team", "/logout", nil).redirectsTo(t, "/?m=signed-out")
	if c := res.setCookie(e.sessionCookie()); c == nil || c.MaxAge >= 0 || c.Value != "" {
		t.Fatalf("logout's session Set-Cookie %v, want it cleared", c)
	}
	if owner.sessionToken() != "" {
		t.Fatal("the browser kept the session cookie")
	}
	owner.follow(res).must(t, http.StatusOK).contains(t, "You are signed out.", `href="/login"`)
	if _, _, err := e.svc.SessionAuth(context.Background(), tok); controlplane.ErrorCode(err) != controlplane.EUNAUTHORIZED {
		t.Fatalf("SessionAuth after logout: %v, want EUNAUTHORIZED", err)
	}

	// Replayed: the old cookie (and its CSRF token) open nothing.
	before := snapshot(t, e.pool)
	replay := e.newBrowser()
	replay.setCookie(e.sessionCookie(), tok)
	res = replay.get("/team").redirectsTo(t, "/login?next=%2Fteam")
	if c := res.setCookie(e.sessionCookie()); c == nil || c.MaxAge >= 0 {
		t.Fatal("a dead session cookie was not cleared")
	}
	replay.setCookie(e.sessionCookie(), tok)
	r := replay.do(http.MethodPost, "/team/invite", url.Values{"csrf": {csrf}, "email": {newEmail("x")}, "role": {"admin"}})
	if r.status != http.StatusForbidden && r.status != http.StatusUnauthorized {
		t.Errorf("replayed POST /team/invite: status %d, want 401 or 403", r.status)
	}
	// Signing out again (a stale tab) just shows the signed-out page.
	replay.setCookie(e.sessionCookie(), tok)
	replay.do(http.MethodPost, "/logout", url.Values{"csrf": {csrf}}).redirectsTo(t, "/?m=signed-out")
	if replay.sessionToken() != "" {
		t.Error("the dead cookie survived a sign-out")
	}
	if d := diffSnapshots(before, snapshot(t, e.pool)); d != "" {
		t.Fatalf("replayed requests changed the database: %s", d)
	}
	elsewhere.get("/team").must(t, http.StatusOK) // another session lives on
}

// TestSessionExpiry: a session idle for too long is refused and its
// cookie cleared.
func TestSessionExpiry(t *testing.T) {
	t.Parallel()
	const ttl = 2 * time.Second
	e := newPortalEnv(t, withService(func(c *controlplane.Config) { c.SessionIdleTTL = ttl }))
	owner := e.newAccount("Acme")
	tok := owner.sessionToken()
	owner.get("/team").must(t, http.StatusOK)
	time.Sleep(ttl + 100*time.Millisecond)
	res := owner.get("/team").redirectsTo(t, "/login?next=%2Fteam")
	if c := res.setCookie(e.sessionCookie()); c == nil || c.MaxAge >= 0 {
		t.Fatal("the expired session's cookie was not cleared")
	}
	if _, _, err := e.svc.SessionAuth(context.Background(), tok); controlplane.ErrorCode(err) != controlplane.EUNAUTHORIZED {
		t.Fatalf("SessionAuth of an expired session: %v", err)
	}
	owner.login(owner.email, owner.password).redirectsTo(t, "/dashboard")
}

// TestRoleChecks: viewers and members see no team actions and cannot
// perform them; admins cannot make or unmake owners.
func TestRoleChecks(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Acme")
	ownerID := owner.session().UserID
	admin := e.addMember(owner, controlplane.RoleAdmin)
	target := e.addMember(owner, controlplane.RoleMember)
	targetID := target.session().UserID
	viewer := e.addMember(owner, controlplane.RoleViewer)
	member := e.addMember(owner, controlplane.RoleMember)

	before := snapshot(t, e.pool)
	mails := len(e.mail.Mails())
	for _, b := range []*browser{viewer, member} {
		role := b.session().Role
		b.get("/team").must(t, http.StatusOK).
			lacks(t, `action="/team/invite"`, `/role"`, `/remove"`).contains(t, target.email)
		selfID := b.session().UserID
		for _, req := range []struct {
			path string
			form url.Values
		}{
			{"/team/invite", url.Values{"email": {newEmail("x")}, "role": {"admin"}}},
			{"/team/" + targetID + "/role", url.Values{"role": {"viewer"}}},
			{"/team/" + targetID + "/remove", nil},
			{"/team/" + selfID + "/role", url.Values{"role": {"owner"}}},
			{"/team/" + ownerID + "/remove", nil},
		} {
			if res := b.post(req.path, req.form); res.status != http.StatusForbidden {
				t.Errorf("%s: POST %s: status %d, want 403", role, req.path, res.status)
			}
		}
	}
	for _, req := range []struct {
		path string
		form url.Values
	}{
		{"/team/" + targetID + "/role", url.Values{"role": {"owner"}}},
		{"/team/" + ownerID + "/role", url.Values{"role": {"viewer"}}},
		{"/team/" + ownerID + "/remove", nil},
		{"/team/invite", url.Values{"email": {newEmail("x")}, "role": {"owner"}}},
	} {
		admin.get("/team")
		if res := admin.post(req.path, req.form); res.status != http.StatusForbidden {
			t.Errorf("admin: POST %s %v: status %d, want 403", req.path, req.form, res.status)
		}
	}
	if d := diffSnapshots(before, snapshot(t, e.pool)); d != "" {
		t.Fatalf("refused requests changed the database: %s", d)
	}
	if n := len(e.mail.Mails()); n != mails {
		t.Fatalf("refused requests sent %d mails", n-mails)
	}
	// Signed out, the team page and its actions need a session.
	anon := e.newBrowser()
	anon.get("/team").redirectsTo(t, "/login?next=%2Fteam")
	anon.get("/login")
	if res := anon.post("/team/invite", url.Values{"email": {newEmail("x")}, "role": {"admin"}}); res.status != http.StatusUnauthorized {
		t.Fatalf("signed-out POST /team/invite: status %d, want 401", res.status)
	}
}

// TestNoEnumeration: signup, login and reset answer the same whether an
// address has an account or not.
func TestNoEnumeration(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Acme")
	pending := newEmail("pending") // invited, no password yet
	owner.submit("/team", "/team/invite", url.Values{"email": {pending}, "role": {"member"}}).redirectsTo(t, "/team?m=invited")
	unconfirmed := newEmail("unconfirmed")
	e.newBrowser().signup("Later", unconfirmed, testPassword)

	// same compares two answers: status, Location, the names of the
	// cookies set, and the body with CSRF tokens and the typed address
	// blanked.
	same := func(what string, a, b *response, addrA, addrB string) {
		t.Helper()
		if a.status != b.status || a.header.Get("Location") != b.header.Get("Location") {
			t.Fatalf("%s: %d %q vs %d %q", what, a.status, a.header.Get("Location"), b.status, b.header.Get("Location"))
		}
		if ca, cb := cookieNames(a), cookieNames(b); ca != cb {
			t.Fatalf("%s: cookies set %q vs %q", what, ca, cb)
		}
		ba, bb := withoutCSRF(a.body), withoutCSRF(b.body)
		if addrA != "" && addrB != "" {
			ba = strings.ReplaceAll(ba, html.EscapeString(addrA), "ADDRESS")
			bb = strings.ReplaceAll(bb, html.EscapeString(addrB), "ADDRESS")
		}
		if ba != bb {
			t.Fatalf("%s: bodies differ:\n%s\n---\n%s", what, ba, bb)
		}
	}
	send := func(path string, form url.Values) (*response, *response) {
		b := e.newBrowser()
		res := b.submit(path, path, form)
		page := res
		if res.status == http.StatusSeeOther {
			page = b.follow(res)
		}
		return res, page
	}

	// Signup: an existing address, a pending and an unconfirmed one, a new one.
	newAddr := newEmail("fresh")
	signup := func(addr, pw string) (*response, *response) {
		return send("/signup", url.Values{"organisation": {"Org"}, "email": {addr}, "password": {pw}})
	}
	r0, p0 := signup(newAddr, testPassword)
	r0.redirectsTo(t, "/signup?m=check-mail")
	for _, addr := range []string{owner.email, strings.ToUpper(owner.email), pending, unconfirmed} {
		r, p := signup(addr, testPassword)
		same("signup "+addr, r0, r, newAddr, addr)
		same("signup page after "+addr, p0, p, newAddr, addr)
	}
	r0, _ = signup(newEmail("short"), "short")
	r, _ := signup(owner.email, "short")
	same("signup with a short password", withoutAddr(r0), withoutAddr(r), "", "")

	// Login: unknown address, wrong password, pending and unconfirmed users.
	unknown := newEmail("nobody")
	login := func(addr, pw string) *response {
		b := e.newBrowser()
		return b.submit("/login", "/login", url.Values{"email": {addr}, "password": {pw}})
	}
	l0 := login(unknown, "some password here").must(t, http.StatusUnauthorized)
	for _, c := range []struct{ addr, pw string }{
		{owner.email, "some password here"},
		{pending, "some password here"},
		{unconfirmed, "some password here"},
		{unconfirmed, testPassword},
		{"not an address", "some password here"},
		{owner.email, ""},
	} {
		same("login "+c.addr, l0, login(c.addr, c.pw), unknown, c.addr)
	}

	// Reset: known, pending, unknown.
	r0, p0 = send("/reset", url.Values{"email": {unknown}})
	r0.redirectsTo(t, "/reset?m=check-mail")
	for _, addr := range []string{owner.email, pending, unconfirmed} {
		r, p := send("/reset", url.Values{"email": {addr}})
		same("reset "+addr, r0, r, unknown, addr)
		same("reset page after "+addr, p0, p, unknown, addr)
	}
	if len(e.mailsTo(unknown)) != 0 || len(e.mailsTo(newEmail("x"))) != 0 {
		t.Fatal("mail to an unknown address")
	}
}

// withoutAddr blanks every value="..." of a page (the typed inputs).
func withoutAddr(r *response) *response {
	c := *r
	c.body = regexp.MustCompile(`value="[^"]*"`).ReplaceAllString(r.body, `value=""`)
	return &c
}

func cookieNames(r *response) string {
	var names []string
	for _, c := range (&http.Response{Header: r.header}).Cookies() {
		names = append(names, c.Name)
	}
	return strings.Join(names, ",")
}

// TestCookieAttributes: HttpOnly, SameSite, Path=/, no Domain; Secure and
// the __Host- prefix unless InsecureCookies.
func TestCookieAttributes(t *testing.T) {
	t.Parallel()
	for _, secure := range []bool{false, true} {
		name := map[bool]string{false: "InsecureCookies", true: "TLS"}[secure]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var opts []func(*envConfig)
			if secure {
				opts = append(opts, withTLS())
			}
			e := newPortalEnv(t, opts...)
			prefix := map[bool]string{false: "", true: "__Host-"}[secure]
			check := func(what string, c *http.Cookie, wantName string, sameSite http.SameSite) {
				t.Helper()
				if c == nil {
					t.Fatalf("%s: no cookie %s", what, wantName)
				}
				if c.Name != wantName || !c.HttpOnly || c.SameSite != sameSite || c.Path != "/" || c.Domain != "" || c.Secure != secure {
					t.Fatalf("%s: cookie %s: HttpOnly %v, SameSite %v, Path %q, Domain %q, Secure %v; want HttpOnly, SameSite %v, Path /, no Domain, Secure %v",
						what, c.Name, c.HttpOnly, c.SameSite, c.Path, c.Domain, c.Secure, sameSite, secure)
				}
			}
			b := e.newBrowser()
			res := b.get("/login").must(t, http.StatusOK)
			check("signed-out CSRF", res.setCookie(e.csrfCookie()), prefix+"fp_csrf", http.SameSiteStrictMode)

			owner := e.newAccount("Acme")
			res = b.login(owner.email, owner.password).redirectsTo(t, "/dashboard")
			c := res.setCookie(prefix + "fp_session")
			check("session", c, prefix+"fp_session", http.SameSiteLaxMode)
			if ttl := time.Until(c.Expires); ttl <= time.Hour || ttl > controlplane.DefaultSessionTTL+time.Minute {
				t.Fatalf("session cookie expires in %v", ttl)
			}
			if res.setCookie("fp_session") != nil && secure {
				t.Fatal("an unprefixed session cookie over TLS")
			}
			res = b.submit("/team", "/logout", nil).redirectsTo(t, "/?m=signed-out")
			check("cleared session", res.setCookie(prefix+"fp_session"), prefix+"fp_session", http.SameSiteLaxMode)
			if hsts := res.header.Get("Strict-Transport-Security"); (hsts != "") != secure {
				t.Fatalf("Strict-Transport-Security %q with secure=%v", hsts, secure)
			}
		})
	}
}

var (
	scriptTagRe  = regexp.MustCompile(`(?is)<script([^>]*)>(.*?)</script>`)
	inlineRe     = regexp.MustCompile(`(?i)(\son[a-z]+\s*=|\sstyle\s*=|<style|javascript:)`)
	externalRe   = regexp.MustCompile(`(?i)(src|href|action)\s*=\s*"(https?:)?//`)
	postFormRe   = regexp.MustCompile(`(?is)<form[^>]*method="post"[^>]*>(.*?)</form>`)
	inputRe      = regexp.MustCompile(`(?is)<(input|select|textarea)\b([^>]*)>`)
	idRe         = regexp.MustCompile(`\bid="([^"]+)"`)
	typeHiddenRe = regexp.MustCompile(`\btype="hidden"`)
)

// checkPage asserts what every portal HTML page must be: security
// headers, no inline script or style (the CSP forbids them), nothing from
// another origin, a CSRF field in every POST form, a label for every
// input. P3 and P4 may call it on their pages.
func checkPage(t *testing.T, res *response, secure bool) {
	t.Helper()
	h := res.header
	csp := h.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'self'", "script-src 'self'", "style-src 'self'", "object-src 'none'",
		"base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("%s: CSP %q lacks %q", res.path, csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-") || strings.Contains(csp, "*") {
		t.Errorf("%s: CSP %q allows unsafe sources", res.path, csp)
	}
	for k, v := range map[string]string{
		"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
		"Cross-Origin-Opener-Policy": "same-origin",
	} {
		if got := h.Get(k); got != v {
			t.Errorf("%s: %s %q, want %q", res.path, k, got, v)
		}
	}
	if h.Get("X-Request-ID") == "" || h.Get("Permissions-Policy") == "" {
		t.Errorf("%s: no X-Request-ID or Permissions-Policy", res.path)
	}
	if got := h.Get("Strict-Transport-Security"); (got != "") != secure {
		t.Errorf("%s: Strict-Transport-Security %q with secure=%v", res.path, got, secure)
	}
	if res.status == http.StatusSeeOther || res.body == "" {
		return
	}
	if ct := h.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("%s: Content-Type %q", res.path, ct)
	}
	if cc := h.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("%s: Cache-Control %q, want no-store", res.path, cc)
	}
	for _, m := range scriptTagRe.FindAllStringSubmatch(res.body, -1) {
		if !strings.Contains(m[1], `src="/static/`) || strings.TrimSpace(m[2]) != "" {
			t.Errorf("%s: inline script %q", res.path, m[0])
		}
	}
	if m := inlineRe.FindString(res.body); m != "" {
		t.Errorf("%s: inline handler or style %q", res.path, m)
	}
	if m := externalRe.FindString(res.body); m != "" {
		t.Errorf("%s: a resource or link of another origin: %q", res.path, m)
	}
	for _, m := range postFormRe.FindAllStringSubmatch(res.body, -1) {
		if !strings.Contains(m[1], `name="csrf"`) {
			t.Errorf("%s: a POST form without a CSRF field: %.200s", res.path, m[0])
		}
	}
	for _, m := range inputRe.FindAllStringSubmatch(res.body, -1) {
		if typeHiddenRe.MatchString(m[2]) {
			continue
		}
		id := idRe.FindStringSubmatch(m[2])
		if id == nil || !strings.Contains(res.body, `for="`+id[1]+`"`) {
			t.Errorf("%s: a form control without a label: %s", res.path, m[0])
		}
	}
	if !strings.Contains(res.body, `<html lang="en">`) || !strings.Contains(res.body, `name="viewport"`) {
		t.Errorf("%s: no lang or viewport", res.path)
	}
}

// TestSecurityHeaders checks every account page, signed out and in, and
// the error pages, in both cookie modes.
func TestSecurityHeaders(t *testing.T) {
	t.Parallel()
	for _, secure := range []bool{false, true} {
		t.Run(map[bool]string{false: "http", true: "TLS"}[secure], func(t *testing.T) {
			t.Parallel()
			var opts []func(*envConfig)
			if secure {
				opts = append(opts, withTLS())
			}
			e := newPortalEnv(t, append(opts, withPortal(func(o *portal.Options) { o.LoginRatePerMinute = 3 }))...)
			owner := e.newAccount("Acme")
			e.addMember(owner, controlplane.RoleViewer)
			anon := e.newBrowser()
			for _, path := range []string{"/", "/signup", "/signup?m=check-mail", "/login", "/login?next=%2Fteam",
				"/reset", "/reset?m=check-mail", "/confirm?token=x", "/confirm", "/reset/confirm?token=x",
				"/reset/confirm", "/invite?token=x", "/invite", "/no-such-page", "/team", "/static/app.css"} {
				res := anon.get(path)
				if path == "/static/app.css" {
					res.body = "" // not HTML
				}
				checkPage(t, res, secure)
			}
			for _, path := range []string{"/team", "/team?m=invited", "/signup", "/no-such-page"} {
				checkPage(t, owner.get(path), secure)
			}
			// Answers to posts: a form error, a refusal, a redirect, a rate limit.
			checkPage(t, owner.submit("/team", "/team/invite", url.Values{"email": {"bad"}, "role": {"admin"}}), secure)
			checkPage(t, owner.post("/team/invite", url.Values{"csrf": {"wrong"}}), secure)
			checkPage(t, anon.submit("/signup", "/signup", url.Values{"organisation": {"X"}, "email": {"bad"}, "password": {"x"}}), secure)
			// The limit is 3: the fourth attempt here is limited.
			limited := false
			for range 4 {
				res := anon.submit("/login", "/login", url.Values{"email": {"a@example.com"}, "password": {"wrong password"}})
				checkPage(t, res, secure)
				limited = limited || res.status == http.StatusTooManyRequests
			}
			if !limited {
				t.Error("no sign-in attempt was rate limited")
			}
		})
	}
}

// TestRateLimits: login, signup and reset posts are limited per client
// address; the pages themselves are not.
func TestRateLimits(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t, withPortal(func(o *portal.Options) {
		o.LoginRatePerMinute, o.SignupRatePerMinute, o.ResetRatePerMinute = 3, 2, 2
	}))
	owner := e.newBrowser()
	owner.email = newEmail("owner")
	// The signup limit is 2 per minute: use one here, one below.
	owner.signup("Acme", owner.email, testPassword)
	link := e.mailLink(owner.email, "/confirm")
	owner.submit(link, "/confirm", url.Values{"token": {tokenOf(t, link)}, "password": {testPassword}}).redirectsTo(t, "/dashboard")

	b := e.newBrowser()
	for i := range 3 {
		b.submit("/login", "/login", url.Values{"email": {owner.email}, "password": {"wrong password " + string(rune('a'+i))}}).
			must(t, http.StatusUnauthorized)
	}
	// The right password is refused too while the limit holds.
	res := b.submit("/login", "/login", url.Values{"email": {owner.email}, "password": {testPassword}}).
		must(t, http.StatusTooManyRequests).contains(t, "too many sign-in attempts")
	if res.header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	if b.sessionToken() != "" {
		t.Fatal("signed in past the limit")
	}
	b.get("/login").must(t, http.StatusOK)

	e.newBrowser().signup("Second", newEmail("second"), testPassword)
	e.newBrowser().submit("/signup", "/signup", url.Values{"organisation": {"Third"}, "email": {newEmail("third")}, "password": {testPassword}}).
		must(t, http.StatusTooManyRequests)

	for range 2 {
		e.newBrowser().submit("/reset", "/reset", url.Values{"email": {owner.email}}).redirectsTo(t, "/reset?m=check-mail")
	}
	e.newBrowser().submit("/reset", "/reset", url.Values{"email": {owner.email}}).must(t, http.StatusTooManyRequests)
	e.waitMails(owner.email, 3) // the confirmation and two resets
	time.Sleep(100 * time.Millisecond)
	if n := len(e.mailsTo(owner.email)); n != 3 {
		t.Fatalf("%d mails to %s, want 3", n, owner.email)
	}
}

// TestLinkRateLimits: the forms behind e-mail links (confirm, new
// password, invitation) check passwords or hash new ones, so their posts
// share a limit per client address; their pages are not limited.
func TestLinkRateLimits(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t, withPortal(func(o *portal.Options) { o.ResetRatePerMinute = 3 }))
	b := e.newBrowser()
	email := newEmail("owner")
	b.signup("Acme", email, testPassword)
	link := e.mailLink(email, "/confirm")
	tok := tokenOf(t, link)
	for i := range 3 {
		b.submit(link, "/confirm", url.Values{"token": {tok}, "password": {fmt.Sprintf("guess number %d", i)}}).
			must(t, http.StatusUnauthorized)
	}
	// The right password is refused too while the limit holds, and so are
	// the other links' forms.
	res := b.submit(link, "/confirm", url.Values{"token": {tok}, "password": {testPassword}}).
		must(t, http.StatusTooManyRequests).contains(t, "too many attempts with e-mail links")
	if res.header.Get("Retry-After") == "" || b.sessionToken() != "" {
		t.Fatal("429 without Retry-After, or signed in past the limit")
	}
	for _, path := range []string{"/reset/confirm", "/invite"} {
		b.get("/login")
		b.post(path, url.Values{"token": {tok}, "password": {testPassword}}).must(t, http.StatusTooManyRequests)
	}
	b.get(link).must(t, http.StatusOK)
	// Sign-in has its own limit.
	e.newBrowser().login(email, testPassword).must(t, http.StatusUnauthorized) // not confirmed
}

// TestNoOpenRedirect: next= only ever leads to a path of the portal.
func TestNoOpenRedirect(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Acme")
	for _, next := range []string{
		"//evil.example", "///evil.example", "/\\evil.example", "\\/evil.example", "https://evil.example",
		"http:evil.example", "https:/evil.example", "/\t/evil.example", "/\n/evil.example", "/\r\n/evil.example",
		"javascript:alert(1)", "evil.example", " //evil.example", "/%2F%2Fevil.example", "/.//evil.example",
		"/..//evil.example", "//evil.example@portal", "/\\\\evil.example", "\t//evil.example",
	} {
		b := e.newBrowser()
		page := b.get("/login?next="+url.QueryEscape(next)).must(t, http.StatusOK)
		res := b.post("/login", url.Values{"email": {owner.email}, "password": {owner.password}, "next": {next}}).
			must(t, http.StatusSeeOther)
		loc := res.header.Get("Location")
		if !staysLocal(loc) {
			t.Errorf("next=%q: Location %q leaves the portal", next, loc)
		}
		if strings.Contains(page.body, `name="next"`) && !staysLocal(next) {
			t.Errorf("next=%q: the login form carries it on", next)
		}
		// Signed in, GET /login?next= redirects at once: also locally.
		loc = b.get("/login?next="+url.QueryEscape(next)).must(t, http.StatusSeeOther).header.Get("Location")
		if !staysLocal(loc) {
			t.Errorf("signed in, next=%q: Location %q leaves the portal", next, loc)
		}
	}
	// A local next with a query survives.
	b := e.newBrowser()
	b.get("/login?next=" + url.QueryEscape("/team?tab=x"))
	b.post("/login", url.Values{"email": {owner.email}, "password": {owner.password}, "next": {"/team?tab=x"}}).
		redirectsTo(t, "/team?tab=x")
}

// staysLocal resolves loc as a browser does (dropping tabs and newlines,
// reading "\" as "/") against the portal and reports whether it stays there.
func staysLocal(loc string) bool {
	if loc == "" || !strings.HasPrefix(loc, "/") {
		return false
	}
	clean := strings.Map(func(r rune) rune {
		switch {
		case r == '\t' || r == '\n' || r == '\r':
			return -1
		case r == '\\':
			return '/'
		}
		return r
	}, strings.TrimSpace(loc))
	base, _ := url.Parse("https://portal.example/login")
	u, err := base.Parse(clean)
	return err == nil && u.Host == "portal.example" && u.Scheme == "https"
}

// TestNoSecretsInPages: session tokens, passwords and e-mail link tokens
// appear in no page (a link's token only in its own form) nor in the logs.
func TestNoSecretsInPages(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Acme")
	sessTok := owner.sessionToken()
	invitee := newEmail("invitee")
	owner.submit("/team", "/team/invite", url.Values{"email": {invitee}, "role": {"viewer"}}).redirectsTo(t, "/team?m=invited")
	inviteTok := tokenOf(t, e.mailLink(invitee, "/invite"))
	anon := e.newBrowser()
	anon.submit("/reset", "/reset", url.Values{"email": {owner.email}}).redirectsTo(t, "/reset?m=check-mail")
	resetTok := tokenOf(t, e.mailLink(owner.email, "/reset"))

	secrets := []string{sessTok, sessTok[strings.LastIndexByte(sessTok, '_')+1:], inviteTok, resetTok, owner.password}
	var pages []*response
	for _, path := range []string{"/team", "/team?m=invited", "/signup", "/login", "/no-such-page"} {
		pages = append(pages, owner.get(path))
	}
	for _, path := range []string{"/reset?m=check-mail", "/signup?m=check-mail", "/login?m=password-set"} {
		pages = append(pages, anon.get(path))
	}
	pages = append(pages,
		anon.submit("/login", "/login", url.Values{"email": {owner.email}, "password": {owner.password + "x"}}),
		anon.submit("/signup", "/signup", url.Values{"organisation": {""}, "email": {owner.email}, "password": {owner.password}}),
		owner.post("/team/invite", url.Values{"csrf": {"wrong"}}),
	)
	for _, p := range pages {
		for _, s := range secrets {
			if strings.Contains(p.body, s) {
				t.Errorf("%s: the page contains a secret (%.12s…)", p.path, s)
			}
		}
		if strings.Contains(p.body, "fpt_") || strings.Contains(p.body, "fps_") {
			t.Errorf("%s: the page contains a token", p.path)
		}
	}
	// A link's page holds its own token (in the form that spends it) only.
	if p := anon.get("/reset/confirm?token=" + url.QueryEscape(resetTok)); !strings.Contains(p.body, resetTok) || strings.Contains(p.body, inviteTok) {
		t.Error("the reset page does not carry (only) its token")
	}
	if p := anon.get("/invite?token=" + url.QueryEscape(inviteTok)); !strings.Contains(p.body, inviteTok) || strings.Contains(p.body, resetTok) {
		t.Error("the invitation page does not carry (only) its token")
	}
	logs := e.logs.String()
	for _, s := range secrets[:4] {
		if strings.Contains(logs, s) {
			t.Errorf("the logs contain a secret (%.12s…)", s)
		}
	}
}
