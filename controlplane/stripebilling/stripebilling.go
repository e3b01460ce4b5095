// Package stripebilling implements controlplane.Billing with Stripe
// (stripe-go v76): customers, Checkout for the scale plan's metered price,
// the customer portal, usage as Billing Meter events, and webhook
// verification and decoding.
//
// Each Client has its own stripe-go client.API and backends (never the
// package-level stripe.Key or backends), so several can coexist (tests,
// stripe-mock in `fleetplane dev`). The secret key and the webhook secret
// never appear in a log line or an error.
//
// It imports controlplane and stripe-go only; never another adapter (only
// cmd/ wires adapters).
package stripebilling

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/billing/meterevent"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/fleetplane/fleetplane/controlplane"
)

// DefaultMeterEventName is the event name of the vehicle-days meter.
const DefaultMeterEventName = "fleetplane_vehicle_days"

// DefaultTolerance is how far a webhook's signed timestamp may be from now.
const DefaultTolerance = 5 * time.Minute

// DefaultTimeout bounds one HTTP attempt when Config.HTTPClient is nil.
const DefaultTimeout = 30 * time.Second

// maxNetworkRetries is how often stripe-go retries a customer, checkout
// or portal call that failed on the way (connection error, 409 — e.g. a
// concurrent request holding the same idempotency key —, 503, lock
// timeout), with backoff (0.5 s, then 1 s). Every POST carries an
// idempotency key that its retries reuse (ours, or one stripe-go generates
// per call), so a retry never doubles a customer. Two keeps a user-facing
// checkout within a few seconds when Stripe refuses connections; the
// caller's context deadline bounds the slower failures (each attempt has
// DefaultTimeout).
//
// Meter events are never retried here: the usage job is their retry loop
// (a frozen report is resent unchanged by the next run), and in-call
// retries would only stretch a run over many reports while Stripe is down.
const maxNetworkRetries = 2

// Config configures a Client.
type Config struct {
	// SecretKey is the Stripe secret (sk_...) or restricted (rk_...) key.
	SecretKey string
	// WebhookSecret is the webhook endpoint's signing secret (whsec_...).
	WebhookSecret string
	// ScalePriceID is the scale plan's metered price (price_...), attached
	// to the meter named MeterEventName.
	ScalePriceID string
	// MeterEventName is the meter's event name; default
	// DefaultMeterEventName.
	MeterEventName string
	// APIBase replaces https://api.stripe.com (e.g. stripe-mock's URL).
	APIBase string
	// HTTPClient sends the requests (tests record them); nil means a client
	// with DefaultTimeout.
	HTTPClient *http.Client
	// Tolerance is the webhook timestamp tolerance; default
	// DefaultTolerance.
	Tolerance time.Duration
	// Logger receives stripe-go's warnings and errors at debug level (the
	// errors are returned too, and logged by the caller); nil discards them.
	Logger *slog.Logger
}

// Client is a controlplane.Billing backed by Stripe.
type Client struct {
	api           *client.API
	meterEvents   *meterevent.Client // without retries
	webhookSecret string
	priceID       string
	meterEvent    string
	tolerance     time.Duration
	redact        func(string) string
}

var _ controlplane.Billing = (*Client)(nil)

