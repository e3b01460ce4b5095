package controlplane

import (
	"context"
	"fmt"
	"time"
)

// MeterUsage samples today's vehicle-days (and each tenant's plan of the
// day) and, with Config.HubStats, adds the hubs' account traffic since the
// last run. It is a system job (the meter_usage periodic job): no caller
// role is checked. A hub that cannot be read is logged and reported in
// HubError, not an error: the vehicle-days, which are what is billed, were
// sampled, and hub totals are cumulative, so the traffic is counted at the
// next answer.
func (s *Service) MeterUsage(ctx context.Context) (*MeterReport, error) {
	day := dayOf(s.now())
	rep := &MeterReport{Day: day}
	tenants, added, err := s.store.SampleVehicleDays(ctx, day)
	if err != nil {
		return rep, fmt.Errorf("sampling vehicle-days: %w", err)
	}
	rep.Tenants, rep.VehicleDays = tenants, added
	if s.cfg.HubStats == nil {
		return rep, nil
	}
	// The time the totals were read: a store that has newer ones skips them.
	at := s.now()
	stats, err := s.cfg.HubStats.AccountStats(ctx)
	if err != nil {
		rep.HubError = err.Error()
		s.logger.WarnContext(ctx, "metering: hub account statistics unavailable; the traffic is counted at the next answer", "err", err)
		return rep, nil
	}
	rep.NodesAnswered, rep.NodesExpected = len(stats.Answered), stats.Expected
	if rep.NodesAnswered < rep.NodesExpected {
		s.logger.InfoContext(ctx, "metering: not every hub node answered; their traffic is counted at their next answer",
			"answered", stats.Answered, "expected", stats.Expected)
	}
	if err := s.store.AddHubTraffic(ctx, dayOf(at), stats.Accounts, at); err != nil {
		return rep, fmt.Errorf("adding hub traffic: %w", err)
	}
	return rep, nil
}

// Usage returns the caller's tenant's usage in its current billing period
// (viewer role): plan, limits, current counts, one entry per day of the
// period so far, and the projected charge.
//
// The period's days are the UTC days whose last second falls in
// [PeriodStart, PeriodEnd): that is when a day's vehicle-days are stamped
// in the usage reports to Stripe (ReportUsage), so a day belongs to the
// period that bills it. With calendar-month periods these are the days of
// the month.
func (s *Service) Usage(ctx context.Context) (*UsageSummary, error) {
	p, err := s.authorize(ctx, RoleViewer)
	if err != nil {
		return nil, err
	}
	t, err := s.store.FindTenantByID(ctx, p.TenantID)
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	start, end, err := s.billingPeriod(ctx, t, now)
	if err != nil {
		return nil, err
	}
	pl := s.plan(t.Plan)
	out := &UsageSummary{
		Plan:          t.Plan,
		BillingStatus: t.BillingStatus,
		PeriodStart:   start.UTC(),
		PeriodEnd:     end.UTC(),
		Limits:        UsageLimits{Vehicles: max(pl.MaxVehicles, 0), Grants: max(pl.MaxGrants, 0)},
	}
	if out.BillingStatus == "" {
		out.BillingStatus = BillingNone
	}
	if t.GraceUntil != nil && now.Before(*t.GraceUntil) {
		g := t.GraceUntil.UTC()
		out.GraceUntil = &g
	}
	if out.Current.Vehicles, err = s.store.CountVehicles(ctx, t.ID); err != nil {
		return nil, err
	}
	billable, online, err := s.store.CountBillableVehicles(ctx, t.ID)
	if err != nil {
		return nil, err
	}
	out.Current.VehiclesOnline = online
	if out.Current.ActiveGrants, err = s.store.CountActiveGrants(ctx, t.ID, now); err != nil {
		return nil, err
	}

	first, last := periodDays(start, end)
	today := dayOf(now)
	upTo := today
	if last.Before(upTo) {
		upTo = last // no later than the period's last day
	}
	var days []UsageDay
	if !upTo.Before(first) {
		if days, err = s.store.FindUsageDays(ctx, t.ID, first, upTo.AddDate(0, 0, 1)); err != nil {
			return nil, err
		}
	}
	out.Daily = fillUsageDays(days, first, upTo, today, t.Plan)
	out.Projected = projectCharge(t.Plan, pl.Price, out.Daily, today, last, billable)
	return out, nil
}

// periodDays returns the first and last UTC day of the period [start, end)
// (days whose last second falls in it; see Usage). last is before first
// when no day's end falls in the period.
func periodDays(start, end time.Time) (first, last time.Time) {
	return dayOf(start), dayOf(end.Add(-24 * time.Hour))
}

// fillUsageDays returns one entry per day from first to upTo: the stored
// ones, and zeros (with the tenant's plan now) for days without usage.
// Today's entry shows scale when the tenant is on scale now, as the next
// sample will record it (scale wins within a day).
func fillUsageDays(stored []UsageDay, first, upTo, today time.Time, plan string) []UsageDay {
	byDay := make(map[time.Time]UsageDay, len(stored))
	for _, d := range stored {
		byDay[dayOf(d.Day)] = d
	}
	out := []UsageDay{}
	for d := first; !d.After(upTo); d = d.AddDate(0, 0, 1) {
		u, ok := byDay[d]
		if !ok {
			u = UsageDay{Day: d, Plan: plan}
		}
		u.Day = d
		if d.Equal(today) && plan == PlanScale {
			u.Plan = PlanScale
		}
		out = append(out, u)
	}
	return out
}

// projectCharge projects the period's charge (nil on free or without a
// price):
//
//   - VehicleDays: the vehicle-days of the period's scale days so far
//     (today included, as recorded so far);
//   - today's rest: the vehicles registered now that today's record does
//     not hold yet (max(0, billable − today's vehicle-days): only before
//     the day's first sample; a vehicle-day counts once per day, so the
//     vehicles already recorded today add nothing more today);
//   - remaining: the whole days of the period after today (from tomorrow
//     through the period's last day), each at the vehicles registered now
//     (billable: not revoked), as if nothing changed;
//
// ProjectedVehicleDays = VehicleDays + today's rest + remaining × billable,
// at the plan's price per vehicle-day. daily holds the period's days up to
// today (or up to its last day).
func projectCharge(plan string, price Price, daily []UsageDay, today, last time.Time, billable int) *ProjectedCharge {
	if plan == PlanFree || price.VehicleDayCents <= 0 {
		return nil
	}
	pc := &ProjectedCharge{Currency: price.Currency, UnitAmountCents: price.VehicleDayCents}
	var todays int64 = -1 // -1: today is not a day of the period
	for _, d := range daily {
		if d.Plan == PlanScale {
			pc.VehicleDays += int64(d.VehiclesRegistered)
		}
		if d.Day.Equal(today) {
			todays = int64(d.VehiclesRegistered)
		}
	}
	pc.ProjectedVehicleDays = pc.VehicleDays
	if todays >= 0 {
		pc.ProjectedVehicleDays += max(int64(billable)-todays, 0)
	}
	if remaining := int64(last.Sub(today) / (24 * time.Hour)); remaining > 0 {
		pc.ProjectedVehicleDays += remaining * int64(billable)
	}
	pc.AmountCents = pc.ProjectedVehicleDays * pc.UnitAmountCents
	return pc
}
