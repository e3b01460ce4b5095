package api_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane/api"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestGolden pins representative response bodies. Volatile values (IDs,
// times, secrets, request IDs) are normalised; the status is asserted
// separately from the body.
func TestGolden(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var signup api.SignupResponse
	signupRes := e.do("POST", "/v1/signup", "", api.SignupRequest{
		Organisation: "Golden Drones", Email: "owner@golden.example.com", Password: "correct horse battery staple",
	})
	signupRes.must(t, http.StatusCreated, &signup)
	key := signup.ApiKey.Secret
	exp := time.Now().Add(48 * time.Hour)
	member := api.KeyRoleMember

	cases := []struct {
		name   string
		status int
		res    func() *response
	}{
		{"signup", http.StatusCreated, func() *response { return signupRes }},
		{"tenant", http.StatusOK, func() *response { return e.do("GET", "/v1/tenant", key, nil) }},
		{"api_key_created", http.StatusCreated, func() *response {
			return e.do("POST", "/v1/api-keys", key, api.APIKeyCreate{Name: "deploy bot", Role: &member, ExpiresAt: &exp})
		}},
		{"api_key_list", http.StatusOK, func() *response {
			// Keys sort by their random IDs; pin the order by name.
			r := e.do("GET", "/v1/api-keys", key, nil)
			var l api.APIKeyList
			r.must(t, http.StatusOK, &l)
			slices.SortFunc(l.Items, func(a, b api.APIKey) int { return strings.Compare(a.Name, b.Name) })
			r.body, _ = json.Marshal(l)
			return r
		}},
		{"fleet_created", http.StatusCreated, func() *response {
			return e.do("POST", "/v1/fleets", key, api.FleetCreate{Slug: "survey", Name: ptr("Survey"), Description: ptr("Pipeline survey drones"), Environment: ptr("prod")})
		}},
		{"vehicle_created", http.StatusCreated, func() *response {
			return e.do("POST", "/v1/fleets/survey/vehicles", key, api.VehicleCreate{VehicleId: "px4-001", Name: ptr("Hexa 1"), Labels: &api.Labels{"zone": "north", "model": "x500"}})
		}},
		{"vehicle_list_page", http.StatusOK, func() *response {
			e.createVehicle(key, "survey", "px4-002", nil)
			e.createVehicle(key, "survey", "px4-003", nil)
			return e.do("GET", "/v1/fleets/survey/vehicles?limit=2", key, nil)
		}},
		{"vehicle_disabled", http.StatusOK, func() *response {
			return e.do("PATCH", "/v1/fleets/survey/vehicles/px4-001", key, api.VehicleUpdate{Disabled: ptr(true)})
		}},
		{"regions", http.StatusOK, func() *response { return e.do("GET", "/v1/regions", key, nil) }},
		{"audit_events", http.StatusOK, func() *response { return e.do("GET", "/v1/audit-events?limit=3", key, nil) }},
		{"problem_validation", http.StatusBadRequest, func() *response {
			return e.do("POST", "/v1/fleets", key, `{"slug":"Bad.Slug","environment":"prod eu"}`, malformed())
		}},
		{"problem_decode", http.StatusBadRequest, func() *response {
			return e.do("POST", "/v1/fleets", key, `{"slug":"ok","labels":{}}`, malformed())
		}},
		{"problem_not_found", http.StatusNotFound, func() *response { return e.do("GET", "/v1/fleets/nope/vehicles/x", key, nil) }},
		{"problem_unauthorized", http.StatusUnauthorized, func() *response { return e.do("GET", "/v1/fleets", "", nil) }},
		{"problem_conflict", http.StatusConflict, func() *response { return e.do("DELETE", "/v1/fleets/survey", key, nil) }},
	}
	for _, c := range cases {
		checkGolden(t, c.name, c.status, c.res())
	}
}

