package controlplane

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/fleetplane/fleetplane/internal/password"
	"github.com/fleetplane/fleetplane/internal/secret"
)

// Portal accounts and sessions: the Service methods listed in session.go.

// Prefixes of the portal's bearer strings, in internal/secret's format
// (prefix_<id>_<secret>): the session cookie and the one-time links.
const (
	SessionTokenPrefix = "fps"
	UserTokenPrefix    = "fpt"
)

const (
	verifyEmailTTL   = 24 * time.Hour
	resetPasswordTTL = time.Hour
	inviteTTL        = 7 * 24 * time.Hour
	// backgroundTimeout bounds what a call leaves to do after it
	// returned (a signup's transaction, sending a mail).
	backgroundTimeout = time.Minute
	// sessionTouchEvery is how stale last_seen_at may get: a session is
	// checked on every request, written at most this often.
	sessionTouchEvery = time.Minute
	maxUserAgentLen   = 512
)

// errLogin is every failed login's answer, whatever failed.
func errLogin() error { return Errorf(EUNAUTHORIZED, "incorrect e-mail or password") }

// errSessionEnded is every failed session lookup's answer.
func errSessionEnded() error { return Errorf(EUNAUTHORIZED, "your session has ended; sign in again") }

// errBadLink is every bad one-time link's answer.
func errBadLink() error {
	return Errorf(EINVALID, "this link is invalid, expired or already used; ask for a new one")
}

// errLinkPassword is the answer to a good link with the wrong password
// (confirming a signup, accepting an invitation as an existing user): the
// link stays usable.
func errLinkPassword() error {
	return &Error{Code: EUNAUTHORIZED, Message: "incorrect password",
		Fields: []FieldError{{Field: "password", Message: "is not the password of this account"}}}
}

// sessionDefaults fills in the portal's part of cfg (NewService).
func sessionDefaults(cfg *Config, logger *slog.Logger) {
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.SessionIdleTTL <= 0 {
		cfg.SessionIdleTTL = DefaultSessionIdleTTL
	}
	cfg.SessionIdleTTL = min(cfg.SessionIdleTTL, cfg.SessionTTL)
	if cfg.Mailer == nil {
		cfg.Mailer = noMailer{logger: logger}
	}
}

// newDummyHash returns a function that makes, once, the hash of a random
// password with costs p: a login for an address without a password
// verifies against it, so that it takes as long as one with a password.
func newDummyHash(p password.Params) func() string {
	return sync.OnceValue(func() string { return password.Hash(rand.Text(), p) })
}

// noMailer is the Mailer of a Service configured without one.
type noMailer struct{ logger *slog.Logger }

// Send drops m with a log line that leaves out the text (and its link).
func (n noMailer) Send(ctx context.Context, m Mail) error {
	n.logger.WarnContext(ctx, "mail not sent: no mailer", "to", m.To, "subject", m.Subject)
	return nil
}

type userAgentKey struct{}

// NewContextWithUserAgent returns ctx carrying the client's User-Agent,
// which the portal records with a new session.
func NewContextWithUserAgent(ctx context.Context, ua string) context.Context {
	return context.WithValue(ctx, userAgentKey{}, ua)
}

// userAgent returns the User-Agent of ctx, made storable: valid UTF-8
// without control characters, at most maxUserAgentLen bytes.
func userAgent(ctx context.Context) string {
	ua, _ := ctx.Value(userAgentKey{}).(string)
	ua = strings.Map(func(r rune) rune {
		if isControl(r) {
			return -1
		}
		return r
	}, strings.ToValidUTF8(ua, ""))
	for len(ua) > maxUserAgentLen {
		_, size := utf8.DecodeLastRuneInString(ua)
		ua = ua[:len(ua)-size]
	}
	return ua
}

func validatePassword(v *ValidationError, pw string) {
	if n := utf8.RuneCountInString(pw); n < minPasswordLen {
		v.Add("password", "must be at least %d characters", minPasswordLen)
	} else if len(pw) > maxPasswordLen {
		v.Add("password", "must be at most %d bytes", maxPasswordLen)
	}
}

// userPrincipal is a portal user acting in a tenant, from ctx's request.
func userPrincipal(ctx context.Context, tenantID string, role Role, userID string) *Principal {
	meta := RequestMetaFromContext(ctx)
	return &Principal{TenantID: tenantID, Role: role, ActorType: "user", ActorID: userID,
		SourceIP: meta.SourceIP, RequestID: meta.RequestID}
}

// --- signup and confirmation ---

// PortalSignup signs up an organisation from the portal. It answers only
// validation errors (EINVALID); otherwise nil at once, whether the
// address is new or not, and does the rest after returning: a new address
// gets a tenant, an owner whose address is not confirmed yet and a
// confirmation link; an existing one is existingSignup's. Both answers
// take one argon2id hash, so neither the answer nor its time tells
// whether the address has an account.
func (s *Service) PortalSignup(ctx context.Context, req PortalSignupRequest) error {
	var v ValidationError
	org := strings.TrimSpace(req.Organisation)
	validateName(&v, "organisation", org, true)
	email, ok := normalizeEmail(req.Email)
	if !ok {
		v.Add("email", "must be a valid e-mail address")
	}
	validatePassword(&v, req.Password)
	if err := v.Err(); err != nil {
		return err
	}
	hash := password.Hash(req.Password, s.cfg.PasswordParams)
	s.background(ctx, "portal signup", func(ctx context.Context) error {
		return s.portalSignup(ctx, org, email, req.Password, hash)
	})
	return nil
}

