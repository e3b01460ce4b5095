package controlplane

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// BillingRedirect is where the caller should send the user.
type BillingRedirect struct {
	URL string
}

// WebhookResult is what HandleBillingWebhook did with an event.
type WebhookResult struct {
	EventID string
	Type    string
	// Outcome: applied, stale (older than what was applied), ignored
	// (a type billing does not handle), unknown_tenant, or duplicate (the
	// event ID was processed before; nothing changed).
	Outcome string
}

// Webhook outcomes.
const (
	OutcomeApplied       = "applied"
	OutcomeStale         = "stale"
	OutcomeIgnored       = "ignored"
	OutcomeUnknownTenant = "unknown_tenant"
	OutcomeDuplicate     = "duplicate"
)

// usageResendLimit is how long after it was frozen a usage report may be
// sent again: Stripe keeps idempotency keys and meter event identifiers
// for 24 hours, after which a resend could count twice. Older pending
// reports are abandoned for an operator to reconcile (never double-bill).
const usageResendLimit = 23 * time.Hour

// usageReportWindow is how far back ReportUsage looks for days whose
// vehicle-days were not all reported (a job that could not run for that
// long loses older days; pending reports are retried whatever their age).
const usageReportWindow = 48 * time.Hour

func (s *Service) billing() (Billing, error) {
	if s.cfg.Billing == nil {
		return nil, Errorf(ENOTIMPLEMENTED, "billing is not enabled on this installation: plans are changed by the operator (`fleetplane admin tenant plan`)")
	}
	return s.cfg.Billing, nil
}

// BillingCheckout starts a scale-plan checkout for the caller's tenant
// (admin role): it creates the tenant's Stripe customer the first time and
// returns the Checkout Session URL. The success and cancel URLs are the
// portal's billing page: never taken from the client.
func (s *Service) BillingCheckout(ctx context.Context) (*BillingRedirect, error) {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return nil, err
	}
	b, err := s.billing()
	if err != nil {
		return nil, err
	}
	t, err := s.store.FindTenantByID(ctx, p.TenantID)
	if err != nil {
		return nil, err
	}
	if t.Plan == PlanScale && (t.BillingStatus == BillingActive || t.BillingStatus == BillingPastDue) {
		return nil, Errorf(ECONFLICT, "the tenant already has a scale subscription; manage it with POST /v1/billing/portal")
	}
	customer, err := s.ensureCustomer(ctx, b, t)
	if err != nil {
		return nil, err
	}
	url, err := b.CheckoutSession(ctx, CheckoutRequest{
		TenantID:   t.ID,
		CustomerID: customer,
		SuccessURL: s.cfg.PublicURL + "/billing?checkout=success",
		CancelURL:  s.cfg.PublicURL + "/billing?checkout=cancel",
	})
	if err != nil {
		return nil, s.providerError(ctx, "starting a checkout", err)
	}
	err = s.store.Tx(ctx, func(tx Store) error {
		return s.audit(ctx, tx, p, "billing.checkout", "tenant", t.ID, map[string]any{"customer": customer})
	})
	if err != nil {
		return nil, err
	}
	return &BillingRedirect{URL: url}, nil
}

// ensureCustomer returns t's Stripe customer, creating it the first time.
// The provider call is idempotent per tenant, so two concurrent first
// checkouts create one customer and both store the same ID.
func (s *Service) ensureCustomer(ctx context.Context, b Billing, t *Tenant) (string, error) {
	if t.StripeCustomerID != "" {
		return t.StripeCustomerID, nil
	}
	id, err := b.CreateCustomer(ctx, BillingCustomer{TenantID: t.ID, Name: t.Name})
	if err != nil {
		return "", s.providerError(ctx, "creating the billing customer", err)
	}
	if err := s.store.SetStripeCustomer(ctx, t.ID, id); err != nil {
		return "", err
	}
	t.StripeCustomerID = id
	return id, nil
}

// BillingPortal returns a Stripe customer-portal URL for the caller's
// tenant (admin role). ECONFLICT when the tenant never checked out.
func (s *Service) BillingPortal(ctx context.Context) (*BillingRedirect, error) {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return nil, err
	}
	b, err := s.billing()
	if err != nil {
		return nil, err
	}
	t, err := s.store.FindTenantByID(ctx, p.TenantID)
	if err != nil {
		return nil, err
	}
	if t.StripeCustomerID == "" {
		return nil, Errorf(ECONFLICT, "the tenant has no billing account yet; start with POST /v1/billing/checkout")
	}
	url, err := b.PortalSession(ctx, t.StripeCustomerID, s.cfg.PublicURL+"/billing")
	if err != nil {
		return nil, s.providerError(ctx, "opening the billing portal", err)
	}
	return &BillingRedirect{URL: url}, nil
}

