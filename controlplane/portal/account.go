package portal

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// The account area: signup with e-mail confirmation, sign-in and
// sign-out, password reset, invitations and the team page.
//
// No enumeration: signup and reset requests redirect to the same "check
// your e-mail" page whatever the address; a failed sign-in shows one fixed
// message. Links from e-mails (confirm, reset, invite) open a page with a
// button: the token is spent by the POST, never by the GET, so mail
// scanners that fetch links do not use it up. The Service mails
// /confirm?token=, /reset?token= and /invite?token=.
//
// Confirming a signup takes the password chosen at signup, and accepting
// an invitation either chooses a password (a new user) or signs in with
// the existing one: both pages check a password, so their POSTs (and the
// reset's) are rate limited per client address like sign-ins.

// loginFailed is the one message of every failed sign-in.
const loginFailed = "Incorrect e-mail or password."

func (s *server) accountRoutes(r chi.Router) {
	loginLimit := s.limit(orDefault(s.opts.LoginRatePerMinute, DefaultLoginRatePerMinute), "sign-in attempts")
	signupLimit := s.limit(orDefault(s.opts.SignupRatePerMinute, DefaultSignupRatePerMinute), "sign-ups")
	resetRate := orDefault(s.opts.ResetRatePerMinute, DefaultResetRatePerMinute)
	resetLimit := s.limit(resetRate, "password reset requests")
	// The e-mail links' forms (confirm, new password, invitation) share one
	// limit at the reset rate: each POST may cost an argon2id hash.
	linkLimit := s.limit(resetRate, "attempts with e-mail links")

	r.Get("/signup", s.handle(s.signupPage))
	r.With(signupLimit).Post("/signup", s.handle(s.signup))
	r.Get("/confirm", s.handle(s.confirmPage))
	r.With(linkLimit).Post("/confirm", s.handle(s.confirm))
	r.Get("/login", s.handle(s.loginPage))
	r.With(loginLimit).Post("/login", s.handle(s.login))
	r.Post("/logout", s.logoutSignedOut(s.handle(s.logout)))
	r.Get("/reset", s.handle(s.resetPage))
	r.With(resetLimit).Post("/reset", s.handle(s.reset))
	r.Get("/reset/confirm", s.handle(s.resetConfirmPage))
	r.With(linkLimit).Post("/reset/confirm", s.handle(s.resetConfirm))
	r.Get("/invite", s.handle(s.invitePage))
	r.With(linkLimit).Post("/invite", s.handle(s.acceptInvite))
	r.Group(func(r chi.Router) {
		r.Use(s.requireSession)
		r.Get("/team", s.handle(s.team))
		r.Post("/team/invite", s.handle(s.inviteMember))
		r.Post("/team/{user}/role", s.handle(s.changeRole))
		r.Post("/team/{user}/remove", s.handle(s.removeMember))
	})
}

func orDefault(n, def int) int {
	if n > 0 {
		return n
	}
	return def
}

// form is an account form's state: what the user typed (never a
// password), the message per invalid field, and where the focus goes.
type form struct {
	Values map[string]string
	Errors map[string]string // field name → message
	Focus  string            // the field that gets autofocus
	Next   string            // login: a local path to go to afterwards
	Token  string            // the e-mail link's token (confirm, reset, invite)
	Sent   bool              // the "check your e-mail" state
	// Invite is what an invitation link is for (the invite page).
	Invite *controlplane.Invitation
}

// V is the value the user typed into field.
func (f *form) V(field string) string { return f.Values[field] }

// Err is the message of an invalid field ("" when it is fine).
func (f *form) Err(field string) string { return f.Errors[field] }

// fail records err on the form: per-field messages, focus on the first
// invalid field (or on fallback when no field is named).
func (f *form) fail(err error, fallback string) {
	f.Errors = map[string]string{}
	f.Focus = fallback
	var e *controlplane.Error
	if errors.As(err, &e) {
		for i, fe := range e.Fields {
			if _, dup := f.Errors[fe.Field]; !dup {
				f.Errors[fe.Field] = fe.Message
			}
			if i == 0 {
				f.Focus = fe.Field
			}
		}
	}
}

// renderForm renders an account page with f; err (when not nil) becomes
// the page's error summary.
func (s *server) renderForm(w http.ResponseWriter, r *http.Request, status int, name, title string, f *form, err error) {
	p := s.newPage(w, r, title, "")
	if err != nil {
		p.Error = formError(err)
	}
	if f.Sent {
		p.Flash = nil // the page says it in full
	}
	p.Data = f
	s.render(w, r, status, name, p)
}

// formCode reports whether err is one a form shows next to the user's
// input (rather than on the error page).
func formCode(err error) bool {
	switch controlplane.ErrorCode(err) {
	case controlplane.EINVALID, controlplane.ECONFLICT, controlplane.EPAYMENTREQUIRED, controlplane.EUNPROCESSABLE:
		return true
	}
	return false
}

