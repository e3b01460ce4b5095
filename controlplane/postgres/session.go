package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Portal accounts, memberships and sessions (controlplane/session.go,
// migrations 000010 and 000011).
//
// A membership with accepted_at NULL is a pending invitation: every read
// that decides what a user may do (FindUserMemberships, CountOwners,
// FindSessionForAuth, CreateSession) sees accepted memberships only.

// CreatePortalUser inserts u with its address not confirmed yet and sets
// its ID and CreatedAt. passwordHash "" stores no password.
func (s *Store) CreatePortalUser(ctx context.Context, u *controlplane.User, passwordHash string) error {
	var hash *string
	if passwordHash != "" {
		hash = &passwordHash
	}
	err := s.db.QueryRow(ctx, `
		INSERT INTO users (email, password_hash, email_verified_at) VALUES ($1, $2, NULL)
		RETURNING id, created_at`,
		u.Email, hash,
	).Scan(&u.ID, &u.CreatedAt)
	return translate(err, "user not found")
}

// FindUserByEmail returns the user with this (lower-cased) address.
func (s *Store) FindUserByEmail(ctx context.Context, email string) (*controlplane.UserAuth, error) {
	u := &controlplane.UserAuth{}
	var hash *string
	err := s.db.QueryRow(ctx, `
		SELECT id, email, created_at, password_hash, email_verified_at FROM users WHERE email = $1`, email,
	).Scan(&u.ID, &u.Email, &u.CreatedAt, &hash, &u.EmailVerifiedAt)
	if err != nil {
		return nil, translate(err, "user not found")
	}
	if hash != nil {
		u.PasswordHash = *hash
	}
	return u, nil
}

// SetUserPassword stores a new password hash.
func (s *Store) SetUserPassword(ctx context.Context, userID, passwordHash string, at time.Time) error {
	if passwordHash == "" {
		return controlplane.Errorf(controlplane.EINVALID, "users.password_hash: is required")
	}
	return s.execOne(ctx, "user not found", `
		UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1`, userID, passwordHash, at)
}

// VerifyUserEmail sets email_verified_at unless it is set.
func (s *Store) VerifyUserEmail(ctx context.Context, userID string, at time.Time) error {
	return s.execOne(ctx, "user not found", `
		UPDATE users SET email_verified_at = COALESCE(email_verified_at, $2), updated_at = $2 WHERE id = $1`,
		userID, at)
}

// FindUserMemberships lists the user's accepted memberships, oldest
// first; pending invitations are left out.
func (s *Store) FindUserMemberships(ctx context.Context, userID string) ([]*controlplane.Membership, error) {
	rows, err := s.db.Query(ctx, `
		SELECT tenant_id, user_id, role, created_at FROM memberships
		WHERE user_id = $1 AND accepted_at IS NOT NULL ORDER BY created_at, tenant_id`, userID)
	ms, err := collect(rows, err, func(r pgx.Row) (*controlplane.Membership, error) {
		m := &controlplane.Membership{}
		var role string
		if err := r.Scan(&m.TenantID, &m.UserID, &role, &m.CreatedAt); err != nil {
			return nil, err
		}
		m.Role = controlplane.Role(role)
		return m, nil
	})
	if err != nil {
		return nil, translate(err, "user not found")
	}
	return ms, nil
}

const memberColumns = `m.user_id, u.email, m.role, m.accepted_at, m.created_at`

const memberFrom = ` FROM memberships m JOIN users u ON u.id = m.user_id `

func scanMember(row pgx.Row) (*controlplane.Member, error) {
	m := &controlplane.Member{}
	var role string
	if err := row.Scan(&m.UserID, &m.Email, &role, &m.AcceptedAt, &m.CreatedAt); err != nil {
		return nil, err
	}
	m.Role = controlplane.Role(role)
	m.Pending = m.AcceptedAt == nil
	return m, nil
}

// FindMember returns one member of the tenant, pending or not.
func (s *Store) FindMember(ctx context.Context, tenantID, userID string) (*controlplane.Member, error) {
	m, err := scanMember(s.db.QueryRow(ctx, `SELECT `+memberColumns+memberFrom+`
		WHERE m.tenant_id = $1 AND m.user_id = $2`, tenantID, userID))
	if err != nil {
		return nil, translate(err, "member not found")
	}
	return m, nil
}

// FindMembers lists the tenant's members, pending ones too, oldest first.
func (s *Store) FindMembers(ctx context.Context, tenantID string) ([]*controlplane.Member, error) {
	rows, err := s.db.Query(ctx, `SELECT `+memberColumns+memberFrom+`
		WHERE m.tenant_id = $1 ORDER BY m.created_at, u.email`, tenantID)
	ms, err := collect(rows, err, scanMember)
	if err != nil {
		return nil, translate(err, "tenant not found")
	}
	return ms, nil
}

// CountOwners counts the tenant's owners who accepted (an invited owner
// who has not is no owner yet).
func (s *Store) CountOwners(ctx context.Context, tenantID string) (int, error) {
	var n int
	err := s.db.QueryRow(ctx, `
		SELECT count(*) FROM memberships WHERE tenant_id = $1 AND role = 'owner' AND accepted_at IS NOT NULL`,
		tenantID).Scan(&n)
	return n, translate(err, "tenant not found")
}

// UpdateMemberRole sets a member's role and returns the member.
func (s *Store) UpdateMemberRole(ctx context.Context, tenantID, userID string, role controlplane.Role) (*controlplane.Member, error) {
	m, err := scanMember(s.db.QueryRow(ctx, `
		WITH m AS (
			UPDATE memberships SET role = $3 WHERE tenant_id = $1 AND user_id = $2
			RETURNING tenant_id, user_id, role, accepted_at, created_at
		)
		SELECT `+memberColumns+` FROM m JOIN users u ON u.id = m.user_id`,
		tenantID, userID, string(role)))
	if err != nil {
		return nil, translate(err, "member not found")
	}
	return m, nil
}

// CreatePendingMembership inserts m as a pending invitation (accepted_at
// NULL) and sets its CreatedAt. A missing tenant or user is ENOTFOUND, an
// existing membership ECONFLICT.
func (s *Store) CreatePendingMembership(ctx context.Context, m *controlplane.Membership) error {
	err := s.db.QueryRow(ctx, `
		INSERT INTO memberships (tenant_id, user_id, role, accepted_at) VALUES ($1, $2, $3, NULL)
		RETURNING created_at`,
		m.TenantID, m.UserID, string(m.Role),
	).Scan(&m.CreatedAt)
	if isCode(err, codeForeignKeyViolation) || isCode(err, codeInvalidText) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "tenant or user not found")
	}
	return translate(err, "membership not found")
}