// checkGolden asserts r's status and compares its normalised body with
// testdata/<name>.golden (or rewrites the file with -update). replace
// holds old, new pairs applied to the body first, for volatile values the
// generic rules of normalise would name wrongly.
func checkGolden(t *testing.T, name string, status int, r *response, replace ...string) {
	t.Helper()
	if r.status != status {
		t.Errorf("%s: status %d, want %d", name, r.status, status)
	}
	body := strings.NewReplacer(replace...).Replace(string(r.body))
	got := normalise(t, []byte(body))
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestGolden -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from %s (go test -run TestGolden -update rewrites it):\n--- got\n%s\n--- want\n%s", name, path, got, want)
	}
}

// TestGoldenIdentity pins the responses of the NATS identity endpoints.
func TestGoldenIdentity(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *api.Options) { o.PublicURL = "https://fleetplane.example.com" })
	a := e.signup("Golden Identity")
	e.createFleet(a.key, "survey")
	e.createVehicle(a.key, "survey", "px4-001", nil)
	tenantPart := strings.ReplaceAll(a.id, "-", "")[:12]
	exp := time.Now().Add(48 * time.Hour)

	r := e.do("POST", "/v1/fleets/survey/enrollment-tokens", a.key, api.EnrollmentTokenCreate{
		Description: ptr("hangar 2"), ExpiresAt: exp, MaxUses: ptr(10), SourceCidrs: &[]string{"2001:db8::/48", "127.0.0.1"}})
	var tok api.EnrollmentTokenCreated
	r.must(t, http.StatusCreated, &tok)
	checkGolden(t, "enrollment_token_created", http.StatusCreated, r, tok.Id, "<token-id>")

	r = e.do("POST", "/v1/enroll", "", api.EnrollRequest{Token: tok.Token, PublicKey: newUserKey(t).pub, VehicleId: ptr("px4-010"),
		Hostname: ptr("jetson-10"), Arch: ptr("arm64"), AgentVersion: ptr("0.1.0")})
	checkGolden(t, "vehicle_credentials", http.StatusCreated, r, "v"+tenantPart+"-", "<jetstream-domain-prefix>-")
	checkGolden(t, "enrollment_token", http.StatusOK,
		e.do("GET", "/v1/fleets/survey/enrollment-tokens/"+tok.Id, a.key, nil), tok.Id, "<token-id>")
	checkGolden(t, "problem_enroll_unauthorized", http.StatusUnauthorized,
		e.do("POST", "/v1/enroll", "", api.EnrollRequest{Token: "fpe_aaaaaaaaaaaaaaaa_" + strings.Repeat("a", 52), PublicKey: newUserKey(t).pub}))

	checkGolden(t, "vehicle_revocation", http.StatusOK, e.do("POST", "/v1/fleets/survey/vehicles/px4-010/revoke", a.key, nil))
	checkGolden(t, "vehicle_revoked", http.StatusOK, e.do("GET", "/v1/fleets/survey/vehicles/px4-010", a.key, nil))

	scopes := []api.GrantScope{
		{Fleet: "survey", Categories: []api.GrantCategory{api.GrantCategoryState, api.GrantCategoryAgent}},
		{Fleet: "survey", VehicleIds: &[]string{"px4-001"}, Categories: []api.GrantCategory{api.GrantCategoryCmd}},
	}
	checkGolden(t, "grant_preview", http.StatusOK,
		e.do("POST", "/v1/grants?dry_run=true", a.key, api.GrantCreate{Description: ptr("ground station"), Scopes: &scopes, ExpiresAt: exp}))

	var g api.GrantCreated
	r = e.do("POST", "/v1/grants", a.key, api.GrantCreate{Description: ptr("ground station"), Scopes: &scopes, ExpiresAt: exp})
	r.must(t, http.StatusCreated, &g)
	checkGolden(t, "grant_created_with_creds", http.StatusCreated, r, g.Id, "<grant-id>")

	r = e.do("POST", "/v1/grants", a.key, api.GrantCreate{
		Description: ptr("insurer, office hours"), Subscribe: &[]string{"fleet.prod.veh.px4-001.state.position"}, ExpiresAt: exp,
		PublicKey: ptr(newUserKey(t).pub), SourceCidrs: &[]string{"198.51.100.0/24"},
		TimeWindows: &[]api.TimeWindow{{Start: "08:00:00", End: "18:00:00"}}, Locale: ptr("Europe/Berlin"),
		ConnectionTypes: &[]api.ConnectionType{api.ConnectionTypeSTANDARD}})
	var own api.GrantCreated
	r.must(t, http.StatusCreated, &own)
	checkGolden(t, "grant_created", http.StatusCreated, r, own.Id, "<grant-id>")
	checkGolden(t, "grant_context", http.StatusOK, e.do("GET", "/v1/grants/"+g.Id+"/context", a.key, nil), g.Id, "<grant-id>")
	checkGolden(t, "grant_revocation", http.StatusOK, e.do("DELETE", "/v1/grants/"+g.Id, a.key, nil), g.Id, "<grant-id>")
	checkGolden(t, "grant_revoked", http.StatusOK, e.do("GET", "/v1/grants/"+g.Id, a.key, nil), g.Id, "<grant-id>")
}

