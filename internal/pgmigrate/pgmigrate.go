// Package pgmigrate applies the embedded schema migrations (package
// migrations) to a Postgres database with golang-migrate. It is the one
// place that knows golang-migrate: controlplane/postgres exposes it to cmd/,
// and internal/pgtest uses it to build its template database.
//
// It imports the standard library, migrations and golang-migrate (iofs
// source, pgx/v5 database driver) only.
package pgmigrate

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/golang-migrate/migrate/v4"
	_ "github.com/golang-migrate/migrate/v4/database/pgx/v5" // registers pgx5://
	"github.com/golang-migrate/migrate/v4/source/iofs"

	"github.com/fleetplane/fleetplane/migrations"
)

// Up applies every migration that has not been applied yet.
func Up(databaseURL string) error {
	return with(databaseURL, "up", func(m *migrate.Migrate) error { return m.Up() })
}

// Down reverts steps migrations; steps <= 0, or more steps than were
// applied, reverts all of them.
func Down(databaseURL string, steps int) error {
	return with(databaseURL, "down", func(m *migrate.Migrate) error {
		if steps <= 0 {
			return m.Down()
		}
		err := m.Steps(-steps)
		if errors.As(err, new(migrate.ErrShortLimit)) {
			return nil // every applied migration was reverted
		}
		return err
	})
}

// Version returns the version of the last applied migration (0 when none)
// and whether a failed migration left the schema dirty.
func Version(databaseURL string) (version uint, dirty bool, err error) {
	err = with(databaseURL, "version", func(m *migrate.Migrate) error {
		version, dirty, err = m.Version()
		if errors.Is(err, migrate.ErrNilVersion) {
			version, dirty, err = 0, false, nil
		}
		return err
	})
	return version, dirty, err
}

func with(databaseURL, op string, fn func(*migrate.Migrate) error) (err error) {
	u, err := DriverURL(databaseURL)
	if err != nil {
		return err
	}
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		return fmt.Errorf("migrate %s: reading embedded migrations: %w", op, err)
	}
	m, err := migrate.NewWithSourceInstance("iofs", src, u)
	if err != nil {
		return fmt.Errorf("migrate %s: connecting: %w", op, err)
	}
	defer func() {
		srcErr, dbErr := m.Close()
		if err == nil {
			err = errors.Join(srcErr, dbErr)
		}
	}()
	if err := fn(m); err != nil && !errors.Is(err, migrate.ErrNoChange) {
		var dirty migrate.ErrDirty
		if errors.As(err, &dirty) {
			return fmt.Errorf("migrate %s: migration %d failed earlier and left the schema dirty; fix the database by hand, then force the version", op, dirty.Version)
		}
		return fmt.Errorf("migrate %s: %w", op, err)
	}
	return nil
}

// DriverURL turns a postgres:// or postgresql:// URL into the pgx5:// URL
// that golang-migrate's pgx/v5 driver registers.
func DriverURL(databaseURL string) (string, error) {
	u, err := url.Parse(databaseURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql" && u.Scheme != "pgx5") {
		return "", fmt.Errorf("migrate: database URL must look like postgres://user@host:port/dbname, got %s", redact(databaseURL))
	}
	u.Scheme = "pgx5"
	return u.String(), nil
}

// redact hides a password in a URL for error messages.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "a malformed URL"
	}
	return u.Redacted()
}