// New validates cfg and returns a Client. It makes no request.
func New(cfg Config) (*Client, error) {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	switch {
	case cfg.SecretKey == "":
		bad("SecretKey is required")
	case !strings.HasPrefix(cfg.SecretKey, "sk_") && !strings.HasPrefix(cfg.SecretKey, "rk_"):
		bad("SecretKey is not a Stripe secret or restricted key (sk_... or rk_...)")
	}
	switch {
	case cfg.WebhookSecret == "":
		bad("WebhookSecret is required")
	case !strings.HasPrefix(cfg.WebhookSecret, "whsec_"):
		bad("WebhookSecret is not a webhook signing secret (whsec_...)")
	}
	switch {
	case cfg.ScalePriceID == "":
		bad("ScalePriceID is required")
	case !strings.HasPrefix(cfg.ScalePriceID, "price_"):
		bad("ScalePriceID %q is not a price ID (price_...)", cfg.ScalePriceID)
	}
	if cfg.MeterEventName == "" {
		cfg.MeterEventName = DefaultMeterEventName
	} else if strings.TrimSpace(cfg.MeterEventName) != cfg.MeterEventName || len(cfg.MeterEventName) > 100 {
		bad("MeterEventName %q must have no surrounding spaces and at most 100 characters", cfg.MeterEventName)
	}
	if cfg.APIBase != "" {
		u, err := url.Parse(cfg.APIBase)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			bad("APIBase %q is not an http(s) base URL", cfg.APIBase)
		}
	}
	if cfg.Tolerance == 0 {
		cfg.Tolerance = DefaultTolerance
	} else if cfg.Tolerance < 0 {
		bad("Tolerance %v is negative", cfg.Tolerance)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("stripebilling: invalid config: %s", strings.Join(problems, "; "))
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: DefaultTimeout}
	}

	redact := secretRedactor(cfg.SecretKey, cfg.WebhookSecret)
	// One config per backend: GetBackendWithConfig fills in defaults in the
	// struct it is given (NewBackendsWithConfig would give all three the
	// API URL).
	backend := func(t stripe.SupportedBackend, retries int64) stripe.Backend {
		bc := &stripe.BackendConfig{
			HTTPClient:        cfg.HTTPClient,
			LeveledLogger:     &leveledLogger{l: cfg.Logger, redact: redact},
			MaxNetworkRetries: stripe.Int64(retries),
			EnableTelemetry:   stripe.Bool(false),
		}
		if cfg.APIBase != "" {
			bc.URL = stripe.String(cfg.APIBase)
		}
		return stripe.GetBackendWithConfig(t, bc)
	}
	api := client.New(cfg.SecretKey, &stripe.Backends{
		API:     backend(stripe.APIBackend, maxNetworkRetries),
		Connect: backend(stripe.ConnectBackend, maxNetworkRetries),
		Uploads: backend(stripe.UploadsBackend, maxNetworkRetries),
	})
	return &Client{
		api:           api,
		meterEvents:   &meterevent.Client{B: backend(stripe.APIBackend, 0), Key: cfg.SecretKey},
		webhookSecret: cfg.WebhookSecret,
		priceID:       cfg.ScalePriceID,
		meterEvent:    cfg.MeterEventName,
		tolerance:     cfg.Tolerance,
		redact:        redact,
	}, nil
}

// CustomerIdempotencyKey is the idempotency key of a tenant's customer
// creation: concurrent or repeated calls within Stripe's 24-hour key
// lifetime return the one customer.
func CustomerIdempotencyKey(tenantID string) string { return "fleetplane-customer-" + tenantID }

// CreateCustomer creates the tenant's Stripe customer (name, email,
// metadata tenant_id). Stripe answers a reuse of the idempotency key with
// different parameters (the tenant renamed within 24 hours) with an
// idempotency error.
func (c *Client) CreateCustomer(ctx context.Context, bc controlplane.BillingCustomer) (string, error) {
	const op = "creating the customer"
	if bc.TenantID == "" {
		return "", fmt.Errorf("stripebilling: %s: no tenant ID", op)
	}
	p := &stripe.CustomerParams{Metadata: map[string]string{"tenant_id": bc.TenantID}}
	if bc.Name != "" {
		p.Name = stripe.String(bc.Name)
	}
	if bc.Email != "" {
		p.Email = stripe.String(bc.Email)
	}
	p.Context = ctx
	p.SetIdempotencyKey(CustomerIdempotencyKey(bc.TenantID))
	cust, err := c.api.Customers.New(p)
	if err != nil {
		return "", c.apiError(op, err)
	}
	if cust.ID == "" {
		return "", fmt.Errorf("stripebilling: %s: Stripe answered without a customer ID", op)
	}
	return cust.ID, nil
}

