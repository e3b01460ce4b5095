package natsauth

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// VehicleIdentity names a vehicle. Env and VehicleID shape its subjects;
// all four become tags (lower-cased by the jwt library, informational except
// env, which the vehicle template reads).
type VehicleIdentity struct {
	TenantID  string
	Fleet     string // fleet slug
	Env       string
	VehicleID string
}

// Validate checks the identifiers.
func (v VehicleIdentity) Validate() error {
	if err := ValidateVehicleID(v.VehicleID); err != nil {
		return err
	}
	if err := ValidateEnv(v.Env); err != nil {
		return err
	}
	if !tagValueRe.MatchString(v.TenantID) {
		return fmt.Errorf("natsauth: invalid tenant ID %q", v.TenantID)
	}
	if !tagValueRe.MatchString(v.Fleet) {
		return fmt.Errorf("natsauth: invalid fleet %q", v.Fleet)
	}
	return nil
}

// checkUserIssuer validates the signing key, the account and the user key
// common to all tenant users.
func checkUserIssuer(signingKey nkeys.KeyPair, role, accountPub, userPub string) error {
	skPub, err := publicOf(signingKey, role+" signing key", nkeys.IsValidPublicAccountKey)
	if err != nil {
		return err
	}
	if !nkeys.IsValidPublicAccountKey(accountPub) {
		return fmt.Errorf("natsauth: account key: want an account public key, got %s", keyKind(accountPub))
	}
	if skPub == accountPub {
		// A user signed by the account identity key would get no scope:
		// empty permissions mean "everything".
		return fmt.Errorf("natsauth: %s users must be signed by the %s role key, not the account identity key", role, role)
	}
	if !nkeys.IsValidPublicUserKey(userPub) {
		return fmt.Errorf("natsauth: user key: want a user public key, got %s", keyKind(userPub))
	}
	return nil
}

// IssueVehicleJWT signs a vehicle user with the account's vehicle role key.
// The JWT carries no permissions of its own (scoped users may not): its name
// is the vehicle ID and its tags are tenant:, fleet:, env: and vehicle:; the
// permissions come from VehicleScope at connect time. userPub is the nkey
// the agent generated; the control plane never sees the vehicle's seed.
func IssueVehicleJWT(vehicleSigningKey nkeys.KeyPair, accountPub, userPub string, v VehicleIdentity, expires time.Time) (string, error) {
	if err := checkUserIssuer(vehicleSigningKey, RoleVehicle, accountPub, userPub); err != nil {
		return "", err
	}
	if err := v.Validate(); err != nil {
		return "", err
	}
	if err := checkExpiry(expires); err != nil {
		return "", err
	}
	uc := jwt.NewUserClaims(userPub)
	uc.SetScoped(true)
	uc.Name = v.VehicleID // {{name()}}: case kept, unlike tags
	uc.IssuerAccount = accountPub
	uc.Expires = expires.Unix()
	uc.Tags.Add("tenant:"+v.TenantID, "fleet:"+v.Fleet, "env:"+v.Env, "vehicle:"+v.VehicleID)
	if err := validate(uc); err != nil {
		return "", err
	}
	return uc.Encode(vehicleSigningKey)
}

// IssueServiceJWT signs the control plane's per-tenant service user with the
// service role key; its permissions come from ServiceScope, and it must use
// ServiceInboxPrefix(name) as its inbox prefix.
func IssueServiceJWT(serviceSigningKey nkeys.KeyPair, accountPub, userPub, name string, expires time.Time) (string, error) {
	if err := checkUserIssuer(serviceSigningKey, RoleService, accountPub, userPub); err != nil {
		return "", err
	}
	if !serviceNameRe.MatchString(name) {
		return "", fmt.Errorf("natsauth: invalid service user name %q: want 1-64 characters of [A-Za-z0-9_-] (it is a token of its inbox subjects)", name)
	}
	if err := checkExpiry(expires); err != nil {
		return "", err
	}
	uc := jwt.NewUserClaims(userPub)
	uc.SetScoped(true)
	uc.Name = name
	uc.IssuerAccount = accountPub
	uc.Expires = expires.Unix()
	if err := validate(uc); err != nil {
		return "", err
	}
	return uc.Encode(serviceSigningKey)
}

