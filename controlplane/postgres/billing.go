package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// --- billing (controlplane/billing.go, migration 000009) ---

// SetStripeCustomer records a tenant's Stripe customer. A tenant that has
// one keeps it: the call then succeeds only when it is the same customer.
func (s *Store) SetStripeCustomer(ctx context.Context, tenantID, customerID string) error {
	var got string
	err := s.db.QueryRow(ctx, `
		UPDATE tenants SET stripe_customer_id = coalesce(stripe_customer_id, $2), updated_at = now()
		WHERE id = $1 RETURNING stripe_customer_id`, tenantID, customerID).Scan(&got)
	if err != nil {
		return translate(err, "tenant not found")
	}
	if got != customerID {
		return controlplane.Errorf(controlplane.ECONFLICT, "the tenant has another billing customer")
	}
	return nil
}

// FindTenantByStripeCustomer finds the tenant of a Stripe customer.
func (s *Store) FindTenantByStripeCustomer(ctx context.Context, customerID string) (*controlplane.Tenant, error) {
	t := &controlplane.Tenant{}
	err := s.db.QueryRow(ctx, `SELECT `+tenantColumns+` FROM tenants WHERE stripe_customer_id = $1`, customerID).
		Scan(tenantDest(t)...)
	if err != nil {
		return nil, translate(err, "no tenant has this billing customer")
	}
	return t, nil
}

// SetBillingStatus stores a tenant's billing status.
func (s *Store) SetBillingStatus(ctx context.Context, tenantID, status string) error {
	_, err := s.db.Exec(ctx, `
		UPDATE tenants SET billing_status = $2, updated_at = now()
		WHERE id = $1 AND billing_status <> $2`, tenantID, status)
	return translate(err, "tenant not found")
}

// RecordBillingEvent stores an event by ID; an ID seen before answers
// ECONFLICT without aborting the transaction (ON CONFLICT DO NOTHING).
// A concurrent delivery of the same event waits on the first one's row
// and then finds it.
func (s *Store) RecordBillingEvent(ctx context.Context, ev *controlplane.BillingEvent, tenantID, outcome string) error {
	var tid *string
	if tenantID != "" {
		tid = &tenantID
	}
	tag, err := s.db.Exec(ctx, `
		INSERT INTO billing_events (id, type, created_at, tenant_id, outcome) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (id) DO NOTHING`, ev.ID, ev.Type, ev.Created, tid, outcome)
	if err != nil {
		return translate(err, "tenant not found")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ECONFLICT, "event %s was processed before", ev.ID)
	}
	return nil
}

// LatestBillingEventAt returns the newest applied event of a type of a
// tenant (zero time when none).
func (s *Store) LatestBillingEventAt(ctx context.Context, tenantID, typ string) (time.Time, error) {
	var at *time.Time
	err := s.db.QueryRow(ctx, `
		SELECT max(created_at) FROM billing_events WHERE tenant_id = $1 AND type = $2 AND outcome = 'applied'`,
		tenantID, typ).Scan(&at)
	if err != nil || at == nil {
		return time.Time{}, translate(err, "")
	}
	return *at, nil
}

const subscriptionColumns = `id, tenant_id, status, current_period_start, current_period_end, cancel_at_period_end, event_at`

func scanSubscription(row pgx.Row) (*controlplane.Subscription, error) {
	sub := &controlplane.Subscription{}
	var start, end *time.Time
	err := row.Scan(&sub.ID, &sub.TenantID, &sub.Status, &start, &end, &sub.CancelAtPeriodEnd, &sub.EventAt)
	if err != nil {
		return nil, err
	}
	if start != nil {
		sub.CurrentPeriodStart = *start
	}
	if end != nil {
		sub.CurrentPeriodEnd = *end
	}
	return sub, nil
}

// FindSubscription returns a subscription, locked until the transaction ends.
func (s *Store) FindSubscription(ctx context.Context, id string) (*controlplane.Subscription, error) {
	sub, err := scanSubscription(s.db.QueryRow(ctx, `
		SELECT `+subscriptionColumns+` FROM billing_subscriptions WHERE id = $1 FOR UPDATE`, id))
	if err != nil {
		return nil, translate(err, "subscription not found")
	}
	return sub, nil
}

