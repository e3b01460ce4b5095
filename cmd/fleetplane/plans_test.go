package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/natsauth"
)

func TestPlansFromConfig(t *testing.T) {
	file := filepath.Join(t.TempDir(), "fp.yaml")
	os.WriteFile(file, []byte("plan_grace: 48h\nplans:\n  free:\n    max_vehicles: 3\n    max_grants: 2\n    history_retention: 24h\n    jetstream_disk: 1000\n  scale:\n    max_vehicles: -1\n    connections: 50\n"), 0o600)
	cfg := defaultConfig()
	if err := loadConfigFile(file, &cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	plans := cfg.domainPlans()
	free, scale := plans[controlplane.PlanFree], plans[controlplane.PlanScale]
	if free.MaxVehicles != 3 || free.Limits.LeafNodeConn != 3 || free.MaxGrants != 2 || free.History.Retention != 24*time.Hour ||
		free.Limits.JetStreamDisk != 1000 || free.Limits.Conn != controlplane.DefaultPlanLimits(controlplane.PlanFree).Conn {
		t.Errorf("free = %+v", free)
	}
	if scale.MaxVehicles != 0 || scale.Limits.LeafNodeConn != natsauth.NoLimit || scale.Limits.Conn != 50 || scale.MaxGrants != 0 {
		t.Errorf("scale = %+v", scale)
	}
	if cfg.PlanGrace != 48*time.Hour {
		t.Errorf("PlanGrace = %s", cfg.PlanGrace)
	}
	// Unset: the built-in plans.
	def := defaultConfig()
	if got := def.domainPlans()[controlplane.PlanFree]; got.MaxVehicles != 10 || got.MaxGrants != 5 || got.Limits != controlplane.DefaultPlanLimits(controlplane.PlanFree) {
		t.Errorf("default free = %+v", got)
	}

	cfg.Plans["gold"] = PlanConf{}
	bad := -5
	cfg.Plans["free"] = PlanConf{MaxVehicles: &bad}
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), `unknown plan "gold"`) || !strings.Contains(err.Error(), "plans.free.max_vehicles") {
		t.Errorf("Validate = %v", err)
	}
}
