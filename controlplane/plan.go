package controlplane

import (
	"context"
	"fmt"
	"time"
)

// Plans and their enforcement (docs/plans.md). A tenant's plan sets both
// the API's checks (vehicles, grants) and the limits inside its account JWT
// (the hub refuses leaf connections beyond LeafNodeConn on its own).

// DefaultPlanGrace is how long a downgraded tenant's surplus vehicles keep
// connecting before the account JWT gets the new plan's leaf limit.
const DefaultPlanGrace = 7 * 24 * time.Hour

// Plan is what a plan gives a tenant.
type Plan struct {
	Name string
	// MaxVehicles caps registered vehicles (API: create, enroll); ≤ 0 =
	// unlimited. The account's LeafNodeConn should match it.
	MaxVehicles int
	// MaxGrants caps active (unrevoked, unexpired) grants; ≤ 0 = unlimited.
	MaxGrants int
	// Limits go into the tenant's account JWT.
	Limits AccountLimits
	// History is the tenant's telemetry history policy.
	History HistoryPolicy
	// Price is what a vehicle-day costs on the plan (zero on free). The
	// provider's price (Stripe) is authoritative; this one projects the
	// period's charge in GET /v1/usage and must match it.
	Price Price
}

// Price is a per-vehicle-day price.
type Price struct {
	Currency        string // ISO 4217, lower case (usd)
	VehicleDayCents int64  // smallest currency unit per vehicle-day
}

// DefaultPlans returns the built-in plans (DefaultPlanLimits,
// DefaultHistoryPolicy): free = 10 vehicles, 5 grants; scale = unlimited.
func DefaultPlans() map[string]Plan {
	return map[string]Plan{
		PlanFree: {Name: PlanFree, MaxVehicles: FreeVehicleLimit, MaxGrants: FreeGrantLimit,
			Limits: DefaultPlanLimits(PlanFree), History: DefaultHistoryPolicy(PlanFree)},
		PlanScale: {Name: PlanScale, Limits: DefaultPlanLimits(PlanScale), History: DefaultHistoryPolicy(PlanScale),
			Price: DefaultScalePrice},
	}
}

// DefaultScalePrice is the scale plan's default price: 50 cents per
// vehicle-day (about 15 USD per vehicle and month).
var DefaultScalePrice = Price{Currency: "usd", VehicleDayCents: 50}

// FreeGrantLimit is the free plan's number of active grants.
const FreeGrantLimit = 5

// plan returns the configured plan name (Config.Plans), else its default.
func (s *Service) plan(name string) Plan {
	if p, ok := s.cfg.Plans[name]; ok {
		p.Name = name
		return p
	}
	p, ok := DefaultPlans()[name]
	if !ok {
		p = DefaultPlans()[PlanFree]
	}
	p.Name = name
	return p
}

func (s *Service) planGrace() time.Duration {
	if s.cfg.PlanGrace > 0 {
		return s.cfg.PlanGrace
	}
	return DefaultPlanGrace
}

// upgradeURL is where a 402 sends the caller.
func (s *Service) upgradeURL() string {
	return s.cfg.PublicURL + "/billing"
}

// accountLimits are the account JWT limits of tenant t at now: its plan's,
// with the leaf limit of t.GracePlan while a downgrade grace runs.
func (s *Service) accountLimits(t *Tenant, now time.Time) AccountLimits {
	l := s.plan(t.Plan).Limits
	if t.GraceUntil != nil && now.Before(*t.GraceUntil) {
		l.LeafNodeConn = s.plan(t.GracePlan).Limits.LeafNodeConn
	}
	return l
}

// checkVehicleQuota answers EPAYMENTREQUIRED when the tenant cannot have
// one more vehicle. It locks the tenant row, so call it inside tx before
// inserting: concurrent creates of one tenant are serialized.
func (s *Service) checkVehicleQuota(ctx context.Context, tx Store, tenantID string) error {
	t, err := tx.LockTenant(ctx, tenantID)
	if err != nil {
		return err
	}
	pl := s.plan(t.Plan)
	if pl.MaxVehicles <= 0 {
		return nil
	}
	n, err := tx.CountVehicles(ctx, tenantID)
	if err != nil {
		return err
	}
	if n >= pl.MaxVehicles {
		return Errorf(EPAYMENTREQUIRED, "the %s plan allows at most %d vehicles and this tenant has %d; upgrade at %s",
			pl.Name, pl.MaxVehicles, n, s.upgradeURL())
	}
	return nil
}

// checkGrantQuota is checkVehicleQuota for active grants.
func (s *Service) checkGrantQuota(ctx context.Context, tx Store, tenantID string) error {
	t, err := tx.LockTenant(ctx, tenantID)
	if err != nil {
		return err
	}
	pl := s.plan(t.Plan)
	if pl.MaxGrants <= 0 {
		return nil
	}
	n, err := tx.CountActiveGrants(ctx, tenantID, s.now())
	if err != nil {
		return err
	}
	if n >= pl.MaxGrants {
		return Errorf(EPAYMENTREQUIRED, "the %s plan allows at most %d active grants and this tenant has %d; revoke one or upgrade at %s",
			pl.Name, pl.MaxGrants, n, s.upgradeURL())
	}
	return nil
}

