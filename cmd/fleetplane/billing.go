package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/controlplane/stripebilling"
	"github.com/fleetplane/fleetplane/internal/stripemock"
)

// billingOn reports whether Stripe billing is configured.
func (c *Config) billingOn() bool { return c.StripeSecretKey != "" }

// validateBilling checks the Stripe settings: all or nothing, and a public
// URL to send users back to after checkout.
func (c *Config) validateBilling() []error {
	if !c.billingOn() {
		return nil // the other settings alone do nothing (admin billing send-event uses the webhook secret)
	}
	var errs []error
	if c.StripeWebhookSecret == "" {
		errs = append(errs, errors.New("billing: stripe_webhook_secret is required with stripe_secret_key"))
	}
	if c.StripePriceID == "" {
		errs = append(errs, errors.New("billing: stripe_price_id (the scale plan's metered price) is required with stripe_secret_key"))
	}
	if u, err := url.Parse(c.PublicURL); c.PublicURL == "" || err != nil || !u.IsAbs() {
		errs = append(errs, errors.New("billing: public_url must be an absolute URL (checkout returns users to <public_url>/billing)"))
	}
	return errs
}

// billing builds the Stripe adapter, or nil when billing is off.
func (c *Config) billing(logger *slog.Logger) (controlplane.Billing, error) {
	if !c.billingOn() {
		return nil, nil
	}
	return stripebilling.New(stripebilling.Config{
		SecretKey:      c.StripeSecretKey,
		WebhookSecret:  c.StripeWebhookSecret,
		ScalePriceID:   c.StripePriceID,
		MeterEventName: c.StripeMeterEvent,
		APIBase:        c.StripeAPIBase,
		Logger:         logger.With("component", "stripe"),
	})
}

// devBilling sets up `fleetplane dev --billing`: "off" (free plan only) or
// "stripe-mock" (Stripe's mock server on loopback, a dev webhook secret
// kept in stateDir). It returns a function that stops what it started.
func devBilling(ctx context.Context, cfg *Config, mode, stateDir string, logger *slog.Logger) (func(), error) {
	switch mode {
	case "off":
		cfg.StripeSecretKey, cfg.StripeWebhookSecret, cfg.StripePriceID = "", "", ""
		return func() {}, nil
	case "stripe-mock":
	default:
		return nil, &usageError{fmt.Sprintf("--billing must be off or stripe-mock, got %q", mode)}
	}
	srv, err := stripemock.Start(ctx, logger)
	if err != nil {
		return nil, fmt.Errorf("stripe-mock: %w", err)
	}
	secret, err := devWebhookSecret(filepath.Join(stateDir, "stripe-webhook.secret"))
	if err != nil {
		srv.Close()
		return nil, err
	}
	cfg.StripeSecretKey = stripemock.TestKey
	cfg.StripeWebhookSecret = secret
	cfg.StripePriceID = "price_dev_scale"
	cfg.StripeAPIBase = srv.URL
	logger.Info("billing with stripe-mock (it sends no webhooks: use `fleetplane admin billing send-event`)",
		"stripe_api", srv.URL, "started_in", srv.StartDuration.Round(time.Millisecond))
	return func() { srv.Close() }, nil
}

// devWebhookSecret reads the dev webhook signing secret from path,
// creating it (0600) on first use.
func devWebhookSecret(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	s := "whsec_" + base64.RawURLEncoding.EncodeToString(raw)
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return s, nil
}

// runAdminBillingSendEvent signs a Stripe-shaped webhook event with the
// configured webhook secret and posts it to <public_url>/v1/billing/webhook:
// stripe-mock sends no webhooks, so this is how `fleetplane dev --billing
// stripe-mock` completes a checkout or cancels a subscription.
func runAdminBillingSendEvent(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleetplane admin billing send-event", flag.ContinueOnError)
	fs.SetOutput(stderr)
	typ := fs.String("type", controlplane.EventCheckoutCompleted, "event type: "+strings.Join(sendableEvents, ", "))
	tenantID := fs.String("tenant", "", "tenant ID (required)")
	customer := fs.String("customer", "", "the tenant's Stripe customer (default: read from the database)")
	sub := fs.String("subscription", "sub_dev", "subscription ID")
	status := fs.String("status", "", "subscription status for customer.subscription.* (default active; canceled for deleted)")
	cfg := defaultConfig()
	if err := loadConfig(fs, args, getenv, &cfg); err != nil {
		return err
	}
	if *tenantID == "" || !slices.Contains(sendableEvents, *typ) {
		return &usageError{"admin billing send-event: --tenant and a --type of " + strings.Join(sendableEvents, ", ") + " are required"}
	}
	if cfg.StripeWebhookSecret == "" || cfg.PublicURL == "" {
		return &usageError{"admin billing send-event: needs stripe_webhook_secret and public_url (dev: source .fleetplane/dev.env)"}
	}
	if *customer == "" {
		if cfg.DatabaseURL == "" {
			return &usageError{"admin billing send-event: --customer, or a database to read it from"}
		}
		pool, err := postgres.Open(ctx, cfg.DatabaseURL, 2)
		if err != nil {
			return err
		}
		t, err := postgres.NewStore(pool).FindTenantByID(ctx, *tenantID)
		pool.Close()
		if err != nil {
			return fmt.Errorf("tenant %s: %s", *tenantID, controlplane.ErrorMessage(err))
		}
		if t.StripeCustomerID == "" {
			return fmt.Errorf("tenant %s has no Stripe customer yet: start a checkout first (POST /v1/billing/checkout)", *tenantID)
		}
		*customer = t.StripeCustomerID
	}
	now := time.Now()
	var obj map[string]any
	switch *typ {
	case controlplane.EventCheckoutCompleted:
		obj = map[string]any{"id": "cs_dev", "object": "checkout.session", "mode": "subscription", "status": "complete",
			"payment_status": "paid", "customer": *customer, "client_reference_id": *tenantID, "subscription": *sub}
	case controlplane.EventInvoicePaid, controlplane.EventInvoicePaymentFailed:
		obj = map[string]any{"id": "in_dev", "object": "invoice", "customer": *customer, "subscription": *sub,
			"amount_due": 1500, "amount_paid": 0, "currency": "usd", "attempt_count": 1}
	default:
		st := *status
		if st == "" {
			st = "active"
			if *typ == controlplane.EventSubscriptionDeleted {
				st = "canceled"
			}
		}
		obj = map[string]any{"id": *sub, "object": "subscription", "customer": *customer, "status": st,
			"current_period_start": now.Unix(), "current_period_end": now.AddDate(0, 1, 0).Unix()}
	}
	raw := make([]byte, 8)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	payload, err := json.Marshal(map[string]any{"id": "evt_dev_" + hex.EncodeToString(raw), "object": "event",
		"type": *typ, "created": now.Unix(), "api_version": "2023-10-16", "data": map[string]any{"object": obj}})
	if err != nil {
		return err
	}
	signed := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: cfg.StripeWebhookSecret, Timestamp: now})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(cfg.PublicURL, "/")+"/v1/billing/webhook", bytes.NewReader(payload))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Stripe-Signature", signed.Header)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	fmt.Fprintf(stdout, "%s %s\n", resp.Status, bytes.TrimSpace(body))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the webhook answered %s", resp.Status)
	}
	return nil
}

var sendableEvents = []string{controlplane.EventCheckoutCompleted, controlplane.EventSubscriptionUpdated,
	controlplane.EventSubscriptionDeleted, controlplane.EventInvoicePaid, controlplane.EventInvoicePaymentFailed}