func (s *Service) portalSignup(ctx context.Context, org, email, pw, hash string) error {
	now := s.now()
	var (
		exists bool
		t      *Tenant
		link   string
	)
	err := s.store.Tx(ctx, func(tx Store) error {
		t = &Tenant{Name: org, Plan: s.cfg.DefaultPlan}
		if err := tx.CreateTenant(ctx, t); err != nil {
			return err
		}
		u := &User{Email: email}
		if err := tx.CreatePortalUser(ctx, u, hash); err != nil {
			exists = ErrorCode(err) == ECONFLICT
			return err
		}
		if err := tx.CreateMembership(ctx, &Membership{TenantID: t.ID, UserID: u.ID, Role: RoleOwner}); err != nil {
			return err
		}
		a, err := s.createAccount(ctx, tx, t)
		if err != nil {
			return err
		}
		tok, err := s.createUserToken(ctx, tx, TokenVerifyEmail, u.ID, t.ID, now)
		if err != nil {
			return err
		}
		link = s.link("/confirm", tok)
		p := userPrincipal(ctx, t.ID, RoleOwner, u.ID)
		return s.audit(ctx, tx, p, "tenant.create", "tenant", t.ID,
			map[string]any{"name": t.Name, "plan": t.Plan, "owner_email": u.Email, "nats_account": a.PublicKey, "via": "portal"})
	})
	if exists {
		return s.existingSignup(ctx, org, email, pw, now)
	}
	if err != nil {
		return err
	}
	s.logger.InfoContext(ctx, "tenant created", "tenant", t.ID, "plan", t.Plan, "via", "portal")
	return s.send(ctx, Mail{To: email, Subject: "Confirm your Fleetplane account", Text: fmt.Sprintf(
		"Welcome to Fleetplane.\n\n"+
			"Confirm your e-mail address to finish signing up %s, and sign in:\n\n%s\n\n"+
			"The page asks for the password you chose when you signed up. The link works once, for %s.\n\n"+
			"If you did not sign up, ignore this mail: without that password nobody can use the link, and nothing happens.\n",
		org, link, hours(verifyEmailTTL))})
}

// existingSignup is a portal signup with an address that has an account.
// Usually it mails a notice (with a reset link) and nothing changes. A
// user without an accepted membership, though (an invitee who never
// accepted, a removed member), would have no way to an organisation of
// its own, since the address cannot sign up anew: when such a user has a
// password and a confirmed address and signs up with that password
// (proving what a sign-in proves), the organisation is created with it as
// the owner, and it is told by mail. Without the password (someone else,
// or an invitee who never chose one) it is the notice, which for such a
// user says to choose a password through its link and sign up again. The
// caller's answer is the same in every case.
func (s *Service) existingSignup(ctx context.Context, org, email, pw string, now time.Time) error {
	u, err := s.store.FindUserByEmail(ctx, email)
	if err != nil {
		return err
	}
	ms, err := s.store.FindUserMemberships(ctx, u.ID)
	if err != nil {
		return err
	}
	if len(ms) == 0 && u.EmailVerifiedAt != nil && s.passwordMatches(ctx, u, pw) {
		return s.signupExistingUser(ctx, org, u)
	}
	return s.signupNotice(ctx, u, len(ms) == 0, now)
}

// signupExistingUser creates the organisation org owned by u, a user who
// proved its password and has no accepted membership (existingSignup).
func (s *Service) signupExistingUser(ctx context.Context, org string, u *UserAuth) error {
	var t *Tenant
	err := s.store.Tx(ctx, func(tx Store) error {
		t = &Tenant{Name: org, Plan: s.cfg.DefaultPlan}
		if err := tx.CreateTenant(ctx, t); err != nil {
			return err
		}
		if err := tx.CreateMembership(ctx, &Membership{TenantID: t.ID, UserID: u.ID, Role: RoleOwner}); err != nil {
			return err
		}
		a, err := s.createAccount(ctx, tx, t)
		if err != nil {
			return err
		}
		p := userPrincipal(ctx, t.ID, RoleOwner, u.ID)
		return s.audit(ctx, tx, p, "tenant.create", "tenant", t.ID,
			map[string]any{"name": t.Name, "plan": t.Plan, "owner_email": u.Email, "nats_account": a.PublicKey,
				"via": "portal", "existing_user": true})
	})
	if err != nil {
		return err
	}
	s.logger.InfoContext(ctx, "tenant created for an existing user", "tenant", t.ID, "plan", t.Plan, "user", u.ID, "via", "portal")
	s.pushAfterCommit(ctx, t.ID)
	return s.send(ctx, Mail{To: u.Email, Subject: "Your Fleetplane organisation " + org + " is ready", Text: fmt.Sprintf(
		"You signed up %s on Fleetplane with your existing account. Sign in at %s/login.\n\n"+
			"If it was not you, someone knows your password: choose a new one at %s/reset.\n",
		org, s.baseURL(), s.baseURL())})
}