// GrantSpec is a third party's access: explicit subjects, a mandatory expiry
// and optional network and time-of-day restrictions.
type GrantSpec struct {
	// Name identifies the grant (1-64 of [A-Za-z0-9_-]); it is the JWT name
	// and the last token of its command reply subjects (GrantReplyPrefix).
	Name string
	// Publish and Subscribe are explicit subjects inside fleet.>, typically
	// from GrantPermissions. Empty = none.
	Publish, Subscribe []string
	Expires            time.Time // mandatory, at most MaxUserLifetime away
	SourceCIDRs        []string  // optional: connections only from these networks
	// TimeWindows are optional daily windows ("15:04:05" start/end) in
	// Locale (an IANA zone, default the server's local time).
	TimeWindows []jwt.TimeRange
	Locale      string
	// ConnectionTypes: STANDARD and/or WEBSOCKET; empty means both. Never
	// LEAFNODE: a grant holder must not attach a server to the tenant.
	ConnectionTypes []string
}

// IssueGrantJWT signs a grant user with the account's grant role key.
//
// The grant key is deliberately NOT scoped. nats-server v2.15.2 (auth.go,
// jwt.UserScope.ValidateScopedSigner) rejects a scoped user whose JWT
// carries any permission, source CIDR, time window or connection type, and
// replaces them with the scope template. A grant's whole point is per-grant
// subjects, CIDRs and time windows, so it must carry its own. Templating
// per-grant subjects through tags does not work either: tags are
// lower-cased (vehicle IDs are case-sensitive) and templates cannot express
// CIDRs or time windows. The cost — whoever holds the grant signing key can
// sign any permissions in this tenant's account, never in another — is
// contained by keeping the grant key separate (removing it from the account
// JWT evicts every grant at once) and by this function, the only issuer,
// which confines subjects to fleet.>, forbids
// LEAFNODE and requires an expiry. No _INBOX permission: command replies
// come back on GrantReplyPrefix subjects (see CommandReplies).
func IssueGrantJWT(grantSigningKey nkeys.KeyPair, accountPub, userPub string, g GrantSpec) (string, error) {
	if err := checkUserIssuer(grantSigningKey, RoleGrant, accountPub, userPub); err != nil {
		return "", err
	}
	if !grantNameRe.MatchString(g.Name) {
		return "", fmt.Errorf("natsauth: invalid grant name %q: want 1-64 characters of [A-Za-z0-9_-]", g.Name)
	}
	if err := checkExpiry(g.Expires); err != nil {
		return "", err
	}
	for _, s := range g.Publish {
		if !inFleetTree(s) {
			return "", fmt.Errorf("natsauth: grant publish subject %q: want a well-formed subject under %s.>", s, SubjectRoot)
		}
	}
	for _, s := range g.Subscribe {
		if !inFleetTree(s) {
			return "", fmt.Errorf("natsauth: grant subscribe subject %q: want a well-formed subject under %s.>", s, SubjectRoot)
		}
	}
	ctypes := g.ConnectionTypes
	if len(ctypes) == 0 {
		ctypes = []string{jwt.ConnectionTypeStandard, jwt.ConnectionTypeWebsocket}
	}
	for _, ct := range ctypes {
		if ct != jwt.ConnectionTypeStandard && ct != jwt.ConnectionTypeWebsocket {
			return "", fmt.Errorf("natsauth: grant connection type %q: want STANDARD or WEBSOCKET", ct)
		}
	}

	uc := jwt.NewUserClaims(userPub)
	uc.Name = g.Name
	uc.IssuerAccount = accountPub
	uc.Expires = g.Expires.Unix()
	uc.AllowedConnectionTypes.Add(ctypes...)
	// An empty allow list would mean "allow everything": deny instead.
	if len(g.Publish) == 0 {
		uc.Pub.Deny.Add(">")
	} else {
		uc.Pub.Allow.Add(g.Publish...)
	}
	if len(g.Subscribe) == 0 {
		uc.Sub.Deny.Add(">")
	} else {
		uc.Sub.Allow.Add(g.Subscribe...)
	}
	uc.Src.Add(g.SourceCIDRs...)
	uc.Times = append(uc.Times, g.TimeWindows...)
	uc.Locale = g.Locale
	uc.Tags.Add("grant:" + g.Name)
	if err := validate(uc); err != nil {
		return "", err
	}
	return uc.Encode(grantSigningKey)
}

