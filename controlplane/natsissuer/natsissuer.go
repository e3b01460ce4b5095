// Package natsissuer is the controlplane.Issuer adapter: it keeps custody of
// the NATS operator's and the tenant accounts' nkeys and signs their JWTs.
//
// Seeds exist in plaintext only inside this package: at rest they are sealed
// blobs (internal/seal) in controlplane.Operator.Sealed and
// controlplane.Account.Sealed, each bound by associated data to the row it
// belongs to, so a blob copied into another tenant's row does not open. The
// Issuer keeps the operator signing key and the system account signing key
// in memory for its lifetime; an account's blob is opened for each signature
// and its seeds wiped right after (opening costs well under a microsecond
// next to the ~100 µs of an ed25519 JWT signature, see BenchmarkSignVehicle).
// Wiping is best effort: Go may have copied memory we cannot reach. Errors,
// fmt output and logs never show a seed.
//
// It may import controlplane, internal/natsauth, internal/seal, nats-io/jwt
// and nats-io/nkeys; never another adapter.
package natsissuer

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/seal"
)

var _ controlplane.Issuer = (*Issuer)(nil)

// operatorAD binds an operator blob to the operator's public key.
func operatorAD(operatorPub string) []byte {
	return seal.AssociatedData("fleetplane", "operator", operatorPub)
}

// accountAD binds an account blob to its tenant and account public key.
func accountAD(tenantID, accountPub string) []byte {
	return seal.AssociatedData("fleetplane", "account", tenantID, accountPub)
}

// show returns s if it is a public nkey and a placeholder otherwise, so a
// seed stored by mistake where a public key belongs never reaches an error
// message or a log.
func show(s string) string {
	if nkeys.IsValidPublicKey(s) {
		return s
	}
	if s == "" {
		return "(none)"
	}
	return "(not a public key, not shown)"
}

// NewOperator creates the installation's operator: identity and signing
// keys, the system account with its signing key, and their JWTs. Sealed
// holds all their seeds (sealed under keys, bound to the operator's public
// key); the result carries no plaintext seed. natsauth.NewOperator also makes
// a long-lived system user: it is dropped, the control plane mints
// short-lived ones with Issuer.SystemUser.
func NewOperator(keys *seal.Keyring, name string) (*controlplane.Operator, error) {
	if keys == nil {
		return nil, errors.New("natsissuer: new operator: no keyring")
	}
	nop, err := natsauth.NewOperator(name)
	if err != nil {
		return nil, fmt.Errorf("natsissuer: new operator: %w", err)
	}
	defer nop.Wipe()
	plain, err := encodeKeys([]roleKeys{
		{roleOperator, []natsauth.Key{nop.Identity}},
		{roleOperatorSigning, []natsauth.Key{nop.SigningKey}},
		{roleSystem, []natsauth.Key{nop.System.Identity}},
		{roleSystemSigning, []natsauth.Key{nop.System.SigningKey}},
	})
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	sealed, err := keys.Seal(plain, operatorAD(nop.Identity.Public))
	if err != nil {
		return nil, fmt.Errorf("natsissuer: seal operator keys: %w", err)
	}
	return &controlplane.Operator{
		Name:                   nop.Name,
		PublicKey:              nop.Identity.Public,
		SigningKeys:            []string{nop.SigningKey.Public},
		JWT:                    nop.JWT,
		SystemAccountPublicKey: nop.System.Identity.Public,
		SystemAccountJWT:       nop.System.JWT,
		Sealed:                 sealed,
		CreatedAt:              time.Now().UTC(),
	}, nil
}

// Issuer implements controlplane.Issuer. It is safe for concurrent use.
type Issuer struct {
	keys *seal.Keyring
	op   *controlplane.Operator

	// Held for the Issuer's lifetime; the identity keys are not.
	operatorSigning nkeys.KeyPair // signs account JWTs
	systemSigning   nkeys.KeyPair // signs system users
}

// New opens op.Sealed and returns an Issuer signing for op. It checks that
// the sealed keys are op's: the identity keys match op.PublicKey and
// op.SystemAccountPublicKey, and the operator signing key is one of
// op.SigningKeys (the first listed that the blob holds is used).
func New(keys *seal.Keyring, op *controlplane.Operator) (*Issuer, error) {
	if keys == nil || op == nil {
		return nil, errors.New("natsissuer: new issuer: keyring and operator are required")
	}
	plain, err := keys.Open(op.Sealed, operatorAD(op.PublicKey))
	if err != nil {
		return nil, fmt.Errorf("natsissuer: open operator %s keys: %w", show(op.PublicKey), err)
	}
	doc, err := decodeKeys(plain)
	if err != nil {
		return nil, fmt.Errorf("natsissuer: operator %s: %w", show(op.PublicKey), err)
	}
	defer doc.wipe()

	if id, err := doc.key(roleOperator); err != nil {
		return nil, err
	} else if id.Public != op.PublicKey {
		return nil, fmt.Errorf("natsissuer: sealed operator key %s is not operator %s", id.Public, show(op.PublicKey))
	}
	if id, err := doc.key(roleSystem); err != nil {
		return nil, err
	} else if id.Public != op.SystemAccountPublicKey {
		return nil, fmt.Errorf("natsissuer: sealed system account key %s is not %s", id.Public, show(op.SystemAccountPublicKey))
	}
	var opSK natsauth.Key
	for _, pub := range op.SigningKeys {
		if opSK, err = doc.keyFor(roleOperatorSigning, pub); err == nil {
			break
		}
	}
	if opSK.Seed == nil {
		return nil, fmt.Errorf("natsissuer: operator %s: no sealed seed for any of its signing keys", show(op.PublicKey))
	}
	sysSK, err := doc.key(roleSystemSigning)
	if err != nil {
		return nil, err
	}
	iss := &Issuer{keys: keys, op: op}
	if iss.operatorSigning, err = opSK.KeyPair(); err != nil {
		return nil, fmt.Errorf("natsissuer: operator signing key: %w", err)
	}
	if iss.systemSigning, err = sysSK.KeyPair(); err != nil {
		iss.Wipe()
		return nil, fmt.Errorf("natsissuer: system signing key: %w", err)
	}
	return iss, nil
}

