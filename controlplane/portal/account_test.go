package portal_test

import (
	"context"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/fleetplane/fleetplane/controlplane"
)

func TestSignupConfirmSignsIn(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	b := e.newBrowser()
	email := newEmail("new")
	b.signup("Acme Drones", email, testPassword)
	b.get("/signup?m=check-mail").must(t, http.StatusOK).contains(t, "Check your e-mail").lacks(t, email)

	link := e.mailLink(email, "/confirm")
	tok := tokenOf(t, link)
	// Fetching the link (a mail scanner does) spends nothing: twice, from
	// another browser too, and nobody is signed in by it.
	for range 2 {
		e.newBrowser().get(link).must(t, http.StatusOK).contains(t, "Confirm and sign in")
	}
	page := b.get(link).must(t, http.StatusOK)
	if page.setCookie(e.sessionCookie()) != nil {
		t.Fatal("GET /confirm set a session cookie")
	}
	page.contains(t, `autocomplete="current-password"`, "If you did not sign up")
	// The page asks for the password chosen at signup: whoever clicks the
	// link without it (the owner of an address someone else signed up
	// with) confirms nothing, and the link stays usable.
	for _, pw := range []string{"", "the victim's own password"} {
		res := b.submit(link, "/confirm", url.Values{"token": {tok}, "password": {pw}}).must(t, http.StatusUnauthorized)
		res.contains(t, `id="password-error"`, `name="token"`).lacks(t, "the victim's own password")
		if b.sessionToken() != "" {
			t.Fatal("a wrong password signed someone in")
		}
	}
	res := b.submit(link, "/confirm", url.Values{"token": {tok}, "password": {testPassword}}).redirectsTo(t, "/dashboard")
	if c := res.setCookie(e.sessionCookie()); c == nil || c.Value == "" {
		t.Fatal("confirming set no session cookie")
	}
	sess := b.session()
	if sess.Email != email || sess.Role != controlplane.RoleOwner {
		t.Fatalf("session %+v, want owner %s", sess, email)
	}
	b.get("/team").must(t, http.StatusOK).contains(t, email)

	// The link is single-use.
	other := e.newBrowser()
	other.submit(link, "/confirm", url.Values{"token": {tok}, "password": {testPassword}}).must(t, http.StatusBadRequest).
		contains(t, "sign up again")
	if other.sessionToken() != "" {
		t.Fatal("a spent confirmation link signed someone in")
	}
	// A bare /confirm says what is wrong.
	e.newBrowser().get("/confirm").must(t, http.StatusBadRequest).contains(t, "incomplete")
}

func TestSignupValidation(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	b := e.newBrowser()
	res := b.submit("/signup", "/signup", url.Values{"organisation": {"Acme"}, "email": {"me@example.com"}, "password": {"short pw"}}).
		must(t, http.StatusBadRequest)
	res.contains(t, `value="Acme"`, `value="me@example.com"`, `id="password-error"`, `role="alert"`).lacks(t, "short pw")
	// The focus goes to the field that is wrong.
	if !regexp.MustCompile(`<input id="password"[^>]*aria-invalid="true"[^>]*autofocus`).MatchString(res.body) {
		t.Fatalf("the invalid password field is not focused:\n%s", res.body)
	}
	res = b.submit("/signup", "/signup", url.Values{"organisation": {""}, "email": {"not an address"}, "password": {testPassword}}).
		must(t, http.StatusBadRequest)
	res.contains(t, `id="organisation-error"`, `id="email-error"`)
	if len(e.mail.Mails()) != 0 {
		t.Fatalf("mails sent for invalid signups: %+v", e.mail.Mails())
	}
}

func TestLoginAndNext(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Acme")
	b := e.newBrowser()

	// A signed-out page sends to the login page with next=.
	b.get("/team").redirectsTo(t, "/login?next=%2Fteam")
	page := b.get("/login?next=%2Fteam").must(t, http.StatusOK)
	page.contains(t, `name="next" value="/team"`, `autocomplete="username"`, `autocomplete="current-password"`)

	res := b.do(http.MethodPost, "/login", url.Values{"csrf": {b.csrf}, "email": {owner.email}, "password": {"wrong password!"}, "next": {"/team"}}).
		must(t, http.StatusUnauthorized)
	res.contains(t, "Incorrect e-mail or password.", `name="next" value="/team"`, owner.email).lacks(t, "wrong password!")
	if b.sessionToken() != "" {
		t.Fatal("a failed login set a session")
	}
	b.post("/login", url.Values{"email": {owner.email}, "password": {owner.password}, "next": {"/team"}}).redirectsTo(t, "/team")
	b.get("/team").must(t, http.StatusOK)
	// Signed in, /login goes on at once.
	b.get("/login?next=%2Fteam").redirectsTo(t, "/team")
	b.get("/login").redirectsTo(t, "/dashboard")
	// The e-mail address is case-insensitive.
	e.newBrowser().login(strings.ToUpper(owner.email), owner.password).redirectsTo(t, "/dashboard")
}

