package controlplane_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
	"github.com/fleetplane/fleetplane/internal/password"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

func day(s string) time.Time {
	d, err := time.Parse(time.DateOnly, s)
	if err != nil {
		panic(err)
	}
	return d
}

func TestPeriodDays(t *testing.T) {
	for _, c := range []struct {
		start, end  string // RFC 3339
		first, last string
	}{
		{"2031-03-01T00:00:00Z", "2031-04-01T00:00:00Z", "2031-03-01", "2031-03-31"},
		{"2031-02-01T00:00:00Z", "2031-03-01T00:00:00Z", "2031-02-01", "2031-02-28"},
		// A subscription period from 13:22 to 13:22: the first day's end
		// is in it, the last day's end is in the next one.
		{"2031-03-14T13:22:00Z", "2031-04-14T13:22:00Z", "2031-03-14", "2031-04-13"},
		{"2031-03-14T13:22:00+02:00", "2031-03-15T13:22:00+02:00", "2031-03-14", "2031-03-14"},
	} {
		start, _ := time.Parse(time.RFC3339, c.start)
		end, _ := time.Parse(time.RFC3339, c.end)
		first, last := controlplane.PeriodDays(start, end)
		if !first.Equal(day(c.first)) || !last.Equal(day(c.last)) {
			t.Errorf("PeriodDays(%s, %s) = %s, %s; want %s, %s", c.start, c.end,
				first.Format(time.DateOnly), last.Format(time.DateOnly), c.first, c.last)
		}
	}
}

func TestProjectCharge(t *testing.T) {
	price := controlplane.Price{Currency: "usd", VehicleDayCents: 50}
	// days builds daily entries from the 1st: "s4" = a scale day with 4
	// vehicle-days, "f4" a free day.
	days := func(specs ...string) []controlplane.UsageDay {
		var out []controlplane.UsageDay
		for i, sp := range specs {
			plan := controlplane.PlanFree
			if sp[0] == 's' {
				plan = controlplane.PlanScale
			}
			var n int
			fmt.Sscanf(sp[1:], "%d", &n)
			out = append(out, controlplane.UsageDay{Day: day("2031-03-01").AddDate(0, 0, i), Plan: plan, VehiclesRegistered: n})
		}
		return out
	}
	for _, c := range []struct {
		name        string
		plan        string
		price       controlplane.Price
		daily       []controlplane.UsageDay
		today, last string
		billable    int
		// want: nil, or vehicle-days so far and projected
		nilWant          bool
		soFar, projected int64
	}{
		{name: "free", plan: controlplane.PlanFree, price: price, daily: days("f4", "f4"), today: "2031-03-02", last: "2031-03-31", billable: 4, nilWant: true},
		{name: "no price", plan: controlplane.PlanScale, price: controlplane.Price{Currency: "usd"}, daily: days("s4"), today: "2031-03-01", last: "2031-03-31", billable: 4, nilWant: true},
		// The 1st of the month, sampled: 4 today + 30 remaining days × 4.
		{name: "first day", plan: controlplane.PlanScale, price: price, daily: days("s4"), today: "2031-03-01", last: "2031-03-31", billable: 4, soFar: 4, projected: 4 + 30*4},
		// Free days are not billed; scale days count what was registered
		// then; the remaining days count the vehicles registered now.
		{name: "upgraded mid-month", plan: controlplane.PlanScale, price: price, daily: days("f4", "f4", "s5", "s6", "s6"), today: "2031-03-05", last: "2031-03-31", billable: 6,
			soFar: 5 + 6 + 6, projected: 17 + 26*6},
		// Before the day's first sample: today's vehicles are not recorded
		// yet and count as today's rest.
		{name: "today not sampled yet", plan: controlplane.PlanScale, price: price, daily: days("s3", "s0"), today: "2031-03-02", last: "2031-03-31", billable: 3,
			soFar: 3, projected: 3 + 3 + 29*3},
		// A vehicle created since today's last sample was recorded at its
		// creation; one revoked today still counts today, not after.
		{name: "vehicle revoked today", plan: controlplane.PlanScale, price: price, daily: days("s4", "s4"), today: "2031-03-02", last: "2031-03-31", billable: 3,
			soFar: 8, projected: 8 + 29*3},
		{name: "last day of the period", plan: controlplane.PlanScale, price: price, daily: days("s2", "s2", "s2"), today: "2031-03-03", last: "2031-03-03", billable: 2,
			soFar: 6, projected: 6},
		// The period ends mid-day today: today's usage is billed in the
		// next period (daily stops at the period's last day).
		{name: "today after the period's last day", plan: controlplane.PlanScale, price: price, daily: days("s2", "s2"), today: "2031-03-03", last: "2031-03-02", billable: 5,
			soFar: 4, projected: 4},
		{name: "no vehicles", plan: controlplane.PlanScale, price: price, daily: days("s0"), today: "2031-03-01", last: "2031-03-31", billable: 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := controlplane.ProjectCharge(c.plan, c.price, c.daily, day(c.today), day(c.last), c.billable)
			if c.nilWant {
				if got != nil {
					t.Fatalf("got %+v, want nil", got)
				}
				return
			}
			want := controlplane.ProjectedCharge{Currency: "usd", UnitAmountCents: 50, VehicleDays: c.soFar,
				ProjectedVehicleDays: c.projected, AmountCents: c.projected * 50}
			if got == nil || *got != want {
				t.Fatalf("got %+v, want %+v", got, want)
			}
		})
	}
}

