package api_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane/api"
)

// idFixtures are the identity objects the rows of TestBadInput aim at.
// Tenant A has fleets alpha (prod: veh-1 pending, veh-enrolled, veh-revoked,
// veh-disabled), beta (staging) and gamma (prod, so a fleet-wide grant on
// alpha would reach it); tenant B has bravo.
type idFixtures struct {
	a, b           tenant
	viewer, member string

	tokGood      api.EnrollmentTokenCreated // 100 uses; rows never use one
	tokExpiring  api.EnrollmentTokenCreated // expired when the rows run
	tokRevoked   api.EnrollmentTokenCreated
	tokUsed      api.EnrollmentTokenCreated
	tokElsewhere api.EnrollmentTokenCreated // only from 203.0.113.0/24
	tokPinned    api.EnrollmentTokenCreated // vehicle pinned-1 only
	tokBeta      api.EnrollmentTokenCreated // of fleet beta
	tokB         api.EnrollmentTokenCreated // of tenant B
	tokDisabled  api.EnrollmentTokenCreated // pinned to veh-disabled

	kEnrolled userKey // held by veh-enrolled
	kRevoked  userKey // veh-revoked's key, revoked

	aGrant, bGrant api.GrantCreated
	generic401     string // the one answer to every enrollment token problem
	expiresAt      time.Time
}

func setupIdentityFixtures(t *testing.T, e *env, a, b tenant, viewer, member string) idFixtures {
	t.Helper()
	fx := idFixtures{a: a, b: b, viewer: viewer, member: member}
	fx.expiresAt = time.Now().Add(1500 * time.Millisecond).UTC()
	fx.tokExpiring = e.createToken(a.key, "alpha", api.EnrollmentTokenCreate{ExpiresAt: fx.expiresAt})
	fx.tokGood = e.createToken(a.key, "alpha", tokenIn(100))
	fx.tokRevoked = e.createToken(a.key, "alpha", tokenIn(5))
	e.do("DELETE", "/v1/fleets/alpha/enrollment-tokens/"+fx.tokRevoked.Id, a.key, nil).must(t, http.StatusNoContent, nil)
	fx.tokUsed = e.createToken(a.key, "alpha", tokenIn(1))
	e.enroll(fx.tokUsed.Token, newUserKey(t), "veh-used").must(t, http.StatusCreated, nil)
	fx.tokElsewhere = e.createToken(a.key, "alpha", api.EnrollmentTokenCreate{ExpiresAt: time.Now().Add(time.Hour), SourceCidrs: &[]string{"203.0.113.0/24"}})
	fx.tokPinned = e.createToken(a.key, "alpha", api.EnrollmentTokenCreate{ExpiresAt: time.Now().Add(time.Hour), VehicleId: ptr("pinned-1")})

	fx.kEnrolled = newUserKey(t)
	e.mustEnroll(a.key, "alpha", fx.kEnrolled, "veh-enrolled")
	fx.kRevoked = newUserKey(t)
	e.mustEnroll(a.key, "alpha", fx.kRevoked, "veh-revoked")
	e.do("POST", "/v1/fleets/alpha/vehicles/veh-revoked/revoke", a.key, nil).must(t, http.StatusOK, nil)
	e.createVehicle(a.key, "alpha", "veh-disabled", nil)
	e.do("PATCH", "/v1/fleets/alpha/vehicles/veh-disabled", a.key, api.VehicleUpdate{Disabled: ptr(true)}).must(t, http.StatusOK, nil)
	fx.tokDisabled = e.createToken(a.key, "alpha", api.EnrollmentTokenCreate{ExpiresAt: time.Now().Add(time.Hour), VehicleId: ptr("veh-disabled")})

	e.do("POST", "/v1/fleets", a.key, api.FleetCreate{Slug: "beta", Environment: ptr("staging")}).must(t, http.StatusCreated, nil)
	fx.tokBeta = e.createToken(a.key, "beta", tokenIn(1))
	e.createFleet(a.key, "gamma")
	fx.tokB = e.createToken(b.key, "bravo", tokenIn(1))

	exp := time.Now().Add(time.Hour)
	e.do("POST", "/v1/grants", a.key, api.GrantCreate{Subscribe: &[]string{"fleet.prod.veh.veh-1.state.>"}, ExpiresAt: exp, PublicKey: ptr(newUserKey(t).pub)}).
		must(t, http.StatusCreated, &fx.aGrant)
	e.do("POST", "/v1/grants", b.key, api.GrantCreate{Subscribe: &[]string{"fleet.prod.>"}, ExpiresAt: exp}).
		must(t, http.StatusCreated, &fx.bGrant)

	fx.generic401 = e.enroll("fpe_aaaaaaaaaaaaaaaa_"+strings.Repeat("a", 52), newUserKey(t), "").problem(t, http.StatusUnauthorized).Detail
	return fx
}

