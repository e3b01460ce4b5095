package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/fleetplane/fleetplane/internal/natsauth"
)

// This file holds the digital-twin side of the domain (DESIGN.md §3,
// docs/twin.md): the history stream each tenant gets in each region, the
// messages read back from it, live updates and commands, and the two
// interfaces the Service consumes for them: TelemetryStore (provisioning
// records in Postgres) and Telemetry (the tenant's data plane on the hubs).
//
// Vehicles forward every locally stored message fleet.<env>.veh.<vid>.<rest>
// to the hub as ingest.<env>.<vid>.<rest> (Nats-Msg-Id "<vid>-<local seq>")
// and wait for the PubAck; the tenant's TWIN stream captures ingest.> and
// stores each message under its canonical subject again, so that history,
// the latest state (multi-last direct get) and live traffic all use the same
// subjects.

// TwinStream is the name of a tenant's history stream in every region. It
// is natsauth.HistoryStream: the service users' permissions name it.
const TwinStream = natsauth.HistoryStream

// twinStreamConfigVersion is part of StreamSpec.Hash: raise it when the code
// changes what EnsureStream applies, so every tenant's stream is updated on
// its next account push.
const twinStreamConfigVersion = 1

// HistoryPolicy is what a plan gives a tenant's history.
type HistoryPolicy struct {
	// Retention is how long messages are kept (the stream's MaxAge).
	Retention time.Duration
	// DedupeWindow is the stream's duplicate window: a forwarder retry of a
	// message (same Nats-Msg-Id) within it is acknowledged as a duplicate
	// and not stored again. It must outlast the forwarder's retries of a
	// message whose PubAck was lost (link-loss detection, 30 s, plus the
	// reconnect); the server keeps one entry per message in it in memory
	// (about 120 bytes), which bounds it for large tenants.
	DedupeWindow time.Duration
	// StoragePercent is the share of the account's JetStream disk limit the
	// stream may reserve (over all its replicas); the rest is headroom for
	// other streams of the account.
	StoragePercent int64
}

// DefaultHistoryPolicy returns the history policy of a plan: short
// retention and a long dedupe window on free (10 vehicles at most), longer
// retention and a window sized for a thousand vehicles on scale.
func DefaultHistoryPolicy(plan string) HistoryPolicy {
	if plan == PlanScale {
		return HistoryPolicy{Retention: 90 * 24 * time.Hour, DedupeWindow: 5 * time.Minute, StoragePercent: 80}
	}
	return HistoryPolicy{Retention: 7 * 24 * time.Hour, DedupeWindow: 15 * time.Minute, StoragePercent: 80}
}

// StreamSpec is a tenant's history stream as the domain wants it in one
// region. The adapter adds what is fixed by design (subjects, transform,
// file storage, direct get, deny delete/purge, no per-message TTL).
type StreamSpec struct {
	Name string
	// Replicas wanted; the adapter caps it at the region's node count.
	Replicas int
	MaxAge   time.Duration
	// Duplicates is the dedupe window (see HistoryPolicy.DedupeWindow).
	Duplicates time.Duration
	// StorageBudget is how many bytes the stream may reserve against the
	// account's JetStream disk limit, over all replicas (NATS counts an
	// R3 stream's max bytes three times against an un-tiered limit);
	// NoLimit (-1) for an unlimited account. The adapter sets max bytes to
	// StorageBudget / replicas.
	StorageBudget int64
}

// Hash fingerprints the spec for the provisioning record: equal hashes
// mean the stream needs no update.
func (s StreamSpec) Hash() string {
	b, _ := json.Marshal(struct {
		V int
		StreamSpec
	}{twinStreamConfigVersion, s}) // plain fields: cannot fail
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:12])
}

// AppliedStream is what a hub region applied for a StreamSpec.
type AppliedStream struct {
	Name       string
	Replicas   int
	MaxAge     time.Duration
	MaxBytes   int64 // -1 = unlimited
	Duplicates time.Duration
	Created    bool // the stream did not exist before
	Updated    bool // its configuration was changed
}