// Operator returns the operator the Issuer signs for.
func (iss *Issuer) Operator() *controlplane.Operator { return iss.op }

// HubTrust is the public material every hub node needs (see WriteHubConfig).
func (iss *Issuer) HubTrust() natsauth.HubTrust { return HubTrust(iss.op) }

// HubTrust is op's public material for hubs: the operator JWT and the system
// account, which hubs must resolve at boot.
func HubTrust(op *controlplane.Operator) natsauth.HubTrust {
	return natsauth.HubTrust{
		OperatorJWT:            op.JWT,
		SystemAccountPublicKey: op.SystemAccountPublicKey,
		SystemAccountJWT:       op.SystemAccountJWT,
	}
}

// Wipe overwrites the signing keys held in memory; the Issuer is unusable after.
func (iss *Issuer) Wipe() {
	if iss.operatorSigning != nil {
		iss.operatorSigning.Wipe()
	}
	if iss.systemSigning != nil {
		iss.systemSigning.Wipe()
	}
}

// String shows the operator's public key only.
func (iss *Issuer) String() string {
	if iss == nil || iss.op == nil {
		return "natsissuer.Issuer(nil)"
	}
	return fmt.Sprintf("natsissuer.Issuer{operator: %q %s}", iss.op.Name, show(iss.op.PublicKey))
}

// Format makes every fmt verb (%v, %+v, %#v ...) print String: the key pairs
// inside hold seeds.
func (iss *Issuer) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, iss.String()) }

// LogValue keeps seeds out of slog output.
func (iss *Issuer) LogValue() slog.Value { return slog.StringValue(iss.String()) }

// NewAccount creates a tenant account's identity key and its three role
// signing keys and seals their seeds, bound to tenantID and the account's
// public key. Limits, Revocations, Version and JWT are the caller's.
func (iss *Issuer) NewAccount(tenantID, name string) (*controlplane.Account, error) {
	if tenantID == "" || name == "" {
		return nil, errors.New("natsissuer: new account: tenant ID and name are required")
	}
	ak, err := natsauth.NewAccountKeys()
	if err != nil {
		return nil, fmt.Errorf("natsissuer: new account for tenant %s: %w", tenantID, err)
	}
	defer ak.Wipe()
	plain, err := encodeKeys([]roleKeys{
		{roleAccount, []natsauth.Key{ak.Account}},
		{roleVehicle, []natsauth.Key{ak.Vehicle}},
		{roleGrant, []natsauth.Key{ak.Grant}},
		{roleService, []natsauth.Key{ak.Service}},
	})
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	sealed, err := iss.keys.Seal(plain, accountAD(tenantID, ak.Account.Public))
	if err != nil {
		return nil, fmt.Errorf("natsissuer: seal account keys of tenant %s: %w", tenantID, err)
	}
	return &controlplane.Account{
		TenantID:    tenantID,
		Name:        name,
		PublicKey:   ak.Account.Public,
		SigningKeys: ak.RoleKeys(),
		Sealed:      sealed,
	}, nil
}

// SignAccount signs a's JWT with the operator signing key from a's keys,
// name, limits and revocations. It does not need a's seeds.
func (iss *Issuer) SignAccount(a *controlplane.Account) (string, error) {
	if a == nil {
		return "", errors.New("natsissuer: sign account: nil account")
	}
	j, err := natsauth.IssueAccountJWT(iss.operatorSigning, a.PublicKey, a.SigningKeys, natsauth.AccountSpec{
		Name:        a.Name,
		TenantID:    a.TenantID,
		Limits:      a.Limits,
		Revocations: a.Revocations,
	})
	if err != nil {
		return "", fmt.Errorf("natsissuer: sign account %s of tenant %s: %w", show(a.PublicKey), a.TenantID, err)
	}
	return j, nil
}

