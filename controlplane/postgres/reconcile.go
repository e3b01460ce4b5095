package postgres

import (
	"context"
	"fmt"

	"github.com/fleetplane/fleetplane/controlplane"
)

// --- what the reconciler reads (controlplane/reconcile.go) ---

// FindAccounts lists the accounts of every tenant with a tenant ID greater
// than after ("" = from the start), by tenant ID (the primary key: a
// keyset page is one index range), at most limit (1-1000). It is for the
// reconciler, not for a tenant's request.
func (s *Store) FindAccounts(ctx context.Context, after string, limit int) ([]*controlplane.Account, error) {
	if limit < 1 || limit > 1000 {
		return nil, controlplane.Errorf(controlplane.EINVALID, "limit: must be between 1 and 1000")
	}
	q := `SELECT ` + accountColumns + ` FROM nats_accounts`
	args := []any{limit}
	if after != "" {
		q += ` WHERE tenant_id > $2`
		args = append(args, after)
	}
	q += ` ORDER BY tenant_id LIMIT $1`
	rows, err := s.db.Query(ctx, q, args...)
	as, err := collect(rows, err, scanAccount)
	if isCode(err, codeInvalidText) {
		return nil, controlplane.Errorf(controlplane.EINVALID, "after: must be a tenant ID")
	} else if err != nil {
		return nil, translate(err, "NATS account not found")
	}
	return as, nil
}

// CountAccountsBehind counts accounts whose pushed version is below their
// version (an index-only count of the partial nats_accounts_behind_idx).
func (s *Store) CountAccountsBehind(ctx context.Context) (int, error) {
	var n int
	if err := s.db.QueryRow(ctx, `SELECT count(*) FROM nats_accounts WHERE pushed_version < version`).Scan(&n); err != nil {
		return 0, fmt.Errorf("postgres: counting accounts behind: %w", err)
	}
	return n, nil
}

// FindPendingRevocations lists a tenant's pending revocations, oldest first.
func (s *Store) FindPendingRevocations(ctx context.Context, tenantID string) ([]*controlplane.Revocation, error) {
	rows, err := s.db.Query(ctx, `SELECT `+revocationColumns+` FROM revocations
		WHERE tenant_id = $1 AND status = 'pending' ORDER BY id`, tenantID)
	rs, err := collect(rows, err, scanRevocation)
	if isCode(err, codeInvalidText) {
		return []*controlplane.Revocation{}, nil // no such tenant
	} else if err != nil {
		return nil, translate(err, "revocation not found")
	}
	return rs, nil
}