// signupNotice tells the owner of an existing address that someone signed
// up with it, with a reset link (which also confirms the address). A user
// without an accepted membership (noOrg) is told how to get one.
func (s *Service) signupNotice(ctx context.Context, u *UserAuth, noOrg bool, now time.Time) error {
	tok, err := s.createUserToken(ctx, s.store, TokenResetPassword, u.ID, "", now)
	if err != nil {
		return err
	}
	s.logger.InfoContext(ctx, "portal signup with an existing address; mailing a notice", "user", u.ID)
	account := fmt.Sprintf("It already has an account: sign in at %s/login.", s.baseURL())
	if noOrg {
		account = "It already has an account, which is not a member of any organisation yet " +
			"(invitations count once accepted through their own link). To sign up one of your own, " +
			"choose a password with the link below (unless you know yours), then sign up again " +
			"with this address and that password."
	}
	return s.send(ctx, Mail{To: u.Email, Subject: "Your Fleetplane account", Text: fmt.Sprintf(
		"Someone, hopefully you, tried to sign up for Fleetplane with this e-mail address.\n"+
			"%s\n\n"+
			"If you forgot your password, choose a new one here (the link works once, for %s):\n\n%s\n\n"+
			"If it was not you, ignore this message: nothing has changed.\n",
		account, hours(resetPasswordTTL), s.link("/reset", tok))})
}