// AcceptMembership accepts a pending invitation at `at` and deletes its
// other unused invitation tokens. No pending membership is ENOTFOUND.
func (s *Store) AcceptMembership(ctx context.Context, tenantID, userID string, at time.Time) error {
	var n int64
	err := s.db.QueryRow(ctx, `
		WITH a AS (
			UPDATE memberships SET accepted_at = $3
			WHERE tenant_id = $1 AND user_id = $2 AND accepted_at IS NULL
			RETURNING tenant_id, user_id
		), d AS (
			DELETE FROM user_tokens t USING a
			WHERE t.tenant_id = a.tenant_id AND t.user_id = a.user_id AND t.purpose = 'invite' AND t.used_at IS NULL
		)
		SELECT count(*) FROM a`, tenantID, userID, at).Scan(&n)
	if isCode(err, codeInvalidText) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "invitation not found")
	}
	if err != nil {
		return translate(err, "invitation not found")
	}
	if n == 0 {
		return controlplane.Errorf(controlplane.ENOTFOUND, "invitation not found")
	}
	return nil
}

// DeleteMembership removes a member; the foreign keys delete the
// membership's sessions and tokens.
func (s *Store) DeleteMembership(ctx context.Context, tenantID, userID string) error {
	return s.execOne(ctx, "member not found", `DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2`, tenantID, userID)
}

// --- sessions ---

// CreateSession inserts sess with the hash of its token. Without an
// accepted membership of the user in the tenant it is ENOTFOUND.
func (s *Store) CreateSession(ctx context.Context, sess *controlplane.Session, tokenHash []byte, sourceIP, userAgent string) error {
	tag, err := s.db.Exec(ctx, `
		INSERT INTO sessions (id, token_hash, user_id, tenant_id, csrf, created_at, last_seen_at, expires_at, source_ip, user_agent)
		SELECT $1, $2, m.user_id, m.tenant_id, $5, $6, $7, $8, $9, $10 FROM memberships m
		WHERE m.user_id = $3 AND m.tenant_id = $4 AND m.accepted_at IS NOT NULL`,
		sess.ID, tokenHash, sess.UserID, sess.TenantID, sess.CSRF, sess.CreatedAt, sess.LastSeenAt, sess.ExpiresAt,
		sourceIP, userAgent)
	if isCode(err, codeForeignKeyViolation) || isCode(err, codeInvalidText) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "member not found")
	}
	if err != nil {
		return translate(err, "session not found")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ENOTFOUND, "member not found")
	}
	return nil
}

// FindSessionForAuth returns a session of any tenant with its user's
// e-mail, the membership's role as it is now and the token hash. A session
// whose membership is not accepted is not found.
func (s *Store) FindSessionForAuth(ctx context.Context, id string) (*controlplane.Session, []byte, error) {
	sess := &controlplane.Session{}
	var role string
	var hash []byte
	err := s.db.QueryRow(ctx, `
		SELECT s.id, s.user_id, u.email, s.tenant_id, m.role, s.csrf, s.created_at, s.last_seen_at, s.expires_at, s.token_hash
		FROM sessions s
		JOIN memberships m ON m.tenant_id = s.tenant_id AND m.user_id = s.user_id AND m.accepted_at IS NOT NULL
		JOIN users u ON u.id = s.user_id
		WHERE s.id = $1`, id,
	).Scan(&sess.ID, &sess.UserID, &sess.Email, &sess.TenantID, &role, &sess.CSRF,
		&sess.CreatedAt, &sess.LastSeenAt, &sess.ExpiresAt, &hash)
	if err != nil {
		return nil, nil, translate(err, "session not found")
	}
	sess.Role = controlplane.Role(role)
	return sess, hash, nil
}

