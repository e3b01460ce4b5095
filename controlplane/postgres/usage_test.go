package postgres_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
)

func utcDay(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// usageOf returns a tenant's usage of one day (zero when it has none).
func usageOf(tb testing.TB, s *postgres.Store, tenantID string, day time.Time) controlplane.UsageDay {
	tb.Helper()
	days, err := s.FindUsageDays(context.Background(), tenantID, day, day.AddDate(0, 0, 1))
	if err != nil {
		tb.Fatalf("FindUsageDays: %v", err)
	}
	switch len(days) {
	case 0:
		return controlplane.UsageDay{Day: day}
	case 1:
		if !days[0].Day.Equal(day) {
			tb.Fatalf("FindUsageDays(%s) returned day %s", day, days[0].Day)
		}
		return days[0]
	}
	tb.Fatalf("FindUsageDays of one day: %+v", days)
	return controlplane.UsageDay{}
}

func sample(tb testing.TB, s *postgres.Store, day time.Time, wantTenants, wantAdded int) {
	tb.Helper()
	n, added, err := s.SampleVehicleDays(context.Background(), day)
	if err != nil || n != wantTenants || added != wantAdded {
		tb.Fatalf("SampleVehicleDays(%s) = %d tenants, %d added, %v; want %d, %d", day.Format(time.DateOnly), n, added, err, wantTenants, wantAdded)
	}
}

func setOnline(tb testing.TB, pool *pgxpool.Pool, tenantID, vid string, online bool) {
	tb.Helper()
	if online {
		MustExec(tb, pool, `UPDATE vehicles SET online = true, hub_node = 'hub-1', presence_conn_id = 1, presence_conn_start = now()
			WHERE tenant_id = $1 AND vehicle_id = $2`, tenantID, vid)
	} else {
		MustExec(tb, pool, `UPDATE vehicles SET online = false WHERE tenant_id = $1 AND vehicle_id = $2`, tenantID, vid)
	}
}

func setPlan(tb testing.TB, s *postgres.Store, t *controlplane.Tenant, plan string) {
	tb.Helper()
	t.Plan = plan
	if err := s.UpdateTenantPlan(context.Background(), t); err != nil {
		tb.Fatal(err)
	}
}

func wantDay(tb testing.TB, got controlplane.UsageDay, plan string, registered, online int) {
	tb.Helper()
	if got.Plan != plan || got.VehiclesRegistered != registered || got.VehiclesOnline != online {
		tb.Fatalf("%s: plan %q, %d registered, %d online; want %q, %d, %d", got.Day.Format(time.DateOnly),
			got.Plan, got.VehiclesRegistered, got.VehiclesOnline, plan, registered, online)
	}
}

func TestSampleVehicleDays(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()
	a, b := MustTenant(t, s, "acme"), MustTenant(t, s, "globex")
	fa, fb := MustFleet(t, s, a.ID, "drones"), MustFleet(t, s, b.ID, "drones")
	for _, vid := range []string{"v1", "v2", "v3"} {
		MustVehicle(t, s, fa, vid, nil)
	}
	MustVehicle(t, s, fb, "w1", nil)
	v3, err := s.FindVehicle(ctx, a.ID, fa.ID, "v3")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateVehicle(ctx, a.ID, v3.ID, controlplane.VehicleChange{Status: ptr(controlplane.VehicleRevoked)}); err != nil {
		t.Fatal(err)
	}
	setOnline(t, pool, a.ID, "v1", true)

	// Days away from today (creation records today's vehicle-days).
	d1 := time.Date(2031, 3, 31, 0, 0, 0, 0, time.UTC)
	d2 := d1.AddDate(0, 0, 1)

	// Revoked vehicles are not billed; re-runs add nothing.
	sample(t, s, d1, 2, 3)
	sample(t, s, d1, 2, 0)
	sample(t, s, d1.Add(13*time.Hour), 2, 0) // any time of the day is the day
	wantDay(t, usageOf(t, s, a.ID, d1), controlplane.PlanFree, 2, 1)
	wantDay(t, usageOf(t, s, b.ID, d1), controlplane.PlanFree, 1, 0)

	// Online only turns true within a day.
	setOnline(t, pool, a.ID, "v1", false)
	setOnline(t, pool, a.ID, "v2", true)
	sample(t, s, d1, 2, 0)
	wantDay(t, usageOf(t, s, a.ID, d1), controlplane.PlanFree, 2, 2)
	setOnline(t, pool, a.ID, "v2", false)
	sample(t, s, d1, 2, 0)
	wantDay(t, usageOf(t, s, a.ID, d1), controlplane.PlanFree, 2, 2)

	// Scale wins within a day; the next day starts with the plan of then.
	setPlan(t, s, a, controlplane.PlanScale)
	sample(t, s, d1, 2, 0)
	wantDay(t, usageOf(t, s, a.ID, d1), controlplane.PlanScale, 2, 2)
	setPlan(t, s, a, controlplane.PlanFree)
	sample(t, s, d1, 2, 0)
	wantDay(t, usageOf(t, s, a.ID, d1), controlplane.PlanScale, 2, 2)
	wantDay(t, usageOf(t, s, b.ID, d1), controlplane.PlanFree, 1, 0)

	// A vehicle revoked before the next day is not billed for it; the day
	// it was registered keeps it. A deleted vehicle's day stays too.
	v2, err := s.FindVehicle(ctx, a.ID, fa.ID, "v2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateVehicle(ctx, a.ID, v2.ID, controlplane.VehicleChange{Status: ptr(controlplane.VehicleRevoked)}); err != nil {
		t.Fatal(err)
	}
	sample(t, s, d2, 2, 2) // v1, w1
	wantDay(t, usageOf(t, s, a.ID, d2), controlplane.PlanFree, 1, 0)
	wantDay(t, usageOf(t, s, a.ID, d1), controlplane.PlanScale, 2, 2)
	w1, _ := s.FindVehicle(ctx, b.ID, fb.ID, "w1")
	if err := s.DeleteVehicle(ctx, b.ID, w1.ID); err != nil {
		t.Fatal(err)
	}
	wantDay(t, usageOf(t, s, b.ID, d2), controlplane.PlanFree, 1, 0)

	// A range returns the days with usage, oldest first.
	days, err := s.FindUsageDays(ctx, a.ID, d1.AddDate(0, 0, -5), d2.Add(time.Hour))
	if err != nil || len(days) != 2 || !days[0].Day.Equal(d1) || !days[1].Day.Equal(d2) {
		t.Fatalf("FindUsageDays over a week: %+v, %v", days, err)
	}
	if days, err := s.FindUsageDays(ctx, a.ID, d1, d1); err != nil || len(days) != 0 {
		t.Fatalf("empty range: %+v, %v", days, err)
	}

	// Creating a vehicle records its vehicle-day of today at once (the
	// revoked v3 was registered today too).
	today := utcDay(time.Now())
	wantDay(t, usageOf(t, s, a.ID, today), controlplane.PlanFree, 3, 0)
	MustVehicle(t, s, fa, "v4", nil)
	wantDay(t, usageOf(t, s, a.ID, today), controlplane.PlanFree, 4, 0)

	// Current counts: not revoked, and online now.
	setOnline(t, pool, a.ID, "v4", true)
	billable, online, err := s.CountBillableVehicles(ctx, a.ID)
	if err != nil || billable != 2 || online != 1 {
		t.Fatalf("CountBillableVehicles = %d, %d, %v; want 2 (v1, v4), 1", billable, online, err)
	}
}

func TestSetVehicleOnlineMarksTheVehicleDay(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "acme")
	acc := MustAccount(t, s, tn.ID)
	f := MustFleet(t, s, tn.ID, "drones")
	v := MustVehicle(t, s, f, "v1", nil)
	key := FakeKey('U')
	if _, err := s.SetVehicleEnrollment(ctx, tn.ID, v.ID, controlplane.VehicleEnrollment{UserPublicKey: key,
		CredentialsExpireAt: time.Now().Add(time.Hour), Status: controlplane.VehicleActive}); err != nil {
		t.Fatal(err)
	}
	today := utcDay(time.Now())
	wantDay(t, usageOf(t, s, tn.ID, today), controlplane.PlanFree, 1, 0)

	at := time.Now().Truncate(time.Microsecond)
	c := controlplane.LeafConn{Node: "hub-1", ID: 7, Account: acc.PublicKey, User: key, Start: at}
	ok, err := s.SetVehicleOnline(ctx, c, at)
	if err != nil || !ok {
		t.Fatalf("SetVehicleOnline = %v, %v", ok, err)
	}
	wantDay(t, usageOf(t, s, tn.ID, utcDay(at)), controlplane.PlanFree, 1, 1)
	// A connect that changes nothing reports so, as before.
	if ok, err := s.SetVehicleOnline(ctx, c, at); err != nil || ok {
		t.Fatalf("the same connect again = %v, %v", ok, err)
	}
	// A connect on a day without a sample yet records that day at once.
	later := at.AddDate(0, 0, 3)
	c2 := controlplane.LeafConn{Node: "hub-2", ID: 1, Account: acc.PublicKey, User: key, Start: later}
	if ok, err := s.SetVehicleOnline(ctx, c2, later); err != nil || !ok {
		t.Fatalf("SetVehicleOnline later = %v, %v", ok, err)
	}
	wantDay(t, usageOf(t, s, tn.ID, utcDay(later)), controlplane.PlanFree, 1, 1)
	// An event of another account records nothing.
	other := MustTenant(t, s, "globex")
	acc2 := MustAccount(t, s, other.ID)
	c3 := controlplane.LeafConn{Node: "hub-1", ID: 9, Account: acc2.PublicKey, User: key, Start: later.Add(24 * time.Hour)}
	if ok, err := s.SetVehicleOnline(ctx, c3, c3.Start); err != nil || ok {
		t.Fatalf("online in another account = %v, %v", ok, err)
	}
	if u := usageOf(t, s, tn.ID, utcDay(c3.Start)); u.VehiclesRegistered != 0 {
		t.Fatalf("another account's event recorded %+v", u)
	}
	if u := usageOf(t, s, other.ID, utcDay(c3.Start)); u.VehiclesRegistered != 0 {
		t.Fatalf("another account's event recorded %+v for its tenant", u)
	}
}