// providerError logs a payment-provider failure and returns what the
// caller may see: coded errors (unavailable, invalid) as they are, others
// as internal.
func (s *Service) providerError(ctx context.Context, what string, err error) error {
	s.logger.ErrorContext(ctx, "billing provider: "+what, "err", err)
	var e *Error
	if errors.As(err, &e) && e.Code != EINTERNAL {
		return err
	}
	return fmt.Errorf("billing provider: %s: %w", what, err)
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// HandleBillingWebhook verifies and applies one webhook delivery (no
// caller principal: the signature authenticates it). A bad signature or a
// stale timestamp is EINVALID. The event's ID is recorded in the
// transaction that applies it, so a replay (or a concurrent duplicate
// delivery) changes nothing and answers outcome duplicate.
func (s *Service) HandleBillingWebhook(ctx context.Context, payload []byte, signature string) (*WebhookResult, error) {
	b, err := s.billing()
	if err != nil {
		return nil, err
	}
	ev, err := b.VerifyEvent(payload, signature)
	if err != nil {
		return nil, err
	}
	if ev.ID == "" {
		return nil, Errorf(EINVALID, "the event has no id")
	}
	res := &WebhookResult{EventID: ev.ID, Type: ev.Type}
	var iss Issuer
	if ev.Subscription != nil {
		if iss, err = s.issuer(); err != nil {
			return nil, err
		}
	}
	var pushTenant string
	duplicate := false
	err = s.store.Tx(ctx, func(tx Store) error {
		pushTenant, duplicate = "", false
		t, err := s.eventTenant(ctx, tx, ev)
		if err != nil {
			return err
		}
		tenantID := ""
		outcome := OutcomeIgnored
		switch {
		case !handledEvent(ev.Type):
			if t != nil {
				tenantID = t.ID
			}
		case t == nil:
			outcome = OutcomeUnknownTenant
		default:
			tenantID = t.ID
			var changed bool
			outcome, changed, err = s.applyBillingEvent(ctx, tx, iss, t, ev)
			if err != nil {
				return err
			}
			if changed {
				pushTenant = t.ID
			}
		}
		res.Outcome = outcome
		err = tx.RecordBillingEvent(ctx, ev, tenantID, outcome)
		duplicate = ErrorCode(err) == ECONFLICT
		return err
	})
	if duplicate {
		// Processed before: this transaction rolled back whatever it did.
		res.Outcome, pushTenant, err = OutcomeDuplicate, "", nil
	}
	if err != nil {
		return nil, err
	}
	s.logger.InfoContext(ctx, "billing event", "id", ev.ID, "type", ev.Type, "outcome", res.Outcome)
	if pushTenant != "" {
		s.pushAfterCommit(ctx, pushTenant)
	}
	return res, nil
}

func handledEvent(typ string) bool {
	switch typ {
	case EventCheckoutCompleted, EventSubscriptionCreated, EventSubscriptionUpdated, EventSubscriptionDeleted,
		EventInvoicePaid, EventInvoicePaymentFailed:
		return true
	}
	return false
}

// eventTenant finds the tenant an event is about, locked: by its Stripe
// customer, else (a completed checkout of a tenant whose customer was not
// stored yet) by the checkout's client_reference_id, which then gets the
// customer.
// nil when no tenant matches.
func (s *Service) eventTenant(ctx context.Context, tx Store, ev *BillingEvent) (*Tenant, error) {
	var t *Tenant
	if ev.CustomerID != "" {
		found, err := tx.FindTenantByStripeCustomer(ctx, ev.CustomerID)
		switch {
		case err == nil:
			t = found
		case ErrorCode(err) != ENOTFOUND:
			return nil, err
		}
	}
	// Only a completed checkout — which our own CheckoutSession started
	// with client_reference_id = the tenant — binds a customer to a tenant;
	// other events find their tenant by the customer alone.
	if t == nil && ev.Type == EventCheckoutCompleted && uuidRE.MatchString(ev.TenantID) && ev.CustomerID != "" {
		found, err := tx.FindTenantByID(ctx, ev.TenantID)
		switch {
		case ErrorCode(err) == ENOTFOUND:
			return nil, nil
		case err != nil:
			return nil, err
		case found.StripeCustomerID != "":
			// The tenant has another customer: not this event's tenant.
			return nil, nil
		}
		if err := tx.SetStripeCustomer(ctx, found.ID, ev.CustomerID); err != nil {
			return nil, err
		}
		t = found
	}
	if t == nil {
		return nil, nil
	}
	return tx.LockTenant(ctx, t.ID)
}

// applyBillingEvent applies a handled event to tenant t (locked in tx).
// It reports the outcome and whether the account changed (push after
// commit).
func (s *Service) applyBillingEvent(ctx context.Context, tx Store, iss Issuer, t *Tenant, ev *BillingEvent) (string, bool, error) {
	actor := &Principal{TenantID: t.ID, ActorType: "system", ActorID: "billing"}
	switch {
	case ev.Subscription != nil:
		return s.applySubscription(ctx, tx, iss, t, ev, actor)
	case ev.Invoice != nil && ev.Type == EventInvoicePaymentFailed:
		// Stripe retries the payment; the subscription's own events
		// (past_due, then canceled or unpaid) change the plan. A failure
		// older than the last payment (delivered late) changes nothing.
		paid, err := tx.LatestBillingEventAt(ctx, t.ID, EventInvoicePaid)
		if err != nil {
			return "", false, err
		}
		if ev.Created.Before(paid) {
			return OutcomeStale, false, nil
		}
		if t.BillingStatus == BillingActive {
			if err := tx.SetBillingStatus(ctx, t.ID, BillingPastDue); err != nil {
				return "", false, err
			}
		}
		return OutcomeApplied, false, s.audit(ctx, tx, actor, "billing.payment_failed", "invoice", ev.Invoice.ID, map[string]any{
			"amount_due": ev.Invoice.AmountDue, "currency": ev.Invoice.Currency,
			"attempt_count": ev.Invoice.AttemptCount, "invoice_url": ev.Invoice.HostedURL,
		})
	case ev.Invoice != nil && ev.Type == EventInvoicePaid:
		failed, err := tx.LatestBillingEventAt(ctx, t.ID, EventInvoicePaymentFailed)
		if err != nil {
			return "", false, err
		}
		if t.BillingStatus == BillingPastDue && !ev.Created.Before(failed) {
			if err := tx.SetBillingStatus(ctx, t.ID, BillingActive); err != nil {
				return "", false, err
			}
		}
		return OutcomeApplied, false, s.audit(ctx, tx, actor, "billing.invoice_paid", "invoice", ev.Invoice.ID, map[string]any{
			"amount_paid": ev.Invoice.AmountPaid, "currency": ev.Invoice.Currency,
		})
	}
	return OutcomeIgnored, false, nil
}

// subscriptionRank orders statuses for events of the same second: a
// subscription only moves forward (incomplete → live → ended).
func subscriptionRank(status string) int {
	switch status {
	case "incomplete":
		return 0
	case "canceled", "incomplete_expired":
		return 2
	}
	return 1
}

// applySubscription stores the subscription state an event reports unless
// a newer one was applied (events arrive out of order; a canceled
// subscription is final), then derives the tenant's plan and billing
// status from all its subscriptions.
func (s *Service) applySubscription(ctx context.Context, tx Store, iss Issuer, t *Tenant, ev *BillingEvent, actor *Principal) (string, bool, error) {
	in := ev.Subscription
	if in.ID == "" {
		return OutcomeIgnored, false, nil
	}
	old, err := tx.FindSubscription(ctx, in.ID)
	switch {
	case ErrorCode(err) == ENOTFOUND:
		old = nil
	case err != nil:
		return "", false, err
	}
	if old != nil {
		if old.TenantID != t.ID {
			return OutcomeUnknownTenant, false, nil
		}
		stale := ev.Created.Before(old.EventAt) ||
			(ev.Created.Equal(old.EventAt) && subscriptionRank(in.Status) < subscriptionRank(old.Status)) ||
			subscriptionRank(old.Status) == 2
		if stale {
			return OutcomeStale, false, nil
		}
	}
	sub := &Subscription{SubscriptionState: *in, TenantID: t.ID, EventAt: ev.Created}
	if err := tx.UpsertSubscription(ctx, sub); err != nil {
		return "", false, err
	}
	subs, err := tx.FindSubscriptions(ctx, t.ID)
	if err != nil {
		return "", false, err
	}
	plan, status := PlanFree, BillingCanceled
	for _, x := range subs {
		if !x.Entitled() {
			continue
		}
		plan = PlanScale
		if x.Status == "past_due" {
			status = BillingPastDue
		} else if status != BillingPastDue {
			status = BillingActive
		}
	}
	if err := tx.SetBillingStatus(ctx, t.ID, status); err != nil {
		return "", false, err
	}
	changed, err := s.changePlanTx(ctx, tx, iss, t, plan, "billing")
	if err != nil {
		return "", false, err
	}
	err = s.audit(ctx, tx, actor, "billing.subscription", "subscription", in.ID, map[string]any{
		"event": ev.Type, "status": in.Status, "plan": plan, "billing_status": status,
	})
	return OutcomeApplied, changed, err
}

// ReportUsage freezes and sends the vehicle-days not yet reported (the
// report_usage job). Each report is written before it is sent, with an
// identifier that is also the idempotency key; a report that failed or
// whose answer was lost is sent again unchanged by the next run, so Stripe
// counts it once. Without billing it does nothing.
func (s *Service) ReportUsage(ctx context.Context) (*UsageReportRun, error) {
	run := &UsageReportRun{}
	b, err := s.billing()
	if err != nil {
		return run, nil
	}
	now := s.now().UTC()
	due, err := s.store.FindReportableUsage(ctx, dayOf(now.Add(-usageReportWindow)))
	if err != nil {
		return run, err
	}
	for _, d := range due {
		at := d.Day.Add(24*time.Hour - time.Second)
		if now.Before(at) {
			at = now
		}
		r := &UsageReportRecord{
			UsageReport: UsageReport{
				TenantID: d.TenantID, CustomerID: d.CustomerID, Day: d.Day,
				Quantity:   d.Total - d.Reported,
				Identifier: fmt.Sprintf("fp-usage-%s-%s-%d", d.TenantID, d.Day.Format("20060102"), d.NextSeq),
				At:         at,
			},
			Seq: d.NextSeq,
		}
		switch err := s.store.CreateUsageReport(ctx, r); {
		case ErrorCode(err) == ECONFLICT:
			continue // another run froze it first; it sends it
		case err != nil:
			return run, err
		}
		run.Created++
	}
	pending, err := s.store.FindPendingUsageReports(ctx, 1000)
	if err != nil {
		return run, err
	}
	var lastErr error
	for _, r := range pending {
		if age := s.now().Sub(r.CreatedAt); age > usageResendLimit {
			reason := fmt.Sprintf("not accepted within %s after %d attempts (last: %s); not resent to avoid double counting: reconcile with Stripe's meter event summaries",
				usageResendLimit, r.Attempts, r.LastError)
			if err := s.store.AbandonUsageReport(ctx, r, reason, s.now()); err != nil && ErrorCode(err) != ENOTFOUND {
				return run, err
			}
			run.Abandoned++
			s.logger.ErrorContext(ctx, "usage report abandoned", "tenant", r.TenantID, "day", r.Day.Format(time.DateOnly),
				"seq", r.Seq, "quantity", r.Quantity, "identifier", r.Identifier)
			continue
		}
		if run.Failed > 0 && ErrorCode(lastErr) == EUNAVAILABLE {
			run.Failed++ // Stripe is down: leave the rest for the next run
			continue
		}
		sendErr := b.ReportUsage(ctx, r.UsageReport)
		lastErr = sendErr
		errText := ""
		if sendErr != nil {
			errText = sendErr.Error()
			run.Failed++
			s.logger.WarnContext(ctx, "usage report failed; retried by the next run",
				"tenant", r.TenantID, "day", r.Day.Format(time.DateOnly), "seq", r.Seq, "err", sendErr)
		} else {
			run.Reported++
		}
		if err := s.store.MarkUsageReport(ctx, r, sendErr == nil, errText, s.now()); err != nil {
			return run, err
		}
	}
	if run.Failed > 0 {
		return run, Errorf(EUNAVAILABLE, "%d of %d usage reports were not accepted; they are retried", run.Failed, len(pending))
	}
	return run, nil
}
