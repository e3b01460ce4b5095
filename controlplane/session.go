package controlplane

import (
	"context"
	"time"
)

// # Portal accounts and sessions (issue 7, docs/portal.md)
//
// The portal authenticates people (users) with e-mail and password and
// keeps them signed in with server-side sessions in Postgres: the cookie
// holds a random token, the database its SHA-256. Every sign-in creates a
// new session (no fixation); sign-out and a password reset delete them.
//
// No account enumeration: portal signup always answers "check your
// e-mail" and mails either a confirmation link (new address) or a notice
// (existing address); login answers one generic error for every failure
// and spends the same argon2id time on unknown addresses; a reset request
// always answers the same and mails only known addresses.
//
// Invitations take effect only when accepted: InviteMember makes a
// pending membership (accepted_at NULL), for a new address and for an
// existing user alike, and mails a link; only spending that link accepts
// it (a user without a password chooses one there, a user with one signs
// in with it). A pending membership grants nothing: sign-in, sessions and
// owner counts read accepted memberships only, and a password reset never
// accepts an invitation. A signup's membership is accepted at once, but
// confirming the signup's address takes the password chosen at signup, so
// that whoever signed up with someone else's address gains nothing when
// its owner clicks the link.

// Mailer sends e-mail (controlplane/mail: a log sender for dev, SMTP).
type Mailer interface {
	Send(ctx context.Context, m Mail) error
}

// Mail is one plain-text message.
type Mail struct {
	To      string
	Subject string
	Text    string
}

// Session is a signed-in user in one tenant.
type Session struct {
	ID       string // public identifier (not the secret)
	UserID   string
	Email    string
	TenantID string
	Role     Role
	// CSRF is the session's anti-CSRF secret: the portal puts it in every
	// form and checks it on every state-changing request.
	CSRF       string
	CreatedAt  time.Time
	LastSeenAt time.Time
	ExpiresAt  time.Time // absolute; idle expiry is LastSeenAt + SessionIdleTTL
}

// SessionCreated is a new session with its cookie token, shown once.
type SessionCreated struct {
	Session
	Token string
}

// Member is a user's membership in the caller's tenant.
type Member struct {
	UserID  string
	Email   string
	Role    Role
	Pending bool // invited, not accepted yet (AcceptedAt is nil)
	// AcceptedAt is when the invitation was accepted (the creation for a
	// signup's owner); nil while it is pending.
	AcceptedAt *time.Time
	CreatedAt  time.Time
}

// Invitation is a pending membership as its link's page shows it.
type Invitation struct {
	TenantName string
	Email      string
	Role       Role
	// HasPassword: the invitee has an account already and accepts by
	// signing in with its password; otherwise by choosing one.
	HasPassword bool
}

// Defaults of the session lifetimes.
const (
	DefaultSessionTTL     = 7 * 24 * time.Hour // absolute
	DefaultSessionIdleTTL = 12 * time.Hour     // without a request
)

// Purposes of one-time user tokens (links in e-mails).
const (
	TokenVerifyEmail   = "verify_email"   // portal signup confirmation (1 day)
	TokenResetPassword = "reset_password" // password reset (1 hour)
	TokenInvite        = "invite"         // team invitation: accept it (7 days)
)

// PortalSignupRequest is a signup from the portal.
type PortalSignupRequest struct {
	Organisation string
	Email        string
	Password     string
}

// The portal's Service methods (implemented in session_service.go):
//
//	PortalSignup(ctx, PortalSignupRequest) error — validation errors only
//	  (EINVALID); otherwise always nil, mails a link or a notice. An
//	  existing address without an accepted membership (an invitee who
//	  never accepted, a removed member) signing up again with its current
//	  password gets the organisation (see existingSignup).
//	ConfirmEmail(ctx, token, password) (*SessionCreated, error) — confirms
//	  the address (from the signup link) when password is the one chosen
//	  at signup, and signs the user in; a wrong password is EUNAUTHORIZED
//	  and leaves the link usable.
//	Login(ctx, email, password) (*SessionCreated, error) — EUNAUTHORIZED
//	  "incorrect e-mail or password" for every failure.
//	SessionAuth(ctx, token) (*Principal, *Session, error) — resolves a
//	  cookie token (EUNAUTHORIZED when missing, expired or idle), touches
//	  last_seen_at at most once a minute. Principal.ActorType is "user".
//	Logout(ctx, token) error
//	RequestPasswordReset(ctx, email) error — always nil for a valid
//	  address; mails a link to a known one.
//	ResetPassword(ctx, token, newPassword) error — sets it, deletes every
//	  session of the user, confirms the address; EINVALID for a bad token.
//	  Accepts no invitation.
//	Invitation(ctx, token) (*Invitation, error) — what an invitation link
//	  is for, without spending it; EINVALID for a bad token.
//	AcceptInvitation(ctx, token, password) (*SessionCreated, error) —
//	  accepts the invitation (setting the password of a user without one,
//	  checking it for a user with one) and signs the user in to its tenant.
//	Members(ctx) ([]*Member, error) — viewer; pending invitations too.
//	InviteMember(ctx, email string, role Role) (*Member, error) — admin;
//	  a pending membership and a mailed link to accept it, for a new
//	  address and an existing user alike.
//	ChangeMemberRole(ctx, userID string, role Role) (*Member, error) —
//	  admin; only an owner grants or takes owner; the last owner stays.
//	RemoveMember(ctx, userID string) error — admin; not the last owner.

