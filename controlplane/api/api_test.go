package api_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/fleetplane/fleetplane/controlplane/api"
)

func TestHealthAndReady(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var st api.Status
	e.do("GET", "/healthz", "", nil).must(t, 200, &st)
	if st.Status != api.StatusStatusOk {
		t.Fatalf("healthz: %+v", st)
	}
	e.do("GET", "/readyz", "", nil).must(t, 200, &st)

	// A database that does not answer makes the server unready, not unhealthy.
	e.pool.Close()
	p := e.do("GET", "/readyz", "", nil).problem(t, http.StatusServiceUnavailable)
	if p.Code != api.ProblemCodeUnavailable || !strings.Contains(p.Detail, "database") {
		t.Fatalf("readyz problem: %+v", p)
	}
	e.do("GET", "/healthz", "", nil).must(t, 200, nil)
}

func TestOpenAPIDocumentServed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.do("GET", "/v1/openapi.json", "", nil).must(t, 200, nil)
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	doc, err := openapi3.NewLoader().LoadFromData(r.body)
	if err != nil {
		t.Fatalf("loading served document: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("served document is not valid OpenAPI: %v", err)
	}
	if doc.OpenAPI != "3.0.3" {
		t.Errorf("openapi %q", doc.OpenAPI)
	}
	src := mustValidator(t).doc
	if got, want := doc.Paths.Len(), src.Paths.Len(); got != want {
		t.Errorf("served %d paths, openapi.yaml has %d", got, want)
	}
	for _, name := range []string{"Problem", "Fleet", "Vehicle", "APIKeyCreated"} {
		if doc.Components.Schemas[name] == nil {
			t.Errorf("served document lacks schema %s", name)
		}
	}
	// Every schema object in the document is closed, except the two that
	// are free-form by design.
	for name, s := range src.Components.Schemas {
		v := s.Value
		if v.Type.Is("object") && name != "Labels" && (v.AdditionalProperties.Has == nil || *v.AdditionalProperties.Has) {
			t.Errorf("schema %s does not set additionalProperties: false", name)
		}
	}
}

func TestSignupAndTenant(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var res api.SignupResponse
	r := e.do("POST", "/v1/signup", "", api.SignupRequest{
		Organisation: "  Acme Drones  ", Email: "Ops@Acme.example.com", Password: "correct horse battery staple",
	}).must(t, http.StatusCreated, &res)
	if res.Tenant.Name != "Acme Drones" || res.Tenant.Plan != api.PlanFree {
		t.Errorf("tenant %+v", res.Tenant)
	}
	if res.User.Email != "ops@acme.example.com" {
		t.Errorf("user email %q, want lower-cased", res.User.Email)
	}
	if res.ApiKey.Role != api.RoleAdmin || !strings.HasPrefix(res.ApiKey.Secret, "fpk_"+res.ApiKey.Id+"_") {
		t.Errorf("api key %+v", res.ApiKey)
	}
	if r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("a response with a secret must not be cached: Cache-Control %q", r.header.Get("Cache-Control"))
	}

	var ten api.Tenant
	e.do("GET", "/v1/tenant", res.ApiKey.Secret, nil).must(t, 200, &ten)
	if ten.Id != res.Tenant.Id || ten.Name != "Acme Drones" {
		t.Errorf("GET /v1/tenant = %+v", ten)
	}
	if ten.CreatedAt.Location() != time.UTC {
		t.Errorf("times must be UTC: %v", ten.CreatedAt)
	}

	// The same e-mail cannot sign up twice.
	p := e.do("POST", "/v1/signup", "", api.SignupRequest{
		Organisation: "Other", Email: "ops@acme.example.com", Password: "correct horse battery staple",
	}).problem(t, http.StatusConflict)
	if !strings.Contains(p.Detail, "e-mail") {
		t.Errorf("conflict detail %q", p.Detail)
	}
}

