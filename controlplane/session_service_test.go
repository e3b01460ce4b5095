package controlplane_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetplane/fleetplane/controlplane"
	fpmail "github.com/fleetplane/fleetplane/controlplane/mail"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/password"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

const goodPassword = "correct horse battery"

// portalEnv is a Service with a mail capture and a clock the test moves.
type portalEnv struct {
	svc   *controlplane.Service
	mails *fpmail.Capture
	pool  *pgxpool.Pool

	mu  sync.Mutex
	now time.Time
}

func newPortalEnv(tb testing.TB, opts ...func(*controlplane.Config)) *portalEnv {
	tb.Helper()
	e := &portalEnv{pool: pgtest.NewPool(tb), mails: fpmail.NewCapture(), now: time.Now().UTC().Truncate(time.Microsecond)}
	cfg := controlplane.Config{
		Regions:        []controlplane.Region{{Name: "europe"}},
		PasswordParams: password.Params{Memory: 64, Time: 1, Threads: 1},
		Issuer:         mustIssuer(tb, nil),
		Mailer:         e.mails,
		PublicURL:      "https://fp.example/",
	}
	for _, o := range opts {
		o(&cfg)
	}
	e.svc = controlplane.NewService(postgres.NewStore(e.pool), cfg, nil)
	controlplane.SetNow(e.svc, e.clock)
	return e
}

func (e *portalEnv) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func (e *portalEnv) advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

// mail waits for the next mail to `to` whose subject contains subject.
func (e *portalEnv) mail(tb testing.TB, to, subject string) controlplane.Mail {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := e.mails.WaitFor(ctx, to, subject)
	if err != nil {
		tb.Fatalf("no mail %q to %s: %v", subject, to, err)
	}
	return m
}

// noMail fails tb when a mail to `to` was captured.
func (e *portalEnv) noMail(tb testing.TB, to string) {
	tb.Helper()
	if m := e.mails.Last(to); m.To != "" {
		tb.Fatalf("unexpected mail to %s: %q", to, m.Subject)
	}
}

// signup signs an organisation up through the portal, confirms the
// address and returns the first session and a context acting through it.
func (e *portalEnv) signup(tb testing.TB, org, email string) (context.Context, *controlplane.SessionCreated) {
	tb.Helper()
	ctx := meta()
	if err := e.svc.PortalSignup(ctx, controlplane.PortalSignupRequest{Organisation: org, Email: email, Password: goodPassword}); err != nil {
		tb.Fatalf("PortalSignup(%s): %v", email, err)
	}
	tok := fpmail.Token(e.mail(tb, email, "Confirm"), "/confirm")
	sess, err := e.svc.ConfirmEmail(ctx, tok, goodPassword)
	if err != nil {
		tb.Fatalf("ConfirmEmail: %v", err)
	}
	return e.auth(tb, sess.Token), sess
}

// auth resolves a session token to a context acting as its user.
func (e *portalEnv) auth(tb testing.TB, token string) context.Context {
	tb.Helper()
	p, _, err := e.svc.SessionAuth(meta(), token)
	if err != nil {
		tb.Fatalf("SessionAuth: %v", err)
	}
	return controlplane.NewContextWithPrincipal(meta(), p)
}

// join invites email (a new address) to ctx's tenant with role, sets the
// password through the invitation and signs in.
func (e *portalEnv) join(tb testing.TB, ctx context.Context, email string, role controlplane.Role) (context.Context, *controlplane.SessionCreated) {
	tb.Helper()
	if _, err := e.svc.InviteMember(ctx, email, role); err != nil {
		tb.Fatalf("InviteMember(%s): %v", email, err)
	}
	tok := fpmail.Token(e.mail(tb, email, "invited"), "/invite")
	if _, err := e.svc.AcceptInvitation(meta(), tok, goodPassword); err != nil {
		tb.Fatalf("accepting the invitation: %v", err)
	}
	sess, err := e.svc.Login(meta(), email, goodPassword)
	if err != nil {
		tb.Fatalf("Login(%s): %v", email, err)
	}
	return e.auth(tb, sess.Token), sess
}

func meta() context.Context {
	ctx := controlplane.NewContextWithRequestMeta(context.Background(), controlplane.RequestMeta{SourceIP: "203.0.113.9", RequestID: "req-portal"})
	return controlplane.NewContextWithUserAgent(ctx, "Mozilla/5.0 (test)\x00\n")
}

func (e *portalEnv) count(tb testing.TB, sql string, args ...any) int {
	tb.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
	return n
}

func auditActions(tb testing.TB, svc *controlplane.Service, ctx context.Context) string {
	tb.Helper()
	page, err := svc.AuditEvents(ctx, controlplane.AuditQuery{})
	if err != nil {
		tb.Fatal(err)
	}
	var actions []string
	for i := len(page.Items) - 1; i >= 0; i-- {
		actions = append(actions, page.Items[i].Action)
	}
	return strings.Join(actions, ",")
}