func TestPasswordReset(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Acme")
	oldToken := owner.sessionToken()

	b := e.newBrowser()
	b.submit("/reset", "/reset", url.Values{"email": {owner.email}}).redirectsTo(t, "/reset?m=check-mail")
	b.get("/reset?m=check-mail").must(t, http.StatusOK).contains(t, "If an account uses that address")
	link := e.mailLink(owner.email, "/reset")
	tok := tokenOf(t, link)

	b.get(link).must(t, http.StatusOK).contains(t, `autocomplete="new-password"`, `action="/reset/confirm"`)
	// Too short: the same link can be used again with a better password.
	res := b.submit(link, "/reset/confirm", url.Values{"token": {tok}, "password": {"too short"}}).must(t, http.StatusBadRequest)
	res.contains(t, `id="password-error"`, `name="token"`).lacks(t, "too short")

	newPassword := "another correct horse battery"
	b.submit(link, "/reset/confirm", url.Values{"token": {tok}, "password": {newPassword}}).
		redirectsTo(t, "/login?m=password-set")
	b.get("/login?m=password-set").must(t, http.StatusOK).contains(t, "Your password is set.")

	// Every session of the user ended, the old password is gone, the link
	// is spent.
	if _, _, err := e.svc.SessionAuth(context.Background(), oldToken); controlplane.ErrorCode(err) != controlplane.EUNAUTHORIZED {
		t.Fatalf("the session from before the reset: %v, want EUNAUTHORIZED", err)
	}
	owner.get("/team").redirectsTo(t, "/login?next=%2Fteam")
	e.newBrowser().login(owner.email, owner.password).must(t, http.StatusUnauthorized)
	e.newBrowser().login(owner.email, newPassword).redirectsTo(t, "/dashboard")
	e.newBrowser().submit(link, "/reset/confirm", url.Values{"token": {tok}, "password": {"yet another long password"}}).
		must(t, http.StatusBadRequest)
	e.newBrowser().login(owner.email, newPassword).redirectsTo(t, "/dashboard")

	// A page without its token says what is wrong.
	e.newBrowser().get("/reset/confirm").must(t, http.StatusBadRequest).contains(t, "Ask for a new one")
	e.newBrowser().get("/reset?token=").must(t, http.StatusBadRequest).contains(t, "Ask for a new one")
}

func TestTeam(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Acme")
	admin := e.addMember(owner, controlplane.RoleAdmin)
	member := e.addMember(admin, controlplane.RoleMember)

	page := owner.get("/team").must(t, http.StatusOK)
	page.contains(t, owner.email, admin.email, member.email, "(you)", `action="/team/invite"`)
	if !strings.Contains(page.body, `<option value="owner"`) {
		t.Fatal("an owner is not offered the owner role")
	}
	// An admin may not hand out owner, nor touch an owner.
	page = admin.get("/team").must(t, http.StatusOK)
	page.lacks(t, `<option value="owner"`, `action="/team/`+owner.session().UserID+`/role"`).
		contains(t, `action="/team/`+member.session().UserID+`/role"`)

	// Change a role: it applies to the member's running session at once.
	memberID := member.session().UserID
	admin.submit("/team", "/team/"+memberID+"/role", url.Values{"role": {"viewer"}}).redirectsTo(t, "/team?m=saved")
	if got := member.session().Role; got != controlplane.RoleViewer {
		t.Fatalf("role after the change: %s, want viewer", got)
	}
	member.get("/team").must(t, http.StatusOK).lacks(t, `action="/team/invite"`, "/remove")

	// An invitation with a bad address re-renders the form with the input.
	res := admin.submit("/team", "/team/invite", url.Values{"email": {"not an address"}, "role": {"member"}}).
		must(t, http.StatusBadRequest)
	res.contains(t, `id="invite-email-error"`, `value="not an address"`)

	// Remove: the member's session ends.
	admin.submit("/team", "/team/"+memberID+"/remove", nil).redirectsTo(t, "/team?m=removed")
	owner.get("/team").must(t, http.StatusOK).lacks(t, member.email)
	member.get("/team").redirectsTo(t, "/login?next=%2Fteam")

	// The last owner cannot be removed or demoted.
	ownerID := owner.session().UserID
	owner.submit("/team", "/team/"+ownerID+"/role", url.Values{"role": {"admin"}}).must(t, http.StatusConflict)
	owner.submit("/team", "/team/"+ownerID+"/remove", nil).must(t, http.StatusConflict)
	if owner.session().Role != controlplane.RoleOwner {
		t.Fatal("the last owner lost the role")
	}
}

