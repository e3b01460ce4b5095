package controlplane

import (
	"context"
	"time"
)

// # Billing (DESIGN.md §5, docs/billing.md)
//
// Billing is off unless Config.Billing is set: every tenant then stays on
// its plan (free by default) and the billing endpoints answer
// ENOTIMPLEMENTED. With Stripe:
//
//   - A tenant gets a Stripe customer at its first checkout (idempotency
//     key per tenant, so two concurrent checkouts create one customer).
//   - Checkout subscribes the customer to the scale price (metered:
//     vehicle-days). The tenant's plan follows its subscriptions as the
//     webhooks report them: scale while one is entitled (active, trialing,
//     past_due — Stripe retries a failed payment for a while), free
//     otherwise (the downgrade grace of plan.go applies).
//   - Webhooks are verified (signature, 5-minute tolerance), recorded by
//     event ID in the transaction that applies them (processed once), and
//     applied per subscription only when newer than what was applied
//     before (out-of-order delivery); a canceled subscription is final.
//   - ReportUsage sends each scale day's vehicle-days as meter events; a
//     report is frozen in Postgres before it is sent and re-sent unchanged
//     (same identifier and idempotency key) until Stripe accepts it.

// Billing statuses of a tenant.
const (
	BillingNone     = "none"     // never subscribed
	BillingActive   = "active"   // an entitled subscription, last invoice paid
	BillingPastDue  = "past_due" // a payment failed; Stripe is retrying
	BillingCanceled = "canceled" // the subscription ended
)

// Billing is the payment provider (controlplane/stripebilling).
type Billing interface {
	// CreateCustomer creates the provider's customer of a tenant. Calls for
	// the same tenant are idempotent (they return the same customer).
	CreateCustomer(ctx context.Context, c BillingCustomer) (string, error)
	// CheckoutSession starts a subscription checkout for the scale plan and
	// returns the URL to send the user to.
	CheckoutSession(ctx context.Context, c CheckoutRequest) (string, error)
	// PortalSession returns a customer-portal URL.
	PortalSession(ctx context.Context, customerID, returnURL string) (string, error)
	// ReportUsage sends one usage report; r.Identifier is also the
	// idempotency key, so sending the same report twice counts it once.
	ReportUsage(ctx context.Context, r UsageReport) error
	// VerifyEvent checks a webhook's signature header against its payload
	// (timestamp within a 5-minute tolerance) and decodes it. A bad
	// signature, a stale timestamp or an undecodable payload is an
	// EINVALID error.
	VerifyEvent(payload []byte, signature string) (*BillingEvent, error)
}

// BillingCustomer is what the provider's customer is created with.
type BillingCustomer struct {
	TenantID string
	Name     string
	Email    string
}

// CheckoutRequest is a scale-plan checkout for a tenant's customer.
type CheckoutRequest struct {
	TenantID   string
	CustomerID string
	SuccessURL string
	CancelURL  string
}

// UsageReport is one meter event: Quantity vehicle-days of Day.
type UsageReport struct {
	TenantID   string
	CustomerID string
	Day        time.Time
	Quantity   int64
	Identifier string    // unique per report; the idempotency key
	At         time.Time // the event's timestamp (within Day)
}

// BillingEvent is a verified webhook event, reduced to what billing uses.
type BillingEvent struct {
	ID      string
	Type    string
	Created time.Time
	// TenantID is the tenant the event names (checkout's
	// client_reference_id, or metadata tenant_id); may be empty.
	TenantID   string
	CustomerID string
	// Subscription is set for customer.subscription.* events and for a
	// completed checkout (with the status it implies).
	Subscription *SubscriptionState
	// Invoice is set for invoice.* events.
	Invoice *InvoiceState
}

// Webhook event types billing handles; others are recorded and ignored.
const (
	EventCheckoutCompleted    = "checkout.session.completed"
	EventSubscriptionCreated  = "customer.subscription.created"
	EventSubscriptionUpdated  = "customer.subscription.updated"
	EventSubscriptionDeleted  = "customer.subscription.deleted"
	EventInvoicePaid          = "invoice.paid"
	EventInvoicePaymentFailed = "invoice.payment_failed"
)

