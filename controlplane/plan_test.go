package controlplane_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/password"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// planService is MustService that also returns its store.
func planService(tb testing.TB) (*controlplane.Service, *postgres.Store) {
	tb.Helper()
	store := postgres.NewStore(pgtest.NewPool(tb))
	return controlplane.NewService(store, controlplane.Config{
		Regions:        []controlplane.Region{{Name: "europe"}},
		PasswordParams: password.Params{Memory: 64, Time: 1, Threads: 1},
		Issuer:         mustIssuer(tb, nil),
		PublicURL:      "https://fleet.example",
	}, nil), store
}

func planTenant(tb testing.TB, svc *controlplane.Service, org string) (context.Context, string) {
	tb.Helper()
	ctx, res := MustSignup(tb, svc, org, strings.ToLower(org)+"@example.com")
	if _, err := svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: "drones", Environment: "prod"}); err != nil {
		tb.Fatal(err)
	}
	return ctx, res.Tenant.ID
}

func createVehicles(tb testing.TB, svc *controlplane.Service, ctx context.Context, from, n int) {
	tb.Helper()
	for i := from; i < from+n; i++ {
		if _, err := svc.CreateVehicle(ctx, "drones", controlplane.VehicleCreate{VehicleID: fmt.Sprintf("V%02d", i)}); err != nil {
			tb.Fatalf("CreateVehicle(V%02d): %v", i, err)
		}
	}
}

func vehicleCount(tb testing.TB, svc *controlplane.Service, ctx context.Context) int {
	tb.Helper()
	page, err := svc.Vehicles(ctx, "drones", controlplane.VehicleQuery{PageRequest: controlplane.PageRequest{Limit: 100}})
	if err != nil {
		tb.Fatal(err)
	}
	return len(page.Items)
}

func TestFreePlanVehicleLimit(t *testing.T) {
	t.Parallel()
	svc, _ := planService(t)
	ctx, _ := planTenant(t, svc, "Acme")
	createVehicles(t, svc, ctx, 0, controlplane.FreeVehicleLimit)

	_, err := svc.CreateVehicle(ctx, "drones", controlplane.VehicleCreate{VehicleID: "V10"})
	WantCode(t, err, controlplane.EPAYMENTREQUIRED)
	if msg := err.Error(); !strings.Contains(msg, "at most 10 vehicles") || !strings.Contains(msg, "https://fleet.example/billing") {
		t.Errorf("402 detail = %q", msg)
	}
	// Enrolling a new vehicle is refused too; a pre-registered one enrolls.
	exp := time.Now().Add(time.Hour)
	tok, err := svc.CreateEnrollmentToken(ctx, "drones", controlplane.EnrollmentTokenCreate{ExpiresAt: &exp, MaxUses: 5})
	if err != nil {
		t.Fatal(err)
	}
	_, err = svc.Enroll(context.Background(), controlplane.EnrollRequest{Token: tok.Secret, PublicKey: newVehicleKey(t).pub, VehicleID: "V10"})
	WantCode(t, err, controlplane.EPAYMENTREQUIRED)
	if _, err := svc.Enroll(context.Background(), controlplane.EnrollRequest{Token: tok.Secret, PublicKey: newVehicleKey(t).pub, VehicleID: "V03"}); err != nil {
		t.Fatalf("enrolling a registered vehicle: %v", err)
	}
	if n := vehicleCount(t, svc, ctx); n != controlplane.FreeVehicleLimit {
		t.Fatalf("%d vehicles after the refusals, want %d", n, controlplane.FreeVehicleLimit)
	}
}

// TestFreePlanVehicleLimitConcurrent: creates racing at 9 vehicles cannot
// both pass (the tenant row is locked for the count).
func TestFreePlanVehicleLimitConcurrent(t *testing.T) {
	t.Parallel()
	svc, _ := planService(t)
	ctx, _ := planTenant(t, svc, "Acme")
	createVehicles(t, svc, ctx, 0, controlplane.FreeVehicleLimit-1)
	const racers = 8
	var wg sync.WaitGroup
	errs := make([]error, racers)
	start := make(chan struct{})
	for i := range racers {
		wg.Go(func() {
			<-start
			_, errs[i] = svc.CreateVehicle(ctx, "drones", controlplane.VehicleCreate{VehicleID: fmt.Sprintf("R%02d", i)})
		})
	}
	close(start)
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case controlplane.ErrorCode(err) != controlplane.EPAYMENTREQUIRED:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d concurrent creates succeeded, want 1", ok)
	}
	if n := vehicleCount(t, svc, ctx); n != controlplane.FreeVehicleLimit {
		t.Fatalf("%d vehicles, want %d", n, controlplane.FreeVehicleLimit)
	}
}