// ConfirmEmail confirms the address with the token of the signup mail and
// the password chosen at signup, and signs the user in to the tenant it
// signed up. The password makes a signup with someone else's address
// worthless to whoever made it: the owner of the address, clicking the
// link, cannot confirm without knowing it. The link is checked before the
// password (a bad link costs no hashing); a wrong password is
// EUNAUTHORIZED and does not spend the link.
func (s *Service) ConfirmEmail(ctx context.Context, token, pw string) (*SessionCreated, error) {
	now := s.now()
	t, err := s.checkUserToken(ctx, s.store, token, now, TokenVerifyEmail)
	if err != nil {
		return nil, err
	}
	_, u, err := s.tokenMember(ctx, s.store, t)
	if err != nil {
		return nil, err
	}
	if !s.passwordMatches(ctx, u, pw) {
		s.logger.InfoContext(ctx, "confirming an address failed", "reason", "wrong password", "user", u.ID,
			"source_ip", RequestMetaFromContext(ctx).SourceIP)
		return nil, errLinkPassword()
	}
	var out *SessionCreated
	err = s.store.Tx(ctx, func(tx Store) error {
		t, err := s.useUserToken(ctx, tx, token, now, TokenVerifyEmail)
		if err != nil {
			return err
		}
		if err := tx.VerifyUserEmail(ctx, t.UserID, now); err != nil {
			return err
		}
		m, err := tx.FindMember(ctx, t.TenantID, t.UserID)
		if ErrorCode(err) == ENOTFOUND {
			return errBadLink() // the membership went (its tokens with it)
		} else if err != nil {
			return err
		}
		p := userPrincipal(ctx, t.TenantID, m.Role, t.UserID)
		if err := s.audit(ctx, tx, p, "user.confirm_email", "user", t.UserID, map[string]any{"email": m.Email}); err != nil {
			return err
		}
		out, err = s.createSession(ctx, tx, p, m.Email, now)
		if ErrorCode(err) == ENOTFOUND {
			return errBadLink() // not an accepted membership
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	// The tenant is in use from now on: its account goes to the hubs now
	// rather than when the durable job comes round.
	s.pushAfterCommit(ctx, out.TenantID)
	return out, nil
}

// --- sign-in and sessions ---

// Login signs a user in to its oldest accepted membership's tenant with a
// new session (a pending invitation is no membership). Every failure
// (unknown address, wrong password, no password yet, unconfirmed address,
// no membership) answers the same EUNAUTHORIZED after one argon2id
// verification; the reason is logged.
func (s *Service) Login(ctx context.Context, email, pw string) (*SessionCreated, error) {
	var u *UserAuth
	addr, ok := normalizeEmail(email)
	if ok {
		var err error
		u, err = s.store.FindUserByEmail(ctx, addr)
		if err != nil && ErrorCode(err) != ENOTFOUND {
			return nil, err
		}
	}
	hash := s.dummyHash()
	if u != nil && u.PasswordHash != "" {
		hash = u.PasswordHash
	}
	match, verr := password.Verify(pw, hash)
	var reason, userID string
	switch {
	case u == nil:
		reason = "unknown e-mail address"
	case verr != nil:
		reason, userID = "stored password hash is malformed", u.ID
		s.logger.ErrorContext(ctx, "verifying a password failed", "user", u.ID, "err", verr)
	case u.PasswordHash == "":
		reason, userID = "no password set", u.ID
	case !match:
		reason, userID = "wrong password", u.ID
	case u.EmailVerifiedAt == nil:
		reason, userID = "e-mail address not confirmed", u.ID
	}
	var m *Membership
	if reason == "" {
		ms, err := s.store.FindUserMemberships(ctx, u.ID)
		if err != nil {
			return nil, err
		}
		if len(ms) == 0 {
			reason, userID = "no membership", u.ID
		} else {
			m = ms[0]
		}
	}
	if reason != "" {
		s.loginFailed(ctx, reason, userID)
		return nil, errLogin()
	}
	now := s.now()
	var out *SessionCreated
	err := s.store.Tx(ctx, func(tx Store) error {
		var err error
		out, err = s.createSession(ctx, tx, userPrincipal(ctx, m.TenantID, m.Role, u.ID), u.Email, now)
		return err
	})
	if ErrorCode(err) == ENOTFOUND {
		// The membership was removed meanwhile.
		s.loginFailed(ctx, "no membership", u.ID)
		return nil, errLogin()
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// passwordMatches reports whether pw is u's password; a user without one
// matches nothing (after the same argon2id time, on the dummy hash).
func (s *Service) passwordMatches(ctx context.Context, u *UserAuth, pw string) bool {
	hash := s.dummyHash()
	if u.PasswordHash != "" {
		hash = u.PasswordHash
	}
	ok, err := password.Verify(pw, hash)
	if err != nil {
		s.logger.ErrorContext(ctx, "verifying a password failed", "user", u.ID, "err", err)
		return false
	}
	return ok && u.PasswordHash != ""
}

func (s *Service) loginFailed(ctx context.Context, reason, userID string) {
	s.logger.InfoContext(ctx, "portal login failed", "reason", reason, "user", userID,
		"source_ip", RequestMetaFromContext(ctx).SourceIP)
}

// createSession opens a session for p (a user in a tenant) inside tx and
// audits the sign-in.
func (s *Service) createSession(ctx context.Context, tx Store, p *Principal, email string, now time.Time) (*SessionCreated, error) {
	id, token, hash := secret.New(SessionTokenPrefix)
	now = now.Truncate(time.Microsecond) // what Postgres keeps
	sess := Session{ID: id, UserID: p.ActorID, Email: email, TenantID: p.TenantID, Role: p.Role,
		CSRF: rand.Text(), CreatedAt: now, LastSeenAt: now, ExpiresAt: now.Add(s.cfg.SessionTTL)}
	if err := tx.CreateSession(ctx, &sess, hash, p.SourceIP, userAgent(ctx)); err != nil {
		return nil, err
	}
	if err := s.audit(ctx, tx, p, "user.login", "user", p.ActorID, map[string]any{"session": id}); err != nil {
		return nil, err
	}
	return &SessionCreated{Session: sess, Token: token}, nil
}

// SessionAuth resolves a session cookie's token to the principal acting
// through it, with the membership's current role. A malformed, unknown,
// expired or idle token is EUNAUTHORIZED (an expired session is deleted).
func (s *Service) SessionAuth(ctx context.Context, token string) (*Principal, *Session, error) {
	id, sec, err := secret.Parse(SessionTokenPrefix, token)
	if err != nil {
		return nil, nil, errSessionEnded()
	}
	sess, hash, err := s.store.FindSessionForAuth(ctx, id)
	if ErrorCode(err) == ENOTFOUND {
		return nil, nil, errSessionEnded()
	} else if err != nil {
		return nil, nil, err
	}
	if !secret.Equal(sec, hash) {
		return nil, nil, errSessionEnded()
	}
	now := s.now()
	if !now.Before(sess.ExpiresAt) || !now.Before(sess.LastSeenAt.Add(s.cfg.SessionIdleTTL)) {
		if err := s.store.DeleteSession(ctx, id); err != nil && ErrorCode(err) != ENOTFOUND {
			s.logger.WarnContext(ctx, "deleting an expired session failed", "session", id, "err", err)
		}
		return nil, nil, errSessionEnded()
	}
	if now.Sub(sess.LastSeenAt) >= sessionTouchEvery {
		if err := s.store.TouchSession(ctx, id, now); err != nil {
			// A stale last-seen time must not fail the request.
			s.logger.WarnContext(ctx, "recording session use failed", "session", id, "err", err)
		} else {
			sess.LastSeenAt = now
		}
	}
	return userPrincipal(ctx, sess.TenantID, sess.Role, sess.UserID), sess, nil
}

// Logout ends the session of token. An unknown or malformed token is no
// error: there is nothing to end.
func (s *Service) Logout(ctx context.Context, token string) error {
	id, sec, err := secret.Parse(SessionTokenPrefix, token)
	if err != nil {
		return nil
	}
	sess, hash, err := s.store.FindSessionForAuth(ctx, id)
	if ErrorCode(err) == ENOTFOUND {
		return nil
	} else if err != nil {
		return err
	}
	if !secret.Equal(sec, hash) {
		return nil
	}
	return s.store.Tx(ctx, func(tx Store) error {
		if err := tx.DeleteSession(ctx, id); ErrorCode(err) == ENOTFOUND {
			return nil // a concurrent logout ended it
		} else if err != nil {
			return err
		}
		p := userPrincipal(ctx, sess.TenantID, sess.Role, sess.UserID)
		return s.audit(ctx, tx, p, "user.logout", "user", sess.UserID, map[string]any{"session": id})
	})
}

// CleanupSessions deletes expired and idle sessions and expired one-time
// tokens (the periodic cleanup_sessions job).
func (s *Service) CleanupSessions(ctx context.Context) (int64, error) {
	now := s.now()
	n, err := s.store.CleanupSessions(ctx, now, now.Add(-s.cfg.SessionIdleTTL))
	if err != nil {
		return 0, err
	}
	if n > 0 {
		s.logger.InfoContext(ctx, "expired sessions and tokens deleted", "count", n)
	}
	return n, nil
}

// --- passwords ---

// RequestPasswordReset mails a reset link to a known address. It answers
// nil for every valid address, at once: the link is made and mailed after
// returning, so neither the answer nor its time says whether the address
// is known.
func (s *Service) RequestPasswordReset(ctx context.Context, email string) error {
	addr, ok := normalizeEmail(email)
	if !ok {
		var v ValidationError
		v.Add("email", "must be a valid e-mail address")
		return v.Err()
	}
	u, err := s.store.FindUserByEmail(ctx, addr)
	if ErrorCode(err) == ENOTFOUND {
		s.logger.InfoContext(ctx, "password reset for an unknown address", "source_ip", RequestMetaFromContext(ctx).SourceIP)
		return nil
	} else if err != nil {
		return err
	}
	s.background(ctx, "mailing a password reset link", func(ctx context.Context) error {
		tok, err := s.createUserToken(ctx, s.store, TokenResetPassword, u.ID, "", s.now())
		if err != nil {
			return err
		}
		return s.send(ctx, Mail{To: u.Email, Subject: "Reset your Fleetplane password", Text: fmt.Sprintf(
			"Someone, hopefully you, asked to reset the password of your Fleetplane account.\n\n"+
				"Choose a new password here (the link works once, for %s):\n\n%s\n\n"+
				"Setting it signs you out everywhere. If it was not you, ignore this message: nothing has changed.\n",
			hours(resetPasswordTTL), s.link("/reset", tok))})
	})
	return nil
}

// ResetPassword sets a new password with the token of a reset link. It
// confirms the address (the link came by mail), ends every session of the
// user and voids its other reset links. It accepts no invitation: a
// pending membership stays pending. A bad, used or expired token is
// EINVALID, found out before the new password is hashed.
func (s *Service) ResetPassword(ctx context.Context, token, newPassword string) error {
	var v ValidationError
	validatePassword(&v, newPassword)
	if err := v.Err(); err != nil {
		return err
	}
	now := s.now()
	if _, err := s.checkUserToken(ctx, s.store, token, now, TokenResetPassword); err != nil {
		return err
	}
	hash := password.Hash(newPassword, s.cfg.PasswordParams)
	return s.store.Tx(ctx, func(tx Store) error {
		t, err := s.useUserToken(ctx, tx, token, now, TokenResetPassword)
		if err != nil {
			return err
		}
		if err := tx.SetUserPassword(ctx, t.UserID, hash, now); err != nil {
			return err
		}
		if err := tx.VerifyUserEmail(ctx, t.UserID, now); err != nil {
			return err
		}
		ended, err := tx.DeleteUserSessions(ctx, t.UserID)
		if err != nil {
			return err
		}
		if _, err := tx.DeleteUserTokens(ctx, t.UserID, TokenResetPassword); err != nil {
			return err
		}
		ms, err := tx.FindUserMemberships(ctx, t.UserID)
		if err != nil {
			return err
		}
		// The user is one across tenants: each of them records it.
		for _, m := range ms {
			p := userPrincipal(ctx, m.TenantID, m.Role, t.UserID)
			if err := s.audit(ctx, tx, p, "user.set_password", "user", t.UserID,
				map[string]any{"via": t.Purpose, "sessions_ended": ended}); err != nil {
				return err
			}
		}
		return nil
	})
}

// --- invitations ---

// Invitation tells an invitation link's page what it is for, without
// spending the link. A bad, used or expired link, or one whose invitation
// was withdrawn or accepted, is EINVALID.
func (s *Service) Invitation(ctx context.Context, token string) (*Invitation, error) {
	t, err := s.checkUserToken(ctx, s.store, token, s.now(), TokenInvite)
	if err != nil {
		return nil, err
	}
	m, u, err := s.tokenMember(ctx, s.store, t)
	if err != nil {
		return nil, err
	}
	if !m.Pending {
		return nil, errBadLink()
	}
	tn, err := s.store.FindTenantByID(ctx, t.TenantID)
	if err != nil {
		return nil, err
	}
	return &Invitation{TenantName: tn.Name, Email: m.Email, Role: m.Role, HasPassword: u.PasswordHash != ""}, nil
}

// AcceptInvitation accepts the invitation of token and signs the user in
// to its tenant. A user without a password chooses one with pw (which
// also confirms the address); a user with one proves it with pw, and a
// wrong one is EUNAUTHORIZED. Either way the link is checked first (a bad
// one costs no hashing) and spent only by a successful acceptance. Only
// this accepts a membership made by InviteMember.
func (s *Service) AcceptInvitation(ctx context.Context, token, pw string) (*SessionCreated, error) {
	now := s.now()
	t, err := s.checkUserToken(ctx, s.store, token, now, TokenInvite)
	if err != nil {
		return nil, err
	}
	m, u, err := s.tokenMember(ctx, s.store, t)
	if err != nil {
		return nil, err
	}
	if !m.Pending {
		return nil, errBadLink()
	}
	var hash string // the new password's; "" = the user has one
	if u.PasswordHash == "" {
		var v ValidationError
		validatePassword(&v, pw)
		if err := v.Err(); err != nil {
			return nil, err
		}
		hash = password.Hash(pw, s.cfg.PasswordParams)
	} else if !s.passwordMatches(ctx, u, pw) {
		s.logger.InfoContext(ctx, "accepting an invitation failed", "reason", "wrong password", "user", u.ID,
			"tenant", t.TenantID, "source_ip", RequestMetaFromContext(ctx).SourceIP)
		return nil, errLinkPassword()
	}
	var out *SessionCreated
	err = s.store.Tx(ctx, func(tx Store) error {
		if _, err := s.useUserToken(ctx, tx, token, now, TokenInvite); err != nil {
			return err
		}
		cur, err := tx.FindUserByEmail(ctx, u.Email)
		if err != nil {
			return err
		}
		if cur.ID != u.ID || cur.PasswordHash != u.PasswordHash {
			return Errorf(ECONFLICT, "the account's password changed meanwhile; open the link again")
		}
		ended := int64(0)
		if hash != "" {
			if err := tx.SetUserPassword(ctx, u.ID, hash, now); err != nil {
				return err
			}
			if ended, err = tx.DeleteUserSessions(ctx, u.ID); err != nil {
				return err
			}
			if _, err := tx.DeleteUserTokens(ctx, u.ID, TokenResetPassword); err != nil {
				return err
			}
		}
		if err := tx.VerifyUserEmail(ctx, u.ID, now); err != nil {
			return err
		}
		if err := tx.AcceptMembership(ctx, t.TenantID, u.ID, now); ErrorCode(err) == ENOTFOUND {
			return errBadLink() // withdrawn or accepted meanwhile
		} else if err != nil {
			return err
		}
		m, err := tx.FindMember(ctx, t.TenantID, u.ID)
		if err != nil {
			return err
		}
		p := userPrincipal(ctx, t.TenantID, m.Role, u.ID)
		if hash != "" {
			if err := s.audit(ctx, tx, p, "user.set_password", "user", u.ID,
				map[string]any{"via": TokenInvite, "sessions_ended": ended}); err != nil {
				return err
			}
		}
		if err := s.audit(ctx, tx, p, "member.accept", "user", u.ID,
			map[string]any{"email": m.Email, "role": string(m.Role), "password_set": hash != ""}); err != nil {
			return err
		}
		out, err = s.createSession(ctx, tx, p, m.Email, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// --- members ---

// Members lists the caller's tenant's members, oldest first.
func (s *Service) Members(ctx context.Context) ([]*Member, error) {
	p, err := s.authorize(ctx, RoleViewer)
	if err != nil {
		return nil, err
	}
	return s.store.FindMembers(ctx, p.TenantID)
}

// InviteMember invites the user with this address to the caller's tenant:
// a pending membership, which grants nothing until accepted, and a mailed
// link that accepts it (AcceptInvitation). It is the same for a new
// address (a user without a password is made) and for an existing user:
// nobody is added to a tenant without spending the link. Inviting a
// pending member again mails a new link (its role stays). Only an owner
// makes owners.
func (s *Service) InviteMember(ctx context.Context, email string, role Role) (*Member, error) {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return nil, err
	}
	var v ValidationError
	addr, ok := normalizeEmail(email)
	if !ok {
		v.Add("email", "must be a valid e-mail address")
	}
	if !role.Valid() {
		v.Add("role", "must be one of owner, admin, member, viewer")
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	if role == RoleOwner && p.Role != RoleOwner {
		return nil, Errorf(EFORBIDDEN, "only an owner can make another owner")
	}
	now := s.now()
	var (
		out  *Member
		mail Mail
	)
	err = s.store.Tx(ctx, func(tx Store) error {
		t, err := tx.FindTenantByID(ctx, p.TenantID)
		if err != nil {
			return err
		}
		u, err := tx.FindUserByEmail(ctx, addr)
		newUser := ErrorCode(err) == ENOTFOUND
		switch {
		case newUser:
			u = &UserAuth{User: User{Email: addr}}
			if err := tx.CreatePortalUser(ctx, &u.User, ""); err != nil {
				return err
			}
		case err != nil:
			return err
		}
		resend := false
		if !newUser {
			m, err := tx.FindMember(ctx, p.TenantID, u.ID)
			switch {
			case err == nil && !m.Pending:
				return Errorf(ECONFLICT, "%s is already a member of this tenant", addr)
			case err == nil:
				resend, role = true, m.Role
			case ErrorCode(err) != ENOTFOUND:
				return err
			}
		}
		if !resend {
			if err := tx.CreatePendingMembership(ctx, &Membership{TenantID: p.TenantID, UserID: u.ID, Role: role}); err != nil {
				return err
			}
		}
		tok, err := s.createUserToken(ctx, tx, TokenInvite, u.ID, p.TenantID, now)
		if err != nil {
			return err
		}
		how := "Choose your password here to accept"
		if u.PasswordHash != "" {
			how = "You have a Fleetplane account with this address: to accept, open this link and sign in with your password"
		}
		mail = Mail{To: addr, Subject: "You are invited to " + t.Name + " on Fleetplane", Text: fmt.Sprintf(
			"You are invited to join %s on Fleetplane as %s.\n\n"+
				"%s (the link works once, for %s):\n\n%s\n\n"+
				"Nothing changes until you accept. If you did not expect this, ignore this message.\n",
			t.Name, role, how, hours(inviteTTL), s.link("/invite", tok))}
		if out, err = tx.FindMember(ctx, p.TenantID, u.ID); err != nil {
			return err
		}
		return s.audit(ctx, tx, p, "member.invite", "user", u.ID,
			map[string]any{"email": addr, "role": string(role), "new_user": newUser, "resent": resend})
	})
	if err != nil {
		return nil, err
	}
	s.sendMail(ctx, mail)
	return out, nil
}

// ChangeMemberRole sets a member's role. Only an owner grants or takes
// the owner role, and the last owner stays one.
func (s *Service) ChangeMemberRole(ctx context.Context, userID string, role Role) (*Member, error) {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return nil, err
	}
	if !role.Valid() {
		var v ValidationError
		v.Add("role", "must be one of owner, admin, member, viewer")
		return nil, v.Err()
	}
	var out *Member
	err = s.store.Tx(ctx, func(tx Store) error {
		cur, err := s.lockMember(ctx, tx, p, userID)
		if err != nil {
			return err
		}
		if (cur.Role == RoleOwner || role == RoleOwner) && p.Role != RoleOwner {
			return Errorf(EFORBIDDEN, "only an owner can grant or take the owner role")
		}
		if cur.Role == role {
			out = cur
			return nil
		}
		if cur.Role == RoleOwner && !cur.Pending {
			if err := s.keepAnOwner(ctx, tx, p.TenantID, cur); err != nil {
				return err
			}
		}
		if out, err = tx.UpdateMemberRole(ctx, p.TenantID, userID, role); err != nil {
			return err
		}
		return s.audit(ctx, tx, p, "member.update_role", "user", userID,
			map[string]any{"email": cur.Email, "from": string(cur.Role), "to": string(role)})
	})
	return out, err
}

// RemoveMember removes a member from the caller's tenant; its sessions
// there end at once. Only an owner removes an owner, and not the last.
func (s *Service) RemoveMember(ctx context.Context, userID string) error {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return err
	}
	return s.store.Tx(ctx, func(tx Store) error {
		cur, err := s.lockMember(ctx, tx, p, userID)
		if err != nil {
			return err
		}
		if cur.Role == RoleOwner {
			if p.Role != RoleOwner {
				return Errorf(EFORBIDDEN, "only an owner can remove an owner")
			}
			if !cur.Pending { // an invited owner who has not accepted is none yet
				if err := s.keepAnOwner(ctx, tx, p.TenantID, cur); err != nil {
					return err
				}
			}
		}
		if err := tx.DeleteMembership(ctx, p.TenantID, userID); err != nil {
			return err
		}
		return s.audit(ctx, tx, p, "member.remove", "user", userID,
			map[string]any{"email": cur.Email, "role": string(cur.Role)})
	})
}

// lockMember locks the tenant (serializing membership changes, so that
// two owners cannot demote each other at once) and returns the member.
func (s *Service) lockMember(ctx context.Context, tx Store, p *Principal, userID string) (*Member, error) {
	if _, err := tx.LockTenant(ctx, p.TenantID); err != nil {
		return nil, err
	}
	m, err := tx.FindMember(ctx, p.TenantID, userID)
	if ErrorCode(err) == ENOTFOUND {
		return nil, Errorf(ENOTFOUND, "member %q not found", userID)
	}
	return m, err
}

func (s *Service) keepAnOwner(ctx context.Context, tx Store, tenantID string, owner *Member) error {
	n, err := tx.CountOwners(ctx, tenantID)
	if err != nil {
		return err
	}
	if n <= 1 {
		return Errorf(ECONFLICT, "%s is the last owner; make another member owner first", owner.Email)
	}
	return nil
}

// --- one-time links and mail ---

// createUserToken stores a new one-time token in tx and returns its
// plaintext (for the link).
func (s *Service) createUserToken(ctx context.Context, tx Store, purpose, userID, tenantID string, now time.Time) (string, error) {
	ttl := map[string]time.Duration{TokenVerifyEmail: verifyEmailTTL, TokenResetPassword: resetPasswordTTL, TokenInvite: inviteTTL}[purpose]
	id, plaintext, hash := secret.New(UserTokenPrefix)
	t := &UserToken{ID: id, Purpose: purpose, UserID: userID, TenantID: tenantID, CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := tx.CreateUserToken(ctx, t, hash); err != nil {
		return "", err
	}
	return plaintext, nil
}

// checkUserToken checks a link's token in st (its secret, one of the
// purposes, unused, unexpired at now) without spending it. Every problem
// is the same EINVALID. Callers check the link before any password
// hashing, so that a bad link costs no argon2id time.
func (s *Service) checkUserToken(ctx context.Context, st Store, token string, now time.Time, purposes ...string) (*UserToken, error) {
	id, sec, err := secret.Parse(UserTokenPrefix, token)
	if err != nil {
		return nil, errBadLink()
	}
	t, hash, err := st.FindUserTokenForAuth(ctx, id)
	if ErrorCode(err) == ENOTFOUND {
		return nil, errBadLink()
	} else if err != nil {
		return nil, err
	}
	if !secret.Equal(sec, hash) || !slices.Contains(purposes, t.Purpose) || t.UsedAt != nil || !now.Before(t.ExpiresAt) {
		return nil, errBadLink()
	}
	return t, nil
}

// useUserToken checks a link's token like checkUserToken and marks it
// used, inside tx.
func (s *Service) useUserToken(ctx context.Context, tx Store, token string, now time.Time, purposes ...string) (*UserToken, error) {
	t, err := s.checkUserToken(ctx, tx, token, now, purposes...)
	if err != nil {
		return nil, err
	}
	if err := tx.UseUserToken(ctx, t.ID, now); ErrorCode(err) == ECONFLICT {
		return nil, errBadLink()
	} else if err != nil {
		return nil, err
	}
	return t, nil
}

// tokenMember returns the membership a confirmation or invitation token
// belongs to, and its user. A membership that went (its tokens with it,
// but a caller may have checked the token before) is EINVALID.
func (s *Service) tokenMember(ctx context.Context, st Store, t *UserToken) (*Member, *UserAuth, error) {
	m, err := st.FindMember(ctx, t.TenantID, t.UserID)
	if ErrorCode(err) == ENOTFOUND {
		return nil, nil, errBadLink()
	} else if err != nil {
		return nil, nil, err
	}
	u, err := st.FindUserByEmail(ctx, m.Email)
	if ErrorCode(err) == ENOTFOUND || (err == nil && u.ID != t.UserID) {
		return nil, nil, errBadLink()
	} else if err != nil {
		return nil, nil, err
	}
	return m, u, nil
}

// baseURL is PublicURL without a trailing slash ("" = relative links).
func (s *Service) baseURL() string { return strings.TrimRight(s.cfg.PublicURL, "/") }

// link is the portal page at path with token in its query.
func (s *Service) link(path, token string) string {
	return s.baseURL() + path + "?token=" + url.QueryEscape(token)
}

// send sends m now.
func (s *Service) send(ctx context.Context, m Mail) error {
	if err := s.cfg.Mailer.Send(ctx, m); err != nil {
		return fmt.Errorf("mail %q to %s: %w", m.Subject, m.To, err)
	}
	return nil
}

// sendMail sends m after the call returned (see background).
func (s *Service) sendMail(ctx context.Context, m Mail) {
	s.background(ctx, "sending mail", func(ctx context.Context) error { return s.send(ctx, m) })
}

// background runs fn on its own, detached from ctx's cancellation and
// bounded by backgroundTimeout, and logs its error. Signups and mails go
// this way: the caller waits for neither the mail server nor work that
// only an unknown (or only a known) address causes, so the time an answer
// takes does not tell whether an account exists.
func (s *Service) background(ctx context.Context, what string, fn func(context.Context) error) {
	ctx = context.WithoutCancel(ctx)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, backgroundTimeout)
		defer cancel()
		if err := fn(ctx); err != nil {
			s.logger.WarnContext(ctx, what+" failed", "err", err)
		}
	}()
}

// hours words a link lifetime ("1 hour", "24 hours", "7 days").
func hours(d time.Duration) string {
	switch h := int(d / time.Hour); {
	case h == 1:
		return "1 hour"
	case h%24 == 0 && h > 24:
		return fmt.Sprintf("%d days", h/24)
	default:
		return fmt.Sprintf("%d hours", h)
	}
}

// AdminSetPassword sets the password of the user with this e-mail address
// for an operator of the service (`fleetplane admin user password`, and
// `fleetplane dev` for the demo owner): it confirms the address and ends
// the user's sessions, audited as a system action in each of their tenants.
func (s *Service) AdminSetPassword(ctx context.Context, email, pw string) error {
	email, ok := normalizeEmail(email)
	if !ok {
		return Errorf(EINVALID, "email: must be a valid e-mail address")
	}
	var v ValidationError
	validatePassword(&v, pw)
	if err := v.Err(); err != nil {
		return err
	}
	hash := password.Hash(pw, s.cfg.PasswordParams)
	return s.store.Tx(ctx, func(tx Store) error {
		u, err := tx.FindUserByEmail(ctx, email)
		if err != nil {
			return err
		}
		now := s.now()
		if err := tx.SetUserPassword(ctx, u.ID, hash, now); err != nil {
			return err
		}
		if err := tx.VerifyUserEmail(ctx, u.ID, now); err != nil {
			return err
		}
		if _, err := tx.DeleteUserSessions(ctx, u.ID); err != nil {
			return err
		}
		ms, err := tx.FindUserMemberships(ctx, u.ID)
		if err != nil {
			return err
		}
		for _, m := range ms {
			p := &Principal{TenantID: m.TenantID, ActorType: "system", ActorID: "admin", SourceIP: "local"}
			if err := s.audit(ctx, tx, p, "user.set_password", "user", u.ID, map[string]any{"by": "operator"}); err != nil {
				return err
			}
		}
		return nil
	})
}
