// Package natsauth is Fleetplane's pure NATS identity layer: it makes nkeys
// and signs the operator, account (tenant) and user (vehicle, grant, service)
// JWTs of DESIGN.md §2, and formats creds.
//
// Every function takes keys as arguments and returns JWTs or creds; nothing
// here keeps state or does I/O (beyond time.Now for expiry checks and the
// jwt library loading time-zone data to validate a grant's Locale). Seeds
// are returned as []byte so the caller can seal them (internal/seal) and
// wipe them; errors and fmt output never show a seed. It imports only
// nats-io/jwt, nats-io/nkeys and the standard library; its tests also use
// internal/natstest, nats-server and nats.go.
//
// # Key hierarchy
//
//	operator identity key ──signs── operator JWT (lists the operator signing key,
//	                                              strict signing key usage, system account)
//	operator signing key  ──signs── account JWTs (SYS and one per tenant)
//	account role keys     ──sign─── user JWTs:
//	    vehicle (scoped, template below)  → vehicle users, LEAFNODE only
//	    grant   (NOT scoped, see IssueGrantJWT) → third-party users with explicit subjects
//	    service (scoped, template below)  → the control plane's per-tenant user
//
// # Permission design (verified against nats-server v2.15.2 server/auth.go)
//
// A user signed by a scoped key gets the scope's template as its permissions
// and limits; the server rejects such a user JWT if it carries any
// permission, limit, source CIDR, time window or connection type of its own
// (jwt.UserScope.ValidateScopedSigner requires HasEmptyPermissions). Templates
// are expanded per connection by processUserPermissionsTemplate:
//
//   - {{name()}} is the user JWT's name verbatim (case kept): vehicles put the
//     vehicle ID there, so a vehicle "Drone-7" gets fleet.prod.veh.Drone-7.>.
//   - {{tag(k)}} expands every "k:value" tag; jwt.TagList lower-cases tags on
//     Add, so a tag cannot carry a case-sensitive vehicle ID. Only the
//     environment goes through a tag, and environments are lower-case by rule.
//   - A template that expands to nothing (missing tag) removes the entry; an
//     allow list that becomes empty turns into "deny >", so a vehicle JWT
//     without an env tag can publish nothing rather than everything.
//
// On a leaf connection the hub enforces the user's publish permissions on
// traffic leaf→hub and its subscribe permissions on hub→leaf (the hub
// reverses them internally, server/leafnode.go), and it sends both lists to
// the leaf, which drops what it may not send instead of getting cut off.
// The hub also propagates to a leaf only the interest the leaf may publish
// to, which is why command replies live in the vehicle's own tree
// (CommandReplies) and PubAcks in its own inbox (VehicleInboxPrefix). The
// details are in VehicleScope, ServiceScope and IssueGrantJWT.
package natsauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// NoLimit is the NATS value for "unlimited" in Limits.
const NoLimit = jwt.NoLimit

// MaxUserLifetime caps the lifetime of every tenant user JWT this package
// issues (vehicle, grant, service). Because no such JWT outlives it, a
// revocation entry older than MaxUserLifetime can be pruned from the account
// JWT (PruneRevocations) without reviving anyone.
const MaxUserLifetime = 90 * 24 * time.Hour

