package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/fleetplane/fleetplane/controlplane"
)

// --- operator ---

// CreateOperator stores the installation's operator and sets its
// CreatedAt; there is one row at most, so a second is ECONFLICT.
func (s *Store) CreateOperator(ctx context.Context, op *controlplane.Operator) error {
	err := s.db.QueryRow(ctx, `
		INSERT INTO nats_operator (name, public_key, signing_keys, jwt, system_account_public_key, system_account_jwt, sealed)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		RETURNING created_at`,
		op.Name, op.PublicKey, nonNil(op.SigningKeys), op.JWT, op.SystemAccountPublicKey, op.SystemAccountJWT, op.Sealed,
	).Scan(&op.CreatedAt)
	return translate(err, "NATS operator not found")
}

// FindOperator returns the operator, ENOTFOUND before CreateOperator.
func (s *Store) FindOperator(ctx context.Context) (*controlplane.Operator, error) {
	op := &controlplane.Operator{}
	err := s.db.QueryRow(ctx, `
		SELECT name, public_key, signing_keys, jwt, system_account_public_key, system_account_jwt, sealed, created_at
		FROM nats_operator`,
	).Scan(&op.Name, &op.PublicKey, &op.SigningKeys, &op.JWT, &op.SystemAccountPublicKey, &op.SystemAccountJWT, &op.Sealed, &op.CreatedAt)
	if err != nil {
		return nil, translate(err, "NATS operator not found")
	}
	return op, nil
}

// --- accounts ---

// limitsJSON is natsauth.Limits as stored in nats_accounts.limits: the
// domain type has no JSON tags, and explicit snake_case keys keep the
// column readable and independent of Go field names. It converts to and
// from controlplane.AccountLimits (same fields).
type limitsJSON struct {
	Conn          int64 `json:"conn"`
	LeafNodeConn  int64 `json:"leaf_node_conn"`
	Subs          int64 `json:"subs"`
	Payload       int64 `json:"payload"`
	JetStreamDisk int64 `json:"jetstream_disk"`
	JetStreamMem  int64 `json:"jetstream_mem"`
	Streams       int64 `json:"streams"`
	Consumers     int64 `json:"consumers"`
}

const accountColumns = `tenant_id, name, public_key, vehicle_signing_key, grant_signing_key, service_signing_key,
	sealed, limits, revocations, version, jwt, pushed_version, pushed_at, created_at, updated_at`

func scanAccount(row pgx.Row) (*controlplane.Account, error) {
	a := &controlplane.Account{}
	var limits limitsJSON
	err := row.Scan(&a.TenantID, &a.Name, &a.PublicKey, &a.SigningKeys.Vehicle, &a.SigningKeys.Grant, &a.SigningKeys.Service,
		&a.Sealed, &limits, &a.Revocations, &a.Version, &a.JWT, &a.PushedVersion, &a.PushedAt, &a.CreatedAt, &a.UpdatedAt)
	if err != nil {
		return nil, err
	}
	a.Limits = controlplane.AccountLimits(limits)
	if a.Revocations == nil {
		a.Revocations = map[string]int64{}
	}
	return a, nil
}

func revocationsOf(a *controlplane.Account) map[string]int64 {
	if a.Revocations == nil {
		return map[string]int64{}
	}
	return a.Revocations
}

// CreateAccount inserts a tenant's account and sets its CreatedAt and
// UpdatedAt (and Revocations to an empty map when nil). A missing tenant is ENOTFOUND; a second account of a tenant
// is ECONFLICT.
func (s *Store) CreateAccount(ctx context.Context, a *controlplane.Account) error {
	err := s.db.QueryRow(ctx, `
		INSERT INTO nats_accounts (tenant_id, name, public_key, vehicle_signing_key, grant_signing_key, service_signing_key,
			sealed, limits, revocations, version, jwt, pushed_version, pushed_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
		RETURNING created_at, updated_at`,
		a.TenantID, a.Name, a.PublicKey, a.SigningKeys.Vehicle, a.SigningKeys.Grant, a.SigningKeys.Service,
		a.Sealed, limitsJSON(a.Limits), revocationsOf(a), a.Version, a.JWT, a.PushedVersion, a.PushedAt,
	).Scan(&a.CreatedAt, &a.UpdatedAt)
	if isCode(err, codeForeignKeyViolation) || isCode(err, codeInvalidText) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "tenant not found")
	} else if err != nil {
		return translate(err, "NATS account not found")
	}
	a.Revocations = revocationsOf(a)
	return nil
}