// TestUsageSummary meters a month through the store (fixed clock) and
// reads it back.
func TestUsageSummary(t *testing.T) {
	t.Parallel()
	svc, store, pool := usageService(t)
	ctx, tenantID := planTenant(t, svc, "Acme")
	createVehicles(t, svc, ctx, 0, 4)
	if _, err := svc.ChangePlan(context.Background(), tenantID, controlplane.PlanScale); err != nil {
		t.Fatal(err)
	}
	// March 2031: free on the 1st-9th (not sampled on the 5th: metering
	// was down), scale from the 10th; V03 revoked on the 15th before its
	// first sample.
	bg := context.Background()
	for d := day("2031-03-01"); d.Before(day("2031-03-15")); d = d.AddDate(0, 0, 1) {
		if d.Equal(day("2031-03-05")) {
			continue
		}
		if d.Before(day("2031-03-10")) {
			mustExec(t, pool, `UPDATE tenants SET plan = 'free' WHERE id = $1`, tenantID)
		} else {
			mustExec(t, pool, `UPDATE tenants SET plan = 'scale' WHERE id = $1`, tenantID)
		}
		if _, _, err := store.SampleVehicleDays(bg, d); err != nil {
			t.Fatal(err)
		}
	}
	mustExec(t, pool, `UPDATE vehicles SET status = 'revoked' WHERE tenant_id = $1 AND vehicle_id = 'V03'`, tenantID)
	mustExec(t, pool, `UPDATE vehicles SET online = true, hub_node = 'hub-1', presence_conn_id = 1, presence_conn_start = now()
		WHERE tenant_id = $1 AND vehicle_id = 'V00'`, tenantID)

	now := time.Date(2031, 3, 15, 10, 30, 0, 0, time.UTC)
	controlplane.SetNow(svc, func() time.Time { return now })
	rep, err := svc.MeterUsage(bg)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Day.Equal(day("2031-03-15")) || rep.Tenants != 1 || rep.VehicleDays != 3 || rep.HubError != "" || rep.NodesExpected != 0 {
		t.Fatalf("MeterUsage = %+v", rep)
	}

	u, err := svc.Usage(as(ctx, controlplane.RoleViewer))
	if err != nil {
		t.Fatal(err)
	}
	if u.Plan != controlplane.PlanScale || u.BillingStatus != controlplane.BillingNone || u.GraceUntil != nil ||
		!u.PeriodStart.Equal(day("2031-03-01")) || !u.PeriodEnd.Equal(day("2031-04-01")) {
		t.Fatalf("summary = %+v", u)
	}
	if u.Limits != (controlplane.UsageLimits{}) {
		t.Errorf("scale limits = %+v, want unlimited (0)", u.Limits)
	}
	if u.Current != (controlplane.UsageCurrent{Vehicles: 4, VehiclesOnline: 1}) {
		t.Errorf("current = %+v", u.Current)
	}
	if len(u.Daily) != 15 {
		t.Fatalf("%d daily entries, want 15 (the 1st to today)", len(u.Daily))
	}
	for i, d := range u.Daily {
		wantPlan, wantN, wantOnline := controlplane.PlanFree, 4, 0
		switch {
		case i == 4: // not sampled: zero
			wantN = 0
			wantPlan = controlplane.PlanScale // the plan now
		case i >= 9 && i < 14:
			wantPlan, wantOnline = controlplane.PlanScale, 0
		case i == 14:
			wantPlan, wantN, wantOnline = controlplane.PlanScale, 3, 1
		}
		if !d.Day.Equal(day("2031-03-01").AddDate(0, 0, i)) || d.Plan != wantPlan || d.VehiclesRegistered != wantN || d.VehiclesOnline != wantOnline {
			t.Errorf("day %d = %+v; want plan %s, %d vehicles, %d online", i+1, d, wantPlan, wantN, wantOnline)
		}
	}
	// Scale days 10th-14th: 5 × 4, today 3; 16 remaining days × 3.
	want := controlplane.ProjectedCharge{Currency: "usd", UnitAmountCents: 50, VehicleDays: 23, ProjectedVehicleDays: 23 + 16*3, AmountCents: (23 + 16*3) * 50}
	if u.Projected == nil || *u.Projected != want {
		t.Errorf("projected = %+v, want %+v", u.Projected, want)
	}

	// Metering again changes nothing.
	if rep, err := svc.MeterUsage(bg); err != nil || rep.VehicleDays != 0 {
		t.Fatalf("second MeterUsage = %+v, %v", rep, err)
	}

	// Downgraded with more vehicles than free allows: grace, no projection,
	// today stays scale.
	createVehicles(t, svc, ctx, 10, 8) // 12 registered (one revoked)
	if _, err := svc.ChangePlan(bg, tenantID, controlplane.PlanFree); err != nil {
		t.Fatal(err)
	}
	u, err = svc.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u.Plan != controlplane.PlanFree || u.GraceUntil == nil || u.Projected != nil ||
		u.Limits != (controlplane.UsageLimits{Vehicles: controlplane.FreeVehicleLimit, Grants: controlplane.FreeGrantLimit}) {
		t.Fatalf("after the downgrade: %+v", u)
	}
	if last := u.Daily[len(u.Daily)-1]; last.Plan != controlplane.PlanScale {
		t.Errorf("today after the downgrade: %+v, want scale (scale wins within a day)", last)
	}

	// Another tenant sees its own usage only; the caller must be authenticated.
	other, _ := planTenant(t, svc, "Globex")
	u, err = svc.Usage(other)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range u.Daily {
		if d.VehiclesRegistered != 0 {
			t.Fatalf("Globex sees %+v", d)
		}
	}
	if u.Current.Vehicles != 0 {
		t.Fatalf("Globex current = %+v", u.Current)
	}
	_, err = svc.Usage(context.Background())
	WantCode(t, err, controlplane.EUNAUTHORIZED)
}