// withUserAgent is r's context with its User-Agent, which the Service
// records with a new session.
func withUserAgent(r *http.Request) context.Context {
	return controlplane.NewContextWithUserAgent(r.Context(), r.UserAgent())
}

// startSession replaces the browser's session with created: the session
// it carried before (if any) is deleted, so a session planted before
// sign-in is never the one after it (session fixation).
func (s *server) startSession(w http.ResponseWriter, r *http.Request, created *controlplane.SessionCreated) {
	if old, _ := r.Context().Value(tokenKey).(string); old != "" {
		if err := s.svc.Logout(r.Context(), old); err != nil && controlplane.ErrorCode(err) != controlplane.EUNAUTHORIZED {
			s.log.WarnContext(r.Context(), "portal: deleting the previous session", "err", err)
		}
	}
	s.setSessionCookie(w, created)
}

// --- signup and confirmation ---

func (s *server) signupPage(w http.ResponseWriter, r *http.Request) error {
	f := &form{Sent: r.URL.Query().Get("m") == "check-mail", Focus: "organisation"}
	s.renderForm(w, r, http.StatusOK, "signup.html", "Create an account", f, nil)
	return nil
}

// signup always ends on the same "check your e-mail" page, whether the
// address is new (a confirmation link is mailed) or not (a notice is).
func (s *server) signup(w http.ResponseWriter, r *http.Request) error {
	req := controlplane.PortalSignupRequest{
		Organisation: r.PostForm.Get("organisation"),
		Email:        r.PostForm.Get("email"),
		Password:     r.PostForm.Get("password"),
	}
	if err := s.svc.PortalSignup(r.Context(), req); err != nil {
		if !formCode(err) {
			return err
		}
		f := &form{Values: map[string]string{"organisation": req.Organisation, "email": req.Email}}
		f.fail(err, "organisation")
		s.renderForm(w, r, http.StatusBadRequest, "signup.html", "Create an account", f, err)
		return nil
	}
	redirect(w, r, "/signup", "check-mail")
	return nil
}

func (s *server) confirmPage(w http.ResponseWriter, r *http.Request) error {
	f := &form{Token: r.URL.Query().Get("token"), Focus: "password"}
	if f.Token == "" {
		err := controlplane.Errorf(controlplane.EINVALID, "this link is incomplete; open the whole link from the e-mail")
		s.renderForm(w, r, http.StatusBadRequest, "confirm.html", "Confirm your e-mail address", f, err)
		return nil
	}
	s.renderForm(w, r, http.StatusOK, "confirm.html", "Confirm your e-mail address", f, nil)
	return nil
}

// confirm spends the signup link with the password chosen at signup. A
// wrong password leaves the link usable: the form comes back with it.
func (s *server) confirm(w http.ResponseWriter, r *http.Request) error {
	token := r.PostForm.Get("token")
	created, err := s.svc.ConfirmEmail(withUserAgent(r), token, r.PostForm.Get("password"))
	if err != nil {
		if !tokenProblem(err) {
			return err
		}
		f, status := &form{}, http.StatusBadRequest
		if controlplane.ErrorCode(err) == controlplane.EUNAUTHORIZED {
			f.fail(err, "password")
			f.Token, status = token, http.StatusUnauthorized
		}
		s.renderForm(w, r, status, "confirm.html", "Confirm your e-mail address", f, err)
		return nil
	}
	s.startSession(w, r, created)
	redirect(w, r, "/dashboard", "")
	return nil
}

// tokenProblem reports whether err says an e-mail link's token (or the
// input that goes with it) is not acceptable.
func tokenProblem(err error) bool {
	switch controlplane.ErrorCode(err) {
	case controlplane.EINVALID, controlplane.EUNAUTHORIZED, controlplane.ENOTFOUND, controlplane.ECONFLICT:
		return true
	}
	return false
}

// --- sign-in and sign-out ---

func (s *server) loginPage(w http.ResponseWriter, r *http.Request) error {
	next := r.URL.Query().Get("next")
	if !localPath(next) {
		next = ""
	}
	if sessionFrom(r.Context()) != nil {
		redirect(w, r, orPath(next, "/dashboard"), "")
		return nil
	}
	s.renderForm(w, r, http.StatusOK, "login.html", "Sign in", &form{Next: next, Focus: "email"}, nil)
	return nil
}

