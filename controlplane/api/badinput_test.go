package api_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane/api"
	"github.com/fleetplane/fleetplane/internal/secret"
)

// badRow is one malformed or hostile request and the problem it must get.
type badRow struct {
	name   string
	method string
	path   string
	key    string // bearer API key; "" sends no Authorization (unless opts set one)
	body   any    // string or []byte: sent as is; nil: no body
	opts   []reqOpt
	status int
	detail string // the problem's detail must contain this (case-insensitive)
	field  string // when set, the problem's errors must name this field
	hide   string // when set, the response must not contain it (a seed sent by mistake)
}

// TestBadInput sends malformed and hostile requests to every endpoint. Each
// must get exactly the expected status as application/problem+json whose
// detail names the offending field or thing, and leave the database
// exactly as it was (row counts and a checksum of every table).
func TestBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Tenant A")
	expiresAt := time.Now().Add(time.Second).UTC()
	viewerRole := api.KeyRoleViewer
	var expiring api.APIKeyCreated
	e.do("POST", "/v1/api-keys", a.key, api.APIKeyCreate{Name: "expiring", Role: &viewerRole, ExpiresAt: &expiresAt}).
		must(t, http.StatusCreated, &expiring)
	b := e.signup("Tenant B")
	viewer := e.createKey(a.key, "viewer", api.KeyRoleViewer).Secret
	member := e.createKey(a.key, "member", api.KeyRoleMember).Secret
	revoked := e.createKey(a.key, "revoked", api.KeyRoleAdmin)
	e.do("DELETE", "/v1/api-keys/"+revoked.Id, a.key, nil).must(t, http.StatusNoContent, nil)
	e.createFleet(a.key, "alpha")
	e.createVehicle(a.key, "alpha", "veh-1", map[string]string{"zone": "north"})
	e.createFleet(b.key, "bravo")
	e.createVehicle(b.key, "bravo", "veh-b", nil)
	bKey := e.createKey(b.key, "b-key", api.KeyRoleAdmin)
	fx := setupIdentityFixtures(t, e, a, b, viewer, member)
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	somePub := newUserKey(t).pub

	_, unknownKey, _ := secret.New(secret.APIKeyPrefix)
	_, other, _ := secret.New(secret.APIKeyPrefix)
	wrongSecret := "fpk_" + a.keyID + "_" + other[len("fpk_")+16+1:]

	var rows []badRow
	add := func(r ...badRow) { rows = append(rows, r...) }

	// --- authentication, on every tenant-scoped endpoint ---
	type endpoint struct {
		method, path string
		body         string
	}
	endpoints := []endpoint{
		{"GET", "/v1/tenant", ""},
		{"GET", "/v1/api-keys", ""},
		{"POST", "/v1/api-keys", `{"name":"x"}`},
		{"DELETE", "/v1/api-keys/" + a.keyID, ""},
		{"GET", "/v1/fleets", ""},
		{"POST", "/v1/fleets", `{"slug":"new-fleet"}`},
		{"GET", "/v1/fleets/alpha", ""},
		{"PATCH", "/v1/fleets/alpha", `{"name":"x"}`},
		{"DELETE", "/v1/fleets/alpha", ""},
		{"GET", "/v1/fleets/alpha/vehicles", ""},
		{"POST", "/v1/fleets/alpha/vehicles", `{"vehicle_id":"new-veh"}`},
		{"GET", "/v1/fleets/alpha/vehicles/veh-1", ""},
		{"PATCH", "/v1/fleets/alpha/vehicles/veh-1", `{"disabled":true}`},
		{"DELETE", "/v1/fleets/alpha/vehicles/veh-1", ""},
		{"GET", "/v1/regions", ""},
		{"GET", "/v1/audit-events", ""},
		{"GET", "/v1/fleets/alpha/enrollment-tokens", ""},
		{"POST", "/v1/fleets/alpha/enrollment-tokens", `{"expires_at":"` + future + `"}`},
		{"GET", "/v1/fleets/alpha/enrollment-tokens/" + fx.tokGood.Id, ""},
		{"DELETE", "/v1/fleets/alpha/enrollment-tokens/" + fx.tokGood.Id, ""},
		{"POST", "/v1/fleets/alpha/vehicles/veh-1/credentials", `{"public_key":"` + somePub + `"}`},
		{"POST", "/v1/fleets/alpha/vehicles/veh-enrolled/revoke", ""},
		{"GET", "/v1/grants", ""},
		{"POST", "/v1/grants", `{"expires_at":"` + future + `","subscribe":["fleet.prod.>"]}`},
		{"GET", "/v1/grants/" + fx.aGrant.Id, ""},
		{"DELETE", "/v1/grants/" + fx.aGrant.Id, ""},
		{"GET", "/v1/grants/" + fx.aGrant.Id + "/context", ""},
		{"GET", "/v1/usage", ""},
		{"POST", "/v1/billing/checkout", ""},
		{"POST", "/v1/billing/portal", ""},
	}
	authCases := []struct {
		name, header, detail string
	}{
		{"missing", "", "missing Authorization"},
		{"not bearer", "Basic dXNlcjpwYXNzd29yZA==", "malformed Authorization"},
		{"malformed", "Bearer fpk_not-a-key", "malformed API key"},
		{"unknown", "Bearer " + unknownKey, "invalid API key"},
		{"wrong secret", "Bearer " + wrongSecret, "invalid API key"},
		{"revoked", "Bearer " + revoked.Secret, "revoked"},
		{"expired", "Bearer " + expiring.Secret, "expired"},
	}
	for _, ep := range endpoints {
		for _, ac := range authCases {
			r := badRow{name: "auth " + ac.name + " " + ep.method + " " + ep.path, method: ep.method, path: ep.path,
				status: http.StatusUnauthorized, detail: ac.detail}
			if ep.body != "" {
				r.body = ep.body
			}
			if ac.header != "" {
				r.opts = []reqOpt{withHeader("Authorization", ac.header)}
			}
			add(r)
		}
	}
	for _, h := range []string{"Bearer", "Bearer ", "bearer " + strings.Repeat("x", 5000), "Bearer fpe_" + unknownKey[4:],
		"Bearer " + strings.ToUpper(unknownKey), "Bearer fpk_ÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿ_" + strings.Repeat("a", 52), "Bearer " + a.key + "x"} {
		add(badRow{name: "auth header " + h[:min(len(h), 30)], method: "GET", path: "/v1/tenant",
			opts: []reqOpt{withHeader("Authorization", h)}, status: 401, detail: "API key"})
	}

	// --- request bodies, on every endpoint that takes one ---
	type bodyEndpoint struct {
		method, path, key string
		valid             string // a valid body, "{...}"
		strField          string // a string field, for type errors
	}
	bodyEndpoints := []bodyEndpoint{
		{"POST", "/v1/signup", "", `{"organisation":"New Org","email":"new@example.com","password":"correct horse battery staple"}`, "email"},
		{"POST", "/v1/api-keys", a.key, `{"name":"new key","role":"viewer"}`, "name"},
		{"POST", "/v1/fleets", a.key, `{"slug":"new-fleet","name":"New"}`, "slug"},
		{"PATCH", "/v1/fleets/alpha", a.key, `{"name":"Renamed","description":"d"}`, "description"},
		{"POST", "/v1/fleets/alpha/vehicles", a.key, `{"vehicle_id":"new-veh","labels":{"k":"v"}}`, "vehicle_id"},
		{"PATCH", "/v1/fleets/alpha/vehicles/veh-1", a.key, `{"name":"Renamed","disabled":true}`, "name"},
		{"POST", "/v1/fleets/alpha/enrollment-tokens", a.key, `{"expires_at":"` + future + `","description":"d"}`, "description"},
		{"POST", "/v1/enroll", "", `{"token":"` + fx.tokGood.Token + `","public_key":"` + somePub + `"}`, "token"},
		{"POST", "/v1/agent/nonce", "", `{"public_key":"` + fx.kEnrolled.pub + `"}`, "public_key"},
		{"POST", "/v1/agent/renew", "", `{"public_key":"` + fx.kEnrolled.pub + `","nonce":"n","signature":"c2ln"}`, "nonce"},
		{"POST", "/v1/fleets/alpha/vehicles/veh-1/credentials", a.key, `{"public_key":"` + somePub + `"}`, "public_key"},
		{"POST", "/v1/grants", a.key, `{"expires_at":"` + future + `","subscribe":["fleet.prod.>"],"description":"d"}`, "description"},
	}
	huge := `{"name":"` + strings.Repeat("a", 1<<20) + `"}`
	deep := `{"labels":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`
	for _, be := range bodyEndpoints {
		withoutBrace := be.valid[:len(be.valid)-1]
		row := func(name string, body any, status int, detail, field string, opts ...reqOpt) badRow {
			return badRow{name: "body " + name + " " + be.method + " " + be.path, method: be.method, path: be.path,
				key: be.key, body: body, status: status, detail: detail, field: field, opts: opts}
		}
		add(
			row("truncated", withoutBrace, 400, "not valid JSON at byte offset", ""),
			row("syntax", `{"name" "x"}`, 400, "not valid JSON at byte offset", ""),
			row("unknown field", withoutBrace+`,"bogus":1}`, 400, "bogus: unknown field", "bogus"),
			row("unknown field case", `{"`+strings.ToUpper(be.strField)+`":"x"}`, 400, "unknown field", strings.ToUpper(be.strField)),
			row("duplicate mixed", withoutBrace+`,"`+be.strField+`":123}`, 400, "duplicate key", be.strField),
			row("wrong type", `{"`+be.strField+`":123}`, 400, be.strField+": expected a string, got a number", be.strField),
			row("wrong type bool", `{"`+be.strField+`":["x"]}`, 400, be.strField+": expected a string, got an array", be.strField),
			row("trailing garbage", be.valid+` x`, 400, "exactly one JSON value", ""),
			row("two values", be.valid+be.valid, 400, "exactly one JSON value", ""),
			row("oversize", huge, 413, "1048576 bytes", ""),
			row("oversize idempotent", huge, 413, "1048576 bytes", "", withHeader("Idempotency-Key", "big-"+be.method+be.path)),
			row("text/plain", be.valid, 415, "Content-Type", "", withHeader("Content-Type", "text/plain")),
			row("form", be.valid, 415, "Content-Type", "", withHeader("Content-Type", "application/x-www-form-urlencoded")),
			row("latin1", be.valid, 415, "charset", "", withHeader("Content-Type", "application/json; charset=latin1")),
			row("no content type", be.valid, 415, "Content-Type", "", withoutHeader("Content-Type")),
			row("empty", "", 400, "empty", ""),
			row("null", "null", 400, "JSON object, not null", ""),
			row("array", "[]", 400, "JSON object, not an array", ""),
			row("string", `"x"`, 400, "JSON object, not a string", ""),
			row("duplicate key", `{"`+be.strField+`":"a","`+be.strField+`":"b"}`, 400, be.strField+": duplicate key", be.strField),
			row("null field", `{"`+be.strField+`":null}`, 400, be.strField+": must not be null", be.strField),
			row("invalid utf-8", []byte("{\""+be.strField+"\":\"\xff\xfe\"}"), 400, "UTF-8", ""),
			row("deep", deep, 400, "deeper than 32", ""),
		)
	}

	// --- field validation ---
	for _, slug := range []string{"a.b", "a b", "a*", "a>", "ä", "Alpha", "-a", "a-", "", strings.Repeat("a", 64), "a\u0000b", "a/b", "fleet.>"} {
		add(badRow{name: fmt.Sprintf("slug %q", slug), method: "POST", path: "/v1/fleets", key: a.key,
			body: map[string]string{"slug": slug}, status: 400, detail: "slug", field: "slug"})
	}
	for _, env := range []string{"prod.eu", "prod eu", "*", ">", "PROD", "é", strings.Repeat("e", 33), "-prod"} {
		add(badRow{name: fmt.Sprintf("environment %q", env), method: "POST", path: "/v1/fleets", key: a.key,
			body: map[string]string{"slug": "ok", "environment": env}, status: 400, detail: "environment", field: "environment"})
	}
	for _, region := range []string{"mars", "eu.west", "EUROPE", "europe "} {
		add(badRow{name: fmt.Sprintf("region %q", region), method: "POST", path: "/v1/fleets", key: a.key,
			body: map[string]string{"slug": "ok", "region": region}, status: 400, detail: "region", field: "region"})
	}
	for _, c := range []struct{ field, value string }{
		{"name", strings.Repeat("n", 201)}, {"name", "bad\u0000name"}, {"name", "bell\u0007"},
		{"description", strings.Repeat("d", 2001)}, {"description", "nul\u0000byte"}, {"description", "esc\u001b[31m"},
	} {
		add(badRow{name: fmt.Sprintf("fleet %s %.20q", c.field, c.value), method: "POST", path: "/v1/fleets", key: a.key,
			body: map[string]string{"slug": "ok", c.field: c.value}, status: 400, detail: c.field, field: c.field})
		add(badRow{name: fmt.Sprintf("patch fleet %s %.20q", c.field, c.value), method: "PATCH", path: "/v1/fleets/alpha", key: a.key,
			body: map[string]string{c.field: c.value}, status: 400, detail: c.field, field: c.field})
	}
	add(badRow{name: "patch fleet empty name", method: "PATCH", path: "/v1/fleets/alpha", key: a.key,
		body: `{"name":"   "}`, status: 400, detail: "name", field: "name"})
	add(badRow{name: "patch fleet slug", method: "PATCH", path: "/v1/fleets/alpha", key: a.key,
		body: `{"slug":"renamed"}`, status: 400, detail: "slug: unknown field", field: "slug"})
	add(badRow{name: "patch fleet environment", method: "PATCH", path: "/v1/fleets/alpha", key: a.key,
		body: `{"environment":"dev"}`, status: 400, detail: "environment: unknown field", field: "environment"})

	for _, vid := range []string{"a.b", "a b", "a*", "a>", "vé", "", strings.Repeat("v", 65), "a/b", "a\tb", "veh.*", "✈", "a\u0000"} {
		add(badRow{name: fmt.Sprintf("vehicle_id %q", vid), method: "POST", path: "/v1/fleets/alpha/vehicles", key: a.key,
			body: map[string]string{"vehicle_id": vid}, status: 400, detail: "vehicle_id", field: "vehicle_id"})
	}
	manyLabels := map[string]string{}
	for i := range 33 {
		manyLabels[fmt.Sprintf("k%d", i)] = "v"
	}
	for name, labels := range map[string]any{
		"bad key":        map[string]string{"bad key": "x"},
		"dot key":        map[string]string{".hidden": "x"},
		"empty key":      map[string]string{"": "x"},
		"long key":       map[string]string{strings.Repeat("k", 64): "x"},
		"33 labels":      manyLabels,
		"long value":     map[string]string{"k": strings.Repeat("v", 257)},
		"control value":  map[string]string{"k": "a\u0001b"},
		"number value":   map[string]any{"k": 1},
		"array labels":   []string{"k=v"},
		"string labels":  "k=v",
		"nested value":   map[string]any{"k": map[string]string{"x": "y"}},
		"null value":     map[string]any{"k": nil},
		"NUL in value":   map[string]string{"k": "\u0000"},
		"unicode key":    map[string]string{"zöne": "x"},
		"wildcard value": map[string]string{"k*": "x"},
	} {
		add(badRow{name: "vehicle labels " + name, method: "POST", path: "/v1/fleets/alpha/vehicles", key: a.key,
			body: map[string]any{"vehicle_id": "ok", "labels": labels}, status: 400, detail: "labels", field: ""})
		add(badRow{name: "patch vehicle labels " + name, method: "PATCH", path: "/v1/fleets/alpha/vehicles/veh-1", key: a.key,
			body: map[string]any{"labels": labels}, status: 400, detail: "labels", field: ""})
	}
	add(
		badRow{name: "vehicle name too long", method: "POST", path: "/v1/fleets/alpha/vehicles", key: a.key,
			body: map[string]string{"vehicle_id": "ok", "name": strings.Repeat("n", 201)}, status: 400, detail: "name", field: "name"},
		badRow{name: "patch vehicle disabled string", method: "PATCH", path: "/v1/fleets/alpha/vehicles/veh-1", key: a.key,
			body: `{"disabled":"yes"}`, status: 400, detail: "disabled: expected a boolean, got a string", field: "disabled"},
		badRow{name: "patch vehicle disabled number", method: "PATCH", path: "/v1/fleets/alpha/vehicles/veh-1", key: a.key,
			body: `{"disabled":1}`, status: 400, detail: "disabled: expected a boolean", field: "disabled"},
		badRow{name: "patch vehicle empty name", method: "PATCH", path: "/v1/fleets/alpha/vehicles/veh-1", key: a.key,
			body: `{"name":""}`, status: 400, detail: "name", field: "name"},
		badRow{name: "patch vehicle status", method: "PATCH", path: "/v1/fleets/alpha/vehicles/veh-1", key: a.key,
			body: `{"status":"active"}`, status: 400, detail: "status: unknown field", field: "status"},
		badRow{name: "patch vehicle vehicle_id", method: "PATCH", path: "/v1/fleets/alpha/vehicles/veh-1", key: a.key,
			body: `{"vehicle_id":"other"}`, status: 400, detail: "vehicle_id: unknown field", field: "vehicle_id"},
	)

	for _, c := range []struct {
		name, body, detail, field string
	}{
		{"owner role", `{"name":"x","role":"owner"}`, "role", "role"},
		{"unknown role", `{"name":"x","role":"root"}`, "role", "role"},
		{"role case", `{"name":"x","role":"Admin"}`, "role", "role"},
		{"expires_at words", `{"name":"x","expires_at":"tomorrow"}`, "expires_at: expected an RFC 3339 date-time", "expires_at"},
		{"expires_at date only", `{"name":"x","expires_at":"2030-01-01"}`, "expires_at", "expires_at"},
		{"expires_at number", `{"name":"x","expires_at":1893456000}`, "expires_at: expected an RFC 3339 date-time string, got a number", "expires_at"},
		{"expires_at past", `{"name":"x","expires_at":"2001-01-01T00:00:00Z"}`, "expires_at: must be in the future", "expires_at"},
		{"empty name", `{"name":""}`, "name", "name"},
		{"blank name", `{"name":"  "}`, "name", "name"},
		{"no name", `{}`, "name", "name"},
		{"secret given", `{"name":"x","secret":"fpk_x"}`, "secret: unknown field", "secret"},
		{"id given", `{"name":"x","id":"aaaaaaaaaaaaaaaa"}`, "id: unknown field", "id"},
	} {
		add(badRow{name: "api key " + c.name, method: "POST", path: "/v1/api-keys", key: a.key, body: c.body,
			status: 400, detail: c.detail, field: c.field})
	}
	for _, c := range []struct {
		name, body, detail, field string
	}{
		{"bad email", `{"organisation":"X","email":"not-an-email","password":"correct horse battery staple"}`, "email", "email"},
		{"email without dot", `{"organisation":"X","email":"a@localhost","password":"correct horse battery staple"}`, "email", "email"},
		{"email with name", `{"organisation":"X","email":"Eve <eve@example.com>","password":"correct horse battery staple"}`, "email", "email"},
		{"email NUL", `{"organisation":"X","email":"eve\u0000@example.com","password":"correct horse battery staple"}`, "email", "email"},
		{"short password", `{"organisation":"X","email":"x@example.com","password":"short"}`, "password", "password"},
		{"long password", `{"organisation":"X","email":"x@example.com","password":"` + strings.Repeat("p", 257) + `"}`, "password", "password"},
		{"empty organisation", `{"organisation":"","email":"x@example.com","password":"correct horse battery staple"}`, "organisation", "organisation"},
		{"control organisation", `{"organisation":"a\u0000b","email":"x@example.com","password":"correct horse battery staple"}`, "organisation", "organisation"},
		{"nothing", `{}`, "organisation", "organisation"},
		{"plan given", `{"organisation":"X","email":"x@example.com","password":"correct horse battery staple","plan":"scale"}`, "plan: unknown field", "plan"},
	} {
		add(badRow{name: "signup " + c.name, method: "POST", path: "/v1/signup", body: c.body,
			status: 400, detail: c.detail, field: c.field})
	}

	// --- identifiers in paths: never found, never a 400 or 500 ---
	for _, c := range []struct{ seg, shown string }{
		{"a.b", "a.b"}, {"a%20b", "a b"}, {"%2A", "*"}, {"%3E", ">"}, {"%C3%A4", "ä"}, {"ALPHA", "ALPHA"},
		{strings.Repeat("a", 64), strings.Repeat("a", 64)}, {"%00", `\x00`}, {"%FF", `\xff`}, {"alpha%2Fvehicles", "alpha/vehicles"},
		{"alpha%20", "alpha "}, {"%E2%9C%88", "✈"},
	} {
		for _, ep := range []struct{ method, suffix, body string }{
			{"GET", "", ""}, {"PATCH", "", `{"name":"x"}`}, {"DELETE", "", ""},
			{"GET", "/vehicles", ""}, {"POST", "/vehicles", `{"vehicle_id":"v9"}`}, {"GET", "/vehicles/veh-1", ""},
		} {
			r := badRow{name: "path fleet " + c.seg + " " + ep.method + ep.suffix, method: ep.method,
				path: "/v1/fleets/" + c.seg + ep.suffix, key: a.key, status: 404, detail: `fleet "` + c.shown + `" not found`}
			if ep.body != "" {
				r.body = ep.body
			}
			add(r)
		}
	}
	for _, c := range []struct{ seg, shown string }{
		{"a.b", "a.b"}, {"a%20b", "a b"}, {"%2A", "*"}, {"%3E", ">"}, {"v%C3%A9", "vé"},
		{strings.Repeat("v", 65), strings.Repeat("v", 65)}, {"%00", `\x00`}, {"veh-1%2Fx", "veh-1/x"}, {"veh-1.%3E", "veh-1.>"},
	} {
		for _, m := range []string{"GET", "PATCH", "DELETE"} {
			r := badRow{name: "path vehicle " + c.seg + " " + m, method: m, path: "/v1/fleets/alpha/vehicles/" + c.seg,
				key: a.key, status: 404, detail: `vehicle "` + c.shown + `" not found`}
			if m == "PATCH" {
				r.body = `{"name":"x"}`
			}
			add(r)
		}
	}
	for _, id := range []string{"short", strings.Repeat("a", 17), "AAAAAAAAAAAAAAAA", "aaaaaaaaaaaaaaa1", "%2A", "a.b"} {
		shown, _ := url.PathUnescape(id)
		add(badRow{name: "path api key " + id, method: "DELETE", path: "/v1/api-keys/" + id, key: a.key,
			status: 404, detail: fmt.Sprintf("API key %q not found", shown)})
	}
	add(badRow{name: "path api key unknown", method: "DELETE", path: "/v1/api-keys/aaaaaaaaaaaaaaaa", key: a.key,
		status: 404, detail: "aaaaaaaaaaaaaaaa"})

	// --- another tenant's objects: 404, exactly like missing ones ---
	for _, c := range []struct{ method, path, body, detail string }{
		{"GET", "/v1/fleets/bravo", "", `fleet "bravo" not found`},
		{"PATCH", "/v1/fleets/bravo", `{"name":"mine"}`, `fleet "bravo" not found`},
		{"DELETE", "/v1/fleets/bravo", "", `fleet "bravo" not found`},
		{"GET", "/v1/fleets/bravo/vehicles", "", `fleet "bravo" not found`},
		{"POST", "/v1/fleets/bravo/vehicles", `{"vehicle_id":"intruder"}`, `fleet "bravo" not found`},
		{"GET", "/v1/fleets/bravo/vehicles/veh-b", "", `fleet "bravo" not found`},
		{"PATCH", "/v1/fleets/bravo/vehicles/veh-b", `{"disabled":true}`, `fleet "bravo" not found`},
		{"DELETE", "/v1/fleets/bravo/vehicles/veh-b", "", `fleet "bravo" not found`},
		{"GET", "/v1/fleets/alpha/vehicles/veh-b", "", `vehicle "veh-b" not found`},
		{"PATCH", "/v1/fleets/alpha/vehicles/veh-b", `{"disabled":true}`, `vehicle "veh-b" not found`},
		{"DELETE", "/v1/fleets/alpha/vehicles/veh-b", "", `vehicle "veh-b" not found`},
		{"DELETE", "/v1/api-keys/" + bKey.Id, "", bKey.Id},
		{"DELETE", "/v1/api-keys/" + b.keyID, "", b.keyID},
	} {
		r := badRow{name: "other tenant " + c.method + " " + c.path, method: c.method, path: c.path, key: a.key,
			status: 404, detail: c.detail}
		if c.body != "" {
			r.body = c.body
		}
		add(r)
	}
	// A viewer of tenant A gets the same 404 (not a 403) for B's objects it
	// may read, so a 403 never confirms that something exists.
	add(badRow{name: "other tenant viewer GET", method: "GET", path: "/v1/fleets/bravo/vehicles/veh-b", key: viewer,
		status: 404, detail: `fleet "bravo" not found`})

	// --- query parameters ---
	// (The domain reports a malformed cursor in the detail only, without
	// a field list: those rows name no field.)
	for _, c := range []struct{ path, detail, field string }{
		{"/v1/fleets?limit=abc", "limit: must be an integer between 1 and 500", "limit"},
		{"/v1/fleets?limit=0", "limit", "limit"},
		{"/v1/fleets?limit=501", "limit", "limit"},
		{"/v1/fleets?limit=-1", "limit", "limit"},
		{"/v1/fleets?limit=1.5", "limit", "limit"},
		{"/v1/fleets?limit=", "limit", "limit"},
		{"/v1/fleets?limit=99999999999999999999", "limit", "limit"},
		{"/v1/fleets?limit=1&limit=2", "limit: given more than once", "limit"},
		{"/v1/fleets?cursor=!!!", "cursor: malformed", ""},
		{"/v1/fleets?cursor=", "cursor", "cursor"},
		{"/v1/fleets?cursor=" + base64.RawURLEncoding.EncodeToString([]byte("x:alpha")), "cursor: malformed", ""},
		{"/v1/fleets?cursor=" + strings.Repeat("A", 2000), "cursor", "cursor"},
		{"/v1/fleets?page=2", "page: unknown query parameter", "page"},
		{"/v1/fleets?a=%zz", "query", "query"},
		{"/v1/fleets?a=1;b=2", "query", "query"},
		{"/v1/tenant?verbose=1", "verbose: unknown query parameter", "verbose"},
		{"/v1/api-keys?include_revoked=maybe", "include_revoked: must be true or false", "include_revoked"},
		{"/v1/api-keys?limit=x", "limit", "limit"},
		{"/v1/fleets/alpha/vehicles?status=bogus", "status", "status"},
		{"/v1/fleets/alpha/vehicles?status=", "status", "status"},
		{"/v1/fleets/alpha/vehicles?vehicle_id_prefix=a.b", "vehicle_id_prefix", "vehicle_id_prefix"},
		{"/v1/fleets/alpha/vehicles?vehicle_id_prefix=" + strings.Repeat("v", 65), "vehicle_id_prefix", "vehicle_id_prefix"},
		{"/v1/fleets/alpha/vehicles?label=nokey", "label", "label"},
		{"/v1/fleets/alpha/vehicles?online=maybe", "online: must be true or false", "online"},
		{"/v1/fleets/alpha/vehicles?label=%3Dv", "label", "label"},
		{"/v1/fleets/alpha/vehicles?label=k%3D%00", "label: must be printable UTF-8", "label"},
		{"/v1/fleets/alpha/vehicles?label=k%3D%FF", "label: must be printable UTF-8", "label"},
		{"/v1/fleets/alpha/vehicles?label=bad%20key%3Dv", "label", "label"},
		{"/v1/fleets/alpha/vehicles?label=k%3D" + strings.Repeat("v", 300), "label", "label"},
		{"/v1/fleets/alpha/vehicles?limit=0&status=bogus", "(and 1 more)", "limit"},
		{"/v1/audit-events?since=yesterday", "since: must be an RFC 3339 date-time", "since"},
		{"/v1/audit-events?since=2020-01-01", "since", "since"},
		{"/v1/audit-events?since=2020-01-01T00:00:00+02:00", "since", "since"}, // unencoded '+' is a space
		{"/v1/audit-events?until=2020-13-01T00:00:00Z", "until", "until"},
		{"/v1/audit-events?since=2020-01-02T00:00:00Z&until=2020-01-01T00:00:00Z", "until: must be after since", "until"},
		{"/v1/audit-events?action=" + strings.Repeat("a", 201), "action: must be at most 200", "action"},
		{"/v1/audit-events?target_id=%FF", "target_id", "target_id"},
		{"/v1/audit-events?target_type=", "target_type", "target_type"},
		{"/v1/audit-events?cursor=" + base64.RawURLEncoding.EncodeToString([]byte("c:notanumber")), "cursor: malformed", ""},
		{"/v1/audit-events?cursor=" + base64.RawURLEncoding.EncodeToString([]byte("c:-5")), "cursor: malformed", ""},
	} {
		add(badRow{name: "query " + c.path[:min(len(c.path), 70)], method: "GET", path: c.path, key: a.key,
			status: 400, detail: c.detail, field: c.field})
	}

	// --- Idempotency-Key ---
	for _, k := range []string{"has space", strings.Repeat("k", 256), "tab\tkey", "ключ"} {
		add(badRow{name: fmt.Sprintf("idempotency key %.20q", k), method: "POST", path: "/v1/fleets", key: a.key,
			body: `{"slug":"idem"}`, opts: []reqOpt{withHeader("Idempotency-Key", k)}, status: 400, detail: "Idempotency-Key"})
	}
	add(badRow{name: "idempotency key empty", method: "POST", path: "/v1/fleets", key: a.key,
		body: `{"slug":"idem"}`, opts: []reqOpt{func(r *http.Request) { r.Header["Idempotency-Key"] = []string{""} }},
		status: 400, detail: "Idempotency-Key"})
	add(badRow{name: "idempotency key twice", method: "POST", path: "/v1/fleets", key: a.key,
		body: `{"slug":"idem"}`, opts: []reqOpt{func(r *http.Request) { r.Header["Idempotency-Key"] = []string{"a", "b"} }},
		status: 400, detail: "Idempotency-Key"})

	// --- roles ---
	for _, c := range []struct {
		method, path, key, body string
	}{
		{"POST", "/v1/fleets", viewer, `{"slug":"by-viewer"}`},
		{"PATCH", "/v1/fleets/alpha", viewer, `{"name":"x"}`},
		{"DELETE", "/v1/fleets/alpha/vehicles/veh-1", viewer, ""},
		{"POST", "/v1/fleets/alpha/vehicles", viewer, `{"vehicle_id":"by-viewer"}`},
		{"POST", "/v1/api-keys", member, `{"name":"by-member"}`},
		{"GET", "/v1/api-keys", member, ""},
		{"DELETE", "/v1/api-keys/" + a.keyID, member, ""},
		{"DELETE", "/v1/fleets/alpha", member, ""},
		{"GET", "/v1/audit-events", member, ""},
	} {
		r := badRow{name: "role " + c.method + " " + c.path, method: c.method, path: c.path, key: c.key,
			status: 403, detail: "role"}
		if c.body != "" {
			r.body = c.body
		}
		add(r)
	}

	// --- conflicts ---
	add(
		badRow{name: "conflict fleet slug", method: "POST", path: "/v1/fleets", key: a.key, body: `{"slug":"alpha"}`,
			status: 409, detail: `slug "alpha" already exists`},
		badRow{name: "conflict vehicle id", method: "POST", path: "/v1/fleets/alpha/vehicles", key: a.key, body: `{"vehicle_id":"veh-1"}`,
			status: 409, detail: `vehicle "veh-1" already exists`},
		badRow{name: "conflict non-empty fleet", method: "DELETE", path: "/v1/fleets/alpha", key: a.key,
			status: 409, detail: "still has vehicles"},
		badRow{name: "conflict signup email", method: "POST", path: "/v1/signup",
			body:   `{"organisation":"Again","email":"` + mustOwnerEmail(t, e, a) + `","password":"correct horse battery staple"}`,
			status: 409, detail: "e-mail"},
	)

	// --- unknown routes and methods ---
	add(
		badRow{name: "unknown route", method: "GET", path: "/v1/nope", key: a.key, status: 404, detail: "/v1/nope"},
		badRow{name: "unknown nested route", method: "GET", path: "/v1/fleets/alpha/vehicles/veh-1/nope", key: a.key, status: 404, detail: "no such endpoint"},
		badRow{name: "method PUT fleets", method: "PUT", path: "/v1/fleets", key: a.key, body: `{"slug":"x"}`, status: 405, detail: "PUT"},
		badRow{name: "method POST tenant", method: "POST", path: "/v1/tenant", key: a.key, body: `{}`, status: 405, detail: "allowed: GET"},
		badRow{name: "method DELETE signup", method: "DELETE", path: "/v1/signup", status: 405, detail: "allowed: POST"},
		badRow{name: "method PATCH vehicles", method: "PATCH", path: "/v1/fleets/alpha/vehicles", key: a.key, body: `{}`, status: 405, detail: "allowed: GET, POST"},
	)

	add(identityBadRows(t, fx)...)
	add(billingBadRows(t, fx)...)

	// The expiring key and token must have expired before the rows run.
	time.Sleep(time.Until(expiresAt) + 20*time.Millisecond)
	time.Sleep(time.Until(fx.expiresAt) + 20*time.Millisecond)

	names := map[string]bool{}
	for _, row := range rows {
		if names[row.name] {
			t.Fatalf("duplicate row name %q", row.name)
		}
		names[row.name] = true
		t.Run(row.name, func(t *testing.T) {
			before := snapshot(t, e.pool)
			sub := *e
			sub.tb = t
			r := sub.do(row.method, row.path, row.key, row.body, append([]reqOpt{malformed()}, row.opts...)...)
			if r.status != row.status {
				t.Errorf("status %d, want %d; body %.500s", r.status, row.status, r.body)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("Content-Type %q", ct)
			}
			p := api.Problem{}
			if err := json.Unmarshal(r.body, &p); err != nil {
				t.Fatalf("body %.500s: %v", r.body, err)
			}
			if !strings.Contains(strings.ToLower(p.Detail), strings.ToLower(row.detail)) {
				t.Errorf("detail %q does not mention %q", p.Detail, row.detail)
			}
			if p.Status != row.status || p.RequestId == "" || p.Code == "" {
				t.Errorf("problem %+v", p)
			}
			if row.field != "" {
				var fields []string
				if p.Errors != nil {
					for _, f := range *p.Errors {
						fields = append(fields, f.Field)
					}
				}
				if !slices.Contains(fields, row.field) {
					t.Errorf("errors %v do not name %q", fields, row.field)
				}
			}
			if row.hide != "" && strings.Contains(string(r.body), row.hide) {
				t.Errorf("the response shows what it must not: %s", r.body)
			}
			if row.status == 401 && r.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			if p.Status == 500 {
				t.Errorf("internal error: %s", e.logs.String())
			}
			if d := diffSnapshots(before, snapshot(t, e.pool)); d != "" {
				t.Errorf("the database changed: %s", d)
			}
		})
	}
	t.Logf("%d bad requests", len(rows))

	// And after all that, everything still works.
	e.do("GET", "/v1/fleets/alpha/vehicles/veh-1", a.key, nil).must(t, 200, nil)
	e.do("GET", "/v1/fleets/bravo/vehicles/veh-b", b.key, nil).must(t, 200, nil)
}

// mustOwnerEmail returns the e-mail of tenant tn's owner, from the audit log.
func mustOwnerEmail(t *testing.T, e *env, tn tenant) string {
	t.Helper()
	var l api.AuditEventList
	e.do("GET", "/v1/audit-events?action=tenant.create", tn.key, nil).must(t, 200, &l)
	if len(l.Items) != 1 {
		t.Fatalf("tenant.create events: %+v", l.Items)
	}
	email, _ := l.Items[0].Details["owner_email"].(string)
	if email == "" {
		t.Fatalf("no owner_email in %+v", l.Items[0])
	}
	return email
}