// TouchSession sets last_seen_at to at unless it was set less than a
// minute before: a session is checked on every request, written at most
// once a minute.
func (s *Store) TouchSession(ctx context.Context, id string, at time.Time) error {
	_, err := s.db.Exec(ctx, `
		UPDATE sessions SET last_seen_at = $2
		WHERE id = $1 AND last_seen_at < $2::timestamptz - interval '1 minute'`, id, at)
	return translate(err, "session not found")
}

// DeleteSession deletes a session.
func (s *Store) DeleteSession(ctx context.Context, id string) error {
	return s.execOne(ctx, "session not found", `DELETE FROM sessions WHERE id = $1`, id)
}

// DeleteUserSessions deletes every session of the user.
func (s *Store) DeleteUserSessions(ctx context.Context, userID string) (int64, error) {
	tag, err := s.db.Exec(ctx, `DELETE FROM sessions WHERE user_id = $1`, userID)
	if err != nil {
		return 0, translate(err, "user not found")
	}
	return tag.RowsAffected(), nil
}

// --- user tokens ---

// CreateUserToken inserts t with the hash of its secret.
func (s *Store) CreateUserToken(ctx context.Context, t *controlplane.UserToken, tokenHash []byte) error {
	var tenantID *string
	if t.TenantID != "" {
		tenantID = &t.TenantID
	}
	_, err := s.db.Exec(ctx, `
		INSERT INTO user_tokens (id, token_hash, purpose, user_id, tenant_id, created_at, expires_at, used_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		t.ID, tokenHash, t.Purpose, t.UserID, tenantID, t.CreatedAt, t.ExpiresAt, t.UsedAt)
	if isCode(err, codeForeignKeyViolation) || isCode(err, codeInvalidText) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "user or member not found")
	}
	return translate(err, "token not found")
}

// FindUserTokenForAuth returns a token and its hash.
func (s *Store) FindUserTokenForAuth(ctx context.Context, id string) (*controlplane.UserToken, []byte, error) {
	t := &controlplane.UserToken{}
	var tenantID *string
	var hash []byte
	err := s.db.QueryRow(ctx, `
		SELECT id, purpose, user_id, tenant_id, created_at, expires_at, used_at, token_hash
		FROM user_tokens WHERE id = $1`, id,
	).Scan(&t.ID, &t.Purpose, &t.UserID, &tenantID, &t.CreatedAt, &t.ExpiresAt, &t.UsedAt, &hash)
	if err != nil {
		return nil, nil, translate(err, "token not found")
	}
	if tenantID != nil {
		t.TenantID = *tenantID
	}
	return t, hash, nil
}

// UseUserToken marks an unused, unexpired token used. The UPDATE takes the
// row lock, and a second caller re-checks used_at after the first commits.
func (s *Store) UseUserToken(ctx context.Context, id string, at time.Time) error {
	tag, err := s.db.Exec(ctx, `
		UPDATE user_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL AND expires_at > $2`, id, at)
	if err != nil {
		return translate(err, "token not found")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ECONFLICT, "the token is used, expired or unknown")
	}
	return nil
}

// DeleteUserTokens deletes the user's unused tokens of the purposes.
func (s *Store) DeleteUserTokens(ctx context.Context, userID string, purposes ...string) (int64, error) {
	tag, err := s.db.Exec(ctx, `
		DELETE FROM user_tokens WHERE user_id = $1 AND purpose = ANY($2) AND used_at IS NULL`, userID, purposes)
	if err != nil {
		return 0, translate(err, "user not found")
	}
	return tag.RowsAffected(), nil
}

// CleanupSessions deletes expired and idle sessions and expired tokens.
// The two deletes need not be atomic: each is complete on its own.
func (s *Store) CleanupSessions(ctx context.Context, at, idleBefore time.Time) (int64, error) {
	tag, err := s.db.Exec(ctx, `DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at < $2`, at, idleBefore)
	if err != nil {
		return 0, translate(err, "")
	}
	n := tag.RowsAffected()
	if tag, err = s.db.Exec(ctx, `DELETE FROM user_tokens WHERE expires_at <= $1`, at); err != nil {
		return n, translate(err, "")
	}
	return n + tag.RowsAffected(), nil
}

// execOne runs a statement that must affect exactly one row; none is
// ENOTFOUND with message notFound.
func (s *Store) execOne(ctx context.Context, notFound, sql string, args ...any) error {
	tag, err := s.db.Exec(ctx, sql, args...)
	if err != nil {
		return translate(err, notFound)
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ENOTFOUND, "%s", notFound)
	}
	return nil
}
