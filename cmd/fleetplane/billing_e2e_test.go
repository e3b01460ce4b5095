package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/pgtest"
	"github.com/fleetplane/fleetplane/internal/stripemock"
)

// freeAddr returns a loopback address with a port that was free a moment
// ago: the billing tests need the public URL (where send-event posts and
// checkout returns users) before the server is listening.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// sendEvent runs `fleetplane admin billing send-event` and returns its
// output.
func sendEvent(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(context.Background(), append([]string{"admin", "billing", "send-event"}, args...), mapEnv(env), &out, &errb)
	return out.String() + errb.String(), err
}

// usageOf reads GET /v1/usage.
func usageOf(c *client) (plan, status string, grace any) {
	c.t.Helper()
	u := c.do("GET", "/v1/usage", nil, http.StatusOK)
	plan, _ = u["plan"].(string)
	status, _ = u["billing_status"].(string)
	return plan, status, u["grace_until"]
}

// TestBillingEndToEnd drives billing through the binary's entry point and
// HTTP only: serve with Stripe pointed at stripe-mock, a checkout, its
// completion as `admin billing send-event` delivers it (signed with the
// webhook secret, as Stripe would), then the subscription's cancellation.
func TestBillingEndToEnd(t *testing.T) {
	mock := stripemock.MustStart(t)
	addr := freeAddr(t)
	publicURL := "http://" + addr
	const secret = "whsec_e2e_fleetplane"
	env := operatorEnv(t, "DATABASE_URL", pgtest.NewURL(t))
	for k, v := range map[string]string{
		"FLEETPLANE_STRIPE_SECRET_KEY": stripemock.TestKey, "FLEETPLANE_STRIPE_WEBHOOK_SECRET": secret,
		"FLEETPLANE_STRIPE_PRICE_ID": "price_e2e_scale", "FLEETPLANE_STRIPE_API_BASE": mock.URL,
		"FLEETPLANE_PUBLIC_URL": publicURL,
	} {
		env[k] = v
	}
	base, _, stop := startRun(t, env, "serve", "--http-addr", addr)
	if base != publicURL {
		t.Fatalf("serving at %s, public URL %s", base, publicURL)
	}

	anon := &client{t: t, base: base}
	signup := anon.do("POST", "/v1/signup", map[string]any{
		"organisation": "Billed Drones", "email": "ops@billed.example", "password": "correct horse battery staple"}, 201)
	c := &client{t: t, base: base, key: signup["api_key"].(map[string]any)["secret"].(string)}
	tenantID := c.do("GET", "/v1/tenant", nil, 200)["id"].(string)

	// Free: ten vehicles, the 11th answers 402.
	c.do("POST", "/v1/fleets", map[string]any{"slug": "survey"}, 201)
	for i := range controlplane.FreeVehicleLimit {
		c.do("POST", "/v1/fleets/survey/vehicles", map[string]any{"vehicle_id": fmt.Sprintf("d-%02d", i)}, 201)
	}
	c.do("POST", "/v1/fleets/survey/vehicles", map[string]any{"vehicle_id": "d-10"}, http.StatusPaymentRequired)
	if plan, status, grace := usageOf(c); plan != "free" || status != "none" || grace != nil {
		t.Fatalf("before checkout: plan %s, billing %s, grace %v", plan, status, grace)
	}

	// Before the checkout the tenant has no customer: send-event says so.
	if out, err := sendEvent(t, env, "--tenant", tenantID); err == nil || !strings.Contains(err.Error(), "no Stripe customer yet") {
		t.Fatalf("send-event before checkout: %v\n%s", err, out)
	}
	co := c.do("POST", "/v1/billing/checkout", nil, 200)
	if u, _ := co["url"].(string); !strings.HasPrefix(u, "https://checkout.stripe.com/") {
		t.Fatalf("checkout = %v", co)
	}
	// A delivery signed with another secret is refused, and changes nothing.
	wrong := map[string]string{}
	for k, v := range env {
		wrong[k] = v
	}
	wrong["FLEETPLANE_STRIPE_WEBHOOK_SECRET"] = "whsec_not_the_endpoints"
	if out, err := sendEvent(t, wrong, "--tenant", tenantID); err == nil || !strings.Contains(out, "400") {
		t.Fatalf("wrongly signed send-event: %v\n%s", err, out)
	}
	if plan, _, _ := usageOf(c); plan != "free" {
		t.Fatalf("a wrongly signed event changed the plan to %s", plan)
	}

	// The checkout completes: scale, active, and the 11th vehicle fits.
	out, err := sendEvent(t, env, "--tenant", tenantID, "--type", controlplane.EventCheckoutCompleted)
	if err != nil || !strings.Contains(out, "200 OK") || !strings.Contains(out, `"outcome":"applied"`) {
		t.Fatalf("send-event checkout.session.completed: %v\n%s", err, out)
	}
	if plan, status, grace := usageOf(c); plan != "scale" || status != "active" || grace != nil {
		t.Fatalf("after checkout: plan %s, billing %s, grace %v", plan, status, grace)
	}
	c.do("POST", "/v1/fleets/survey/vehicles", map[string]any{"vehicle_id": "d-10"}, 201)
	// A second checkout is refused: manage the subscription in the portal.
	c.do("POST", "/v1/billing/checkout", nil, http.StatusConflict)
	if p := c.do("POST", "/v1/billing/portal", nil, 200); !strings.HasPrefix(fmt.Sprint(p["url"]), "https://") {
		t.Fatalf("portal = %v", p)
	}

	// Cancelled: free again, with the downgrade grace; no new vehicles.
	out, err = sendEvent(t, env, "--tenant", tenantID, "--type", controlplane.EventSubscriptionDeleted)
	if err != nil || !strings.Contains(out, `"outcome":"applied"`) {
		t.Fatalf("send-event customer.subscription.deleted: %v\n%s", err, out)
	}
	plan, status, grace := usageOf(c)
	if plan != "free" || status != "canceled" || grace == nil {
		t.Fatalf("after cancel: plan %s, billing %s, grace %v", plan, status, grace)
	}
	if g, err := time.Parse(time.RFC3339, fmt.Sprint(grace)); err != nil || !g.After(time.Now()) {
		t.Fatalf("grace_until %v (%v)", grace, err)
	}
	c.do("POST", "/v1/fleets/survey/vehicles", map[string]any{"vehicle_id": "d-11"}, http.StatusPaymentRequired)
	if err := stop(); err != nil {
		t.Fatalf("graceful shutdown: %v", err)
	}
}