// UserAuth is a user with what signing in checks.
type UserAuth struct {
	User
	PasswordHash    string     // argon2id PHC string; "" = no password set yet
	EmailVerifiedAt *time.Time // nil = address not confirmed
}

// UserToken is a one-time link mailed to a user (fpt_<id>_<secret>). The
// secret is in the mail only; the store keeps its SHA-256.
type UserToken struct {
	ID        string // public part of the token
	Purpose   string // Token*
	UserID    string
	TenantID  string // "" for a password reset
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    *time.Time
}

// CleanupSessionsJob is the periodic job that deletes expired sessions
// and user tokens (controlplane/jobs).
type CleanupSessionsJob struct{}

// Kind is the job's River kind.
func (CleanupSessionsJob) Kind() string { return "cleanup_sessions" }

// SessionStore is the persistence of portal accounts, memberships and
// sessions (postgres/session.go). Like the rest of Store, it returns
// ENOTFOUND for a missing row and ECONFLICT for a duplicate.
type SessionStore interface {
	// CreatePortalUser is CreateUser for a user whose address is not
	// confirmed yet (portal signup, invitation).
	CreatePortalUser(ctx context.Context, u *User, passwordHash string) error
	// FindUserByEmail finds a user by (lower-cased) e-mail address.
	FindUserByEmail(ctx context.Context, email string) (*UserAuth, error)
	// SetUserPassword stores a new password hash.
	SetUserPassword(ctx context.Context, userID, passwordHash string, at time.Time) error
	// VerifyUserEmail marks the address confirmed at `at` (unless it was).
	VerifyUserEmail(ctx context.Context, userID string, at time.Time) error

	// FindUserMemberships lists a user's accepted memberships, oldest
	// first (pending invitations are left out).
	FindUserMemberships(ctx context.Context, userID string) ([]*Membership, error)
	// FindMember finds a member of the tenant, pending or not.
	FindMember(ctx context.Context, tenantID, userID string) (*Member, error)
	// FindMembers lists a tenant's members, pending too, oldest first.
	FindMembers(ctx context.Context, tenantID string) ([]*Member, error)
	// CountOwners counts the tenant's accepted owners.
	CountOwners(ctx context.Context, tenantID string) (int, error)
	// CreatePendingMembership is CreateMembership for an invitation: the
	// membership grants nothing until AcceptMembership.
	CreatePendingMembership(ctx context.Context, m *Membership) error
	// AcceptMembership accepts a pending membership at `at` and deletes
	// its unused invitation tokens; ENOTFOUND when none is pending.
	AcceptMembership(ctx context.Context, tenantID, userID string, at time.Time) error
	UpdateMemberRole(ctx context.Context, tenantID, userID string, role Role) (*Member, error)
	// DeleteMembership removes a member; the membership's sessions and
	// tokens go with it.
	DeleteMembership(ctx context.Context, tenantID, userID string) error

	// CreateSession stores s (ID, UserID, TenantID, CSRF and the three
	// times) with the hash of its token and where it was opened; ENOTFOUND
	// without an accepted membership.
	CreateSession(ctx context.Context, s *Session, tokenHash []byte, sourceIP, userAgent string) error
	// FindSessionForAuth finds a session by its ID, in any tenant, with
	// its user's e-mail, the membership's current role and its token
	// hash: for authentication only. A session whose membership is not
	// accepted is not found.
	FindSessionForAuth(ctx context.Context, id string) (*Session, []byte, error)
	// TouchSession sets last_seen_at to at, unless it was set less than a
	// minute before.
	TouchSession(ctx context.Context, id string, at time.Time) error
	DeleteSession(ctx context.Context, id string) error
	// DeleteUserSessions deletes every session of a user, in any tenant.
	DeleteUserSessions(ctx context.Context, userID string) (int64, error)

	CreateUserToken(ctx context.Context, t *UserToken, tokenHash []byte) error
	// FindUserTokenForAuth finds a token by its ID, with its hash.
	FindUserTokenForAuth(ctx context.Context, id string) (*UserToken, []byte, error)
	// UseUserToken marks a token used if it is unused and unexpired at
	// `at`; otherwise ECONFLICT. Concurrent callers are serialized on the
	// row: a token is used once.
	UseUserToken(ctx context.Context, id string, at time.Time) error
	// DeleteUserTokens deletes a user's unused tokens of the purposes.
	DeleteUserTokens(ctx context.Context, userID string, purposes ...string) (int64, error)

	// CleanupSessions deletes sessions that expired at `at` or were last
	// seen before idleBefore, and user tokens that expired at `at`.
	CleanupSessions(ctx context.Context, at, idleBefore time.Time) (int64, error)
}