func TestInviteLinkIsSingleUse(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Acme")
	email := newEmail("invitee")
	owner.submit("/team", "/team/invite", url.Values{"email": {email}, "role": {"viewer"}}).redirectsTo(t, "/team?m=invited")
	owner.get("/team").must(t, http.StatusOK).contains(t, email, "Invited")
	link := e.mailLink(email, "/invite")
	tok := tokenOf(t, link)
	b := e.newBrowser()
	b.get(link).must(t, http.StatusOK).contains(t, "Join your team", "Acme", `autocomplete="new-password"`)
	b.get(link).must(t, http.StatusOK) // fetching twice spends nothing
	// Not signed in before accepting; a weak password leaves the link usable.
	e.newBrowser().login(email, testPassword).must(t, http.StatusUnauthorized)
	b.submit(link, "/invite", url.Values{"token": {tok}, "password": {"too short"}}).must(t, http.StatusBadRequest).
		contains(t, `id="password-error"`, `name="token"`)
	b.submit(link, "/invite", url.Values{"token": {tok}, "password": {testPassword}}).redirectsTo(t, "/dashboard")
	if s := b.session(); s.Email != email || s.Role != controlplane.RoleViewer {
		t.Fatalf("session after accepting: %+v", s)
	}
	owner.get("/team").must(t, http.StatusOK).contains(t, email, "Active").lacks(t, "Invited")
	// Spent: its page says so, and posting it again does nothing.
	late := e.newBrowser()
	late.get(link).must(t, http.StatusBadRequest).contains(t, "accepted already")
	late.get("/login") // a page with a CSRF token
	late.post("/invite", url.Values{"token": {tok}, "password": {"a different password"}}).must(t, http.StatusBadRequest)
	if late.sessionToken() != "" {
		t.Fatal("a spent invitation link signed someone in")
	}
	e.newBrowser().login(email, testPassword).redirectsTo(t, "/dashboard")
	e.newBrowser().login(email, "a different password").must(t, http.StatusUnauthorized)
}

// TestInviteExistingUser: a user with an account is invited like anybody:
// the invitation grants nothing until its link is spent with the user's
// own password, and a password reset does not accept it.
func TestInviteExistingUser(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner := e.newAccount("Acme")
	other := e.newAccount("Other")
	owner.submit("/team", "/team/invite", url.Values{"email": {other.email}, "role": {"admin"}}).redirectsTo(t, "/team?m=invited")
	owner.get("/team").must(t, http.StatusOK).contains(t, other.email, "Invited")
	link := e.mailLink(other.email, "/invite")
	tok := tokenOf(t, link)

	// Signing in, and a reset, still lead to its own tenant only.
	b := e.newBrowser()
	b.login(other.email, other.password).redirectsTo(t, "/dashboard")
	if got := b.session().TenantID; got != other.session().TenantID {
		t.Fatalf("signed in to %s, want its own tenant", got)
	}
	b.submit("/reset", "/reset", url.Values{"email": {other.email}}).redirectsTo(t, "/reset?m=check-mail")
	reset := e.mailLink(other.email, "/reset")
	other.password = "a new password of mine"
	b.submit(reset, "/reset/confirm", url.Values{"token": {tokenOf(t, reset)}, "password": {other.password}}).
		redirectsTo(t, "/login?m=password-set")
	b.login(other.email, other.password).redirectsTo(t, "/dashboard")
	if got := b.session().TenantID; got == owner.session().TenantID {
		t.Fatal("a password reset accepted the invitation")
	}
	owner.get("/team").must(t, http.StatusOK).contains(t, "Invited")
	// The invitation link cannot set a password for it.
	b.submit(link, "/invite", url.Values{"token": {tok}, "password": {"the inviter's choice 123"}}).
		must(t, http.StatusUnauthorized).contains(t, `id="password-error"`, `name="token"`)
	e.newBrowser().login(other.email, "the inviter's choice 123").must(t, http.StatusUnauthorized)

	// The page asks for the account's password and signs in to the team.
	page := b.get(link).must(t, http.StatusOK)
	page.contains(t, `autocomplete="current-password"`, "Sign in and join", "Acme").lacks(t, `autocomplete="new-password"`)
	b.submit(link, "/invite", url.Values{"token": {tok}, "password": {other.password}}).redirectsTo(t, "/dashboard")
	if s := b.session(); s.TenantID != owner.session().TenantID || s.Role != controlplane.RoleAdmin {
		t.Fatalf("session after accepting: %+v", s)
	}
	owner.get("/team").must(t, http.StatusOK).lacks(t, "Invited")
	e.newBrowser().submit("/login", "/login", url.Values{"email": {other.email}, "password": {other.password}}).
		redirectsTo(t, "/dashboard")
}
