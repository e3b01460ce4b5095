package natsauth

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// SystemAccountName is the name of the system account in its JWT.
const SystemAccountName = "SYS"

// MinServerVersion is asserted in the operator JWT: hubs older than this
// refuse the operator (CVE fixes listed in NATS-NOTES.md).
const MinServerVersion = "2.15.2"

// Operator is the service's NATS identity: everything NewOperator creates.
// Seeds are secret; seal them before storing.
type Operator struct {
	Name string
	// Identity signs only the operator JWT; keep its seed offline where possible.
	Identity Key
	// SigningKey signs account JWTs (the operator JWT sets strict signing
	// key usage, so hubs refuse accounts signed by the identity key).
	SigningKey Key
	JWT        string
	System     SystemAccount
}

// SystemAccount is the hubs' system account and the control plane's user in it.
type SystemAccount struct {
	Identity   Key
	SigningKey Key // signs system users, so the identity seed can stay offline
	JWT        string
	User       User // the control plane's system user (push JWTs, $SYS requests)
}

// User is a user nkey with its JWT.
type User struct {
	Key
	JWT string
}

// Creds formats u as a creds file.
func (u User) Creds() ([]byte, error) { return FormatCreds(u.JWT, u.Seed) }

// NewOperator creates the operator identity and signing keys, the operator
// JWT, the system account (signed by the operator signing key) and a system
// user for the control plane. The system user has no expiry: it is the
// control plane's own long-lived credential; rotate it with
// IssueSystemUserJWT and a system-account revocation.
func NewOperator(name string) (*Operator, error) {
	if name == "" {
		return nil, errors.New("natsauth: operator name is empty")
	}
	op := &Operator{Name: name}
	var err error
	if op.Identity, err = newKey(nkeys.CreateOperator); err != nil {
		return nil, err
	}
	if op.SigningKey, err = newKey(nkeys.CreateOperator); err != nil {
		return nil, err
	}
	if op.System.Identity, err = newKey(nkeys.CreateAccount); err != nil {
		return nil, err
	}
	if op.System.SigningKey, err = newKey(nkeys.CreateAccount); err != nil {
		return nil, err
	}
	if op.System.User.Key, err = NewUserKey(); err != nil {
		return nil, err
	}

	idKP, err := op.Identity.KeyPair()
	if err != nil {
		return nil, err
	}
	defer idKP.Wipe()
	if op.JWT, err = IssueOperatorJWT(idKP, name, []string{op.SigningKey.Public}, op.System.Identity.Public); err != nil {
		return nil, err
	}
	skKP, err := op.SigningKey.KeyPair()
	if err != nil {
		return nil, err
	}
	defer skKP.Wipe()
	if op.System.JWT, err = IssueSystemAccountJWT(skKP, op.System.Identity.Public, op.System.SigningKey.Public); err != nil {
		return nil, err
	}
	sysSK, err := op.System.SigningKey.KeyPair()
	if err != nil {
		return nil, err
	}
	defer sysSK.Wipe()
	if op.System.User.JWT, err = IssueSystemUserJWT(sysSK, op.System.Identity.Public, op.System.User.Public, "fleetplane-control-plane", time.Time{}); err != nil {
		return nil, err
	}
	return op, nil
}

// Wipe overwrites every seed held by op.
func (op *Operator) Wipe() {
	op.Identity.Wipe()
	op.SigningKey.Wipe()
	op.System.Identity.Wipe()
	op.System.SigningKey.Wipe()
	op.System.User.Wipe()
}

// IssueOperatorJWT signs the operator JWT with the operator identity key. It
// lists signingKeys, requires them for every account (strict signing key
// usage), names the system account and asserts MinServerVersion. Re-issue it
// to rotate operator signing keys.
func IssueOperatorJWT(identity nkeys.KeyPair, name string, signingKeys []string, systemAccountPub string) (string, error) {
	pub, err := publicOf(identity, "operator identity key", nkeys.IsValidPublicOperatorKey)
	if err != nil {
		return "", err
	}
	if name == "" {
		return "", errors.New("natsauth: operator name is empty")
	}
	if len(signingKeys) == 0 {
		return "", errors.New("natsauth: an operator needs at least one signing key")
	}
	for _, sk := range signingKeys {
		if !nkeys.IsValidPublicOperatorKey(sk) || sk == pub {
			return "", fmt.Errorf("natsauth: operator signing key: want an operator public key other than the identity key, got %s", keyKind(sk))
		}
	}
	if !nkeys.IsValidPublicAccountKey(systemAccountPub) {
		return "", fmt.Errorf("natsauth: system account key: want an account public key, got %s", keyKind(systemAccountPub))
	}
	oc := jwt.NewOperatorClaims(pub)
	oc.Name = name
	oc.SigningKeys.Add(signingKeys...)
	oc.StrictSigningKeyUsage = true
	oc.SystemAccount = systemAccountPub
	oc.AssertServerVersion = MinServerVersion
	if err := validate(oc); err != nil {
		return "", err
	}
	return oc.Encode(identity)
}

