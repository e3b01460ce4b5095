package postgres

import (
	"context"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// --- enrollment tokens ---

// tokenColumns reads a token row aliased t joined with its fleet f.
// Source CIDRs come back as their canonical text.
const tokenColumns = `t.id, t.tenant_id, t.fleet_id, f.slug, t.description, t.expires_at, t.max_uses, t.uses,
	t.source_cidrs::text[], coalesce(t.vehicle_id, ''), t.created_by, t.created_at, t.last_used_at, t.revoked_at`

// tokenJoin joins a token to its fleet, by the key of the foreign key.
const tokenJoin = ` JOIN fleets f ON f.tenant_id = t.tenant_id AND f.id = t.fleet_id `

func scanToken(row pgx.Row, extra ...any) (*controlplane.EnrollmentToken, error) {
	t := &controlplane.EnrollmentToken{}
	dest := append([]any{&t.ID, &t.TenantID, &t.FleetID, &t.FleetSlug, &t.Description, &t.ExpiresAt, &t.MaxUses, &t.Uses,
		&t.SourceCIDRs, &t.VehicleID, &t.CreatedBy, &t.CreatedAt, &t.LastUsedAt, &t.RevokedAt}, extra...)
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	return t, nil
}

// CreateEnrollmentToken inserts t with the hash of its secret and sets its
// FleetSlug and CreatedAt; MaxUses 0 is 1. A fleet that is missing or
// belongs to another tenant is ENOTFOUND; a CIDR that is not a canonical
// prefix is EINVALID.
func (s *Store) CreateEnrollmentToken(ctx context.Context, t *controlplane.EnrollmentToken, hash []byte) error {
	cidrs, err := canonicalCIDRs(t.SourceCIDRs)
	if err != nil {
		return err
	}
	maxUses := t.MaxUses
	if maxUses == 0 {
		maxUses = 1
	}
	err = s.db.QueryRow(ctx, `
		WITH t AS (
			INSERT INTO enrollment_tokens (id, tenant_id, fleet_id, description, secret_hash, expires_at, max_uses, uses,
				source_cidrs, vehicle_id, created_by, last_used_at, revoked_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text[]::cidr[], nullif($10, ''), $11, $12, $13)
			RETURNING tenant_id, fleet_id, created_at
		)
		SELECT f.slug, t.created_at FROM t`+tokenJoin,
		t.ID, t.TenantID, t.FleetID, t.Description, hash, t.ExpiresAt, maxUses, t.Uses,
		cidrs, t.VehicleID, t.CreatedBy, t.LastUsedAt, t.RevokedAt,
	).Scan(&t.FleetSlug, &t.CreatedAt)
	if isCode(err, codeForeignKeyViolation) || isCode(err, codeInvalidText) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "fleet not found")
	} else if err != nil {
		return translate(err, "enrollment token not found")
	}
	t.MaxUses, t.SourceCIDRs = maxUses, cidrs
	return nil
}

// FindEnrollmentTokenByID returns one of the tenant's tokens, revoked,
// expired or used up or not.
func (s *Store) FindEnrollmentTokenByID(ctx context.Context, tenantID, id string) (*controlplane.EnrollmentToken, error) {
	t, err := scanToken(s.db.QueryRow(ctx, `SELECT `+tokenColumns+` FROM enrollment_tokens t`+tokenJoin+`
		WHERE t.tenant_id = $1 AND t.id = $2`, tenantID, id))
	if err != nil {
		return nil, translate(err, "enrollment token not found")
	}
	return t, nil
}

// FindEnrollmentTokens lists a fleet's tokens newest first: by created_at,
// then ID, both descending. f.After is the ID of the last token of the
// previous page; the page continues below that token's (created_at, id),
// so a cursor is still just an ID and pages neither skip nor repeat tokens
// created meanwhile. An After that names no token of the tenant gives an
// empty page. Unless f.IncludeRevoked, revoked, expired and used-up tokens
// are left out.
func (s *Store) FindEnrollmentTokens(ctx context.Context, tenantID string, f controlplane.EnrollmentTokenFilter) ([]*controlplane.EnrollmentToken, error) {
	q, args := findEnrollmentTokensQuery(tenantID, f)
	rows, err := s.db.Query(ctx, q, args...)
	ts, err := collect(rows, err, func(r pgx.Row) (*controlplane.EnrollmentToken, error) { return scanToken(r) })
	if err != nil {
		return nil, translate(err, "tenant not found")
	}
	return ts, nil
}