// TestServeRefusesIncompleteBilling: with a Stripe secret key, serve
// requires the webhook secret, the price and an absolute public URL, and
// says which are missing (never echoing the key) before touching anything.
func TestServeRefusesIncompleteBilling(t *testing.T) {
	t.Parallel()
	const key = "sk_test_do_not_echo"
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"key only", map[string]string{"FLEETPLANE_STRIPE_SECRET_KEY": key},
			[]string{"stripe_webhook_secret is required", "stripe_price_id", "public_url must be an absolute URL"}},
		{"relative public URL", map[string]string{"FLEETPLANE_STRIPE_SECRET_KEY": key, "FLEETPLANE_STRIPE_WEBHOOK_SECRET": "whsec_x",
			"FLEETPLANE_STRIPE_PRICE_ID": "price_x", "FLEETPLANE_PUBLIC_URL": "fleet.example.com"},
			[]string{"public_url must be an absolute URL"}},
		{"no price", map[string]string{"FLEETPLANE_STRIPE_SECRET_KEY": key, "FLEETPLANE_STRIPE_WEBHOOK_SECRET": "whsec_x",
			"FLEETPLANE_PUBLIC_URL": "https://fleet.example.com"},
			[]string{"stripe_price_id (the scale plan's metered price) is required"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// No database: the configuration is refused before one is needed.
			var out, errb bytes.Buffer
			err := run(context.Background(), []string{"serve", "--http-addr", "127.0.0.1:0"}, mapEnv(tc.env), &out, &errb)
			if err == nil {
				t.Fatal("serve accepted an incomplete billing configuration")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if n := strings.Count(err.Error(), "billing:"); n != len(tc.want) {
				t.Errorf("%d billing problems reported, want %d: %v", n, len(tc.want), err)
			}
			if strings.Contains(err.Error()+out.String()+errb.String(), key) {
				t.Errorf("the secret key was echoed: %v", err)
			}
		})
	}
	// Complete, or off: valid.
	cfg := defaultConfig()
	if errs := cfg.validateBilling(); len(errs) != 0 {
		t.Errorf("billing off: %v", errs)
	}
	cfg.StripeSecretKey, cfg.StripeWebhookSecret, cfg.StripePriceID, cfg.PublicURL = key, "whsec_x", "price_x", "https://fleet.example.com"
	if err := cfg.Validate(); err != nil {
		t.Errorf("complete billing configuration: %v", err)
	}
}

