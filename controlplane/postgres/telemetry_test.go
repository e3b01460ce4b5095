package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
)

func TestTenantStreams(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	a, b := MustTenant(t, s, "a"), MustTenant(t, s, "b")

	if got, err := s.FindTenantStreams(ctx, a.ID); err != nil || len(got) != 0 {
		t.Fatalf("before any: %v, %v", got, err)
	}
	ts := &controlplane.TenantStream{TenantID: a.ID, Region: "europe", Stream: controlplane.TwinStream, ConfigHash: "h1",
		Replicas: 3, MaxAge: 7 * 24 * time.Hour, MaxBytes: 1 << 28, Duplicates: 15 * time.Minute}
	if err := s.SetTenantStream(ctx, ts); err != nil {
		t.Fatal(err)
	}
	if ts.ProvisionedAt.IsZero() || ts.UpdatedAt.Before(ts.ProvisionedAt) {
		t.Fatalf("times = %v, %v", ts.ProvisionedAt, ts.UpdatedAt)
	}
	first := ts.ProvisionedAt
	other := &controlplane.TenantStream{TenantID: b.ID, Region: "europe", Stream: "TWIN", ConfigHash: "hb",
		Replicas: 1, MaxBytes: -1}
	if err := s.SetTenantStream(ctx, other); err != nil {
		t.Fatal(err)
	}

	// An update replaces every field but the first provisioning time.
	up := &controlplane.TenantStream{TenantID: a.ID, Region: "europe", Stream: controlplane.TwinStream, ConfigHash: "h2",
		Replicas: 1, MaxAge: time.Hour, MaxBytes: -1, Duplicates: 2 * time.Minute}
	if err := s.SetTenantStream(ctx, up); err != nil {
		t.Fatal(err)
	}
	if !sameTime(up.ProvisionedAt, first) {
		t.Fatalf("provisioned_at moved: %v → %v", first, up.ProvisionedAt)
	}
	if err := s.SetTenantStream(ctx, &controlplane.TenantStream{TenantID: a.ID, Region: "americas", Stream: "TWIN",
		ConfigHash: "h2", Replicas: 3, MaxBytes: 10}); err != nil {
		t.Fatal(err)
	}
	got, err := s.FindTenantStreams(ctx, a.ID)
	if err != nil || len(got) != 2 || got[0].Region != "americas" || got[1].Region != "europe" {
		t.Fatalf("FindTenantStreams = %v, %v", got, err)
	}
	e := got[1]
	if e.ConfigHash != "h2" || e.Replicas != 1 || e.MaxAge != time.Hour || e.MaxBytes != -1 || e.Duplicates != 2*time.Minute ||
		!sameTime(e.ProvisionedAt, first) {
		t.Fatalf("europe = %+v", e)
	}
	// Tenant scope: B sees only its own.
	if got, err := s.FindTenantStreams(ctx, b.ID); err != nil || len(got) != 1 || got[0].ConfigHash != "hb" {
		t.Fatalf("B's streams = %v, %v", got, err)
	}

	for name, bad := range map[string]*controlplane.TenantStream{
		"replicas":  {TenantID: a.ID, Region: "x", Stream: "TWIN", ConfigHash: "h", Replicas: 0},
		"region":    {TenantID: a.ID, Region: "Not A Region", Stream: "TWIN", ConfigHash: "h", Replicas: 1},
		"stream":    {TenantID: a.ID, Region: "x", Stream: "A.B", ConfigHash: "h", Replicas: 1},
		"hash":      {TenantID: a.ID, Region: "x", Stream: "TWIN", Replicas: 1},
		"max_bytes": {TenantID: a.ID, Region: "x", Stream: "TWIN", ConfigHash: "h", Replicas: 1, MaxBytes: -2},
	} {
		t.Run(name, func(t *testing.T) { WantCode(t, s.SetTenantStream(ctx, bad), controlplane.EINVALID) })
	}
	WantCode(t, s.SetTenantStream(ctx, &controlplane.TenantStream{TenantID: "00000000-0000-0000-0000-000000000000",
		Region: "x", Stream: "TWIN", ConfigHash: "h", Replicas: 1}), controlplane.ENOTFOUND)
	WantCode(t, s.SetTenantStream(ctx, &controlplane.TenantStream{TenantID: "not-a-uuid",
		Region: "x", Stream: "TWIN", ConfigHash: "h", Replicas: 1}), controlplane.ENOTFOUND)
}

func TestFleetRegionsAndVehicleIDs(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	a, b := MustTenant(t, s, "a"), MustTenant(t, s, "b")
	if rs, err := s.FindFleetRegions(ctx, a.ID); err != nil || len(rs) != 0 {
		t.Fatalf("no fleets: %v, %v", rs, err)
	}
	f := MustFleet(t, s, a.ID, "one") // europe
	MustFleet(t, s, a.ID, "two")
	am := &controlplane.Fleet{TenantID: a.ID, Slug: "three", Name: "three", Environment: "prod", Region: "americas"}
	if err := s.CreateFleet(ctx, am); err != nil {
		t.Fatal(err)
	}
	bf := MustFleet(t, s, b.ID, "one")
	bam := &controlplane.Fleet{TenantID: b.ID, Slug: "asia", Name: "asia", Environment: "prod", Region: "asia"}
	if err := s.CreateFleet(ctx, bam); err != nil {
		t.Fatal(err)
	}
	if rs, err := s.FindFleetRegions(ctx, a.ID); err != nil || !eq(rs, []string{"americas", "europe"}) {
		t.Fatalf("FindFleetRegions = %v, %v", rs, err)
	}

	for _, vid := range []string{"b", "A", "a", "C-1", "c_2"} {
		MustVehicle(t, s, f, vid, nil)
	}
	MustVehicle(t, s, am, "other-fleet", nil)
	MustVehicle(t, s, bf, "in-b", nil)
	all, err := s.FindVehicleIDs(ctx, a.ID, f.ID, "", 100)
	if err != nil || !eq(all, []string{"A", "C-1", "a", "b", "c_2"}) { // bytewise order (COLLATE "C")
		t.Fatalf("FindVehicleIDs = %v, %v", all, err)
	}
	page, err := s.FindVehicleIDs(ctx, a.ID, f.ID, "C-1", 2)
	if err != nil || !eq(page, []string{"a", "b"}) {
		t.Fatalf("page after C-1 = %v, %v", page, err)
	}
	// Tenant scope: A's scope with B's fleet ID finds nothing.
	if ids, err := s.FindVehicleIDs(ctx, a.ID, bf.ID, "", 100); err != nil || len(ids) != 0 {
		t.Fatalf("A reading B's fleet: %v, %v", ids, err)
	}
}
