package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/secret"
)

// Identity operations of the Service: tenant accounts, enrollment tokens,
// enrollment and renewal, vehicle credentials, grants and revocations. See
// identity.go for the types and DESIGN.md §2 for the model.
//
// Every change to an account (its limits, its revocations) happens in one
// transaction that locks the account row, increments its version, re-signs
// its JWT and inserts a durable push job (an outbox). After the commit the
// Service pushes inline so that the caller usually gets the result (and, for
// a revocation, the proof) at once; the job is the safety net that retries
// when a hub node did not answer or this process died.

// Defaults of the identity configuration.
const (
	DefaultVehicleCredentialTTL = 7 * 24 * time.Hour
	DefaultMaxGrantTTL          = 30 * 24 * time.Hour
	DefaultPushTimeout          = 5 * time.Second
	// FreeVehicleLimit is the free plan's vehicle count (leaf connections).
	FreeVehicleLimit = 10
	// agentNonceTTL is how long a renewal challenge stays valid.
	agentNonceTTL = 2 * time.Minute
	// pushJobDelay schedules the safety-net push job after the inline push
	// had its chance: the job then usually finds nothing left to do.
	pushJobDelay = 15 * time.Second
	// proofPoll is how long a revocation proof waits for the servers to
	// finish closing the revoked user's connections after the push.
	proofPoll = 2 * time.Second
	// maxPushRounds bounds the push-until-latest loop of pushAccount.
	maxPushRounds = 5
)

// DefaultPlanLimits returns the broker limits of a plan. The free plan's
// leaf-node limit is its vehicle limit: the hub refuses the 11th vehicle.
func DefaultPlanLimits(plan string) AccountLimits {
	if plan == PlanScale {
		return AccountLimits{
			Conn: 1000, LeafNodeConn: natsauth.NoLimit, Subs: 1_000_000, Payload: 1 << 20,
			JetStreamDisk: 100 << 30, JetStreamMem: 256 << 20, Streams: 100, Consumers: 10_000,
		}
	}
	return AccountLimits{
		Conn: 25, LeafNodeConn: FreeVehicleLimit, Subs: 10_000, Payload: 1 << 20,
		JetStreamDisk: 1 << 30, JetStreamMem: 64 << 20, Streams: 10, Consumers: 100,
	}
}

func (s *Service) planLimits(plan string) AccountLimits {
	return s.plan(plan).Limits
}

func (s *Service) issuer() (Issuer, error) {
	if s.cfg.Issuer == nil {
		return nil, Errorf(EUNAVAILABLE, "NATS identity is not configured: run `fleetplane admin operator init`")
	}
	return s.cfg.Issuer, nil
}

func (s *Service) region(name string) Region {
	for _, r := range s.cfg.Regions {
		if r.Name == name {
			return r
		}
	}
	return Region{Name: name}
}

// --- tenant accounts ---

// createAccount makes a tenant's NATS account inside tx and enqueues its
// first push.
func (s *Service) createAccount(ctx context.Context, tx Store, t *Tenant) (*Account, error) {
	iss, err := s.issuer()
	if err != nil {
		return nil, err
	}
	a, err := iss.NewAccount(t.ID, t.Name)
	if err != nil {
		return nil, fmt.Errorf("creating the account keys: %w", err)
	}
	a.Limits = s.planLimits(t.Plan)
	a.Revocations = map[string]int64{}
	a.Version = 1
	if a.JWT, err = iss.SignAccount(a); err != nil {
		return nil, fmt.Errorf("signing the account JWT: %w", err)
	}
	if err := tx.CreateAccount(ctx, a); err != nil {
		return nil, err
	}
	if err := tx.EnqueueAccountPush(ctx, AccountPushJob{TenantID: t.ID}, s.now().Add(pushJobDelay)); err != nil {
		return nil, err
	}
	return a, nil
}

// pushAccount brings every hub node to the account's latest version. It
// pushes the JWT stored for the latest version and repeats while the
// version moved meanwhile: the directory resolver keeps a JWT of the same
// second as the one it has (iat has 1 s resolution), so a slower, older
// push could otherwise land last. The pusher that finishes last has pushed
// the latest version.
func (s *Service) pushAccount(ctx context.Context, tenantID string, force bool) (*HubPush, *Account, error) {
	var last *HubPush
	for range maxPushRounds {
		a, err := s.store.FindAccount(ctx, tenantID, false)
		if err != nil {
			return last, nil, err
		}
		if !force && a.PushedVersion >= a.Version {
			return &HubPush{}, a, nil
		}
		if s.cfg.Hubs == nil {
			last = &HubPush{}
		} else {
			start := time.Now()
			if last, err = s.cfg.Hubs.PushAccount(ctx, a.JWT); err != nil {
				return last, a, Errorf(EUNAVAILABLE, "pushing the account to the hubs: %v", err)
			}
			s.logger.DebugContext(ctx, "account pushed", "tenant", tenantID, "version", a.Version,
				"nodes", len(last.Nodes), "expected", last.Expected, "took", time.Since(start))
		}
		if !last.Complete() {
			return last, a, Errorf(EUNAVAILABLE, "%d of %d hub nodes acknowledged account version %d",
				acked(last), last.Expected, a.Version)
		}
		if err := s.store.MarkAccountPushed(ctx, tenantID, a.Version, s.now()); err != nil {
			return last, a, err
		}
		cur, err := s.store.FindAccount(ctx, tenantID, false)
		if err != nil {
			return last, a, err
		}
		if cur.Version == a.Version {
			return last, a, nil
		}
		force = true
	}
	return last, nil, Errorf(EUNAVAILABLE, "account of tenant %s kept changing during %d pushes", tenantID, maxPushRounds)
}

func acked(p *HubPush) int {
	n := 0
	for _, a := range p.Nodes {
		if a.OK {
			n++
		}
	}
	return n
}

// pushAfterCommit pushes inline after a change; failures are logged and
// left to the durable job.
func (s *Service) pushAfterCommit(ctx context.Context, tenantID string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.PushTimeout)
	defer cancel()
	if _, _, err := s.pushAccount(ctx, tenantID, false); err != nil {
		s.logger.WarnContext(ctx, "account push failed; the push job will retry", "tenant", tenantID, "err", err)
		return
	}
	if err := s.provisionTenant(ctx, tenantID); err != nil {
		s.logger.WarnContext(ctx, "provisioning the tenant's history failed; the push job will retry", "tenant", tenantID, "err", err)
	}
}

