package postgres_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
)

// TestTenantIsolation gives two tenants the same kinds of rows, some with
// the same names, and calls every tenant-scoped method with tenant A's
// scope and tenant B's IDs: each must answer ENOTFOUND or an empty result,
// and leave B's rows untouched.
func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()

	type world struct {
		tenant       *controlplane.Tenant
		fleet, empty *controlplane.Fleet
		vehicle      *controlplane.Vehicle
		key          *controlplane.APIKey
		event        *controlplane.AuditEvent
		account      *controlplane.Account
		token        *controlplane.EnrollmentToken
		grant        *controlplane.Grant
		revocation   *controlplane.Revocation
	}
	mk := func(name string) world {
		w := world{tenant: MustTenant(t, s, name)}
		id := w.tenant.ID
		w.fleet = MustFleet(t, s, id, "shared")
		w.empty = MustFleet(t, s, id, "empty-"+name)
		w.vehicle = MustVehicle(t, s, w.fleet, "veh-"+name, map[string]string{"site": "north"})
		MustVehicle(t, s, w.fleet, "common", map[string]string{"site": "north"}) // same vehicle ID in both tenants
		w.key = MustAPIKey(t, s, id, controlplane.RoleAdmin)
		w.event = MustAuditEvent(t, s, id, "fleet.create", "shared-"+name)
		w.account = MustAccount(t, s, id)
		w.token = MustToken(t, s, w.fleet, 5, time.Now().Add(time.Hour))
		w.grant = MustGrant(t, s, id, time.Now().Add(time.Hour))
		// The same target in both tenants.
		w.revocation = MustRevocation(t, s, id, controlplane.RevokeVehicle, "common")
		return w
	}
	a, b := mk("a"), mk("b")
	A := a.tenant.ID
	now := time.Now()

	notFound := func(t *testing.T, err error) { t.Helper(); WantCode(t, err, controlplane.ENOTFOUND) }
	for _, tc := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"FindAPIKeyByID", func(t *testing.T) {
			_, err := s.FindAPIKeyByID(ctx, A, b.key.ID)
			notFound(t, err)
		}},
		{"FindAPIKeys", func(t *testing.T) {
			ks, err := s.FindAPIKeys(ctx, A, controlplane.APIKeyFilter{IncludeRevoked: true})
			if err != nil || len(ks) != 1 || ks[0].ID != a.key.ID {
				t.Errorf("got %v, %v; want only %s", ks, err, a.key.ID)
			}
		}},
		{"RevokeAPIKey", func(t *testing.T) {
			notFound(t, s.RevokeAPIKey(ctx, A, b.key.ID, now))
			k, err := s.FindAPIKeyByID(ctx, b.tenant.ID, b.key.ID)
			if err != nil || k.RevokedAt != nil {
				t.Errorf("B's key after A's revoke: %+v, %v", k, err)
			}
		}},
		{"FindFleetBySlug", func(t *testing.T) {
			_, err := s.FindFleetBySlug(ctx, A, b.empty.Slug)
			notFound(t, err)
			f, err := s.FindFleetBySlug(ctx, A, "shared")
			if err != nil || f.ID != a.fleet.ID || f.VehicleCount != 2 {
				t.Errorf("A's shared fleet = %+v, %v", f, err)
			}
		}},
		{"FindFleets", func(t *testing.T) {
			fs, err := s.FindFleets(ctx, A, controlplane.FleetFilter{})
			if err != nil || len(fs) != 2 || fs[0].ID != a.empty.ID || fs[1].ID != a.fleet.ID || fs[1].VehicleCount != 2 {
				t.Errorf("got %+v, %v", fs, err)
			}
		}},
		{"UpdateFleet", func(t *testing.T) {
			_, err := s.UpdateFleet(ctx, A, b.fleet.ID, controlplane.FleetUpdate{Name: ptr("hijacked")})
			notFound(t, err)
			_, err = s.UpdateFleet(ctx, A, b.fleet.ID, controlplane.FleetUpdate{})
			notFound(t, err)
			f, err := s.FindFleetBySlug(ctx, b.tenant.ID, "shared")
			if err != nil || f.Name != b.fleet.Name {
				t.Errorf("B's fleet after A's update: %+v, %v", f, err)
			}
		}},
		{"DeleteFleet", func(t *testing.T) {
			notFound(t, s.DeleteFleet(ctx, A, b.empty.ID))
			if _, err := s.FindFleetBySlug(ctx, b.tenant.ID, b.empty.Slug); err != nil {
				t.Errorf("B's empty fleet after A's delete: %v", err)
			}
		}},
		{"CreateVehicle in B's fleet", func(t *testing.T) {
			v := &controlplane.Vehicle{TenantID: A, FleetID: b.fleet.ID, VehicleID: "intruder", Name: "x"}
			notFound(t, s.CreateVehicle(ctx, v))
		}},
		{"FindVehicle", func(t *testing.T) {
			_, err := s.FindVehicle(ctx, A, b.fleet.ID, b.vehicle.VehicleID)
			notFound(t, err)
			_, err = s.FindVehicle(ctx, A, a.fleet.ID, b.vehicle.VehicleID)
			notFound(t, err)
			_, err = s.FindVehicle(ctx, A, b.fleet.ID, "common")
			notFound(t, err)
			v, err := s.FindVehicle(ctx, A, a.fleet.ID, "common")
			if err != nil || v.TenantID != A {
				t.Errorf("A's common vehicle = %+v, %v", v, err)
			}
		}},
		{"FindVehicles", func(t *testing.T) {
			vs, err := s.FindVehicles(ctx, A, controlplane.VehicleFilter{})
			if got := vehicleIDs(vs); err != nil || !eq(got, []string{"common", "veh-a"}) {
				t.Errorf("all: %v, %v", got, err)
			}
			vs, err = s.FindVehicles(ctx, A, controlplane.VehicleFilter{FleetID: &b.fleet.ID})
			if err != nil || len(vs) != 0 {
				t.Errorf("B's fleet: %v, %v", vehicleIDs(vs), err)
			}
			vs, err = s.FindVehicles(ctx, A, controlplane.VehicleFilter{Label: &controlplane.LabelSelector{Key: "site", Value: "north"}, VehicleIDPrefix: ptr("veh-")})
			if got := vehicleIDs(vs); err != nil || !eq(got, []string{"veh-a"}) {
				t.Errorf("by label and prefix: %v, %v", got, err)
			}
		}},
		{"CountVehicles", func(t *testing.T) {
			n, err := s.CountVehicles(ctx, A)
			if err != nil || n != 2 {
				t.Errorf("got %d, %v; want 2", n, err)
			}
		}},
		{"UpdateVehicle", func(t *testing.T) {
			_, err := s.UpdateVehicle(ctx, A, b.vehicle.ID, controlplane.VehicleChange{Status: ptr(controlplane.VehicleDisabled)})
			notFound(t, err)
			_, err = s.UpdateVehicle(ctx, A, b.vehicle.ID, controlplane.VehicleChange{})
			notFound(t, err)
			v, err := s.FindVehicle(ctx, b.tenant.ID, b.fleet.ID, b.vehicle.VehicleID)
			if err != nil || v.Status != controlplane.VehiclePending {
				t.Errorf("B's vehicle after A's update: %+v, %v", v, err)
			}
		}},
		{"DeleteVehicle", func(t *testing.T) {
			notFound(t, s.DeleteVehicle(ctx, A, b.vehicle.ID))
			if _, err := s.FindVehicle(ctx, b.tenant.ID, b.fleet.ID, b.vehicle.VehicleID); err != nil {
				t.Errorf("B's vehicle after A's delete: %v", err)
			}
		}},
		{"FindAuditEvents", func(t *testing.T) {
			evs, err := s.FindAuditEvents(ctx, A, controlplane.AuditFilter{})
			if err != nil || len(evs) != 1 || evs[0].ID != a.event.ID {
				t.Errorf("all: %v, %v", evs, err)
			}
			evs, err = s.FindAuditEvents(ctx, A, controlplane.AuditFilter{TargetID: &b.event.TargetID, Before: b.event.ID + 1})
			if err != nil || len(evs) != 0 {
				t.Errorf("B's target: %v, %v", evs, err)
			}
		}},
		{"FindAccount", func(t *testing.T) {
			acc, err := s.FindAccount(ctx, A, true)
			if err != nil || acc.PublicKey != a.account.PublicKey {
				t.Errorf("A's account = %+v, %v", acc, err)
			}
		}},
		{"UpdateAccount and MarkAccountPushed", func(t *testing.T) {
			// The account is named by its tenant: A can only name its own.
			mine := *a.account
			mine.Version, mine.JWT = 5, "jwt-5"
			if err := s.UpdateAccount(ctx, &mine); err != nil {
				t.Fatal(err)
			}
			if err := s.MarkAccountPushed(ctx, A, 5, now); err != nil {
				t.Fatal(err)
			}
			acc, err := s.FindAccount(ctx, b.tenant.ID, false)
			if err != nil || acc.Version != 1 || acc.PushedVersion != 0 || acc.JWT != b.account.JWT {
				t.Errorf("B's account after A's updates: %+v, %v", acc, err)
			}
		}},
		{"CreateEnrollmentToken in B's fleet", func(t *testing.T) {
			tok := &controlplane.EnrollmentToken{ID: "intruderintruder", TenantID: A, FleetID: b.fleet.ID, ExpiresAt: now.Add(time.Hour), CreatedBy: "x"}
			notFound(t, s.CreateEnrollmentToken(ctx, tok, hashOf("x")))
		}},
		{"FindEnrollmentTokenByID", func(t *testing.T) {
			_, err := s.FindEnrollmentTokenByID(ctx, A, b.token.ID)
			notFound(t, err)
		}},
		{"FindEnrollmentTokens", func(t *testing.T) {
			ts, err := s.FindEnrollmentTokens(ctx, A, controlplane.EnrollmentTokenFilter{FleetID: b.fleet.ID, IncludeRevoked: true})
			if err != nil || len(ts) != 0 {
				t.Errorf("B's fleet: %v, %v", tokenIDs(ts), err)
			}
			ts, err = s.FindEnrollmentTokens(ctx, A, controlplane.EnrollmentTokenFilter{FleetID: a.fleet.ID, IncludeRevoked: true})
			if got := tokenIDs(ts); err != nil || !eq(got, []string{a.token.ID}) {
				t.Errorf("A's fleet: %v, %v", got, err)
			}
			// B's token as a cursor does not reveal where it sorts.
			ts, err = s.FindEnrollmentTokens(ctx, A, controlplane.EnrollmentTokenFilter{FleetID: a.fleet.ID, IncludeRevoked: true, After: b.token.ID})
			if err != nil || len(ts) != 0 {
				t.Errorf("after B's token: %v, %v", tokenIDs(ts), err)
			}
		}},
		{"RevokeEnrollmentToken", func(t *testing.T) {
			notFound(t, s.RevokeEnrollmentToken(ctx, A, b.token.ID, now))
			tok, err := s.FindEnrollmentTokenByID(ctx, b.tenant.ID, b.token.ID)
			if err != nil || tok.RevokedAt != nil {
				t.Errorf("B's token after A's revoke: %+v, %v", tok, err)
			}
		}},
		{"SetVehicleEnrollment", func(t *testing.T) {
			_, err := s.SetVehicleEnrollment(ctx, A, b.vehicle.ID, controlplane.VehicleEnrollment{UserPublicKey: FakeKey('U'), Status: controlplane.VehicleActive})
			notFound(t, err)
			v, err := s.FindVehicle(ctx, b.tenant.ID, b.fleet.ID, b.vehicle.VehicleID)
			if err != nil || v.UserPublicKey != "" || v.Status != controlplane.VehiclePending {
				t.Errorf("B's vehicle after A's enrollment: %+v, %v", v, err)
			}
		}},
		{"FindGrant", func(t *testing.T) {
			_, err := s.FindGrant(ctx, A, b.grant.ID)
			notFound(t, err)
		}},
		{"FindGrants", func(t *testing.T) {
			gs, err := s.FindGrants(ctx, A, controlplane.GrantFilter{IncludeInactive: true})
			if got := grantIDs(gs); err != nil || !eq(got, []string{a.grant.ID}) {
				t.Errorf("got %v, %v", got, err)
			}
			gs, err = s.FindGrants(ctx, A, controlplane.GrantFilter{IncludeInactive: true, After: b.grant.ID})
			if err != nil || len(gs) != 0 {
				t.Errorf("after B's grant: %v, %v", grantIDs(gs), err)
			}
		}},
		{"RevokeGrant", func(t *testing.T) {
			notFound(t, s.RevokeGrant(ctx, A, b.grant.ID, now))
			g, err := s.FindGrant(ctx, b.tenant.ID, b.grant.ID)
			if err != nil || g.RevokedAt != nil {
				t.Errorf("B's grant after A's revoke: %+v, %v", g, err)
			}
		}},
		{"FindRevocation", func(t *testing.T) {
			_, err := s.FindRevocation(ctx, A, b.revocation.ID)
			notFound(t, err)
		}},
		{"FindLatestRevocation", func(t *testing.T) {
			r, err := s.FindLatestRevocation(ctx, A, controlplane.RevokeVehicle, "common")
			if err != nil || r.ID != a.revocation.ID {
				t.Errorf("A's latest revocation of common = %+v, %v; want ID %d", r, err, a.revocation.ID)
			}
		}},
		{"UpdateRevocation", func(t *testing.T) {
			r := *b.revocation
			r.TenantID, r.Attempts, r.LastError = A, 9, "hijacked"
			notFound(t, s.UpdateRevocation(ctx, &r))
			got, err := s.FindRevocation(ctx, b.tenant.ID, b.revocation.ID)
			if err != nil || got.Attempts != 0 || got.LastError != "" {
				t.Errorf("B's revocation after A's update: %+v, %v", got, err)
			}
		}},
		{"nobody's tenant", func(t *testing.T) {
			const nobody = "00000000-0000-0000-0000-000000000000"
			fs, err1 := s.FindFleets(ctx, nobody, controlplane.FleetFilter{})
			vs, err2 := s.FindVehicles(ctx, nobody, controlplane.VehicleFilter{})
			ks, err3 := s.FindAPIKeys(ctx, nobody, controlplane.APIKeyFilter{IncludeRevoked: true})
			evs, err4 := s.FindAuditEvents(ctx, nobody, controlplane.AuditFilter{})
			n, err5 := s.CountVehicles(ctx, nobody)
			ts, err6 := s.FindEnrollmentTokens(ctx, nobody, controlplane.EnrollmentTokenFilter{FleetID: a.fleet.ID, IncludeRevoked: true})
			gs, err7 := s.FindGrants(ctx, nobody, controlplane.GrantFilter{IncludeInactive: true})
			if len(fs)+len(vs)+len(ks)+len(evs)+n+len(ts)+len(gs) != 0 || slices.ContainsFunc([]error{err1, err2, err3, err4, err5, err6, err7}, func(e error) bool { return e != nil }) {
				t.Errorf("got %v %v %v %v %d %v %v; errors %v %v %v %v %v %v %v", fs, vs, ks, evs, n, ts, gs, err1, err2, err3, err4, err5, err6, err7)
			}
			_, err := s.FindAccount(ctx, nobody, false)
			notFound(t, err)
		}},
	} {
		t.Run(tc.name, tc.run)
	}

	// After all of A's attempts, B's world is what it was.
	n, err := s.CountVehicles(ctx, b.tenant.ID)
	if err != nil || n != 2 {
		t.Errorf("B's vehicles: %d, %v", n, err)
	}
	fs, err := s.FindFleets(ctx, b.tenant.ID, controlplane.FleetFilter{})
	if err != nil || len(fs) != 2 {
		t.Errorf("B's fleets: %v, %v", fs, err)
	}
}