// UpsertSubscription stores sub.
func (s *Store) UpsertSubscription(ctx context.Context, sub *controlplane.Subscription) error {
	_, err := s.db.Exec(ctx, `
		INSERT INTO billing_subscriptions (`+subscriptionColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (id) DO UPDATE SET status = excluded.status,
			current_period_start = coalesce(excluded.current_period_start, billing_subscriptions.current_period_start),
			current_period_end = coalesce(excluded.current_period_end, billing_subscriptions.current_period_end),
			cancel_at_period_end = excluded.cancel_at_period_end, event_at = excluded.event_at, updated_at = now()
		WHERE billing_subscriptions.tenant_id = excluded.tenant_id`,
		sub.ID, sub.TenantID, sub.Status, nullTime(sub.CurrentPeriodStart), nullTime(sub.CurrentPeriodEnd),
		sub.CancelAtPeriodEnd, sub.EventAt)
	return translate(err, "tenant not found")
}

// FindSubscriptions returns a tenant's subscriptions, newest event first.
func (s *Store) FindSubscriptions(ctx context.Context, tenantID string) ([]*controlplane.Subscription, error) {
	rows, err := s.db.Query(ctx, `
		SELECT `+subscriptionColumns+` FROM billing_subscriptions WHERE tenant_id = $1
		ORDER BY event_at DESC, id`, tenantID)
	if err != nil {
		return nil, translate(err, "tenant not found")
	}
	defer rows.Close()
	var out []*controlplane.Subscription
	for rows.Next() {
		sub, err := scanSubscription(rows)
		if err != nil {
			return nil, translate(err, "")
		}
		out = append(out, sub)
	}
	return out, translate(rows.Err(), "")
}

// FindReportableUsage returns the scale days since `since` of tenants with
// a Stripe customer whose vehicle-days exceed what their reports hold.
func (s *Store) FindReportableUsage(ctx context.Context, since time.Time) ([]controlplane.UsageDue, error) {
	rows, err := s.db.Query(ctx, `
		WITH days AS (
			SELECT d.tenant_id, d.day, count(*) AS total
			FROM usage_vehicle_days d
			JOIN usage_daily u ON u.tenant_id = d.tenant_id AND u.day = d.day AND u.plan = 'scale'
			WHERE d.day >= $1::date
			GROUP BY d.tenant_id, d.day
		)
		SELECT days.tenant_id, t.stripe_customer_id, days.day, coalesce(r.reported, 0), days.total, coalesce(r.last_seq, 0) + 1
		FROM days
		JOIN tenants t ON t.id = days.tenant_id AND t.stripe_customer_id IS NOT NULL
		LEFT JOIN LATERAL (
			SELECT sum(quantity) AS reported, max(seq) AS last_seq FROM usage_reports r
			WHERE r.tenant_id = days.tenant_id AND r.day = days.day
		) r ON true
		WHERE days.total > coalesce(r.reported, 0)
		ORDER BY days.day, days.tenant_id`, since.UTC())
	if err != nil {
		return nil, translate(err, "")
	}
	defer rows.Close()
	var out []controlplane.UsageDue
	for rows.Next() {
		var d controlplane.UsageDue
		if err := rows.Scan(&d.TenantID, &d.CustomerID, &d.Day, &d.Reported, &d.Total, &d.NextSeq); err != nil {
			return nil, translate(err, "")
		}
		d.Day = d.Day.UTC()
		out = append(out, d)
	}
	return out, translate(rows.Err(), "")
}

// CreateUsageReport freezes r; a report with its (tenant, day, seq) answers
// ECONFLICT (another run froze the day's next report first).
func (s *Store) CreateUsageReport(ctx context.Context, r *controlplane.UsageReportRecord) error {
	tag, err := s.db.Exec(ctx, `
		INSERT INTO usage_reports (tenant_id, day, seq, customer_id, quantity, identifier, event_at)
		VALUES ($1, $2::date, $3, $4, $5, $6, $7)
		ON CONFLICT (tenant_id, day, seq) DO NOTHING`,
		r.TenantID, r.Day.UTC(), r.Seq, r.CustomerID, r.Quantity, r.Identifier, r.At)
	if err != nil {
		return translate(err, "tenant not found")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ECONFLICT, "usage report %d of %s was written by another run", r.Seq, r.Day.Format(time.DateOnly))
	}
	return nil
}

// FindPendingUsageReports returns reports Stripe has not accepted yet,
// oldest first.
func (s *Store) FindPendingUsageReports(ctx context.Context, limit int) ([]*controlplane.UsageReportRecord, error) {
	rows, err := s.db.Query(ctx, `
		SELECT tenant_id, day, seq, customer_id, quantity, identifier, event_at, attempts, last_error, created_at
		FROM usage_reports WHERE reported_at IS NULL AND abandoned_at IS NULL
		ORDER BY created_at, identifier LIMIT $1`, limit)
	if err != nil {
		return nil, translate(err, "")
	}
	defer rows.Close()
	var out []*controlplane.UsageReportRecord
	for rows.Next() {
		r := &controlplane.UsageReportRecord{}
		if err := rows.Scan(&r.TenantID, &r.Day, &r.Seq, &r.CustomerID, &r.Quantity, &r.Identifier, &r.At,
			&r.Attempts, &r.LastError, &r.CreatedAt); err != nil {
			return nil, translate(err, "")
		}
		r.Day = r.Day.UTC()
		out = append(out, r)
	}
	return out, translate(rows.Err(), "")
}

// MarkUsageReport records an attempt of r: accepted (reported_at set,
// once) or failed with errText.
func (s *Store) MarkUsageReport(ctx context.Context, r *controlplane.UsageReportRecord, reported bool, errText string, at time.Time) error {
	var rat *time.Time
	if reported {
		rat = &at
	}
	err := s.db.QueryRow(ctx, `
		UPDATE usage_reports SET attempts = attempts + 1, last_error = $2,
			reported_at = coalesce(reported_at, $3)
		WHERE identifier = $1 RETURNING attempts, reported_at`, r.Identifier, errText, rat).
		Scan(&r.Attempts, &r.ReportedAt)
	r.LastError = errText
	return translate(err, "usage report not found")
}

// AbandonUsageReport gives a pending report up: it is not resent.
func (s *Store) AbandonUsageReport(ctx context.Context, r *controlplane.UsageReportRecord, reason string, at time.Time) error {
	tag, err := s.db.Exec(ctx, `
		UPDATE usage_reports SET abandoned_at = $2, last_error = $3
		WHERE identifier = $1 AND reported_at IS NULL AND abandoned_at IS NULL`, r.Identifier, at, reason)
	if err != nil {
		return translate(err, "")
	}
	if tag.RowsAffected() == 0 {
		return controlplane.Errorf(controlplane.ENOTFOUND, "usage report not pending")
	}
	return nil
}

// nullTime is nil for the zero time.
func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
