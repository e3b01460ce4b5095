package postgres_test

import (
	"context"
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
)

func TestPing(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Tx(ctx, func(tx controlplane.Store) error { return tx.Ping(ctx) }); err != nil {
		t.Fatalf("Ping in a transaction: %v", err)
	}
}

func TestTenantsUsersMemberships(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()

	tn := &controlplane.Tenant{Name: "Acme Drones", Plan: controlplane.PlanScale}
	if err := s.CreateTenant(ctx, tn); err != nil {
		t.Fatal(err)
	}
	if tn.ID == "" || tn.CreatedAt.IsZero() || !tn.UpdatedAt.Equal(tn.CreatedAt) {
		t.Fatalf("CreateTenant did not set ID and times: %+v", tn)
	}
	got, err := s.FindTenantByID(ctx, tn.ID)
	if err != nil {
		t.Fatal(err)
	}
	if *got != *tn {
		t.Errorf("FindTenantByID = %+v, want %+v", got, tn)
	}
	for _, id := range []string{"00000000-0000-0000-0000-000000000000", "not-a-uuid", ""} {
		_, err := s.FindTenantByID(ctx, id)
		WantCode(t, err, controlplane.ENOTFOUND)
	}
	err = s.CreateTenant(ctx, &controlplane.Tenant{Name: "x", Plan: "gold"})
	WantCode(t, err, controlplane.EINVALID)

	u := &controlplane.User{Email: "ops@acme.example"}
	if err := s.CreateUser(ctx, u, "$argon2id$..."); err != nil {
		t.Fatal(err)
	}
	if u.ID == "" || u.CreatedAt.IsZero() {
		t.Fatalf("CreateUser did not set ID and CreatedAt: %+v", u)
	}
	WantCode(t, s.CreateUser(ctx, &controlplane.User{Email: "ops@acme.example"}, ""), controlplane.ECONFLICT)
	WantCode(t, s.CreateUser(ctx, &controlplane.User{Email: "Ops@Acme.example"}, ""), controlplane.EINVALID)
	noPw := &controlplane.User{Email: "nopw@acme.example"}
	if err := s.CreateUser(ctx, noPw, ""); err != nil {
		t.Fatal(err)
	}

	m := &controlplane.Membership{TenantID: tn.ID, UserID: u.ID, Role: controlplane.RoleOwner}
	if err := s.CreateMembership(ctx, m); err != nil {
		t.Fatal(err)
	}
	if m.CreatedAt.IsZero() {
		t.Error("CreateMembership did not set CreatedAt")
	}
	WantCode(t, s.CreateMembership(ctx, m), controlplane.ECONFLICT)
	WantCode(t, s.CreateMembership(ctx, &controlplane.Membership{TenantID: tn.ID, UserID: noPw.ID, Role: "root"}), controlplane.EINVALID)
	WantCode(t, s.CreateMembership(ctx, &controlplane.Membership{TenantID: "00000000-0000-0000-0000-000000000000", UserID: u.ID, Role: controlplane.RoleAdmin}), controlplane.ENOTFOUND)
	WantCode(t, s.CreateMembership(ctx, &controlplane.Membership{TenantID: tn.ID, UserID: "nope", Role: controlplane.RoleAdmin}), controlplane.ENOTFOUND)
}