// inFleetTree reports whether s is a well-formed subject strictly inside the
// fleet tree (fleet.<something>).
func inFleetTree(s string) bool {
	return validSubject(s) && strings.HasPrefix(s, SubjectRoot+".")
}

// GrantScope selects part of a tenant's tree for a grant. Fleets do not
// appear in subjects (fleet.<env>.veh.<vid>...), so the caller resolves a
// fleet to its environment and vehicle IDs.
type GrantScope struct {
	Env string
	// VehicleIDs limits the grant to these vehicles. Empty means every
	// vehicle of Env, present and future (read categories only).
	VehicleIDs []string
	// Categories to grant: state, evt and agent are read (subscribe);
	// cmd is publish on .cmd.> plus subscribe on the grant's reply subjects
	// of those vehicles, and needs explicit VehicleIDs.
	Categories []Category
}

// GrantPermissions turns scopes into the explicit, sorted, de-duplicated
// subject lists of a GrantSpec:
//
//	state/evt/agent → subscribe fleet.<env>.veh.<vid|*>.<category>.>
//	cmd             → publish   fleet.<env>.veh.<vid>.cmd.>
//	                  subscribe fleet.<env>.veh.<vid>.rpl.grant.<grant>.>  (replies, GrantReplyPrefix)
func GrantPermissions(grantName string, scopes ...GrantScope) (publish, subscribe []string, err error) {
	if !grantNameRe.MatchString(grantName) {
		return nil, nil, fmt.Errorf("natsauth: invalid grant name %q: want 1-64 characters of [A-Za-z0-9_-]", grantName)
	}
	if len(scopes) == 0 {
		return nil, nil, errors.New("natsauth: a grant needs at least one scope")
	}
	for _, sc := range scopes {
		if err := ValidateEnv(sc.Env); err != nil {
			return nil, nil, err
		}
		if len(sc.Categories) == 0 {
			return nil, nil, fmt.Errorf("natsauth: grant scope for %q has no categories", sc.Env)
		}
		vids := sc.VehicleIDs
		for _, vid := range vids {
			if err := ValidateVehicleID(vid); err != nil {
				return nil, nil, err
			}
		}
		if len(vids) == 0 {
			vids = []string{"*"}
		}
		for _, c := range sc.Categories {
			if !c.valid() {
				return nil, nil, fmt.Errorf("natsauth: unknown grant category %q", c)
			}
			if c == CategoryCommands && len(sc.VehicleIDs) == 0 {
				return nil, nil, errors.New("natsauth: a command grant must list its vehicles explicitly")
			}
			for _, vid := range vids {
				s := VehicleSubjectPrefix(sc.Env, vid) + "." + string(c) + ".>"
				if c == CategoryCommands {
					publish = append(publish, s)
					subscribe = append(subscribe, GrantReplyPrefix(sc.Env, vid, grantName)+".>")
				} else {
					subscribe = append(subscribe, s)
				}
			}
		}
	}
	slices.Sort(publish)
	slices.Sort(subscribe)
	return slices.Compact(publish), slices.Compact(subscribe), nil
}