var (
	secretRe      = regexp.MustCompile(`fpk_[a-z2-7]{16}_[a-z2-7]{52}`)
	tokenSecretRe = regexp.MustCompile(`fpe_[^_\s"]+_[a-z2-7]{52}`)
	jwtRe         = regexp.MustCompile(`eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+`)
	seedRe        = regexp.MustCompile(`\bS[UAO][A-Z2-7]{56}\b`)
	nkeyRe        = regexp.MustCompile(`\b[UAO][A-Z2-7]{55}\b`)
	// A dry run's reply subjects name a grant ID that is never created.
	replyGrantRe = regexp.MustCompile(`\.rpl\.grant\.[a-z2-7]{16}\.`)
	keyIDRe      = regexp.MustCompile(`^[a-z2-7]{16}$`)
	timeRe       = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$`)
	// "api_key:<id>" and "API key <id>" in free text.
	keyRefRe = regexp.MustCompile(`(api_key:|API key |api-keys/)[a-z2-7]{16}`)
)

// normalise replaces volatile values and re-indents the JSON.
func normalise(t *testing.T, body []byte) []byte {
	t.Helper()
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("normalise %s: %v", body, err)
	}
	var walk func(key string, v any) any
	walk = func(key string, v any) any {
		switch x := v.(type) {
		case map[string]any:
			for k, val := range x {
				x[k] = walk(k, val)
			}
		case []any:
			for i, val := range x {
				x[i] = walk(key, val)
			}
		case string:
			switch {
			case key == "request_id":
				return "<request-id>"
			case timeRe.MatchString(x):
				return "<time>"
			case (key == "id" || key == "actor_id" || key == "target_id") && keyIDRe.MatchString(x):
				return "<api-key-id>"
			}
			x = secretRe.ReplaceAllString(x, "<secret>")
			x = tokenSecretRe.ReplaceAllString(x, "<enrollment-token>")
			x = jwtRe.ReplaceAllString(x, "<jwt>")
			x = seedRe.ReplaceAllString(x, "<seed>")
			x = nkeyRe.ReplaceAllStringFunc(x, func(k string) string {
				return map[byte]string{'U': "<user-key>", 'A': "<account-key>", 'O': "<operator-key>"}[k[0]]
			})
			x = replyGrantRe.ReplaceAllString(x, ".rpl.grant.<grant-id>.")
			x = uuidRe.ReplaceAllString(x, "<uuid>")
			x = keyRefRe.ReplaceAllString(x, "${1}<api-key-id>")
			return x
		case float64:
			switch key {
			case "id":
				return "<id>"
			case "latency_ms":
				return "<ms>"
			}
		}
		return v
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(walk("", v)); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}