func TestAPIKeys(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Keys Inc")

	k := e.createKey(a.key, "ci", api.KeyRoleMember)
	if k.Role != api.RoleMember || k.Secret == "" || k.ExpiresAt != nil || k.RevokedAt != nil {
		t.Fatalf("created key %+v", k)
	}
	if !strings.HasPrefix(k.CreatedBy, "api_key:"+a.keyID) {
		t.Errorf("created_by %q", k.CreatedBy)
	}
	// The new key works.
	e.do("GET", "/v1/fleets", k.Secret, nil).must(t, 200, nil)

	// Lists never show a secret.
	var list api.APIKeyList
	r := e.do("GET", "/v1/api-keys", a.key, nil).must(t, 200, &list)
	if len(list.Items) != 2 || list.NextCursor != nil {
		t.Fatalf("list: %+v", list)
	}
	for _, secret := range []string{a.key, k.Secret} {
		_, s, _ := strings.Cut(strings.TrimPrefix(secret, "fpk_"), "_")
		if strings.Contains(string(r.body), s) {
			t.Fatalf("a key list shows a secret: %s", r.body)
		}
	}
	if strings.Contains(string(r.body), `"secret"`) {
		t.Fatalf("a key list has a secret field: %s", r.body)
	}

	// Revoke: 204, then the key answers 401 "revoked", and it is gone from
	// the default list but shown with include_revoked.
	e.do("DELETE", "/v1/api-keys/"+k.Id, a.key, nil).must(t, http.StatusNoContent, nil)
	p := e.do("GET", "/v1/fleets", k.Secret, nil).problem(t, http.StatusUnauthorized)
	if !strings.Contains(p.Detail, "revoked") || p.Code != api.ProblemCodeUnauthorized {
		t.Errorf("revoked key: %+v", p)
	}
	e.do("GET", "/v1/api-keys", a.key, nil).must(t, 200, &list)
	if len(list.Items) != 1 || list.Items[0].Id != a.keyID {
		t.Errorf("after revoke: %+v", list.Items)
	}
	e.do("GET", "/v1/api-keys?include_revoked=true", a.key, nil).must(t, 200, &list)
	if len(list.Items) != 2 {
		t.Fatalf("include_revoked: %+v", list.Items)
	}
	for _, it := range list.Items {
		if (it.Id == k.Id) != (it.RevokedAt != nil) {
			t.Errorf("revoked_at of %s: %v", it.Id, it.RevokedAt)
		}
		if it.Id == a.keyID && it.LastUsedAt == nil {
			t.Errorf("last_used_at of the key in use is not set")
		}
	}
	// Revoking twice: 404.
	e.do("DELETE", "/v1/api-keys/"+k.Id, a.key, nil).problem(t, http.StatusNotFound)

	// An expiring key works until it expires, then answers 401 "expired".
	exp := time.Now().Add(1500 * time.Millisecond).UTC()
	var ek api.APIKeyCreated
	e.do("POST", "/v1/api-keys", a.key, api.APIKeyCreate{Name: "short-lived", ExpiresAt: &exp}).must(t, http.StatusCreated, &ek)
	if ek.ExpiresAt == nil || !ek.ExpiresAt.Equal(exp.Round(time.Microsecond)) {
		t.Errorf("expires_at %v, want %v", ek.ExpiresAt, exp)
	}
	e.do("GET", "/v1/tenant", ek.Secret, nil).must(t, 200, nil)
	time.Sleep(time.Until(exp) + 50*time.Millisecond)
	p = e.do("GET", "/v1/tenant", ek.Secret, nil).problem(t, http.StatusUnauthorized)
	if !strings.Contains(p.Detail, "expired") {
		t.Errorf("expired key: %+v", p)
	}

	// Paging through keys, 2 per page.
	for i := range 3 {
		e.createKey(a.key, fmt.Sprintf("extra-%d", i), api.KeyRoleViewer)
	}
	ids := walkPages(t, e, "/v1/api-keys?limit=2", a.key, func(r *response) ([]string, *string) {
		var l api.APIKeyList
		r.must(t, 200, &l)
		var out []string
		for _, it := range l.Items {
			out = append(out, it.Id)
		}
		return out, l.NextCursor
	})
	if len(ids) != 5 { // admin, short-lived, 3 extra
		t.Errorf("paged keys: %v", ids)
	}
}

