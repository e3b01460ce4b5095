package portal_test

// HTTP-level tests of the settings pages (settings*.go): enrollment
// tokens, grants with their preview and one-time creds, API keys, usage
// and billing (off, a fake provider, the real Stripe adapter against
// stripe-mock), the audit log, and role checks.

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/stripebilling"
	"github.com/fleetplane/fleetplane/internal/stripemock"
)

// settingsCtx is a context authorized as b's signed-in user, for Service
// calls that set up or check what the pages did.
func settingsCtx(b *browser) context.Context {
	b.tb.Helper()
	p, _, err := b.e.svc.SessionAuth(context.Background(), b.sessionToken())
	if err != nil {
		b.tb.Fatalf("SessionAuth: %v", err)
	}
	return controlplane.NewContextWithPrincipal(context.Background(), p)
}

// settingsFleet creates a fleet (and vehicles in it) through the Service.
func settingsFleet(b *browser, slug string, vehicles ...string) {
	b.tb.Helper()
	ctx := settingsCtx(b)
	if _, err := b.e.svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: slug, Name: "Fleet " + slug, Environment: slug}); err != nil {
		b.tb.Fatalf("CreateFleet: %v", err)
	}
	for _, v := range vehicles {
		if _, err := b.e.svc.CreateVehicle(ctx, slug, controlplane.VehicleCreate{VehicleID: v}); err != nil {
			b.tb.Fatalf("CreateVehicle: %v", err)
		}
	}
}

// countRows counts a table's rows.
func countRows(tb testing.TB, e *portalEnv, table string) int {
	tb.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		tb.Fatalf("counting %s: %v", table, err)
	}
	return n
}

// elementText returns the unescaped text of the first element with id
// (up to its closing tag), or fails.
func elementText(tb testing.TB, r *response, tag, id string) string {
	tb.Helper()
	re := regexp.MustCompile(`(?s)<` + tag + `[^>]* id="` + regexp.QuoteMeta(id) + `"[^>]*>(.*?)</` + tag + `>`)
	m := re.FindStringSubmatch(r.body)
	if m == nil {
		tb.Fatalf("%s: no <%s id=%q>:\n%.3000s", r.path, tag, id, r.body)
	}
	return html.UnescapeString(strings.TrimSpace(m[1]))
}

var codeRe = regexp.MustCompile(`<li><code>([^<]*)</code></li>`)

// subjectList returns the subjects of the <ul id=id> list ("Nothing." = none).
func subjectList(tb testing.TB, r *response, id string) []string {
	tb.Helper()
	re := regexp.MustCompile(`(?s)<(ul|p)[^>]* id="` + regexp.QuoteMeta(id) + `"[^>]*>(.*?)</(ul|p)>`)
	m := re.FindStringSubmatch(r.body)
	if m == nil {
		tb.Fatalf("%s: no list %q:\n%.3000s", r.path, id, r.body)
	}
	out := []string{}
	for _, c := range codeRe.FindAllStringSubmatch(m[2], -1) {
		out = append(out, html.UnescapeString(c[1]))
	}
	return out
}

// noInlineCode asserts what the CSP forbids is absent from a page: inline
// scripts, event handler attributes, style attributes and elements.
func noInlineCode(tb testing.TB, r *response) {
	tb.Helper()
	for _, re := range []*regexp.Regexp{
		regexp.MustCompile(`<script(?:\s[^>]*)?>`), regexp.MustCompile(`\son[a-z]+=`),
		regexp.MustCompile(`\sstyle=`), regexp.MustCompile(`<style`),
	} {
		for _, m := range re.FindAllString(r.body, -1) {
			if strings.HasPrefix(m, "<script") && strings.Contains(m, ` src="/static/`) {
				continue
			}
			tb.Errorf("%s: %q violates the CSP", r.path, m)
		}
	}
	// Every visible form control has a label.
	ids := regexp.MustCompile(`<(?:input|select|textarea)\s[^>]*?id="([^"]+)"`)
	for _, m := range ids.FindAllStringSubmatch(r.body, -1) {
		if !strings.Contains(r.body, `for="`+m[1]+`"`) {
			tb.Errorf("%s: control #%s has no <label for>", r.path, m[1])
		}
	}
	for _, m := range regexp.MustCompile(`<(?:input|select|textarea)\s[^>]*>`).FindAllString(r.body, -1) {
		if !strings.Contains(m, ` id="`) && !strings.Contains(m, `type="hidden"`) {
			tb.Errorf("%s: control without id (and label): %s", r.path, m)
		}
	}
}

