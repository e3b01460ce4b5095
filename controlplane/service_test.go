package controlplane_test

import (
	"context"
	"strings"
	"testing"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/password"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// The service tests run on the real Postgres store: what they prove about
// transactions (audit and change commit together) only holds there.
func TestMain(m *testing.M) { pgtest.Main(m) }

// MustService returns a Service over a fresh database, with cheap password
// hashing.
func MustService(tb testing.TB) *controlplane.Service {
	tb.Helper()
	store := postgres.NewStore(pgtest.NewPool(tb))
	return controlplane.NewService(store, controlplane.Config{
		Regions:        []controlplane.Region{{Name: "europe", DisplayName: "Europe"}, {Name: "americas"}},
		PasswordParams: password.Params{Memory: 64, Time: 1, Threads: 1},
		Issuer:         mustIssuer(tb, nil),
	}, nil)
}

// MustSignup signs up an organisation and returns a context acting as its
// first API key (admin).
func MustSignup(tb testing.TB, svc *controlplane.Service, org, email string) (context.Context, *controlplane.SignupResult) {
	tb.Helper()
	ctx := controlplane.NewContextWithRequestMeta(context.Background(), controlplane.RequestMeta{SourceIP: "198.51.100.7", RequestID: "req-signup"})
	res, err := svc.Signup(ctx, controlplane.SignupRequest{Organisation: org, Email: email, Password: "correct horse battery"})
	if err != nil {
		tb.Fatalf("Signup(%s): %v", org, err)
	}
	p, err := svc.Authenticate(ctx, res.APIKey.Secret)
	if err != nil {
		tb.Fatalf("Authenticate with the signup key: %v", err)
	}
	return controlplane.NewContextWithPrincipal(ctx, p), res
}

// as returns ctx acting in the principal's tenant with another role.
func as(ctx context.Context, role controlplane.Role) context.Context {
	p := *controlplane.PrincipalFromContext(ctx)
	p.Role = role
	return controlplane.NewContextWithPrincipal(ctx, &p)
}

func WantCode(tb testing.TB, err error, code string) {
	tb.Helper()
	if got := controlplane.ErrorCode(err); got != code {
		tb.Fatalf("error code = %q, want %q (err: %v)", got, code, err)
	}
}

func TestSignup(t *testing.T) {
	t.Parallel()
	svc := MustService(t)
	ctx, res := MustSignup(t, svc, "Acme Drones", "Ops@Acme.example")
	if res.User.Email != "ops@acme.example" || res.Tenant.Plan != controlplane.PlanFree || res.APIKey.Role != controlplane.RoleAdmin {
		t.Errorf("signup result: %+v %+v %+v", res.Tenant, res.User, res.APIKey.APIKey)
	}
	tn, err := svc.Tenant(ctx)
	if err != nil || tn.ID != res.Tenant.ID || tn.Name != "Acme Drones" {
		t.Fatalf("Tenant = %+v, %v", tn, err)
	}

	// Tenant and key creation were audited, in the signup's transaction.
	page, err := svc.AuditEvents(ctx, controlplane.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range page.Items {
		actions = append(actions, e.Action)
		if e.SourceIP != "198.51.100.7" || e.RequestID != "req-signup" || e.ActorType != "user" || e.ActorID != res.User.ID {
			t.Errorf("audit event %s: %+v", e.Action, e)
		}
	}
	if strings.Join(actions, ",") != "tenant.create,api_key.create" {
		t.Errorf("audit actions = %v", actions)
	}

	// The same e-mail, in any case, cannot sign up twice; nothing of the
	// second attempt stays behind.
	_, err = svc.Signup(context.Background(), controlplane.SignupRequest{Organisation: "Acme 2", Email: "OPS@acme.example", Password: "correct horse battery"})
	WantCode(t, err, controlplane.ECONFLICT)
	_, err = svc.Signup(context.Background(), controlplane.SignupRequest{Organisation: "", Email: "nope", Password: "short"})
	WantCode(t, err, controlplane.EINVALID)
}

func TestAuthenticate(t *testing.T) {
	t.Parallel()
	svc := MustService(t)
	ctx, res := MustSignup(t, svc, "Keys Inc", "keys@keys.example")
	viewerKey, err := svc.CreateAPIKey(ctx, controlplane.APIKeyCreate{Name: "dashboards", Role: controlplane.RoleViewer})
	if err != nil {
		t.Fatal(err)
	}
	p, err := svc.Authenticate(context.Background(), viewerKey.Secret)
	if err != nil || p.Role != controlplane.RoleViewer || p.TenantID != res.Tenant.ID || p.ActorID != viewerKey.ID {
		t.Fatalf("Authenticate(viewer) = %+v, %v", p, err)
	}
	tampered := []byte(viewerKey.Secret)
	if i := len(tampered) - 2; tampered[i] == 'a' {
		tampered[i] = 'b'
	} else {
		tampered[i] = 'a'
	}
	_, err = svc.Authenticate(context.Background(), string(tampered))
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	_, err = svc.Authenticate(context.Background(), "fpk_nope")
	WantCode(t, err, controlplane.EUNAUTHORIZED)

	if err := svc.RevokeAPIKey(ctx, viewerKey.ID); err != nil {
		t.Fatal(err)
	}
	_, err = svc.Authenticate(context.Background(), viewerKey.Secret)
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	WantCode(t, svc.RevokeAPIKey(ctx, viewerKey.ID), controlplane.ENOTFOUND)

	keys, err := svc.APIKeys(ctx, controlplane.PageRequest{}, false)
	if err != nil || len(keys.Items) != 1 || keys.Items[0].ID != res.APIKey.ID || keys.Items[0].LastUsedAt == nil {
		t.Errorf("APIKeys = %+v, %v", keys, err)
	}
}

// TestRoles: each call needs at least its role, and no call works without
// a principal.
func TestRoles(t *testing.T) {
	t.Parallel()
	svc := MustService(t)
	admin, _ := MustSignup(t, svc, "Roles Ltd", "roles@roles.example")
	if _, err := svc.CreateFleet(admin, controlplane.FleetCreate{Slug: "base"}); err != nil {
		t.Fatal(err)
	}
	viewer, member := as(admin, controlplane.RoleViewer), as(admin, controlplane.RoleMember)

	for _, tc := range []struct {
		name string
		ctx  context.Context
		call func(ctx context.Context) error
		want string
	}{
		{"viewer reads fleets", viewer, func(ctx context.Context) error { _, err := svc.Fleets(ctx, controlplane.PageRequest{}); return err }, ""},
		{"viewer creates fleet", viewer, func(ctx context.Context) error {
			_, err := svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: "v"})
			return err
		}, controlplane.EFORBIDDEN},
		{"member creates fleet", member, func(ctx context.Context) error {
			_, err := svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: "m"})
			return err
		}, ""},
		{"member deletes fleet", member, func(ctx context.Context) error { return svc.DeleteFleet(ctx, "m") }, controlplane.EFORBIDDEN},
		{"member lists keys", member, func(ctx context.Context) error {
			_, err := svc.APIKeys(ctx, controlplane.PageRequest{}, false)
			return err
		}, controlplane.EFORBIDDEN},
		{"member reads audit", member, func(ctx context.Context) error {
			_, err := svc.AuditEvents(ctx, controlplane.AuditQuery{})
			return err
		}, controlplane.EFORBIDDEN},
		{"admin deletes fleet", admin, func(ctx context.Context) error { return svc.DeleteFleet(ctx, "m") }, ""},
		{"nobody reads the tenant", context.Background(), func(ctx context.Context) error { _, err := svc.Tenant(ctx); return err }, controlplane.EUNAUTHORIZED},
	} {
		t.Run(tc.name, func(t *testing.T) {
			WantCode(t, tc.call(tc.ctx), tc.want)
		})
	}
}