// login signs in with a new session every time (the one the browser
// carried is deleted) and goes on to next when it is a local path.
func (s *server) login(w http.ResponseWriter, r *http.Request) error {
	email, next := r.PostForm.Get("email"), r.PostForm.Get("next")
	if !localPath(next) {
		next = ""
	}
	created, err := s.svc.Login(withUserAgent(r), email, r.PostForm.Get("password"))
	if err != nil {
		switch controlplane.ErrorCode(err) {
		case controlplane.EUNAUTHORIZED, controlplane.EINVALID:
			// One fixed message and status for every failure.
			err = controlplane.Errorf(controlplane.EUNAUTHORIZED, loginFailed)
			f := &form{Values: map[string]string{"email": email}, Next: next, Focus: "email"}
			s.renderForm(w, r, http.StatusUnauthorized, "login.html", "Sign in", f, err)
			return nil
		}
		return err
	}
	s.startSession(w, r, created)
	redirect(w, r, orPath(next, "/dashboard"), "")
	return nil
}

func orPath(p, def string) string {
	if p == "" {
		return def
	}
	return p
}

// logoutSignedOut answers a sign-out without a session (a tab left open
// past the session's end) with the signed-out page: there is nothing to
// protect, and its form's CSRF token (the dead session's) cannot match.
func (s *server) logoutSignedOut(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if sessionFrom(r.Context()) == nil {
			s.clearSessionCookie(w)
			redirect(w, r, "/", "signed-out")
			return
		}
		next(w, r)
	}
}

func (s *server) logout(w http.ResponseWriter, r *http.Request) error {
	s.clearSessionCookie(w)
	if tok, _ := r.Context().Value(tokenKey).(string); tok != "" {
		if err := s.svc.Logout(r.Context(), tok); err != nil && controlplane.ErrorCode(err) != controlplane.EUNAUTHORIZED {
			return err
		}
	}
	redirect(w, r, "/", "signed-out")
	return nil
}

// --- password reset and invitations ---

// resetPage asks for the address; with a token (the mailed link is
// /reset?token=...) it is the new-password form instead.
func (s *server) resetPage(w http.ResponseWriter, r *http.Request) error {
	if r.URL.Query().Has("token") {
		return s.resetConfirmPage(w, r)
	}
	f := &form{Sent: r.URL.Query().Get("m") == "check-mail", Focus: "email"}
	s.renderForm(w, r, http.StatusOK, "reset.html", "Reset your password", f, nil)
	return nil
}

// reset answers the same for known and unknown addresses (only a known
// one gets a link).
func (s *server) reset(w http.ResponseWriter, r *http.Request) error {
	email := r.PostForm.Get("email")
	if err := s.svc.RequestPasswordReset(r.Context(), email); err != nil {
		if !formCode(err) {
			return err
		}
		f := &form{Values: map[string]string{"email": email}}
		f.fail(err, "email")
		s.renderForm(w, r, http.StatusBadRequest, "reset.html", "Reset your password", f, err)
		return nil
	}
	redirect(w, r, "/reset", "check-mail")
	return nil
}

func (s *server) resetConfirmPage(w http.ResponseWriter, r *http.Request) error {
	return s.passwordPage(w, r, "reset_confirm.html", "Choose a new password")
}

func (s *server) resetConfirm(w http.ResponseWriter, r *http.Request) error {
	return s.setPassword(w, r, "reset_confirm.html", "Choose a new password")
}

const inviteTitle = "Join your team"

// invitePage shows what an invitation is for and its form: a new password
// for a user without one, a sign-in for a user with one. Fetching it
// spends nothing.
func (s *server) invitePage(w http.ResponseWriter, r *http.Request) error {
	token := r.URL.Query().Get("token")
	if token == "" {
		err := controlplane.Errorf(controlplane.EINVALID, "this link is incomplete; open the whole link from the e-mail")
		s.renderForm(w, r, http.StatusBadRequest, "invite.html", inviteTitle, &form{}, err)
		return nil
	}
	inv, err := s.svc.Invitation(r.Context(), token)
	if err != nil {
		if !tokenProblem(err) {
			return err
		}
		s.renderForm(w, r, http.StatusBadRequest, "invite.html", inviteTitle, &form{}, err)
		return nil
	}
	s.renderForm(w, r, http.StatusOK, "invite.html", inviteTitle, &form{Token: token, Invite: inv, Focus: "password"}, nil)
	return nil
}

// acceptInvite spends an invitation link: the user joins the team and is
// signed in to it. A weak new password or a wrong existing one leaves the
// link usable: the form comes back with it.
func (s *server) acceptInvite(w http.ResponseWriter, r *http.Request) error {
	token := r.PostForm.Get("token")
	created, err := s.svc.AcceptInvitation(withUserAgent(r), token, r.PostForm.Get("password"))
	if err != nil {
		if !tokenProblem(err) {
			return err
		}
		f, status := &form{}, http.StatusBadRequest
		f.fail(err, "password")
		if _, ok := f.Errors["password"]; ok {
			// The link is fine, the password is not: try again.
			inv, ierr := s.svc.Invitation(r.Context(), token)
			if ierr == nil {
				f.Token, f.Invite = token, inv
			}
			if controlplane.ErrorCode(err) == controlplane.EUNAUTHORIZED {
				status = http.StatusUnauthorized
			}
		}
		s.renderForm(w, r, status, "invite.html", inviteTitle, f, err)
		return nil
	}
	s.startSession(w, r, created)
	redirect(w, r, "/dashboard", "")
	return nil
}