// findEnrollmentTokensQuery builds the keyset query of FindEnrollmentTokens,
// served by the index on (tenant_id, fleet_id, created_at, id) read
// backwards.
func findEnrollmentTokensQuery(tenantID string, f controlplane.EnrollmentTokenFilter) (string, []any) {
	w := newWhere("t.tenant_id", tenantID)
	w.add("t.fleet_id = ?", f.FleetID)
	if !f.IncludeRevoked {
		w.add("t.revoked_at IS NULL AND t.expires_at > now() AND t.uses < t.max_uses")
	}
	if f.After != "" {
		w.add("(t.created_at, t.id) < (SELECT c.created_at, c.id FROM enrollment_tokens c WHERE c.tenant_id = $1 AND c.id = ?)", f.After)
	}
	q := `SELECT ` + tokenColumns + ` FROM enrollment_tokens t` + tokenJoin + w.String() +
		` ORDER BY t.created_at DESC, t.id DESC` + w.limit(f.Limit)
	return q, w.args
}

// RevokeEnrollmentToken sets revoked_at; a missing or already revoked token
// is ENOTFOUND.
func (s *Store) RevokeEnrollmentToken(ctx context.Context, tenantID, id string, at time.Time) error {
	tag, err := s.db.Exec(ctx, `
		UPDATE enrollment_tokens SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL`,
		tenantID, id, at)
	if err != nil {
		return translate(err, "enrollment token not found")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ENOTFOUND, "enrollment token not found")
	}
	return nil
}

// FindEnrollmentForAuth finds a token by its globally unique ID (not scoped
// by tenant: the caller authenticates it by its secret) with its secret
// hash, its fleet (without the vehicle count) and its tenant's account, in
// one query: /v1/enroll is the hot public path.
func (s *Store) FindEnrollmentForAuth(ctx context.Context, id string) (*controlplane.EnrollmentAuth, error) {
	ea := &controlplane.EnrollmentAuth{Fleet: &controlplane.Fleet{}, Account: &controlplane.Account{}}
	f, a := ea.Fleet, ea.Account
	var limits limitsJSON
	t, err := scanToken(s.db.QueryRow(ctx, `SELECT `+tokenColumns+`, t.secret_hash,
			f.id, f.tenant_id, f.slug, f.name, f.description, f.environment, f.region, f.created_at, f.updated_at,
			a.tenant_id, a.name, a.public_key, a.vehicle_signing_key, a.grant_signing_key, a.service_signing_key,
			a.sealed, a.limits, a.revocations, a.version, a.jwt, a.pushed_version, a.pushed_at, a.created_at, a.updated_at
		FROM enrollment_tokens t`+tokenJoin+`
		JOIN nats_accounts a ON a.tenant_id = t.tenant_id
		WHERE t.id = $1`, id),
		&ea.Hash,
		&f.ID, &f.TenantID, &f.Slug, &f.Name, &f.Description, &f.Environment, &f.Region, &f.CreatedAt, &f.UpdatedAt,
		&a.TenantID, &a.Name, &a.PublicKey, &a.SigningKeys.Vehicle, &a.SigningKeys.Grant, &a.SigningKeys.Service,
		&a.Sealed, &limits, &a.Revocations, &a.Version, &a.JWT, &a.PushedVersion, &a.PushedAt, &a.CreatedAt, &a.UpdatedAt)
	if err != nil {
		return nil, translate(err, "enrollment token not found")
	}
	a.Limits = controlplane.AccountLimits(limits)
	a.Revocations = revocationsOf(a)
	ea.Token = t
	return ea, nil
}

// UseEnrollmentToken counts one use of a token that is unrevoked,
// unexpired at `at` and has uses left, and answers ECONFLICT otherwise (or
// when there is no such token: the caller authenticated it already).
//
// It is one UPDATE whose WHERE holds the conditions: concurrent callers
// queue on the row lock, and each re-checks the WHERE against the row the
// previous one committed (READ COMMITTED re-evaluates it), so a token with
// n uses left is used at most n times however many enroll at once.
func (s *Store) UseEnrollmentToken(ctx context.Context, id string, at time.Time) error {
	tag, err := s.db.Exec(ctx, `
		UPDATE enrollment_tokens SET uses = uses + 1, last_used_at = $2
		WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2 AND uses < max_uses`,
		id, at)
	if err != nil {
		return translate(err, "enrollment token not found")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ECONFLICT, "the enrollment token is revoked, expired or used up")
	}
	return nil
}

