package stripebilling

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/stripe/stripe-go/v76"

	"github.com/fleetplane/fleetplane/controlplane"
)

// The statuses stripe-mock cannot produce (5xx, 429, card and idempotency
// errors), as stripe-go hands them over.
func TestAPIErrorMapping(t *testing.T) {
	var logs bytes.Buffer
	c, err := New(Config{
		SecretKey: "sk_live_TOPSECRET", WebhookSecret: "whsec_TOPSECRET", ScalePriceID: "price_x",
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		err  error
		code string
		want []string // in err.Error()
	}{
		{"503", &stripe.Error{HTTPStatusCode: 503, Type: stripe.ErrorTypeAPI, Msg: "down", RequestID: "req_1"},
			controlplane.EUNAVAILABLE, []string{"HTTP 503 api_error request=req_1: down"}},
		{"500 on a POST (not retried)", &stripe.Error{HTTPStatusCode: 500, Type: stripe.ErrorTypeAPI},
			controlplane.EUNAVAILABLE, []string{"HTTP 500"}},
		{"rate limit", &stripe.Error{HTTPStatusCode: 429, Type: stripe.ErrorTypeInvalidRequest, Code: stripe.ErrorCodeRateLimit},
			controlplane.EUNAVAILABLE, []string{"HTTP 429", "code=rate_limit"}},
		{"idempotency key in use (after the retries)", &stripe.Error{HTTPStatusCode: 409, Type: stripe.ErrorTypeIdempotency, Code: stripe.ErrorCodeIdempotencyKeyInUse},
			controlplane.EUNAVAILABLE, []string{"HTTP 409 idempotency_error code=idempotency_key_in_use"}},
		{"no such price", &stripe.Error{HTTPStatusCode: 400, Type: stripe.ErrorTypeInvalidRequest, Code: stripe.ErrorCodeResourceMissing,
			Param: "line_items[0][price]", Msg: "No such price: 'price_x'"},
			controlplane.EINTERNAL, []string{"Stripe rejected the request: HTTP 400 invalid_request_error code=resource_missing param=line_items[0][price]: No such price: 'price_x'"}},
		{"card declined", &stripe.Error{HTTPStatusCode: 402, Type: stripe.ErrorTypeCard, Code: stripe.ErrorCodeCardDeclined, DeclineCode: "insufficient_funds"},
			controlplane.EINTERNAL, []string{"HTTP 402 card_error code=card_declined decline_code=insufficient_funds"}},
		{"idempotency key reused", &stripe.Error{HTTPStatusCode: 400, Type: stripe.ErrorTypeIdempotency, Msg: "Keys for idempotent requests can only be used with the same parameters"},
			controlplane.EINTERNAL, []string{"HTTP 400 idempotency_error"}},
		{"forbidden key", &stripe.Error{HTTPStatusCode: 403, Type: stripe.ErrorTypeInvalidRequest, Msg: "key sk_live_TOPSECRET lacks permission"},
			controlplane.EINTERNAL, []string{"Stripe rejected the API key", "key [REDACTED] lacks"}},
		{"network", errors.New("dial tcp: lookup api.stripe.com: no such host (key sk_live_TOPSECRET)"),
			controlplane.EUNAVAILABLE, []string{"no such host", "[REDACTED]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.apiError("doing it", tc.err)
			if got := controlplane.ErrorCode(err); got != tc.code {
				t.Errorf("code %s, want %s: %v", got, tc.code, err)
			}
			if tc.code == controlplane.EUNAVAILABLE && controlplane.ErrorMessage(err) != "payment provider unavailable" {
				t.Errorf("message %q", controlplane.ErrorMessage(err))
			}
			for _, w := range append(tc.want, "stripebilling: doing it: ") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if strings.Contains(err.Error(), "TOPSECRET") {
				t.Errorf("error holds a secret: %v", err)
			}
		})
	}

	// stripe-go's own log lines go to the logger at debug level, redacted.
	c.api.Customers.B.(*stripe.BackendImplementation).LeveledLogger.Errorf("Request error from Stripe (status 401): %s", "Bearer sk_live_TOPSECRET")
	if !strings.Contains(logs.String(), "Bearer [REDACTED]") || strings.Contains(logs.String(), "TOPSECRET") || !strings.Contains(logs.String(), "level=DEBUG") {
		t.Errorf("log: %s", logs.String())
	}
}
