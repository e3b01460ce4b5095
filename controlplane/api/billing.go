package api

import (
	"errors"
	"io"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/httpx"
)

// Handlers of usage and billing (docs/plans.md, controlplane/billing.go):
// GET /v1/usage, the Stripe checkout and portal redirects, and Stripe's
// webhook. Where Stripe sends the user back is the service's business
// (from its public URL): no redirect target is ever read from a request.

// MaxWebhookBodyBytes limits a Stripe webhook delivery. Stripe's events
// are a few KiB; the limit is the service's, not Options.MaxBodyBytes.
const MaxWebhookBodyBytes int64 = 64 << 10

// stripeSignatureHeader authenticates a webhook delivery.
const (
	stripeSignatureHeader   = "Stripe-Signature"
	maxStripeSignatureBytes = 4096 // openapi.yaml says the same
)

// billingRoutes are the tenant-scoped routes (inside authenticate).
func (s *server) billingRoutes(r chi.Router) {
	r.Get("/v1/usage", s.handle(s.getUsage))
	r.With(s.idempotent(nil)).Post("/v1/billing/checkout", s.handle(s.createBillingCheckout))
	r.With(s.idempotent(portalNote)).Post("/v1/billing/portal", s.handle(s.createBillingPortal))
}

func (s *server) getUsage(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	u, err := s.svc.Usage(r.Context())
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, usageOut(u))
}

func (s *server) createBillingCheckout(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	if err := s.noBody(w, r); err != nil {
		return err
	}
	red, err := s.svc.BillingCheckout(r.Context())
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, BillingRedirect{Url: red.URL})
}

func (s *server) createBillingPortal(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	if err := s.noBody(w, r); err != nil {
		return err
	}
	red, err := s.svc.BillingPortal(r.Context())
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store") // a short-lived credential
	return writeJSON(w, http.StatusOK, BillingRedirect{Url: red.URL})
}

// portalNote is the replay of a portal request: the session URL is a
// credential for the tenant's billing account and is not stored.
func portalNote([]byte) string {
	return "the request with this Idempotency-Key already created a customer-portal session; its URL is a short-lived " +
		"credential and is not stored. Request a new session (POST /v1/billing/portal with a new key or none)"
}

// billingWebhook receives a Stripe event. The body goes to the service
// exactly as it arrived, since the signature covers those bytes: it is
// never decoded here. Public (the signature authenticates it) and never
// idempotent by header (Stripe's event ID is the key).
func (s *server) billingWebhook(w http.ResponseWriter, r *http.Request) error {
	// The query string is not looked at: an endpoint URL configured in
	// Stripe with a query must not break deliveries.
	sigs := r.Header.Values(stripeSignatureHeader)
	if len(sigs) == 0 || sigs[0] == "" {
		return controlplane.Errorf(controlplane.EINVALID, "missing %s header: webhook deliveries must be signed by Stripe", stripeSignatureHeader)
	}
	if len(sigs) > 1 || len(sigs[0]) > maxStripeSignatureBytes {
		return controlplane.Errorf(controlplane.EINVALID, "%s: give the header once, at most %d bytes", stripeSignatureHeader, maxStripeSignatureBytes)
	}
	if err := httpx.CheckContentType(r.Header.Get("Content-Type")); err != nil {
		return controlplane.Errorf(codeUnsupportedMediaType, "%s", err.Error())
	}
	if r.Body == nil {
		return controlplane.Errorf(controlplane.EINVALID, "request body is empty; expected a Stripe event")
	}
	payload, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxWebhookBodyBytes))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return controlplane.Errorf(controlplane.ETOOLARGE, "%s", httpx.TooLarge(mbe.Limit).Detail)
	} else if err != nil {
		return controlplane.Errorf(controlplane.EINVALID, "reading the request body failed")
	}
	if len(payload) == 0 {
		return controlplane.Errorf(controlplane.EINVALID, "request body is empty; expected a Stripe event")
	}
	res, err := s.svc.HandleBillingWebhook(r.Context(), payload, sigs[0])
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, WebhookResult{EventId: res.EventID, Type: res.Type, Outcome: WebhookResultOutcome(res.Outcome)})
}

// --- conversions ---

func usageOut(u *controlplane.UsageSummary) Usage {
	out := Usage{
		Plan:          Plan(u.Plan),
		BillingStatus: BillingStatus(u.BillingStatus),
		GraceUntil:    utcPtr(u.GraceUntil),
		Period:        UsagePeriod{Start: utc(u.PeriodStart), End: utc(u.PeriodEnd)},
		Limits:        UsageLimits{Vehicles: limitOut(u.Limits.Vehicles), Grants: limitOut(u.Limits.Grants)},
		Current: UsageCurrent{Vehicles: u.Current.Vehicles, VehiclesOnline: u.Current.VehiclesOnline,
			ActiveGrants: u.Current.ActiveGrants},
		Daily: listOut(u.Daily, usageDayOut),
	}
	if out.BillingStatus == "" {
		out.BillingStatus = BillingStatusNone
	}
	if p := u.Projected; p != nil {
		out.ProjectedCharge = &ProjectedCharge{Currency: p.Currency, UnitAmountCents: p.UnitAmountCents,
			VehicleDays: p.VehicleDays, ProjectedVehicleDays: p.ProjectedVehicleDays, AmountCents: p.AmountCents}
	}
	return out
}

// limitOut turns the domain's 0 = unlimited into the API's null.
func limitOut(n int) *int {
	if n <= 0 {
		return nil
	}
	return &n
}

func usageDayOut(d controlplane.UsageDay) UsageDay {
	return UsageDay{
		Day:                d.Day.UTC().Format("2006-01-02"),
		Plan:               Plan(d.Plan),
		VehiclesRegistered: d.VehiclesRegistered,
		VehiclesOnline:     d.VehiclesOnline,
		MsgsIn:             d.MsgsIn,
		MsgsOut:            d.MsgsOut,
		BytesIn:            d.BytesIn,
		BytesOut:           d.BytesOut,
	}
}