// FindAccount returns a tenant's account; forUpdate locks the row until the
// transaction ends, so that concurrent version changes queue up.
func (s *Store) FindAccount(ctx context.Context, tenantID string, forUpdate bool) (*controlplane.Account, error) {
	q := `SELECT ` + accountColumns + ` FROM nats_accounts WHERE tenant_id = $1`
	if forUpdate {
		q += ` FOR UPDATE`
	}
	a, err := scanAccount(s.db.QueryRow(ctx, q, tenantID))
	if err != nil {
		return nil, translate(err, "NATS account not found")
	}
	return a, nil
}

// UpdateAccount writes a's Limits, Revocations, Version and JWT and sets
// its UpdatedAt.
func (s *Store) UpdateAccount(ctx context.Context, a *controlplane.Account) error {
	err := s.db.QueryRow(ctx, `
		UPDATE nats_accounts SET limits = $2, revocations = $3, version = $4, jwt = $5, updated_at = now()
		WHERE tenant_id = $1
		RETURNING updated_at`,
		a.TenantID, limitsJSON(a.Limits), revocationsOf(a), a.Version, a.JWT,
	).Scan(&a.UpdatedAt)
	return translate(err, "NATS account not found")
}

// MarkAccountPushed raises the pushed version to version, never lowering
// it (pushes of different versions may finish out of order), and records
// at when it rises.
func (s *Store) MarkAccountPushed(ctx context.Context, tenantID string, version int64, at time.Time) error {
	tag, err := s.db.Exec(ctx, `
		UPDATE nats_accounts SET
			pushed_at = CASE WHEN $2 >= pushed_version THEN $3 ELSE pushed_at END,
			pushed_version = GREATEST(pushed_version, $2)
		WHERE tenant_id = $1`,
		tenantID, version, at)
	if err != nil {
		return translate(err, "NATS account not found")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ENOTFOUND, "NATS account not found")
	}
	return nil
}

// FindAccountsBehind lists accounts of every tenant whose hubs lag behind
// (pushed version < version), least recently changed first; limit <= 0
// means no limit. It is for the push sweeper, not for a tenant's request.
func (s *Store) FindAccountsBehind(ctx context.Context, limit int) ([]*controlplane.Account, error) {
	q := `SELECT ` + accountColumns + ` FROM nats_accounts WHERE pushed_version < version ORDER BY updated_at, tenant_id`
	var args []any
	if limit > 0 {
		q += ` LIMIT $1`
		args = append(args, limit)
	}
	rows, err := s.db.Query(ctx, q, args...)
	as, err := collect(rows, err, scanAccount)
	if err != nil {
		return nil, translate(err, "NATS account not found")
	}
	return as, nil
}

// EnqueueAccountPush inserts a River job for job, runnable at runAt (now
// when zero). Inside Tx it is inserted in the store's transaction: it
// exists if and only if the change it pushes is committed (an outbox).
func (s *Store) EnqueueAccountPush(ctx context.Context, job controlplane.AccountPushJob, runAt time.Time) error {
	opts := &river.InsertOpts{ScheduledAt: runAt, MaxAttempts: 25, Queue: river.QueueDefault}
	var err error
	if s.tx != nil {
		_, err = s.jobs.InsertTx(ctx, s.tx, job, opts)
	} else {
		_, err = s.jobs.Insert(ctx, job, opts)
	}
	return translate(err, "job not found")
}

// nonNil returns ss, or an empty slice for nil: pgx writes a nil slice as
// NULL, and the array columns are NOT NULL.
func nonNil[T any](ss []T) []T {
	if ss == nil {
		return []T{}
	}
	return ss
}
