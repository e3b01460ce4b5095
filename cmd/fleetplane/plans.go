package main

import (
	"fmt"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/natsauth"
)

// PlanConf overrides one plan's values (YAML `plans: {free: {...}, scale:
// {...}}`); what is unset keeps the built-in value (controlplane.DefaultPlans).
// Limits of 0 or -1 mean unlimited where noted.
type PlanConf struct {
	// MaxVehicles caps registered vehicles and, in the account JWT, leaf
	// connections (0 or -1 = unlimited; built-in: free 10, scale unlimited).
	MaxVehicles *int `yaml:"max_vehicles"`
	// MaxGrants caps active grants (0 or -1 = unlimited; free 5).
	MaxGrants *int `yaml:"max_grants"`
	// HistoryRetention is how long telemetry history is kept (free 168h,
	// scale 2160h).
	HistoryRetention *time.Duration `yaml:"history_retention"`
	// JetStreamDisk and JetStreamMem are the account's JetStream storage in
	// bytes (-1 = unlimited).
	JetStreamDisk *int64 `yaml:"jetstream_disk"`
	JetStreamMem  *int64 `yaml:"jetstream_mem"`
	// Connections caps client connections (services, grants; -1 = unlimited).
	Connections *int64 `yaml:"connections"`
}

func (c *Config) validatePlans() []error {
	var errs []error
	if c.PlanGrace < 0 {
		errs = append(errs, fmt.Errorf("plan_grace must not be negative, got %s", c.PlanGrace))
	}
	for name, p := range c.Plans {
		if !controlplane.ValidPlan(name) {
			errs = append(errs, fmt.Errorf("plans: unknown plan %q (free or scale)", name))
		}
		for field, v := range map[string]*int64{"jetstream_disk": p.JetStreamDisk, "jetstream_mem": p.JetStreamMem, "connections": p.Connections} {
			if v != nil && *v < natsauth.NoLimit {
				errs = append(errs, fmt.Errorf("plans.%s.%s must be -1 (unlimited) or ≥ 0, got %d", name, field, *v))
			}
		}
		for field, v := range map[string]*int{"max_vehicles": p.MaxVehicles, "max_grants": p.MaxGrants} {
			if v != nil && *v < -1 {
				errs = append(errs, fmt.Errorf("plans.%s.%s must be -1 or 0 (unlimited) or a count, got %d", name, field, *v))
			}
		}
		if p.HistoryRetention != nil && *p.HistoryRetention <= 0 {
			errs = append(errs, fmt.Errorf("plans.%s.history_retention must be positive", name))
		}
	}
	return errs
}

// domainPlans are the plans for controlplane.Config.Plans: the built-in
// ones with the configured overrides.
func (c *Config) domainPlans() map[string]controlplane.Plan {
	out := controlplane.DefaultPlans()
	for name, pc := range c.Plans {
		p, ok := out[name]
		if !ok {
			continue
		}
		if pc.MaxVehicles != nil {
			p.MaxVehicles = max(*pc.MaxVehicles, 0)
			p.Limits.LeafNodeConn = natsauth.NoLimit
			if p.MaxVehicles > 0 {
				p.Limits.LeafNodeConn = int64(p.MaxVehicles)
			}
		}
		if pc.MaxGrants != nil {
			p.MaxGrants = max(*pc.MaxGrants, 0)
		}
		if pc.HistoryRetention != nil {
			p.History.Retention = *pc.HistoryRetention
		}
		if pc.JetStreamDisk != nil {
			p.Limits.JetStreamDisk = *pc.JetStreamDisk
		}
		if pc.JetStreamMem != nil {
			p.Limits.JetStreamMem = *pc.JetStreamMem
		}
		if pc.Connections != nil {
			p.Limits.Conn = *pc.Connections
		}
		out[name] = p
	}
	return out
}