// SubscriptionState is a subscription as an event reports it.
type SubscriptionState struct {
	ID                 string
	Status             string // Stripe's: active, trialing, past_due, canceled, unpaid, incomplete, incomplete_expired, paused
	CurrentPeriodStart time.Time
	CurrentPeriodEnd   time.Time
	CancelAtPeriodEnd  bool
}

// Entitled reports whether a subscription in this status gives the scale plan.
func (s SubscriptionState) Entitled() bool {
	switch s.Status {
	case "active", "trialing", "past_due":
		return true
	}
	return false
}

// InvoiceState is an invoice as an event reports it.
type InvoiceState struct {
	ID             string
	SubscriptionID string
	AmountDue      int64 // smallest currency unit
	AmountPaid     int64
	Currency       string
	HostedURL      string
	AttemptCount   int64
}

// Subscription is a tenant's subscription as stored.
type Subscription struct {
	SubscriptionState
	TenantID string
	EventAt  time.Time // created time of the newest event applied
}

// BillingStore persists billing (part of Store).
type BillingStore interface {
	// SetStripeCustomer records a tenant's customer ID.
	SetStripeCustomer(ctx context.Context, tenantID, customerID string) error
	// FindTenantByStripeCustomer finds the tenant of a customer (ENOTFOUND).
	FindTenantByStripeCustomer(ctx context.Context, customerID string) (*Tenant, error)
	// SetBillingStatus stores a tenant's billing status.
	SetBillingStatus(ctx context.Context, tenantID, status string) error
	// RecordBillingEvent stores an event's ID, type and outcome; an ID
	// stored before answers ECONFLICT (the caller's transaction then rolls
	// back: the event was processed already).
	RecordBillingEvent(ctx context.Context, ev *BillingEvent, tenantID, outcome string) error
	// LatestBillingEventAt returns the creation time of the newest applied
	// event of type typ of a tenant (zero when there is none).
	LatestBillingEventAt(ctx context.Context, tenantID, typ string) (time.Time, error)
	// FindSubscription returns a subscription (ENOTFOUND), locked until the
	// transaction ends.
	FindSubscription(ctx context.Context, id string) (*Subscription, error)
	// UpsertSubscription stores s.
	UpsertSubscription(ctx context.Context, s *Subscription) error
	// FindSubscriptions returns a tenant's subscriptions, newest event first.
	FindSubscriptions(ctx context.Context, tenantID string) ([]*Subscription, error)

	// FindReportableUsage returns, for tenants with a Stripe customer, the
	// vehicle-days of each scale day from `since` on that were not yet
	// written as usage reports (vehicle-days minus the reports' quantities).
	FindReportableUsage(ctx context.Context, since time.Time) ([]UsageDue, error)
	// CreateUsageReport freezes a report (seq = the day's next); it fails
	// with ECONFLICT when the day's reports changed meanwhile.
	CreateUsageReport(ctx context.Context, r *UsageReportRecord) error
	// FindPendingUsageReports returns reports neither accepted nor
	// abandoned, oldest first.
	FindPendingUsageReports(ctx context.Context, limit int) ([]*UsageReportRecord, error)
	// MarkUsageReport records an attempt: reported (accepted) or its error.
	MarkUsageReport(ctx context.Context, r *UsageReportRecord, reported bool, errText string, at time.Time) error
	// AbandonUsageReport gives a pending report up (it is not resent).
	AbandonUsageReport(ctx context.Context, r *UsageReportRecord, reason string, at time.Time) error
}

// UsageDue is a day's vehicle-days not yet reported.
type UsageDue struct {
	TenantID   string
	CustomerID string
	Day        time.Time
	Reported   int64 // vehicle-days in reports already written
	Total      int64 // vehicle-days now
	NextSeq    int
}

// UsageReportRecord is a usage report as stored.
type UsageReportRecord struct {
	UsageReport
	Seq        int
	Attempts   int
	LastError  string
	CreatedAt  time.Time // when it was frozen
	ReportedAt *time.Time
}