// CheckoutSession creates a subscription-mode Checkout session for the
// scale price (metered, so no quantity) and returns its URL. The tenant ID
// travels as client_reference_id and as metadata of the session and of the
// subscription it creates, so every later webhook names the tenant.
func (c *Client) CheckoutSession(ctx context.Context, r controlplane.CheckoutRequest) (string, error) {
	const op = "creating the checkout session"
	if err := required(op, "tenant ID", r.TenantID, "customer ID", r.CustomerID,
		"success URL", r.SuccessURL, "cancel URL", r.CancelURL); err != nil {
		return "", err
	}
	p := &stripe.CheckoutSessionParams{
		Mode:              stripe.String(string(stripe.CheckoutSessionModeSubscription)),
		Customer:          stripe.String(r.CustomerID),
		ClientReferenceID: stripe.String(r.TenantID),
		LineItems:         []*stripe.CheckoutSessionLineItemParams{{Price: stripe.String(c.priceID)}},
		SubscriptionData: &stripe.CheckoutSessionSubscriptionDataParams{
			Metadata: map[string]string{"tenant_id": r.TenantID},
		},
		Metadata:   map[string]string{"tenant_id": r.TenantID},
		SuccessURL: stripe.String(r.SuccessURL),
		CancelURL:  stripe.String(r.CancelURL),
	}
	p.Context = ctx
	s, err := c.api.CheckoutSessions.New(p)
	if err != nil {
		return "", c.apiError(op, err)
	}
	if s.URL == "" {
		return "", fmt.Errorf("stripebilling: %s: Stripe answered without a URL (session %s)", op, s.ID)
	}
	return s.URL, nil
}

// PortalSession creates a customer-portal session and returns its URL.
func (c *Client) PortalSession(ctx context.Context, customerID, returnURL string) (string, error) {
	const op = "creating the portal session"
	if err := required(op, "customer ID", customerID, "return URL", returnURL); err != nil {
		return "", err
	}
	p := &stripe.BillingPortalSessionParams{
		Customer:  stripe.String(customerID),
		ReturnURL: stripe.String(returnURL),
	}
	p.Context = ctx
	s, err := c.api.BillingPortalSessions.New(p)
	if err != nil {
		return "", c.apiError(op, err)
	}
	if s.URL == "" {
		return "", fmt.Errorf("stripebilling: %s: Stripe answered without a URL (session %s)", op, s.ID)
	}
	return s.URL, nil
}

// ReportUsage sends one Billing Meter event: payload stripe_customer_id and
// value (vehicle-days), identifier r.Identifier (Stripe deduplicates
// identifiers within 24 hours), timestamp r.At. r.Identifier is also the
// idempotency key, so a resent report (lost answer, retry) counts once.
// It makes one attempt (see maxNetworkRetries).
func (c *Client) ReportUsage(ctx context.Context, r controlplane.UsageReport) error {
	const op = "reporting usage"
	if err := required(op, "customer ID", r.CustomerID, "identifier", r.Identifier); err != nil {
		return err
	}
	switch {
	case len(r.Identifier) > 100:
		return fmt.Errorf("stripebilling: %s: identifier %q is longer than Stripe's 100 characters", op, r.Identifier)
	case r.Quantity < 0:
		return fmt.Errorf("stripebilling: %s: negative quantity %d (report %s)", op, r.Quantity, r.Identifier)
	case r.At.IsZero():
		return fmt.Errorf("stripebilling: %s: no timestamp (report %s)", op, r.Identifier)
	}
	p := &stripe.BillingMeterEventParams{
		EventName: stripe.String(c.meterEvent),
		Payload: map[string]string{
			"stripe_customer_id": r.CustomerID,
			"value":              fmt.Sprint(r.Quantity),
		},
		Identifier: stripe.String(r.Identifier),
		Timestamp:  stripe.Int64(r.At.Unix()),
	}
	p.Context = ctx
	p.SetIdempotencyKey(r.Identifier)
	if _, err := c.meterEvents.New(p); err != nil {
		return c.apiError(op, err)
	}
	return nil
}