func TestTx(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "tx")

	// Committed: both writes are there.
	err := s.Tx(ctx, func(tx controlplane.Store) error {
		f := MustFleet(t, tx, tn.ID, "committed")
		// A nested Tx reuses the transaction and sees its writes.
		return tx.Tx(ctx, func(inner controlplane.Store) error {
			_, err := inner.FindFleetBySlug(ctx, tn.ID, f.Slug)
			return err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.FindFleetBySlug(ctx, tn.ID, "committed"); err != nil {
		t.Errorf("committed fleet: %v", err)
	}

	// fn's error rolls everything back and comes back unchanged.
	boom := errors.New("boom")
	err = s.Tx(ctx, func(tx controlplane.Store) error {
		MustFleet(t, tx, tn.ID, "rolled-back")
		MustAuditEvent(t, tx, tn.ID, "fleet.create", "rolled-back")
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Tx error = %v, want boom", err)
	}
	_, err = s.FindFleetBySlug(ctx, tn.ID, "rolled-back")
	WantCode(t, err, controlplane.ENOTFOUND)
	evs, err := s.FindAuditEvents(ctx, tn.ID, controlplane.AuditFilter{})
	if err != nil || len(evs) != 0 {
		t.Fatalf("audit events after rollback: %v, %v", evs, err)
	}

	// A coded error from inside a transaction keeps its code.
	err = s.Tx(ctx, func(tx controlplane.Store) error {
		f := &controlplane.Fleet{TenantID: tn.ID, Slug: "committed", Name: "dup", Environment: "prod", Region: "europe"}
		return tx.CreateFleet(ctx, f)
	})
	WantCode(t, err, controlplane.ECONFLICT)
}

func TestAPIKeys(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "keys")
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)

	k := &controlplane.APIKey{ID: "abcdefghijklmnop", TenantID: tn.ID, Name: "ci", Role: controlplane.RoleMember,
		CreatedBy: "user:1", ExpiresAt: &exp}
	hash := hashOf("secret")
	if err := s.CreateAPIKey(ctx, k, hash); err != nil {
		t.Fatal(err)
	}
	if k.CreatedAt.IsZero() {
		t.Error("CreateAPIKey did not set CreatedAt")
	}
	WantCode(t, s.CreateAPIKey(ctx, k, hash), controlplane.ECONFLICT)
	bad := *k
	bad.ID = "ABCDEFGHIJKLMNOP"
	WantCode(t, s.CreateAPIKey(ctx, &bad, hash), controlplane.EINVALID)
	bad.ID = "bbcdefghijklmnop"
	WantCode(t, s.CreateAPIKey(ctx, &bad, []byte("short")), controlplane.EINVALID)
	bad.Role = controlplane.RoleOwner
	WantCode(t, s.CreateAPIKey(ctx, &bad, hash), controlplane.EINVALID)
	bad.Role, bad.TenantID = controlplane.RoleAdmin, "00000000-0000-0000-0000-000000000000"
	WantCode(t, s.CreateAPIKey(ctx, &bad, hash), controlplane.ENOTFOUND)

	got, gotHash, err := s.FindAPIKeyForAuth(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if string(gotHash) != string(hash) || got.TenantID != tn.ID || got.Role != controlplane.RoleMember ||
		got.ExpiresAt == nil || !got.ExpiresAt.Equal(exp) || got.LastUsedAt != nil || got.RevokedAt != nil {
		t.Errorf("FindAPIKeyForAuth = %+v, %x", got, gotHash)
	}
	_, _, err = s.FindAPIKeyForAuth(ctx, "zzzzzzzzzzzzzzzz")
	WantCode(t, err, controlplane.ENOTFOUND)

	// TouchAPIKey writes at most once a minute.
	t0 := time.Now().UTC().Truncate(time.Microsecond)
	for _, tc := range []struct {
		at   time.Time
		want time.Time
	}{
		{t0, t0},
		{t0.Add(30 * time.Second), t0},
		{t0.Add(61 * time.Second), t0.Add(61 * time.Second)},
		{t0.Add(90 * time.Second), t0.Add(61 * time.Second)},
	} {
		if err := s.TouchAPIKey(ctx, k.ID, tc.at); err != nil {
			t.Fatal(err)
		}
		got, err := s.FindAPIKeyByID(ctx, tn.ID, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.LastUsedAt == nil || !got.LastUsedAt.Equal(tc.want) {
			t.Errorf("after TouchAPIKey(%v): last used %v, want %v", tc.at, got.LastUsedAt, tc.want)
		}
	}
	if err := s.TouchAPIKey(ctx, "zzzzzzzzzzzzzzzz", t0); err != nil {
		t.Errorf("TouchAPIKey of a missing key: %v", err)
	}

	k2 := MustAPIKey(t, s, tn.ID, controlplane.RoleViewer)
	list, err := s.FindAPIKeys(ctx, tn.ID, controlplane.APIKeyFilter{})
	if err != nil || len(list) != 2 {
		t.Fatalf("FindAPIKeys = %v, %v", list, err)
	}
	if list[0].ID > list[1].ID {
		t.Errorf("FindAPIKeys not ordered by ID: %s, %s", list[0].ID, list[1].ID)
	}

	at := time.Now().UTC().Truncate(time.Microsecond)
	if err := s.RevokeAPIKey(ctx, tn.ID, k.ID, at); err != nil {
		t.Fatal(err)
	}
	WantCode(t, s.RevokeAPIKey(ctx, tn.ID, k.ID, at), controlplane.ENOTFOUND)
	WantCode(t, s.RevokeAPIKey(ctx, tn.ID, "zzzzzzzzzzzzzzzz", at), controlplane.ENOTFOUND)
	got, err = s.FindAPIKeyByID(ctx, tn.ID, k.ID)
	if err != nil || got.RevokedAt == nil || !got.RevokedAt.Equal(at) {
		t.Fatalf("revoked key: %+v, %v", got, err)
	}
	list, err = s.FindAPIKeys(ctx, tn.ID, controlplane.APIKeyFilter{})
	if err != nil || len(list) != 1 || list[0].ID != k2.ID {
		t.Errorf("FindAPIKeys without revoked = %v, %v", list, err)
	}
	list, err = s.FindAPIKeys(ctx, tn.ID, controlplane.APIKeyFilter{IncludeRevoked: true, Limit: 1})
	if err != nil || len(list) != 1 {
		t.Errorf("FindAPIKeys with revoked, limit 1 = %v, %v", list, err)
	}
	list, err = s.FindAPIKeys(ctx, tn.ID, controlplane.APIKeyFilter{IncludeRevoked: true, After: list[0].ID})
	if err != nil || len(list) != 1 {
		t.Errorf("FindAPIKeys second page = %v, %v", list, err)
	}
}

func TestFleets(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "fleets")

	f := &controlplane.Fleet{TenantID: tn.ID, Slug: "survey", Name: "Survey", Description: "mapping", Environment: "staging", Region: "americas"}
	if err := s.CreateFleet(ctx, f); err != nil {
		t.Fatal(err)
	}
	if f.ID == 0 || f.CreatedAt.IsZero() || f.UpdatedAt.IsZero() {
		t.Fatalf("CreateFleet did not set ID and times: %+v", f)
	}
	got, err := s.FindFleetBySlug(ctx, tn.ID, "survey")
	if err != nil {
		t.Fatal(err)
	}
	if *got != *f {
		t.Errorf("FindFleetBySlug = %+v, want %+v", got, f)
	}
	_, err = s.FindFleetBySlug(ctx, tn.ID, "nope")
	WantCode(t, err, controlplane.ENOTFOUND)
	WantCode(t, s.CreateFleet(ctx, &controlplane.Fleet{TenantID: tn.ID, Slug: "survey", Name: "again", Environment: "prod", Region: "europe"}), controlplane.ECONFLICT)
	WantCode(t, s.CreateFleet(ctx, &controlplane.Fleet{TenantID: "00000000-0000-0000-0000-000000000000", Slug: "x", Name: "x", Environment: "prod", Region: "europe"}), controlplane.ENOTFOUND)
	for _, bad := range []controlplane.Fleet{
		{Slug: "Bad", Name: "x", Environment: "prod", Region: "europe"},
		{Slug: "ok", Name: "x", Environment: "pr.od", Region: "europe"},
		{Slug: "ok", Name: "x", Environment: "prod", Region: "Europe"},
		{Slug: "ok", Name: "", Environment: "prod", Region: "europe"},
	} {
		bad.TenantID = tn.ID
		WantCode(t, s.CreateFleet(ctx, &bad), controlplane.EINVALID)
	}

	// Update: nil fields stay, set fields change, updated_at moves.
	time.Sleep(2 * time.Millisecond)
	up, err := s.UpdateFleet(ctx, tn.ID, f.ID, controlplane.FleetUpdate{Description: ptr("")})
	if err != nil {
		t.Fatal(err)
	}
	if up.Name != "Survey" || up.Description != "" || !up.UpdatedAt.After(f.UpdatedAt) || !up.CreatedAt.Equal(f.CreatedAt) {
		t.Errorf("UpdateFleet(description) = %+v", up)
	}
	up, err = s.UpdateFleet(ctx, tn.ID, f.ID, controlplane.FleetUpdate{Name: ptr("Survey 2")})
	if err != nil || up.Name != "Survey 2" || up.Description != "" {
		t.Errorf("UpdateFleet(name) = %+v, %v", up, err)
	}
	same, err := s.UpdateFleet(ctx, tn.ID, f.ID, controlplane.FleetUpdate{})
	if err != nil || *same != *up {
		t.Errorf("empty UpdateFleet = %+v, %v; want %+v", same, err, up)
	}
	_, err = s.UpdateFleet(ctx, tn.ID, f.ID+1000, controlplane.FleetUpdate{Name: ptr("x")})
	WantCode(t, err, controlplane.ENOTFOUND)
	_, err = s.UpdateFleet(ctx, tn.ID, f.ID, controlplane.FleetUpdate{Name: ptr("")})
	WantCode(t, err, controlplane.EINVALID)

	// VehicleCount counts the fleet's vehicles only.
	other := MustFleet(t, s, tn.ID, "other")
	MustVehicle(t, s, f, "v1", nil)
	MustVehicle(t, s, f, "v2", nil)
	MustVehicle(t, s, other, "v3", nil)
	fleets, err := s.FindFleets(ctx, tn.ID, controlplane.FleetFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(fleets) != 2 || fleets[0].Slug != "other" || fleets[0].VehicleCount != 1 || fleets[1].Slug != "survey" || fleets[1].VehicleCount != 2 {
		t.Errorf("FindFleets = %+v, %+v", fleets[0], fleets[1])
	}
	fleets, err = s.FindFleets(ctx, tn.ID, controlplane.FleetFilter{After: "other", Limit: 5})
	if err != nil || len(fleets) != 1 || fleets[0].Slug != "survey" {
		t.Errorf("FindFleets after other = %v, %v", fleets, err)
	}
	got, err = s.FindFleetBySlug(ctx, tn.ID, "survey")
	if err != nil || got.VehicleCount != 2 {
		t.Errorf("FindFleetBySlug VehicleCount = %v, %v", got, err)
	}
	up, err = s.UpdateFleet(ctx, tn.ID, f.ID, controlplane.FleetUpdate{Name: ptr("Survey 3")})
	if err != nil || up.VehicleCount != 2 {
		t.Errorf("UpdateFleet VehicleCount = %+v, %v", up, err)
	}

	// A fleet with vehicles cannot be deleted; an empty one can, once.
	WantCode(t, s.DeleteFleet(ctx, tn.ID, f.ID), controlplane.ECONFLICT)
	empty := MustFleet(t, s, tn.ID, "empty")
	if err := s.DeleteFleet(ctx, tn.ID, empty.ID); err != nil {
		t.Fatal(err)
	}
	WantCode(t, s.DeleteFleet(ctx, tn.ID, empty.ID), controlplane.ENOTFOUND)
}

func TestVehicles(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "vehicles")
	f := MustFleet(t, s, tn.ID, "drones")
	f2 := MustFleet(t, s, tn.ID, "rovers")

	seen := time.Now().UTC().Truncate(time.Microsecond)
	v := &controlplane.Vehicle{TenantID: tn.ID, FleetID: f.ID, VehicleID: "drone-1", Name: "Drone 1",
		Labels: map[string]string{"site": "north", "model": "x8"}, LastSeenAt: &seen}
	if err := s.CreateVehicle(ctx, v); err != nil {
		t.Fatal(err)
	}
	if v.ID == 0 || v.FleetSlug != "drones" || v.Status != controlplane.VehiclePending || v.CreatedAt.IsZero() {
		t.Fatalf("CreateVehicle did not fill the vehicle: %+v", v)
	}
	got, err := s.FindVehicle(ctx, tn.ID, f.ID, "drone-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != v.ID || got.FleetSlug != "drones" || !maps.Equal(got.Labels, v.Labels) || got.Status != v.Status ||
		got.EnrolledAt != nil || got.LastSeenAt == nil || !got.LastSeenAt.Equal(seen) || !got.CreatedAt.Equal(v.CreatedAt) {
		t.Errorf("FindVehicle = %+v, want %+v", got, v)
	}
	_, err = s.FindVehicle(ctx, tn.ID, f2.ID, "drone-1")
	WantCode(t, err, controlplane.ENOTFOUND)
	_, err = s.FindVehicle(ctx, tn.ID, f.ID, "drone-2")
	WantCode(t, err, controlplane.ENOTFOUND)

	// Vehicle IDs are unique per tenant, across fleets.
	dup := &controlplane.Vehicle{TenantID: tn.ID, FleetID: f2.ID, VehicleID: "drone-1", Name: "dup"}
	WantCode(t, s.CreateVehicle(ctx, dup), controlplane.ECONFLICT)
	WantCode(t, s.CreateVehicle(ctx, &controlplane.Vehicle{TenantID: tn.ID, FleetID: f.ID + 1000, VehicleID: "x", Name: "x"}), controlplane.ENOTFOUND)
	WantCode(t, s.CreateVehicle(ctx, &controlplane.Vehicle{TenantID: tn.ID, FleetID: f.ID, VehicleID: "a.b", Name: "x"}), controlplane.EINVALID)
	WantCode(t, s.CreateVehicle(ctx, &controlplane.Vehicle{TenantID: tn.ID, FleetID: f.ID, VehicleID: "ok", Name: "x", Status: "lost"}), controlplane.EINVALID)

	// Nil labels are stored as {} and read back as an empty map.
	bare := MustVehicle(t, s, f2, "rover-1", nil)
	if bare.Labels == nil || len(bare.Labels) != 0 {
		t.Errorf("labels of a vehicle created without: %#v", bare.Labels)
	}

	n, err := s.CountVehicles(ctx, tn.ID)
	if err != nil || n != 2 {
		t.Errorf("CountVehicles = %d, %v; want 2", n, err)
	}

	// UpdateVehicle: each field alone, labels replaced, FleetSlug kept.
	time.Sleep(2 * time.Millisecond)
	up, err := s.UpdateVehicle(ctx, tn.ID, v.ID, controlplane.VehicleChange{Name: ptr("Drone One")})
	if err != nil {
		t.Fatal(err)
	}
	if up.Name != "Drone One" || !maps.Equal(up.Labels, v.Labels) || up.FleetSlug != "drones" || !up.UpdatedAt.After(v.UpdatedAt) {
		t.Errorf("UpdateVehicle(name) = %+v", up)
	}
	up, err = s.UpdateVehicle(ctx, tn.ID, v.ID, controlplane.VehicleChange{Labels: ptr(map[string]string{"site": "south"})})
	if err != nil || !maps.Equal(up.Labels, map[string]string{"site": "south"}) || up.Name != "Drone One" {
		t.Errorf("UpdateVehicle(labels) = %+v, %v", up, err)
	}
	up, err = s.UpdateVehicle(ctx, tn.ID, v.ID, controlplane.VehicleChange{Labels: ptr(map[string]string(nil))})
	if err != nil || up.Labels == nil || len(up.Labels) != 0 {
		t.Errorf("UpdateVehicle(nil labels) = %+v, %v", up, err)
	}
	up, err = s.UpdateVehicle(ctx, tn.ID, v.ID, controlplane.VehicleChange{Status: ptr(controlplane.VehicleDisabled)})
	if err != nil || up.Status != controlplane.VehicleDisabled || up.Name != "Drone One" {
		t.Errorf("UpdateVehicle(status) = %+v, %v", up, err)
	}
	same, err := s.UpdateVehicle(ctx, tn.ID, v.ID, controlplane.VehicleChange{})
	if err != nil || same.UpdatedAt != up.UpdatedAt || same.Status != up.Status {
		t.Errorf("empty UpdateVehicle = %+v, %v", same, err)
	}
	_, err = s.UpdateVehicle(ctx, tn.ID, v.ID, controlplane.VehicleChange{Status: ptr(controlplane.VehicleStatus("lost"))})
	WantCode(t, err, controlplane.EINVALID)
	_, err = s.UpdateVehicle(ctx, tn.ID, v.ID+1000, controlplane.VehicleChange{Name: ptr("x")})
	WantCode(t, err, controlplane.ENOTFOUND)
	_, err = s.UpdateVehicle(ctx, tn.ID, v.ID+1000, controlplane.VehicleChange{})
	WantCode(t, err, controlplane.ENOTFOUND)

	if err := s.DeleteVehicle(ctx, tn.ID, v.ID); err != nil {
		t.Fatal(err)
	}
	WantCode(t, s.DeleteVehicle(ctx, tn.ID, v.ID), controlplane.ENOTFOUND)
	n, err = s.CountVehicles(ctx, tn.ID)
	if err != nil || n != 1 {
		t.Errorf("CountVehicles after delete = %d, %v; want 1", n, err)
	}
}

func TestFindVehiclesFilters(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "filters")
	a := MustFleet(t, s, tn.ID, "a")
	b := MustFleet(t, s, tn.ID, "b")
	// IDs chosen so that bytewise order differs from a case-insensitive
	// one, and so that '_' in a prefix must match literally.
	MustVehicle(t, s, a, "Zeta", map[string]string{"site": "north"})
	MustVehicle(t, s, a, "alpha", map[string]string{"site": "north", "model": "x8"})
	MustVehicle(t, s, a, "al_1", map[string]string{"site": "south"})
	MustVehicle(t, s, a, "alx1", nil)
	MustVehicle(t, s, b, "al-2", map[string]string{"site": "north"})
	dis := MustVehicle(t, s, b, "beta", nil)
	if _, err := s.UpdateVehicle(ctx, tn.ID, dis.ID, controlplane.VehicleChange{Status: ptr(controlplane.VehicleDisabled)}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		f    controlplane.VehicleFilter
		want []string
	}{
		{"all, bytewise", controlplane.VehicleFilter{}, []string{"Zeta", "al-2", "al_1", "alpha", "alx1", "beta"}},
		{"fleet", controlplane.VehicleFilter{FleetID: &a.ID}, []string{"Zeta", "al_1", "alpha", "alx1"}},
		{"status", controlplane.VehicleFilter{Status: ptr(controlplane.VehicleDisabled)}, []string{"beta"}},
		{"prefix", controlplane.VehicleFilter{VehicleIDPrefix: ptr("al")}, []string{"al-2", "al_1", "alpha", "alx1"}},
		{"prefix with underscore", controlplane.VehicleFilter{VehicleIDPrefix: ptr("al_")}, []string{"al_1"}},
		{"prefix is case-sensitive", controlplane.VehicleFilter{VehicleIDPrefix: ptr("z")}, nil},
		{"whole ID as prefix", controlplane.VehicleFilter{VehicleIDPrefix: ptr("alpha")}, []string{"alpha"}},
		{"empty prefix", controlplane.VehicleFilter{VehicleIDPrefix: ptr("")}, []string{"Zeta", "al-2", "al_1", "alpha", "alx1", "beta"}},
		{"label", controlplane.VehicleFilter{Label: &controlplane.LabelSelector{Key: "site", Value: "north"}}, []string{"Zeta", "al-2", "alpha"}},
		{"label no match", controlplane.VehicleFilter{Label: &controlplane.LabelSelector{Key: "site", Value: "nort"}}, nil},
		{"fleet+label", controlplane.VehicleFilter{FleetID: &b.ID, Label: &controlplane.LabelSelector{Key: "site", Value: "north"}}, []string{"al-2"}},
		{"after", controlplane.VehicleFilter{After: "alpha"}, []string{"alx1", "beta"}},
		{"prefix+after+limit", controlplane.VehicleFilter{VehicleIDPrefix: ptr("al"), After: "al-2", Limit: 2}, []string{"al_1", "alpha"}},
		{"limit", controlplane.VehicleFilter{Limit: 1}, []string{"Zeta"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vs, err := s.FindVehicles(ctx, tn.ID, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if vs == nil {
				t.Fatal("FindVehicles returned a nil slice")
			}
			if got := vehicleIDs(vs); !eq(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			for _, v := range vs {
				if v.FleetSlug == "" || v.TenantID != tn.ID {
					t.Errorf("%s: FleetSlug %q, TenantID %q", v.VehicleID, v.FleetSlug, v.TenantID)
				}
			}
		})
	}
}

// TestPagination walks three pages of each list the way the service does:
// fetch limit+1, continue after the last item shown.
func TestPagination(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "pages")
	f := MustFleet(t, s, tn.ID, "f")
	var want []string
	for _, id := range []string{"v07", "v03", "v01", "V10", "v05", "v02", "v06", "v04"} {
		MustVehicle(t, s, f, id, nil)
	}
	want = []string{"V10", "v01", "v02", "v03", "v04", "v05", "v06", "v07"}

	const limit = 3
	var got []string
	after := ""
	for page := 1; ; page++ {
		vs, err := s.FindVehicles(ctx, tn.ID, controlplane.VehicleFilter{FleetID: &f.ID, After: after, Limit: limit + 1})
		if err != nil {
			t.Fatal(err)
		}
		more := len(vs) > limit
		if more {
			vs = vs[:limit]
		}
		got = append(got, vehicleIDs(vs)...)
		if !more {
			if page != 3 {
				t.Errorf("%d pages, want 3", page)
			}
			break
		}
		after = vs[len(vs)-1].VehicleID
	}
	if !eq(got, want) {
		t.Errorf("pages = %v, want %v", got, want)
	}

	// Audit events: newest first, Before = last ID of the previous page.
	var evIDs []int64
	for i := range 7 {
		evIDs = append(evIDs, MustAuditEvent(t, s, tn.ID, "fleet.update", string(rune('a'+i))).ID)
	}
	var gotEv []int64
	before := int64(0)
	for page := 1; page <= 4; page++ {
		evs, err := s.FindAuditEvents(ctx, tn.ID, controlplane.AuditFilter{Before: before, Limit: limit})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			if page != 4 {
				t.Errorf("audit: ran out at page %d", page)
			}
			break
		}
		for _, e := range evs {
			gotEv = append(gotEv, e.ID)
		}
		before = evs[len(evs)-1].ID
	}
	if len(gotEv) != 7 {
		t.Fatalf("audit pages = %v", gotEv)
	}
	for i, id := range gotEv {
		if id != evIDs[len(evIDs)-1-i] {
			t.Fatalf("audit pages = %v, want %v reversed", gotEv, evIDs)
		}
	}
}

func TestAuditEvents(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "audit")

	e := MustAuditEvent(t, s, tn.ID, "fleet.create", "survey")
	if e.ID == 0 || e.At.IsZero() {
		t.Fatalf("CreateAuditEvent did not set ID and At: %+v", e)
	}
	old := &controlplane.AuditEvent{TenantID: tn.ID, At: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), ActorType: "user",
		ActorID: "u1", Action: "vehicle.delete", TargetType: "vehicle", TargetID: "drone-1"}
	if err := s.CreateAuditEvent(ctx, old); err != nil {
		t.Fatal(err)
	}
	if !old.At.Equal(time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("At set by the caller was replaced: %v", old.At)
	}
	MustAuditEvent(t, s, tn.ID, "fleet.update", "survey")
	WantCode(t, s.CreateAuditEvent(ctx, &controlplane.AuditEvent{TenantID: tn.ID, ActorType: "robot", Action: "x"}), controlplane.EINVALID)
	WantCode(t, s.CreateAuditEvent(ctx, &controlplane.AuditEvent{TenantID: "00000000-0000-0000-0000-000000000000", ActorType: "system", Action: "x"}), controlplane.ENOTFOUND)

	all, err := s.FindAuditEvents(ctx, tn.ID, controlplane.AuditFilter{})
	if err != nil || len(all) != 3 {
		t.Fatalf("FindAuditEvents = %v, %v", all, err)
	}
	got := all[2]
	if got.ID != e.ID || !sameTime(got.At, e.At) || got.ActorType != "system" || got.ActorID != "test" || got.Action != "fleet.create" ||
		got.TargetType != "fleet" || got.TargetID != "survey" || got.SourceIP != "192.0.2.1" || got.RequestID != "req-1" ||
		got.Details["n"] != float64(1) || got.TenantID != tn.ID {
		t.Errorf("stored event = %+v, want %+v", got, e)
	}
	if all[1].Details != nil {
		t.Errorf("nil Details read back as %#v", all[1].Details)
	}

	cut := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		f    controlplane.AuditFilter
		want []string // actions, newest first
	}{
		{"all", controlplane.AuditFilter{}, []string{"fleet.update", "vehicle.delete", "fleet.create"}},
		{"action", controlplane.AuditFilter{Action: ptr("fleet.create")}, []string{"fleet.create"}},
		{"target type", controlplane.AuditFilter{TargetType: ptr("vehicle")}, []string{"vehicle.delete"}},
		{"target id", controlplane.AuditFilter{TargetID: ptr("survey")}, []string{"fleet.update", "fleet.create"}},
		{"since", controlplane.AuditFilter{Since: &cut}, []string{"fleet.update", "fleet.create"}},
		{"until", controlplane.AuditFilter{Until: &cut}, []string{"vehicle.delete"}},
		{"since is inclusive", controlplane.AuditFilter{Since: &old.At, Until: &cut}, []string{"vehicle.delete"}},
		{"until is exclusive", controlplane.AuditFilter{Until: &old.At}, nil},
		{"before", controlplane.AuditFilter{Before: all[0].ID}, []string{"vehicle.delete", "fleet.create"}},
		{"limit", controlplane.AuditFilter{Limit: 1}, []string{"fleet.update"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs, err := s.FindAuditEvents(ctx, tn.ID, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if evs == nil {
				t.Fatal("nil slice")
			}
			if got := ids(evs, func(e *controlplane.AuditEvent) string { return e.Action }); !eq(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestErrorsAreCoded(t *testing.T) {
	t.Parallel()
	// A cancelled context is not a database answer: it must not pass for
	// "not found".
	s, _ := MustStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.FindTenantByID(ctx, "00000000-0000-0000-0000-000000000000")
	if err == nil || controlplane.ErrorCode(err) != controlplane.EINTERNAL {
		t.Errorf("cancelled FindTenantByID: %v (code %q)", err, controlplane.ErrorCode(err))
	}
	var _ controlplane.Store = postgres.NewStore(nil)
}
