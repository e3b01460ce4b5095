package api_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/api"
)

// TestFreePlanLimits402: the 11th vehicle (created or newly enrolled) and
// the grant beyond the free plan's are 402 problem+json naming the limit,
// and change nothing.
func TestFreePlanLimits402(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Small Co")
	e.createFleet(a.key, "alpha")
	for i := range controlplane.FreeVehicleLimit {
		e.createVehicle(a.key, "alpha", fmt.Sprintf("V%02d", i), nil)
	}
	tok := e.createToken(a.key, "alpha", tokenIn(5))
	exp := time.Now().Add(time.Hour)
	for range controlplane.FreeGrantLimit {
		e.do("POST", "/v1/grants", a.key, api.GrantCreate{Subscribe: &[]string{"fleet.prod.>"}, ExpiresAt: exp}).must(t, http.StatusCreated, nil)
	}

	before := snapshot(t, e.pool)
	checks := []struct {
		name  string
		do    func() *response
		limit string
	}{
		{"create vehicle", func() *response {
			return e.do("POST", "/v1/fleets/alpha/vehicles", a.key, api.VehicleCreate{VehicleId: "V10"})
		}, "at most 10 vehicles"},
		{"enroll new vehicle", func() *response { return e.enroll(tok.Token, newUserKey(t), "V10") }, "at most 10 vehicles"},
		{"grant", func() *response {
			return e.do("POST", "/v1/grants", a.key, api.GrantCreate{Subscribe: &[]string{"fleet.prod.>"}, ExpiresAt: exp})
		}, "at most 5 active grants"},
	}
	for _, c := range checks {
		p := c.do().problem(t, http.StatusPaymentRequired)
		if p.Code != api.ProblemCodePaymentRequired || !strings.Contains(p.Detail, c.limit) || !strings.Contains(p.Detail, "/billing") {
			t.Errorf("%s: problem %+v", c.name, p)
		}
	}
	if d := diffSnapshots(before, snapshot(t, e.pool)); d != "" {
		t.Fatalf("a refused request changed the database:\n%s", d)
	}
}