func TestRoles(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Roles Ltd")
	viewer := e.createKey(a.key, "viewer", api.KeyRoleViewer).Secret
	member := e.createKey(a.key, "member", api.KeyRoleMember).Secret
	e.createFleet(a.key, "alpha")
	e.createVehicle(a.key, "alpha", "v1", nil)

	forbidden := func(method, path, key string, body any) {
		t.Helper()
		p := e.do(method, path, key, body).problem(t, http.StatusForbidden)
		if p.Code != api.ProblemCodeForbidden || !strings.Contains(p.Detail, "role") {
			t.Errorf("%s %s: %+v", method, path, p)
		}
	}
	// A viewer reads but cannot write.
	e.do("GET", "/v1/fleets", viewer, nil).must(t, 200, nil)
	e.do("GET", "/v1/fleets/alpha/vehicles/v1", viewer, nil).must(t, 200, nil)
	e.do("GET", "/v1/regions", viewer, nil).must(t, 200, nil)
	forbidden("POST", "/v1/fleets", viewer, api.FleetCreate{Slug: "beta"})
	forbidden("PATCH", "/v1/fleets/alpha", viewer, api.FleetUpdate{Name: ptr("x")})
	forbidden("POST", "/v1/fleets/alpha/vehicles", viewer, api.VehicleCreate{VehicleId: "v2"})
	forbidden("PATCH", "/v1/fleets/alpha/vehicles/v1", viewer, api.VehicleUpdate{Disabled: ptr(true)})
	forbidden("DELETE", "/v1/fleets/alpha/vehicles/v1", viewer, nil)
	forbidden("GET", "/v1/api-keys", viewer, nil)

	// A member manages fleets and vehicles but not API keys, the audit log
	// or fleet deletion.
	e.createFleet(member, "beta")
	e.createVehicle(member, "beta", "v2", nil)
	forbidden("GET", "/v1/api-keys", member, nil)
	forbidden("POST", "/v1/api-keys", member, api.APIKeyCreate{Name: "x"})
	forbidden("DELETE", "/v1/api-keys/"+a.keyID, member, nil)
	forbidden("GET", "/v1/audit-events", member, nil)
	forbidden("DELETE", "/v1/fleets/beta", member, nil)

	// An admin cannot mint an owner key.
	p := e.do("POST", "/v1/api-keys", a.key, map[string]string{"name": "x", "role": "owner"}, malformed()).problem(t, 400)
	if p.Errors == nil || (*p.Errors)[0].Field != "role" {
		t.Errorf("owner key: %+v", p)
	}
}