// stripeMockChildren returns the PIDs of this process's stripe-mock
// children (zombies included: a child that was not waited for is left over
// too).
func stripeMockChildren(t *testing.T) map[int]bool {
	t.Helper()
	bin, err := stripemock.Binary()
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatalf("reading /proc (the caller runs on Linux only): %v", err)
	}
	me := os.Getpid()
	out := map[int]bool{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		comm := string(stat[bytes.IndexByte(stat, '(')+1 : i])
		if len(f) < 2 || f[1] != strconv.Itoa(me) {
			continue
		}
		// comm is truncated to 15 bytes; a live child's exe names the binary.
		exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if name := filepath.Base(bin); exe == bin || comm == name[:min(len(name), 15)] {
			out[pid] = true
		}
	}
	return out
}

// TestDevBillingStripeMock runs `fleetplane dev --billing stripe-mock` as
// docs/billing.md shows it: checkout over HTTP, the completion posted by
// `admin billing send-event` from dev.env alone, and on Ctrl-C (context
// cancel) the stripe-mock it started is gone.
func TestDevBillingStripeMock(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skipf("counts child processes in Linux's /proc; this is %s (CI runs it on Linux)", runtime.GOOS)
	}
	before := stripeMockChildren(t)
	state := t.TempDir()
	addr := freeAddr(t)
	// A fixed port: with billing, dev's public URL defaults to http://<http-addr>.
	base, _, stop := startRun(t, map[string]string{"DATABASE_URL": pgtest.NewURL(t)},
		"dev", "--http-addr", addr, "--state-dir", state, "--hub-client-addr", "127.0.0.1:0", "--hub-leaf-addr", "127.0.0.1:0",
		"--billing", "stripe-mock")

	started := map[int]bool{}
	for pid := range stripeMockChildren(t) {
		if !before[pid] {
			started[pid] = true
		}
	}
	if len(started) != 1 {
		t.Fatalf("dev started %d stripe-mock processes, want 1", len(started))
	}
	envFile := readDevEnv(filepath.Join(state, "dev.env"))
	secret, _ := os.ReadFile(filepath.Join(state, "stripe-webhook.secret"))
	if envFile["FLEETPLANE_URL"] != base || envFile["FLEETPLANE_PUBLIC_URL"] != base ||
		!strings.HasPrefix(envFile["FLEETPLANE_STRIPE_WEBHOOK_SECRET"], "whsec_") ||
		envFile["FLEETPLANE_STRIPE_WEBHOOK_SECRET"] != strings.TrimSpace(string(secret)) || envFile["FLEETPLANE_DATABASE_URL"] == "" {
		t.Fatalf("dev.env = %v (base %s)", envFile, base)
	}
	c := &client{t: t, base: base, key: envFile["FLEETPLANE_API_KEY"]}
	if u, _ := c.do("POST", "/v1/billing/checkout", nil, 200)["url"].(string); !strings.HasPrefix(u, "https://checkout.stripe.com/") {
		t.Fatalf("checkout url %q", u)
	}
	tenantID := c.do("GET", "/v1/tenant", nil, 200)["id"].(string)
	if out, err := sendEvent(t, envFile, "--tenant", tenantID); err != nil || !strings.Contains(out, `"outcome":"applied"`) {
		t.Fatalf("send-event with dev.env: %v\n%s", err, out)
	}
	if plan, status, _ := usageOf(c); plan != "scale" || status != "active" {
		t.Fatalf("after checkout: plan %s, billing %s", plan, status)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for pid := range stripeMockChildren(t) {
		if started[pid] {
			t.Errorf("stripe-mock (pid %d) still there after dev stopped", pid)
		}
	}
}