func TestAddHubTraffic(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()
	a, b := MustTenant(t, s, "acme"), MustTenant(t, s, "globex")
	accA, accB := MustAccount(t, s, a.ID).PublicKey, MustAccount(t, s, b.ID).PublicKey
	unknown := FakeKey('A')
	d1 := time.Date(2031, 3, 31, 0, 0, 0, 0, time.UTC)
	d2 := d1.AddDate(0, 0, 1)
	t0 := d1.Add(10 * time.Hour)
	tr := func(node, sid, acc string, mi, mo, bi, bo int64) controlplane.AccountTraffic {
		return controlplane.AccountTraffic{Node: node, ServerID: sid, Account: acc, MsgsIn: mi, MsgsOut: mo, BytesIn: bi, BytesOut: bo}
	}
	add := func(day time.Time, at time.Time, stats ...controlplane.AccountTraffic) {
		t.Helper()
		if err := s.AddHubTraffic(ctx, day, stats, at); err != nil {
			t.Fatalf("AddHubTraffic: %v", err)
		}
	}
	want := func(tenantID string, day time.Time, mi, mo, bi, bo int64) {
		t.Helper()
		u := usageOf(t, s, tenantID, day)
		if u.MsgsIn != mi || u.MsgsOut != mo || u.BytesIn != bi || u.BytesOut != bo {
			t.Fatalf("%s %s: %d/%d msgs, %d/%d bytes; want %d/%d, %d/%d", tenantID, day.Format(time.DateOnly),
				u.MsgsIn, u.MsgsOut, u.BytesIn, u.BytesOut, mi, mo, bi, bo)
		}
	}

	// First totals count whole (nodes count from their start); nodes add
	// up; unknown accounts are skipped and not stored.
	add(d1, t0,
		tr("hub-1", "S1", accA, 10, 20, 100, 200),
		tr("hub-2", "S2", accA, 5, 0, 50, 0),
		tr("hub-1", "S1", accB, 1, 1, 1, 1),
		tr("hub-1", "S1", unknown, 99, 99, 99, 99))
	want(a.ID, d1, 15, 20, 150, 200)
	want(b.ID, d1, 1, 1, 1, 1)
	if n := MustRow(t, pool, `SELECT count(*) AS n FROM usage_hub_counters WHERE account = $1`, unknown)["n"]; n != int64(0) {
		t.Fatalf("unknown account stored: %v rows", n)
	}
	// A day's row created by traffic has the tenant's plan.
	wantDay(t, usageOf(t, s, b.ID, d1), controlplane.PlanFree, 0, 0)

	// Unchanged totals add nothing; an older sample arriving late is
	// skipped whatever it says.
	add(d1, t0.Add(time.Minute), tr("hub-1", "S1", accA, 10, 20, 100, 200))
	add(d1, t0, tr("hub-1", "S1", accA, 1000, 1000, 1000, 1000))
	want(a.ID, d1, 15, 20, 150, 200)

	// Running totals: the difference.
	add(d1, t0.Add(2*time.Minute), tr("hub-1", "S1", accA, 30, 20, 300, 200))
	want(a.ID, d1, 35, 20, 350, 200)

	// hub-1 restarted (new server ID): its totals count from zero.
	add(d1, t0.Add(3*time.Minute), tr("hub-1", "S1b", accA, 4, 4, 40, 40))
	want(a.ID, d1, 39, 24, 390, 240)
	add(d1, t0.Add(4*time.Minute), tr("hub-1", "S1b", accA, 6, 4, 60, 40))
	want(a.ID, d1, 41, 24, 410, 240)

	// A counter that went backwards on the same server (the account was
	// reloaded): its totals count from zero as well.
	add(d1, t0.Add(5*time.Minute), tr("hub-2", "S2", accA, 2, 1, 20, 10))
	want(a.ID, d1, 43, 25, 430, 250)

	// The next day gets what came after the last sample of the day before.
	add(d2, d2.Add(time.Minute), tr("hub-1", "S1b", accA, 16, 4, 160, 40), tr("hub-1", "S1", accB, 1, 1, 1, 1))
	want(a.ID, d2, 10, 0, 100, 0)
	want(a.ID, d1, 43, 25, 430, 250)
	want(b.ID, d2, 0, 0, 0, 0)

	// Scale wins in a traffic-created row as in a sample.
	setPlan(t, s, b, controlplane.PlanScale)
	add(d1, t0.Add(6*time.Minute), tr("hub-1", "S1", accB, 2, 1, 1, 1))
	if u := usageOf(t, s, b.ID, d1); u.Plan != controlplane.PlanScale || u.MsgsIn != 2 {
		t.Fatalf("globex after traffic on scale: %+v", u)
	}

	// Nothing to add is no error.
	add(d1, t0, nil...)
}

