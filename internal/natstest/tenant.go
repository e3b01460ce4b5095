package natstest

import (
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// MustOperator creates an operator or fails the test.
func MustOperator(tb testing.TB) *natsauth.Operator {
	tb.Helper()
	op, err := natsauth.NewOperator("fleetplane-test")
	if err != nil {
		tb.Fatal(err)
	}
	return op
}

// Tenant is a tenant account built with natsauth: its keys, its spec and the
// operator that signs it.
type Tenant struct {
	Op   *natsauth.Operator
	Keys *natsauth.AccountKeys
	Spec natsauth.AccountSpec
}

// NewTenant creates account keys for spec; call JWT or Push to publish it.
func NewTenant(tb testing.TB, op *natsauth.Operator, spec natsauth.AccountSpec) *Tenant {
	tb.Helper()
	keys, err := natsauth.NewAccountKeys()
	if err != nil {
		tb.Fatal(err)
	}
	return &Tenant{Op: op, Keys: keys, Spec: spec}
}

// JWT issues the account JWT from the current Spec.
func (t *Tenant) JWT(tb testing.TB) string {
	tb.Helper()
	sk, err := t.Op.SigningKey.KeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	j, err := natsauth.IssueAccountJWT(sk, t.Keys.Account.Public, t.Keys.RoleKeys(), t.Spec)
	if err != nil {
		tb.Fatalf("IssueAccountJWT: %v", err)
	}
	return j
}

// Push issues the account JWT and pushes it over sys (a system-user
// connection to a single server); it returns the push round trip.
func (t *Tenant) Push(tb testing.TB, sys *nats.Conn) time.Duration {
	tb.Helper()
	return PushAccount(tb, sys, t.JWT(tb))
}

// Vehicle issues a vehicle user (fresh nkey) expiring at expires (zero: in an hour).
func (t *Tenant) Vehicle(tb testing.TB, v natsauth.VehicleIdentity, expires time.Time) natsauth.User {
	tb.Helper()
	if expires.IsZero() {
		expires = time.Now().Add(time.Hour)
	}
	u := newUser(tb)
	sk, err := t.Keys.Vehicle.KeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	if u.JWT, err = natsauth.IssueVehicleJWT(sk, t.Keys.Account.Public, u.Public, v, expires); err != nil {
		tb.Fatalf("IssueVehicleJWT: %v", err)
	}
	return u
}

// Service issues the tenant's service user, valid for an hour. It has the
// control plane's narrow natsauth.ServiceScope: connect it with
// nats.CustomInboxPrefix(natsauth.ServiceInboxPrefix(name)) for requests;
// tests that need more use Admin.
func (t *Tenant) Service(tb testing.TB, name string) natsauth.User {
	tb.Helper()
	u := newUser(tb)
	sk, err := t.Keys.Service.KeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	if u.JWT, err = natsauth.IssueServiceJWT(sk, t.Keys.Account.Public, u.Public, name, time.Now().Add(time.Hour)); err != nil {
		tb.Fatalf("IssueServiceJWT: %v", err)
	}
	return u
}

// Admin issues an all-powerful user of the tenant, valid for an hour: no
// permissions of its own, so every subject, the whole JetStream API and
// every connection type. It exists only in tests (create arbitrary streams,
// watch or inject anywhere in the tenant); the control plane's service user
// is confined by natsauth.ServiceScope.
//
// It is signed with the grant role key, the account's only unscoped signing
// key, with IssuerAccount set (as natsauth.IssueGrantJWT does, minus the
// explicit permissions it requires). The account identity key cannot sign
// users at all: the operator's strict signing key usage leaves it out of the
// account's signers (nats-server accounts.go updateAccountClaims).
func (t *Tenant) Admin(tb testing.TB) natsauth.User {
	tb.Helper()
	u := newUser(tb)
	sk, err := t.Keys.Grant.KeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	uc := jwt.NewUserClaims(u.Public)
	uc.Name = "test-admin"
	uc.IssuerAccount = t.Keys.Account.Public
	uc.Expires = time.Now().Add(time.Hour).Unix()
	if u.JWT, err = uc.Encode(sk); err != nil {
		tb.Fatalf("admin user JWT: %v", err)
	}
	return u
}

// Grant issues a grant user (fresh nkey).
func (t *Tenant) Grant(tb testing.TB, g natsauth.GrantSpec) natsauth.User {
	tb.Helper()
	u := newUser(tb)
	sk, err := t.Keys.Grant.KeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	if u.JWT, err = natsauth.IssueGrantJWT(sk, t.Keys.Account.Public, u.Public, g); err != nil {
		tb.Fatalf("IssueGrantJWT: %v", err)
	}
	return u
}

// RunVehicleLeaf writes u's creds and starts a leaf connected to hub with them.
func RunVehicleLeaf(tb testing.TB, hub *server.Server, u natsauth.User, opts ...Option) *server.Server {
	tb.Helper()
	return RunLeaf(tb, LeafURL(tb, hub), WriteCreds(tb, u), opts...)
}

func newUser(tb testing.TB) natsauth.User {
	tb.Helper()
	k, err := natsauth.NewUserKey()
	if err != nil {
		tb.Fatal(err)
	}
	return natsauth.User{Key: k}
}