func TestFleets(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Fleet Co")

	var f api.Fleet
	r := e.do("POST", "/v1/fleets", a.key, api.FleetCreate{
		Slug: "survey-north", Name: ptr("Survey North"), Description: ptr("Line\ninspection"),
		Environment: ptr("staging"), Region: ptr("americas"),
	}).must(t, http.StatusCreated, &f)
	if loc := r.header.Get("Location"); loc != "/v1/fleets/survey-north" {
		t.Errorf("Location %q", loc)
	}
	if f.Name != "Survey North" || f.Environment != "staging" || f.Region != "americas" || f.VehicleCount != 0 {
		t.Errorf("created %+v", f)
	}
	// Defaults: name = slug, environment prod, the first region.
	d := e.createFleet(a.key, "defaults")
	if d.Name != "defaults" || d.Environment != "prod" || d.Region != "europe" || d.Description != "" {
		t.Errorf("defaults: %+v", d)
	}

	var got api.Fleet
	e.do("GET", "/v1/fleets/survey-north", a.key, nil).must(t, 200, &got)
	if got.Slug != f.Slug || !got.CreatedAt.Equal(f.CreatedAt) {
		t.Errorf("GET: %+v", got)
	}

	e.do("PATCH", "/v1/fleets/survey-north", a.key, api.FleetUpdate{Name: ptr("  Renamed  ")}).must(t, 200, &got)
	if got.Name != "Renamed" || got.Description != "Line\ninspection" {
		t.Errorf("PATCH name: %+v", got)
	}
	e.do("PATCH", "/v1/fleets/survey-north", a.key, api.FleetUpdate{Description: ptr("")}).must(t, 200, &got)
	if got.Name != "Renamed" || got.Description != "" {
		t.Errorf("PATCH description: %+v", got)
	}
	e.do("PATCH", "/v1/fleets/survey-north", a.key, map[string]any{}).must(t, 200, &got)

	// A fleet with vehicles cannot be deleted.
	e.createVehicle(a.key, "survey-north", "drone-1", nil)
	e.do("GET", "/v1/fleets/survey-north", a.key, nil).must(t, 200, &got)
	if got.VehicleCount != 1 {
		t.Errorf("vehicle_count %d", got.VehicleCount)
	}
	p := e.do("DELETE", "/v1/fleets/survey-north", a.key, nil).problem(t, http.StatusConflict)
	if !strings.Contains(p.Detail, "vehicles") {
		t.Errorf("delete non-empty: %+v", p)
	}
	e.do("DELETE", "/v1/fleets/survey-north/vehicles/drone-1", a.key, nil).must(t, http.StatusNoContent, nil)
	e.do("DELETE", "/v1/fleets/survey-north", a.key, nil).must(t, http.StatusNoContent, nil)
	e.do("GET", "/v1/fleets/survey-north", a.key, nil).problem(t, http.StatusNotFound)

	// Three pages of two.
	for _, s := range []string{"f-1", "f-2", "f-3", "f-4"} {
		e.createFleet(a.key, s)
	}
	slugs := walkPages(t, e, "/v1/fleets?limit=2", a.key, func(r *response) ([]string, *string) {
		var l api.FleetList
		r.must(t, 200, &l)
		var out []string
		for _, it := range l.Items {
			out = append(out, it.Slug)
		}
		return out, l.NextCursor
	})
	if want := "defaults f-1 f-2 f-3 f-4"; strings.Join(slugs, " ") != want {
		t.Errorf("pages: %v, want %s", slugs, want)
	}
}

// walkPages follows next_cursor from path and returns all items; it fails
// unless there are exactly 3 pages.
func walkPages(t *testing.T, e *env, path, key string, page func(*response) ([]string, *string)) []string {
	t.Helper()
	var all []string
	pages := 0
	next := path
	for {
		items, cursor := page(e.do("GET", next, key, nil))
		pages++
		all = append(all, items...)
		if cursor == nil {
			break
		}
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
		next = path + "&cursor=" + url.QueryEscape(*cursor)
	}
	if pages != 3 {
		t.Errorf("%s: %d pages, want 3", path, pages)
	}
	return all
}

