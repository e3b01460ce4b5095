package pgmigrate_test

import (
	"strings"
	"testing"

	"github.com/fleetplane/fleetplane/internal/pgmigrate"
)

func TestDriverURL(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"postgres://u:p@h:5432/db?sslmode=disable", "pgx5://u:p@h:5432/db?sslmode=disable", ""},
		{"postgresql://h/db", "pgx5://h/db", ""},
		{"pgx5://h/db", "pgx5://h/db", ""},
		{"host=h dbname=db", "", "postgres://"},
		{"mysql://u:hunter2@h/db", "", "u:xxxxx@h"},
	} {
		got, err := pgmigrate.DriverURL(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "hunter2") {
				t.Errorf("DriverURL(%q) error = %v, want one containing %q and no password", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("DriverURL(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