func TestUsageTenantIsolation(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	a, b := MustTenant(t, s, "acme"), MustTenant(t, s, "globex")
	accB := MustAccount(t, s, b.ID).PublicKey
	MustVehicle(t, s, MustFleet(t, s, b.ID, "drones"), "w1", nil)
	d1 := time.Date(2031, 3, 31, 0, 0, 0, 0, time.UTC)
	sample(t, s, d1, 2, 1)
	if err := s.AddHubTraffic(ctx, d1, []controlplane.AccountTraffic{{Node: "hub-1", ServerID: "S", Account: accB, MsgsIn: 5}}, d1); err != nil {
		t.Fatal(err)
	}
	// A's view: its own (empty) day, nothing of B's.
	if u := usageOf(t, s, a.ID, d1); u.VehiclesRegistered != 0 || u.MsgsIn != 0 {
		t.Fatalf("A sees %+v", u)
	}
	if u := usageOf(t, s, b.ID, d1); u.VehiclesRegistered != 1 || u.MsgsIn != 5 {
		t.Fatalf("B's own usage %+v", u)
	}
	for _, id := range []string{"not-a-uuid", "3f1c2a9e-0000-4000-8000-000000000001"} {
		days, err := s.FindUsageDays(ctx, id, d1, d1.AddDate(0, 0, 1))
		if len(days) != 0 || (err != nil && controlplane.ErrorCode(err) != controlplane.ENOTFOUND) {
			t.Errorf("FindUsageDays(%q) = %+v, %v", id, days, err)
		}
		n, m, err := s.CountBillableVehicles(ctx, id)
		if n+m != 0 || (err != nil && controlplane.ErrorCode(err) != controlplane.ENOTFOUND) {
			t.Errorf("CountBillableVehicles(%q) = %d, %d, %v", id, n, m, err)
		}
	}
	if n, _, err := s.CountBillableVehicles(ctx, a.ID); err != nil || n != 0 {
		t.Errorf("A counts %d vehicles, %v", n, err)
	}
}

