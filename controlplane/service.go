package controlplane

import (
	"context"
	"encoding/base64"
	"log/slog"
	"net/mail"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/password"
	"github.com/fleetplane/fleetplane/internal/secret"
)

// Config is what the Service needs to know from the deployment.
type Config struct {
	// Regions fleets can be created in; the first one is the default.
	Regions []Region
	// DefaultPlan for new tenants ("free" unless billing says otherwise).
	DefaultPlan string
	// PasswordParams are the argon2id costs (tests lower them).
	PasswordParams password.Params
	// IdempotencyTTL is how long an Idempotency-Key is remembered.
	IdempotencyTTL time.Duration

	// Issuer signs the NATS identities (required for signup and every
	// identity operation). Hubs receives account pushes; nil = no hubs
	// (pushes succeed with zero nodes: tests of the API alone).
	Issuer Issuer
	Hubs   Hubs
	// Presence delivers vehicle connect/disconnect events (nil = none).
	Presence PresenceSource
	// PresenceInterval is how often RunPresence reconciles presence with
	// the hubs' listings (default DefaultPresenceInterval).
	PresenceInterval time.Duration
	// Telemetry serves digital-twin reads, live updates and commands
	// (nil = not configured: those endpoints answer 503).
	Telemetry Telemetry
	// Plans maps a plan name to what it gives (plan.go); missing plans
	// use DefaultPlans.
	Plans map[string]Plan
	// PlanGrace is how long a downgrade keeps the old leaf limit (default
	// DefaultPlanGrace).
	PlanGrace time.Duration
	// VehicleCredentialTTL is a vehicle JWT's lifetime (default 7 days);
	// agents renew after half of it.
	VehicleCredentialTTL time.Duration
	// MaxGrantTTL caps a grant's lifetime (default 30 days, at most 90).
	MaxGrantTTL time.Duration
	// PushTimeout bounds the inline push and proof after a change (default
	// 5 s); what does not finish in time is left to the durable job.
	PushTimeout time.Duration
	// Billing is the payment provider (nil = billing off: tenants keep
	// their plan, the billing endpoints answer ENOTIMPLEMENTED).
	Billing Billing
	// HubStats reads the hubs' account statistics for metering (nil = no
	// message and byte counts).
	HubStats HubStatsSource
	// PublicURL is the control plane's public base URL, used in the
	// install one-liner (e.g. https://fleetplane.example.com) and in the
	// links the portal mails.
	PublicURL string
	// Mailer sends the portal's e-mails (confirmation, reset and
	// invitation links); nil = none: each mail is dropped with a log line
	// that leaves the link out.
	Mailer Mailer
	// SessionTTL and SessionIdleTTL bound a portal session: from sign-in,
	// and without a request (defaults DefaultSessionTTL and
	// DefaultSessionIdleTTL).
	SessionTTL     time.Duration
	SessionIdleTTL time.Duration
}

// Service is the one place that orchestrates the control plane: the API and
// the portal call it, and it calls the Store (and, in later issues, the NATS
// issuer, the hubs and billing). It checks roles, validates input, writes
// the audit log in the same transaction as the change it records.
type Service struct {
	store  Store
	cfg    Config
	logger *slog.Logger
	now    func() time.Time
	// dummyHash is a password hash with the configured costs, made on
	// first use: login verifies against it when there is no user.
	dummyHash func() string
}

