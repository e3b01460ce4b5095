package postgres_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/pgtest"
	"github.com/fleetplane/fleetplane/internal/secret"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// MustStore returns a store over a fresh, migrated database, and its pool
// for statements the store does not offer.
func MustStore(tb testing.TB) (*postgres.Store, *pgxpool.Pool) {
	tb.Helper()
	pool := pgtest.NewPool(tb)
	return postgres.NewStore(pool), pool
}

func MustTenant(tb testing.TB, s controlplane.Store, name string) *controlplane.Tenant {
	tb.Helper()
	t := &controlplane.Tenant{Name: name, Plan: controlplane.PlanFree}
	if err := s.CreateTenant(context.Background(), t); err != nil {
		tb.Fatalf("CreateTenant(%q): %v", name, err)
	}
	return t
}

func MustFleet(tb testing.TB, s controlplane.Store, tenantID, slug string) *controlplane.Fleet {
	tb.Helper()
	f := &controlplane.Fleet{TenantID: tenantID, Slug: slug, Name: "Fleet " + slug, Environment: "prod", Region: "europe"}
	if err := s.CreateFleet(context.Background(), f); err != nil {
		tb.Fatalf("CreateFleet(%q): %v", slug, err)
	}
	return f
}

func MustVehicle(tb testing.TB, s controlplane.Store, f *controlplane.Fleet, vehicleID string, labels map[string]string) *controlplane.Vehicle {
	tb.Helper()
	v := &controlplane.Vehicle{TenantID: f.TenantID, FleetID: f.ID, VehicleID: vehicleID, Name: "Vehicle " + vehicleID,
		Labels: labels, Status: controlplane.VehiclePending}
	if err := s.CreateVehicle(context.Background(), v); err != nil {
		tb.Fatalf("CreateVehicle(%q): %v", vehicleID, err)
	}
	return v
}

func MustAPIKey(tb testing.TB, s controlplane.Store, tenantID string, role controlplane.Role) *controlplane.APIKey {
	tb.Helper()
	id, _, hash := secret.New(secret.APIKeyPrefix)
	k := &controlplane.APIKey{ID: id, TenantID: tenantID, Name: "key " + id, Role: role, CreatedBy: "system:test"}
	if err := s.CreateAPIKey(context.Background(), k, hash); err != nil {
		tb.Fatalf("CreateAPIKey: %v", err)
	}
	return k
}

func MustAuditEvent(tb testing.TB, s controlplane.Store, tenantID, action, targetID string) *controlplane.AuditEvent {
	tb.Helper()
	e := &controlplane.AuditEvent{TenantID: tenantID, ActorType: "system", ActorID: "test", Action: action,
		TargetType: "fleet", TargetID: targetID, SourceIP: "192.0.2.1", RequestID: "req-1",
		Details: map[string]any{"n": float64(1)}}
	if err := s.CreateAuditEvent(context.Background(), e); err != nil {
		tb.Fatalf("CreateAuditEvent(%q): %v", action, err)
	}
	return e
}

func MustExec(tb testing.TB, pool *pgxpool.Pool, sql string, args ...any) {
	tb.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
}

// WantCode fails tb unless err carries code (and is not nil when code is set).
func WantCode(tb testing.TB, err error, code string) {
	tb.Helper()
	if got := controlplane.ErrorCode(err); got != code {
		tb.Fatalf("error code = %q, want %q (err: %v)", got, code, err)
	}
}

func hashOf(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func ptr[T any](v T) *T { return &v }

// sameTime compares times at the microsecond resolution Postgres keeps.
func sameTime(a, b time.Time) bool {
	return a.Truncate(time.Microsecond).Equal(b.Truncate(time.Microsecond))
}

func ids[T any](items []T, id func(T) string) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = id(it)
	}
	return out
}

func vehicleIDs(vs []*controlplane.Vehicle) []string {
	return ids(vs, func(v *controlplane.Vehicle) string { return v.VehicleID })
}

func eq(a, b []string) bool { return fmt.Sprint(a) == fmt.Sprint(b) && len(a) == len(b) }
