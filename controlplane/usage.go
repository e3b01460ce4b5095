package controlplane

import (
	"context"
	"time"
)

// # Usage metering
//
// The billable unit is the vehicle-day: a vehicle registered (not revoked)
// at any time of a UTC day counts once for that day. MeterUsage, run every
// minute by a periodic job, records per tenant and day
//
//   - the vehicles registered and the vehicles seen online that day
//     (usage_vehicle_days: sampled each run; a created or connecting
//     vehicle is recorded at once as well, so short lives are not missed);
//   - the plan (scale when the tenant was on scale at any sample that day:
//     only those days are reported to Stripe);
//   - messages and bytes the tenant's account sent and received through
//     the hubs, from every node's account statistics ($SYS.REQ.ACCOUNT.PING.STATZ):
//     nodes report running totals, so the store keeps each node's last
//     totals per account and adds the difference (a node whose server ID
//     changed restarted: its totals count from zero).

// AccountTraffic is one hub node's running totals for one account.
type AccountTraffic struct {
	Node     string // server name
	ServerID string // changes when the node restarts
	Account  string // account public key
	MsgsIn   int64  // received by the node from the account's connections
	MsgsOut  int64  // sent by the node to the account's connections
	BytesIn  int64
	BytesOut int64
}

// HubStats is what one round of account statistics brought back.
type HubStats struct {
	Accounts []AccountTraffic
	// Nodes that answered, and the expected number (a node that did not
	// answer is counted at its next answer: totals are cumulative).
	Answered []string
	Expected int
}

// UsageDay is one tenant's usage on one UTC day.
type UsageDay struct {
	Day                time.Time // 00:00 UTC
	Plan               string
	VehiclesRegistered int // vehicle-days
	VehiclesOnline     int
	MsgsIn, MsgsOut    int64
	BytesIn, BytesOut  int64
}

// MeterReport is what one MeterUsage run did.
type MeterReport struct {
	Day           time.Time
	Tenants       int // tenants sampled
	VehicleDays   int // new vehicle-day rows
	NodesAnswered int
	NodesExpected int
	// HubError says why no hub statistics were read ("" when they were,
	// or when Config.HubStats is not set); the vehicle-days were sampled.
	HubError string
}

// MeterUsageJob is the periodic job that runs MeterUsage
// (controlplane/jobs). It has no arguments.
type MeterUsageJob struct{}

// Kind names the job for the queue.
func (MeterUsageJob) Kind() string { return "meter_usage" }

// ReportUsageJob is the periodic job that runs ReportUsage
// (controlplane/jobs). It has no arguments.
type ReportUsageJob struct{}

// Kind names the job for the queue.
func (ReportUsageJob) Kind() string { return "report_usage" }

// UsageStore persists metering (part of Store).
type UsageStore interface {
	// SampleVehicleDays records, for day, every registered (not revoked)
	// vehicle of every tenant and whether it is online now (online only
	// ever turns true within a day), and each tenant's plan for the day
	// (scale wins). It returns the tenants sampled and the new rows.
	SampleVehicleDays(ctx context.Context, day time.Time) (tenants, added int, err error)
	// AddHubTraffic turns the nodes' running totals into deltas against
	// the last totals stored per (node, account) and adds them to the
	// accounts' tenants' usage of day; unknown accounts are skipped.
	AddHubTraffic(ctx context.Context, day time.Time, stats []AccountTraffic, at time.Time) error
	// FindUsageDays returns a tenant's usage for days in [from, to),
	// oldest first, one entry per day with any usage.
	FindUsageDays(ctx context.Context, tenantID string, from, to time.Time) ([]UsageDay, error)
	// CountBillableVehicles counts a tenant's vehicles that are registered
	// (not revoked) now, and its vehicles online now.
	CountBillableVehicles(ctx context.Context, tenantID string) (billable, online int, err error)
}

// HubStatsSource reads the hubs' account statistics (controlplane/hubs).
type HubStatsSource interface {
	AccountStats(ctx context.Context) (*HubStats, error)
}

// dayOf returns t's UTC day (00:00 UTC).
func dayOf(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// UsageSummary is GET /v1/usage: the tenant's current billing period.
type UsageSummary struct {
	Plan          string
	BillingStatus string
	// GraceUntil is set while a downgrade grace runs (plan.go).
	GraceUntil *time.Time
	// The period: the subscription's current period on a subscription,
	// else the calendar month (UTC). PeriodEnd is exclusive.
	PeriodStart, PeriodEnd time.Time
	Limits                 UsageLimits
	Current                UsageCurrent
	// Daily has one entry per day of the period so far (zeros included).
	Daily []UsageDay
	// Projected is the period's expected charge (nil on free or without
	// a configured price).
	Projected *ProjectedCharge
}

// UsageLimits are the plan's limits (0 = unlimited).
type UsageLimits struct {
	Vehicles int
	Grants   int
}

// UsageCurrent is the tenant's state now.
type UsageCurrent struct {
	Vehicles       int // registered (what the vehicle limit counts)
	VehiclesOnline int
	ActiveGrants   int
}

// ProjectedCharge is the period's expected charge: the vehicle-days so
// far plus today's registered vehicles for each remaining day, at the
// plan's price.
type ProjectedCharge struct {
	Currency             string
	UnitAmountCents      int64 // per vehicle-day
	VehicleDays          int64 // so far in the period
	ProjectedVehicleDays int64 // so far + remaining days × current vehicles
	AmountCents          int64 // ProjectedVehicleDays × UnitAmountCents
}

// UsageReportRun is what one ReportUsage run did.
type UsageReportRun struct {
	Created   int // new reports frozen
	Reported  int // reports Stripe accepted
	Failed    int // reports left for the next run
	Abandoned int // pending reports given up (older than Stripe's 24 h idempotency)
}

// billingPeriod returns t's current billing period at now: the current
// period of its entitled subscription (the one with the newest event),
// else the calendar month (UTC).
func (s *Service) billingPeriod(ctx context.Context, t *Tenant, now time.Time) (start, end time.Time, err error) {
	subs, err := s.store.FindSubscriptions(ctx, t.ID)
	if err != nil {
		return start, end, err
	}
	for _, sub := range subs {
		if sub.Entitled() && !sub.CurrentPeriodStart.IsZero() && sub.CurrentPeriodEnd.After(sub.CurrentPeriodStart) {
			return sub.CurrentPeriodStart.UTC(), sub.CurrentPeriodEnd.UTC(), nil
		}
	}
	y, m, _ := now.UTC().Date()
	start = time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
	return start, start.AddDate(0, 1, 0), nil
}
