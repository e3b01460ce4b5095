package controlplane

import (
	"context"
	"time"

	"github.com/fleetplane/fleetplane/internal/natsauth"
)

// This file holds the NATS identity side of the domain (DESIGN.md §2): the
// operator, one account per tenant, enrollment tokens, vehicle credentials,
// grants and revocations, and the two interfaces the Service consumes for
// them: Issuer (key custody and signing) and Hubs (pushing account JWTs to
// the hub nodes and checking connections).
//
// The domain never sees a seed: key material travels as sealed blobs that
// only the Issuer can open. Public keys and JWTs are not secret.

// Operator is the NATS operator of this installation: there is exactly one.
// Sealed holds its identity and signing seeds and the system account's
// seeds, sealed by the Issuer adapter; the domain stores it unopened.
type Operator struct {
	Name                   string
	PublicKey              string
	SigningKeys            []string // operator signing keys' public keys
	JWT                    string
	SystemAccountPublicKey string
	SystemAccountJWT       string
	Sealed                 []byte
	CreatedAt              time.Time
}

// AccountLimits are a tenant account's broker-enforced limits (NATS
// semantics: -1 unlimited, 0 none).
type AccountLimits = natsauth.Limits

// Account is a tenant's NATS account. Every change (limits, revocations)
// increments Version and re-signs JWT in the same transaction; a push job
// brings the hubs to the latest version.
type Account struct {
	TenantID    string
	Name        string // shown by nats tooling
	PublicKey   string
	SigningKeys AccountSigningKeys
	Sealed      []byte // the account's seeds, sealed by the Issuer and bound to TenantID
	Limits      AccountLimits
	// Revocations maps a user public key to the unix time at or before
	// which its JWTs are refused.
	Revocations   map[string]int64
	Version       int64
	JWT           string // signed for Version
	PushedVersion int64  // highest version every hub node acknowledged
	PushedAt      *time.Time
	CreatedAt     time.Time
	UpdatedAt     time.Time
}

// AccountSigningKeys are the public keys of an account's role signing keys.
type AccountSigningKeys = natsauth.RoleKeys

// Issuer holds the operator's signing keys and opens the accounts' sealed
// seeds to sign JWTs. Implemented by controlplane/natsissuer.
type Issuer interface {
	// Operator returns the operator the issuer signs for.
	Operator() *Operator
	// NewAccount creates the keys of a tenant account; the result has
	// TenantID, Name, PublicKey, SigningKeys and Sealed set.
	NewAccount(tenantID, name string) (*Account, error)
	// SignAccount signs a's JWT from its limits, revocations and keys.
	SignAccount(a *Account) (string, error)
	// SignVehicle signs a vehicle user JWT with the account's vehicle key.
	SignVehicle(a *Account, userPub string, v natsauth.VehicleIdentity, expires time.Time) (string, error)
	// SignGrant signs a grant user JWT with the account's grant key.
	SignGrant(a *Account, userPub string, g natsauth.GrantSpec) (string, error)
	// SignService signs a service user JWT with the account's service key.
	SignService(a *Account, userPub, name string, expires time.Time) (string, error)
}

// Hubs is the hub tier as the control plane sees it. Implemented by
// controlplane/hubs; the real multi-region implementation grows in the hubs
// issue.
type Hubs interface {
	// PushAccount sends an account JWT to every hub node of every region and
	// reports each node's answer. err is for a push that could not be
	// attempted at all; a node that did not answer is a NodeAck with OK false.
	PushAccount(ctx context.Context, accountJWT string) (*HubPush, error)
	// UserConnections counts, on every node, the open connections (client
	// and leaf) of userPub in account accountPub.
	UserConnections(ctx context.Context, accountPub, userPub string) ([]NodeConnections, error)
	// AccountJWTs asks the hub nodes which JWT of each account (public
	// keys) their resolvers hold (reconcile.go, HubJWTs). err is for a
	// lookup that could not be attempted at all.
	AccountJWTs(ctx context.Context, accountPubs []string) (*HubJWTs, error)
	// NodeHealth reports every configured node's connection as this
	// process sees it, without a round trip (for /readyz).
	NodeHealth() []HubNodeStatus
}

