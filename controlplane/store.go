package controlplane

import (
	"context"
	"time"
)

// Store is the persistence the Service consumes. Every method that touches
// tenant data takes the tenant ID and scopes its query by it: another
// tenant's row is indistinguishable from a missing one (ENOTFOUND).
//
// Methods return coded errors: ENOTFOUND for a missing row, ECONFLICT for a
// uniqueness or in-use violation. They never return (nil, nil).
type Store interface {
	// Tx runs fn with a Store bound to one transaction; fn's error rolls back.
	Tx(ctx context.Context, fn func(Store) error) error
	// Ping checks that the database answers.
	Ping(ctx context.Context) error

	CreateTenant(ctx context.Context, t *Tenant) error // sets ID, CreatedAt, UpdatedAt
	FindTenantByID(ctx context.Context, id string) (*Tenant, error)
	// LockTenant is FindTenantByID locking the row until the transaction
	// ends (FOR NO KEY UPDATE: serializes quota checks and plan changes).
	LockTenant(ctx context.Context, id string) (*Tenant, error)
	// UpdateTenantPlan stores t's Plan, GracePlan and GraceUntil.
	UpdateTenantPlan(ctx context.Context, t *Tenant) error // sets UpdatedAt
	// FindTenantsGraceExpired returns the IDs of tenants whose grace ended by at.
	FindTenantsGraceExpired(ctx context.Context, at time.Time, limit int) ([]string, error)
	// CountActiveGrants counts unrevoked grants not expired at at.
	CountActiveGrants(ctx context.Context, tenantID string, at time.Time) (int, error)

	// CreateUser stores u with its password hash ("" = no password set).
	// An e-mail that exists answers ECONFLICT.
	CreateUser(ctx context.Context, u *User, passwordHash string) error
	CreateMembership(ctx context.Context, m *Membership) error
	// FindOwnerMembershipByEmail returns the oldest owner membership of the
	// user with this (lower-cased) e-mail: for operator tasks only.
	FindOwnerMembershipByEmail(ctx context.Context, email string) (*Membership, error)

	CreateAPIKey(ctx context.Context, k *APIKey, hash []byte) error // sets CreatedAt
	// FindAPIKeyForAuth finds a key by its globally unique ID, for
	// authentication only: it is the one lookup not scoped by tenant.
	FindAPIKeyForAuth(ctx context.Context, id string) (*APIKey, []byte, error)
	// TouchAPIKey records a use; it writes at most once a minute per key.
	TouchAPIKey(ctx context.Context, id string, at time.Time) error
	FindAPIKeyByID(ctx context.Context, tenantID, id string) (*APIKey, error)
	FindAPIKeys(ctx context.Context, tenantID string, f APIKeyFilter) ([]*APIKey, error)
	// RevokeAPIKey sets revoked_at; revoking a revoked key answers ENOTFOUND.
	RevokeAPIKey(ctx context.Context, tenantID, id string, at time.Time) error

	CreateFleet(ctx context.Context, f *Fleet) error // sets ID, CreatedAt, UpdatedAt
	FindFleetBySlug(ctx context.Context, tenantID, slug string) (*Fleet, error)
	FindFleets(ctx context.Context, tenantID string, f FleetFilter) ([]*Fleet, error)
	UpdateFleet(ctx context.Context, tenantID string, id int64, u FleetUpdate) (*Fleet, error)
	// DeleteFleet deletes an empty fleet; one with vehicles answers ECONFLICT.
	DeleteFleet(ctx context.Context, tenantID string, id int64) error

	CreateVehicle(ctx context.Context, v *Vehicle) error // sets ID, CreatedAt, UpdatedAt
	FindVehicle(ctx context.Context, tenantID string, fleetID int64, vehicleID string) (*Vehicle, error)
	FindVehicles(ctx context.Context, tenantID string, f VehicleFilter) ([]*Vehicle, error)
	CountVehicles(ctx context.Context, tenantID string) (int, error)
	UpdateVehicle(ctx context.Context, tenantID string, id int64, c VehicleChange) (*Vehicle, error)
	DeleteVehicle(ctx context.Context, tenantID string, id int64) error

	CreateAuditEvent(ctx context.Context, e *AuditEvent) error // sets ID, At
	FindAuditEvents(ctx context.Context, tenantID string, f AuditFilter) ([]*AuditEvent, error)

	// --- NATS identity (identity.go) ---

	// CreateOperator stores the operator; one that exists answers ECONFLICT.
	CreateOperator(ctx context.Context, op *Operator) error // sets CreatedAt
	FindOperator(ctx context.Context) (*Operator, error)

	CreateAccount(ctx context.Context, a *Account) error // sets CreatedAt, UpdatedAt
	// FindAccount returns a tenant's account; forUpdate locks its row until
	// the transaction ends (use inside Tx to serialize version changes).
	FindAccount(ctx context.Context, tenantID string, forUpdate bool) (*Account, error)
	// UpdateAccount writes Limits, Revocations, Version and JWT.
	UpdateAccount(ctx context.Context, a *Account) error // sets UpdatedAt
	// MarkAccountPushed raises PushedVersion to version (never lowers it).
	MarkAccountPushed(ctx context.Context, tenantID string, version int64, at time.Time) error
	// FindAccountsBehind lists accounts whose PushedVersion < Version.
	FindAccountsBehind(ctx context.Context, limit int) ([]*Account, error)
	// EnqueueAccountPush inserts a durable push job, runnable at runAt, in
	// the store's transaction.
	EnqueueAccountPush(ctx context.Context, job AccountPushJob, runAt time.Time) error

	CreateEnrollmentToken(ctx context.Context, t *EnrollmentToken, hash []byte) error // sets CreatedAt
	FindEnrollmentTokenByID(ctx context.Context, tenantID, id string) (*EnrollmentToken, error)
	FindEnrollmentTokens(ctx context.Context, tenantID string, f EnrollmentTokenFilter) ([]*EnrollmentToken, error)
	// RevokeEnrollmentToken sets revoked_at; a revoked token answers ENOTFOUND.
	RevokeEnrollmentToken(ctx context.Context, tenantID, id string, at time.Time) error
	// FindEnrollmentForAuth finds a token by its globally unique ID for
	// /v1/enroll — not scoped by tenant, like FindAPIKeyForAuth — with its
	// secret hash, its fleet and its tenant's account, in one query.
	FindEnrollmentForAuth(ctx context.Context, id string) (*EnrollmentAuth, error)
	// UseEnrollmentToken counts one use if the token is unrevoked, unexpired
	// at `at` and has uses left; otherwise ECONFLICT. Concurrent callers are
	// serialized on the row: a single-use token is used exactly once.
	UseEnrollmentToken(ctx context.Context, id string, at time.Time) error

	// SetVehicleEnrollment stores a vehicle's credentials metadata. A user
	// key held by another vehicle or grant answers ECONFLICT.
	SetVehicleEnrollment(ctx context.Context, tenantID string, id int64, e VehicleEnrollment) (*Vehicle, error)
	// FindVehicleByUserKey finds the vehicle holding a user key, in any
	// tenant (for /v1/agent/renew, authenticated by that key).
	FindVehicleByUserKey(ctx context.Context, userPub string) (*Vehicle, error)

	// CreateAgentNonce stores a single-use renewal challenge.
	CreateAgentNonce(ctx context.Context, userPub, nonce string, expires time.Time) error
	// ConsumeAgentNonce deletes the nonce; a missing, used or expired
	// (at `at`) nonce answers ENOTFOUND.
	ConsumeAgentNonce(ctx context.Context, userPub, nonce string, at time.Time) error
	// DeleteExpiredAgentNonces removes nonces that expired before t.
	DeleteExpiredAgentNonces(ctx context.Context, before time.Time) (int64, error)

	CreateGrant(ctx context.Context, g *Grant) error // sets CreatedAt; ECONFLICT on a user key in use
	FindGrant(ctx context.Context, tenantID, id string) (*Grant, error)
	FindGrants(ctx context.Context, tenantID string, f GrantFilter) ([]*Grant, error)
	// RevokeGrant sets revoked_at; a revoked grant answers ENOTFOUND.
	RevokeGrant(ctx context.Context, tenantID, id string, at time.Time) error

	CreateRevocation(ctx context.Context, r *Revocation) error // sets ID
	// UpdateRevocation writes Status, CompletedAt, Nodes, Connections,
	// ConnectionsRemaining, Latency, Attempts and LastError.
	UpdateRevocation(ctx context.Context, r *Revocation) error
	FindRevocation(ctx context.Context, tenantID string, id int64) (*Revocation, error)
	// FindLatestRevocation returns the newest revocation of a target.
	FindLatestRevocation(ctx context.Context, tenantID, kind, targetID string) (*Revocation, error)

	RegionStore    // region.go
	PresenceStore  // presence.go
	TelemetryStore // telemetry.go
	BillingStore   // billing.go
	UsageStore     // usage.go
	SessionStore   // session.go

	// BeginIdempotent claims (scope, key) for a request whose body hashes to
	// requestHash. It returns the stored response when the key was used
	// before with the same hash and completed; EUNPROCESSABLE when it was
	// used with another hash; ECONFLICT while the first request is still in
	// flight; and, for a fresh claim, an IdempotentResponse with Fresh set.
	BeginIdempotent(ctx context.Context, scope, key string, requestHash []byte) (*IdempotentResponse, error)
	// CompleteIdempotent stores the response of a claimed key.
	CompleteIdempotent(ctx context.Context, scope, key string, r *IdempotentResponse) error
	// ReleaseIdempotent forgets a claim whose request failed on the server
	// side, so that the client may retry with the same key.
	ReleaseIdempotent(ctx context.Context, scope, key string) error
	// DeleteExpiredIdempotencyKeys removes keys created before t.
	DeleteExpiredIdempotencyKeys(ctx context.Context, before time.Time) (int64, error)
}

// IdempotentResponse is a stored response to a POST with an Idempotency-Key.
type IdempotentResponse struct {
	Fresh       bool // true: the key was just claimed, nothing stored yet
	Status      int
	ContentType string
	Location    string
	Body        []byte
}