// NewService returns a Service over store.
func NewService(store Store, cfg Config, logger *slog.Logger) *Service {
	if cfg.DefaultPlan == "" {
		cfg.DefaultPlan = PlanFree
	}
	if cfg.PasswordParams == (password.Params{}) {
		cfg.PasswordParams = password.Default
	}
	if cfg.IdempotencyTTL == 0 {
		cfg.IdempotencyTTL = 24 * time.Hour
	}
	if cfg.VehicleCredentialTTL <= 0 {
		cfg.VehicleCredentialTTL = DefaultVehicleCredentialTTL
	}
	if cfg.MaxGrantTTL <= 0 {
		cfg.MaxGrantTTL = DefaultMaxGrantTTL
	}
	cfg.MaxGrantTTL = min(cfg.MaxGrantTTL, natsauth.MaxUserLifetime)
	if cfg.PushTimeout <= 0 {
		cfg.PushTimeout = DefaultPushTimeout
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	sessionDefaults(&cfg, logger)
	return &Service{store: store, cfg: cfg, logger: logger, now: time.Now, dummyHash: newDummyHash(cfg.PasswordParams)}
}

// Ready reports whether the service can serve requests (the database answers).
func (s *Service) Ready(ctx context.Context) error {
	if err := s.store.Ping(ctx); err != nil {
		return Errorf(EUNAVAILABLE, "database unavailable")
	}
	return nil
}

// Regions returns the configured regions.
func (s *Service) Regions(ctx context.Context) ([]Region, error) {
	if _, err := s.authorize(ctx, RoleViewer); err != nil {
		return nil, err
	}
	return s.cfg.Regions, nil
}

// authorize returns the caller when it holds at least role min.
func (s *Service) authorize(ctx context.Context, min Role) (*Principal, error) {
	p := PrincipalFromContext(ctx)
	if p == nil || p.TenantID == "" {
		return nil, Errorf(EUNAUTHORIZED, "authentication required")
	}
	if !p.Role.AtLeast(min) {
		return nil, Errorf(EFORBIDDEN, "this action needs the %s role or higher; the caller has %s", min, p.Role)
	}
	return p, nil
}

// audit writes an audit event for the caller in ctx, inside tx.
func (s *Service) audit(ctx context.Context, tx Store, p *Principal, action, targetType, targetID string, details map[string]any) error {
	return tx.CreateAuditEvent(ctx, &AuditEvent{
		TenantID:   p.TenantID,
		ActorType:  p.ActorType,
		ActorID:    p.ActorID,
		Action:     action,
		TargetType: targetType,
		TargetID:   targetID,
		SourceIP:   p.SourceIP,
		RequestID:  p.RequestID,
		Details:    details,
	})
}

// --- signup and tenants ---

const (
	minPasswordLen = 12
	maxPasswordLen = 256
)

// Signup creates a tenant, its owner and the first API key in one transaction.
func (s *Service) Signup(ctx context.Context, req SignupRequest) (*SignupResult, error) {
	var v ValidationError
	org := strings.TrimSpace(req.Organisation)
	validateName(&v, "organisation", org, true)
	email, ok := normalizeEmail(req.Email)
	if !ok {
		v.Add("email", "must be a valid e-mail address")
	}
	if n := utf8.RuneCountInString(req.Password); n < minPasswordLen {
		v.Add("password", "must be at least %d characters", minPasswordLen)
	} else if len(req.Password) > maxPasswordLen {
		v.Add("password", "must be at most %d bytes", maxPasswordLen)
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	// Hash outside the transaction: argon2id is deliberately slow.
	hash := password.Hash(req.Password, s.cfg.PasswordParams)
	return s.createTenant(ctx, org, email, hash, s.cfg.DefaultPlan, RequestMetaFromContext(ctx))
}

// AdminCreateTenant creates a tenant for an operator of the service (the
// `fleetplane admin tenant create` command): the owner has no password yet.
func (s *Service) AdminCreateTenant(ctx context.Context, name, email, plan string) (*SignupResult, error) {
	var v ValidationError
	name = strings.TrimSpace(name)
	validateName(&v, "name", name, true)
	email, ok := normalizeEmail(email)
	if !ok {
		v.Add("email", "must be a valid e-mail address")
	}
	if plan == "" {
		plan = s.cfg.DefaultPlan
	}
	if !ValidPlan(plan) {
		v.Add("plan", "must be %q or %q", PlanFree, PlanScale)
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	return s.createTenant(ctx, name, email, "", plan, RequestMeta{SourceIP: "local"})
}

// AdminCreateAPIKey issues a new admin API key for the oldest tenant owned
// by email: the operator's way back in when every key is lost (and what
// `fleetplane dev` uses when its saved key is gone). It is audited as a
// system action.
func (s *Service) AdminCreateAPIKey(ctx context.Context, email, name string) (*APIKeyCreated, error) {
	email, ok := normalizeEmail(email)
	if !ok {
		return nil, Errorf(EINVALID, "email: must be a valid e-mail address")
	}
	m, err := s.store.FindOwnerMembershipByEmail(ctx, email)
	if ErrorCode(err) == ENOTFOUND {
		return nil, Errorf(ENOTFOUND, "no tenant is owned by %s", email)
	} else if err != nil {
		return nil, err
	}
	p := &Principal{TenantID: m.TenantID, Role: RoleOwner, ActorType: "system", ActorID: "admin", SourceIP: "local"}
	var key *APIKeyCreated
	err = s.store.Tx(ctx, func(tx Store) error {
		key, err = s.createAPIKey(ctx, tx, p, APIKeyCreate{Name: name, Role: RoleAdmin})
		return err
	})
	return key, err
}

func (s *Service) createTenant(ctx context.Context, name, email, pwHash, plan string, meta RequestMeta) (*SignupResult, error) {
	res := &SignupResult{}
	err := s.store.Tx(ctx, func(tx Store) error {
		t := &Tenant{Name: name, Plan: plan}
		if err := tx.CreateTenant(ctx, t); err != nil {
			return err
		}
		u := &User{Email: email}
		if err := tx.CreateUser(ctx, u, pwHash); err != nil {
			if ErrorCode(err) == ECONFLICT {
				return Errorf(ECONFLICT, "an account with this e-mail address already exists; sign in instead")
			}
			return err
		}
		if err := tx.CreateMembership(ctx, &Membership{TenantID: t.ID, UserID: u.ID, Role: RoleOwner}); err != nil {
			return err
		}
		p := &Principal{TenantID: t.ID, Role: RoleOwner, ActorType: "user", ActorID: u.ID,
			SourceIP: meta.SourceIP, RequestID: meta.RequestID}
		key, err := s.createAPIKey(ctx, tx, p, APIKeyCreate{Name: "default", Role: RoleAdmin})
		if err != nil {
			return err
		}
		a, err := s.createAccount(ctx, tx, t)
		if err != nil {
			return err
		}
		if err := s.audit(ctx, tx, p, "tenant.create", "tenant", t.ID,
			map[string]any{"name": t.Name, "plan": t.Plan, "owner_email": u.Email, "nats_account": a.PublicKey}); err != nil {
			return err
		}
		res.Tenant, res.User, res.APIKey = t, u, key
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.logger.InfoContext(ctx, "tenant created", "tenant", res.Tenant.ID, "plan", res.Tenant.Plan)
	// The account is on the hubs when signup returns (so the first vehicle
	// can connect at once) unless a hub is down: then the job catches up.
	s.pushAfterCommit(ctx, res.Tenant.ID)
	return res, nil
}

// Tenant returns the caller's tenant.
func (s *Service) Tenant(ctx context.Context) (*Tenant, error) {
	p, err := s.authorize(ctx, RoleViewer)
	if err != nil {
		return nil, err
	}
	return s.store.FindTenantByID(ctx, p.TenantID)
}

// --- API keys ---

// Authenticate resolves a bearer API key to a principal. Every failure is
// EUNAUTHORIZED; whether a key is expired or revoked is said only after its
// secret matched, so the messages are no oracle for guessing IDs.
func (s *Service) Authenticate(ctx context.Context, bearer string) (*Principal, error) {
	id, sec, err := secret.Parse(secret.APIKeyPrefix, bearer)
	if err != nil {
		return nil, Errorf(EUNAUTHORIZED, "malformed API key: expected fpk_<id>_<secret>")
	}
	k, hash, err := s.store.FindAPIKeyForAuth(ctx, id)
	if ErrorCode(err) == ENOTFOUND {
		return nil, Errorf(EUNAUTHORIZED, "invalid API key")
	} else if err != nil {
		return nil, err
	}
	if !secret.Equal(sec, hash) {
		return nil, Errorf(EUNAUTHORIZED, "invalid API key")
	}
	now := s.now()
	if k.RevokedAt != nil {
		return nil, Errorf(EUNAUTHORIZED, "API key %s was revoked", k.ID)
	}
	if k.ExpiresAt != nil && !now.Before(*k.ExpiresAt) {
		return nil, Errorf(EUNAUTHORIZED, "API key %s expired at %s", k.ID, k.ExpiresAt.UTC().Format(time.RFC3339))
	}
	// The store writes at most once a minute per key; skipping the round
	// trip here keeps authentication a single read on the hot path.
	if k.LastUsedAt == nil || now.Sub(*k.LastUsedAt) >= time.Minute {
		if err := s.store.TouchAPIKey(ctx, k.ID, now); err != nil {
			// Losing a last-used timestamp must not fail the request.
			s.logger.WarnContext(ctx, "recording API key use failed", "key", k.ID, "err", err)
		}
	}
	meta := RequestMetaFromContext(ctx)
	return &Principal{TenantID: k.TenantID, Role: k.Role, ActorType: "api_key", ActorID: k.ID,
		SourceIP: meta.SourceIP, RequestID: meta.RequestID}, nil
}

// CreateAPIKey issues a new API key; its secret is in the result only.
func (s *Service) CreateAPIKey(ctx context.Context, in APIKeyCreate) (*APIKeyCreated, error) {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return nil, err
	}
	var key *APIKeyCreated
	err = s.store.Tx(ctx, func(tx Store) error {
		key, err = s.createAPIKey(ctx, tx, p, in)
		return err
	})
	return key, err
}

func (s *Service) createAPIKey(ctx context.Context, tx Store, p *Principal, in APIKeyCreate) (*APIKeyCreated, error) {
	var v ValidationError
	in.Name = strings.TrimSpace(in.Name)
	validateName(&v, "name", in.Name, true)
	if in.Role == "" {
		in.Role = RoleAdmin
	}
	if !in.Role.Valid() || in.Role == RoleOwner {
		v.Add("role", "must be one of admin, member, viewer")
	} else if !p.Role.AtLeast(in.Role) {
		v.Add("role", "cannot be higher than the caller's role (%s)", p.Role)
	}
	if in.ExpiresAt != nil && !in.ExpiresAt.After(s.now()) {
		v.Add("expires_at", "must be in the future")
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	id, plaintext, hash := secret.New(secret.APIKeyPrefix)
	k := &APIKey{ID: id, TenantID: p.TenantID, Name: in.Name, Role: in.Role,
		CreatedBy: p.ActorType + ":" + p.ActorID, ExpiresAt: in.ExpiresAt}
	if err := tx.CreateAPIKey(ctx, k, hash); err != nil {
		return nil, err
	}
	details := map[string]any{"name": k.Name, "role": string(k.Role)}
	if k.ExpiresAt != nil {
		details["expires_at"] = k.ExpiresAt.UTC().Format(time.RFC3339)
	}
	if err := s.audit(ctx, tx, p, "api_key.create", "api_key", k.ID, details); err != nil {
		return nil, err
	}
	return &APIKeyCreated{APIKey: *k, Secret: plaintext}, nil
}

// APIKeys lists the tenant's API keys (never their secrets).
func (s *Service) APIKeys(ctx context.Context, page PageRequest, includeRevoked bool) (*Page[*APIKey], error) {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return nil, err
	}
	limit, after, err := page.decode()
	if err != nil {
		return nil, err
	}
	keys, err := s.store.FindAPIKeys(ctx, p.TenantID, APIKeyFilter{IncludeRevoked: includeRevoked, After: after, Limit: limit + 1})
	if err != nil {
		return nil, err
	}
	return newPage(keys, limit, func(k *APIKey) string { return k.ID }), nil
}

// RevokeAPIKey revokes one of the tenant's keys. A key may revoke itself.
func (s *Service) RevokeAPIKey(ctx context.Context, id string) error {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return err
	}
	return s.store.Tx(ctx, func(tx Store) error {
		if err := tx.RevokeAPIKey(ctx, p.TenantID, id, s.now()); err != nil {
			if ErrorCode(err) == ENOTFOUND {
				return Errorf(ENOTFOUND, "API key %q not found", id)
			}
			return err
		}
		return s.audit(ctx, tx, p, "api_key.revoke", "api_key", id, nil)
	})
}

// --- fleets ---

// CreateFleet creates a fleet in the caller's tenant.
func (s *Service) CreateFleet(ctx context.Context, in FleetCreate) (*Fleet, error) {
	p, err := s.authorize(ctx, RoleMember)
	if err != nil {
		return nil, err
	}
	var v ValidationError
	if !ValidSlug(in.Slug) {
		v.Add("slug", "must be 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit")
	}
	in.Name = strings.TrimSpace(in.Name)
	if in.Name == "" {
		in.Name = in.Slug
	}
	validateName(&v, "name", in.Name, true)
	validateDescription(&v, in.Description)
	if in.Environment == "" {
		in.Environment = "prod"
	}
	if !ValidEnvironment(in.Environment) {
		v.Add("environment", "must be 1-32 characters of a-z, 0-9, '_' and '-', starting and ending with a letter or digit (it becomes a NATS subject token)")
	}
	if in.Region == "" && len(s.cfg.Regions) > 0 {
		in.Region = s.cfg.Regions[0].Name
	}
	if !s.knownRegion(in.Region) {
		v.Add("region", "unknown region %q; GET /v1/regions lists them", in.Region)
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	f := &Fleet{TenantID: p.TenantID, Slug: in.Slug, Name: in.Name, Description: in.Description,
		Environment: in.Environment, Region: in.Region}
	err = s.store.Tx(ctx, func(tx Store) error {
		if err := tx.CreateFleet(ctx, f); err != nil {
			if ErrorCode(err) == ECONFLICT {
				return Errorf(ECONFLICT, "a fleet with slug %q already exists", in.Slug)
			}
			return err
		}
		if err := s.audit(ctx, tx, p, "fleet.create", "fleet", f.Slug,
			map[string]any{"name": f.Name, "environment": f.Environment, "region": f.Region}); err != nil {
			return err
		}
		if s.cfg.Telemetry != nil {
			// The tenant's history stream in the fleet's region
			// (provisionTenant); the push job is the safety net.
			return tx.EnqueueAccountPush(ctx, AccountPushJob{TenantID: p.TenantID}, s.now().Add(pushJobDelay))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.provisionAfterCommit(ctx, p.TenantID)
	return f, nil
}

func (s *Service) knownRegion(name string) bool {
	for _, r := range s.cfg.Regions {
		if r.Name == name {
			return true
		}
	}
	return false
}

// Fleet returns one fleet of the caller's tenant by slug.
func (s *Service) Fleet(ctx context.Context, slug string) (*Fleet, error) {
	p, err := s.authorize(ctx, RoleViewer)
	if err != nil {
		return nil, err
	}
	return s.findFleet(ctx, s.store, p.TenantID, slug)
}

func (s *Service) findFleet(ctx context.Context, st Store, tenantID, slug string) (*Fleet, error) {
	if !ValidSlug(slug) {
		return nil, Errorf(ENOTFOUND, "fleet %q not found", slug)
	}
	f, err := st.FindFleetBySlug(ctx, tenantID, slug)
	if ErrorCode(err) == ENOTFOUND {
		return nil, Errorf(ENOTFOUND, "fleet %q not found", slug)
	}
	return f, err
}

// Fleets lists the caller's fleets by slug.
func (s *Service) Fleets(ctx context.Context, page PageRequest) (*Page[*Fleet], error) {
	p, err := s.authorize(ctx, RoleViewer)
	if err != nil {
		return nil, err
	}
	limit, after, err := page.decode()
	if err != nil {
		return nil, err
	}
	fleets, err := s.store.FindFleets(ctx, p.TenantID, FleetFilter{After: after, Limit: limit + 1})
	if err != nil {
		return nil, err
	}
	return newPage(fleets, limit, func(f *Fleet) string { return f.Slug }), nil
}

// UpdateFleet changes a fleet's name or description.
func (s *Service) UpdateFleet(ctx context.Context, slug string, u FleetUpdate) (*Fleet, error) {
	p, err := s.authorize(ctx, RoleMember)
	if err != nil {
		return nil, err
	}
	var v ValidationError
	if u.Name != nil {
		n := strings.TrimSpace(*u.Name)
		u.Name = &n
		validateName(&v, "name", n, true)
	}
	if u.Description != nil {
		validateDescription(&v, *u.Description)
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	var out *Fleet
	err = s.store.Tx(ctx, func(tx Store) error {
		f, err := s.findFleet(ctx, tx, p.TenantID, slug)
		if err != nil {
			return err
		}
		if out, err = tx.UpdateFleet(ctx, p.TenantID, f.ID, u); err != nil {
			return err
		}
		return s.audit(ctx, tx, p, "fleet.update", "fleet", slug, changes(map[string]*string{"name": u.Name, "description": u.Description}))
	})
	return out, err
}

// DeleteFleet deletes an empty fleet.
func (s *Service) DeleteFleet(ctx context.Context, slug string) error {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return err
	}
	return s.store.Tx(ctx, func(tx Store) error {
		f, err := s.findFleet(ctx, tx, p.TenantID, slug)
		if err != nil {
			return err
		}
		if err := tx.DeleteFleet(ctx, p.TenantID, f.ID); err != nil {
			if ErrorCode(err) == ECONFLICT {
				return Errorf(ECONFLICT, "fleet %q still has vehicles; delete them first", slug)
			}
			return err
		}
		return s.audit(ctx, tx, p, "fleet.delete", "fleet", slug, nil)
	})
}

// --- vehicles ---

// VehicleQuery is a page request for vehicles of one fleet, with filters.
type VehicleQuery struct {
	PageRequest
	Status          string
	VehicleIDPrefix string
	Label           string // "key=value"
	Online          *bool
}

// CreateVehicle pre-registers a vehicle in a fleet.
func (s *Service) CreateVehicle(ctx context.Context, fleetSlug string, in VehicleCreate) (*Vehicle, error) {
	p, err := s.authorize(ctx, RoleMember)
	if err != nil {
		return nil, err
	}
	var v ValidationError
	if !ValidVehicleID(in.VehicleID) {
		v.Add("vehicle_id", vehicleIDRule)
	}
	in.Name = strings.TrimSpace(in.Name)
	if in.Name == "" {
		in.Name = in.VehicleID
	}
	validateName(&v, "name", in.Name, true)
	validateLabels(&v, in.Labels)
	if err := v.Err(); err != nil {
		return nil, err
	}
	var out *Vehicle
	err = s.store.Tx(ctx, func(tx Store) error {
		f, err := s.findFleet(ctx, tx, p.TenantID, fleetSlug)
		if err != nil {
			return err
		}
		if err := s.checkVehicleQuota(ctx, tx, p.TenantID); err != nil {
			return err
		}
		labels := in.Labels
		if labels == nil {
			labels = map[string]string{}
		}
		out = &Vehicle{TenantID: p.TenantID, FleetID: f.ID, FleetSlug: f.Slug, VehicleID: in.VehicleID,
			Name: in.Name, Labels: labels, Status: VehiclePending}
		if err := tx.CreateVehicle(ctx, out); err != nil {
			if ErrorCode(err) == ECONFLICT {
				return Errorf(ECONFLICT, "vehicle %q already exists in this tenant", in.VehicleID)
			}
			return err
		}
		return s.audit(ctx, tx, p, "vehicle.create", "vehicle", in.VehicleID, map[string]any{"fleet": f.Slug})
	})
	return out, err
}

// Vehicle returns one vehicle of a fleet.
func (s *Service) Vehicle(ctx context.Context, fleetSlug, vehicleID string) (*Vehicle, error) {
	p, err := s.authorize(ctx, RoleViewer)
	if err != nil {
		return nil, err
	}
	v, err := s.findVehicle(ctx, s.store, p.TenantID, fleetSlug, vehicleID)
	if err != nil {
		return nil, err
	}
	if v.Status == VehicleRevoked {
		r, err := s.store.FindLatestRevocation(ctx, p.TenantID, RevokeVehicle, v.VehicleID)
		if err != nil && ErrorCode(err) != ENOTFOUND {
			return nil, err
		}
		v.Revocation = r
	}
	return v, nil
}

func (s *Service) findVehicle(ctx context.Context, st Store, tenantID, fleetSlug, vehicleID string) (*Vehicle, error) {
	f, err := s.findFleet(ctx, st, tenantID, fleetSlug)
	if err != nil {
		return nil, err
	}
	if !ValidVehicleID(vehicleID) {
		return nil, Errorf(ENOTFOUND, "vehicle %q not found in fleet %q", vehicleID, fleetSlug)
	}
	v, err := st.FindVehicle(ctx, tenantID, f.ID, vehicleID)
	if ErrorCode(err) == ENOTFOUND {
		return nil, Errorf(ENOTFOUND, "vehicle %q not found in fleet %q", vehicleID, fleetSlug)
	}
	return v, err
}

// Vehicles lists a fleet's vehicles by vehicle ID, with filters.
func (s *Service) Vehicles(ctx context.Context, fleetSlug string, q VehicleQuery) (*Page[*Vehicle], error) {
	p, err := s.authorize(ctx, RoleViewer)
	if err != nil {
		return nil, err
	}
	limit, after, err := q.decode()
	if err != nil {
		return nil, err
	}
	var v ValidationError
	filter := VehicleFilter{After: after, Limit: limit + 1}
	if q.Status != "" {
		st := VehicleStatus(q.Status)
		if !st.Valid() {
			v.Add("status", "must be one of pending, active, disabled, revoked")
		}
		filter.Status = &st
	}
	if q.VehicleIDPrefix != "" {
		if !ValidVehicleID(q.VehicleIDPrefix) {
			v.Add("vehicle_id_prefix", "must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'")
		}
		filter.VehicleIDPrefix = &q.VehicleIDPrefix
	}
	if q.Label != "" {
		k, val, ok := strings.Cut(q.Label, "=")
		if !ok || !ValidLabelKey(k) || len(val) > MaxLabelValueLen {
			v.Add("label", "must be key=value with a valid label key")
		}
		filter.Label = &LabelSelector{Key: k, Value: val}
	}
	filter.Online = q.Online
	if err := v.Err(); err != nil {
		return nil, err
	}
	if !ValidSlug(fleetSlug) {
		return nil, Errorf(ENOTFOUND, "fleet %q not found", fleetSlug)
	}
	// One query per page: the fleet is joined by slug rather than looked up
	// first (which also counted its vehicles). Only an empty page needs to
	// tell "no such fleet" from "no vehicles".
	filter.FleetSlug = &fleetSlug
	vs, err := s.store.FindVehicles(ctx, p.TenantID, filter)
	if err != nil {
		return nil, err
	}
	if len(vs) == 0 {
		if _, err := s.findFleet(ctx, s.store, p.TenantID, fleetSlug); err != nil {
			return nil, err
		}
	}
	return newPage(vs, limit, func(v *Vehicle) string { return v.VehicleID }), nil
}

// UpdateVehicle renames, relabels, disables or re-enables a vehicle.
func (s *Service) UpdateVehicle(ctx context.Context, fleetSlug, vehicleID string, u VehicleUpdate) (*Vehicle, error) {
	p, err := s.authorize(ctx, RoleMember)
	if err != nil {
		return nil, err
	}
	var v ValidationError
	if u.Name != nil {
		n := strings.TrimSpace(*u.Name)
		u.Name = &n
		validateName(&v, "name", n, true)
	}
	if u.Labels != nil {
		if *u.Labels == nil {
			*u.Labels = map[string]string{}
		}
		validateLabels(&v, *u.Labels)
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	var out *Vehicle
	err = s.store.Tx(ctx, func(tx Store) error {
		cur, err := s.findVehicle(ctx, tx, p.TenantID, fleetSlug, vehicleID)
		if err != nil {
			return err
		}
		c := VehicleChange{Name: u.Name, Labels: u.Labels}
		details := map[string]any{}
		if u.Name != nil {
			details["name"] = *u.Name
		}
		if u.Labels != nil {
			details["labels"] = *u.Labels
		}
		if u.Disabled != nil {
			st, err := nextStatus(cur, *u.Disabled)
			if err != nil {
				return err
			}
			c.Status = &st
			details["status"] = string(st)
		}
		if out, err = tx.UpdateVehicle(ctx, p.TenantID, cur.ID, c); err != nil {
			return err
		}
		out.FleetSlug = fleetSlug
		return s.audit(ctx, tx, p, "vehicle.update", "vehicle", vehicleID, details)
	})
	return out, err
}

// nextStatus applies disabled=true/false to a vehicle's status. A revoked
// vehicle stays revoked: it comes back only by enrolling with a fresh key.
func nextStatus(v *Vehicle, disabled bool) (VehicleStatus, error) {
	if v.Status == VehicleRevoked {
		return "", Errorf(ECONFLICT, "vehicle %q is revoked; enroll it again instead", v.VehicleID)
	}
	if disabled {
		return VehicleDisabled, nil
	}
	if v.EnrolledAt != nil {
		return VehicleActive, nil
	}
	return VehiclePending, nil
}

// DeleteVehicle deletes a vehicle. A vehicle that holds credentials has its
// key revoked in the same transaction: deleting must not leave a live JWT
// (or a connected leaf) behind.
func (s *Service) DeleteVehicle(ctx context.Context, fleetSlug, vehicleID string) error {
	p, err := s.authorize(ctx, RoleMember)
	if err != nil {
		return err
	}
	var r *Revocation
	err = s.store.Tx(ctx, func(tx Store) error {
		v, err := s.findVehicle(ctx, tx, p.TenantID, fleetSlug, vehicleID)
		if err != nil {
			return err
		}
		details := map[string]any{"fleet": fleetSlug}
		if v.UserPublicKey != "" && v.Status != VehicleRevoked {
			if r, err = s.revokeKey(ctx, tx, p.TenantID, RevokeVehicle, vehicleID, v.UserPublicKey); err != nil {
				return err
			}
			details["user_public_key"], details["revocation_id"] = v.UserPublicKey, r.ID
		}
		if err := tx.DeleteVehicle(ctx, p.TenantID, v.ID); err != nil {
			return err
		}
		return s.audit(ctx, tx, p, "vehicle.delete", "vehicle", vehicleID, details)
	})
	if err == nil && r != nil {
		s.finishRevocation(ctx, r)
	}
	return err
}

// --- audit ---

// AuditQuery is a page request for audit events with filters.
type AuditQuery struct {
	PageRequest
	Action     string
	TargetType string
	TargetID   string
	Since      *time.Time
	Until      *time.Time
}

// AuditEvents lists the tenant's audit events, newest first.
func (s *Service) AuditEvents(ctx context.Context, q AuditQuery) (*Page[*AuditEvent], error) {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return nil, err
	}
	limit, after, err := q.decode()
	if err != nil {
		return nil, err
	}
	f := AuditFilter{Limit: limit + 1, Since: q.Since, Until: q.Until}
	if after != "" {
		n, err := strconv.ParseInt(after, 10, 64)
		if err != nil || n <= 0 {
			return nil, Errorf(EINVALID, "cursor: malformed; pass next_cursor from the previous page unchanged")
		}
		f.Before = n
	}
	if q.Action != "" {
		f.Action = &q.Action
	}
	if q.TargetType != "" {
		f.TargetType = &q.TargetType
	}
	if q.TargetID != "" {
		f.TargetID = &q.TargetID
	}
	evs, err := s.store.FindAuditEvents(ctx, p.TenantID, f)
	if err != nil {
		return nil, err
	}
	return newPage(evs, limit, func(e *AuditEvent) string { return strconv.FormatInt(e.ID, 10) }), nil
}

// --- idempotency ---

// BeginIdempotent claims an Idempotency-Key for the caller (or, for public
// endpoints, for scope). See Store.BeginIdempotent.
func (s *Service) BeginIdempotent(ctx context.Context, scope, key string, requestHash []byte) (*IdempotentResponse, error) {
	if key == "" || len(key) > 255 {
		return nil, Errorf(EINVALID, "Idempotency-Key: must be 1-255 characters")
	}
	for _, r := range key {
		if r < 0x21 || r > 0x7e {
			return nil, Errorf(EINVALID, "Idempotency-Key: must be printable ASCII without spaces")
		}
	}
	return s.store.BeginIdempotent(ctx, scope, key, requestHash)
}

// CompleteIdempotent stores the response for a claimed key.
func (s *Service) CompleteIdempotent(ctx context.Context, scope, key string, r *IdempotentResponse) error {
	return s.store.CompleteIdempotent(ctx, scope, key, r)
}

// ReleaseIdempotent forgets a claimed key whose request failed on our side.
func (s *Service) ReleaseIdempotent(ctx context.Context, scope, key string) error {
	return s.store.ReleaseIdempotent(ctx, scope, key)
}

// PruneIdempotencyKeys removes keys older than the configured TTL.
func (s *Service) PruneIdempotencyKeys(ctx context.Context) (int64, error) {
	return s.store.DeleteExpiredIdempotencyKeys(ctx, s.now().Add(-s.cfg.IdempotencyTTL))
}

// --- validation helpers ---

func validateName(v *ValidationError, field, name string, required bool) {
	switch {
	case name == "" && required:
		v.Add(field, "is required")
	case !utf8.ValidString(name):
		v.Add(field, "must be valid UTF-8")
	case utf8.RuneCountInString(name) > MaxNameLen:
		v.Add(field, "must be at most %d characters", MaxNameLen)
	case strings.ContainsFunc(name, isControl):
		v.Add(field, "must not contain control characters")
	}
}

func validateDescription(v *ValidationError, d string) {
	switch {
	case !utf8.ValidString(d):
		v.Add("description", "must be valid UTF-8")
	case utf8.RuneCountInString(d) > MaxDescriptionLen:
		v.Add("description", "must be at most %d characters", MaxDescriptionLen)
	case strings.ContainsFunc(d, func(r rune) bool { return isControl(r) && r != '\t' && r != '\n' && r != '\r' }):
		// Postgres text cannot hold NUL (it failed as a 500), and escape
		// sequences have no business in a description.
		v.Add("description", "must not contain control characters other than tab and newline")
	}
}

func validateLabels(v *ValidationError, labels map[string]string) {
	if len(labels) > MaxLabels {
		v.Add("labels", "at most %d labels", MaxLabels)
		return
	}
	for k, val := range labels {
		if !ValidLabelKey(k) {
			v.Add("labels", "key %q must be 1-63 characters of A-Z, a-z, 0-9, '.', '_', '/' and '-'", k)
		} else if !utf8.ValidString(val) || len(val) > MaxLabelValueLen || strings.ContainsFunc(val, isControl) {
			v.Add("labels", "value of %q must be at most %d bytes of printable UTF-8", k, MaxLabelValueLen)
		}
	}
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func normalizeEmail(s string) (string, bool) {
	s = strings.TrimSpace(s)
	if len(s) > 254 || s == "" {
		return "", false
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s || a.Name != "" || !strings.Contains(s[strings.LastIndexByte(s, '@'):], ".") {
		return "", false
	}
	return strings.ToLower(s), true
}

func changes(m map[string]*string) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		if v != nil {
			out[k] = *v
		}
	}
	return out
}

// --- pagination ---

// Default and maximum page sizes.
const (
	DefaultPageLimit = 50
	MaxPageLimit     = 500
)

// PageRequest is a cursor page request. Cursor is opaque to clients: the
// next_cursor of the previous page, passed back unchanged.
type PageRequest struct {
	Cursor string
	Limit  int // 0 = default
}

// Page is one page of results; NextCursor is "" on the last page.
type Page[T any] struct {
	Items      []T
	NextCursor string
}

func (p PageRequest) decode() (limit int, after string, err error) {
	limit = p.Limit
	if limit == 0 {
		limit = DefaultPageLimit
	}
	if limit < 1 || limit > MaxPageLimit {
		return 0, "", Errorf(EINVALID, "limit: must be between 1 and %d", MaxPageLimit)
	}
	if p.Cursor == "" {
		return limit, "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(p.Cursor)
	if err != nil || len(b) < 2 || b[0] != 'c' || b[1] != ':' || !utf8.Valid(b) {
		return 0, "", Errorf(EINVALID, "cursor: malformed; pass next_cursor from the previous page unchanged")
	}
	return limit, string(b[2:]), nil
}

func encodeCursor(after string) string {
	return base64.RawURLEncoding.EncodeToString([]byte("c:" + after))
}

// newPage trims a result fetched with limit+1 rows to limit and sets the
// cursor when there is more.
func newPage[T any](items []T, limit int, key func(T) string) *Page[T] {
	p := &Page[T]{Items: items}
	if len(items) > limit {
		p.Items = items[:limit]
		p.NextCursor = encodeCursor(key(items[limit-1]))
	}
	if p.Items == nil {
		p.Items = []T{}
	}
	return p
}