// TenantStream records a tenant's provisioned history stream in a region.
type TenantStream struct {
	TenantID      string
	Region        string
	Stream        string
	ConfigHash    string // StreamSpec.Hash of what was applied
	Replicas      int
	MaxAge        time.Duration
	MaxBytes      int64
	Duplicates    time.Duration
	ProvisionedAt time.Time // first created (set by the store)
	UpdatedAt     time.Time // last applied (set by the store)
}

// TelemetryStore persists what the telemetry side needs. Its methods are
// part of Store; all are scoped by tenant.
type TelemetryStore interface {
	// FindTenantStreams lists a tenant's provisioned streams by region.
	FindTenantStreams(ctx context.Context, tenantID string) ([]*TenantStream, error)
	// SetTenantStream inserts or replaces the record of (TenantID, Region)
	// and sets ProvisionedAt (kept from the first insert) and UpdatedAt.
	SetTenantStream(ctx context.Context, ts *TenantStream) error
	// FindFleetRegions lists the distinct regions of a tenant's fleets.
	FindFleetRegions(ctx context.Context, tenantID string) ([]string, error)
	// FindVehicleIDs lists a fleet's vehicle IDs in order, after `after`
	// (exclusive, "" = from the start), at most limit of them.
	FindVehicleIDs(ctx context.Context, tenantID string, fleetID int64, after string, limit int) ([]string, error)
}

// ServiceUser is a short-lived per-tenant service user: a fresh nkey and
// its JWT, signed with the account's service role key.
type ServiceUser struct {
	Name string
	// InboxPrefix is the reply-inbox prefix the connection must use
	// (nats.CustomInboxPrefix): natsauth.ServiceInboxPrefix(Name).
	InboxPrefix string
	JWT         string
	Seed        []byte // the caller wipes it when done
	ExpiresAt   time.Time
}

// TelemetryTarget is where a Telemetry call goes: a tenant's account in a
// region, reached through the region's client URLs with a service user
// that Credentials mints on demand (the adapter calls it only when it
// opens or re-opens a connection, so cached connections cost no database
// read).
type TelemetryTarget struct {
	TenantID    string
	Region      Region
	Stream      string
	Credentials func(ctx context.Context) (*ServiceUser, error)
}

// TwinMessage is one stored or live message of a vehicle's digital twin.
type TwinMessage struct {
	VehicleID string    // filled by the Service
	Subject   string    // fleet.<env>.veh.<vid>.<kind>
	Kind      string    // e.g. state.position (filled by the Service)
	Sequence  uint64    // stream sequence; 0 for a live message
	StoredAt  time.Time // when the hub stored it; zero for a live message
	// ReceivedAt is when the control plane received a live message.
	ReceivedAt time.Time
	Data       []byte // the payload as the vehicle sent it (JSON)
	// MsgID is the stored message's Nats-Msg-Id (the forwarder's
	// <vid>-<local stream>-<local seq>); "" for a live message.
	MsgID string
}

// LastQuery asks for the last stored message of every subject matching
// Subjects (wildcards allowed), optionally as of UpTo.
type LastQuery struct {
	Subjects []string
	UpTo     *time.Time
}

// ReadQuery asks for stored messages on Subject (wildcards allowed) in
// stream order, starting at StartSeq or, when StartSeq is 0, at StartTime
// (nil = the stream's start), stopping before Until (nil = no bound) and
// after Limit messages.
type ReadQuery struct {
	Subject   string
	StartSeq  uint64
	StartTime *time.Time
	Until     *time.Time
	Limit     int
}

// ReadResult is a page of stored messages; NextSeq is the sequence to
// continue from, 0 when there is nothing more before Until.
type ReadResult struct {
	Messages []*TwinMessage
	NextSeq  uint64
}

// TelemetryRequest is a request to a vehicle: Data to Subject, the reply
// expected under ReplyPrefix (the adapter appends a unique token).
type TelemetryRequest struct {
	Subject     string
	ReplyPrefix string
	Data        []byte
	Timeout     time.Duration
}

// LiveSubscription delivers live messages until closed. Messages is closed
// when the subscription ends (Close, or the connection went away).
type LiveSubscription interface {
	Messages() <-chan *TwinMessage
	// Dropped counts messages dropped because the reader was too slow.
	Dropped() uint64
	Close()
}

