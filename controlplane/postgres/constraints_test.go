package postgres_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fleetplane/fleetplane/controlplane"
)

// TestConstraints writes rows straight into the tables, past the store and
// the service, and checks that the schema itself refuses what the domain
// forbids, with the constraint that says why. The identifier rules must
// agree with controlplane/ident.go: each value is also run through it.
func TestConstraints(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "constraints")
	other := MustTenant(t, s, "other")
	f := MustFleet(t, s, tn.ID, "f")
	otherFleet := MustFleet(t, s, other.ID, "theirs")

	insertFleet := `INSERT INTO fleets (tenant_id, slug, name, environment, region) VALUES ($1, $2, 'n', $3, $4)`
	insertVehicle := `INSERT INTO vehicles (tenant_id, fleet_id, vehicle_id, name, labels, status) VALUES ($1, $2, $3, 'n', $4::jsonb, $5)`
	long := func(n int, c string) string { return strings.Repeat(c, n) }
	insertToken := `INSERT INTO enrollment_tokens (id, tenant_id, fleet_id, secret_hash, expires_at, max_uses, uses, vehicle_id, created_by)
		VALUES ($1, $2, $3, $4, now() + interval '1 hour', $5, $6, $7, 's')`
	setVehicleKey := `UPDATE vehicles SET user_public_key = $1 WHERE tenant_id = $2 AND vehicle_id = $3`
	insertGrant := `INSERT INTO grants (id, tenant_id, user_public_key, expires_at, region, created_by) VALUES ($1, $2, $3, now(), 'eu', 's')`
	insertOperator := `INSERT INTO nats_operator (id, name, public_key, jwt, system_account_public_key, system_account_jwt, sealed)
		VALUES ($1, 'op', $2, 'j', $3, 'j', '\x01')`
	insertAccount := `INSERT INTO nats_accounts (tenant_id, name, public_key, vehicle_signing_key, grant_signing_key, service_signing_key,
		sealed, limits, version, jwt, pushed_version) VALUES ($1, 'a', $2, $3, $3, $3, '\x01', '{}', $4, 'j', $5)`
	insertRevocation := `INSERT INTO revocations (tenant_id, kind, target_id, user_public_key, account_version, status, completed_at)
		VALUES ($1, $2, 'x', $3, 1, $4, $5)`
	vehicleKey, grantKey := FakeKey('U'), FakeKey('U')

	for _, tc := range []struct {
		name       string
		sql        string
		args       []any
		valid      func(string) bool // the domain rule for args[1] or args[2], when there is one
		ident      string
		wantCode   string // SQLSTATE; "" = the insert succeeds
		constraint string
	}{
		// Fleet slugs.
		{"slug ok", insertFleet, []any{tn.ID, "a-1", "prod", "eu"}, controlplane.ValidSlug, "a-1", "", ""},
		{"slug 63", insertFleet, []any{tn.ID, long(63, "a"), "prod", "eu"}, controlplane.ValidSlug, long(63, "a"), "", ""},
		{"slug 64", insertFleet, []any{tn.ID, long(64, "a"), "prod", "eu"}, controlplane.ValidSlug, long(64, "a"), "23514", "fleets_slug_check"},
		{"slug upper", insertFleet, []any{tn.ID, "Abc", "prod", "eu"}, controlplane.ValidSlug, "Abc", "23514", "fleets_slug_check"},
		{"slug leading dash", insertFleet, []any{tn.ID, "-abc", "prod", "eu"}, controlplane.ValidSlug, "-abc", "23514", "fleets_slug_check"},
		{"slug trailing dash", insertFleet, []any{tn.ID, "abc-", "prod", "eu"}, controlplane.ValidSlug, "abc-", "23514", "fleets_slug_check"},
		{"slug empty", insertFleet, []any{tn.ID, "", "prod", "eu"}, controlplane.ValidSlug, "", "23514", "fleets_slug_check"},
		{"slug newline", insertFleet, []any{tn.ID, "abc\n", "prod", "eu"}, controlplane.ValidSlug, "abc\n", "23514", "fleets_slug_check"},
		{"slug underscore", insertFleet, []any{tn.ID, "a_b", "prod", "eu"}, controlplane.ValidSlug, "a_b", "23514", "fleets_slug_check"},
		{"slug duplicate", insertFleet, []any{tn.ID, "f", "prod", "eu"}, nil, "", "23505", "fleets_tenant_id_slug_key"},
		{"slug of another tenant", insertFleet, []any{other.ID, "f", "prod", "eu"}, nil, "", "", ""},
		// Environments and regions.
		{"env underscore", insertFleet, []any{tn.ID, "e1", "dev_2", "eu"}, controlplane.ValidEnvironment, "dev_2", "", ""},
		{"env dot", insertFleet, []any{tn.ID, "e2", "pr.od", "eu"}, controlplane.ValidEnvironment, "pr.od", "23514", "fleets_environment_check"},
		{"env wildcard", insertFleet, []any{tn.ID, "e3", "*", "eu"}, controlplane.ValidEnvironment, "*", "23514", "fleets_environment_check"},
		{"env 33", insertFleet, []any{tn.ID, "e4", long(33, "p"), "eu"}, controlplane.ValidEnvironment, long(33, "p"), "23514", "fleets_environment_check"},
		{"region underscore", insertFleet, []any{tn.ID, "r1", "prod", "eu_1"}, controlplane.ValidRegionName, "eu_1", "23514", "fleets_region_check"},
		{"region 32", insertFleet, []any{tn.ID, "r2", "prod", long(32, "r")}, controlplane.ValidRegionName, long(32, "r"), "", ""},
		// Vehicle IDs (NATS subject tokens).
		{"vid ok", insertVehicle, []any{tn.ID, f.ID, "Drone_1-a", `{}`, "pending"}, controlplane.ValidVehicleID, "Drone_1-a", "", ""},
		{"vid 64", insertVehicle, []any{tn.ID, f.ID, long(64, "v"), `{}`, "pending"}, controlplane.ValidVehicleID, long(64, "v"), "", ""},
		{"vid 65", insertVehicle, []any{tn.ID, f.ID, long(65, "v"), `{}`, "pending"}, controlplane.ValidVehicleID, long(65, "v"), "23514", "vehicles_vehicle_id_check"},
		{"vid dot", insertVehicle, []any{tn.ID, f.ID, "a.b", `{}`, "pending"}, controlplane.ValidVehicleID, "a.b", "23514", "vehicles_vehicle_id_check"},
		{"vid gt", insertVehicle, []any{tn.ID, f.ID, "a>", `{}`, "pending"}, controlplane.ValidVehicleID, "a>", "23514", "vehicles_vehicle_id_check"},
		{"vid space", insertVehicle, []any{tn.ID, f.ID, "a b", `{}`, "pending"}, controlplane.ValidVehicleID, "a b", "23514", "vehicles_vehicle_id_check"},
		{"vid non-ASCII", insertVehicle, []any{tn.ID, f.ID, "drönе", `{}`, "pending"}, controlplane.ValidVehicleID, "drönе", "23514", "vehicles_vehicle_id_check"},
		{"vid empty", insertVehicle, []any{tn.ID, f.ID, "", `{}`, "pending"}, controlplane.ValidVehicleID, "", "23514", "vehicles_vehicle_id_check"},
		{"vid duplicate", insertVehicle, []any{tn.ID, f.ID, "Drone_1-a", `{}`, "pending"}, nil, "", "23505", "vehicles_tenant_id_vehicle_id_key"},
		// Other vehicle columns.
		{"labels array", insertVehicle, []any{tn.ID, f.ID, "l1", `["a"]`, "pending"}, nil, "", "23514", "vehicles_labels_check"},
		{"status unknown", insertVehicle, []any{tn.ID, f.ID, "s1", `{}`, "lost"}, nil, "", "23514", "vehicles_status_check"},
		// The composite foreign key: no vehicle in another tenant's fleet.
		{"fleet of another tenant", insertVehicle, []any{tn.ID, otherFleet.ID, "x1", `{}`, "pending"}, nil, "", "23503", "vehicles_fleet_fkey"},
		// Tenants, users, keys, memberships.
		{"plan", `INSERT INTO tenants (name, plan) VALUES ('t', $1)`, []any{"gold"}, nil, "", "23514", "tenants_plan_check"},
		{"email upper", `INSERT INTO users (email) VALUES ($1)`, []any{"A@b.example"}, nil, "", "23514", "users_email_check"},
		{"api key id", `INSERT INTO api_keys (id, tenant_id, name, role, secret_hash, created_by) VALUES ($1, $2, 'k', 'admin', $3, 's')`,
			[]any{"abcdefghijklmno1", tn.ID, hashOf("x")}, nil, "", "23514", "api_keys_id_check"},
		{"api key hash", `INSERT INTO api_keys (id, tenant_id, name, role, secret_hash, created_by) VALUES ($1, $2, 'k', 'admin', $3, 's')`,
			[]any{"abcdefghijklmnop", tn.ID, []byte("short")}, nil, "", "23514", "api_keys_secret_hash_check"},
		{"api key owner role", `INSERT INTO api_keys (id, tenant_id, name, role, secret_hash, created_by) VALUES ($1, $2, 'k', 'owner', $3, 's')`,
			[]any{"abcdefghijklmnop", tn.ID, hashOf("x")}, nil, "", "23514", "api_keys_role_check"},
		{"membership role", `INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, gen_random_uuid(), 'root')`,
			[]any{tn.ID}, nil, "", "23514", "memberships_role_check"},
		{"audit actor", `INSERT INTO audit_events (tenant_id, actor_type, actor_id, action, target_type, target_id) VALUES ($1, 'robot', 'x', 'a', 't', 'i')`,
			[]any{tn.ID}, nil, "", "23514", "audit_events_actor_type_check"},
		// Enrollment tokens.
		{"token ok", insertToken, []any{"abcdefghijklmnop", tn.ID, f.ID, hashOf("x"), 3, 0, "Drone_1-a"}, controlplane.ValidVehicleID, "Drone_1-a", "", ""},
		{"token id", insertToken, []any{"abcdefghijklmno1", tn.ID, f.ID, hashOf("x"), 1, 0, nil}, nil, "", "23514", "enrollment_tokens_id_check"},
		{"token hash", insertToken, []any{"bbcdefghijklmnop", tn.ID, f.ID, []byte("short"), 1, 0, nil}, nil, "", "23514", "enrollment_tokens_secret_hash_check"},
		{"token no uses", insertToken, []any{"bbcdefghijklmnop", tn.ID, f.ID, hashOf("x"), 0, 0, nil}, nil, "", "23514", "enrollment_tokens_max_uses_check"},
		{"token overused", insertToken, []any{"bbcdefghijklmnop", tn.ID, f.ID, hashOf("x"), 1, 2, nil}, nil, "", "23514", "enrollment_tokens_uses_check"},
		{"token vehicle ID", insertToken, []any{"bbcdefghijklmnop", tn.ID, f.ID, hashOf("x"), 1, 0, "a.b"}, controlplane.ValidVehicleID, "a.b", "23514", "enrollment_tokens_vehicle_id_check"},
		{"token in another tenant's fleet", insertToken, []any{"bbcdefghijklmnop", tn.ID, otherFleet.ID, hashOf("x"), 1, 0, nil}, nil, "", "23503", "enrollment_tokens_fleet_fkey"},
		// User keys: nkeys, and one holder each across vehicles and grants.
		{"vehicle key ok", setVehicleKey, []any{vehicleKey, tn.ID, "Drone_1-a"}, nil, "", "", ""},
		{"vehicle key of an account", setVehicleKey, []any{FakeKey('A'), tn.ID, long(64, "v")}, nil, "", "23514", "vehicles_user_public_key_check"},
		{"vehicle key short", setVehicleKey, []any{vehicleKey[:55], tn.ID, long(64, "v")}, nil, "", "23514", "vehicles_user_public_key_check"},
		{"vehicle key of a vehicle", setVehicleKey, []any{vehicleKey, tn.ID, long(64, "v")}, nil, "", "23505", "vehicles_user_public_key_key"},
		{"grant ok", insertGrant, []any{"grantaaaaaaaaaaa", tn.ID, grantKey}, nil, "", "", ""},
		{"grant id", insertGrant, []any{"grant-1", tn.ID, FakeKey('U')}, nil, "", "23514", "grants_id_check"},
		{"grant key of a grant", insertGrant, []any{"grantbbbbbbbbbbb", tn.ID, grantKey}, nil, "", "23505", "grants_user_public_key_key"},
		{"grant key of a vehicle", insertGrant, []any{"grantbbbbbbbbbbb", tn.ID, vehicleKey}, nil, "", "23505", "nats_user_keys_pkey"},
		{"vehicle key of a grant", setVehicleKey, []any{grantKey, tn.ID, long(64, "v")}, nil, "", "23505", "nats_user_keys_pkey"},
		{"nonce key", `INSERT INTO agent_nonces (nonce, user_public_key, expires_at) VALUES ('n', $1, now())`, []any{FakeKey('O')}, nil, "", "23514", "agent_nonces_user_public_key_check"},
		// The operator is a singleton; accounts and revocations.
		{"operator ok", insertOperator, []any{true, FakeKey('O'), FakeKey('A')}, nil, "", "", ""},
		{"second operator", insertOperator, []any{false, FakeKey('O'), FakeKey('A')}, nil, "", "23514", "nats_operator_id_check"},
		{"account version 0", insertAccount, []any{tn.ID, FakeKey('A'), FakeKey('A'), 0, 0}, nil, "", "23514", "nats_accounts_version_check"},
		{"account pushed ahead", insertAccount, []any{tn.ID, FakeKey('A'), FakeKey('A'), 1, 2}, nil, "", "23514", "nats_accounts_pushed_version_check"},
		{"account key", insertAccount, []any{tn.ID, FakeKey('U'), FakeKey('A'), 1, 0}, nil, "", "23514", "nats_accounts_public_key_check"},
		{"revocation kind", insertRevocation, []any{tn.ID, "fleet", FakeKey('U'), "pending", nil}, nil, "", "23514", "revocations_kind_check"},
		{"revocation proven, not completed", insertRevocation, []any{tn.ID, "grant", FakeKey('U'), "proven", nil}, nil, "", "23514", "revocations_completed_check"},
		{"idempotency status without completion", `INSERT INTO idempotency_keys (scope, key, request_hash, status) VALUES ('s', 'k', '\x00', 200)`,
			nil, nil, "", "23514", "idempotency_keys_completed_check"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.valid != nil {
				if want := tc.wantCode == ""; tc.valid(tc.ident) != want {
					t.Fatalf("controlplane says valid(%q) = %v; the schema test expects %v", tc.ident, !want, want)
				}
			}
			_, err := pool.Exec(ctx, tc.sql, tc.args...)
			if tc.wantCode == "" {
				if err != nil {
					t.Fatalf("insert failed: %v", err)
				}
				return
			}
			pgErr, ok := err.(*pgconn.PgError)
			if !ok {
				t.Fatalf("err = %v, want SQLSTATE %s", err, tc.wantCode)
			}
			if pgErr.Code != tc.wantCode || pgErr.ConstraintName != tc.constraint {
				t.Errorf("got %s on %q, want %s on %q (%s)", pgErr.Code, pgErr.ConstraintName, tc.wantCode, tc.constraint, pgErr.Message)
			}
		})
	}

	// The store turns a CHECK violation into EINVALID naming the constraint.
	err := s.CreateFleet(ctx, &controlplane.Fleet{TenantID: tn.ID, Slug: "Bad", Name: "n", Environment: "prod", Region: "eu"})
	WantCode(t, err, controlplane.EINVALID)
	if msg := controlplane.ErrorMessage(err); !strings.Contains(msg, "fleets_slug_check") {
		t.Errorf("message %q does not name the constraint", msg)
	}
}

// TestTenantDeleteRestricted: a tenant with fleets cannot be deleted by
// accident; its audit log and memberships go with it once it is empty.
func TestTenantDelete(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "doomed")
	f := MustFleet(t, s, tn.ID, "f")
	MustVehicle(t, s, f, "v", nil)
	MustAuditEvent(t, s, tn.ID, "fleet.create", "f")
	u := &controlplane.User{Email: "x@doomed.example"}
	if err := s.CreateUser(ctx, u, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateMembership(ctx, &controlplane.Membership{TenantID: tn.ID, UserID: u.ID, Role: controlplane.RoleOwner}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM tenants WHERE id = $1`, tn.ID); err == nil {
		t.Fatal("deleted a tenant that still has fleets")
	}
	MustExec(t, pool, `DELETE FROM vehicles WHERE tenant_id = $1`, tn.ID)
	MustExec(t, pool, `DELETE FROM fleets WHERE tenant_id = $1`, tn.ID)
	MustExec(t, pool, `DELETE FROM tenants WHERE id = $1`, tn.ID)
	var n int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM audit_events) + (SELECT count(*) FROM memberships)`).Scan(&n); err != nil || n != 0 {
		t.Errorf("rows left after deleting the tenant: %d, %v", n, err)
	}
}