// HubPush is the outcome of one account push.
type HubPush struct {
	Expected int // nodes that should have answered
	Nodes    []NodeAck
}

// Complete reports whether every expected node acknowledged.
func (p *HubPush) Complete() bool {
	ok := 0
	for _, n := range p.Nodes {
		if n.OK {
			ok++
		}
	}
	return ok >= p.Expected
}

// NodeAck is one hub node's answer to a push.
type NodeAck struct {
	Node    string `json:"node"`
	OK      bool   `json:"ok"`
	Message string `json:"message,omitempty"`
}

// NodeConnections is one hub node's count of a user's open connections.
type NodeConnections struct {
	Node        string `json:"node"`
	Connections int    `json:"connections"`
	Error       string `json:"error,omitempty"` // the node could not be asked
}

// AccountPushJob is the durable job that brings the hubs to an account's
// latest version and, when RevocationID is set, proves that revocation. It
// is inserted in the same transaction as the change (an outbox), so a crash
// cannot lose it. Kind makes it a River job (controlplane/jobs).
type AccountPushJob struct {
	TenantID     string `json:"tenant_id"`
	RevocationID int64  `json:"revocation_id,omitempty"`
}

// Kind names the job for the queue.
func (AccountPushJob) Kind() string { return "account_push" }

// --- enrollment tokens ---

// MaxEnrollmentTokenTTL bounds an enrollment token's lifetime.
const MaxEnrollmentTokenTTL = 30 * 24 * time.Hour

// EnrollmentToken lets vehicles join one fleet. Its secret is shown once at
// creation and stored hashed (fpe_<id>_<secret>).
type EnrollmentToken struct {
	ID          string
	TenantID    string
	FleetID     int64
	FleetSlug   string
	Description string
	ExpiresAt   time.Time
	MaxUses     int
	Uses        int
	SourceCIDRs []string // canonical prefixes; empty = any source
	VehicleID   string   // "" = the vehicle picks its ID (or one is generated)
	CreatedBy   string
	CreatedAt   time.Time
	LastUsedAt  *time.Time
	RevokedAt   *time.Time
}

// EnrollmentTokenCreate is a request for a token; ExpiresAt is required.
type EnrollmentTokenCreate struct {
	Description string
	ExpiresAt   *time.Time
	MaxUses     int // 0 = 1
	SourceCIDRs []string
	VehicleID   string
}

// EnrollmentTokenCreated carries the token's secret, shown once.
type EnrollmentTokenCreated struct {
	EnrollmentToken
	Secret string
}

// EnrollmentAuth is what /v1/enroll reads before its transaction: the
// token, the hash of its secret, its fleet and the tenant's account (one
// round trip; a fleet's environment and region never change).
type EnrollmentAuth struct {
	Token   *EnrollmentToken
	Hash    []byte
	Fleet   *Fleet // VehicleCount not set
	Account *Account
}

// EnrollmentTokenFilter selects a fleet's tokens.
type EnrollmentTokenFilter struct {
	FleetID        int64
	IncludeRevoked bool // and exhausted or expired ones
	After          string
	Limit          int
}

// --- enrollment, renewal, credentials ---

// EnrollRequest is what a vehicle sends to /v1/enroll. Only the public user
// key leaves the vehicle.
type EnrollRequest struct {
	Token        string
	PublicKey    string
	VehicleID    string
	Hostname     string
	Arch         string
	AgentVersion string
}

// VehicleCredentials is what a vehicle needs to connect: its user JWT and
// where and how to connect.
type VehicleCredentials struct {
	Vehicle         *Vehicle
	JWT             string
	ExpiresAt       time.Time
	RenewAfter      time.Time
	AccountKey      string
	Region          string
	LeafURLs        []string
	CABundle        string // PEM; "" = the system roots
	SubjectPrefix   string // fleet.<env>.veh.<vid>
	IngestSubject   string // ingest.<env>.<vid>
	InboxPrefix     string // _INBOX.veh.<vid>
	JetStreamDomain string
}