// canonicalCIDRs checks that every entry is a canonical prefix (no host
// bits, as Postgres's cidr requires) and returns them as Prefix.String
// writes them, which is how cidr::text reads them back. nil becomes empty.
func canonicalCIDRs(in []string) ([]string, error) {
	out := make([]string, 0, len(in))
	for _, s := range in {
		p, err := netip.ParsePrefix(s)
		if err != nil || p != p.Masked() {
			return nil, controlplane.Errorf(controlplane.EINVALID, "source CIDR %q is not a network prefix like 192.0.2.0/24", s)
		}
		out = append(out, p.String())
	}
	return out, nil
}

// --- vehicle credentials ---

// SetVehicleEnrollment stores e on one of the tenant's vehicles and returns
// the vehicle. The user key, credentials expiry and status are always
// written ("" clears the key, a zero expiry clears it, an empty status
// leaves it); EnrolledAt, Hostname, Arch and AgentVersion only when set. A
// user key bound to another vehicle or grant is ECONFLICT.
func (s *Store) SetVehicleEnrollment(ctx context.Context, tenantID string, id int64, e controlplane.VehicleEnrollment) (*controlplane.Vehicle, error) {
	var expires *time.Time
	if !e.CredentialsExpireAt.IsZero() {
		expires = &e.CredentialsExpireAt
	}
	v, err := scanVehicle(s.db.QueryRow(ctx, `
		WITH v AS (
			UPDATE vehicles SET
				user_public_key = nullif($3, ''),
				credentials_expire_at = $4,
				status = coalesce(nullif($5, ''), status),
				enrolled_at = coalesce($6, enrolled_at),
				hostname = coalesce($7, hostname),
				arch = coalesce($8, arch),
				agent_version = coalesce($9, agent_version),
				updated_at = now()
			WHERE tenant_id = $1 AND id = $2
			RETURNING *
		)
		SELECT `+vehicleColumns+` FROM v`+vehicleJoin,
		tenantID, id, e.UserPublicKey, expires, string(e.Status), e.EnrolledAt, e.Hostname, e.Arch, e.AgentVersion))
	if err != nil {
		return nil, translate(err, "vehicle not found")
	}
	return v, nil
}

// FindVehicleByUserKey returns the vehicle, of any tenant, that holds user
// key userPub: for /v1/agent/renew, which that key authenticates.
func (s *Store) FindVehicleByUserKey(ctx context.Context, userPub string) (*controlplane.Vehicle, error) {
	v, err := scanVehicle(s.db.QueryRow(ctx, `SELECT `+vehicleColumns+` FROM vehicles v`+vehicleJoin+`
		WHERE v.user_public_key = $1`, userPub))
	if err != nil {
		return nil, translate(err, "vehicle not found")
	}
	return v, nil
}

// --- agent nonces ---

// CreateAgentNonce stores a single-use renewal challenge for userPub.
func (s *Store) CreateAgentNonce(ctx context.Context, userPub, nonce string, expires time.Time) error {
	_, err := s.db.Exec(ctx, `INSERT INTO agent_nonces (nonce, user_public_key, expires_at) VALUES ($1, $2, $3)`,
		nonce, userPub, expires)
	return translate(err, "nonce not found")
}

// ConsumeAgentNonce deletes userPub's nonce if it has not expired at `at`;
// a missing, used, expired or someone else's nonce is ENOTFOUND. The
// DELETE makes it single-use: of two concurrent calls, one deletes it.
func (s *Store) ConsumeAgentNonce(ctx context.Context, userPub, nonce string, at time.Time) error {
	tag, err := s.db.Exec(ctx, `
		DELETE FROM agent_nonces WHERE nonce = $1 AND user_public_key = $2 AND expires_at > $3`,
		nonce, userPub, at)
	if err != nil {
		return translate(err, "nonce not found")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ENOTFOUND, "nonce not found or expired")
	}
	return nil
}

// DeleteExpiredAgentNonces removes the nonces that expired before `before`
// and returns how many.
func (s *Store) DeleteExpiredAgentNonces(ctx context.Context, before time.Time) (int64, error) {
	tag, err := s.db.Exec(ctx, `DELETE FROM agent_nonces WHERE expires_at < $1`, before)
	if err != nil {
		return 0, translate(err, "nonce not found")
	}
	return tag.RowsAffected(), nil
}