func TestVehicles(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Vehicle Co")
	e.createFleet(a.key, "alpha")

	var v api.Vehicle
	r := e.do("POST", "/v1/fleets/alpha/vehicles", a.key, api.VehicleCreate{
		VehicleId: "Drone_01", Name: ptr("Drone one"), Labels: &api.Labels{"zone": "north", "model": "x500"},
	}).must(t, http.StatusCreated, &v)
	if loc := r.header.Get("Location"); loc != "/v1/fleets/alpha/vehicles/Drone_01" {
		t.Errorf("Location %q", loc)
	}
	if v.Fleet != "alpha" || v.Status != api.VehicleStatusPending || v.Labels["zone"] != "north" || v.EnrolledAt != nil {
		t.Errorf("created %+v", v)
	}
	// Vehicle IDs are unique per tenant, across fleets.
	e.createFleet(a.key, "beta")
	e.do("POST", "/v1/fleets/beta/vehicles", a.key, api.VehicleCreate{VehicleId: "Drone_01"}).problem(t, http.StatusConflict)

	var got api.Vehicle
	e.do("GET", "/v1/fleets/alpha/vehicles/Drone_01", a.key, nil).must(t, 200, &got)
	if got.Name != "Drone one" || len(got.Labels) != 2 {
		t.Errorf("GET %+v", got)
	}
	// It is not in the other fleet.
	e.do("GET", "/v1/fleets/beta/vehicles/Drone_01", a.key, nil).problem(t, http.StatusNotFound)

	got = api.Vehicle{} // json.Unmarshal merges into a non-nil map
	e.do("PATCH", "/v1/fleets/alpha/vehicles/Drone_01", a.key, api.VehicleUpdate{
		Labels: &api.Labels{"zone": "south"}, Disabled: ptr(true),
	}).must(t, 200, &got)
	if got.Status != api.VehicleStatusDisabled || len(got.Labels) != 1 || got.Labels["zone"] != "south" || got.Name != "Drone one" {
		t.Errorf("PATCH %+v", got)
	}
	got = api.Vehicle{}
	e.do("PATCH", "/v1/fleets/alpha/vehicles/Drone_01", a.key, api.VehicleUpdate{Disabled: ptr(false), Labels: &api.Labels{}}).must(t, 200, &got)
	if got.Status != api.VehicleStatusPending || len(got.Labels) != 0 {
		t.Errorf("re-enable %+v", got)
	}

	// 7 more, then filters and three pages.
	for i := range 7 {
		zone := "north"
		if i%2 == 1 {
			zone = "south"
		}
		e.createVehicle(a.key, "alpha", fmt.Sprintf("uav-%02d", i), map[string]string{"zone": zone})
	}
	e.do("PATCH", "/v1/fleets/alpha/vehicles/uav-03", a.key, api.VehicleUpdate{Disabled: ptr(true)}).must(t, 200, nil)

	ids := walkPages(t, e, "/v1/fleets/alpha/vehicles?limit=3", a.key, vehicleIDs(t))
	if len(ids) != 8 || ids[0] != "Drone_01" || ids[1] != "uav-00" || ids[7] != "uav-06" {
		t.Errorf("all pages: %v", ids)
	}
	for _, c := range []struct {
		query string
		want  string
	}{
		{"status=disabled", "uav-03"},
		{"status=pending&vehicle_id_prefix=uav-0", "uav-00 uav-01 uav-02 uav-04 uav-05 uav-06"},
		{"label=zone%3Dsouth", "uav-01 uav-03 uav-05"},
		{"label=zone%3Dsouth&status=pending", "uav-01 uav-05"},
		{"vehicle_id_prefix=Drone", "Drone_01"},
		{"vehicle_id_prefix=nope", ""},
		{"label=missing%3Dx", ""},
		{"online=true", ""},
		{"online=false&vehicle_id_prefix=Drone", "Drone_01"},
	} {
		items, _ := vehicleIDs(t)(e.do("GET", "/v1/fleets/alpha/vehicles?"+c.query, a.key, nil))
		if got := strings.Join(items, " "); got != c.want {
			t.Errorf("?%s = %q, want %q", c.query, got, c.want)
		}
	}

	e.do("DELETE", "/v1/fleets/alpha/vehicles/uav-00", a.key, nil).must(t, http.StatusNoContent, nil)
	e.do("GET", "/v1/fleets/alpha/vehicles/uav-00", a.key, nil).problem(t, http.StatusNotFound)
	e.do("DELETE", "/v1/fleets/alpha/vehicles/uav-00", a.key, nil).problem(t, http.StatusNotFound)
}