// TestAuditInSameTransaction: when the audit write fails, the change it
// records is rolled back with it.
func TestAuditInSameTransaction(t *testing.T) {
	t.Parallel()
	svc := MustService(t)
	ctx, _ := MustSignup(t, svc, "Audit Co", "audit@audit.example")
	p := *controlplane.PrincipalFromContext(ctx)
	p.ActorType = "robot" // the schema refuses this actor type in audit_events
	bad := controlplane.NewContextWithPrincipal(ctx, &p)

	_, err := svc.CreateFleet(bad, controlplane.FleetCreate{Slug: "ghost"})
	WantCode(t, err, controlplane.EINVALID)
	_, err = svc.Fleet(ctx, "ghost")
	WantCode(t, err, controlplane.ENOTFOUND)

	if _, err := svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: "real"}); err != nil {
		t.Fatal(err)
	}
	_, err = svc.UpdateFleet(bad, "real", controlplane.FleetUpdate{Name: new("Renamed")})
	WantCode(t, err, controlplane.EINVALID)
	f, err := svc.Fleet(ctx, "real")
	if err != nil || f.Name != "real" {
		t.Errorf("fleet after a failed audited update: %+v, %v", f, err)
	}
}

func TestFleetsAndVehicles(t *testing.T) {
	t.Parallel()
	svc := MustService(t)
	ctx, _ := MustSignup(t, svc, "Fleet Ops", "ops@fleet.example")
	other, _ := MustSignup(t, svc, "Rival", "ops@rival.example")

	f, err := svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: "survey", Name: "Survey"})
	if err != nil || f.Environment != "prod" || f.Region != "europe" {
		t.Fatalf("CreateFleet = %+v, %v", f, err)
	}
	_, err = svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: "survey"})
	WantCode(t, err, controlplane.ECONFLICT)
	// Another tenant may use the same slug, and cannot see ours.
	if _, err := svc.CreateFleet(other, controlplane.FleetCreate{Slug: "survey"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"d07", "d02", "d05", "d01", "d04", "d03", "d06"} {
		if _, err := svc.CreateVehicle(ctx, "survey", controlplane.VehicleCreate{VehicleID: id, Labels: map[string]string{"site": "north"}}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = svc.CreateVehicle(ctx, "survey", controlplane.VehicleCreate{VehicleID: "d01"})
	WantCode(t, err, controlplane.ECONFLICT)

	// Three pages through the service's cursors.
	var got []string
	q := controlplane.VehicleQuery{PageRequest: controlplane.PageRequest{Limit: 3}, Label: "site=north"}
	for pages := 1; ; pages++ {
		page, err := svc.Vehicles(ctx, "survey", q)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range page.Items {
			got = append(got, v.VehicleID)
		}
		if page.NextCursor == "" {
			if pages != 3 {
				t.Errorf("%d pages, want 3", pages)
			}
			break
		}
		q.Cursor = page.NextCursor
	}
	if strings.Join(got, ",") != "d01,d02,d03,d04,d05,d06,d07" {
		t.Errorf("vehicles = %v", got)
	}
	page, err := svc.Vehicles(other, "survey", controlplane.VehicleQuery{})
	if err != nil || len(page.Items) != 0 {
		t.Errorf("the rival sees %d vehicles in its own survey fleet (%v)", len(page.Items), err)
	}
	_, err = svc.Vehicle(other, "survey", "d01")
	WantCode(t, err, controlplane.ENOTFOUND)

	v, err := svc.UpdateVehicle(ctx, "survey", "d01", controlplane.VehicleUpdate{Disabled: new(true)})
	if err != nil || v.Status != controlplane.VehicleDisabled || v.FleetSlug != "survey" {
		t.Fatalf("disable = %+v, %v", v, err)
	}
	v, err = svc.UpdateVehicle(ctx, "survey", "d01", controlplane.VehicleUpdate{Disabled: new(false)})
	if err != nil || v.Status != controlplane.VehiclePending {
		t.Fatalf("enable = %+v, %v", v, err)
	}

	err = svc.DeleteFleet(ctx, "survey")
	WantCode(t, err, controlplane.ECONFLICT)
	if !strings.Contains(controlplane.ErrorMessage(err), "still has vehicles") {
		t.Errorf("DeleteFleet message = %q", controlplane.ErrorMessage(err))
	}
	for _, id := range got {
		if err := svc.DeleteVehicle(ctx, "survey", id); err != nil {
			t.Fatal(err)
		}
	}
	if err := svc.DeleteFleet(ctx, "survey"); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Fleet(other, "survey"); err != nil {
		t.Errorf("the rival's fleet went with ours: %v", err)
	}
}