// TestDevBilling: devBilling's configuration for each mode, the webhook
// secret kept across runs, and its stop function ending stripe-mock.
func TestDevBilling(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	logger := slog.New(slog.DiscardHandler)
	state := t.TempDir()

	cfg := defaultConfig()
	cfg.PublicURL = "http://127.0.0.1:18080" // runDev sets it from its listener
	stop, err := devBilling(ctx, &cfg, "stripe-mock", state, logger)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StripeSecretKey != stripemock.TestKey || !strings.HasPrefix(cfg.StripeWebhookSecret, "whsec_") ||
		!strings.HasPrefix(cfg.StripePriceID, "price_") || cfg.PublicURL != "http://127.0.0.1:18080" || !cfg.billingOn() {
		t.Fatalf("stripe-mock config: %+v", cfg)
	}
	if errs := cfg.validateBilling(); len(errs) != 0 {
		t.Errorf("dev billing config invalid: %v", errs)
	}
	if st, err := os.Stat(filepath.Join(state, "stripe-webhook.secret")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("webhook secret file: %v %v", st, err)
	}
	// The adapter works against it.
	b, err := cfg.billing(logger)
	if err != nil {
		t.Fatal(err)
	}
	if u, err := b.PortalSession(ctx, "cus_dev", cfg.PublicURL+"/billing"); err != nil || !strings.HasPrefix(u, "https://") {
		t.Fatalf("portal session against dev stripe-mock: %q, %v", u, err)
	}
	apiBase := cfg.StripeAPIBase
	stop()
	if _, err := http.Get(apiBase); err == nil {
		t.Errorf("stripe-mock at %s still answers after stop", apiBase)
	}

	// A second run keeps the secret (a shell that sourced dev.env still
	// signs valid events); an explicit public URL is kept.
	again := defaultConfig()
	again.PublicURL = "https://dev.example.test"
	stop2, err := devBilling(ctx, &again, "stripe-mock", state, logger)
	if err != nil {
		t.Fatal(err)
	}
	stop2()
	if again.StripeWebhookSecret != cfg.StripeWebhookSecret || again.PublicURL != "https://dev.example.test" {
		t.Errorf("second run: secret kept %v, public URL %q", again.StripeWebhookSecret == cfg.StripeWebhookSecret, again.PublicURL)
	}

	// off clears any Stripe settings from the environment; other modes
	// are a usage error.
	off := defaultConfig()
	off.StripeSecretKey, off.StripeWebhookSecret, off.StripePriceID = "sk_test_x", "whsec_x", "price_x"
	if stop, err := devBilling(ctx, &off, "off", state, logger); err != nil || off.billingOn() || off.StripeWebhookSecret != "" {
		t.Errorf("off: %v, %+v", err, off)
	} else {
		stop()
	}
	var ue *usageError
	if _, err := devBilling(ctx, &off, "stripe", state, logger); !errors.As(err, &ue) {
		t.Errorf("--billing stripe: %v", err)
	}
}