// identityBadRows are TestBadInput's rows for the NATS identity endpoints.
func identityBadRows(t *testing.T, fx idFixtures) []badRow {
	t.Helper()
	var rows []badRow
	add := func(r ...badRow) { rows = append(rows, r...) }
	a := fx.a
	pub := newUserKey(t).pub
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	far := time.Now().Add(31 * 24 * time.Hour).UTC().Format(time.RFC3339)
	js := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	wrong := wrongKeys(t)
	wrongNames := make([]string, 0, len(wrong))
	for n := range wrong {
		wrongNames = append(wrongNames, n)
	}
	slices.Sort(wrongNames)

	// --- enrollment tokens ---
	const tokens = "/v1/fleets/alpha/enrollment-tokens"
	for _, c := range []struct {
		name, body, detail, field string
	}{
		{"no expires_at", `{}`, "expires_at: is required", "expires_at"},
		{"expires_at past", `{"expires_at":"2001-01-01T00:00:00Z"}`, "expires_at: must be in the future", "expires_at"},
		{"expires_at 31 days", `{"expires_at":"` + far + `"}`, "expires_at: must be at most 30 days", "expires_at"},
		{"expires_at words", `{"expires_at":"tomorrow"}`, "expires_at: expected an RFC 3339", "expires_at"},
		{"expires_at number", `{"expires_at":1893456000}`, "expires_at: expected an RFC 3339 date-time string, got a number", "expires_at"},
		{"max_uses 0", `{"expires_at":"` + future + `","max_uses":0}`, "max_uses: must be between 1 and 100000", "max_uses"},
		{"max_uses negative", `{"expires_at":"` + future + `","max_uses":-1}`, "max_uses", "max_uses"},
		{"max_uses huge", `{"expires_at":"` + future + `","max_uses":100001}`, "max_uses", "max_uses"},
		{"max_uses overflow", `{"expires_at":"` + future + `","max_uses":99999999999999999999}`, "max_uses: number 99999999999999999999 is out of range", "max_uses"},
		{"max_uses fraction", `{"expires_at":"` + future + `","max_uses":1.5}`, "max_uses: expected an integer", "max_uses"},
		{"max_uses string", `{"expires_at":"` + future + `","max_uses":"5"}`, "max_uses: expected an integer, got a string", "max_uses"},
		{"pinned max_uses", `{"expires_at":"` + future + `","max_uses":2,"vehicle_id":"v9"}`, "max_uses: must be 1", "max_uses"},
		{"cidr garbage", `{"expires_at":"` + future + `","source_cidrs":["not-a-cidr"]}`, "source_cidrs", "source_cidrs"},
		{"cidr /33", `{"expires_at":"` + future + `","source_cidrs":["10.0.0.0/33"]}`, "source_cidrs", "source_cidrs"},
		{"cidr /129", `{"expires_at":"` + future + `","source_cidrs":["2001:db8::/129"]}`, "source_cidrs", "source_cidrs"},
		{"cidr empty", `{"expires_at":"` + future + `","source_cidrs":[""]}`, "source_cidrs", "source_cidrs"},
		{"cidr string", `{"expires_at":"` + future + `","source_cidrs":"10.0.0.0/8"}`, "source_cidrs: expected an array, got a string", "source_cidrs"},
		{"cidr too many", `{"expires_at":"` + future + `","source_cidrs":` + js(manyCIDRs(33)) + `}`, "source_cidrs: at most 32", "source_cidrs"},
		{"vehicle_id dot", `{"expires_at":"` + future + `","vehicle_id":"a.b"}`, "vehicle_id", "vehicle_id"},
		{"vehicle_id wildcard", `{"expires_at":"` + future + `","vehicle_id":"veh.>"}`, "vehicle_id", "vehicle_id"},
		{"description long", `{"expires_at":"` + future + `","description":"` + strings.Repeat("d", 2001) + `"}`, "description", "description"},
		{"description NUL", `{"expires_at":"` + future + `","description":"a\u0000b"}`, "description", "description"},
		{"token given", `{"expires_at":"` + future + `","token":"fpe_x"}`, "token: unknown field", "token"},
		{"uses given", `{"expires_at":"` + future + `","uses":0}`, "uses: unknown field", "uses"},
	} {
		add(badRow{name: "token create " + c.name, method: "POST", path: tokens, key: a.key, body: c.body,
			status: 400, detail: c.detail, field: c.field})
	}
	valid := `{"expires_at":"` + future + `"}`
	add(
		badRow{name: "token create viewer", method: "POST", path: tokens, key: fx.viewer, body: valid, status: 403, detail: "role"},
		badRow{name: "token list viewer", method: "GET", path: tokens, key: fx.viewer, status: 403, detail: "role"},
		badRow{name: "token get viewer", method: "GET", path: tokens + "/" + fx.tokGood.Id, key: fx.viewer, status: 403, detail: "role"},
		badRow{name: "token delete viewer", method: "DELETE", path: tokens + "/" + fx.tokGood.Id, key: fx.viewer, status: 403, detail: "role"},
		badRow{name: "token create other tenant", method: "POST", path: "/v1/fleets/bravo/enrollment-tokens", key: a.key, body: valid,
			status: 404, detail: `fleet "bravo" not found`},
		badRow{name: "token create unknown fleet", method: "POST", path: "/v1/fleets/nope/enrollment-tokens", key: a.key, body: valid,
			status: 404, detail: `fleet "nope" not found`},
		badRow{name: "token list other tenant", method: "GET", path: "/v1/fleets/bravo/enrollment-tokens", key: a.key,
			status: 404, detail: `fleet "bravo" not found`},
		badRow{name: "token get other tenant", method: "GET", path: "/v1/fleets/bravo/enrollment-tokens/" + fx.tokB.Id, key: a.key,
			status: 404, detail: `fleet "bravo" not found`},
		badRow{name: "token get other tenant's in own fleet", method: "GET", path: tokens + "/" + fx.tokB.Id, key: a.key,
			status: 404, detail: fx.tokB.Id},
		badRow{name: "token delete other tenant's in own fleet", method: "DELETE", path: tokens + "/" + fx.tokB.Id, key: a.key,
			status: 404, detail: fx.tokB.Id},
		badRow{name: "token get other fleet's", method: "GET", path: tokens + "/" + fx.tokBeta.Id, key: a.key,
			status: 404, detail: fx.tokBeta.Id},
		badRow{name: "token delete other fleet's", method: "DELETE", path: tokens + "/" + fx.tokBeta.Id, key: a.key,
			status: 404, detail: fx.tokBeta.Id},
		badRow{name: "token delete revoked", method: "DELETE", path: tokens + "/" + fx.tokRevoked.Id, key: a.key,
			status: 404, detail: fx.tokRevoked.Id},
		badRow{name: "token get unknown", method: "GET", path: tokens + "/aaaaaaaaaaaaaaaa", key: a.key,
			status: 404, detail: "aaaaaaaaaaaaaaaa"},
		badRow{name: "token list include_inactive", method: "GET", path: tokens + "?include_inactive=maybe", key: a.key,
			status: 400, detail: "include_inactive: must be true or false", field: "include_inactive"},
		badRow{name: "token list include_revoked", method: "GET", path: tokens + "?include_revoked=true", key: a.key,
			status: 400, detail: "include_revoked: unknown query parameter", field: "include_revoked"},
		badRow{name: "token list limit", method: "GET", path: tokens + "?limit=0", key: a.key,
			status: 400, detail: "limit", field: "limit"},
		badRow{name: "token list cursor", method: "GET", path: tokens + "?cursor=!!!", key: a.key,
			status: 400, detail: "cursor: malformed"},
		badRow{name: "token create query", method: "POST", path: tokens + "?dry_run=true", key: a.key, body: valid,
			status: 400, detail: "dry_run: unknown query parameter", field: "dry_run"},
		badRow{name: "token method PATCH", method: "PATCH", path: tokens + "/" + fx.tokGood.Id, key: a.key, body: `{}`,
			status: 405, detail: "allowed: GET, DELETE"},
	)
	for _, id := range []string{"short", strings.Repeat("a", 17), "AAAAAAAAAAAAAAAA", "aaaaaaaaaaaaaaa1", "%2A", "a.b", "fpe_x"} {
		for _, m := range []string{"GET", "DELETE"} {
			add(badRow{name: "token path " + m + " " + id, method: m, path: tokens + "/" + id, key: a.key,
				status: 404, detail: "enrollment token"})
		}
	}

	// --- enrollment: every token problem is the same 401 ---
	for _, c := range []struct{ name, token string }{
		{"unknown", "fpe_aaaaaaaaaaaaaaaa_" + strings.Repeat("a", 52)},
		{"wrong secret", "fpe_" + fx.tokGood.Id + "_" + strings.Repeat("b", 52)},
		{"malformed", "fpe_nope"},
		{"api key", a.key},
		{"expired", fx.tokExpiring.Token},
		{"revoked", fx.tokRevoked.Token},
		{"used up", fx.tokUsed.Token},
		{"wrong network", fx.tokElsewhere.Token},
		{"trailing junk", fx.tokB.Token + "x"},
	} {
		add(badRow{name: "enroll token " + c.name, method: "POST", path: "/v1/enroll",
			body: js(api.EnrollRequest{Token: c.token, PublicKey: pub}), status: 401, detail: fx.generic401})
	}
	enrollBody := func(fields map[string]any) string {
		m := map[string]any{"token": fx.tokGood.Token, "public_key": pub}
		for k, v := range fields {
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return js(m)
	}
	for _, n := range wrongNames {
		add(badRow{name: "enroll public_key " + n, method: "POST", path: "/v1/enroll", body: enrollBody(map[string]any{"public_key": wrong[n]}),
			status: 400, detail: "public_key", field: "public_key", hide: seedOnly(wrong[n])})
	}
	for _, c := range []struct {
		name   string
		fields map[string]any
		status int
		detail string
		field  string
	}{
		{"no token", map[string]any{"token": nil}, 400, "token: is required", "token"},
		{"no public_key", map[string]any{"public_key": nil}, 400, "public_key", "public_key"},
		{"vehicle_id dot", map[string]any{"vehicle_id": "a.b"}, 400, "vehicle_id", "vehicle_id"},
		{"vehicle_id long", map[string]any{"vehicle_id": strings.Repeat("v", 65)}, 400, "vehicle_id", "vehicle_id"},
		{"hostname NUL", map[string]any{"hostname": "a\u0000b"}, 400, "hostname", "hostname"},
		{"hostname long", map[string]any{"hostname": strings.Repeat("h", 254)}, 400, "hostname", "hostname"},
		{"arch long", map[string]any{"arch": strings.Repeat("a", 33)}, 400, "arch", "arch"},
		{"agent_version escape", map[string]any{"agent_version": "1.0\u001b[31m"}, 400, "agent_version", "agent_version"},
		{"agent_version number", map[string]any{"agent_version": 1}, 400, "agent_version: expected a string, got a number", "agent_version"},
		{"seed field", map[string]any{"seed": "SUA"}, 400, "seed: unknown field", "seed"},
		{"key in use", map[string]any{"public_key": fx.kEnrolled.pub, "vehicle_id": "new-veh"}, 409, "public_key: this key is already in use", ""},
		{"revoked key", map[string]any{"public_key": fx.kRevoked.pub}, 400, "revoked", ""},
		{"pinned other vehicle", map[string]any{"token": fx.tokPinned.Token, "vehicle_id": "other"}, 400, `vehicle_id: this token enrolls vehicle "pinned-1" only`, ""},
		{"disabled vehicle", map[string]any{"token": fx.tokDisabled.Token}, 409, "disabled", ""},
		{"vehicle of another fleet", map[string]any{"token": fx.tokBeta.Token, "vehicle_id": "veh-1"}, 409, "another fleet", ""},
	} {
		add(badRow{name: "enroll " + c.name, method: "POST", path: "/v1/enroll", body: enrollBody(c.fields),
			status: c.status, detail: c.detail, field: c.field})
	}
	add(
		badRow{name: "enroll query", method: "POST", path: "/v1/enroll?token=x", body: enrollBody(nil),
			status: 400, detail: "token: unknown query parameter", field: "token"},
		badRow{name: "enroll method GET", method: "GET", path: "/v1/enroll", status: 405, detail: "allowed: POST"},
		badRow{name: "enroll idempotency key", method: "POST", path: "/v1/enroll", body: enrollBody(nil),
			opts: []reqOpt{withHeader("Idempotency-Key", "has space")}, status: 400, detail: "Idempotency-Key"},
	)

	// --- renewal ---
	for _, n := range wrongNames {
		add(badRow{name: "nonce public_key " + n, method: "POST", path: "/v1/agent/nonce", body: js(map[string]string{"public_key": wrong[n]}),
			status: 400, detail: "public_key", hide: seedOnly(wrong[n])})
		add(badRow{name: "renew public_key " + n, method: "POST", path: "/v1/agent/renew",
			body:   js(map[string]string{"public_key": wrong[n], "nonce": "n", "signature": "c2ln"}),
			status: 400, detail: "public_key", hide: seedOnly(wrong[n])})
	}
	add(
		badRow{name: "nonce unknown key", method: "POST", path: "/v1/agent/nonce", body: js(map[string]string{"public_key": pub}),
			status: 401, detail: "no active vehicle holds this key"},
		badRow{name: "nonce revoked key", method: "POST", path: "/v1/agent/nonce", body: js(map[string]string{"public_key": fx.kRevoked.pub}),
			status: 401, detail: "no active vehicle holds this key"},
		badRow{name: "renew unknown nonce", method: "POST", path: "/v1/agent/renew",
			body:   js(map[string]string{"public_key": fx.kEnrolled.pub, "nonce": "bm9uY2U", "signature": fx.kEnrolled.sign(t, "bm9uY2U")}),
			status: 401, detail: "nonce"},
		badRow{name: "renew signature not base64", method: "POST", path: "/v1/agent/renew",
			body:   js(map[string]string{"public_key": fx.kEnrolled.pub, "nonce": "n", "signature": "!!!"}),
			status: 400, detail: "signature"},
		badRow{name: "renew signature empty", method: "POST", path: "/v1/agent/renew",
			body:   js(map[string]string{"public_key": fx.kEnrolled.pub, "nonce": "n", "signature": ""}),
			status: 400, detail: "signature"},
		badRow{name: "renew nonce empty", method: "POST", path: "/v1/agent/renew",
			body:   js(map[string]string{"public_key": fx.kEnrolled.pub, "nonce": "", "signature": "c2ln"}),
			status: 400, detail: "nonce"},
		badRow{name: "renew nonce long", method: "POST", path: "/v1/agent/renew",
			body:   js(map[string]string{"public_key": fx.kEnrolled.pub, "nonce": strings.Repeat("n", 129), "signature": "c2ln"}),
			status: 400, detail: "nonce"},
		badRow{name: "renew no signature", method: "POST", path: "/v1/agent/renew",
			body: js(map[string]string{"public_key": fx.kEnrolled.pub, "nonce": "n"}), status: 400, detail: "signature"},
	)

	// --- vehicle credentials ---
	const creds = "/v1/fleets/alpha/vehicles/veh-1/credentials"
	for _, n := range wrongNames {
		add(badRow{name: "credentials public_key " + n, method: "POST", path: creds, key: a.key, body: js(map[string]string{"public_key": wrong[n]}),
			status: 400, detail: "public_key", hide: seedOnly(wrong[n])})
	}
	add(
		badRow{name: "credentials no key", method: "POST", path: creds, key: a.key, body: `{}`, status: 400, detail: "public_key"},
		badRow{name: "credentials key in use", method: "POST", path: creds, key: a.key, body: js(map[string]string{"public_key": fx.kEnrolled.pub}),
			status: 409, detail: "already in use"},
		badRow{name: "credentials revoked key", method: "POST", path: creds, key: a.key, body: js(map[string]string{"public_key": fx.kRevoked.pub}),
			status: 400, detail: "revoked"},
		badRow{name: "credentials disabled vehicle", method: "POST", path: "/v1/fleets/alpha/vehicles/veh-disabled/credentials", key: a.key,
			body: js(map[string]string{"public_key": pub}), status: 409, detail: "disabled"},
		badRow{name: "credentials viewer", method: "POST", path: creds, key: fx.viewer, body: js(map[string]string{"public_key": pub}),
			status: 403, detail: "role"},
		badRow{name: "credentials unknown vehicle", method: "POST", path: "/v1/fleets/alpha/vehicles/nope/credentials", key: a.key,
			body: js(map[string]string{"public_key": pub}), status: 404, detail: `vehicle "nope" not found`},
		badRow{name: "credentials other tenant", method: "POST", path: "/v1/fleets/bravo/vehicles/veh-b/credentials", key: a.key,
			body: js(map[string]string{"public_key": pub}), status: 404, detail: `fleet "bravo" not found`},
		badRow{name: "credentials other tenant's vehicle", method: "POST", path: "/v1/fleets/alpha/vehicles/veh-b/credentials", key: a.key,
			body: js(map[string]string{"public_key": pub}), status: 404, detail: `vehicle "veh-b" not found`},
	)

	// --- revoke ---
	const revoke = "/v1/fleets/alpha/vehicles/veh-enrolled/revoke"
	add(
		badRow{name: "revoke no credentials", method: "POST", path: "/v1/fleets/alpha/vehicles/veh-1/revoke", key: a.key,
			status: 409, detail: "no credentials"},
		badRow{name: "revoke body field", method: "POST", path: revoke, key: a.key, body: `{"reason":"x"}`,
			status: 400, detail: "reason: unknown field", field: "reason"},
		badRow{name: "revoke body array", method: "POST", path: revoke, key: a.key, body: `[]`,
			status: 400, detail: "JSON object, not an array"},
		badRow{name: "revoke body text", method: "POST", path: revoke, key: a.key, body: `now`,
			opts: []reqOpt{withHeader("Content-Type", "text/plain")}, status: 415, detail: "Content-Type"},
		badRow{name: "revoke viewer", method: "POST", path: revoke, key: fx.viewer, status: 403, detail: "role"},
		badRow{name: "revoke unknown vehicle", method: "POST", path: "/v1/fleets/alpha/vehicles/nope/revoke", key: a.key,
			status: 404, detail: `vehicle "nope" not found`},
		badRow{name: "revoke other tenant", method: "POST", path: "/v1/fleets/bravo/vehicles/veh-b/revoke", key: a.key,
			status: 404, detail: `fleet "bravo" not found`},
		badRow{name: "revoke query", method: "POST", path: revoke + "?force=true", key: a.key,
			status: 400, detail: "force: unknown query parameter", field: "force"},
		badRow{name: "revoke method GET", method: "GET", path: revoke, key: a.key, status: 405, detail: "allowed: POST"},
	)

	// --- grants ---
	grant := func(fields map[string]any) string {
		m := map[string]any{"expires_at": future, "subscribe": []string{"fleet.prod.veh.veh-1.state.>"}}
		for k, v := range fields {
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return js(m)
	}
	scope := func(s map[string]any) map[string]any { return map[string]any{"scopes": []any{s}, "subscribe": nil} }
	for _, c := range []struct {
		name   string
		fields map[string]any
		status int
		detail string
		field  string
	}{
		{"no expires_at", map[string]any{"expires_at": nil}, 400, "expires_at: is required", "expires_at"},
		{"expires_at past", map[string]any{"expires_at": "2001-01-01T00:00:00Z"}, 400, "expires_at: must be in the future", "expires_at"},
		{"expires_at beyond max", map[string]any{"expires_at": far}, 400, "expires_at: must be at most 30 days", "expires_at"},
		{"nothing granted", map[string]any{"subscribe": nil}, 400, "scopes: a grant needs scopes", "scopes"},
		{"publish outside", map[string]any{"publish": []string{"foo.bar"}}, 400, "publish[0]", "publish[0]"},
		{"publish inbox", map[string]any{"publish": []string{"_INBOX.>"}}, 400, "publish[0]", "publish[0]"},
		{"publish sys", map[string]any{"publish": []string{"$SYS.REQ.ACCOUNT.>"}}, 400, "publish[0]", "publish[0]"},
		{"subscribe everything", map[string]any{"subscribe": []string{">"}}, 400, "subscribe[0]", "subscribe[0]"},
		{"subscribe root", map[string]any{"subscribe": []string{"fleet"}}, 400, "subscribe[0]", "subscribe[0]"},
		{"subscribe ingest", map[string]any{"subscribe": []string{"ingest.>"}}, 400, "subscribe[0]", "subscribe[0]"},
		{"subscribe bad wildcard", map[string]any{"subscribe": []string{"fleet.>.x"}}, 400, "subscribe[0]", "subscribe[0]"},
		{"subscribe empty token", map[string]any{"subscribe": []string{"fleet..x"}}, 400, "subscribe[0]", "subscribe[0]"},
		{"subscribe space", map[string]any{"subscribe": []string{"fleet.a b"}}, 400, "subscribe[0]", "subscribe[0]"},
		{"subscribe second", map[string]any{"subscribe": []string{"fleet.prod.>", "fleet*"}}, 400, "subscribe[1]", "subscribe[1]"},
		{"cmd without vehicles", scope(map[string]any{"fleet": "alpha", "categories": []string{"cmd"}}), 400, "cmd needs explicit vehicle_ids", "scopes[0].categories"},
		{"unknown category", scope(map[string]any{"fleet": "alpha", "vehicle_ids": []string{"veh-1"}, "categories": []string{"bogus"}}), 400, "scopes[0].categories", "scopes[0].categories"},
		{"no categories", scope(map[string]any{"fleet": "alpha", "vehicle_ids": []string{"veh-1"}, "categories": []string{}}), 400, "scopes[0].categories", "scopes[0].categories"},
		{"bad fleet", scope(map[string]any{"fleet": "Bad.Slug", "categories": []string{"state"}}), 400, "scopes[0].fleet", "scopes[0].fleet"},
		{"bad vehicle", scope(map[string]any{"fleet": "alpha", "vehicle_ids": []string{"a.b"}, "categories": []string{"state"}}), 400, "scopes[0].vehicle_ids", "scopes[0].vehicle_ids"},
		{"vehicle not in fleet", scope(map[string]any{"fleet": "alpha", "vehicle_ids": []string{"veh-b"}, "categories": []string{"state"}}), 400, `vehicle "veh-b" is not in fleet "alpha"`, ""},
		{"other tenant's fleet", scope(map[string]any{"fleet": "bravo", "categories": []string{"state"}}), 404, `fleet "bravo" not found`, ""},
		{"shared environment", scope(map[string]any{"fleet": "alpha", "categories": []string{"state"}}), 400, "share environment", ""},
		{"scope vehicle_ids string", scope(map[string]any{"fleet": "alpha", "vehicle_ids": "veh-1", "categories": []string{"state"}}), 400, "scopes", ""},
		{"cidr garbage", map[string]any{"source_cidrs": []string{"not-a-cidr"}}, 400, "source_cidrs", "source_cidrs"},
		{"cidr /33", map[string]any{"source_cidrs": []string{"10.0.0.0/33"}}, 400, "source_cidrs", "source_cidrs"},
		{"window hour 25", map[string]any{"time_windows": []any{map[string]string{"start": "25:00:00", "end": "10:00:00"}}}, 400, "time_windows[0]", "time_windows[0]"},
		{"window short", map[string]any{"time_windows": []any{map[string]string{"start": "9:00", "end": "10:00:00"}}}, 400, "time_windows[0]", "time_windows[0]"},
		{"window no end", map[string]any{"time_windows": []any{map[string]string{"start": "08:00:00"}}}, 400, "time_windows[0]", "time_windows[0]"},
		{"window unknown field", map[string]any{"time_windows": []any{map[string]string{"start": "08:00:00", "end": "09:00:00", "tz": "UTC"}}}, 400, "tz", ""},
		{"locale", map[string]any{"locale": "Mars/Olympus"}, 400, "locale", "locale"},
		{"connection type leaf", map[string]any{"connection_types": []string{"LEAFNODE"}}, 400, "connection_types", "connection_types"},
		{"connection type case", map[string]any{"connection_types": []string{"standard"}}, 400, "connection_types", "connection_types"},
		{"key in use", map[string]any{"public_key": fx.kEnrolled.pub}, 409, "public_key: this key is already in use", ""},
		{"revoked key", map[string]any{"public_key": fx.kRevoked.pub}, 400, "revoked", ""},
		{"description NUL", map[string]any{"description": "a\u0000b"}, 400, "description", "description"},
		{"dry_run string", map[string]any{"dry_run": "yes"}, 400, "dry_run: expected a boolean", "dry_run"},
		{"jwt given", map[string]any{"jwt": "x"}, 400, "jwt: unknown field", "jwt"},
	} {
		add(badRow{name: "grant " + c.name, method: "POST", path: "/v1/grants", key: a.key, body: grant(c.fields),
			status: c.status, detail: c.detail, field: c.field})
	}
	for _, n := range wrongNames {
		if n == "empty" { // "" means: the server makes the key
			continue
		}
		add(badRow{name: "grant public_key " + n, method: "POST", path: "/v1/grants", key: a.key, body: grant(map[string]any{"public_key": wrong[n]}),
			status: 400, detail: "public_key", field: "public_key", hide: seedOnly(wrong[n])})
	}
	g := "/v1/grants/" + fx.aGrant.Id
	add(
		badRow{name: "grant dry_run disagrees", method: "POST", path: "/v1/grants?dry_run=false", key: a.key, body: grant(map[string]any{"dry_run": true}),
			status: 400, detail: "dry_run", field: "dry_run"},
		badRow{name: "grant dry_run query", method: "POST", path: "/v1/grants?dry_run=maybe", key: a.key, body: grant(nil),
			status: 400, detail: "dry_run: must be true or false", field: "dry_run"},
		badRow{name: "grant create member", method: "POST", path: "/v1/grants", key: fx.member, body: grant(nil), status: 403, detail: "role"},
		badRow{name: "grant dry run member", method: "POST", path: "/v1/grants?dry_run=true", key: fx.member, body: grant(nil), status: 403, detail: "role"},
		badRow{name: "grant list member", method: "GET", path: "/v1/grants", key: fx.member, status: 403, detail: "role"},
		badRow{name: "grant get member", method: "GET", path: g, key: fx.member, status: 403, detail: "role"},
		badRow{name: "grant delete member", method: "DELETE", path: g, key: fx.member, status: 403, detail: "role"},
		badRow{name: "grant context member", method: "GET", path: g + "/context", key: fx.member, status: 403, detail: "role"},
		badRow{name: "grant list include_inactive", method: "GET", path: "/v1/grants?include_inactive=2", key: a.key,
			status: 400, detail: "include_inactive", field: "include_inactive"},
		badRow{name: "grant list cursor", method: "GET", path: "/v1/grants?cursor=" + strings.Repeat("A", 2000), key: a.key,
			status: 400, detail: "cursor", field: "cursor"},
		badRow{name: "grant get query", method: "GET", path: g + "?verbose=1", key: a.key,
			status: 400, detail: "verbose: unknown query parameter", field: "verbose"},
		badRow{name: "grant method PATCH", method: "PATCH", path: g, key: a.key, body: `{}`, status: 405, detail: "allowed: GET, DELETE"},
		badRow{name: "grant context method POST", method: "POST", path: g + "/context", key: a.key, body: `{}`, status: 405, detail: "allowed: GET"},
	)
	for _, id := range []string{"a.b", "%2A", "%3E", strings.Repeat("g", 65), "aaaaaaaaaaaaaaaa", fx.bGrant.Id} {
		for _, ep := range []struct{ method, suffix string }{{"GET", ""}, {"DELETE", ""}, {"GET", "/context"}} {
			add(badRow{name: fmt.Sprintf("grant path %s%s %.20s", ep.method, ep.suffix, id), method: ep.method,
				path: "/v1/grants/" + id + ep.suffix, key: a.key, status: 404, detail: "grant"})
		}
	}
	return rows
}

// seedOnly returns s when it is a seed (which must never be echoed), else "".
func seedOnly(s string) string {
	if strings.HasPrefix(s, "S") && len(s) > 50 {
		return s
	}
	return ""
}

func manyCIDRs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("10.%d.0.0/16", i)
	}
	return out
}