// benchVehicles is the fleet size of BenchmarkSampleVehicleDays
// (FLEETPLANE_BENCH_VEHICLES overrides it).
func benchVehicles(b *testing.B) int {
	if v := os.Getenv("FLEETPLANE_BENCH_VEHICLES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 {
			b.Fatalf("FLEETPLANE_BENCH_VEHICLES=%q", v)
		}
		return n
	}
	return 10_000
}

// BenchmarkSampleVehicleDays: 100 tenants sharing the vehicles, half of
// them online, 2% revoked, a month of vehicle-days stored before.
//
//   - new_day: the first run of a day, which inserts every vehicle-day;
//   - steady: a run with nothing changed (every minute of the day after);
//   - steady_1pct_online: a run after 1% of the vehicles came online.
func BenchmarkSampleVehicleDays(b *testing.B) {
	n := benchVehicles(b)
	s, pool := MustStore(b)
	ctx := context.Background()
	const tenants = 100
	MustExec(b, pool, `INSERT INTO tenants (name, plan) SELECT 'tenant-' || i, CASE WHEN i % 2 = 0 THEN 'scale' ELSE 'free' END
		FROM generate_series(1, $1::int) i`, tenants)
	MustExec(b, pool, `INSERT INTO fleets (tenant_id, slug, name, environment, region)
		SELECT id, 'drones', 'Drones', 'prod', 'europe' FROM tenants`)
	MustExec(b, pool, `
		INSERT INTO vehicles (tenant_id, fleet_id, vehicle_id, name, status, online, hub_node, presence_conn_id, presence_conn_start)
		SELECT f.tenant_id, f.id, 'v' || i, 'v' || i, CASE WHEN i % 50 = 0 THEN 'revoked' ELSE 'active' END,
			i % 2 = 0, CASE WHEN i % 2 = 0 THEN 'hub-1' ELSE '' END,
			CASE WHEN i % 2 = 0 THEN i END, CASE WHEN i % 2 = 0 THEN now() END
		FROM fleets f, generate_series(1, $1::int) i`, n/tenants)
	// A month of history: the runs must not get slower as days pile up.
	MustExec(b, pool, `INSERT INTO usage_vehicle_days (tenant_id, day, vehicle_id, online)
		SELECT v.tenant_id, '2030-12-01'::date + g, v.vehicle_id, v.online FROM vehicles v, generate_series(0, 29) g
		ORDER BY g`) // day by day, as the samples write them
	MustExec(b, pool, `INSERT INTO usage_daily (tenant_id, day, plan)
		SELECT t.id, '2030-12-01'::date + g, t.plan FROM tenants t, generate_series(0, 29) g`)
	MustExec(b, pool, `ANALYZE`)
	billable := n - n/50
	day := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)

	b.Run(fmt.Sprintf("new_day/vehicles=%d", n), func(b *testing.B) {
		for b.Loop() {
			day = day.AddDate(0, 0, 1)
			if _, added, err := s.SampleVehicleDays(ctx, day); err != nil || added != billable {
				b.Fatalf("added %d, %v; want %d", added, err, billable)
			}
		}
	})
	MustExec(b, pool, `ANALYZE`)
	b.Run(fmt.Sprintf("steady/vehicles=%d", n), func(b *testing.B) {
		for b.Loop() {
			if _, added, err := s.SampleVehicleDays(ctx, day); err != nil || added != 0 {
				b.Fatalf("added %d, %v", added, err)
			}
		}
	})
	b.Run(fmt.Sprintf("steady_1pct_online/vehicles=%d", n), func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			day = day.AddDate(0, 0, 1)
			if _, _, err := s.SampleVehicleDays(ctx, day); err != nil {
				b.Fatal(err)
			}
			MustExec(b, pool, `UPDATE vehicles SET online = true, hub_node = 'hub-2', presence_conn_id = 1, presence_conn_start = now()
				WHERE NOT online AND id % 100 = 1`)
			b.StartTimer()
			if _, _, err := s.SampleVehicleDays(ctx, day); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			MustExec(b, pool, `UPDATE vehicles SET online = false WHERE hub_node = 'hub-2'`)
			b.StartTimer()
		}
	})
}
