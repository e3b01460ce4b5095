package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

const apiKeyColumns = `id, tenant_id, name, role, created_by, created_at, expires_at, last_used_at, revoked_at`

func scanAPIKey(row pgx.Row, extra ...any) (*controlplane.APIKey, error) {
	k := &controlplane.APIKey{}
	var role string
	dest := append([]any{&k.ID, &k.TenantID, &k.Name, &role, &k.CreatedBy, &k.CreatedAt,
		&k.ExpiresAt, &k.LastUsedAt, &k.RevokedAt}, extra...)
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	k.Role = controlplane.Role(role)
	return k, nil
}

// CreateAPIKey inserts k with the hash of its secret and sets its CreatedAt.
func (s *Store) CreateAPIKey(ctx context.Context, k *controlplane.APIKey, hash []byte) error {
	err := s.db.QueryRow(ctx, `
		INSERT INTO api_keys (id, tenant_id, name, role, secret_hash, created_by, expires_at, last_used_at, revoked_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		RETURNING created_at`,
		k.ID, k.TenantID, k.Name, string(k.Role), hash, k.CreatedBy, k.ExpiresAt, k.LastUsedAt, k.RevokedAt,
	).Scan(&k.CreatedAt)
	if isCode(err, codeForeignKeyViolation) || isCode(err, codeInvalidText) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "tenant not found")
	}
	return translate(err, "API key not found")
}

// FindAPIKeyForAuth returns a key of any tenant and its secret hash, for
// authentication only.
func (s *Store) FindAPIKeyForAuth(ctx context.Context, id string) (*controlplane.APIKey, []byte, error) {
	var hash []byte
	k, err := scanAPIKey(s.db.QueryRow(ctx, `SELECT `+apiKeyColumns+`, secret_hash FROM api_keys WHERE id = $1`, id), &hash)
	if err != nil {
		return nil, nil, translate(err, "API key not found")
	}
	return k, hash, nil
}

// TouchAPIKey sets last_used_at to at, unless it was set less than a minute
// before at: authentication happens on every request, a write per request
// would not.
func (s *Store) TouchAPIKey(ctx context.Context, id string, at time.Time) error {
	_, err := s.db.Exec(ctx, `
		UPDATE api_keys SET last_used_at = $2
		WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2::timestamptz - interval '1 minute')`,
		id, at)
	return translate(err, "API key not found")
}

// FindAPIKeyByID returns one of the tenant's keys, revoked or not.
func (s *Store) FindAPIKeyByID(ctx context.Context, tenantID, id string) (*controlplane.APIKey, error) {
	k, err := scanAPIKey(s.db.QueryRow(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE tenant_id = $1 AND id = $2`, tenantID, id))
	if err != nil {
		return nil, translate(err, "API key not found")
	}
	return k, nil
}

// FindAPIKeys lists the tenant's keys by ID.
func (s *Store) FindAPIKeys(ctx context.Context, tenantID string, f controlplane.APIKeyFilter) ([]*controlplane.APIKey, error) {
	w := newWhere("tenant_id", tenantID)
	if !f.IncludeRevoked {
		w.add("revoked_at IS NULL")
	}
	if f.After != "" {
		w.add("id > ?", f.After)
	}
	q := `SELECT ` + apiKeyColumns + ` FROM api_keys ` + w.String() + ` ORDER BY id` + w.limit(f.Limit)
	rows, err := s.db.Query(ctx, q, w.args...)
	keys, err := collect(rows, err, func(r pgx.Row) (*controlplane.APIKey, error) { return scanAPIKey(r) })
	if err != nil {
		return nil, translate(err, "tenant not found")
	}
	return keys, nil
}

// RevokeAPIKey sets revoked_at; a missing or already revoked key is ENOTFOUND.
func (s *Store) RevokeAPIKey(ctx context.Context, tenantID, id string, at time.Time) error {
	tag, err := s.db.Exec(ctx, `
		UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL`,
		tenantID, id, at)
	if err != nil {
		return translate(err, "API key not found")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ENOTFOUND, "API key not found")
	}
	return nil
}