// VehicleEnrollment records an enrollment's metadata on the vehicle.
type VehicleEnrollment struct {
	UserPublicKey       string
	CredentialsExpireAt time.Time
	Status              VehicleStatus
	EnrolledAt          *time.Time // nil = leave as is
	Hostname            *string
	Arch                *string
	AgentVersion        *string
}

// AgentNonce is a single-use challenge for /v1/agent/renew.
type AgentNonce struct {
	Nonce     string // base64url, what the agent signs (its bytes as sent)
	ExpiresAt time.Time
}

// RenewRequest proves possession of a vehicle's nkey: Signature is the
// nkey signature (base64url) over the Nonce string.
type RenewRequest struct {
	PublicKey string
	Nonce     string
	Signature string
}

// --- grants ---

// GrantCategory is a part of a vehicle's subject tree a grant may reach.
type GrantCategory = natsauth.Category

// GrantScopeSpec is one fleet (and optionally some of its vehicles) in a grant.
type GrantScopeSpec struct {
	Fleet      string          `json:"fleet"`
	VehicleIDs []string        `json:"vehicle_ids,omitempty"`
	Categories []GrantCategory `json:"categories"`
}

// TimeWindow is a daily window, "HH:MM:SS" start and end.
type TimeWindow struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

// Grant is scoped, time-bounded access for a third party: a user JWT with
// explicit subjects in the tenant's account.
type Grant struct {
	ID              string // also the NATS user name and the reply-subject token
	TenantID        string
	Description     string
	UserPublicKey   string
	Scopes          []GrantScopeSpec
	Publish         []string // exactly what the JWT allows
	Subscribe       []string
	ExpiresAt       time.Time
	SourceCIDRs     []string
	TimeWindows     []TimeWindow
	Locale          string
	ConnectionTypes []string
	Region          string // where its client URLs point
	CreatedBy       string
	CreatedAt       time.Time
	RevokedAt       *time.Time
	Revocation      *Revocation // the latest, if revoked
}

// GrantCreate asks for a grant. Either Scopes or explicit Publish/Subscribe
// subjects (inside the tenant's fleet tree) or both.
type GrantCreate struct {
	Description     string
	Scopes          []GrantScopeSpec
	Publish         []string
	Subscribe       []string
	ExpiresAt       *time.Time
	SourceCIDRs     []string
	TimeWindows     []TimeWindow
	Locale          string
	ConnectionTypes []string
	// PublicKey is the third party's user nkey; "" = the control plane
	// makes one and returns a creds file once.
	PublicKey string
	DryRun    bool
}

// GrantCreated is a new grant with its JWT, and its creds when the control
// plane made the key (shown once). A dry run has neither.
type GrantCreated struct {
	Grant
	JWT   string
	Creds []byte
}

// GrantFilter selects a tenant's grants.
type GrantFilter struct {
	IncludeInactive bool // revoked and expired
	Now             time.Time
	After           string
	Limit           int
}

// GrantContext is a `nats` CLI context for a grant.
type GrantContext struct {
	Name    string
	Context []byte // JSON for ~/.config/nats/context/<name>.json
}

// --- revocations ---

// Revocation kinds.
const (
	RevokeVehicle = "vehicle"
	RevokeGrant   = "grant"
)

// Revocation states.
const (
	RevocationPending = "pending" // recorded, not yet proven on every node
	RevocationProven  = "proven"  // every node acknowledged and no connection remains
)

// Revocation is a user key added to an account's revocations and the proof
// that it took effect.
type Revocation struct {
	ID                   int64
	TenantID             string
	Kind                 string // RevokeVehicle or RevokeGrant
	TargetID             string // vehicle ID or grant ID
	UserPublicKey        string
	AccountVersion       int64
	Status               string
	RequestedAt          time.Time
	CompletedAt          *time.Time
	Nodes                []NodeAck
	Connections          []NodeConnections
	ConnectionsRemaining int
	Latency              time.Duration // RequestedAt → proven
	Attempts             int
	LastError            string
}
