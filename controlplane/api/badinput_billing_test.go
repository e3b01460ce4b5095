package api_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/fleetplane/fleetplane/controlplane/api"
)

// billingBadRows are TestBadInput's rows for usage and billing (billing is
// off in that test: what passes every check answers 501). Authentication
// rows for the tenant-scoped routes are in TestBadInput's endpoint list.
func billingBadRows(t *testing.T, fx idFixtures) []badRow {
	t.Helper()
	a := fx.a
	var rows []badRow
	add := func(r ...badRow) { rows = append(rows, r...) }
	huge := `{"pad":"` + strings.Repeat("a", 1<<20) + `"}`
	as := func(key string, r badRow) badRow { r.key = key; return r }

	add(badRow{name: "usage query", method: "GET", path: "/v1/usage?period=last", key: a.key,
		status: 400, detail: "period: unknown query parameter", field: "period"})

	for _, path := range []string{"/v1/billing/checkout", "/v1/billing/portal"} {
		row := func(name string, body any, status int, detail, field string, opts ...reqOpt) badRow {
			return badRow{name: "billing " + name + " " + path, method: "POST", path: path, key: a.key,
				body: body, status: status, detail: detail, field: field, opts: opts}
		}
		add(
			// Redirect targets are the server's: asking for one is refused,
			// in the body or the query.
			row("success_url", `{"success_url":"https://evil.example/paid"}`, 400, "success_url: unknown field", "success_url"),
			row("return_url", `{"return_url":"https://evil.example/"}`, 400, "return_url: unknown field", "return_url"),
			row("query redirect", nil, 400, "redirect: unknown query parameter", "redirect",
				func(r *http.Request) { r.URL.RawQuery = "redirect=https%3A%2F%2Fevil.example" }),
			row("array", `[]`, 400, "JSON object, not an array", ""),
			row("trailing", `{} x`, 400, "exactly one JSON value", ""),
			row("text/plain", `{}`, 415, "Content-Type", "", withHeader("Content-Type", "text/plain")),
			row("oversize", huge, 413, "1048576 bytes", ""),
			as(fx.viewer, row("viewer", nil, 403, "admin role", "")),
			as(fx.member, row("member", nil, 403, "admin role", "")),
			row("billing off", nil, 501, "billing is not enabled", ""),
			row("billing off empty object", `{}`, 501, "billing is not enabled", ""),
		)
	}

	// The webhook: public, checked before the service sees it.
	ev := `{"id":"evt_1","object":"event","type":"invoice.paid"}`
	sig := withHeader("Stripe-Signature", "t=1700000000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd")
	hook := func(name string, body any, status int, detail string, opts ...reqOpt) badRow {
		return badRow{name: "webhook " + name, method: "POST", path: "/v1/billing/webhook", body: body,
			status: status, detail: detail, opts: opts}
	}
	add(
		hook("no signature", ev, 400, "missing Stripe-Signature"),
		hook("empty signature", ev, 400, "missing Stripe-Signature", withHeader("Stripe-Signature", "")),
		hook("two signatures", ev, 400, "give the header once",
			func(r *http.Request) { r.Header["Stripe-Signature"] = []string{"t=1,v1=aa", "t=1,v1=bb"} }),
		hook("long signature", ev, 400, "at most 4096 bytes", withHeader("Stripe-Signature", "t=1,v1="+strings.Repeat("a", 4096))),
		hook("oversize", `{"pad":"`+strings.Repeat("a", int(api.MaxWebhookBodyBytes))+`"}`, 413, "65536 bytes (64 KiB)", sig),
		hook("oversize idempotent", `{"pad":"`+strings.Repeat("a", int(api.MaxWebhookBodyBytes))+`"}`, 413, "64 KiB", sig,
			withHeader("Idempotency-Key", "big-webhook")),
		hook("text/plain", ev, 415, "Content-Type", sig, withHeader("Content-Type", "text/plain")),
		hook("form", ev, 415, "Content-Type", sig, withHeader("Content-Type", "application/x-www-form-urlencoded")),
		hook("latin1", ev, 415, "charset", sig, withHeader("Content-Type", "application/json; charset=latin1")),
		hook("no content type", ev, 415, "Content-Type", sig, withoutHeader("Content-Type")),
		hook("empty", "", 400, "empty", sig),
		// Well formed: billing off. An Authorization header is not looked at.
		hook("billing off", ev, 501, "billing is not enabled", sig),
		hook("billing off with a bad API key", ev, 501, "billing is not enabled", sig, withHeader("Authorization", "Bearer fpk_nope")),
	)

	add(
		badRow{name: "method GET checkout", method: "GET", path: "/v1/billing/checkout", key: a.key, status: 405, detail: "allowed: POST"},
		badRow{name: "method GET webhook", method: "GET", path: "/v1/billing/webhook", status: 405, detail: "allowed: POST"},
		badRow{name: "method POST usage", method: "POST", path: "/v1/usage", key: a.key, body: `{}`, status: 405, detail: "allowed: GET"},
	)
	return rows
}
