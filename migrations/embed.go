// Package migrations holds Fleetplane's Postgres schema as golang-migrate
// files (NNNNNN_verb_noun.up.sql / .down.sql) embedded into the binary.
//
// The files are append-only: a committed migration is never edited or
// reordered; a schema change is a new pair of files with the next number.
// The package imports only the standard library; internal/pgmigrate applies
// the files.
package migrations

import "embed"

// FS holds every *.sql migration file, at the root of the file system.
//
//go:embed *.sql
var FS embed.FS