// --- enrollment tokens ---

var installRe = regexp.MustCompile(`curl -fsSL \S+/install\.sh \| sudo sh -s -- --token (fpe_[A-Za-z0-9_]+)`)

func TestSettingsEnrollmentTokenShownOnce(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Enroll Org")
	settingsFleet(owner, "alpha")

	page := owner.get("/fleets/alpha/enroll").must(t, http.StatusOK).contains(t, `id="enroll-create"`, "No tokens.")
	noInlineCode(t, page)

	res := owner.submit("/fleets/alpha/enroll", "/fleets/alpha/enroll", url.Values{
		"expires_in": {"168h"}, "max_uses": {"3"}, "source_cidrs": {"203.0.113.7, 198.51.100.0/24"}, "description": {"hangar 2"},
	}).must(t, http.StatusOK)
	noInlineCode(t, res)
	if cc := res.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	cmd := elementText(t, res, "pre", "enroll-command")
	m := installRe.FindStringSubmatch(cmd)
	if m == nil || !strings.HasPrefix(cmd, "curl -fsSL "+e.srv.URL+"/install.sh |") {
		t.Fatalf("install line %q", cmd)
	}
	secret := m[1]
	res.contains(t, `data-copy="enroll-command"`, `data-replace-url="/fleets/alpha/enroll"`, `src="/static/settings.js"`,
		"198.51.100.0/24", "203.0.113.7/32")

	// The token works (the Service's list has it: 3 uses, the networks),
	// and its secret is nowhere else: not in the list, not on reload.
	toks, err := e.svc.EnrollmentTokens(settingsCtx(owner), "alpha", controlplane.PageRequest{}, false)
	if err != nil || len(toks.Items) != 1 {
		t.Fatalf("tokens: %v %v", toks, err)
	}
	tok := toks.Items[0]
	if tok.MaxUses != 3 || !slices.Equal(tok.SourceCIDRs, []string{"198.51.100.0/24", "203.0.113.7/32"}) || tok.Description != "hangar 2" {
		t.Errorf("token %+v", tok)
	}
	if !strings.Contains(secret, tok.ID) {
		t.Errorf("secret %q is not token %s's", secret, tok.ID)
	}
	if d := time.Until(tok.ExpiresAt); d < 167*time.Hour || d > 168*time.Hour {
		t.Errorf("expires in %v, want 7 days", d)
	}
	for _, path := range []string{"/fleets/alpha/enroll", "/fleets/alpha/enroll?all=1"} {
		owner.get(path).must(t, http.StatusOK).contains(t, tok.ID, "0 of 3", "hangar 2").lacks(t, secret, "fpe_", "install.sh")
	}

	// Bad input comes back on the form, and creates nothing.
	for _, tc := range []struct {
		form url.Values
		want string
	}{
		{url.Values{"expires_in": {"24h"}, "max_uses": {"0"}}, "Uses: must be a whole number"},
		{url.Values{"expires_in": {"24h"}, "max_uses": {"1"}, "source_cidrs": {"not-a-net"}}, "Source networks"},
		{url.Values{"expires_in": {"9999h"}, "max_uses": {"1"}}, "Expires: choose one of the offered lifetimes"},
		{url.Values{"expires_in": {"24h"}, "max_uses": {"2"}, "vehicle_id": {"v-1"}}, "Uses: must be 1"},
	} {
		before := countRows(t, e, "enrollment_tokens")
		owner.submit("/fleets/alpha/enroll", "/fleets/alpha/enroll", tc.form).must(t, http.StatusBadRequest).
			contains(t, tc.want, `id="enroll-create"`).lacks(t, "fpe_")
		if n := countRows(t, e, "enrollment_tokens"); n != before {
			t.Errorf("%v created a token", tc.form)
		}
	}
	owner.submit("/fleets/alpha/enroll", "/fleets/nope/enroll", url.Values{"expires_in": {"24h"}, "max_uses": {"1"}}).
		must(t, http.StatusNotFound)

	// Revoke.
	owner.submit("/fleets/alpha/enroll", "/fleets/alpha/enroll/"+tok.ID+"/revoke", nil).
		redirectsTo(t, "/fleets/alpha/enroll?m=revoked")
	owner.get("/fleets/alpha/enroll").must(t, http.StatusOK).lacks(t, tok.ID)
	owner.get("/fleets/alpha/enroll?all=1").must(t, http.StatusOK).contains(t, tok.ID, ">revoked<")
	owner.submit("/fleets/alpha/enroll", "/fleets/alpha/enroll/NOT-AN-ID/revoke", nil).must(t, http.StatusNotFound)
}