func vehicleIDs(t *testing.T) func(*response) ([]string, *string) {
	return func(r *response) ([]string, *string) {
		t.Helper()
		var l api.VehicleList
		r.must(t, 200, &l)
		var out []string
		for _, it := range l.Items {
			out = append(out, it.VehicleId)
		}
		return out, l.NextCursor
	}
}

func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.signup("Tenant A"), e.signup("Tenant B")
	e.createFleet(b.key, "bravo")
	e.createVehicle(b.key, "bravo", "veh-b", nil)
	e.createFleet(a.key, "alpha")
	bKey := e.createKey(b.key, "b-ci", api.KeyRoleViewer)

	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/fleets/bravo"},
		{"PATCH", "/v1/fleets/bravo"},
		{"DELETE", "/v1/fleets/bravo"},
		{"GET", "/v1/fleets/bravo/vehicles"},
		{"POST", "/v1/fleets/bravo/vehicles"},
		{"GET", "/v1/fleets/bravo/vehicles/veh-b"},
		{"PATCH", "/v1/fleets/bravo/vehicles/veh-b"},
		{"DELETE", "/v1/fleets/bravo/vehicles/veh-b"},
		{"GET", "/v1/fleets/alpha/vehicles/veh-b"},
		{"DELETE", "/v1/api-keys/" + bKey.Id},
	} {
		var body any
		switch c.method {
		case "PATCH":
			body = map[string]any{"name": "mine now"}
		case "POST":
			body = api.VehicleCreate{VehicleId: "intruder"}
		}
		p := e.do(c.method, c.path, a.key, body).problem(t, http.StatusNotFound)
		if p.Code != api.ProblemCodeNotFound {
			t.Errorf("%s %s: %+v", c.method, c.path, p)
		}
	}
	var fl api.FleetList
	e.do("GET", "/v1/fleets", a.key, nil).must(t, 200, &fl)
	if len(fl.Items) != 1 || fl.Items[0].Slug != "alpha" {
		t.Errorf("A sees %+v", fl.Items)
	}
	// B's key still works and B's data is intact.
	e.do("GET", "/v1/fleets/bravo/vehicles/veh-b", bKey.Secret, nil).must(t, 200, nil)
}

func TestRegionsAndAudit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var regions api.RegionList
	a := e.signup("Audit Co")
	e.do("GET", "/v1/regions", a.key, nil).must(t, 200, &regions)
	if len(regions.Items) != 2 || regions.Items[0].Name != "europe" || regions.NextCursor != nil {
		t.Errorf("regions %+v", regions)
	}

	start := time.Now().UTC().Add(-time.Second)
	e.createFleet(a.key, "alpha")
	e.createVehicle(a.key, "alpha", "v1", nil)
	e.createVehicle(a.key, "alpha", "v2", nil)
	e.do("DELETE", "/v1/fleets/alpha/vehicles/v2", a.key, nil,
		withHeader("X-Request-ID", "trace-42")).must(t, http.StatusNoContent, nil)

	var l api.AuditEventList
	e.do("GET", "/v1/audit-events", a.key, nil).must(t, 200, &l)
	var actions []string
	for _, ev := range l.Items {
		actions = append(actions, ev.Action)
	}
	// Newest first; signup wrote api_key.create and tenant.create.
	if got, want := strings.Join(actions, " "), "vehicle.delete vehicle.create vehicle.create fleet.create tenant.create api_key.create"; got != want {
		t.Errorf("actions %q, want %q", got, want)
	}
	del := l.Items[0]
	if del.RequestId != "trace-42" || del.ActorType != api.ActorTypeApiKey || del.ActorId != a.keyID ||
		del.TargetType != "vehicle" || del.TargetId != "v2" || del.SourceIp != "127.0.0.1" || del.Details["fleet"] != "alpha" {
		t.Errorf("vehicle.delete event %+v", del)
	}

	for _, c := range []struct {
		query string
		n     int
	}{
		{"action=vehicle.create", 2},
		{"target_type=vehicle&target_id=v2", 2},
		{"since=" + url.QueryEscape(start.Format(time.RFC3339)), 6},
		{"until=" + url.QueryEscape(start.Format(time.RFC3339)), 0},
		{"since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z", 0},
	} {
		e.do("GET", "/v1/audit-events?"+c.query, a.key, nil).must(t, 200, &l)
		if len(l.Items) != c.n {
			t.Errorf("?%s: %d events, want %d", c.query, len(l.Items), c.n)
		}
	}
	ids := walkPages(t, e, "/v1/audit-events?limit=2", a.key, func(r *response) ([]string, *string) {
		var l api.AuditEventList
		r.must(t, 200, &l)
		var out []string
		for _, it := range l.Items {
			out = append(out, it.Action)
		}
		return out, l.NextCursor
	})
	if len(ids) != 6 {
		t.Errorf("paged audit: %v", ids)
	}
}

func TestSignupRateLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *api.Options) { o.SignupRatePerMinute = 2 })
	body := func(i int) api.SignupRequest {
		return api.SignupRequest{Organisation: "Spam", Email: fmt.Sprintf("spam%d@example.com", i), Password: "correct horse battery staple"}
	}
	e.do("POST", "/v1/signup", "", body(1)).must(t, http.StatusCreated, nil)
	e.do("POST", "/v1/signup", "", body(2)).must(t, http.StatusCreated, nil)
	r := e.do("POST", "/v1/signup", "", body(3))
	p := r.problem(t, http.StatusTooManyRequests)
	if p.Code != api.ProblemCodeRateLimited || r.header.Get("Retry-After") == "" {
		t.Errorf("rate limited: %+v, Retry-After %q", p, r.header.Get("Retry-After"))
	}
	// Untrusted proxy headers do not buy a fresh bucket.
	e.do("POST", "/v1/signup", "", body(4), withHeader("X-Forwarded-For", "203.0.113.9"),
		withHeader("X-Real-IP", "203.0.113.9")).problem(t, http.StatusTooManyRequests)
	// Other endpoints are not limited.
	e.do("GET", "/healthz", "", nil).must(t, 200, nil)
}

func TestTrustedProxyHeaders(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *api.Options) { o.SignupRatePerMinute = 1; o.TrustProxyHeaders = true })
	body := func(i int) api.SignupRequest {
		return api.SignupRequest{Organisation: "Proxied", Email: fmt.Sprintf("p%d@example.com", i), Password: "correct horse battery staple"}
	}
	var res api.SignupResponse
	e.do("POST", "/v1/signup", "", body(1), withHeader("X-Real-IP", "198.51.100.1")).must(t, http.StatusCreated, &res)
	// The rightmost X-Forwarded-For entry is the one the proxy added.
	e.do("POST", "/v1/signup", "", body(2), withHeader("X-Forwarded-For", "198.51.100.1, 198.51.100.2")).must(t, http.StatusCreated, nil)
	e.do("POST", "/v1/signup", "", body(3), withHeader("X-Real-IP", "198.51.100.1")).problem(t, http.StatusTooManyRequests)

	var l api.AuditEventList
	e.do("GET", "/v1/audit-events?action=tenant.create", res.ApiKey.Secret, nil,
		withHeader("X-Real-IP", "198.51.100.7")).must(t, 200, &l)
	if len(l.Items) != 1 || l.Items[0].SourceIp != "198.51.100.1" {
		t.Errorf("source_ip: %+v", l.Items)
	}
}