func TestFreePlanGrantLimit(t *testing.T) {
	t.Parallel()
	svc, _ := planService(t)
	ctx, _ := planTenant(t, svc, "Acme")
	exp := time.Now().Add(time.Hour)
	in := controlplane.GrantCreate{Subscribe: []string{"fleet.prod.>"}, ExpiresAt: &exp}
	for i := range controlplane.FreeGrantLimit {
		if _, err := svc.CreateGrant(ctx, in); err != nil {
			t.Fatalf("grant %d: %v", i, err)
		}
	}
	_, err := svc.CreateGrant(ctx, in)
	WantCode(t, err, controlplane.EPAYMENTREQUIRED)
	// A dry run is a preview: not counted, not refused.
	in.DryRun = true
	if _, err := svc.CreateGrant(ctx, in); err != nil {
		t.Fatalf("dry run: %v", err)
	}
}

func TestChangePlanDowngradeGrace(t *testing.T) {
	t.Parallel()
	svc, store := planService(t)
	ctx, tid := planTenant(t, svc, "Acme")
	bg := context.Background()
	account := func() *controlplane.Account {
		t.Helper()
		a, err := store.FindAccount(bg, tid, false)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	v0 := account().Version
	if l := account().Limits.LeafNodeConn; l != controlplane.FreeVehicleLimit {
		t.Fatalf("free account leaf limit %d", l)
	}

	tn, err := svc.ChangePlan(bg, tid, controlplane.PlanScale)
	if err != nil || tn.Plan != controlplane.PlanScale || tn.GraceUntil != nil {
		t.Fatalf("ChangePlan(scale) = %+v, %v", tn, err)
	}
	if a := account(); a.Version != v0+1 || a.Limits != controlplane.DefaultPlanLimits(controlplane.PlanScale) {
		t.Fatalf("scale account: version %d (was %d), limits %+v", a.Version, v0, a.Limits)
	}
	createVehicles(t, svc, ctx, 0, 12)

	now := time.Now()
	tn, err = svc.ChangePlan(bg, tid, controlplane.PlanFree)
	if err != nil {
		t.Fatal(err)
	}
	if tn.GracePlan != controlplane.PlanScale || tn.GraceUntil == nil ||
		tn.GraceUntil.Sub(now) < controlplane.DefaultPlanGrace-time.Minute || tn.GraceUntil.Sub(now) > controlplane.DefaultPlanGrace+time.Minute {
		t.Fatalf("downgrade grace: %+v", tn)
	}
	a := account()
	if a.Version != v0+2 || a.Limits.LeafNodeConn != natsauth.NoLimit || a.Limits.Conn != controlplane.DefaultPlanLimits(controlplane.PlanFree).Conn {
		t.Fatalf("account in grace: version %d, limits %+v", a.Version, a.Limits)
	}
	_, err = svc.CreateVehicle(ctx, "drones", controlplane.VehicleCreate{VehicleID: "V12"})
	WantCode(t, err, controlplane.EPAYMENTREQUIRED)

	// Before the grace ends nothing changes; after it, the free limit.
	if n, err := svc.ApplyPlanGraceExpiry(bg); err != nil || n != 0 {
		t.Fatalf("ApplyPlanGraceExpiry during the grace = %d, %v", n, err)
	}
	controlplane.SetNow(svc, func() time.Time { return time.Now().Add(controlplane.DefaultPlanGrace + time.Hour) })
	if n, err := svc.ApplyPlanGraceExpiry(bg); err != nil || n != 1 {
		t.Fatalf("ApplyPlanGraceExpiry after the grace = %d, %v", n, err)
	}
	controlplane.SetNow(svc, time.Now)
	if a := account(); a.Version != v0+3 || a.Limits != controlplane.DefaultPlanLimits(controlplane.PlanFree) {
		t.Fatalf("account after the grace: version %d, limits %+v", a.Version, a.Limits)
	}
	if tn, err := svc.Tenant(ctx); err != nil || tn.GraceUntil != nil || tn.GracePlan != "" || tn.Plan != controlplane.PlanFree {
		t.Fatalf("tenant after the grace: %+v, %v", tn, err)
	}
	if n, err := svc.ApplyPlanGraceExpiry(bg); err != nil || n != 0 {
		t.Fatalf("second ApplyPlanGraceExpiry = %d, %v", n, err)
	}

	// A downgrade within the limit has no grace; an upgrade clears one.
	svc2, _ := planService(t)
	_, tid2 := planTenant(t, svc2, "Beta")
	if _, err := svc2.ChangePlan(bg, tid2, controlplane.PlanScale); err != nil {
		t.Fatal(err)
	}
	if tn, err := svc2.ChangePlan(bg, tid2, controlplane.PlanFree); err != nil || tn.GraceUntil != nil {
		t.Fatalf("downgrade with no surplus: %+v, %v", tn, err)
	}
	_, err = svc.ChangePlan(bg, tid, "gold")
	WantCode(t, err, controlplane.EINVALID)
	_, err = svc.ChangePlan(bg, "00000000-0000-0000-0000-000000000000", controlplane.PlanScale)
	WantCode(t, err, controlplane.ENOTFOUND)
}