func TestPortalSignupNewAndExistingAddress(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	ctx := meta()

	start := time.Now()
	err := e.svc.PortalSignup(ctx, controlplane.PortalSignupRequest{Organisation: "Acme", Email: "Ops@Acme.example", Password: goodPassword})
	tNew := time.Since(start)
	if err != nil {
		t.Fatalf("PortalSignup(new) = %v", err)
	}
	confirm := e.mail(t, "ops@acme.example", "Confirm your Fleetplane account")
	link := fpmail.Link(confirm, "/confirm")
	if !strings.HasPrefix(link, "https://fp.example/confirm?token=fpt_") || !strings.Contains(confirm.Text, "Acme") {
		t.Fatalf("confirmation mail: %q", confirm.Text)
	}

	// The same address again, in another case and with another password
	// and organisation: the same answer, a notice, and nothing changes.
	start = time.Now()
	err = e.svc.PortalSignup(ctx, controlplane.PortalSignupRequest{Organisation: "Evil", Email: "OPS@acme.example", Password: "another password 123"})
	tExisting := time.Since(start)
	if err != nil {
		t.Fatalf("PortalSignup(existing) = %v, want the same nil as for a new address", err)
	}
	t.Logf("signup took %v for a new address, %v for an existing one", tNew, tExisting)
	notice := e.mail(t, "ops@acme.example", "Your Fleetplane account")
	if fpmail.Link(notice, "/confirm") != "" || !strings.HasPrefix(fpmail.Link(notice, "/reset"), "https://fp.example/reset?token=fpt_") {
		t.Fatalf("notice mail: %q", notice.Text)
	}
	if n := e.count(t, `SELECT count(*) FROM tenants`); n != 1 {
		t.Fatalf("%d tenants after two signups with one address", n)
	}

	// Not confirmed yet: no login.
	_, err = e.svc.Login(ctx, "ops@acme.example", goodPassword)
	WantCode(t, err, controlplane.EUNAUTHORIZED)

	// The link takes the password chosen at signup: not the second
	// signup's, nor none; a wrong one leaves the link usable.
	for _, pw := range []string{"another password 123", "", strings.ToUpper(goodPassword)} {
		_, err = e.svc.ConfirmEmail(ctx, fpmail.Token(confirm, "/confirm"), pw)
		WantCode(t, err, controlplane.EUNAUTHORIZED)
	}
	sess, err := e.svc.ConfirmEmail(ctx, fpmail.Token(confirm, "/confirm"), goodPassword)
	if err != nil {
		t.Fatalf("ConfirmEmail: %v", err)
	}
	if sess.Role != controlplane.RoleOwner || sess.Email != "ops@acme.example" || !strings.HasPrefix(sess.Token, "fps_") ||
		len(sess.CSRF) < 16 || sess.ExpiresAt.Sub(sess.CreatedAt) != controlplane.DefaultSessionTTL {
		t.Fatalf("session %+v", sess)
	}
	_, err = e.svc.ConfirmEmail(ctx, fpmail.Token(confirm, "/confirm"), goodPassword)
	WantCode(t, err, controlplane.EINVALID)
	_, err = e.svc.ConfirmEmail(ctx, "fpt_garbage", goodPassword)
	WantCode(t, err, controlplane.EINVALID)

	// The second signup's password did not replace the first.
	_, err = e.svc.Login(ctx, "ops@acme.example", "another password 123")
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	login, err := e.svc.Login(ctx, "ops@acme.example", goodPassword)
	if err != nil || login.TenantID != sess.TenantID || login.Token == sess.Token || login.ID == sess.ID {
		t.Fatalf("Login = %+v, %v (a new session in the tenant)", login, err)
	}
	owner := e.auth(t, login.Token)
	tn, err := e.svc.Tenant(owner)
	if err != nil || tn.Name != "Acme" {
		t.Fatalf("Tenant = %+v, %v", tn, err)
	}
	if got := auditActions(t, e.svc, owner); got != "tenant.create,user.confirm_email,user.login,user.login" {
		t.Errorf("audit = %s", got)
	}
	if n := e.count(t, `SELECT count(*) FROM sessions WHERE source_ip = '203.0.113.9' AND user_agent = 'Mozilla/5.0 (test)'`); n != 2 {
		t.Errorf("%d sessions record their origin", n)
	}
	// A portal tenant has no API key made for nobody.
	if n := e.count(t, `SELECT count(*) FROM api_keys`); n != 0 {
		t.Errorf("%d API keys after a portal signup", n)
	}

	// An address from the API signup is an existing one too.
	if _, err := e.svc.Signup(ctx, controlplane.SignupRequest{Organisation: "API Co", Email: "api@co.example", Password: goodPassword}); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.PortalSignup(ctx, controlplane.PortalSignupRequest{Organisation: "X", Email: "api@co.example", Password: goodPassword}); err != nil {
		t.Fatal(err)
	}
	e.mail(t, "api@co.example", "Your Fleetplane account")
	// And its user signs in to the portal (verified by the API signup).
	if _, err := e.svc.Login(ctx, "api@co.example", goodPassword); err != nil {
		t.Fatalf("Login of an API signup's owner: %v", err)
	}

	for _, bad := range []controlplane.PortalSignupRequest{
		{Organisation: "", Email: "a@b.example", Password: goodPassword},
		{Organisation: "A", Email: "nope", Password: goodPassword},
		{Organisation: "A", Email: "a@b.example", Password: "short"},
		{Organisation: "A", Email: "a@b.example", Password: strings.Repeat("x", 257)},
	} {
		WantCode(t, e.svc.PortalSignup(ctx, bad), controlplane.EINVALID)
	}
}

func TestLoginFailuresLookAlike(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner, _ := e.signup(t, "Acme", "owner@acme.example")

	// Unconfirmed: signed up, never confirmed.
	if err := e.svc.PortalSignup(meta(), controlplane.PortalSignupRequest{Organisation: "B", Email: "unconfirmed@b.example", Password: goodPassword}); err != nil {
		t.Fatal(err)
	}
	e.mail(t, "unconfirmed@b.example", "Confirm")
	// Pending: invited, no password yet.
	if _, err := e.svc.InviteMember(owner, "pending@acme.example", controlplane.RoleMember); err != nil {
		t.Fatal(err)
	}
	e.mail(t, "pending@acme.example", "invited")
	// Removed: a password and a confirmed address, no membership left.
	_, gone := e.join(t, owner, "gone@acme.example", controlplane.RoleMember)
	if err := e.svc.RemoveMember(owner, gone.UserID); err != nil {
		t.Fatal(err)
	}

	var first *controlplane.Error
	for _, c := range []struct{ name, email, password string }{
		{"unknown address", "nobody@acme.example", goodPassword},
		{"wrong password", "owner@acme.example", "not the password"},
		{"right password in another case", "owner@acme.example", strings.ToUpper(goodPassword)},
		{"unconfirmed address", "unconfirmed@b.example", goodPassword},
		{"no password yet", "pending@acme.example", goodPassword},
		{"no membership", "gone@acme.example", goodPassword},
		{"malformed address", "owner", goodPassword},
		{"empty", "", ""},
	} {
		_, err := e.svc.Login(meta(), c.email, c.password)
		var ce *controlplane.Error
		if !errors.As(err, &ce) || ce.Code != controlplane.EUNAUTHORIZED || ce.Message != "incorrect e-mail or password" {
			t.Errorf("%s: Login = %v", c.name, err)
			continue
		}
		if first == nil {
			first = ce
		} else if ce.Code != first.Code || ce.Message != first.Message || len(ce.Fields) != 0 {
			t.Errorf("%s: %+v differs from %+v", c.name, ce, first)
		}
	}
	if _, err := e.svc.Login(meta(), "OWNER@acme.example", goodPassword); err != nil {
		t.Fatalf("Login(right) = %v", err)
	}
}

