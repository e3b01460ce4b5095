package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// TestAdminTenantPlan: `admin tenant plan` changes the plan, re-signs the
// account (version + 1, pushed: no hub nodes here), reports a downgrade
// grace, and refuses bad input clearly.
func TestAdminTenantPlan(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := operatorEnv(t, "DATABASE_URL", pgtest.NewURL(t))
	admin := func(args ...string) (string, string, error) {
		var out, errb bytes.Buffer
		err := run(ctx, append([]string{"admin", "tenant"}, args...), mapEnv(env), &out, &errb)
		return out.String(), errb.String(), err
	}
	out, errs, err := admin("create", "--name", "Plan Co", "--email", "ops@plan.example", "--json")
	if err != nil {
		t.Fatalf("tenant create: %v\n%s", err, errs)
	}
	var created tenantCreated
	if err := json.Unmarshal([]byte(out), &created); err != nil {
		t.Fatal(err)
	}
	id := created.Tenant.ID
	plan := func(args ...string) tenantPlanChanged {
		t.Helper()
		out, errs, err := admin(append([]string{"plan", "--tenant", id, "--json"}, args...)...)
		if err != nil {
			t.Fatalf("tenant plan %v: %v\n%s", args, err, errs)
		}
		var res tenantPlanChanged
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("tenant plan --json: %v\n%s", err, out)
		}
		return res
	}

	up := plan("--plan", "scale")
	if !up.Changed || up.Plan != "scale" || up.PreviousPlan != "free" || up.Name != "Plan Co" || up.GraceUntil != nil ||
		!up.Pushed || up.PushedVersion != up.AccountVersion || up.AccountVersion < 2 {
		t.Fatalf("free -> scale: %+v", up)
	}
	if same := plan("--plan", "scale"); same.Changed || same.AccountVersion != up.AccountVersion {
		t.Fatalf("scale -> scale: %+v", same)
	}

	// Eleven vehicles on scale, then free: the grace keeps them working.
	cfg := defaultConfig()
	cfg.DatabaseURL, cfg.MasterKey = env["DATABASE_URL"], env["FLEETPLANE_MASTER_KEY"]
	a, err := newApp(ctx, cfg, newLogger(&cfg, io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	pctx := controlplane.NewContextWithPrincipal(ctx, &controlplane.Principal{TenantID: id, Role: controlplane.RoleAdmin, ActorType: "system", ActorID: "test"})
	if _, err := a.svc.CreateFleet(pctx, controlplane.FleetCreate{Slug: "alpha"}); err != nil {
		t.Fatal(err)
	}
	for i := range controlplane.FreeVehicleLimit + 1 {
		if _, err := a.svc.CreateVehicle(pctx, "alpha", controlplane.VehicleCreate{VehicleID: fmt.Sprintf("V%02d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()
	out, errs, err = admin("plan", "--tenant", id, "--plan", "free")
	if err != nil {
		t.Fatalf("scale -> free: %v\n%s", err, errs)
	}
	for _, want := range []string{"plan scale -> free", "downgrade grace until", "scale plan's leaf-connection limit",
		fmt.Sprintf("account JWT version %d", up.AccountVersion+1), "no hub nodes configured"} {
		if !strings.Contains(out, want) {
			t.Errorf("scale -> free printed %q, want %q", out, want)
		}
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"plan", "--tenant", id}, "--tenant and --plan are required"},
		{[]string{"plan", "--plan", "scale"}, "--tenant and --plan are required"},
		{[]string{"plan", "--tenant", id, "--plan", "gold"}, `--plan must be free or scale, got "gold"`},
		{[]string{"plan", "--tenant", "00000000-0000-4000-8000-000000000000", "--plan", "scale"}, "no tenant"},
		{[]string{"plan", "--tenant", "acme", "--plan", "scale"}, `no tenant "acme"`},
	} {
		if _, _, err := admin(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want %q", c.args, err, c.want)
		}
	}
}