// ChangePlan moves a tenant to plan (operators and billing; no caller
// role is checked). It re-signs the account JWT with the plan's limits in
// the same transaction and pushes it. A downgrade that leaves the tenant
// with more vehicles than the plan allows starts a grace period: the
// account keeps the old plan's leaf limit until GraceUntil (Config.PlanGrace,
// default 7 days), then ApplyPlanGraceExpiry applies the new one. New
// vehicles are refused at once (402).
func (s *Service) ChangePlan(ctx context.Context, tenantID, plan string) (*Tenant, error) {
	if !ValidPlan(plan) {
		return nil, fieldError("plan", "must be %s or %s", PlanFree, PlanScale)
	}
	iss, err := s.issuer()
	if err != nil {
		return nil, err
	}
	var out *Tenant
	changed := false
	err = s.store.Tx(ctx, func(tx Store) error {
		t, err := tx.LockTenant(ctx, tenantID)
		if err != nil {
			return err
		}
		out = t
		changed, err = s.changePlanTx(ctx, tx, iss, t, plan, "plan")
		return err
	})
	if err != nil {
		return nil, err
	}
	if changed {
		s.logger.InfoContext(ctx, "plan changed", "tenant", tenantID, "plan", plan, "grace_until", out.GraceUntil)
		s.pushAfterCommit(ctx, tenantID)
	}
	return out, nil
}

// changePlanTx moves t (locked in tx) to plan: grace, re-signed account
// JWT, push job and audit (actor is the system actor's ID, e.g. "plan" or
// "billing"). It reports whether anything changed; the caller pushes after
// commit.
func (s *Service) changePlanTx(ctx context.Context, tx Store, iss Issuer, t *Tenant, plan, actor string) (bool, error) {
	now := s.now()
	old := t.Plan
	if old == plan {
		return false, nil
	}
	newPl := s.plan(plan)
	n, err := tx.CountVehicles(ctx, t.ID)
	if err != nil {
		return false, err
	}
	oldLeaf := s.accountLimits(t, now).LeafNodeConn
	switch {
	case newPl.MaxVehicles > 0 && n > newPl.MaxVehicles && leafAbove(oldLeaf, newPl.Limits.LeafNodeConn):
		if t.GraceUntil == nil || !now.Before(*t.GraceUntil) {
			// A grace already running is not extended.
			until := now.Add(s.planGrace()).UTC()
			t.GracePlan, t.GraceUntil = old, &until
		}
	default:
		t.GracePlan, t.GraceUntil = "", nil
	}
	t.Plan = plan
	if err := tx.UpdateTenantPlan(ctx, t); err != nil {
		return false, err
	}
	if err := s.resignLimits(ctx, tx, iss, t, now); err != nil {
		return false, err
	}
	details := map[string]any{"from": old, "to": plan, "vehicles": n}
	if t.GraceUntil != nil {
		details["grace_until"] = t.GraceUntil.Format(time.RFC3339)
	}
	p := &Principal{TenantID: t.ID, ActorType: "system", ActorID: actor}
	return true, s.audit(ctx, tx, p, "tenant.plan_change", "tenant", t.ID, details)
}

// leafAbove reports whether leaf limit a allows more than b (-1 = none).
func leafAbove(a, b int64) bool {
	if b < 0 {
		return false
	}
	return a < 0 || a > b
}

// resignLimits gives t's account the limits of accountLimits inside tx
// (version++, re-signed, push job enqueued).
func (s *Service) resignLimits(ctx context.Context, tx Store, iss Issuer, t *Tenant, now time.Time) error {
	a, err := tx.FindAccount(ctx, t.ID, true)
	if err != nil {
		return err
	}
	a.Limits = s.accountLimits(t, now)
	a.Version++
	if a.JWT, err = iss.SignAccount(a); err != nil {
		return fmt.Errorf("signing the account JWT: %w", err)
	}
	if err := tx.UpdateAccount(ctx, a); err != nil {
		return err
	}
	return tx.EnqueueAccountPush(ctx, AccountPushJob{TenantID: t.ID}, now.Add(pushJobDelay))
}

// ApplyPlanGraceExpiry ends every downgrade grace that is over: the
// account JWT gets the plan's own leaf limit and is pushed. It returns the
// tenants changed. The periodic reconcile job calls it.
func (s *Service) ApplyPlanGraceExpiry(ctx context.Context) (int, error) {
	iss, err := s.issuer()
	if err != nil {
		return 0, err
	}
	due, err := s.store.FindTenantsGraceExpired(ctx, s.now(), 1000)
	if err != nil {
		return 0, err
	}
	done := 0
	for _, id := range due {
		changed := false
		err := s.store.Tx(ctx, func(tx Store) error {
			t, err := tx.LockTenant(ctx, id)
			if err != nil {
				return err
			}
			now := s.now()
			if t.GraceUntil == nil || now.Before(*t.GraceUntil) {
				return nil // changed meanwhile
			}
			from := t.GracePlan
			t.GracePlan, t.GraceUntil = "", nil
			if err := tx.UpdateTenantPlan(ctx, t); err != nil {
				return err
			}
			if err := s.resignLimits(ctx, tx, iss, t, now); err != nil {
				return err
			}
			changed = true
			p := &Principal{TenantID: id, ActorType: "system", ActorID: "plan"}
			return s.audit(ctx, tx, p, "tenant.plan_grace_end", "tenant", id, map[string]any{"plan": t.Plan, "grace_plan": from})
		})
		if err != nil {
			return done, fmt.Errorf("ending the plan grace of tenant %s: %w", id, err)
		}
		if changed {
			done++
			s.pushAfterCommit(ctx, id)
		}
	}
	return done, nil
}
