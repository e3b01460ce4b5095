package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/fleetplane/fleetplane/controlplane/postgres"
)

const migrateUsage = `usage: fleetplane migrate up|down|version [flags]

  up        apply all pending migrations
  down      roll back one migration (--steps N for more, --all for every one)
  version   print the schema version and whether it is dirty
`

func runMigrate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, migrateUsage)
		return &usageError{"migrate: missing up, down or version"}
	}
	verb := args[0]
	fs := flag.NewFlagSet("fleetplane migrate "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	steps := 1
	all := false
	if verb == "down" {
		fs.IntVar(&steps, "steps", 1, "number of migrations to roll back")
		fs.BoolVar(&all, "all", false, "roll back every migration (drops all data)")
	}
	cfg := defaultConfig()
	if err := loadConfig(fs, args[1:], getenv, &cfg); err != nil {
		return err
	}
	if cfg.DatabaseURL == "" {
		return &usageError{"no database: set --database-url, FLEETPLANE_DATABASE_URL(_FILE) or DATABASE_URL"}
	}
	switch verb {
	case "up":
		if err := postgres.MigrateUp(cfg.DatabaseURL); err != nil {
			return fmt.Errorf("migrate up: %w", err)
		}
	case "down":
		if all {
			steps = 0
		} else if steps < 1 {
			return &usageError{"migrate down: --steps must be at least 1 (or use --all)"}
		}
		if err := postgres.MigrateDown(cfg.DatabaseURL, steps); err != nil {
			return fmt.Errorf("migrate down: %w", err)
		}
	case "version":
	default:
		fmt.Fprint(stderr, migrateUsage)
		return &usageError{fmt.Sprintf("migrate: unknown verb %q", verb)}
	}
	v, dirty, err := postgres.MigrateVersion(cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("migrate version: %w", err)
	}
	fmt.Fprintf(stdout, "schema version %d", v)
	if dirty {
		fmt.Fprint(stdout, " (dirty: a migration failed half-way; fix the database, then force the version)")
	}
	fmt.Fprintln(stdout)
	return nil
}