// RunAccountPush is the body of the durable push job: it brings the hubs to
// the account's latest version and, for a revocation, proves it. An error
// makes the job retry with backoff.
func (s *Service) RunAccountPush(ctx context.Context, job AccountPushJob) error {
	if job.RevocationID == 0 {
		if _, _, err := s.pushAccount(ctx, job.TenantID, false); err != nil {
			return err
		}
		// Once the account is on the hubs: its history streams
		// (telemetry_service.go; a no-op when they are up to date).
		return s.provisionTenant(ctx, job.TenantID)
	}
	r, err := s.store.FindRevocation(ctx, job.TenantID, job.RevocationID)
	if ErrorCode(err) == ENOTFOUND {
		return nil // the tenant is gone
	} else if err != nil {
		return err
	}
	if r.Status == RevocationProven {
		return nil
	}
	_, err = s.completeRevocation(ctx, r)
	return err
}

// --- revocations ---

// revokeKey adds userPub to the account's revocations inside tx, re-signs
// the account and records a pending Revocation with its push job.
func (s *Service) revokeKey(ctx context.Context, tx Store, tenantID, kind, targetID, userPub string) (*Revocation, error) {
	iss, err := s.issuer()
	if err != nil {
		return nil, err
	}
	a, err := tx.FindAccount(ctx, tenantID, true)
	if err != nil {
		return nil, err
	}
	now := s.now()
	revs, err := natsauth.RevokeUser(a.Revocations, userPub, now)
	if err != nil {
		return nil, fmt.Errorf("revoking %s: %w", userPub, err)
	}
	a.Revocations = natsauth.PruneRevocations(revs, now, natsauth.MaxUserLifetime)
	a.Version++
	if a.JWT, err = iss.SignAccount(a); err != nil {
		return nil, fmt.Errorf("signing the account JWT: %w", err)
	}
	if err := tx.UpdateAccount(ctx, a); err != nil {
		return nil, err
	}
	r := &Revocation{TenantID: tenantID, Kind: kind, TargetID: targetID, UserPublicKey: userPub,
		AccountVersion: a.Version, Status: RevocationPending, RequestedAt: now}
	if err := tx.CreateRevocation(ctx, r); err != nil {
		return nil, err
	}
	if err := tx.EnqueueAccountPush(ctx, AccountPushJob{TenantID: tenantID, RevocationID: r.ID}, now.Add(pushJobDelay)); err != nil {
		return nil, err
	}
	return r, nil
}

// completeRevocation pushes the account and proves the revocation: every
// node acknowledged a version that contains it, and no node still has a
// connection of the user. It records the outcome on r either way.
func (s *Service) completeRevocation(ctx context.Context, r *Revocation) (*Revocation, error) {
	r.Attempts++
	push, a, err := s.pushAccount(ctx, r.TenantID, true)
	if push != nil {
		r.Nodes = push.Nodes
	}
	if err == nil && a.Version < r.AccountVersion {
		err = Errorf(EINTERNAL, "pushed account version %d precedes the revocation's %d", a.Version, r.AccountVersion)
	}
	if err == nil {
		err = s.proveDisconnected(ctx, r, a.PublicKey)
	}
	if err != nil {
		r.LastError = ErrorMessage(err)
		if ErrorCode(err) == EINTERNAL {
			r.LastError = err.Error()
		}
	} else {
		now := s.now()
		r.Status, r.CompletedAt, r.LastError = RevocationProven, &now, ""
		r.Latency = now.Sub(r.RequestedAt)
	}
	if uerr := s.store.UpdateRevocation(context.WithoutCancel(ctx), r); uerr != nil {
		return r, uerr
	}
	if err == nil {
		s.logger.InfoContext(ctx, "revocation proven", "tenant", r.TenantID, "kind", r.Kind, "target", r.TargetID,
			"nodes", len(r.Nodes), "latency", r.Latency)
	}
	return r, err
}