// --- grants ---

func grantForm(fleet, vehicles string, cats ...string) url.Values {
	return url.Values{"fleet": {fleet}, "vehicle_ids": {vehicles}, "categories": cats, "expires_in": {"24h"},
		"source_cidrs": {"192.0.2.0/24"}, "description": {"partner"}}
}

func TestSettingsGrantPreview(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Preview Org")
	settingsFleet(owner, "alpha", "v-1", "v-2")

	page := owner.get("/grants/new").must(t, http.StatusOK).
		contains(t, `data-preview="grant-preview"`, `formaction="/grants/preview"`, `id="grant-create"`, `src="/static/settings.js"`)
	noInlineCode(t, page)

	// What the Service computes for the same input, as a dry run.
	want, err := e.svc.CreateGrant(settingsCtx(owner), controlplane.GrantCreate{
		Scopes:    []controlplane.GrantScopeSpec{{Fleet: "alpha", VehicleIDs: []string{"v-1", "v-2"}, Categories: []controlplane.GrantCategory{"state", "cmd"}}},
		ExpiresAt: new(time.Now().Add(time.Hour)), SourceCIDRs: []string{"192.0.2.0/24"}, DryRun: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(want.Publish) == 0 || len(want.Subscribe) == 0 {
		t.Fatalf("dry run: %+v", want)
	}

	before := snapshot(t, e.pool)
	form := grantForm("alpha", "v-1, v-2", "state", "cmd")
	// settings.js's request: the preview box alone.
	frag := owner.post("/grants/preview", form, withHeader("X-Fleetplane-Fragment", "grant-preview")).must(t, http.StatusOK)
	if !strings.HasPrefix(strings.TrimSpace(frag.body), `<section id="grant-preview"`) || strings.Contains(frag.body, "<html") {
		t.Fatalf("fragment:\n%s", frag.body)
	}
	// Without JavaScript: the Preview button's whole page.
	full := owner.post("/grants/preview", form).must(t, http.StatusOK).contains(t, `<html`, `id="grant-form"`, `value="v-1, v-2"`)
	noInlineCode(t, full)
	for _, r := range []*response{frag, full} {
		if got := subjectList(t, r, "grant-preview-publish"); !slices.Equal(got, want.Publish) {
			t.Errorf("%s: publish %q, the Service says %q", r.path, got, want.Publish)
		}
		if got := subjectList(t, r, "grant-preview-subscribe"); !slices.Equal(got, want.Subscribe) {
			t.Errorf("%s: subscribe %q, the Service says %q", r.path, got, want.Subscribe)
		}
		r.contains(t, controlplane.DryRunGrantID+"</code> stands for", "192.0.2.0/24").lacks(t, "grant-preview-error")
	}
	// A fleet-wide read grant: no placeholder.
	owner.post("/grants/preview", grantForm("alpha", "", "state", "evt"), withHeader("X-Fleetplane-Fragment", "grant-preview")).
		must(t, http.StatusOK).contains(t, "fleet.alpha.veh.*.").lacks(t, "stands for")
	// The Service's refusals show in the box, in the form's words.
	owner.post("/grants/preview", grantForm("alpha", "", "cmd"), withHeader("X-Fleetplane-Fragment", "grant-preview")).
		must(t, http.StatusBadRequest).contains(t, `id="grant-preview-error"`, "Access: cmd needs explicit vehicle_ids")
	owner.post("/grants/preview", grantForm("nope", "", "state")).must(t, http.StatusNotFound).
		contains(t, `id="grant-form"`, `id="grant-preview-error"`, "nope")
	owner.post("/grants/preview", grantForm("alpha", "v-9", "state"), withHeader("X-Fleetplane-Fragment", "grant-preview")).
		must(t, http.StatusBadRequest).contains(t, "Vehicles: vehicle &#34;v-9&#34; is not in fleet")

	if d := diffSnapshots(before, snapshot(t, e.pool)); d != "" {
		t.Fatalf("previews changed the database: %s", d)
	}
}

var credsKeyRe = regexp.MustCompile(`name="key" value="([^"]+)"`)
var grantIDFromPage = regexp.MustCompile(`action="/grants/([A-Za-z0-9_-]+)/creds"`)

func TestSettingsGrantCredsOnce(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Creds Org")
	admin := e.addMember(owner, controlplane.RoleAdmin)
	settingsFleet(owner, "alpha", "v-1")

	res := owner.submit("/grants/new", "/grants", grantForm("alpha", "v-1", "state", "cmd")).must(t, http.StatusOK)
	noInlineCode(t, res)
	// The seed is not in the page: only a one-time download is.
	res.contains(t, `id="grant-creds-download"`, "within 5 minutes").lacks(t, "NKEY SEED", "NATS USER JWT", "SUA")
	if cc := res.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	id := grantIDFromPage.FindStringSubmatch(res.body)[1]
	key := html.UnescapeString(credsKeyRe.FindStringSubmatch(res.body)[1])
	res.contains(t, `data-replace-url="/grants/`+id+`"`)
	g, err := e.svc.Grant(settingsCtx(owner), id)
	if err != nil {
		t.Fatal(err)
	}
	if got := subjectList(t, res, "grant-subscribe"); !slices.Equal(got, g.Subscribe) {
		t.Errorf("subscribe %q, grant has %q", got, g.Subscribe)
	}

	// Another admin of the tenant, a wrong key, a wrong grant: 404, and
	// the file stays for its owner.
	admin.get("/grants").must(t, http.StatusOK)
	admin.post("/grants/"+id+"/creds", url.Values{"key": {key}}).must(t, http.StatusNotFound)
	owner.get("/grants").must(t, http.StatusOK)
	owner.post("/grants/"+id+"/creds", url.Values{"key": {key + "x"}}).must(t, http.StatusNotFound)
	// A GET is no download (and not a route).
	owner.get("/grants/"+id+"/creds").must(t, http.StatusMethodNotAllowed)
	// Without the CSRF token: refused, not burnt.
	owner.post("/grants/"+id+"/creds", url.Values{"key": {key}, "csrf": {""}}).must(t, http.StatusForbidden)

	dl := owner.post("/grants/"+id+"/creds", url.Values{"key": {key}}).must(t, http.StatusOK)
	if cd := dl.header.Get("Content-Disposition"); cd != `attachment; filename="`+id+`.creds"` {
		t.Errorf("Content-Disposition %q", cd)
	}
	if dl.header.Get("Cache-Control") != "no-store" || dl.header.Get("Content-Type") != "application/octet-stream" {
		t.Errorf("headers %v", dl.header)
	}
	if !strings.Contains(dl.body, "-----BEGIN NATS USER JWT-----") || !strings.Contains(dl.body, "-----BEGIN USER NKEY SEED-----") {
		t.Fatalf("creds file:\n%s", dl.body)
	}
	seed := regexp.MustCompile(`SU[A-Z2-7]{56}`).FindString(dl.body)
	kp, err := nkeys.FromSeed([]byte(seed))
	if err != nil {
		t.Fatalf("seed: %v", err)
	}
	if pub, _ := kp.PublicKey(); pub != g.UserPublicKey {
		t.Errorf("creds key %s, grant key %s", pub, g.UserPublicKey)
	}
	// Once.
	owner.get("/grants").must(t, http.StatusOK)
	owner.post("/grants/"+id+"/creds", url.Values{"key": {key}}).must(t, http.StatusNotFound).
		contains(t, "already downloaded").lacks(t, seed)
	if strings.Contains(e.logs.String(), seed) {
		t.Errorf("the seed reached the logs")
	}

	// The list, the grant's page, revocation with its proof.
	owner.get("/grants").must(t, http.StatusOK).contains(t, `id="grant-`+id+`"`, "partner", "alpha: v-1 (state, cmd)")
	detail := owner.get("/grants/"+id).must(t, http.StatusOK).contains(t, `id="grant-revoke"`, "192.0.2.0/24").lacks(t, `id="revocation"`)
	noInlineCode(t, detail)
	owner.submit("/grants/"+id, "/grants/"+id+"/revoke", nil).redirectsTo(t, "/grants/"+id+"?m=revoked")
	rev := owner.get("/grants/"+id+"?m=revoked").must(t, http.StatusOK).contains(t, `id="revocation"`, "Revoked.").lacks(t, `id="grant-revoke"`)
	if st := elementText(t, rev, "span", "revocation-status"); st != controlplane.RevocationProven {
		t.Errorf("revocation status %q", st)
	}
	owner.get("/grants").must(t, http.StatusOK).lacks(t, `id="grant-`+id+`"`)
	owner.get("/grants?all=1").must(t, http.StatusOK).contains(t, `id="grant-`+id+`"`, ">revoked<")
	owner.get("/grants/nope-nope").must(t, http.StatusNotFound)
	ctxRes := owner.get("/grants/"+id+"/context").must(t, http.StatusOK)
	if !strings.HasPrefix(ctxRes.header.Get("Content-Disposition"), "attachment;") || !strings.Contains(ctxRes.body, "hub-1.europe.example.com") {
		t.Errorf("context: %v %s", ctxRes.header, ctxRes.body)
	}
}

func TestSettingsGrantOwnKey(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Own Key Org")
	settingsFleet(owner, "alpha")
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	form := grantForm("alpha", "", "state")
	form.Set("public_key", pub)
	res := owner.submit("/grants/new", "/grants", form).must(t, http.StatusOK).
		contains(t, `id="grant-jwt"`, `data-copy="grant-jwt"`, pub).lacks(t, `id="grant-creds-download"`)
	if jwt := elementText(t, res, "pre", "grant-jwt"); !strings.HasPrefix(jwt, "eyJ") {
		t.Errorf("JWT %q", jwt)
	}
	// Creating refuses what previewing refuses, on the form.
	before := countRows(t, e, "grants")
	owner.submit("/grants/new", "/grants", grantForm("alpha", "", "cmd")).must(t, http.StatusBadRequest).
		contains(t, `id="grant-form"`, "Access: cmd needs explicit vehicle_ids")
	bad := grantForm("alpha", "", "state")
	bad.Set("public_key", "SUAXXXXNOTAKEY")
	owner.submit("/grants/new", "/grants", bad).must(t, http.StatusBadRequest).contains(t, "Public key:").lacks(t, "SUAXXXXNOTAKEY")
	if n := countRows(t, e, "grants"); n != before {
		t.Errorf("refused grants were created")
	}
}

// --- API keys ---

var apiKeySecretRe = regexp.MustCompile(`fpk_[A-Za-z0-9_]+`)

func TestSettingsAPIKeyShownOnce(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Keys Org")
	noInlineCode(t, owner.get("/api-keys").must(t, http.StatusOK).contains(t, `id="api-key-create"`))

	res := owner.submit("/api-keys", "/api-keys", url.Values{"name": {"ci deploy"}, "role": {"member"}, "expires_in": {"720h"}}).
		must(t, http.StatusOK).contains(t, `data-copy="api-key-secret"`, `data-replace-url="/api-keys"`)
	noInlineCode(t, res)
	secret := elementText(t, res, "pre", "api-key-secret")
	if !apiKeySecretRe.MatchString(secret) {
		t.Fatalf("secret %q", secret)
	}
	p, err := e.svc.Authenticate(context.Background(), secret)
	if err != nil || p.Role != controlplane.RoleMember {
		t.Fatalf("the key does not work as a member: %v %v", p, err)
	}
	for _, path := range []string{"/api-keys", "/api-keys?all=1"} {
		owner.get(path).must(t, http.StatusOK).contains(t, p.ActorID, "ci deploy").lacks(t, secret)
	}

	// Bad input; nothing created.
	before := countRows(t, e, "api_keys")
	owner.submit("/api-keys", "/api-keys", url.Values{"name": {""}, "role": {"viewer"}, "expires_in": {"never"}}).
		must(t, http.StatusBadRequest).contains(t, "Name:")
	owner.submit("/api-keys", "/api-keys", url.Values{"name": {"x"}, "role": {"owner"}, "expires_in": {"never"}}).
		must(t, http.StatusBadRequest).contains(t, "Role:")
	owner.submit("/api-keys", "/api-keys", url.Values{"name": {"x"}, "expires_in": {"never"}}).
		must(t, http.StatusBadRequest).contains(t, "Role: choose a role")
	if n := countRows(t, e, "api_keys"); n != before {
		t.Errorf("refused keys were created")
	}

	owner.submit("/api-keys", "/api-keys/"+p.ActorID+"/revoke", nil).redirectsTo(t, "/api-keys?m=revoked")
	if _, err := e.svc.Authenticate(context.Background(), secret); controlplane.ErrorCode(err) != controlplane.EUNAUTHORIZED {
		t.Errorf("revoked key: %v", err)
	}
	owner.get("/api-keys").must(t, http.StatusOK).lacks(t, p.ActorID)
	owner.get("/api-keys?all=1").must(t, http.StatusOK).contains(t, p.ActorID, ">revoked<")
}

// --- roles ---

func TestSettingsRoles(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Roles Org")
	viewer := e.addMember(owner, controlplane.RoleViewer)
	member := e.addMember(owner, controlplane.RoleMember)
	settingsFleet(owner, "alpha", "v-1")
	// Something to revoke.
	tok, err := e.svc.CreateEnrollmentToken(settingsCtx(owner), "alpha", controlplane.EnrollmentTokenCreate{ExpiresAt: new(time.Now().Add(time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	g, err := e.svc.CreateGrant(settingsCtx(owner), controlplane.GrantCreate{
		Scopes:    []controlplane.GrantScopeSpec{{Fleet: "alpha", Categories: []controlplane.GrantCategory{"state"}}},
		ExpiresAt: new(time.Now().Add(time.Hour)),
	})
	if err != nil {
		t.Fatal(err)
	}
	key, err := e.svc.CreateAPIKey(settingsCtx(owner), controlplane.APIKeyCreate{Name: "k", Role: controlplane.RoleViewer})
	if err != nil {
		t.Fatal(err)
	}

	before := snapshot(t, e.pool)
	type attempt struct {
		path string
		form url.Values
	}
	adminOnly := []attempt{
		{"/grants", grantForm("alpha", "v-1", "state")},
		{"/grants/preview", grantForm("alpha", "v-1", "state")},
		{"/grants/" + g.ID + "/revoke", nil},
		{"/api-keys", url.Values{"name": {"sneaky"}, "role": {"viewer"}, "expires_in": {"never"}}},
		{"/api-keys/" + key.ID + "/revoke", nil},
		{"/billing/checkout", nil},
		{"/billing/portal", nil},
	}
	memberUp := []attempt{
		{"/fleets/alpha/enroll", url.Values{"expires_in": {"24h"}, "max_uses": {"1"}}},
		{"/fleets/alpha/enroll/" + tok.ID + "/revoke", nil},
	}
	for _, b := range []*browser{viewer, member} {
		b.get("/billing").must(t, http.StatusOK).contains(t, `id="billing-admins"`).lacks(t, `id="billing-upgrade"`, `id="billing-off"`)
		list := adminOnly
		if b == viewer {
			list = append(slices.Clone(adminOnly), memberUp...)
		}
		for _, a := range list {
			b.post(a.path, a.form).must(t, http.StatusForbidden).lacks(t, "fpe_", "fpk_", "NKEY SEED")
		}
		for _, path := range []string{"/grants", "/grants/new", "/grants/" + g.ID, "/api-keys", "/audit"} {
			b.get(path).must(t, http.StatusForbidden)
		}
	}
	viewer.get("/fleets/alpha/enroll").must(t, http.StatusForbidden)
	if d := diffSnapshots(before, snapshot(t, e.pool)); d != "" {
		t.Fatalf("refused requests changed the database: %s", d)
	}
	// A member enrolls vehicles (and sees no admin-only actions).
	member.get("/fleets/alpha/enroll").must(t, http.StatusOK).contains(t, `id="enroll-create"`, tok.ID)
	member.submit("/fleets/alpha/enroll", "/fleets/alpha/enroll", url.Values{"expires_in": {"1h"}, "max_uses": {"1"}}).
		must(t, http.StatusOK).contains(t, `id="enroll-command"`)
}

// --- usage and billing ---

var barRe = regexp.MustCompile(`<rect class="bar (registered|online)" x="([0-9.]+)" y="([0-9.]+)" width="([0-9.]+)" height="([0-9.]+)">`)

func TestSettingsBillingOff(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Usage Org")
	settingsFleet(owner, "alpha", "v-1", "v-2", "v-3")
	if _, err := e.svc.MeterUsage(context.Background()); err != nil {
		t.Fatal(err)
	}
	u, err := e.svc.Usage(settingsCtx(owner))
	if err != nil {
		t.Fatal(err)
	}

	res := owner.get("/billing").must(t, http.StatusOK).
		contains(t, `id="billing-off"`, "Billing is not enabled", `id="usage-chart"`, `id="usage-table"`, "3 of 10").
		lacks(t, `id="billing-upgrade"`, `id="billing-manage"`)
	noInlineCode(t, res)
	if got := elementText(t, res, "p", "billing-plan"); got != "free" {
		t.Errorf("plan %q", got)
	}
	// One pair of bars per day of the period so far, left to right, the
	// last (today) 3 vehicles high; the table has the same days.
	bars := barRe.FindAllStringSubmatch(res.body, -1)
	if len(u.Daily) == 0 || len(bars) != 2*len(u.Daily) {
		t.Fatalf("%d bars for %d days", len(bars), len(u.Daily))
	}
	var lastX float64 = -1
	for i := 0; i < len(bars); i += 2 {
		var x, h float64
		fmt.Sscan(bars[i][2], &x)
		fmt.Sscan(bars[i][5], &h)
		if bars[i][1] != "registered" || bars[i+1][1] != "online" || x <= lastX || x > 720 {
			t.Errorf("bar %d: %v", i, bars[i])
		}
		lastX = x
		if day := u.Daily[i/2]; day.VehiclesRegistered == 0 && h != 0 || day.VehiclesRegistered > 0 && h <= 0 {
			t.Errorf("day %v: registered %d, bar height %v", day.Day, day.VehiclesRegistered, h)
		}
	}
	if last := u.Daily[len(u.Daily)-1]; last.VehiclesRegistered != 3 {
		t.Errorf("today: %+v", last)
	}
	today := time.Now().UTC().Format("2006-01-02")
	if !regexp.MustCompile(`<th scope="row">` + today + `</th><td>free</td><td>3</td>`).MatchString(res.body) {
		t.Errorf("the table lacks today's 3 vehicles")
	}
	if n := strings.Count(res.body, `<tr><th scope="row">20`); n != len(u.Daily) {
		t.Errorf("%d table rows for %d days", n, len(u.Daily))
	}

	// The buttons' endpoints say the same, and change nothing.
	before := snapshot(t, e.pool)
	for _, path := range []string{"/billing/checkout", "/billing/portal"} {
		owner.post(path, nil).must(t, http.StatusNotImplemented).contains(t, `id="billing-off"`).lacks(t, `id="billing-upgrade"`)
	}
	if d := diffSnapshots(before, snapshot(t, e.pool)); d != "" {
		t.Errorf("billing off changed the database: %s", d)
	}
	owner.get("/billing?checkout=success").must(t, http.StatusOK).contains(t, "Thank you!")
	owner.get("/billing?checkout=cancel").must(t, http.StatusOK).contains(t, "checkout was cancelled")
}

// fakeBilling is a payment provider that answers the URLs a test sets.
type fakeBilling struct{ checkoutURL, portalURL string }

func (f *fakeBilling) CreateCustomer(context.Context, controlplane.BillingCustomer) (string, error) {
	return "cus_fake", nil
}
func (f *fakeBilling) CheckoutSession(context.Context, controlplane.CheckoutRequest) (string, error) {
	return f.checkoutURL, nil
}
func (f *fakeBilling) PortalSession(context.Context, string, string) (string, error) {
	return f.portalURL, nil
}
func (f *fakeBilling) ReportUsage(context.Context, controlplane.UsageReport) error { return nil }
func (f *fakeBilling) VerifyEvent([]byte, string) (*controlplane.BillingEvent, error) {
	return nil, controlplane.Errorf(controlplane.EINVALID, "no")
}

func TestSettingsBillingRedirectOnlyToTheServiceURL(t *testing.T) {
	t.Parallel()
	fb := &fakeBilling{checkoutURL: "https://pay.example.test/c/session?x=1&y=%2F", portalURL: "https://billing.example.test/p/1"}
	e := newPortalEnv(t, withService(func(c *controlplane.Config) { c.Billing = fb }))
	owner := e.newAccount("Redirect Org")
	owner.get("/billing").must(t, http.StatusOK).contains(t, `id="billing-upgrade"`).lacks(t, `id="billing-off"`, `id="billing-manage"`)
	// Whatever the request says, the redirect is the Service's URL.
	owner.post("/billing/checkout?next=https://evil.example", url.Values{"url": {"https://evil.example"}, "next": {"//evil.example"}}).
		redirectsTo(t, fb.checkoutURL)
	owner.get("/billing").must(t, http.StatusOK).contains(t, `id="billing-manage"`)
	owner.post("/billing/portal", nil).redirectsTo(t, fb.portalURL)
	// A provider URL that is not plainly http(s) is never followed.
	for _, bad := range []string{"javascript:alert(1)", "//evil.example/x", "/local", "https://user:pw@evil.example/", "data:text/html,hi"} {
		fb.portalURL = bad
		r := owner.post("/billing/portal", nil).must(t, http.StatusInternalServerError)
		if loc := r.header.Get("Location"); loc != "" {
			t.Errorf("%q: Location %q", bad, loc)
		}
	}
}

func TestSettingsBillingStripeMock(t *testing.T) {
	t.Parallel()
	b, err := stripebilling.New(stripebilling.Config{
		SecretKey: stripemock.TestKey, WebhookSecret: "whsec_portal_test", ScalePriceID: "price_portal_scale",
		APIBase: stripemock.Shared(t).URL, HTTPClient: (&stripemock.Recorder{}).Client(),
	})
	if err != nil {
		t.Fatal(err)
	}
	e := newPortalEnv(t, withService(func(c *controlplane.Config) { c.Billing = b }))
	owner := e.newAccount("Stripe Org")
	owner.get("/billing").must(t, http.StatusOK).contains(t, `id="billing-upgrade"`).lacks(t, `id="billing-off"`, `id="billing-manage"`)
	// Before any checkout there is no customer portal.
	owner.post("/billing/portal", nil).must(t, http.StatusConflict).contains(t, "no billing account yet", `id="billing-upgrade"`)

	res := owner.post("/billing/checkout", url.Values{"success_url": {"https://evil.example"}}).must(t, http.StatusSeeOther)
	loc := res.header.Get("Location")
	// stripe-mock answers fixed fixtures: the Service's own call gives the
	// URL the portal must have sent the browser to.
	want, err := e.svc.BillingCheckout(settingsCtx(owner))
	if err != nil {
		t.Fatal(err)
	}
	if loc != want.URL || !strings.HasPrefix(loc, "https://") {
		t.Errorf("checkout redirects to %q, the Service says %q", loc, want.URL)
	}
	owner.get("/billing").must(t, http.StatusOK).contains(t, `id="billing-manage"`, `id="billing-upgrade"`)
	res = owner.post("/billing/portal", nil).must(t, http.StatusSeeOther)
	wantPortal, err := e.svc.BillingPortal(settingsCtx(owner))
	if err != nil {
		t.Fatal(err)
	}
	if got := res.header.Get("Location"); got != wantPortal.URL {
		t.Errorf("portal redirects to %q, the Service says %q", got, wantPortal.URL)
	}
}

// --- audit log ---

func TestSettingsAuditFilters(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Audit Org")
	settingsFleet(owner, "alpha")
	ctx := settingsCtx(owner)
	var keys []string
	for i := range 55 {
		k, err := e.svc.CreateAPIKey(ctx, controlplane.APIKeyCreate{Name: fmt.Sprintf("key %d", i), Role: controlplane.RoleViewer})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k.ID)
	}

	res := owner.get("/audit").must(t, http.StatusOK).contains(t, "api_key.create", `id="audit-next"`)
	noInlineCode(t, res)

	// action: only API key creations, 50 then 5, newest first, the
	// filter kept in the next page's link.
	first := owner.get("/audit?action=api_key.create").must(t, http.StatusOK).lacks(t, "<code>fleet.create</code>", `id="audit-first"`)
	next := html.UnescapeString(regexp.MustCompile(`href="([^"]+)" id="audit-next"`).FindStringSubmatch(first.body)[1])
	if !strings.Contains(next, "action=api_key.create") || !strings.Contains(next, "cursor=") {
		t.Fatalf("next link %q", next)
	}
	second := owner.get(next).must(t, http.StatusOK).contains(t, `id="audit-first"`, `href="/audit?action=api_key.create"`).lacks(t, `id="audit-next"`)
	seen := map[string]int{}
	for _, r := range []*response{first, second} {
		for _, id := range keys {
			if strings.Contains(r.body, "<code>"+id+"</code>") {
				seen[id]++
			}
		}
	}
	if len(seen) != 55 {
		t.Errorf("the two pages show %d of 55 keys", len(seen))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("key %s on %d pages", id, n)
		}
	}
	if !strings.Contains(first.body, "<code>"+keys[54]+"</code>") {
		t.Errorf("the newest key is not on the first page")
	}

	// target type and ID.
	owner.get("/audit?target_type=fleet").must(t, http.StatusOK).contains(t, "<code>fleet.create</code>").lacks(t, "<code>api_key.create</code>")
	owner.get("/audit?target_id="+keys[3]).must(t, http.StatusOK).contains(t, keys[3]).lacks(t, keys[4])
	// time range.
	future := time.Now().UTC().Add(time.Hour).Format("2006-01-02T15:04")
	past := time.Now().UTC().Add(-time.Hour).Format("2006-01-02T15:04")
	owner.get("/audit?since="+future).must(t, http.StatusOK).contains(t, "No events match the filters.", `value="`+future+`"`)
	owner.get("/audit?action=fleet.create&since="+past+"&until="+future).must(t, http.StatusOK).contains(t, "<code>fleet.create</code>")
	owner.get("/audit?until="+past).must(t, http.StatusOK).contains(t, "No events match")
	owner.get("/audit?since="+future+"&until="+past).must(t, http.StatusBadRequest).contains(t, "Until: must be after")
	owner.get("/audit?since=yesterday").must(t, http.StatusBadRequest).contains(t, "From: must be a date")
	owner.get("/audit?cursor=!!").must(t, http.StatusBadRequest)
}