// Identifier rules, the same as controlplane/ident.go: vehicle IDs and
// environments become subject tokens.
var (
	vehicleIDRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	envRe       = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?$`)
	// tagValueRe keeps tag values free of whitespace, commas and colons so
	// "key:value" tags parse back unambiguously (UUIDs and slugs fit).
	tagValueRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	// grantNameRe: the grant name is a subject token of its reply subjects.
	grantNameRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	// serviceNameRe: the service user's name is a token of its inbox
	// subjects (ServiceInboxPrefix) through the {{name()}} template.
	serviceNameRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
)

// Key is an nkey: its public key and seed. The seed is secret: seal it before
// storing it and never log it.
type Key struct {
	Public string
	Seed   []byte
}

// KeyPair returns the key pair for k's seed.
func (k Key) KeyPair() (nkeys.KeyPair, error) { return KeyPairFromSeed(k.Seed) }

// Wipe overwrites the seed in memory.
func (k *Key) Wipe() { clear(k.Seed) }

// String shows the public key only, so a Key printed by mistake leaks nothing.
func (k Key) String() string { return k.Public }

// Format makes every fmt verb print the public key only.
func (k Key) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.Public)) }

// KeyPairFromSeed parses a seed (as returned in Key.Seed, e.g. after opening
// it from storage). The error never contains the seed.
func KeyPairFromSeed(seed []byte) (nkeys.KeyPair, error) {
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("natsauth: invalid seed: %w", err)
	}
	return kp, nil
}

func newKey(create func() (nkeys.KeyPair, error)) (Key, error) {
	kp, err := create()
	if err != nil {
		return Key{}, fmt.Errorf("natsauth: create nkey: %w", err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return Key{}, fmt.Errorf("natsauth: public key: %w", err)
	}
	seed, err := kp.Seed()
	if err != nil {
		return Key{}, fmt.Errorf("natsauth: seed: %w", err)
	}
	// kp.Seed returns the key pair's own buffer, which Wipe overwrites: copy.
	return Key{Public: pub, Seed: bytes.Clone(seed)}, nil
}

// NewUserKey makes a user nkey (the agent makes its own; this is for grants,
// service users and tests).
func NewUserKey() (Key, error) { return newKey(nkeys.CreateUser) }

// publicOf returns kp's public key and checks its type.
func publicOf(kp nkeys.KeyPair, what string, valid func(string) bool) (string, error) {
	if kp == nil {
		return "", fmt.Errorf("natsauth: %s is nil", what)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return "", fmt.Errorf("natsauth: %s: %w", what, err)
	}
	if !valid(pub) {
		return "", fmt.Errorf("natsauth: %s %s is not the right kind of nkey", what, pub)
	}
	return pub, nil
}

// keyKind describes a value given where a public key was expected without
// echoing it unless it is a public key: a seed passed by mistake must not end
// up in an error message or a log.
func keyKind(s string) string {
	switch {
	case nkeys.IsValidPublicOperatorKey(s), nkeys.IsValidPublicAccountKey(s), nkeys.IsValidPublicUserKey(s):
		return "the public key " + s
	case s == "":
		return "an empty string"
	}
	if _, _, err := nkeys.DecodeSeed([]byte(s)); err == nil {
		return "a seed (not shown)"
	}
	return fmt.Sprintf("an invalid value (%d characters, not shown)", len(s))
}

// validate runs the jwt library's own checks on claims before they are signed.
func validate(c interface{ Validate(*jwt.ValidationResults) }) error {
	vr := jwt.CreateValidationResults()
	c.Validate(vr)
	if errs := vr.Errors(); len(errs) > 0 {
		return fmt.Errorf("natsauth: invalid claims: %w", errors.Join(errs...))
	}
	return nil
}

// checkExpiry enforces a mandatory, bounded expiry for tenant users.
func checkExpiry(expires time.Time) error {
	now := time.Now()
	switch {
	case expires.IsZero():
		return errors.New("natsauth: an expiry is mandatory")
	case !expires.After(now):
		return fmt.Errorf("natsauth: expiry %s is in the past", expires.UTC().Format(time.RFC3339))
	case expires.Sub(now) > MaxUserLifetime:
		return fmt.Errorf("natsauth: expiry %s is more than %s away", expires.UTC().Format(time.RFC3339), MaxUserLifetime)
	}
	return nil
}

// FormatCreds returns a NATS creds file (the decorated user JWT and seed), as
// nats.UserCredentials and RemoteLeafOpts.Credentials read it. It checks that
// the seed belongs to the JWT's user. The result contains the seed: write it
// 0600 and wipe it after use.
func FormatCreds(userJWT string, seed []byte) ([]byte, error) {
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		return nil, errors.New("natsauth: creds: invalid seed")
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil || !nkeys.IsValidPublicUserKey(pub) {
		return nil, errors.New("natsauth: creds need a user seed")
	}
	uc, err := jwt.DecodeUserClaims(userJWT)
	if err != nil {
		return nil, fmt.Errorf("natsauth: creds: %w", err)
	}
	if uc.Subject != pub {
		return nil, errors.New("natsauth: creds: the seed does not belong to the JWT's user")
	}
	b, err := jwt.FormatUserConfig(userJWT, seed)
	if err != nil {
		return nil, fmt.Errorf("natsauth: creds: %w", err)
	}
	return b, nil
}

// CLIContext returns a NATS CLI context (~/.config/nats/context/<name>.json)
// pointing at url with the given creds file, for operators debugging a hub.
func CLIContext(description, url, credsPath string) []byte {
	b, _ := json.MarshalIndent(struct {
		Description string `json:"description"`
		URL         string `json:"url"`
		Creds       string `json:"creds"`
	}{description, url, credsPath}, "", "  ") // cannot fail: three strings
	return append(b, '\n')
}

// subject helpers -----------------------------------------------------------

// validSubject reports whether s is a well-formed NATS subject: non-empty
// tokens, no whitespace, '*' and '>' only as whole tokens, '>' only last.
func validSubject(s string) bool {
	if s == "" || strings.ContainsAny(s, " \t\r\n") {
		return false
	}
	toks := strings.Split(s, ".")
	for i, t := range toks {
		switch {
		case t == "":
			return false
		case t == ">":
			if i != len(toks)-1 {
				return false
			}
		case t == "*":
		case strings.ContainsAny(t, "*>"):
			return false
		}
	}
	return true
}