// required fails when one of the (name, value) pairs has an empty value:
// the domain always passes them, so a missing one is a bug (uncoded).
func required(op string, pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if pairs[i+1] == "" {
			return fmt.Errorf("stripebilling: %s: no %s", op, pairs[i])
		}
	}
	return nil
}

// apiError turns a stripe-go error into one the domain can act on:
//
//   - Stripe unreachable (network, timeout), 5xx, 429, 409 (a concurrent
//     request with the same idempotency key still running): EUNAVAILABLE
//     "payment provider unavailable"; the cause stays in the chain (for the
//     logs), not in the message.
//   - Stripe rejected the request (invalid request, card, idempotency,
//     authentication): an uncoded error saying what failed and why; the
//     domain logs it and answers "internal error" (it is a configuration
//     problem or a bug, not the caller's).
//
// Either way the text never contains the secret key (stripe-mock echoes a
// rejected Authorization header; Stripe echoes a masked key).
func (c *Client) apiError(op string, err error) error {
	var se *stripe.Error
	if !errors.As(err, &se) {
		// Context errors keep their identity (errors.Is); anything else
		// (dial, TLS, timeout, undecodable answer) is reduced to its
		// redacted text.
		cause := err
		if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			cause = errors.New(c.redact(err.Error()))
		}
		return fmt.Errorf("stripebilling: %s: %w: %w", op, errUnavailable(), cause)
	}
	detail := describe(se, c.redact)
	if se.HTTPStatusCode >= 500 || se.HTTPStatusCode == http.StatusTooManyRequests ||
		se.HTTPStatusCode == http.StatusConflict || se.Type == stripe.ErrorTypeAPI {
		return fmt.Errorf("stripebilling: %s: %w: %w", op, errUnavailable(), errors.New(detail))
	}
	switch se.HTTPStatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("stripebilling: %s: Stripe rejected the API key (check the secret key and its permissions): %s", op, detail)
	}
	return fmt.Errorf("stripebilling: %s: Stripe rejected the request: %s", op, detail)
}

func errUnavailable() error {
	return controlplane.Errorf(controlplane.EUNAVAILABLE, "payment provider unavailable")
}

// describe renders a Stripe error for logs, redacted.
func describe(se *stripe.Error, redact func(string) string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP %d %s", se.HTTPStatusCode, se.Type)
	if se.Code != "" {
		fmt.Fprintf(&b, " code=%s", se.Code)
	}
	if se.DeclineCode != "" {
		fmt.Fprintf(&b, " decline_code=%s", se.DeclineCode)
	}
	if se.Param != "" {
		fmt.Fprintf(&b, " param=%s", se.Param)
	}
	if se.RequestID != "" {
		fmt.Fprintf(&b, " request=%s", se.RequestID)
	}
	if se.Msg != "" {
		fmt.Fprintf(&b, ": %s", se.Msg)
	}
	return redact(b.String())
}

// secretRedactor returns a function that replaces each secret in a text.
func secretRedactor(secrets ...string) func(string) string {
	var pairs []string
	for _, s := range secrets {
		if s != "" {
			pairs = append(pairs, s, "[REDACTED]")
		}
	}
	r := strings.NewReplacer(pairs...)
	return r.Replace
}

// leveledLogger hands stripe-go's warnings (retries) and errors to slog at
// debug level, redacted: they are returned as errors too, and the caller
// logs those. Its debug and info lines (every request, response bodies with
// customer data) are dropped.
type leveledLogger struct {
	l      *slog.Logger
	redact func(string) string
}

func (l *leveledLogger) Debugf(string, ...any) {}
func (l *leveledLogger) Infof(string, ...any)  {}
func (l *leveledLogger) Warnf(format string, v ...any) {
	l.l.Debug(l.redact(fmt.Sprintf(format, v...)), "component", "stripe-go", "level", "warn")
}
func (l *leveledLogger) Errorf(format string, v ...any) {
	l.l.Debug(l.redact(fmt.Sprintf(format, v...)), "component", "stripe-go", "level", "error")
}
