package stripebilling

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/fleetplane/fleetplane/controlplane"
)

// VerifyEvent checks the Stripe-Signature header against the payload with
// the webhook secret, the signed timestamp within Tolerance of now (both
// ways: stripe-go only rejects old ones; one from the future means a clock
// is off, and accepting it would stretch the replay window), and decodes the
// event. Any failure is EINVALID with a message that names the problem and
// never echoes the secret or the header.
//
// API versions: the event is accepted whatever API version the webhook
// endpoint renders it in (IgnoreAPIVersionMismatch). An account's endpoints
// follow the account's default version, not stripe-go v76's 2023-10-16, and
// rejecting them would drop every event until someone re-creates the
// endpoint. We never decode into stripe-go's typed objects: we read a few
// fields with our own structs and accept both layouts Stripe has used for
// them (subscription periods at the top level or, from 2025-03-31, on the
// items; an invoice's subscription at the top level or under
// parent.subscription_details).
func (c *Client) VerifyEvent(payload []byte, signature string) (*controlplane.BillingEvent, error) {
	ev, err := webhook.ConstructEventWithOptions(payload, signature, c.webhookSecret, webhook.ConstructEventOptions{
		Tolerance:                c.tolerance,
		IgnoreAPIVersionMismatch: true,
	})
	if err != nil {
		return nil, c.signatureError(err)
	}
	if at, ok := signedAt(signature); ok && time.Until(at) > c.tolerance {
		return nil, invalid("webhook signature timestamp is more than %v in the future (is a clock off?)", c.tolerance)
	}
	if ev.ID == "" || ev.Type == "" || ev.Created <= 0 {
		return nil, invalid("webhook payload is not a Stripe event (no id, type or created time)")
	}
	out := &controlplane.BillingEvent{ID: ev.ID, Type: string(ev.Type), Created: time.Unix(ev.Created, 0).UTC()}
	if !handled(out.Type) {
		return out, nil
	}
	if ev.Data == nil || len(ev.Data.Raw) == 0 || string(ev.Data.Raw) == "null" {
		return nil, invalid("webhook event %s (%s) has no data.object", ev.ID, ev.Type)
	}
	if err := decodeObject(out, ev.Data.Raw); err != nil {
		return nil, invalid("webhook event %s (%s): %v", ev.ID, ev.Type, err)
	}
	return out, nil
}

func invalid(format string, args ...any) error {
	return controlplane.Errorf(controlplane.EINVALID, format, args...)
}

// signatureError explains a failure of stripe-go's verification.
func (c *Client) signatureError(err error) error {
	switch {
	case errors.Is(err, webhook.ErrNotSigned):
		return invalid("webhook has no Stripe-Signature header")
	case errors.Is(err, webhook.ErrInvalidHeader):
		return invalid("webhook Stripe-Signature header is malformed")
	case errors.Is(err, webhook.ErrNoValidSignature):
		return invalid("webhook signature does not match the payload (wrong webhook secret, or the body was altered)")
	case errors.Is(err, webhook.ErrTooOld):
		return invalid("webhook signature timestamp is older than %v (a replay, or a clock is off)", c.tolerance)
	}
	// The signature was valid: the payload is not JSON stripe-go can
	// read as an event. Its parser's message names the problem and holds no
	// secret.
	return invalid("webhook payload is not a Stripe event: %s", strings.TrimPrefix(err.Error(), "Failed to parse webhook body json: "))
}

// signedAt returns the header's timestamp the way stripe-go reads it (the
// last t=).
func signedAt(header string) (time.Time, bool) {
	var at time.Time
	var ok bool
	for _, pair := range strings.Split(header, ",") {
		if k, v, found := strings.Cut(pair, "="); found && k == "t" {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				at, ok = time.Unix(n, 0), true
			}
		}
	}
	return at, ok
}

func handled(typ string) bool {
	switch typ {
	case controlplane.EventCheckoutCompleted,
		controlplane.EventSubscriptionCreated, controlplane.EventSubscriptionUpdated, controlplane.EventSubscriptionDeleted,
		controlplane.EventInvoicePaid, controlplane.EventInvoicePaymentFailed:
		return true
	}
	return false
}

