// Package postgres implements controlplane.Store on PostgreSQL with pgx, and
// exposes the schema migrations and connection-pool metrics to cmd/.
//
// Every tenant-scoped query filters by tenant_id, so a row of another tenant
// looks exactly like a missing one. Driver errors are translated into coded
// controlplane errors here, once: unique and in-use violations are
// ECONFLICT, CHECK violations EINVALID, missing rows ENOTFOUND.
//
// It may import controlplane, internal/pgmigrate, migrations, pgx, River
// (to insert jobs in the store's transactions) and the Prometheus client; it
// knows nothing of the other adapters (api, portal, hubs, billing).
package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/pgmigrate"
)

// Open connects a pool to databaseURL and pings the database. maxConns <= 0
// keeps pgx's default (the larger of 4 and the number of CPUs) or the
// pool_max_conns given in the URL.
func Open(ctx context.Context, databaseURL string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		// pgx's parse errors never echo the password.
		return nil, fmt.Errorf("postgres: parsing the database URL: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: creating the connection pool: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: connecting to %s:%d/%s: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
	}
	return pool, nil
}

// MigrateUp applies every pending schema migration to the database at
// databaseURL (a postgres:// URL).
func MigrateUp(databaseURL string) error { return pgmigrate.Up(databaseURL) }

// MigrateDown reverts steps migrations; steps <= 0 reverts all of them.
func MigrateDown(databaseURL string, steps int) error { return pgmigrate.Down(databaseURL, steps) }

// MigrateVersion returns the schema version (0 before the first migration)
// and whether a failed migration left it dirty.
func MigrateVersion(databaseURL string) (version uint, dirty bool, err error) {
	return pgmigrate.Version(databaseURL)
}

// SQLSTATE codes the store translates.
const (
	codeUniqueViolation     = "23505"
	codeForeignKeyViolation = "23503"
	codeCheckViolation      = "23514"
	codeNotNullViolation    = "23502"
	codeInvalidText         = "22P02" // e.g. a malformed UUID
)

// conflictMessages words unique violations per constraint.
var conflictMessages = map[string]string{
	"users_email_key":                   "an account with this e-mail address already exists",
	"tenants_stripe_customer_id_key":    "this billing customer belongs to another tenant",
	"memberships_pkey":                  "the user is already a member of this tenant",
	"api_keys_pkey":                     "an API key with this ID already exists",
	"fleets_tenant_id_slug_key":         "a fleet with this slug already exists",
	"vehicles_tenant_id_vehicle_id_key": "a vehicle with this ID already exists in this tenant",
	"idempotency_keys_pkey":             "this Idempotency-Key is already in use",
	"nats_operator_pkey":                "the NATS operator already exists",
	"nats_accounts_pkey":                "the tenant already has a NATS account",
	"nats_accounts_public_key_key":      "a NATS account with this public key already exists",
	"enrollment_tokens_pkey":            "an enrollment token with this ID already exists",
	"grants_pkey":                       "a grant with this ID already exists",
	"agent_nonces_pkey":                 "this nonce is already in use",
	// A user key is bound to one vehicle or grant, ever (000004).
	"vehicles_user_public_key_key": "this NATS user key is already in use",
	"grants_user_public_key_key":   "this NATS user key is already in use",
	"nats_user_keys_pkey":          "this NATS user key is already in use",
}

// translate turns a driver error into a coded one. notFound is the message
// for a missing row ("fleet not found"), also used when an ID is malformed:
// such a row cannot exist either. Errors it does not know are wrapped, so
// that they surface as internal errors with their cause logged.
func translate(err error, notFound string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "%s", notFound)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return fmt.Errorf("postgres: %w", err)
	}
	switch pgErr.Code {
	case codeUniqueViolation:
		if msg, ok := conflictMessages[pgErr.ConstraintName]; ok {
			return controlplane.Errorf(controlplane.ECONFLICT, "%s", msg)
		}
		return controlplane.Errorf(controlplane.ECONFLICT, "already exists (constraint %s)", pgErr.ConstraintName)
	case codeForeignKeyViolation:
		return controlplane.Errorf(controlplane.ECONFLICT, "still in use (constraint %s)", pgErr.ConstraintName)
	case codeCheckViolation:
		return controlplane.Errorf(controlplane.EINVALID, "%s: invalid value (violates constraint %s)", pgErr.TableName, pgErr.ConstraintName)
	case codeNotNullViolation:
		return controlplane.Errorf(controlplane.EINVALID, "%s.%s: is required", pgErr.TableName, pgErr.ColumnName)
	case codeInvalidText:
		return controlplane.Errorf(controlplane.ENOTFOUND, "%s", notFound)
	}
	return fmt.Errorf("postgres: %w", err)
}

// isCode reports whether err is a Postgres error with SQLSTATE code.
func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}
