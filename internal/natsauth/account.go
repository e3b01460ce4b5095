package natsauth

import (
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// Role names of the account signing keys (the "role" field of a scope).
const (
	RoleVehicle = "vehicle"
	RoleGrant   = "grant"
	RoleService = "service"
)

// AccountKeys are a tenant account's keys: the identity key (signs nothing
// in normal operation; keep its seed sealed) and one signing key per role.
type AccountKeys struct {
	Account Key
	Vehicle Key // scoped: vehicle template
	Grant   Key // NOT scoped: grants carry their own explicit permissions
	Service Key // scoped: service template
}

// RoleKeys are the public keys of an account's role signing keys.
type RoleKeys struct {
	Vehicle, Grant, Service string
}

// NewAccountKeys creates an account identity key and its three role signing keys.
func NewAccountKeys() (*AccountKeys, error) {
	var k AccountKeys
	for _, dst := range []*Key{&k.Account, &k.Vehicle, &k.Grant, &k.Service} {
		var err error
		if *dst, err = newKey(nkeys.CreateAccount); err != nil {
			return nil, err
		}
	}
	return &k, nil
}

// RoleKeys returns the public keys of the role signing keys.
func (k *AccountKeys) RoleKeys() RoleKeys {
	return RoleKeys{Vehicle: k.Vehicle.Public, Grant: k.Grant.Public, Service: k.Service.Public}
}

// Wipe overwrites every seed held by k.
func (k *AccountKeys) Wipe() {
	k.Account.Wipe()
	k.Vehicle.Wipe()
	k.Grant.Wipe()
	k.Service.Wipe()
}

// Limits are a tenant's plan limits as the broker enforces them. Values use
// NATS semantics: NoLimit (-1) is unlimited and 0 is none (a zero Limits
// admits no connection: fail closed). JetStream is enabled for the account
// only when JetStreamDisk > 0 (or NoLimit); then JetStreamMem 0 means no
// memory storage. Otherwise the JetStream values are ignored.
type Limits struct {
	Conn          int64 // client connections (service users, grants)
	LeafNodeConn  int64 // leaf connections = online vehicles (one remote each)
	Subs          int64 // subscriptions
	Payload       int64 // max message payload, bytes
	JetStreamDisk int64 // bytes of file storage
	JetStreamMem  int64 // bytes of memory storage
	Streams       int64
	Consumers     int64
}

// Unlimited returns Limits with every value NoLimit and JetStream enabled
// without bounds (for tests and dev mode).
func Unlimited() Limits {
	return Limits{NoLimit, NoLimit, NoLimit, NoLimit, NoLimit, NoLimit, NoLimit, NoLimit}
}

func (l Limits) validate() error {
	for name, v := range map[string]int64{
		"Conn": l.Conn, "LeafNodeConn": l.LeafNodeConn, "Subs": l.Subs, "Payload": l.Payload,
		"JetStreamDisk": l.JetStreamDisk, "JetStreamMem": l.JetStreamMem, "Streams": l.Streams, "Consumers": l.Consumers,
	} {
		if v < NoLimit {
			return fmt.Errorf("natsauth: limit %s = %d: want -1 (unlimited) or ≥ 0", name, v)
		}
	}
	return nil
}

// AccountSpec is the content of a tenant's account JWT.
type AccountSpec struct {
	Name     string // shown by nats tooling, e.g. the tenant slug
	TenantID string // becomes the "tenant:<id>" tag
	Limits   Limits
	// Revocations maps a user public key (or "*" for every user) to a unix
	// time: user JWTs of that key issued at or before it are refused and
	// their live connections, leaf links included, are closed on push.
	Revocations map[string]int64
}

// IssueAccountJWT signs a tenant account JWT with an operator signing key:
// plan limits, bearer tokens disallowed, the "tenant:<id>" tag, revocations,
// and the three role signing keys — vehicle and service scoped with the
// templates of VehicleScope and ServiceScope, grant unscoped.
//
// The account JWT is the whole truth for the hubs: every push replaces it,
// so callers always issue it from the full current state (keys, plan,
// revocations).
func IssueAccountJWT(operatorSigningKey nkeys.KeyPair, accountPub string, keys RoleKeys, spec AccountSpec) (string, error) {
	if _, err := publicOf(operatorSigningKey, "operator signing key", nkeys.IsValidPublicOperatorKey); err != nil {
		return "", err
	}
	if !nkeys.IsValidPublicAccountKey(accountPub) {
		return "", fmt.Errorf("natsauth: account key: want an account public key, got %s", keyKind(accountPub))
	}
	seen := map[string]bool{accountPub: true}
	for role, k := range map[string]string{RoleVehicle: keys.Vehicle, RoleGrant: keys.Grant, RoleService: keys.Service} {
		if !nkeys.IsValidPublicAccountKey(k) {
			return "", fmt.Errorf("natsauth: %s signing key: want an account public key, got %s", role, keyKind(k))
		}
		if seen[k] {
			return "", fmt.Errorf("natsauth: %s signing key must differ from the account key and the other role keys", role)
		}
		seen[k] = true
	}
	if spec.Name == "" {
		return "", errors.New("natsauth: account name is empty")
	}
	if !tagValueRe.MatchString(spec.TenantID) {
		return "", fmt.Errorf("natsauth: invalid tenant ID %q", spec.TenantID)
	}
	if err := spec.Limits.validate(); err != nil {
		return "", err
	}

	ac := jwt.NewAccountClaims(accountPub)
	ac.Name = spec.Name
	ac.Tags.Add("tenant:" + spec.TenantID)
	l := spec.Limits
	ac.Limits.Conn = l.Conn
	ac.Limits.LeafNodeConn = l.LeafNodeConn
	ac.Limits.Subs = l.Subs
	ac.Limits.Payload = l.Payload
	ac.Limits.DisallowBearer = true
	if l.JetStreamDisk > 0 || l.JetStreamDisk == NoLimit {
		ac.Limits.DiskStorage = l.JetStreamDisk
		ac.Limits.MemoryStorage = l.JetStreamMem
		ac.Limits.Streams = l.Streams
		ac.Limits.Consumer = l.Consumers
	}

	ac.SigningKeys.AddScopedSigner(VehicleScope(keys.Vehicle))
	ac.SigningKeys.Add(keys.Grant)
	ac.SigningKeys.AddScopedSigner(ServiceScope(keys.Service))

	for pub, at := range spec.Revocations {
		if pub != jwt.All && !nkeys.IsValidPublicUserKey(pub) {
			return "", fmt.Errorf("natsauth: revocation: want a user public key or \"*\", got %s", keyKind(pub))
		}
		ac.RevokeAt(pub, time.Unix(at, 0))
	}
	if err := validate(ac); err != nil {
		return "", err
	}
	return ac.Encode(operatorSigningKey)
}

// VehicleScope is the scope of the vehicle role key; every vehicle user gets
// exactly this, with {{name()}} = its vehicle ID (case kept) and
// {{tag(env)}} = its environment:
//
//   - connection type LEAFNODE only: the creds cannot open a client connection;
//   - publish (leaf→hub): fleet.<env>.veh.<vid>.> (its own telemetry, events,
//     agent health and command replies, see CommandReplies) and
//     ingest.<env>.<vid>.> (the forwarder's hub ingest subjects, see
//     IngestSubject). Nothing else: a compromised vehicle can only lie
//     about itself;
//   - subscribe (hub→leaf): fleet.<env>.veh.<vid>.cmd.> (commands) and its
//     own reply inbox _INBOX.veh.<vid>.> (PubAcks; see VehicleInboxPrefix).
//     Not the whole fleet.<env>.veh.<vid>.>: the vehicle's local stream
//     captures its state/evt subjects, and hub-side publishers must not be
//     able to inject into them.
//
// No allow_responses (it does not cross a leaf link, see CommandReplies) and
// no $JS.API permission: the forwarder needs only PubAcks, which carry the
// stream sequence and the duplicate flag, so the vehicle never sees the hub
// stream's configuration or other vehicles' counts.
func VehicleScope(signingKeyPub string) *jwt.UserScope {
	s := jwt.NewUserScope()
	s.Key = signingKeyPub
	s.Role = RoleVehicle
	s.Description = "Fleetplane vehicle (leaf node): own subject tree, ingest and inbox only"
	t := &s.Template
	t.AllowedConnectionTypes.Add(jwt.ConnectionTypeLeafnode)
	t.Pub.Allow.Add(
		SubjectRoot+".{{tag(env)}}.veh.{{name()}}.>",
		IngestRoot+".{{tag(env)}}.{{name()}}.>",
	)
	t.Sub.Allow.Add(
		SubjectRoot+".{{tag(env)}}.veh.{{name()}}."+string(CategoryCommands)+".>",
		vehicleInboxRoot+".{{name()}}.>",
	)
	return s
}

// ServiceScope is the scope of the service role key: the least privilege
// the control plane's per-tenant service user (controlplane/twin) needs,
// with {{name()}} = the service user's name:
//
//   - connection type STANDARD only (the control plane dials the region's
//     client URLs; no in-process use, and never LEAFNODE: the service user
//     must not attach a server to the tenant);
//   - publish: the JetStream API of the tenant's history stream only
//     (HistoryStream): $JS.API.STREAM.INFO|CREATE|UPDATE.<stream> to
//     provision it and $JS.API.DIRECT.GET.<stream> to read history and the
//     latest state. Not STREAM.DELETE or PURGE (the stream also denies
//     them), not other streams, not consumers or $JS.API.INFO: the adapter
//     sends nothing else. And commands, fleet.*.veh.*.cmd.>. Not the
//     vehicles' state/evt/agent trees: the service user cannot spoof a
//     vehicle's telemetry, live or into history (ingest.> is not allowed
//     either);
//   - subscribe: live telemetry fleet.*.veh.*.state.> and fleet.*.veh.*.evt.>,
//     command replies under fleet.*.veh.*.rpl.svc.> (ServiceReplyPrefix;
//     a reply in the vehicle's own tree is the only kind that crosses a
//     leaf link, see CommandReplies), and its own reply inbox
//     _INBOX.svc.<name>.> (ServiceInboxPrefix: the connection must set
//     nats.CustomInboxPrefix) for JetStream API and direct get replies.
//     Never "_INBOX.>", which would show it every other client's replies.
//
// No allow_responses: the service user answers no requests (JetStream
// replies to it are the server's, not subject to its permissions). A
// broader need (another stream, agent health) widens this template, and
// with it every service user of every tenant on the next account push.
func ServiceScope(signingKeyPub string) *jwt.UserScope {
	s := jwt.NewUserScope()
	s.Key = signingKeyPub
	s.Role = RoleService
	s.Description = "Fleetplane control plane service user: history stream, commands, live telemetry, own inbox"
	t := &s.Template
	t.AllowedConnectionTypes.Add(jwt.ConnectionTypeStandard)
	vehicles := SubjectRoot + ".*.veh.*."
	t.Pub.Allow.Add(
		"$JS.API.STREAM.INFO."+HistoryStream,
		"$JS.API.STREAM.CREATE."+HistoryStream,
		"$JS.API.STREAM.UPDATE."+HistoryStream,
		"$JS.API.DIRECT.GET."+HistoryStream,
		vehicles+string(CategoryCommands)+".>",
	)
	t.Sub.Allow.Add(
		vehicles+string(CategoryState)+".>",
		vehicles+string(CategoryEvents)+".>",
		vehicles+replyToken+".svc.>",
		serviceInboxRoot+".{{name()}}.>",
	)
	return s
}

// ServiceInboxPrefix is the reply-inbox prefix of the control plane's
// service users named name (nats.CustomInboxPrefix): _INBOX.svc.<name>, a
// sub-tree of "_INBOX." apart from the vehicles' (_INBOX.veh.<vid>), to
// which ServiceScope confines their subscriptions.
func ServiceInboxPrefix(name string) string { return serviceInboxRoot + "." + name }

// RevokeUser returns a copy of revs with userPub (or "*") revoked as of at:
// JWTs of that key issued at or before at are refused. An existing later
// revocation is kept (a revocation never moves back in time).
func RevokeUser(revs map[string]int64, userPub string, at time.Time) (map[string]int64, error) {
	if userPub != jwt.All && !nkeys.IsValidPublicUserKey(userPub) {
		return nil, fmt.Errorf("natsauth: user key: want a user public key, got %s", keyKind(userPub))
	}
	out := maps.Clone(revs)
	if out == nil {
		out = make(map[string]int64, 1)
	}
	jwt.RevocationList(out).Revoke(userPub, at)
	return out, nil
}

// PruneRevocations returns a copy of revs without the entries that can no
// longer matter: a user JWT revoked at t was issued at or before t and so
// expired by t+maxUserLifetime. Pass MaxUserLifetime (plus any clock-skew
// allowance) unless the account still has users issued under a longer cap.
func PruneRevocations(revs map[string]int64, now time.Time, maxUserLifetime time.Duration) map[string]int64 {
	out := make(map[string]int64, len(revs))
	cutoff := now.Add(-maxUserLifetime).Unix()
	for k, t := range revs {
		if t >= cutoff {
			out[k] = t
		}
	}
	return out
}