// proveDisconnected polls the hubs until no node reports a connection of
// r's user (the servers close them while applying the pushed JWT, which
// can finish a moment after they acknowledged it).
func (s *Service) proveDisconnected(ctx context.Context, r *Revocation, accountPub string) error {
	if s.cfg.Hubs == nil {
		r.Connections, r.ConnectionsRemaining = nil, 0
		return nil
	}
	deadline := time.Now().Add(proofPoll)
	delay := 2 * time.Millisecond
	for {
		conns, err := s.cfg.Hubs.UserConnections(ctx, accountPub, r.UserPublicKey)
		if err != nil {
			return Errorf(EUNAVAILABLE, "asking the hubs for connections: %v", err)
		}
		r.Connections, r.ConnectionsRemaining = conns, 0
		failed := 0
		for _, c := range conns {
			r.ConnectionsRemaining += c.Connections
			if c.Error != "" {
				failed++
			}
		}
		switch {
		case failed > 0 && time.Now().After(deadline):
			return Errorf(EUNAVAILABLE, "%d hub nodes could not be asked for connections", failed)
		case r.ConnectionsRemaining == 0 && failed == 0:
			return nil
		case time.Now().After(deadline):
			return Errorf(EUNAVAILABLE, "%d connections of the revoked user remain", r.ConnectionsRemaining)
		}
		select {
		case <-ctx.Done():
			return Errorf(EUNAVAILABLE, "proof interrupted: %v", ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// finishRevocation runs completeRevocation inline with the push timeout and
// returns r in whatever state it reached; the job retries a pending one.
func (s *Service) finishRevocation(ctx context.Context, r *Revocation) *Revocation {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.PushTimeout)
	defer cancel()
	out, err := s.completeRevocation(ctx, r)
	if err != nil {
		s.logger.WarnContext(ctx, "revocation not yet proven; the push job will retry",
			"tenant", r.TenantID, "kind", r.Kind, "target", r.TargetID, "err", err)
	}
	return out
}

// RevokeVehicle revokes a vehicle's key: the vehicle is disconnected from
// every hub node, cannot reconnect or renew, and comes back only by
// enrolling with a fresh key. Revoking a revoked vehicle returns its
// revocation (and retries the proof if it is still pending).
func (s *Service) RevokeVehicle(ctx context.Context, fleetSlug, vehicleID string) (*Revocation, error) {
	p, err := s.authorize(ctx, RoleMember)
	if err != nil {
		return nil, err
	}
	var r *Revocation
	err = s.store.Tx(ctx, func(tx Store) error {
		v, err := s.findVehicle(ctx, tx, p.TenantID, fleetSlug, vehicleID)
		if err != nil {
			return err
		}
		if v.UserPublicKey == "" {
			return Errorf(ECONFLICT, "vehicle %q has no credentials to revoke", vehicleID)
		}
		if v.Status == VehicleRevoked {
			r, err = tx.FindLatestRevocation(ctx, p.TenantID, RevokeVehicle, vehicleID)
			return err
		}
		if r, err = s.revokeKey(ctx, tx, p.TenantID, RevokeVehicle, vehicleID, v.UserPublicKey); err != nil {
			return err
		}
		if _, err := tx.SetVehicleEnrollment(ctx, p.TenantID, v.ID, VehicleEnrollment{
			UserPublicKey: v.UserPublicKey, CredentialsExpireAt: deref(v.CredentialsExpireAt), Status: VehicleRevoked,
		}); err != nil {
			return err
		}
		return s.audit(ctx, tx, p, "vehicle.revoke", "vehicle", vehicleID,
			map[string]any{"fleet": fleetSlug, "user_public_key": v.UserPublicKey, "revocation_id": r.ID})
	})
	if err != nil {
		return nil, err
	}
	if r.Status == RevocationPending {
		r = s.finishRevocation(ctx, r)
	}
	return r, nil
}

func deref(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// --- enrollment tokens ---

// CreateEnrollmentToken issues a token for vehicles to join a fleet.
func (s *Service) CreateEnrollmentToken(ctx context.Context, fleetSlug string, in EnrollmentTokenCreate) (*EnrollmentTokenCreated, error) {
	p, err := s.authorize(ctx, RoleMember)
	if err != nil {
		return nil, err
	}
	var v ValidationError
	now := s.now()
	switch {
	case in.ExpiresAt == nil:
		v.Add("expires_at", "is required (at most %d days ahead)", int(MaxEnrollmentTokenTTL.Hours()/24))
	case !in.ExpiresAt.After(now):
		v.Add("expires_at", "must be in the future")
	case in.ExpiresAt.Sub(now) > MaxEnrollmentTokenTTL:
		v.Add("expires_at", "must be at most %d days ahead", int(MaxEnrollmentTokenTTL.Hours()/24))
	}
	if in.MaxUses == 0 {
		in.MaxUses = 1
	}
	if in.MaxUses < 1 || in.MaxUses > 100_000 {
		v.Add("max_uses", "must be between 1 and 100000")
	}
	if in.VehicleID != "" {
		if !ValidVehicleID(in.VehicleID) {
			v.Add("vehicle_id", vehicleIDRule)
		} else if in.MaxUses != 1 {
			v.Add("max_uses", "must be 1 for a token bound to one vehicle_id")
		}
	}
	in.SourceCIDRs = validateCIDRs(&v, "source_cidrs", in.SourceCIDRs)
	validateDescription(&v, in.Description)
	if err := v.Err(); err != nil {
		return nil, err
	}
	var out *EnrollmentTokenCreated
	err = s.store.Tx(ctx, func(tx Store) error {
		f, err := s.findFleet(ctx, tx, p.TenantID, fleetSlug)
		if err != nil {
			return err
		}
		id, plaintext, hash := secret.New(secret.EnrollmentTokenPrefix)
		t := EnrollmentToken{ID: id, TenantID: p.TenantID, FleetID: f.ID, FleetSlug: f.Slug,
			Description: in.Description, ExpiresAt: in.ExpiresAt.UTC(), MaxUses: in.MaxUses,
			SourceCIDRs: in.SourceCIDRs, VehicleID: in.VehicleID, CreatedBy: p.ActorType + ":" + p.ActorID}
		if err := tx.CreateEnrollmentToken(ctx, &t, hash); err != nil {
			return err
		}
		out = &EnrollmentTokenCreated{EnrollmentToken: t, Secret: plaintext}
		details := map[string]any{"fleet": f.Slug, "expires_at": t.ExpiresAt.Format(time.RFC3339), "max_uses": t.MaxUses}
		if len(t.SourceCIDRs) > 0 {
			details["source_cidrs"] = t.SourceCIDRs
		}
		if t.VehicleID != "" {
			details["vehicle_id"] = t.VehicleID
		}
		return s.audit(ctx, tx, p, "enrollment_token.create", "enrollment_token", id, details)
	})
	return out, err
}

// validateCIDRs parses prefixes and returns them in canonical form.
func validateCIDRs(v *ValidationError, field string, in []string) []string {
	if len(in) > 32 {
		v.Add(field, "at most 32 networks")
		return nil
	}
	out := make([]string, 0, len(in))
	for _, c := range in {
		pfx, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			if a, aerr := netip.ParseAddr(strings.TrimSpace(c)); aerr == nil {
				pfx = netip.PrefixFrom(a, a.BitLen())
			} else {
				v.Add(field, "%q is not a network in CIDR notation (e.g. 203.0.113.0/24)", truncate(c, 64))
				continue
			}
		}
		out = append(out, pfx.Masked().String())
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// EnrollmentTokens lists a fleet's tokens, newest first; inactive (revoked,
// expired, used up) ones only when asked.
func (s *Service) EnrollmentTokens(ctx context.Context, fleetSlug string, page PageRequest, includeInactive bool) (*Page[*EnrollmentToken], error) {
	p, err := s.authorize(ctx, RoleMember)
	if err != nil {
		return nil, err
	}
	limit, after, err := page.decode()
	if err != nil {
		return nil, err
	}
	f, err := s.findFleet(ctx, s.store, p.TenantID, fleetSlug)
	if err != nil {
		return nil, err
	}
	ts, err := s.store.FindEnrollmentTokens(ctx, p.TenantID, EnrollmentTokenFilter{
		FleetID: f.ID, IncludeRevoked: includeInactive, After: after, Limit: limit + 1})
	if err != nil {
		return nil, err
	}
	return newPage(ts, limit, func(t *EnrollmentToken) string { return t.ID }), nil
}

// EnrollmentToken returns one of a fleet's tokens.
func (s *Service) EnrollmentToken(ctx context.Context, fleetSlug, id string) (*EnrollmentToken, error) {
	p, err := s.authorize(ctx, RoleMember)
	if err != nil {
		return nil, err
	}
	return s.findEnrollmentToken(ctx, s.store, p.TenantID, fleetSlug, id)
}

func (s *Service) findEnrollmentToken(ctx context.Context, st Store, tenantID, fleetSlug, id string) (*EnrollmentToken, error) {
	f, err := s.findFleet(ctx, st, tenantID, fleetSlug)
	if err != nil {
		return nil, err
	}
	t, err := st.FindEnrollmentTokenByID(ctx, tenantID, id)
	if ErrorCode(err) == ENOTFOUND || (err == nil && t.FleetID != f.ID) {
		return nil, Errorf(ENOTFOUND, "enrollment token %q not found in fleet %q", truncate(id, 64), fleetSlug)
	}
	return t, err
}

// RevokeEnrollmentToken revokes a token; vehicles it enrolled stay enrolled.
func (s *Service) RevokeEnrollmentToken(ctx context.Context, fleetSlug, id string) error {
	p, err := s.authorize(ctx, RoleMember)
	if err != nil {
		return err
	}
	return s.store.Tx(ctx, func(tx Store) error {
		if _, err := s.findEnrollmentToken(ctx, tx, p.TenantID, fleetSlug, id); err != nil {
			return err
		}
		if err := tx.RevokeEnrollmentToken(ctx, p.TenantID, id, s.now()); err != nil {
			if ErrorCode(err) == ENOTFOUND {
				return Errorf(ENOTFOUND, "enrollment token %q not found in fleet %q", id, fleetSlug)
			}
			return err
		}
		return s.audit(ctx, tx, p, "enrollment_token.revoke", "enrollment_token", id, map[string]any{"fleet": fleetSlug})
	})
}

// --- enrollment, renewal, credentials ---

// errBadToken is the one answer to every enrollment token problem (unknown,
// wrong secret, revoked, expired, used up, wrong source address), so that
// the endpoint is no oracle.
func errBadToken() error {
	return Errorf(EUNAUTHORIZED, "invalid, expired or used-up enrollment token")
}

// Enroll is /v1/enroll: a vehicle presents an enrollment token and the
// public half of an nkey it generated; it gets its user JWT and what it
// needs to connect. The token's use, the vehicle and the audit event are
// one transaction: concurrent uses of a single-use token yield one vehicle.
func (s *Service) Enroll(ctx context.Context, in EnrollRequest) (*VehicleCredentials, error) {
	iss, err := s.issuer()
	if err != nil {
		return nil, err
	}
	var v ValidationError
	if in.Token == "" {
		v.Add("token", "is required")
	}
	if err := natsauth.ValidateUserPublicKey(in.PublicKey); err != nil {
		v.Add("public_key", "%v", err)
	}
	if in.VehicleID != "" && !ValidVehicleID(in.VehicleID) {
		v.Add("vehicle_id", vehicleIDRule)
	}
	validateAgentField(&v, "hostname", in.Hostname, 253)
	validateAgentField(&v, "arch", in.Arch, 32)
	validateAgentField(&v, "agent_version", in.AgentVersion, 64)
	if err := v.Err(); err != nil {
		return nil, err
	}
	id, sec, err := secret.Parse(secret.EnrollmentTokenPrefix, in.Token)
	if err != nil {
		return nil, errBadToken()
	}
	ea, err := s.store.FindEnrollmentForAuth(ctx, id)
	if ErrorCode(err) == ENOTFOUND {
		return nil, errBadToken()
	} else if err != nil {
		return nil, err
	}
	tok, hash := ea.Token, ea.Hash
	now := s.now()
	if !secret.Equal(sec, hash) || tok.RevokedAt != nil || !now.Before(tok.ExpiresAt) ||
		tok.Uses >= tok.MaxUses || !sourceAllowed(RequestMetaFromContext(ctx).SourceIP, tok.SourceCIDRs) {
		return nil, errBadToken()
	}
	vid := tok.VehicleID
	if vid == "" {
		vid = in.VehicleID
	} else if in.VehicleID != "" && in.VehicleID != vid {
		return nil, fieldError("vehicle_id", "this token enrolls vehicle %q only", vid)
	}
	if vid == "" {
		vid = "veh-" + strings.ToLower(secret.NewID()[:10])
	}
	meta := RequestMetaFromContext(ctx)
	p := &Principal{TenantID: tok.TenantID, Role: RoleMember, ActorType: "enrollment_token", ActorID: tok.ID,
		SourceIP: meta.SourceIP, RequestID: meta.RequestID}
	var creds *VehicleCredentials
	var rotated *Revocation
	f := ea.Fleet
	err = s.store.Tx(ctx, func(tx Store) error {
		veh, err := tx.FindVehicle(ctx, tok.TenantID, f.ID, vid)
		switch {
		case ErrorCode(err) == ENOTFOUND:
			if err := s.checkVehicleQuota(ctx, tx, tok.TenantID); err != nil {
				return err
			}
			// Inserted already enrolled by bindVehicleKey (ID == 0).
			veh = &Vehicle{TenantID: tok.TenantID, FleetID: f.ID, FleetSlug: f.Slug, VehicleID: vid,
				Name: vid, Labels: map[string]string{}, Status: VehiclePending}
		case err != nil:
			return err
		case veh.Status != VehiclePending && tok.VehicleID != vid:
			// A fleet-wide token must not take over a vehicle that holds
			// (or held) credentials: that needs the operator's intent.
			return Errorf(ECONFLICT, "vehicle %q is already enrolled; enrolling it again needs a token created for vehicle_id %q", vid, vid)
		}
		if creds, rotated, err = s.bindVehicleKey(ctx, tx, iss, p, f, veh, ea.Account, in.PublicKey, &in, "vehicle.enroll"); err != nil {
			return err
		}
		// Last, so that the token's row lock is held only at the end of
		// the transaction: a concurrent use of a single-use token waits
		// here and fails once the first commits, rolling its vehicle back.
		if err := tx.UseEnrollmentToken(ctx, tok.ID, now); err != nil {
			if ErrorCode(err) == ECONFLICT || ErrorCode(err) == ENOTFOUND {
				return errBadToken()
			}
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if rotated != nil {
		s.finishRevocation(ctx, rotated)
	}
	return creds, nil
}

// fieldError is a validation error on one field (so that problem+json
// lists it under errors[]).
func fieldError(field, format string, args ...any) error {
	var v ValidationError
	v.Add(field, format, args...)
	return v.Err()
}

func validateAgentField(v *ValidationError, field, val string, max int) {
	switch {
	case len(val) > max:
		v.Add(field, "must be at most %d bytes", max)
	case !utf8.ValidString(val) || strings.ContainsFunc(val, isControl):
		v.Add(field, "must be printable UTF-8")
	}
}

// sourceAllowed reports whether ip is inside one of cidrs (none = any).
func sourceAllowed(ip string, cidrs []string) bool {
	if len(cidrs) == 0 {
		return true
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil && p.Contains(a) {
			return true
		}
	}
	return false
}

// bindVehicleKey gives vehicle v the user key pub and signs its JWT, inside
// tx. A vehicle that held another live key gets that key revoked (a
// re-installed vehicle must not leave its old credentials valid); the
// returned Revocation is then to be finished after the commit. A key that
// was ever revoked in this account is refused: re-enrollment needs a fresh
// nkey (a JWT re-issued to a revoked key within the same second would be
// revoked too, and a revoked key may be compromised).
//
// a is the tenant's account when the caller has read it already (nil: read
// it here); it needs its keys and revocations, not a lock.
func (s *Service) bindVehicleKey(ctx context.Context, tx Store, iss Issuer, p *Principal, f *Fleet, v *Vehicle,
	a *Account, pub string, in *EnrollRequest, action string) (*VehicleCredentials, *Revocation, error) {
	if v.Status == VehicleDisabled {
		return nil, nil, Errorf(ECONFLICT, "vehicle %q is disabled; enable it first", v.VehicleID)
	}
	var err error
	if a == nil {
		if a, err = tx.FindAccount(ctx, p.TenantID, false); err != nil {
			return nil, nil, err
		}
	}
	if _, revoked := a.Revocations[pub]; revoked {
		return nil, nil, fieldError("public_key", "this key was revoked; generate a fresh nkey and enroll with it")
	}
	var rotated *Revocation
	if v.UserPublicKey != "" && v.UserPublicKey != pub && v.Status == VehicleActive {
		if rotated, err = s.revokeKey(ctx, tx, p.TenantID, RevokeVehicle, v.VehicleID, v.UserPublicKey); err != nil {
			return nil, nil, err
		}
		if a, err = tx.FindAccount(ctx, p.TenantID, false); err != nil {
			return nil, nil, err
		}
	}
	now := s.now()
	exp := now.Add(s.cfg.VehicleCredentialTTL).Truncate(time.Second)
	jwt, err := iss.SignVehicle(a, pub, natsauth.VehicleIdentity{
		TenantID: p.TenantID, Fleet: f.Slug, Env: f.Environment, VehicleID: v.VehicleID}, exp)
	if err != nil {
		return nil, nil, fmt.Errorf("signing the vehicle JWT: %w", err)
	}
	var out *Vehicle
	if v.ID == 0 {
		// A new vehicle: one INSERT, already enrolled.
		out = v
		out.UserPublicKey, out.CredentialsExpireAt, out.Status, out.EnrolledAt = pub, &exp, VehicleActive, &now
		if in != nil {
			out.Hostname, out.Arch, out.AgentVersion = in.Hostname, in.Arch, in.AgentVersion
		}
		err = tx.CreateVehicle(ctx, out)
	} else {
		e := VehicleEnrollment{UserPublicKey: pub, CredentialsExpireAt: exp, Status: VehicleActive, EnrolledAt: &now}
		if in != nil {
			e.Hostname, e.Arch, e.AgentVersion = &in.Hostname, &in.Arch, &in.AgentVersion
		}
		out, err = tx.SetVehicleEnrollment(ctx, p.TenantID, v.ID, e)
	}
	if ErrorCode(err) == ECONFLICT {
		if strings.Contains(ErrorMessage(err), "user key") {
			return nil, nil, Errorf(ECONFLICT, "public_key: this key is already in use; generate a fresh nkey")
		}
		return nil, nil, Errorf(ECONFLICT, "vehicle %q already exists in this tenant (in another fleet, or enrolled at this moment)", v.VehicleID)
	} else if err != nil {
		return nil, nil, err
	}
	out.FleetSlug = f.Slug
	details := map[string]any{"fleet": f.Slug, "user_public_key": pub, "expires_at": exp.UTC().Format(time.RFC3339)}
	if rotated != nil {
		details["replaced_key"] = rotated.UserPublicKey
		details["revocation_id"] = rotated.ID
	}
	if err := s.audit(ctx, tx, p, action, "vehicle", v.VehicleID, details); err != nil {
		return nil, nil, err
	}
	return s.vehicleCredentials(out, f, a, jwt, now, exp), rotated, nil
}

func (s *Service) vehicleCredentials(v *Vehicle, f *Fleet, a *Account, jwt string, issued, exp time.Time) *VehicleCredentials {
	r := s.region(f.Region)
	return &VehicleCredentials{
		Vehicle:         v,
		JWT:             jwt,
		ExpiresAt:       exp,
		RenewAfter:      issued.Add(exp.Sub(issued) / 2).Truncate(time.Second),
		AccountKey:      a.PublicKey,
		Region:          r.Name,
		LeafURLs:        slices.Clone(r.LeafURLs),
		CABundle:        r.CABundle,
		SubjectPrefix:   natsauth.VehicleSubjectPrefix(f.Environment, v.VehicleID),
		IngestSubject:   natsauth.IngestSubject(f.Environment, v.VehicleID),
		InboxPrefix:     natsauth.VehicleInboxPrefix(v.VehicleID),
		JetStreamDomain: JetStreamDomain(v.TenantID, v.VehicleID),
	}
}

// JetStreamDomain is a vehicle's local JetStream domain: unique on a hub
// (vehicle IDs are unique per tenant, so the tenant is part of it) and a
// valid subject token.
func JetStreamDomain(tenantID, vehicleID string) string {
	t := strings.ReplaceAll(tenantID, "-", "")
	if len(t) > 12 {
		t = t[:12]
	}
	return "v" + t + "-" + vehicleID
}

// IssueVehicleCredentials signs a JWT for a pre-registered vehicle's key
// (for vehicles provisioned without the install script).
func (s *Service) IssueVehicleCredentials(ctx context.Context, fleetSlug, vehicleID, publicKey string) (*VehicleCredentials, error) {
	p, err := s.authorize(ctx, RoleMember)
	if err != nil {
		return nil, err
	}
	iss, err := s.issuer()
	if err != nil {
		return nil, err
	}
	if err := natsauth.ValidateUserPublicKey(publicKey); err != nil {
		return nil, fieldError("public_key", "%v", err)
	}
	var creds *VehicleCredentials
	var rotated *Revocation
	err = s.store.Tx(ctx, func(tx Store) error {
		f, err := s.findFleet(ctx, tx, p.TenantID, fleetSlug)
		if err != nil {
			return err
		}
		v, err := s.findVehicle(ctx, tx, p.TenantID, fleetSlug, vehicleID)
		if err != nil {
			return err
		}
		creds, rotated, err = s.bindVehicleKey(ctx, tx, iss, p, f, v, nil, publicKey, nil, "vehicle.credentials")
		return err
	})
	if err != nil {
		return nil, err
	}
	if rotated != nil {
		s.finishRevocation(ctx, rotated)
	}
	return creds, nil
}

// NewAgentNonce issues a single-use renewal challenge for an enrolled
// vehicle's public key.
func (s *Service) NewAgentNonce(ctx context.Context, publicKey string) (*AgentNonce, error) {
	if err := natsauth.ValidateUserPublicKey(publicKey); err != nil {
		return nil, fieldError("public_key", "%v", err)
	}
	v, err := s.store.FindVehicleByUserKey(ctx, publicKey)
	if ErrorCode(err) == ENOTFOUND || (err == nil && v.Status != VehicleActive) {
		return nil, Errorf(EUNAUTHORIZED, "no active vehicle holds this key; enroll again")
	} else if err != nil {
		return nil, err
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go ≥ 1.24)
	n := &AgentNonce{Nonce: base64.RawURLEncoding.EncodeToString(b), ExpiresAt: s.now().Add(agentNonceTTL).Truncate(time.Second)}
	if err := s.store.CreateAgentNonce(ctx, publicKey, n.Nonce, n.ExpiresAt); err != nil {
		return nil, err
	}
	return n, nil
}

// RenewAgent re-issues a vehicle's JWT for the key that signed a nonce from
// NewAgentNonce. Revoked, disabled and deleted vehicles cannot renew.
func (s *Service) RenewAgent(ctx context.Context, in RenewRequest) (*VehicleCredentials, error) {
	iss, err := s.issuer()
	if err != nil {
		return nil, err
	}
	if err := s.agentProof(ctx, in); err != nil {
		return nil, err
	}
	now := s.now()
	var creds *VehicleCredentials
	err = s.store.Tx(ctx, func(tx Store) error {
		v, err := tx.FindVehicleByUserKey(ctx, in.PublicKey)
		if ErrorCode(err) == ENOTFOUND {
			return Errorf(EUNAUTHORIZED, "no vehicle holds this key; enroll again")
		} else if err != nil {
			return err
		}
		if v.Status != VehicleActive {
			return Errorf(EFORBIDDEN, "vehicle %q is %s and cannot renew its credentials", v.VehicleID, v.Status)
		}
		f, err := s.findFleet(ctx, tx, v.TenantID, v.FleetSlug)
		if err != nil {
			return err
		}
		a, err := tx.FindAccount(ctx, v.TenantID, false)
		if err != nil {
			return err
		}
		if _, revoked := a.Revocations[in.PublicKey]; revoked {
			return Errorf(EFORBIDDEN, "this key was revoked; enroll again with a fresh nkey")
		}
		exp := now.Add(s.cfg.VehicleCredentialTTL).Truncate(time.Second)
		jwt, err := iss.SignVehicle(a, in.PublicKey, natsauth.VehicleIdentity{
			TenantID: v.TenantID, Fleet: f.Slug, Env: f.Environment, VehicleID: v.VehicleID}, exp)
		if err != nil {
			return fmt.Errorf("signing the vehicle JWT: %w", err)
		}
		out, err := tx.SetVehicleEnrollment(ctx, v.TenantID, v.ID, VehicleEnrollment{
			UserPublicKey: in.PublicKey, CredentialsExpireAt: exp, Status: VehicleActive})
		if err != nil {
			return err
		}
		out.FleetSlug = f.Slug
		meta := RequestMetaFromContext(ctx)
		p := &Principal{TenantID: v.TenantID, ActorType: "vehicle", ActorID: v.VehicleID, SourceIP: meta.SourceIP, RequestID: meta.RequestID}
		if err := s.audit(ctx, tx, p, "vehicle.renew", "vehicle", v.VehicleID,
			map[string]any{"fleet": f.Slug, "expires_at": exp.UTC().Format(time.RFC3339)}); err != nil {
			return err
		}
		creds = s.vehicleCredentials(out, f, a, jwt, now, exp)
		return nil
	})
	return creds, err
}

// agentProof checks a proof of possession: the single-use nonce from
// NewAgentNonce, signed with the vehicle's nkey. It consumes the nonce.
func (s *Service) agentProof(ctx context.Context, in RenewRequest) error {
	if err := natsauth.ValidateUserPublicKey(in.PublicKey); err != nil {
		return fieldError("public_key", "%v", err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(in.Signature, "="))
	if err != nil || len(sig) == 0 {
		return fieldError("signature", "must be the base64url nkey signature of the nonce")
	}
	if in.Nonce == "" || len(in.Nonce) > 128 {
		return fieldError("nonce", "must be the nonce from POST /v1/agent/nonce")
	}
	if err := s.store.ConsumeAgentNonce(ctx, in.PublicKey, in.Nonce, s.now()); err != nil {
		if ErrorCode(err) == ENOTFOUND {
			return Errorf(EUNAUTHORIZED, "unknown, used or expired nonce; request a new one")
		}
		return err
	}
	if err := natsauth.VerifyUserSignature(in.PublicKey, []byte(in.Nonce), sig); err != nil {
		return Errorf(EUNAUTHORIZED, "the signature does not verify with this public key")
	}
	return nil
}

// IngestPosition is the last message of a vehicle stored in hub history:
// its forwarder's resume point after an outage longer than the hub's
// dedupe window (ADR 0009).
type IngestPosition struct {
	MsgID    string // Nats-Msg-Id; "" = nothing stored
	Sequence uint64
	StoredAt *time.Time
}

// AgentIngestPosition returns the vehicle's last stored message in hub
// history, for the key that signed a nonce from NewAgentNonce.
func (s *Service) AgentIngestPosition(ctx context.Context, in RenewRequest) (*IngestPosition, error) {
	if err := s.agentProof(ctx, in); err != nil {
		return nil, err
	}
	v, err := s.store.FindVehicleByUserKey(ctx, in.PublicKey)
	if ErrorCode(err) == ENOTFOUND {
		return nil, Errorf(EUNAUTHORIZED, "no vehicle holds this key; enroll again")
	} else if err != nil {
		return nil, err
	}
	if v.Status != VehicleActive {
		return nil, Errorf(EFORBIDDEN, "vehicle %q is %s", v.VehicleID, v.Status)
	}
	f, err := s.findFleet(ctx, s.store, v.TenantID, v.FleetSlug)
	if err != nil {
		return nil, err
	}
	tel, err := s.telemetry()
	if err != nil {
		return nil, err
	}
	msgs, err := tel.LastMessages(ctx, s.telemetryTarget(v.TenantID, f.Region),
		LastQuery{Subjects: []string{natsauth.VehicleSubjectPrefix(f.Environment, v.VehicleID) + ".>"}})
	if err != nil {
		return nil, twinError(err, f.Region)
	}
	pos := &IngestPosition{}
	for _, m := range msgs {
		if m.Sequence > pos.Sequence {
			at := m.StoredAt
			pos.MsgID, pos.Sequence, pos.StoredAt = m.MsgID, m.Sequence, &at
		}
	}
	return pos, nil
}

// PruneAgentNonces removes expired renewal challenges.
func (s *Service) PruneAgentNonces(ctx context.Context) (int64, error) {
	return s.store.DeleteExpiredAgentNonces(ctx, s.now())
}

// --- grants ---

// DryRunGrantID stands for the grant's ID in the reply subjects of a dry
// run's permissions (fleet.<env>.veh.<vid>.rpl.grant.GRANT_ID.>).
const DryRunGrantID = "GRANT_ID"

// CreateGrant issues a grant: a user JWT with explicit subjects, a
// mandatory expiry and optional network and time-of-day limits. DryRun
// returns the exact permissions without issuing or storing anything.
func (s *Service) CreateGrant(ctx context.Context, in GrantCreate) (*GrantCreated, error) {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return nil, err
	}
	iss, err := s.issuer()
	if err != nil {
		return nil, err
	}
	var v ValidationError
	now := s.now()
	maxTTL := s.cfg.MaxGrantTTL
	switch {
	case in.ExpiresAt == nil:
		v.Add("expires_at", "is required (at most %s ahead)", days(maxTTL))
	case !in.ExpiresAt.After(now):
		v.Add("expires_at", "must be in the future")
	case in.ExpiresAt.Sub(now) > maxTTL:
		v.Add("expires_at", "must be at most %s ahead", days(maxTTL))
	}
	validateDescription(&v, in.Description)
	if in.PublicKey != "" {
		if err := natsauth.ValidateUserPublicKey(in.PublicKey); err != nil {
			v.Add("public_key", "%v", err)
		}
	}
	in.SourceCIDRs = validateCIDRs(&v, "source_cidrs", in.SourceCIDRs)
	windows := make([]TimeWindow, 0, len(in.TimeWindows))
	for i, w := range in.TimeWindows {
		if _, err := natsauth.TimeWindow(w.Start, w.End); err != nil {
			v.Add(fmt.Sprintf("time_windows[%d]", i), "%v", err)
		}
		windows = append(windows, w)
	}
	if in.Locale != "" {
		if _, err := time.LoadLocation(in.Locale); err != nil || len(in.Locale) > 64 {
			v.Add("locale", "must be an IANA time zone such as Europe/Berlin")
		}
	}
	for _, ct := range in.ConnectionTypes {
		if ct != "STANDARD" && ct != "WEBSOCKET" {
			v.Add("connection_types", "%q: must be STANDARD or WEBSOCKET", truncate(ct, 32))
		}
	}
	if len(in.ConnectionTypes) == 0 {
		in.ConnectionTypes = []string{"STANDARD", "WEBSOCKET"}
	}
	slices.Sort(in.ConnectionTypes)
	in.ConnectionTypes = slices.Compact(in.ConnectionTypes)
	for i, sub := range in.Publish {
		if err := natsauth.ValidateGrantSubject(sub); err != nil {
			v.Add(fmt.Sprintf("publish[%d]", i), "%v", err)
		}
	}
	for i, sub := range in.Subscribe {
		if err := natsauth.ValidateGrantSubject(sub); err != nil {
			v.Add(fmt.Sprintf("subscribe[%d]", i), "%v", err)
		}
	}
	if len(in.Scopes) == 0 && len(in.Publish) == 0 && len(in.Subscribe) == 0 {
		v.Add("scopes", "a grant needs scopes or explicit publish/subscribe subjects")
	}
	if len(in.Scopes) > 50 || len(in.Publish)+len(in.Subscribe) > 200 {
		v.Add("scopes", "at most 50 scopes and 200 explicit subjects")
	}
	for i, sc := range in.Scopes {
		field := fmt.Sprintf("scopes[%d]", i)
		if !ValidSlug(sc.Fleet) {
			v.Add(field+".fleet", "must be a fleet slug")
		}
		if len(sc.Categories) == 0 {
			v.Add(field+".categories", "at least one of state, evt, agent, cmd")
		}
		for _, c := range sc.Categories {
			switch c {
			case natsauth.CategoryState, natsauth.CategoryEvents, natsauth.CategoryAgent:
			case natsauth.CategoryCommands:
				if len(sc.VehicleIDs) == 0 {
					v.Add(field+".categories", "cmd needs explicit vehicle_ids: commands are never granted fleet-wide")
				}
			default:
				v.Add(field+".categories", "%q: must be state, evt, agent or cmd", truncate(string(c), 32))
			}
		}
		if len(sc.VehicleIDs) > 1000 {
			v.Add(field+".vehicle_ids", "at most 1000 vehicles")
		}
		for _, vid := range sc.VehicleIDs {
			if !ValidVehicleID(vid) {
				v.Add(field+".vehicle_ids", "%q is not a vehicle ID", truncate(vid, 64))
			}
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}

	g := &Grant{ID: strings.ToLower(secret.NewID()), TenantID: p.TenantID, Description: in.Description,
		Scopes: in.Scopes, ExpiresAt: in.ExpiresAt.UTC().Truncate(time.Second), SourceCIDRs: in.SourceCIDRs,
		TimeWindows: windows, Locale: in.Locale, ConnectionTypes: in.ConnectionTypes,
		CreatedBy: p.ActorType + ":" + p.ActorID}
	scopes, region, err := s.resolveGrantScopes(ctx, p.TenantID, in.Scopes)
	if err != nil {
		return nil, err
	}
	g.Region = region
	if len(scopes) > 0 {
		name := g.ID
		if in.DryRun {
			// The grant's ID is made when it is issued: a preview shows
			// where it goes in command reply subjects.
			name = DryRunGrantID
		}
		if g.Publish, g.Subscribe, err = natsauth.GrantPermissions(name, scopes...); err != nil {
			return nil, fieldError("scopes", "%v", err)
		}
	}
	g.Publish = sortedUnion(g.Publish, in.Publish)
	g.Subscribe = sortedUnion(g.Subscribe, in.Subscribe)
	if in.DryRun {
		g.ID, g.UserPublicKey = "", in.PublicKey
		return &GrantCreated{Grant: *g}, nil
	}

	g.UserPublicKey = in.PublicKey
	var seed []byte
	if in.PublicKey == "" {
		k, err := natsauth.NewUserKey()
		if err != nil {
			return nil, err
		}
		g.UserPublicKey, seed = k.Public, k.Seed
		defer clear(seed)
	}
	spec := natsauth.GrantSpec{Name: g.ID, Publish: g.Publish, Subscribe: g.Subscribe, Expires: g.ExpiresAt,
		SourceCIDRs: g.SourceCIDRs, Locale: g.Locale, ConnectionTypes: g.ConnectionTypes}
	for _, w := range g.TimeWindows {
		tr, _ := natsauth.TimeWindow(w.Start, w.End) // validated above
		spec.TimeWindows = append(spec.TimeWindows, tr)
	}
	out := &GrantCreated{}
	err = s.store.Tx(ctx, func(tx Store) error {
		if err := s.checkGrantQuota(ctx, tx, p.TenantID); err != nil {
			return err
		}
		a, err := tx.FindAccount(ctx, p.TenantID, false)
		if err != nil {
			return err
		}
		if _, revoked := a.Revocations[g.UserPublicKey]; revoked {
			return fieldError("public_key", "this key was revoked; generate a fresh nkey")
		}
		if out.JWT, err = iss.SignGrant(a, g.UserPublicKey, spec); err != nil {
			return Errorf(EINVALID, "the grant cannot be signed: %v", err)
		}
		if err := tx.CreateGrant(ctx, g); err != nil {
			if ErrorCode(err) == ECONFLICT {
				return Errorf(ECONFLICT, "public_key: this key is already in use; generate a fresh nkey")
			}
			return err
		}
		return s.audit(ctx, tx, p, "grant.create", "grant", g.ID, map[string]any{
			"description": g.Description, "user_public_key": g.UserPublicKey, "publish": g.Publish,
			"subscribe": g.Subscribe, "expires_at": g.ExpiresAt.Format(time.RFC3339),
			"source_cidrs": g.SourceCIDRs, "connection_types": g.ConnectionTypes, "key_made_by_server": seed != nil,
		})
	})
	if err != nil {
		return nil, err
	}
	out.Grant = *g
	if seed != nil {
		if out.Creds, err = natsauth.FormatCreds(out.JWT, seed); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func days(d time.Duration) string {
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}

func sortedUnion(a, b []string) []string {
	out := append(slices.Clone(a), b...)
	slices.Sort(out)
	return slices.Compact(out)
}

// resolveGrantScopes turns fleet scopes into subject scopes. Fleets are not
// part of subjects (fleet.<env>.veh.<vid>...), so a fleet-wide scope means
// "every vehicle of the fleet's environment"; it is refused when another
// fleet of the tenant shares that environment, since it would reach that
// fleet's vehicles too. Listed vehicles must belong to the fleet.
func (s *Service) resolveGrantScopes(ctx context.Context, tenantID string, in []GrantScopeSpec) ([]natsauth.GrantScope, string, error) {
	if len(in) == 0 {
		if len(s.cfg.Regions) > 0 {
			return nil, s.cfg.Regions[0].Name, nil
		}
		return nil, "", nil
	}
	var out []natsauth.GrantScope
	var region string
	var fleets []*Fleet
	for i, sc := range in {
		f, err := s.findFleet(ctx, s.store, tenantID, sc.Fleet)
		if err != nil {
			return nil, "", err
		}
		if region == "" {
			region = f.Region
		}
		if len(sc.VehicleIDs) == 0 {
			if fleets == nil {
				if fleets, err = s.store.FindFleets(ctx, tenantID, FleetFilter{Limit: 10_000}); err != nil {
					return nil, "", err
				}
			}
			for _, o := range fleets {
				if o.ID != f.ID && o.Environment == f.Environment {
					return nil, "", fieldError(fmt.Sprintf("scopes[%d]", i), "fleets %q and %q share environment %q, so a fleet-wide grant would reach both; list vehicle_ids",
						f.Slug, o.Slug, f.Environment)
				}
			}
		}
		for _, vid := range sc.VehicleIDs {
			if _, err := s.store.FindVehicle(ctx, tenantID, f.ID, vid); ErrorCode(err) == ENOTFOUND {
				return nil, "", fieldError(fmt.Sprintf("scopes[%d].vehicle_ids", i), "vehicle %q is not in fleet %q", vid, f.Slug)
			} else if err != nil {
				return nil, "", err
			}
		}
		out = append(out, natsauth.GrantScope{Env: f.Environment, VehicleIDs: sc.VehicleIDs, Categories: sc.Categories})
	}
	return out, region, nil
}

// Grants lists the tenant's grants, newest first.
func (s *Service) Grants(ctx context.Context, page PageRequest, includeInactive bool) (*Page[*Grant], error) {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return nil, err
	}
	limit, after, err := page.decode()
	if err != nil {
		return nil, err
	}
	gs, err := s.store.FindGrants(ctx, p.TenantID, GrantFilter{IncludeInactive: includeInactive, Now: s.now(), After: after, Limit: limit + 1})
	if err != nil {
		return nil, err
	}
	return newPage(gs, limit, func(g *Grant) string { return g.ID }), nil
}

// Grant returns one grant with its latest revocation.
func (s *Service) Grant(ctx context.Context, id string) (*Grant, error) {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return nil, err
	}
	return s.findGrant(ctx, s.store, p.TenantID, id)
}

func (s *Service) findGrant(ctx context.Context, st Store, tenantID, id string) (*Grant, error) {
	g, err := st.FindGrant(ctx, tenantID, id)
	if ErrorCode(err) == ENOTFOUND {
		return nil, Errorf(ENOTFOUND, "grant %q not found", truncate(id, 64))
	} else if err != nil {
		return nil, err
	}
	if g.RevokedAt != nil {
		r, err := st.FindLatestRevocation(ctx, tenantID, RevokeGrant, g.ID)
		if err != nil && ErrorCode(err) != ENOTFOUND {
			return nil, err
		}
		g.Revocation = r
	}
	return g, nil
}

// RevokeGrant revokes a grant's key: its connections are closed on every
// hub node and it cannot connect again. Revoking a revoked grant returns
// its revocation.
func (s *Service) RevokeGrant(ctx context.Context, id string) (*Revocation, error) {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return nil, err
	}
	var r *Revocation
	err = s.store.Tx(ctx, func(tx Store) error {
		g, err := s.findGrant(ctx, tx, p.TenantID, id)
		if err != nil {
			return err
		}
		if g.RevokedAt != nil && g.Revocation != nil {
			r = g.Revocation
			return nil
		}
		if r, err = s.revokeKey(ctx, tx, p.TenantID, RevokeGrant, g.ID, g.UserPublicKey); err != nil {
			return err
		}
		if err := tx.RevokeGrant(ctx, p.TenantID, g.ID, s.now()); err != nil {
			return err
		}
		return s.audit(ctx, tx, p, "grant.revoke", "grant", g.ID,
			map[string]any{"user_public_key": g.UserPublicKey, "revocation_id": r.ID})
	})
	if err != nil {
		return nil, err
	}
	if r.Status == RevocationPending {
		r = s.finishRevocation(ctx, r)
	}
	return r, nil
}

// GrantContext returns a `nats` CLI context for a grant: the hub client URLs
// of its region and the path where the holder keeps its creds file.
func (s *Service) GrantContext(ctx context.Context, id string) (*GrantContext, error) {
	p, err := s.authorize(ctx, RoleAdmin)
	if err != nil {
		return nil, err
	}
	g, err := s.findGrant(ctx, s.store, p.TenantID, id)
	if err != nil {
		return nil, err
	}
	r := s.region(g.Region)
	if len(r.ClientURLs) == 0 {
		return nil, Errorf(EUNAVAILABLE, "region %q has no client URLs configured", g.Region)
	}
	name := "fleetplane-" + g.ID
	desc := "Fleetplane grant " + g.ID
	if g.Description != "" {
		desc += ": " + g.Description
	}
	return &GrantContext{Name: name,
		Context: natsauth.CLIContext(desc, strings.Join(r.ClientURLs, ","), "~/.config/fleetplane/"+name+".creds")}, nil
}