func TestSessionExpiry(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t, func(c *controlplane.Config) {
		c.SessionTTL = 3 * time.Hour
		c.SessionIdleTTL = time.Hour
	})
	_, sess := e.signup(t, "Acme", "ops@acme.example")
	t0 := e.clock()

	// Within a minute last_seen_at stays; after one it moves.
	e.advance(30 * time.Second)
	_, s1, err := e.svc.SessionAuth(meta(), sess.Token)
	if err != nil || !s1.LastSeenAt.Equal(t0) {
		t.Fatalf("SessionAuth after 30 s = %+v, %v", s1, err)
	}
	// Idle expiry moves with use: 55 minutes at a time for 2 h 45 min.
	for range 3 {
		e.advance(55 * time.Minute)
		p, s, err := e.svc.SessionAuth(meta(), sess.Token)
		if err != nil {
			t.Fatalf("SessionAuth at %v: %v", e.clock().Sub(t0), err)
		}
		if !s.LastSeenAt.Equal(e.clock()) || p.ActorType != "user" || p.ActorID != sess.UserID || p.SourceIP != "203.0.113.9" {
			t.Fatalf("session %+v, principal %+v", s, p)
		}
	}
	// Absolute expiry (3 h) ends it though it is in use.
	e.advance(15 * time.Minute)
	_, _, err = e.svc.SessionAuth(meta(), sess.Token)
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	if n := e.count(t, `SELECT count(*) FROM sessions WHERE id = $1`, sess.ID); n != 0 {
		t.Fatal("an expired session was kept")
	}

	// Idle expiry: an hour without a request.
	login, err := e.svc.Login(meta(), "ops@acme.example", goodPassword)
	if err != nil {
		t.Fatal(err)
	}
	e.advance(59 * time.Minute)
	if _, _, err := e.svc.SessionAuth(meta(), login.Token); err != nil {
		t.Fatalf("SessionAuth after 59 min: %v", err)
	}
	e.advance(time.Hour)
	_, _, err = e.svc.SessionAuth(meta(), login.Token)
	WantCode(t, err, controlplane.EUNAUTHORIZED)

	// Malformed and forged tokens.
	other, err := e.svc.Login(meta(), "ops@acme.example", goodPassword)
	if err != nil {
		t.Fatal(err)
	}
	forged := other.Token[:len(other.Token)-4] + "aaaa"
	if forged == other.Token {
		forged = other.Token[:len(other.Token)-4] + "bbbb"
	}
	for _, tok := range []string{"", "fps_", "fpk_" + other.Token[4:], forged, strings.ToUpper(other.Token)} {
		_, _, err := e.svc.SessionAuth(meta(), tok)
		WantCode(t, err, controlplane.EUNAUTHORIZED)
	}
}

func TestLogout(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner, sess := e.signup(t, "Acme", "ops@acme.example")
	other, err := e.svc.Login(meta(), "ops@acme.example", goodPassword)
	if err != nil {
		t.Fatal(err)
	}
	// A forged token with the session's ID does not end it.
	forged := other.Token[:len(other.Token)-4] + "aaaa"
	if forged != other.Token {
		if err := e.svc.Logout(meta(), forged); err != nil {
			t.Fatal(err)
		}
		if _, _, err := e.svc.SessionAuth(meta(), other.Token); err != nil {
			t.Fatalf("a forged logout ended the session: %v", err)
		}
	}
	if err := e.svc.Logout(meta(), sess.Token); err != nil {
		t.Fatalf("Logout = %v", err)
	}
	_, _, err = e.svc.SessionAuth(meta(), sess.Token)
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	for _, tok := range []string{sess.Token, "", "nonsense"} {
		if err := e.svc.Logout(meta(), tok); err != nil {
			t.Errorf("Logout(%q) = %v", tok, err)
		}
	}
	// The other session lives on.
	if _, _, err := e.svc.SessionAuth(meta(), other.Token); err != nil {
		t.Fatal(err)
	}
	if got := auditActions(t, e.svc, owner); !strings.HasSuffix(got, ",user.logout") {
		t.Errorf("audit = %s", got)
	}
}

func TestRoleChangesApplyToSessionsAtOnce(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner, _ := e.signup(t, "Acme", "owner@acme.example")
	_, adm := e.join(t, owner, "adm@acme.example", controlplane.RoleAdmin)

	p, _, err := e.svc.SessionAuth(meta(), adm.Token)
	if err != nil || p.Role != controlplane.RoleAdmin {
		t.Fatalf("principal %+v, %v", p, err)
	}
	if _, err := e.svc.ChangeMemberRole(owner, adm.UserID, controlplane.RoleViewer); err != nil {
		t.Fatal(err)
	}
	p, s, err := e.svc.SessionAuth(meta(), adm.Token)
	if err != nil || p.Role != controlplane.RoleViewer || s.Role != controlplane.RoleViewer {
		t.Fatalf("after the change: principal %+v, %v", p, err)
	}
	viewer := controlplane.NewContextWithPrincipal(meta(), p)
	// A viewer reads the members, and changes nothing.
	if ms, err := e.svc.Members(viewer); err != nil || len(ms) != 2 {
		t.Fatalf("Members(viewer) = %v, %v", ms, err)
	}
	_, err = e.svc.InviteMember(viewer, "new@acme.example", controlplane.RoleViewer)
	WantCode(t, err, controlplane.EFORBIDDEN)
	_, err = e.svc.ChangeMemberRole(viewer, adm.UserID, controlplane.RoleAdmin)
	WantCode(t, err, controlplane.EFORBIDDEN)
	WantCode(t, e.svc.RemoveMember(viewer, adm.UserID), controlplane.EFORBIDDEN)
	_, err = e.svc.CreateAPIKey(viewer, controlplane.APIKeyCreate{Name: "x"})
	WantCode(t, err, controlplane.EFORBIDDEN)
	e.noMail(t, "new@acme.example")

	// Removal ends the session's access at once.
	if err := e.svc.RemoveMember(owner, adm.UserID); err != nil {
		t.Fatal(err)
	}
	_, _, err = e.svc.SessionAuth(meta(), adm.Token)
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	_, err = e.svc.Login(meta(), "adm@acme.example", goodPassword)
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	got := auditActions(t, e.svc, owner)
	for _, want := range []string{"member.invite", "user.set_password", "member.update_role", "member.remove"} {
		if !strings.Contains(got, want) {
			t.Errorf("audit %s lacks %s", got, want)
		}
	}
}