func mustExec(tb testing.TB, pool *pgxpool.Pool, sql string, args ...any) {
	tb.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
}

// usageService is planService with the pool, for setting up history.
func usageService(tb testing.TB) (*controlplane.Service, *postgres.Store, *pgxpool.Pool) {
	tb.Helper()
	pool := pgtest.NewPool(tb)
	store := postgres.NewStore(pool)
	return controlplane.NewService(store, controlplane.Config{
		Regions:        []controlplane.Region{{Name: "europe"}},
		PasswordParams: password.Params{Memory: 64, Time: 1, Threads: 1},
		Issuer:         mustIssuer(tb, nil),
		PublicURL:      "https://fleet.example",
	}, nil), store, pool
}

// failingStats is a hub statistics source that cannot be read.
type failingStats struct{}

func (failingStats) AccountStats(context.Context) (*controlplane.HubStats, error) {
	return nil, errors.New("hubs: account statistics: no hub node connected")
}

// TestMeterUsageWithHubs meters real traffic: a vehicle leaf publishes on
// a real hub node, a grant subscribes, and the tenant's day shows both.
func TestMeterUsageWithHubs(t *testing.T) {
	t.Parallel()
	e := newIdentityEnv(t)
	ctx := e.tenant(t, "Acme")
	k := newVehicleKey(t)
	c := e.enroll(t, e.token(t, ctx, 1), k, "Drone-1")
	if _, err := e.svc.CreateVehicle(ctx, "drones", controlplane.VehicleCreate{VehicleID: "Drone-2"}); err != nil {
		t.Fatal(err)
	}
	leaf := e.runLeaf(t, c, k)
	natstest.WaitLeafCount(t, e.hub, 1, 5*time.Second)
	store := postgres.NewStore(e.pool)
	meter := controlplane.NewService(store, controlplane.Config{HubStats: e.hubs.Hubs}, nil)

	exp := time.Now().Add(time.Hour)
	g, err := e.svc.CreateGrant(ctx, controlplane.GrantCreate{Description: "partner",
		Scopes: []controlplane.GrantScopeSpec{{Fleet: "drones", Categories: []controlplane.GrantCategory{natsauth.CategoryState}}}, ExpiresAt: &exp})
	if err != nil {
		t.Fatal(err)
	}
	gc, err := nats.Connect(e.hub.ClientURL(), nats.UserJWTAndSeed(g.JWT, credsSeed(t, g.Creds)), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	sub, err := gc.SubscribeSync("fleet.prod.veh.*.state.>")
	if err != nil {
		t.Fatal(err)
	}
	_ = gc.Flush()
	local, err := nats.Connect(leaf.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	payload := []byte(`{"lat":48.1}`)
	received := 0
	// publish sends until the subscriber got n more messages: everything
	// that reached the hub is delivered, so in = out = received.
	publish := func(n int) {
		t.Helper()
		want := received + n
		deadline := time.Now().Add(10 * time.Second)
		for received < want {
			_ = local.Publish("fleet.prod.veh.Drone-1.state.position", payload)
			if _, err := sub.NextMsg(200 * time.Millisecond); err == nil {
				received++
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d messages at the grant", received, want)
			}
		}
		time.Sleep(50 * time.Millisecond)
		for {
			if _, err := sub.NextMsg(50 * time.Millisecond); err != nil {
				break
			}
			received++
		}
	}
	publish(10)

	today := time.Now().UTC().Truncate(24 * time.Hour)
	todayOf := func(tb testing.TB) controlplane.UsageDay {
		tb.Helper()
		u, err := e.svc.Usage(ctx)
		if err != nil {
			tb.Fatal(err)
		}
		d := u.Daily[len(u.Daily)-1]
		if !d.Day.Equal(today) {
			tb.Fatalf("last daily entry %s, want today", d.Day)
		}
		return d
	}
	rep, err := meter.MeterUsage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Both vehicles were recorded when they were created: nothing new.
	if rep.Tenants != 1 || rep.VehicleDays != 0 || rep.NodesAnswered != 1 || rep.NodesExpected != 1 || rep.HubError != "" {
		t.Fatalf("MeterUsage = %+v", rep)
	}
	d := todayOf(t)
	size := int64(len(payload))
	if d.VehiclesRegistered != 2 || d.MsgsIn != int64(received) || d.MsgsOut != int64(received) ||
		d.BytesIn != int64(received)*size || d.BytesOut != int64(received)*size {
		t.Fatalf("today = %+v; want 2 vehicles, %d messages in and out", d, received)
	}

	// The next run adds only what came since.
	publish(5)
	if _, err := meter.MeterUsage(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := todayOf(t); d.MsgsIn != int64(received) || d.MsgsOut != int64(received) {
		t.Fatalf("today after more traffic = %+v; want %d in and out", d, received)
	}

	// Hubs that cannot be read: vehicle-days are still sampled.
	broken := controlplane.NewService(store, controlplane.Config{HubStats: failingStats{}}, nil)
	if _, err := e.svc.CreateVehicle(ctx, "drones", controlplane.VehicleCreate{VehicleID: "Drone-3"}); err != nil {
		t.Fatal(err)
	}
	mustExec(t, e.pool, `DELETE FROM usage_vehicle_days WHERE vehicle_id = 'Drone-3'`)
	rep, err = broken.MeterUsage(context.Background())
	if err != nil || rep.VehicleDays != 1 || !strings.Contains(rep.HubError, "no hub node") {
		t.Fatalf("MeterUsage with broken hubs = %+v, %v", rep, err)
	}
	if d := todayOf(t); d.VehiclesRegistered != 3 || d.MsgsIn != int64(received) {
		t.Fatalf("today = %+v", d)
	}
}
