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
		r := c.res()
		if r.status != c.status {
			t.Errorf("%s: status %d, want %d", c.name, r.status, c.status)
		}
		got := normalise(t, r.body)
		path := filepath.Join("testdata", c.name+".golden")
		if *update {
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -run TestGolden -update to create it)", err)
		}
		if string(got) != string(want) {
			t.Errorf("%s differs from %s (go test -run TestGolden -update rewrites it):\n--- got\n%s\n--- want\n%s", c.name, path, got, want)
		}
	}
}

var (
	secretRe = regexp.MustCompile(`fpk_[a-z2-7]{16}_[a-z2-7]{52}`)
	keyIDRe  = regexp.MustCompile(`^[a-z2-7]{16}$`)
	timeRe   = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$`)
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
			x = uuidRe.ReplaceAllString(x, "<uuid>")
			x = keyRefRe.ReplaceAllString(x, "${1}<api-key-id>")
			return x
		case float64:
			if key == "id" {
				return "<audit-id>"
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