func TestPasswordReset(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	_, s1 := e.signup(t, "Acme", "ops@acme.example")
	s2, err := e.svc.Login(meta(), "ops@acme.example", goodPassword)
	if err != nil {
		t.Fatal(err)
	}

	// Unknown and known addresses answer alike; only the known one gets mail.
	if err := e.svc.RequestPasswordReset(meta(), "nobody@acme.example"); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.RequestPasswordReset(meta(), "OPS@acme.example"); err != nil {
		t.Fatal(err)
	}
	WantCode(t, e.svc.RequestPasswordReset(meta(), "not an address"), controlplane.EINVALID)
	m := e.mail(t, "ops@acme.example", "Reset your Fleetplane password")
	e.noMail(t, "nobody@acme.example")
	tok := fpmail.Token(m, "/reset")
	if !strings.HasPrefix(fpmail.Link(m, "/reset"), "https://fp.example/reset?token=fpt_") {
		t.Fatalf("reset mail: %q", m.Text)
	}

	// A weak password is refused before the token is spent.
	WantCode(t, e.svc.ResetPassword(meta(), tok, "short"), controlplane.EINVALID)
	// A confirmation link is not a reset link.
	WantCode(t, e.svc.ResetPassword(meta(), "fpt_aaaaaaaaaaaaaaaa_"+strings.Repeat("a", 52), "a new password 456"), controlplane.EINVALID)
	if err := e.svc.ResetPassword(meta(), tok, "a new password 456"); err != nil {
		t.Fatalf("ResetPassword = %v", err)
	}
	// Single use.
	WantCode(t, e.svc.ResetPassword(meta(), tok, "a third password 789"), controlplane.EINVALID)
	// Every session ended.
	for _, s := range []*controlplane.SessionCreated{s1, s2} {
		_, _, err := e.svc.SessionAuth(meta(), s.Token)
		WantCode(t, err, controlplane.EUNAUTHORIZED)
	}
	_, err = e.svc.Login(meta(), "ops@acme.example", goodPassword)
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	s3, err := e.svc.Login(meta(), "ops@acme.example", "a new password 456")
	if err != nil {
		t.Fatal(err)
	}
	owner := e.auth(t, s3.Token)
	if got := auditActions(t, e.svc, owner); !strings.Contains(got, "user.set_password,user.login") {
		t.Errorf("audit = %s", got)
	}

	// A link expires after an hour; a reset voids the user's other links.
	if err := e.svc.RequestPasswordReset(meta(), "ops@acme.example"); err != nil {
		t.Fatal(err)
	}
	late := fpmail.Token(e.mail(t, "ops@acme.example", "Reset"), "/reset")
	e.advance(61 * time.Minute)
	WantCode(t, e.svc.ResetPassword(meta(), late, "a new password 999"), controlplane.EINVALID)
	for range 2 {
		if err := e.svc.RequestPasswordReset(meta(), "ops@acme.example"); err != nil {
			t.Fatal(err)
		}
	}
	a := fpmail.Token(e.mail(t, "ops@acme.example", "Reset"), "/reset")
	b := fpmail.Token(e.mail(t, "ops@acme.example", "Reset"), "/reset")
	if err := e.svc.ResetPassword(meta(), a, "a new password 999"); err != nil {
		t.Fatal(err)
	}
	WantCode(t, e.svc.ResetPassword(meta(), b, "a new password 000"), controlplane.EINVALID)

	// A reset confirms the address of an unconfirmed signup.
	if err := e.svc.PortalSignup(meta(), controlplane.PortalSignupRequest{Organisation: "B", Email: "late@b.example", Password: goodPassword}); err != nil {
		t.Fatal(err)
	}
	e.mail(t, "late@b.example", "Confirm")
	if err := e.svc.RequestPasswordReset(meta(), "late@b.example"); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.ResetPassword(meta(), fpmail.Token(e.mail(t, "late@b.example", "Reset"), "/reset"), "a new password 456"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Login(meta(), "late@b.example", "a new password 456"); err != nil {
		t.Fatalf("Login after a reset confirmed the address: %v", err)
	}
}

func TestInviteMembers(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner, ows := e.signup(t, "Acme", "owner@acme.example")

	// A new address: a pending member with a set-password link.
	m, err := e.svc.InviteMember(owner, "New@Acme.example", controlplane.RoleMember)
	if err != nil || !m.Pending || m.Role != controlplane.RoleMember || m.Email != "new@acme.example" {
		t.Fatalf("InviteMember(new) = %+v, %v", m, err)
	}
	inv := e.mail(t, "new@acme.example", "You are invited to Acme")
	if !strings.HasPrefix(fpmail.Link(inv, "/invite"), "https://fp.example/invite?token=fpt_") {
		t.Fatalf("invitation: %q", inv.Text)
	}
	_, err = e.svc.Login(meta(), "new@acme.example", goodPassword)
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	// Inviting a pending member again sends a new link; the role stays.
	if m, err := e.svc.InviteMember(owner, "new@acme.example", controlplane.RoleAdmin); err != nil || m.Role != controlplane.RoleMember {
		t.Fatalf("InviteMember(pending) = %+v, %v", m, err)
	}
	again := e.mail(t, "new@acme.example", "You are invited")
	// The link's page learns what it is for; fetching spends nothing.
	if in, err := e.svc.Invitation(meta(), fpmail.Token(again, "/invite")); err != nil ||
		*in != (controlplane.Invitation{TenantName: "Acme", Email: "new@acme.example", Role: controlplane.RoleMember}) {
		t.Fatalf("Invitation = %+v, %v", in, err)
	}
	// A weak password is refused before the link is spent.
	_, err = e.svc.AcceptInvitation(meta(), fpmail.Token(again, "/invite"), "short")
	WantCode(t, err, controlplane.EINVALID)
	accepted, err := e.svc.AcceptInvitation(meta(), fpmail.Token(again, "/invite"), goodPassword)
	if err != nil || accepted.TenantID != ows.TenantID || accepted.Role != controlplane.RoleMember {
		t.Fatalf("accepting: %+v, %v", accepted, err)
	}
	// The first link went with the acceptance.
	_, err = e.svc.AcceptInvitation(meta(), fpmail.Token(inv, "/invite"), goodPassword)
	WantCode(t, err, controlplane.EINVALID)
	_, err = e.svc.Invitation(meta(), fpmail.Token(inv, "/invite"))
	WantCode(t, err, controlplane.EINVALID)
	s, err := e.svc.Login(meta(), "new@acme.example", goodPassword)
	if err != nil || s.TenantID != ows.TenantID || s.Role != controlplane.RoleMember {
		t.Fatalf("Login(new) = %+v, %v", s, err)
	}
	_, err = e.svc.InviteMember(owner, "new@acme.example", controlplane.RoleMember)
	WantCode(t, err, controlplane.ECONFLICT)

	// An existing user of another tenant is invited like anybody: pending
	// until it accepts with its own password.
	other, otherSess := e.signup(t, "Other", "boss@other.example")
	m, err = e.svc.InviteMember(owner, "boss@other.example", controlplane.RoleViewer)
	if err != nil || !m.Pending || m.AcceptedAt != nil || m.Role != controlplane.RoleViewer || m.UserID != otherSess.UserID {
		t.Fatalf("InviteMember(existing) = %+v, %v", m, err)
	}
	invited := e.mail(t, "boss@other.example", "You are invited to Acme")
	tok := fpmail.Token(invited, "/invite")
	if tok == "" || !strings.Contains(invited.Text, "sign in with your password") {
		t.Fatalf("invitation of an existing user: %q", invited.Text)
	}
	ms, err := e.svc.Members(owner)
	if err != nil || len(ms) != 3 || !ms[2].Pending {
		t.Fatalf("Members = %v, %v", ms, err)
	}
	// Signing in lands in the user's own tenant: the invitation grants nothing.
	s, err = e.svc.Login(meta(), "boss@other.example", goodPassword)
	if err != nil || s.TenantID != otherSess.TenantID || s.Role != controlplane.RoleOwner {
		t.Fatalf("Login(boss) = %+v, %v", s, err)
	}
	if in, err := e.svc.Invitation(meta(), tok); err != nil || !in.HasPassword || in.TenantName != "Acme" {
		t.Fatalf("Invitation(existing) = %+v, %v", in, err)
	}
	// The existing user accepts with its password, not by choosing one; a
	// wrong one leaves the link usable.
	for _, pw := range []string{"a new password of mine", ""} {
		_, err = e.svc.AcceptInvitation(meta(), tok, pw)
		WantCode(t, err, controlplane.EUNAUTHORIZED)
	}
	accepted, err = e.svc.AcceptInvitation(meta(), tok, goodPassword)
	if err != nil || accepted.TenantID != ows.TenantID || accepted.Role != controlplane.RoleViewer || accepted.UserID != otherSess.UserID {
		t.Fatalf("AcceptInvitation(existing) = %+v, %v", accepted, err)
	}
	if m, err := e.svc.Members(owner); err != nil || m[2].Pending || m[2].AcceptedAt == nil {
		t.Fatalf("Members after accepting = %+v, %v", m, err)
	}
	// Its password and its other sessions stay.
	if _, _, err := e.svc.SessionAuth(meta(), s.Token); err != nil {
		t.Fatalf("boss's own session after accepting: %v", err)
	}
	_, err = e.svc.AcceptInvitation(meta(), tok, goodPassword)
	WantCode(t, err, controlplane.EINVALID)
	// Signing in still lands in the user's oldest tenant.
	if s, err := e.svc.Login(meta(), "boss@other.example", goodPassword); err != nil || s.TenantID != otherSess.TenantID {
		t.Fatalf("Login(boss) = %+v, %v", s, err)
	}
	// Its other tenant is untouched.
	if ms, err := e.svc.Members(other); err != nil || len(ms) != 1 {
		t.Fatalf("Members(other) = %v, %v", ms, err)
	}
	if got := auditActions(t, e.svc, owner); !strings.Contains(got, "member.invite,member.accept,user.login") {
		t.Errorf("audit = %s", got)
	}

	// Only owners make owners; bad input is EINVALID.
	admin, _ := e.join(t, owner, "admin@acme.example", controlplane.RoleAdmin)
	_, err = e.svc.InviteMember(admin, "o2@acme.example", controlplane.RoleOwner)
	WantCode(t, err, controlplane.EFORBIDDEN)
	if _, err := e.svc.InviteMember(admin, "m2@acme.example", controlplane.RoleMember); err != nil {
		t.Fatalf("admin invites a member: %v", err)
	}
	e.mail(t, "m2@acme.example", "invited")
	_, err = e.svc.InviteMember(owner, "nope", controlplane.RoleMember)
	WantCode(t, err, controlplane.EINVALID)
	_, err = e.svc.InviteMember(owner, "x@acme.example", "root")
	WantCode(t, err, controlplane.EINVALID)
}

func TestLastOwnerStays(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner, first := e.signup(t, "Acme", "owner@acme.example")

	_, err := e.svc.ChangeMemberRole(owner, first.UserID, controlplane.RoleAdmin)
	WantCode(t, err, controlplane.ECONFLICT)
	WantCode(t, e.svc.RemoveMember(owner, first.UserID), controlplane.ECONFLICT)

	admin, as := e.join(t, owner, "admin@acme.example", controlplane.RoleAdmin)
	// An admin neither grants nor takes the owner role, nor removes an owner.
	_, err = e.svc.ChangeMemberRole(admin, as.UserID, controlplane.RoleOwner)
	WantCode(t, err, controlplane.EFORBIDDEN)
	_, err = e.svc.ChangeMemberRole(admin, first.UserID, controlplane.RoleViewer)
	WantCode(t, err, controlplane.EFORBIDDEN)
	WantCode(t, e.svc.RemoveMember(admin, first.UserID), controlplane.EFORBIDDEN)
	_, err = e.svc.ChangeMemberRole(owner, as.UserID, "root")
	WantCode(t, err, controlplane.EINVALID)
	_, err = e.svc.ChangeMemberRole(owner, "7f0e4b1e-8a43-4b43-9d4c-2a8a5e6f0d11", controlplane.RoleViewer)
	WantCode(t, err, controlplane.ENOTFOUND)
	WantCode(t, e.svc.RemoveMember(owner, "not-a-uuid"), controlplane.ENOTFOUND)

	// With a second owner, the first may step down, and then not the second.
	if m, err := e.svc.ChangeMemberRole(owner, as.UserID, controlplane.RoleOwner); err != nil || m.Role != controlplane.RoleOwner {
		t.Fatalf("promote = %+v, %v", m, err)
	}
	if _, err := e.svc.ChangeMemberRole(owner, first.UserID, controlplane.RoleAdmin); err != nil {
		t.Fatalf("the first owner steps down: %v", err)
	}
	second := e.auth(t, as.Token) // an owner now, in the same session
	WantCode(t, e.svc.RemoveMember(second, as.UserID), controlplane.ECONFLICT)
	// Concurrent demotions of two owners leave one.
	if _, err := e.svc.ChangeMemberRole(second, first.UserID, controlplane.RoleOwner); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, id := range []string{first.UserID, as.UserID} {
		wg.Go(func() { _, errs[i] = e.svc.ChangeMemberRole(second, id, controlplane.RoleAdmin) })
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Fatalf("concurrent demotions: %v, %v; want exactly one to succeed", errs[0], errs[1])
	}
	if n := e.count(t, `SELECT count(*) FROM memberships WHERE role = 'owner'`); n != 1 {
		t.Fatalf("%d owners", n)
	}
}

func TestSessionTenantIsolation(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	a, as := e.signup(t, "A", "a@a.example")
	b, bs := e.signup(t, "B", "b@b.example")
	_, bm := e.join(t, b, "member@b.example", controlplane.RoleMember)
	if as.TenantID == bs.TenantID {
		t.Fatal("one tenant for two signups")
	}
	if tn, err := e.svc.Tenant(a); err != nil || tn.ID != as.TenantID {
		t.Fatalf("Tenant(a) = %+v, %v", tn, err)
	}
	ms, err := e.svc.Members(a)
	if err != nil || len(ms) != 1 || ms[0].UserID != as.UserID {
		t.Fatalf("Members(a) = %+v, %v", ms, err)
	}
	// B's members do not exist for A.
	_, err = e.svc.ChangeMemberRole(a, bm.UserID, controlplane.RoleViewer)
	WantCode(t, err, controlplane.ENOTFOUND)
	WantCode(t, e.svc.RemoveMember(a, bs.UserID), controlplane.ENOTFOUND)
	if _, err := e.svc.InviteMember(a, "b@b.example", controlplane.RoleViewer); err != nil {
		t.Fatal(err)
	}
	e.mail(t, "b@b.example", "invited")
	// Being a member of A too does not widen B's session.
	p, s, err := e.svc.SessionAuth(meta(), bs.Token)
	if err != nil || p.TenantID != bs.TenantID || s.TenantID != bs.TenantID || p.Role != controlplane.RoleOwner {
		t.Fatalf("B's session: %+v %+v %v", p, s, err)
	}
	if ms, err := e.svc.Members(b); err != nil || len(ms) != 2 {
		t.Fatalf("Members(b) = %v, %v", ms, err)
	}
	if got := auditActions(t, e.svc, a); strings.Contains(got, "member.update_role") || strings.Count(got, "member.invite") != 1 {
		t.Errorf("A's audit = %s", got)
	}
}

func TestCleanupSessionsService(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	_, s := e.signup(t, "Acme", "ops@acme.example")
	if err := e.svc.RequestPasswordReset(meta(), "ops@acme.example"); err != nil {
		t.Fatal(err)
	}
	e.mail(t, "ops@acme.example", "Reset")
	if n, err := e.svc.CleanupSessions(context.Background()); n != 0 || err != nil {
		t.Fatalf("CleanupSessions = %d, %v", n, err)
	}
	e.advance(24*time.Hour + time.Second)
	// The session (idle) and the confirmation and reset tokens (expired).
	if n, err := e.svc.CleanupSessions(context.Background()); n != 3 || err != nil {
		t.Fatalf("CleanupSessions = %d, %v; want 3", n, err)
	}
	_, _, err := e.svc.SessionAuth(meta(), s.Token)
	WantCode(t, err, controlplane.EUNAUTHORIZED)
}

// lockedBuffer is a log sink safe for the mail goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestNoMailerLogsWithoutTheLink(t *testing.T) {
	t.Parallel()
	var logs lockedBuffer
	store := postgres.NewStore(pgtest.NewPool(t))
	svc := controlplane.NewService(store, controlplane.Config{
		PasswordParams: password.Params{Memory: 64, Time: 1, Threads: 1},
		Issuer:         mustIssuer(t, nil),
	}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err := svc.PortalSignup(meta(), controlplane.PortalSignupRequest{Organisation: "Acme", Email: "ops@acme.example", Password: goodPassword}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "mail not sent: no mailer") {
		if time.Now().After(deadline) {
			t.Fatalf("no log line: %s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if strings.Contains(logs.String(), "fpt_") || strings.Contains(logs.String(), "?token=") {
		t.Fatalf("the log shows the link: %s", logs.String())
	}
}

// TestInvitationNeedsAcceptance: an invitation grants nothing until its
// link is spent, whoever holds the address's account.
func TestInvitationNeedsAcceptance(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	bigcorp, bs := e.signup(t, "BigCorp", "boss@bigcorp.example")

	// (a) An attacker signs up through the API with a future employee's
	// address (an API signup's address counts as confirmed); BigCorp
	// invites that address later.
	const attackerPassword = "the attacker's password"
	res, err := e.svc.Signup(meta(), controlplane.SignupRequest{Organisation: "Squat", Email: "newhire@bigcorp.example", Password: attackerPassword})
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.svc.InviteMember(bigcorp, "newhire@bigcorp.example", controlplane.RoleAdmin)
	if err != nil || !m.Pending {
		t.Fatalf("InviteMember(existing) = %+v, %v; want a pending member", m, err)
	}
	inv := e.mail(t, "newhire@bigcorp.example", "You are invited to BigCorp")
	// The attacker signs in: to its own tenant only; BigCorp's session
	// lookup, owner count and member list see no member.
	s, err := e.svc.Login(meta(), "newhire@bigcorp.example", attackerPassword)
	if err != nil || s.TenantID != res.Tenant.ID {
		t.Fatalf("attacker's Login = %+v, %v; want its own tenant %s", s, err, res.Tenant.ID)
	}
	if ms, err := e.svc.Members(bigcorp); err != nil || len(ms) != 2 || !ms[1].Pending {
		t.Fatalf("BigCorp's members = %+v, %v", ms, err)
	}
	// Removing the squat tenant's membership leaves no way in either.
	if _, err := e.pool.Exec(context.Background(), `DELETE FROM memberships WHERE tenant_id = $1`, res.Tenant.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Login(meta(), "newhire@bigcorp.example", attackerPassword)
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	// A reset (the attacker's own, or anybody's) accepts nothing.
	if err := e.svc.RequestPasswordReset(meta(), "newhire@bigcorp.example"); err != nil {
		t.Fatal(err)
	}
	reset := fpmail.Token(e.mail(t, "newhire@bigcorp.example", "Reset"), "/reset")
	if err := e.svc.ResetPassword(meta(), reset, "the new hire's password"); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Login(meta(), "newhire@bigcorp.example", "the new hire's password")
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	// Nor is the invitation link a reset link.
	WantCode(t, e.svc.ResetPassword(meta(), fpmail.Token(inv, "/invite"), "yet another password"), controlplane.EINVALID)
	// Only its link, with the account's password, accepts it.
	sess, err := e.svc.AcceptInvitation(meta(), fpmail.Token(inv, "/invite"), "the new hire's password")
	if err != nil || sess.TenantID != bs.TenantID || sess.Role != controlplane.RoleAdmin {
		t.Fatalf("AcceptInvitation = %+v, %v", sess, err)
	}

	// (b) An attacker's tenant invites a victim before the victim has an
	// account; the victim later tries to sign up.
	evil, _ := e.signup(t, "Evil", "mallory@evil.example")
	if _, err := e.svc.InviteMember(evil, "victim@x.example", controlplane.RoleOwner); err != nil {
		t.Fatal(err)
	}
	evilInv := e.mail(t, "victim@x.example", "You are invited to Evil")
	if err := e.svc.PortalSignup(meta(), controlplane.PortalSignupRequest{Organisation: "Victim Co", Email: "victim@x.example", Password: goodPassword}); err != nil {
		t.Fatal(err)
	}
	notice := e.mail(t, "victim@x.example", "Your Fleetplane account")
	if !strings.Contains(notice.Text, "not a member of any organisation") {
		t.Fatalf("notice to an invitee who never accepted: %q", notice.Text)
	}
	// The victim follows the notice: a password through its reset link.
	if err := e.svc.ResetPassword(meta(), fpmail.Token(notice, "/reset"), goodPassword); err != nil {
		t.Fatal(err)
	}
	// That accepted nothing: signing in finds no tenant (before, it
	// landed in the attacker's).
	_, err = e.svc.Login(meta(), "victim@x.example", goodPassword)
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	// Signing up again with that password gets the victim its own
	// organisation, where signing in lands.
	if err := e.svc.PortalSignup(meta(), controlplane.PortalSignupRequest{Organisation: "Victim Co", Email: "victim@x.example", Password: goodPassword}); err != nil {
		t.Fatal(err)
	}
	e.mail(t, "victim@x.example", "Victim Co is ready")
	own, err := e.svc.Login(meta(), "victim@x.example", goodPassword)
	if err != nil || own.Role != controlplane.RoleOwner {
		t.Fatalf("Login after signing up again = %+v, %v", own, err)
	}
	if tn, err := e.svc.Tenant(e.auth(t, own.Token)); err != nil || tn.Name != "Victim Co" {
		t.Fatalf("the victim's tenant = %+v, %v", tn, err)
	}
	if ms, err := e.svc.Members(e.auth(t, own.Token)); err != nil || len(ms) != 1 {
		t.Fatalf("Victim Co's members = %+v, %v", ms, err)
	}
	// Evil's invitation is still pending (and still only an invitation).
	if ms, err := e.svc.Members(evil); err != nil || len(ms) != 2 || !ms[1].Pending {
		t.Fatalf("Evil's members = %+v, %v", ms, err)
	}
	if in, err := e.svc.Invitation(meta(), fpmail.Token(evilInv, "/invite")); err != nil || !in.HasPassword {
		t.Fatalf("Evil's invitation = %+v, %v", in, err)
	}
}

// TestSignupOfAnotherOrganisation: signing up again with an address that
// has an accepted membership only mails the notice, even with the right
// password; without the password nobody gets an organisation for it.
func TestSignupOfAnotherOrganisation(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	e.signup(t, "Acme", "ops@acme.example")
	if err := e.svc.PortalSignup(meta(), controlplane.PortalSignupRequest{Organisation: "Second", Email: "ops@acme.example", Password: goodPassword}); err != nil {
		t.Fatal(err)
	}
	if n := e.mail(t, "ops@acme.example", "Your Fleetplane account"); strings.Contains(n.Text, "not a member") {
		t.Fatalf("notice: %q", n.Text)
	}
	// A member removed from its only tenant, and someone without its password.
	owner, _ := e.signup(t, "Big", "owner@big.example")
	_, gone := e.join(t, owner, "gone@big.example", controlplane.RoleMember)
	if err := e.svc.RemoveMember(owner, gone.UserID); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.PortalSignup(meta(), controlplane.PortalSignupRequest{Organisation: "Squat", Email: "gone@big.example", Password: "not their password"}); err != nil {
		t.Fatal(err)
	}
	e.mail(t, "gone@big.example", "Your Fleetplane account")
	if err := e.svc.PortalSignup(meta(), controlplane.PortalSignupRequest{Organisation: "Mine", Email: "gone@big.example", Password: goodPassword}); err != nil {
		t.Fatal(err)
	}
	e.mail(t, "gone@big.example", "Mine is ready")
	if n := e.count(t, `SELECT count(*) FROM tenants WHERE name IN ('Second', 'Squat')`); n != 0 {
		t.Fatalf("%d tenants made without the password or for a member", n)
	}
	s, err := e.svc.Login(meta(), "gone@big.example", goodPassword)
	if err != nil || s.Role != controlplane.RoleOwner {
		t.Fatalf("Login = %+v, %v", s, err)
	}
}

// TestConfirmNeedsTheSignupPassword: whoever signs up with someone else's
// address gains nothing when its owner clicks the confirmation link.
func TestConfirmNeedsTheSignupPassword(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	const attackerPassword = "the attacker's password"
	if err := e.svc.PortalSignup(meta(), controlplane.PortalSignupRequest{Organisation: "Trap", Email: "victim@x.example", Password: attackerPassword}); err != nil {
		t.Fatal(err)
	}
	m := e.mail(t, "victim@x.example", "Confirm")
	if !strings.Contains(m.Text, "If you did not sign up, ignore this mail") || !strings.Contains(m.Text, "password you chose") {
		t.Fatalf("confirmation mail: %q", m.Text)
	}
	tok := fpmail.Token(m, "/confirm")
	// The victim clicks and types its own password: nothing happens.
	for range 3 {
		_, err := e.svc.ConfirmEmail(meta(), tok, goodPassword)
		WantCode(t, err, controlplane.EUNAUTHORIZED)
	}
	_, err := e.svc.Login(meta(), "victim@x.example", attackerPassword)
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	if n := e.count(t, `SELECT count(*) FROM users WHERE email = 'victim@x.example' AND email_verified_at IS NULL`); n != 1 {
		t.Fatal("a wrong password confirmed the address")
	}
	// The link is not spent by wrong passwords: with the right one it works.
	if _, err := e.svc.ConfirmEmail(meta(), tok, attackerPassword); err != nil {
		t.Fatalf("ConfirmEmail(right password) after wrong ones: %v", err)
	}
}

// TestPendingOwnerIsNoOwner: an invited owner who has not accepted does
// not let the last owner go, and may be withdrawn.
func TestPendingOwnerIsNoOwner(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner, first := e.signup(t, "Acme", "owner@acme.example")
	m, err := e.svc.InviteMember(owner, "owner2@acme.example", controlplane.RoleOwner)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.ChangeMemberRole(owner, first.UserID, controlplane.RoleAdmin)
	WantCode(t, err, controlplane.ECONFLICT)
	WantCode(t, e.svc.RemoveMember(owner, first.UserID), controlplane.ECONFLICT)
	// The pending owner's role changes and removal need no other owner.
	if _, err := e.svc.ChangeMemberRole(owner, m.UserID, controlplane.RoleAdmin); err != nil {
		t.Fatalf("demoting a pending owner: %v", err)
	}
	if err := e.svc.RemoveMember(owner, m.UserID); err != nil {
		t.Fatalf("withdrawing an invitation: %v", err)
	}
	// Its link went with it.
	_, err = e.svc.AcceptInvitation(meta(), fpmail.Token(e.mail(t, "owner2@acme.example", "invited"), "/invite"), goodPassword)
	WantCode(t, err, controlplane.EINVALID)
}

// TestLinksCheckedBeforeHashing: a bad, used, expired or wrong-purpose
// link is refused before any argon2id work. The Service below hashes with
// costs that make argon2id panic, so any hashing shows.
func TestLinksCheckedBeforeHashing(t *testing.T) {
	t.Parallel()
	e := newPortalEnv(t)
	owner, _ := e.signup(t, "Acme", "ops@acme.example")
	if err := e.svc.PortalSignup(meta(), controlplane.PortalSignupRequest{Organisation: "B", Email: "b@b.example", Password: goodPassword}); err != nil {
		t.Fatal(err)
	}
	confirm := fpmail.Token(e.mail(t, "b@b.example", "Confirm"), "/confirm")
	if _, err := e.svc.InviteMember(owner, "new@acme.example", controlplane.RoleMember); err != nil {
		t.Fatal(err)
	}
	invite := fpmail.Token(e.mail(t, "new@acme.example", "invited"), "/invite")
	reset := func() string {
		t.Helper()
		if err := e.svc.RequestPasswordReset(meta(), "ops@acme.example"); err != nil {
			t.Fatal(err)
		}
		return fpmail.Token(e.mail(t, "ops@acme.example", "Reset"), "/reset")
	}
	used := reset()
	if err := e.svc.ResetPassword(meta(), used, goodPassword); err != nil {
		t.Fatal(err)
	}
	expired := reset()
	e.advance(2 * time.Hour)

	slow := controlplane.NewService(postgres.NewStore(e.pool), controlplane.Config{
		Regions:        []controlplane.Region{{Name: "europe"}},
		PasswordParams: password.Params{Memory: 64, Time: 0, Threads: 1}, // argon2id panics
		Issuer:         mustIssuer(t, nil),
		Mailer:         e.mails,
	}, nil)
	controlplane.SetNow(slow, e.clock)
	try := func(what string, f func() error) {
		t.Helper()
		defer func() {
			if r := recover(); r != nil {
				t.Errorf("%s: hashed a password before refusing the link (%v)", what, r)
			}
		}()
		WantCode(t, f(), controlplane.EINVALID)
	}
	forged := "fpt_aaaaaaaaaaaaaaaa_" + strings.Repeat("a", 52)
	for _, tok := range []string{"", "garbage", forged, confirm, invite, used, expired} {
		try("ResetPassword("+tok+")", func() error { return slow.ResetPassword(meta(), tok, "a new password 456") })
	}
	for _, tok := range []string{"", forged, confirm, used, expired} {
		try("AcceptInvitation("+tok+")", func() error { _, err := slow.AcceptInvitation(meta(), tok, "a new password 456"); return err })
	}
	for _, tok := range []string{"", forged, invite, used, expired} {
		try("ConfirmEmail("+tok+")", func() error { _, err := slow.ConfirmEmail(meta(), tok, goodPassword); return err })
	}
}