// Errors a Telemetry request returns (wrapped) besides coded ones.
var (
	// ErrNoResponders: nothing subscribes to the subject (the vehicle is
	// offline or runs no command handler).
	ErrNoResponders = errors.New("no responders")
	// ErrRequestTimeout: the request was delivered but not answered in time.
	ErrRequestTimeout = errors.New("request timed out")
)

// Telemetry is the tenant's data plane as the control plane uses it:
// stream provisioning, digital-twin reads, live updates and commands
// (implemented by controlplane/twin over NATS). Failures to reach the hub
// are EUNAVAILABLE; a missing stream is ENOTFOUND.
type Telemetry interface {
	// EnsureStream creates the target's stream or brings its configuration
	// to spec; it changes nothing when they agree.
	EnsureStream(ctx context.Context, t TelemetryTarget, spec StreamSpec) (*AppliedStream, error)
	// LastMessages returns the last message of each subject matching q, in
	// stream order.
	LastMessages(ctx context.Context, t TelemetryTarget, q LastQuery) ([]*TwinMessage, error)
	// ReadMessages returns stored messages in stream order (see ReadQuery).
	ReadMessages(ctx context.Context, t TelemetryTarget, q ReadQuery) (*ReadResult, error)
	// Subscribe delivers live messages on subjects until the subscription
	// is closed or ctx ends.
	Subscribe(ctx context.Context, t TelemetryTarget, subjects []string) (LiveSubscription, error)
	// Request sends a request and returns the reply's payload, or an error
	// wrapping ErrNoResponders or ErrRequestTimeout.
	Request(ctx context.Context, t TelemetryTarget, r TelemetryRequest) ([]byte, error)
}

// --- API-level types ---

// VehicleState is the latest message of each kind (state.* and evt.*) of
// a vehicle, in stream order.
type VehicleState struct {
	VehicleID string
	Messages  []*TwinMessage
}

// HistoryQuery selects a vehicle's stored messages by time. Cursor, when
// set, continues a previous page (Since is then ignored).
type HistoryQuery struct {
	Since  *time.Time // inclusive; nil = the start of the retained history
	Until  *time.Time // exclusive; nil = now
	Kind   string     // "" = all; a category (state, evt, agent) or category.kind
	Limit  int        // 0 = DefaultHistoryLimit
	Cursor string
}

// Limits of a history page.
const (
	DefaultHistoryLimit = 100
	MaxHistoryLimit     = 1000
)

// FleetVehicleState is one vehicle's last message of a kind (nil: none
// stored yet).
type FleetVehicleState struct {
	VehicleID string
	Message   *TwinMessage
}

// FleetStateQuery pages through a fleet's vehicles (by vehicle ID) for the
// last message of Kind ("" = state.position).
type FleetStateQuery struct {
	PageRequest
	Kind string
	At   *time.Time // state as of this time; nil = now
}

// LiveFeed is a fleet's live messages; C is closed when the feed ends.
type LiveFeed struct {
	C     <-chan *TwinMessage
	close func()
}

// Close ends the feed.
func (f *LiveFeed) Close() { f.close() }

// Commands a vehicle accepts through the API: the last token of
// fleet.<env>.veh.<vid>.cmd.<verb>.
var CommandVerbs = []string{"arm", "disarm", "takeoff", "land", "rtl", "goto", "set_mode"}

// Command limits.
const (
	MaxCommandParamsBytes   = 16 << 10
	MinCommandTimeout       = 100 * time.Millisecond
	MaxCommandTimeout       = 30 * time.Second
	DefaultCommandTimeout   = 5 * time.Second
	defaultTelemetryTimeout = 5 * time.Second
)

// CommandRequest is a command for a vehicle. Params is a JSON object (nil
// = {}); TimeoutMS 0 = DefaultCommandTimeout.
type CommandRequest struct {
	Command   string
	Params    json.RawMessage
	TimeoutMS int
}

// CommandResult is a vehicle's answer to a command.
type CommandResult struct {
	VehicleID string
	Command   string
	Subject   string
	Reply     []byte // the vehicle's reply payload
	Latency   time.Duration
}
