package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Store is the Postgres controlplane.Store. The zero value is not usable;
// call NewStore.
type Store struct {
	pool *pgxpool.Pool
	db   querier // the pool, or the transaction of a Store made by Tx
	tx   pgx.Tx  // nil outside a transaction
	// jobs inserts River jobs (EnqueueAccountPush); it runs none. The
	// workers live in a separate client, wired in cmd/.
	jobs *river.Client[pgx.Tx]
}

var _ controlplane.Store = (*Store)(nil)

// querier is what pgxpool.Pool and pgx.Tx have in common.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// NewStore returns a Store over pool. The caller owns the pool and closes it.
func NewStore(pool *pgxpool.Pool) *Store {
	// An insert-only client: no queues, no workers, so it starts nothing
	// and needs no Start or Stop.
	jobs, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	if err != nil {
		// Only an invalid configuration fails, and this one is fixed.
		panic("postgres: creating the River client: " + err.Error())
	}
	return &Store{pool: pool, db: pool, jobs: jobs}
}

// Tx runs fn with a Store bound to one transaction, committed when fn
// returns nil and rolled back otherwise. Inside a transaction, Tx reuses it:
// fn's error then rolls back the outer transaction when the outer fn returns
// it (there are no savepoints).
func (s *Store) Tx(ctx context.Context, fn func(controlplane.Store) error) error {
	if s.tx != nil {
		return fn(s)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		return fn(&Store{pool: s.pool, db: tx, tx: tx, jobs: s.jobs})
	})
	// fn's errors come back as they are; those of BEGIN and COMMIT are
	// the driver's.
	var pgErr *pgconn.PgError
	if controlplane.ErrorCode(err) == controlplane.EINTERNAL && errors.As(err, &pgErr) {
		return translate(err, "not found")
	}
	return err
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if s.tx != nil {
		_, err := s.tx.Exec(ctx, "SELECT 1")
		return translate(err, "")
	}
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: ping: %w", err)
	}
	return nil
}

// --- tenants, users, memberships ---

// CreateTenant inserts t and sets its ID, BillingStatus, CreatedAt and UpdatedAt.
func (s *Store) CreateTenant(ctx context.Context, t *controlplane.Tenant) error {
	err := s.db.QueryRow(ctx, `
		INSERT INTO tenants (name, plan) VALUES ($1, $2)
		RETURNING id, billing_status, created_at, updated_at`,
		t.Name, t.Plan,
	).Scan(&t.ID, &t.BillingStatus, &t.CreatedAt, &t.UpdatedAt)
	return translate(err, "tenant not found")
}

// FindTenantByID returns a tenant.
func (s *Store) FindTenantByID(ctx context.Context, id string) (*controlplane.Tenant, error) {
	t := &controlplane.Tenant{}
	err := s.db.QueryRow(ctx, `
		SELECT `+tenantColumns+` FROM tenants WHERE id = $1`, id,
	).Scan(tenantDest(t)...)
	if err != nil {
		return nil, translate(err, "tenant not found")
	}
	return t, nil
}

// CreateUser inserts u (its e-mail must be lower-case) and sets its ID and
// CreatedAt. passwordHash "" stores no password.
func (s *Store) CreateUser(ctx context.Context, u *controlplane.User, passwordHash string) error {
	var hash *string
	if passwordHash != "" {
		hash = &passwordHash
	}
	err := s.db.QueryRow(ctx, `
		INSERT INTO users (email, password_hash) VALUES ($1, $2)
		RETURNING id, created_at`,
		u.Email, hash,
	).Scan(&u.ID, &u.CreatedAt)
	return translate(err, "user not found")
}

// CreateMembership inserts m, accepted at once (a signup's or an
// operator's tenant creation; invitations use CreatePendingMembership),
// and sets its CreatedAt. A missing tenant or user is ENOTFOUND.
func (s *Store) CreateMembership(ctx context.Context, m *controlplane.Membership) error {
	err := s.db.QueryRow(ctx, `
		INSERT INTO memberships (tenant_id, user_id, role, accepted_at) VALUES ($1, $2, $3, now())
		RETURNING created_at`,
		m.TenantID, m.UserID, string(m.Role),
	).Scan(&m.CreatedAt)
	if isCode(err, codeForeignKeyViolation) || isCode(err, codeInvalidText) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "tenant or user not found")
	}
	return translate(err, "membership not found")
}

// FindOwnerMembershipByEmail returns the user's oldest accepted owner
// membership.
func (s *Store) FindOwnerMembershipByEmail(ctx context.Context, email string) (*controlplane.Membership, error) {
	m := &controlplane.Membership{}
	var role string
	err := s.db.QueryRow(ctx, `
		SELECT m.tenant_id, m.user_id, m.role, m.created_at
		FROM memberships m JOIN users u ON u.id = m.user_id
		WHERE u.email = $1 AND m.role = 'owner' AND m.accepted_at IS NOT NULL
		ORDER BY m.created_at, m.tenant_id
		LIMIT 1`, email,
	).Scan(&m.TenantID, &m.UserID, &role, &m.CreatedAt)
	m.Role = controlplane.Role(role)
	if err != nil {
		return nil, translate(err, "no tenant is owned by this e-mail address")
	}
	return m, nil
}

// --- helpers ---

// where builds a WHERE clause and its arguments; $1 is always the tenant.
type where struct {
	conds []string
	args  []any
}

func newWhere(tenantCol, tenantID string) *where {
	return &where{conds: []string{tenantCol + " = $1"}, args: []any{tenantID}}
}

// add appends a condition; each "?" in cond becomes the next placeholder,
// bound to the next of args.
func (w *where) add(cond string, args ...any) {
	var b strings.Builder
	for _, a := range args {
		i := strings.IndexByte(cond, '?')
		w.args = append(w.args, a)
		fmt.Fprintf(&b, "%s$%d", cond[:i], len(w.args))
		cond = cond[i+1:]
	}
	b.WriteString(cond)
	w.conds = append(w.conds, b.String())
}

func (w *where) String() string { return "WHERE " + strings.Join(w.conds, " AND ") }

// limit returns a LIMIT clause; n <= 0 means no limit.
func (w *where) limit(n int) string {
	if n <= 0 {
		return ""
	}
	w.args = append(w.args, n)
	return fmt.Sprintf(" LIMIT $%d", len(w.args))
}

// collect scans every row with scan; it returns an empty, non-nil slice for
// no rows.
func collect[T any](rows pgx.Rows, err error, scan func(pgx.Row) (T, error)) ([]T, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