func TestMetricsAndAccessLog(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Observed")
	e.createFleet(a.key, "alpha")
	e.do("GET", "/v1/fleets/alpha", a.key, nil, withHeader("X-Request-ID", "req-abc.123")).must(t, 200, nil)
	e.do("GET", "/v1/fleets/nope", a.key, nil).problem(t, 404)
	e.do("GET", "/no/such/route", "", nil).problem(t, 404)

	m := e.do("GET", "/metrics", "", nil).must(t, 200, nil)
	text := string(m.body)
	for _, want := range []string{
		`fleetplane_http_request_duration_seconds_count{code="200",method="GET",route="/v1/fleets/{fleet}"} 1`,
		`fleetplane_http_request_duration_seconds_count{code="404",method="GET",route="/v1/fleets/{fleet}"} 1`,
		`fleetplane_http_request_duration_seconds_count{code="201",method="POST",route="/v1/signup"} 1`,
		`fleetplane_http_request_duration_seconds_count{code="404",method="GET",route="unmatched"} 1`,
		`fleetplane_http_requests_in_flight 1`, // the /metrics request itself
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(text, `route="/v1/fleets/alpha"`) || strings.Contains(text, "/no/such/route") {
		t.Error("metrics use raw paths as labels")
	}

	logs := e.logs.String()
	for _, want := range []string{`"request_id":"req-abc.123"`, `"route":"/v1/fleets/{fleet}"`, `"tenant":"` + a.id + `"`, `"status":404`} {
		if !strings.Contains(logs, want) {
			t.Errorf("access log lacks %s", want)
		}
	}
	_, secret, _ := strings.Cut(strings.TrimPrefix(a.key, "fpk_"), "_")
	for _, leak := range []string{secret, "Bearer", "correct horse"} {
		if strings.Contains(logs, leak) {
			t.Errorf("logs contain %q", leak)
		}
	}
}

func TestRequestIDs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.do("GET", "/healthz", "", nil, withHeader("X-Request-ID", "abc-123"))
	if r.header.Get("X-Request-ID") != "abc-123" {
		t.Errorf("sane incoming ID not honoured: %q", r.header.Get("X-Request-ID"))
	}
	for _, bad := range []string{"has space", strings.Repeat("a", 129), "quote\"", "é"} {
		r := e.do("GET", "/healthz", "", nil, withHeader("X-Request-ID", bad))
		if got := r.header.Get("X-Request-ID"); got == bad || len(got) != 32 {
			t.Errorf("incoming ID %q: got %q, want a fresh one", bad, got)
		}
	}
	p := e.do("GET", "/v1/tenant", "", nil, withHeader("X-Request-ID", "trace-1")).problem(t, 401)
	if p.RequestId != "trace-1" {
		t.Errorf("problem request_id %q", p.RequestId)
	}
}

func TestUnknownRoutesAndMethods(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.do("GET", "/v2/fleets", "", nil).problem(t, http.StatusNotFound)
	if !strings.Contains(p.Detail, "/v2/fleets") {
		t.Errorf("404: %+v", p)
	}
	r := e.do("PUT", "/v1/fleets", "", nil)
	p = r.problem(t, http.StatusMethodNotAllowed)
	if r.header.Get("Allow") != "GET, POST" || p.Code != api.ProblemCodeMethodNotAllowed {
		t.Errorf("405: %+v Allow %q", p, r.header.Get("Allow"))
	}
}

// TestConcurrentTenants exercises the stack from several goroutines at once
// (run with -race).
func TestConcurrentTenants(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			tn := e.signup(fmt.Sprintf("Parallel %d", i))
			e.createFleet(tn.key, "fleet")
			for j := range 5 {
				e.createVehicle(tn.key, "fleet", fmt.Sprintf("v%d", j), nil)
			}
			var l api.VehicleList
			e.do("GET", "/v1/fleets/fleet/vehicles", tn.key, nil).must(t, 200, &l)
			if len(l.Items) != 5 {
				t.Errorf("tenant %d sees %d vehicles", i, len(l.Items))
			}
		})
	}
	wg.Wait()
}