// decodeObject fills out from the event's data.object.
func decodeObject(out *controlplane.BillingEvent, raw []byte) error {
	switch out.Type {
	case controlplane.EventCheckoutCompleted:
		var s checkoutSession
		if err := unmarshalObject(raw, "a checkout session", &s); err != nil {
			return err
		}
		out.TenantID = s.ClientReferenceID
		if out.TenantID == "" {
			out.TenantID = s.Metadata["tenant_id"]
		}
		out.CustomerID = string(s.Customer)
		if s.Subscription != "" {
			// The subscription's own events carry its exact state; this is
			// what a completed checkout implies until they arrive.
			status := "incomplete" // an asynchronous payment method is still pending
			if s.Status == "complete" && (s.PaymentStatus == "paid" || s.PaymentStatus == "no_payment_required") {
				status = "active"
			}
			out.Subscription = &controlplane.SubscriptionState{ID: string(s.Subscription), Status: status}
		}

	case controlplane.EventSubscriptionCreated, controlplane.EventSubscriptionUpdated, controlplane.EventSubscriptionDeleted:
		var s subscription
		if err := unmarshalObject(raw, "a subscription", &s); err != nil {
			return err
		}
		if s.Status == "" {
			return errors.New("the subscription has no status")
		}
		start, end := s.CurrentPeriodStart, s.CurrentPeriodEnd
		if start == 0 && end == 0 {
			// API 2025-03-31 and later: the period is per item. Billing
			// has one item (the scale price); take the span of all.
			for _, it := range s.Items.Data {
				if it.CurrentPeriodStart != 0 && (start == 0 || it.CurrentPeriodStart < start) {
					start = it.CurrentPeriodStart
				}
				end = max(end, it.CurrentPeriodEnd)
			}
		}
		out.TenantID = s.Metadata["tenant_id"]
		out.CustomerID = string(s.Customer)
		out.Subscription = &controlplane.SubscriptionState{
			ID:                 s.ID,
			Status:             s.Status,
			CurrentPeriodStart: unixTime(start),
			CurrentPeriodEnd:   unixTime(end),
			CancelAtPeriodEnd:  s.CancelAtPeriodEnd,
		}

	case controlplane.EventInvoicePaid, controlplane.EventInvoicePaymentFailed:
		var in invoice
		if err := unmarshalObject(raw, "an invoice", &in); err != nil {
			return err
		}
		sub, meta := in.Subscription, map[string]string(nil)
		if in.SubscriptionDetails != nil {
			meta = in.SubscriptionDetails.Metadata
		}
		if p := in.Parent; p != nil && p.SubscriptionDetails != nil { // API 2025-03-31 and later
			if sub == "" {
				sub = p.SubscriptionDetails.Subscription
			}
			if meta == nil {
				meta = p.SubscriptionDetails.Metadata
			}
		}
		out.TenantID = meta["tenant_id"]
		out.CustomerID = string(in.Customer)
		out.Invoice = &controlplane.InvoiceState{
			ID:             in.ID,
			SubscriptionID: string(sub),
			AmountDue:      in.AmountDue,
			AmountPaid:     in.AmountPaid,
			Currency:       in.Currency,
			HostedURL:      in.HostedInvoiceURL,
			AttemptCount:   in.AttemptCount,
		}
	}
	return nil
}

// unmarshalObject decodes data.object into v (a pointer to one of the
// object structs below) and requires its id.
func unmarshalObject(raw []byte, what string, v interface{ header() objectHeader }) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("data.object is not %s: %v", what, err)
	}
	if h := v.header(); h.ID == "" {
		return fmt.Errorf("data.object (%s) has no id", what)
	}
	return nil
}

func unixTime(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}

// expandableID is a reference Stripe sends as an ID or, when expanded, as
// the object (whose id we take).
type expandableID string

func (e *expandableID) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*e = ""
		return nil
	}
	var id string
	if err := json.Unmarshal(b, &id); err == nil {
		*e = expandableID(id)
		return nil
	}
	var obj struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(b, &obj); err != nil {
		return errors.New("a reference is neither an ID nor an object with an id")
	}
	*e = expandableID(obj.ID)
	return nil
}

type objectHeader struct {
	ID string `json:"id"`
}

func (h objectHeader) header() objectHeader { return h }

type checkoutSession struct {
	objectHeader
	ClientReferenceID string            `json:"client_reference_id"`
	Customer          expandableID      `json:"customer"`
	Subscription      expandableID      `json:"subscription"`
	Status            string            `json:"status"`         // open, complete, expired
	PaymentStatus     string            `json:"payment_status"` // paid, unpaid, no_payment_required
	Metadata          map[string]string `json:"metadata"`
}

type subscription struct {
	objectHeader
	Status             string            `json:"status"`
	Customer           expandableID      `json:"customer"`
	CurrentPeriodStart int64             `json:"current_period_start"` // until API 2025-02-24
	CurrentPeriodEnd   int64             `json:"current_period_end"`
	CancelAtPeriodEnd  bool              `json:"cancel_at_period_end"`
	Metadata           map[string]string `json:"metadata"`
	Items              struct {
		Data []struct {
			CurrentPeriodStart int64 `json:"current_period_start"` // from API 2025-03-31
			CurrentPeriodEnd   int64 `json:"current_period_end"`
		} `json:"data"`
	} `json:"items"`
}

type invoice struct {
	objectHeader
	Customer            expandableID `json:"customer"`
	Subscription        expandableID `json:"subscription"` // until API 2025-02-24
	AmountDue           int64        `json:"amount_due"`
	AmountPaid          int64        `json:"amount_paid"`
	Currency            string       `json:"currency"`
	HostedInvoiceURL    string       `json:"hosted_invoice_url"`
	AttemptCount        int64        `json:"attempt_count"`
	SubscriptionDetails *struct {
		Metadata map[string]string `json:"metadata"`
	} `json:"subscription_details"` // until API 2025-02-24
	Parent *struct {
		SubscriptionDetails *struct {
			Subscription expandableID      `json:"subscription"`
			Metadata     map[string]string `json:"metadata"`
		} `json:"subscription_details"`
	} `json:"parent"` // from API 2025-03-31
}