// passwordPage is the form behind a reset link.
func (s *server) passwordPage(w http.ResponseWriter, r *http.Request, name, title string) error {
	f := &form{Token: r.URL.Query().Get("token"), Focus: "password"}
	if f.Token == "" {
		err := controlplane.Errorf(controlplane.EINVALID, "this link is incomplete; open the whole link from the e-mail")
		s.renderForm(w, r, http.StatusBadRequest, name, title, &form{}, err)
		return nil
	}
	s.renderForm(w, r, http.StatusOK, name, title, f, nil)
	return nil
}

// setPassword spends a reset token: the password is set, every session
// of the user ends, and the user signs in with it.
func (s *server) setPassword(w http.ResponseWriter, r *http.Request, name, title string) error {
	token := r.PostForm.Get("token")
	if err := s.svc.ResetPassword(r.Context(), token, r.PostForm.Get("password")); err != nil {
		if !tokenProblem(err) {
			return err
		}
		f := &form{}
		f.fail(err, "password")
		if _, ok := f.Errors["password"]; ok {
			f.Token = token // the link is fine, the password is not: try again
		}
		s.renderForm(w, r, http.StatusBadRequest, name, title, f, err)
		return nil
	}
	redirect(w, r, "/login", "password-set")
	return nil
}

// --- team ---

// teamData is the team page: the members, the caller, the roles the
// caller may hand out, and the invitation form.
type teamData struct {
	Members []*controlplane.Member
	Me      string // the caller's user ID
	Roles   []controlplane.Role
	Invite  *form
}

func (s *server) team(w http.ResponseWriter, r *http.Request) error {
	return s.renderTeam(w, r, http.StatusOK, &form{Values: map[string]string{"role": string(controlplane.RoleMember)}}, nil)
}

func (s *server) renderTeam(w http.ResponseWriter, r *http.Request, status int, invite *form, err error) error {
	members, lerr := s.svc.Members(r.Context())
	if lerr != nil {
		return lerr
	}
	p := s.newPage(w, r, "Team", "team")
	if err != nil {
		p.Error = formError(err)
	}
	roles := []controlplane.Role{controlplane.RoleViewer, controlplane.RoleMember, controlplane.RoleAdmin}
	if p.Can(string(controlplane.RoleOwner)) {
		roles = append(roles, controlplane.RoleOwner)
	}
	p.Data = &teamData{Members: members, Me: p.Session.UserID, Roles: roles, Invite: invite}
	s.render(w, r, status, "team.html", p)
	return nil
}

func (s *server) inviteMember(w http.ResponseWriter, r *http.Request) error {
	email := strings.TrimSpace(r.PostForm.Get("email"))
	role := r.PostForm.Get("role")
	if _, err := s.svc.InviteMember(r.Context(), email, controlplane.Role(role)); err != nil {
		if !formCode(err) {
			return err
		}
		f := &form{Values: map[string]string{"email": email, "role": role}}
		f.fail(err, "email")
		return s.renderTeam(w, r, statusOf[controlplane.ErrorCode(err)], f, err)
	}
	redirect(w, r, "/team", "invited")
	return nil
}

func (s *server) changeRole(w http.ResponseWriter, r *http.Request) error {
	role := controlplane.Role(r.PostForm.Get("role"))
	if _, err := s.svc.ChangeMemberRole(r.Context(), chi.URLParam(r, "user"), role); err != nil {
		if !formCode(err) {
			return err
		}
		return s.renderTeam(w, r, statusOf[controlplane.ErrorCode(err)], &form{}, err)
	}
	redirect(w, r, "/team", "saved")
	return nil
}

func (s *server) removeMember(w http.ResponseWriter, r *http.Request) error {
	user := chi.URLParam(r, "user")
	if err := s.svc.RemoveMember(r.Context(), user); err != nil {
		if !formCode(err) {
			return err
		}
		return s.renderTeam(w, r, statusOf[controlplane.ErrorCode(err)], &form{}, err)
	}
	if sess := sessionFrom(r.Context()); sess != nil && sess.UserID == user {
		// Left the team: this session is of no use any more.
		if tok, _ := r.Context().Value(tokenKey).(string); tok != "" {
			_ = s.svc.Logout(r.Context(), tok)
		}
		s.clearSessionCookie(w)
		redirect(w, r, "/", "signed-out")
		return nil
	}
	redirect(w, r, "/team", "removed")
	return nil
}