// roleKey opens a's sealed keys and returns the key pair of role, checking
// that the blob is a's (the AEAD binds it to a.TenantID and a.PublicKey) and
// that the role key is the one a's JWT lists. The caller wipes the result.
func (iss *Issuer) roleKey(a *controlplane.Account, role, wantPub string) (nkeys.KeyPair, error) {
	if a == nil {
		return nil, errors.New("natsissuer: nil account")
	}
	plain, err := iss.keys.Open(a.Sealed, accountAD(a.TenantID, a.PublicKey))
	if err != nil {
		return nil, fmt.Errorf("natsissuer: open keys of account %s (tenant %s): %w", show(a.PublicKey), a.TenantID, err)
	}
	doc, err := decodeKeys(plain)
	if err != nil {
		return nil, fmt.Errorf("natsissuer: account %s: %w", show(a.PublicKey), err)
	}
	defer doc.wipe()
	if id, err := doc.key(roleAccount); err != nil {
		return nil, fmt.Errorf("natsissuer: account %s: %w", show(a.PublicKey), err)
	} else if id.Public != a.PublicKey {
		return nil, fmt.Errorf("natsissuer: sealed account key %s is not account %s", id.Public, show(a.PublicKey))
	}
	k, err := doc.keyFor(role, wantPub)
	if err != nil {
		return nil, fmt.Errorf("natsissuer: account %s: %w", show(a.PublicKey), err)
	}
	kp, err := k.KeyPair()
	if err != nil {
		return nil, fmt.Errorf("natsissuer: account %s %s key: %w", show(a.PublicKey), role, err)
	}
	return kp, nil
}

// SignVehicle signs a vehicle user JWT with a's vehicle role key.
func (iss *Issuer) SignVehicle(a *controlplane.Account, userPub string, v natsauth.VehicleIdentity, expires time.Time) (string, error) {
	if a == nil {
		return "", errors.New("natsissuer: sign vehicle: nil account")
	}
	kp, err := iss.roleKey(a, roleVehicle, a.SigningKeys.Vehicle)
	if err != nil {
		return "", err
	}
	defer kp.Wipe()
	j, err := natsauth.IssueVehicleJWT(kp, a.PublicKey, userPub, v, expires)
	if err != nil {
		return "", fmt.Errorf("natsissuer: sign vehicle %s of tenant %s: %w", v.VehicleID, a.TenantID, err)
	}
	return j, nil
}

// SignGrant signs a grant user JWT with a's grant role key.
func (iss *Issuer) SignGrant(a *controlplane.Account, userPub string, g natsauth.GrantSpec) (string, error) {
	if a == nil {
		return "", errors.New("natsissuer: sign grant: nil account")
	}
	kp, err := iss.roleKey(a, roleGrant, a.SigningKeys.Grant)
	if err != nil {
		return "", err
	}
	defer kp.Wipe()
	j, err := natsauth.IssueGrantJWT(kp, a.PublicKey, userPub, g)
	if err != nil {
		return "", fmt.Errorf("natsissuer: sign grant %s of tenant %s: %w", g.Name, a.TenantID, err)
	}
	return j, nil
}

// SignService signs the tenant's service user JWT with a's service role key.
func (iss *Issuer) SignService(a *controlplane.Account, userPub, name string, expires time.Time) (string, error) {
	if a == nil {
		return "", errors.New("natsissuer: sign service: nil account")
	}
	kp, err := iss.roleKey(a, roleService, a.SigningKeys.Service)
	if err != nil {
		return "", err
	}
	defer kp.Wipe()
	j, err := natsauth.IssueServiceJWT(kp, a.PublicKey, userPub, name, expires)
	if err != nil {
		return "", fmt.Errorf("natsissuer: sign service user %q of tenant %s: %w", name, a.TenantID, err)
	}
	return j, nil
}

// SystemUserName is the name of the system users SystemUser issues.
const SystemUserName = "fleetplane-controlplane"

// SystemUser issues a fresh system-account user (new nkey) for the control
// plane's hub connections, valid until expires, which is mandatory: no
// system user seed is ever stored, each connection mints its own (see
// controlplane/hubs). The seed is returned for the connection's signature
// callback; the caller wipes it.
func (iss *Issuer) SystemUser(expires time.Time) (userJWT string, seed []byte, err error) {
	if expires.IsZero() || !expires.After(time.Now()) {
		return "", nil, errors.New("natsissuer: system user: expiry must be in the future")
	}
	u, err := natsauth.NewUserKey()
	if err != nil {
		return "", nil, fmt.Errorf("natsissuer: system user: %w", err)
	}
	j, err := natsauth.IssueSystemUserJWT(iss.systemSigning, iss.op.SystemAccountPublicKey, u.Public, SystemUserName, expires)
	if err != nil {
		u.Wipe()
		return "", nil, fmt.Errorf("natsissuer: system user: %w", err)
	}
	return j, u.Seed, nil
}

// SystemUserCreds is SystemUser for a lifetime ttl, in the shape
// controlplane/hubs takes for its credentials callback.
func (iss *Issuer) SystemUserCreds(ttl time.Duration) func() (string, []byte, error) {
	return func() (string, []byte, error) { return iss.SystemUser(time.Now().Add(ttl)) }
}