// IssueSystemAccountJWT signs the system account JWT with an operator signing key.
func IssueSystemAccountJWT(operatorSigningKey nkeys.KeyPair, systemAccountPub, systemSigningKeyPub string) (string, error) {
	if _, err := publicOf(operatorSigningKey, "operator signing key", nkeys.IsValidPublicOperatorKey); err != nil {
		return "", err
	}
	if !nkeys.IsValidPublicAccountKey(systemAccountPub) {
		return "", fmt.Errorf("natsauth: system account key: want an account public key, got %s", keyKind(systemAccountPub))
	}
	if !nkeys.IsValidPublicAccountKey(systemSigningKeyPub) || systemSigningKeyPub == systemAccountPub {
		return "", fmt.Errorf("natsauth: system signing key: want an account public key other than the account's, got %s", keyKind(systemSigningKeyPub))
	}
	ac := jwt.NewAccountClaims(systemAccountPub)
	ac.Name = SystemAccountName
	ac.SigningKeys.Add(systemSigningKeyPub)
	ac.Limits.DisallowBearer = true
	if err := validate(ac); err != nil {
		return "", err
	}
	return ac.Encode(operatorSigningKey)
}

// IssueSystemUserJWT signs a system-account user with the system account's
// signing key. expires may be zero (no expiry) for the control plane's own
// user. It may connect over TCP or in-process only.
func IssueSystemUserJWT(systemSigningKey nkeys.KeyPair, systemAccountPub, userPub, name string, expires time.Time) (string, error) {
	if _, err := publicOf(systemSigningKey, "system account signing key", nkeys.IsValidPublicAccountKey); err != nil {
		return "", err
	}
	if !nkeys.IsValidPublicAccountKey(systemAccountPub) {
		return "", fmt.Errorf("natsauth: system account key: want an account public key, got %s", keyKind(systemAccountPub))
	}
	if !nkeys.IsValidPublicUserKey(userPub) {
		return "", fmt.Errorf("natsauth: user key: want a user public key, got %s", keyKind(userPub))
	}
	uc := jwt.NewUserClaims(userPub)
	uc.Name = name
	uc.IssuerAccount = systemAccountPub
	uc.AllowedConnectionTypes.Add(jwt.ConnectionTypeStandard, jwt.ConnectionTypeInProcess)
	if !expires.IsZero() {
		uc.Expires = expires.Unix()
	}
	if err := validate(uc); err != nil {
		return "", err
	}
	return uc.Encode(systemSigningKey)
}

// HubTrust is what every hub node needs to run in operator mode: the
// operator JWT (trusted operator) and the system account, which must be
// resolvable at boot (resolver_preload).
type HubTrust struct {
	OperatorJWT            string
	SystemAccountPublicKey string
	SystemAccountJWT       string
}

// HubTrust returns the public material hubs need. It contains no seeds.
func (op *Operator) HubTrust() HubTrust {
	return HubTrust{
		OperatorJWT:            op.JWT,
		SystemAccountPublicKey: op.System.Identity.Public,
		SystemAccountJWT:       op.System.JWT,
	}
}

// OperatorClaims decodes the operator JWT for server.Options.TrustedOperators.
func (h HubTrust) OperatorClaims() (*jwt.OperatorClaims, error) {
	oc, err := jwt.DecodeOperatorClaims(h.OperatorJWT)
	if err != nil {
		return nil, fmt.Errorf("natsauth: decode operator JWT: %w", err)
	}
	return oc, nil
}

// ResolverPreload is the resolver_preload map (account public key → JWT):
// store it in the account resolver before the server starts.
func (h HubTrust) ResolverPreload() map[string]string {
	return map[string]string{h.SystemAccountPublicKey: h.SystemAccountJWT}
}
