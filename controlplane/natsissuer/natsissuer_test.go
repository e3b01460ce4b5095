package natsissuer_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
	"github.com/fleetplane/fleetplane/internal/seal"
)

func MustKeyring(tb testing.TB) *seal.Keyring {
	tb.Helper()
	k, err := seal.ParseKeyring("k1:" + seal.GenerateKey())
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// MustIssuer creates an operator and an Issuer for it.
func MustIssuer(tb testing.TB, keys *seal.Keyring) *natsissuer.Issuer {
	tb.Helper()
	op, err := natsissuer.NewOperator(keys, "fleetplane-test")
	if err != nil {
		tb.Fatalf("NewOperator: %v", err)
	}
	iss, err := natsissuer.New(keys, op)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(iss.Wipe)
	return iss
}

// MustAccount creates a tenant account with unlimited limits and signs its JWT.
func MustAccount(tb testing.TB, iss *natsissuer.Issuer, tenantID string) *controlplane.Account {
	tb.Helper()
	a, err := iss.NewAccount(tenantID, "tenant-"+tenantID)
	if err != nil {
		tb.Fatalf("NewAccount: %v", err)
	}
	a.Limits = natsauth.Unlimited()
	a.Version = 1
	if a.JWT, err = iss.SignAccount(a); err != nil {
		tb.Fatalf("SignAccount: %v", err)
	}
	return a
}

// hubOperator adapts a controlplane.Operator to what natstest needs (its
// public material only).
func hubOperator(op *controlplane.Operator) *natsauth.Operator {
	return &natsauth.Operator{
		Name: op.Name,
		JWT:  op.JWT,
		System: natsauth.SystemAccount{
			Identity: natsauth.Key{Public: op.SystemAccountPublicKey},
			JWT:      op.SystemAccountJWT,
		},
	}
}

// connectSystem connects a fresh system user to url.
func connectSystem(tb testing.TB, iss *natsissuer.Issuer, url string) *nats.Conn {
	tb.Helper()
	j, seed, err := iss.SystemUser(time.Now().Add(time.Hour))
	if err != nil {
		tb.Fatalf("SystemUser: %v", err)
	}
	nc, err := nats.Connect(url, nats.UserJWTAndSeed(j, string(seed)), nats.NoReconnect(), nats.Timeout(2*time.Second))
	clear(seed)
	if err != nil {
		tb.Fatalf("connect system user: %v", err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

func vehicle(tenantID, vid string) natsauth.VehicleIdentity {
	return natsauth.VehicleIdentity{TenantID: tenantID, Fleet: "drones", Env: "prod", VehicleID: vid}
}

func TestOperatorRoundTrip(t *testing.T) {
	keys := MustKeyring(t)
	op, err := natsissuer.NewOperator(keys, "fleetplane-test")
	if err != nil {
		t.Fatal(err)
	}
	oc, err := jwt.DecodeOperatorClaims(op.JWT)
	if err != nil {
		t.Fatal(err)
	}
	if oc.Subject != op.PublicKey || oc.Name != "fleetplane-test" || oc.SystemAccount != op.SystemAccountPublicKey ||
		len(op.SigningKeys) != 1 || !oc.SigningKeys.Contains(op.SigningKeys[0]) || !oc.StrictSigningKeyUsage {
		t.Fatalf("operator JWT does not match the operator: %+v", oc)
	}
	sc, err := jwt.DecodeAccountClaims(op.SystemAccountJWT)
	if err != nil || sc.Subject != op.SystemAccountPublicKey || sc.Issuer != op.SigningKeys[0] {
		t.Fatalf("system account JWT: %+v, %v", sc, err)
	}
	if len(op.Sealed) == 0 || op.CreatedAt.IsZero() {
		t.Fatal("Sealed or CreatedAt not set")
	}

	iss, err := natsissuer.New(keys, op)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if iss.Operator() != op {
		t.Fatal("Operator() is not the operator given to New")
	}
	a := MustAccount(t, iss, "tenant-a")
	ac, err := jwt.DecodeAccountClaims(a.JWT)
	if err != nil {
		t.Fatal(err)
	}
	if ac.Subject != a.PublicKey || ac.Issuer != op.SigningKeys[0] || !ac.SigningKeys.Contains(a.SigningKeys.Vehicle) {
		t.Fatalf("account JWT: subject %s issuer %s", ac.Subject, ac.Issuer)
	}
	if a.TenantID != "tenant-a" || a.Name != "tenant-tenant-a" || len(a.Sealed) == 0 {
		t.Fatalf("account fields: %+v", a)
	}

	u, _ := natsauth.NewUserKey()
	for name, sign := range map[string]func() (string, error){
		"vehicle": func() (string, error) {
			return iss.SignVehicle(a, u.Public, vehicle("tenant-a", "Drone-7"), time.Now().Add(time.Hour))
		},
		"grant": func() (string, error) {
			return iss.SignGrant(a, u.Public, natsauth.GrantSpec{Name: "g1", Subscribe: []string{"fleet.prod.veh.*.state.>"}, Expires: time.Now().Add(time.Hour)})
		},
		"service": func() (string, error) { return iss.SignService(a, u.Public, "svc", time.Now().Add(time.Hour)) },
	} {
		j, err := sign()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		uc, err := jwt.DecodeUserClaims(j)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"vehicle": a.SigningKeys.Vehicle, "grant": a.SigningKeys.Grant, "service": a.SigningKeys.Service}[name]
		if uc.Subject != u.Public || uc.Issuer != want || uc.IssuerAccount != a.PublicKey {
			t.Fatalf("%s JWT: subject %s issuer %s (want %s) account %s", name, uc.Subject, uc.Issuer, want, uc.IssuerAccount)
		}
	}

	// Another keyring (a lost master key) cannot open the operator.
	lost, err := seal.ParseKeyring("k2:" + seal.GenerateKey())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := natsissuer.New(lost, op); !errors.Is(err, seal.ErrUnknownKey) {
		t.Fatalf("New with another keyring: %v, want ErrUnknownKey", err)
	}
	// Another operator's blob does not open for this operator.
	other, err := natsissuer.NewOperator(keys, "other")
	if err != nil {
		t.Fatal(err)
	}
	swapped := *op
	swapped.Sealed = other.Sealed
	if _, err := natsissuer.New(keys, &swapped); !errors.Is(err, seal.ErrAuthFailed) {
		t.Fatalf("New with another operator's blob: %v, want ErrAuthFailed", err)
	}
}

func TestSealedAccountIsBoundToItsRow(t *testing.T) {
	keys := MustKeyring(t)
	iss := MustIssuer(t, keys)
	a := MustAccount(t, iss, "tenant-a")
	b := MustAccount(t, iss, "tenant-b")
	u, _ := natsauth.NewUserKey()
	exp := time.Now().Add(time.Hour)

	if _, err := iss.SignVehicle(a, u.Public, vehicle("tenant-a", "v1"), exp); err != nil {
		t.Fatalf("own blob: %v", err)
	}

	moved := *b
	moved.Sealed = a.Sealed // a's blob copied into b's row
	movedKey := *a
	movedKey.TenantID = b.TenantID // a's row relabelled as b's tenant
	wrongRole := *a
	wrongRole.SigningKeys.Vehicle = b.SigningKeys.Vehicle
	cases := map[string]struct {
		a    *controlplane.Account
		want error
	}{
		"blob in another tenant's row": {&moved, seal.ErrAuthFailed},
		"row moved to another tenant":  {&movedKey, seal.ErrAuthFailed},
		"truncated blob":               {&controlplane.Account{TenantID: a.TenantID, PublicKey: a.PublicKey, SigningKeys: a.SigningKeys, Sealed: a.Sealed[:10]}, seal.ErrMalformed},
		"no blob":                      {&controlplane.Account{TenantID: a.TenantID, PublicKey: a.PublicKey, SigningKeys: a.SigningKeys}, seal.ErrMalformed},
		"role key not in the blob":     {&wrongRole, nil},
		"nil account":                  {nil, nil},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			for role, err := range map[string]error{
				"vehicle": func() error { _, err := iss.SignVehicle(tc.a, u.Public, vehicle("tenant-b", "v1"), exp); return err }(),
				"grant": func() error {
					_, err := iss.SignGrant(tc.a, u.Public, natsauth.GrantSpec{Name: "g", Expires: exp})
					return err
				}(),
				"service": func() error { _, err := iss.SignService(tc.a, u.Public, "svc", exp); return err }(),
			} {
				if role != "vehicle" && name == "role key not in the blob" {
					continue // only the vehicle key was swapped
				}
				if err == nil {
					t.Fatalf("%s: signed with a blob that is not this row's", role)
				}
				if tc.want != nil && !errors.Is(err, tc.want) {
					t.Fatalf("%s: %v, want %v", role, err, tc.want)
				}
			}
		})
	}
}

// sealedSeeds opens a blob the way the Issuer does (the format is the
// package's, but it is plain JSON) to get at the seeds a leak test looks for.
func sealedSeeds(t *testing.T, keys *seal.Keyring, blob, ad []byte) []string {
	t.Helper()
	plain, err := keys.Open(blob, ad)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Keys map[string][]struct {
			Seed string `json:"seed"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(plain, &doc); err != nil {
		t.Fatal(err)
	}
	var seeds []string
	for _, ks := range doc.Keys {
		for _, k := range ks {
			if !strings.HasPrefix(k.Seed, "S") || len(k.Seed) != 58 {
				t.Fatalf("not a seed: %d characters", len(k.Seed))
			}
			seeds = append(seeds, k.Seed)
		}
	}
	return seeds
}

func TestSeedsNeverPrinted(t *testing.T) {
	keys := MustKeyring(t)
	iss := MustIssuer(t, keys)
	op := iss.Operator()
	a := MustAccount(t, iss, "tenant-a")
	seeds := sealedSeeds(t, keys, op.Sealed, seal.AssociatedData("fleetplane", "operator", op.PublicKey))
	seeds = append(seeds, sealedSeeds(t, keys, a.Sealed, seal.AssociatedData("fleetplane", "account", a.TenantID, a.PublicKey))...)
	if len(seeds) != 8 {
		t.Fatalf("%d seeds in the blobs, want 8", len(seeds))
	}

	var out bytes.Buffer
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		fmt.Fprintf(&out, verb+"\n", iss)
		fmt.Fprintf(&out, verb+"\n", op)
		fmt.Fprintf(&out, verb+"\n", a)
	}
	slog.New(slog.NewTextHandler(&out, nil)).Info("issuer", "issuer", iss, "operator", op, "account", a)
	slog.New(slog.NewJSONHandler(&out, nil)).Info("issuer", "issuer", iss, "operator", op, "account", a)

	// Errors, including ones caused by a seed passed where a public key belongs.
	exp := time.Now().Add(time.Hour)
	errs := []error{}
	add := func(_ any, err error) { errs = append(errs, err) }
	add(iss.SignVehicle(a, seeds[0], vehicle("tenant-a", "v1"), exp))
	add(iss.SignGrant(a, seeds[1], natsauth.GrantSpec{Name: "g", Expires: exp}))
	add(iss.SignService(a, seeds[2], "svc", exp))
	bad := *a
	bad.PublicKey = seeds[3]
	add(iss.SignAccount(&bad))
	add(iss.SignVehicle(&bad, seeds[0], vehicle("tenant-a", "v1"), exp))
	badOp := *op
	badOp.SigningKeys = []string{seeds[4]}
	add(natsissuer.New(keys, &badOp))
	badOp.PublicKey = seeds[5]
	add(natsissuer.New(keys, &badOp))
	_, _, err := iss.SystemUser(time.Time{})
	errs = append(errs, err)
	for _, err := range errs {
		if err == nil {
			t.Fatal("expected an error")
		}
		fmt.Fprintf(&out, "%v\n%+v\n", err, err)
	}

	s := out.String()
	for i, seed := range seeds {
		if strings.Contains(s, seed) {
			t.Fatalf("seed %d printed:\n%s", i, s)
		}
	}
	if !strings.Contains(s, op.PublicKey) {
		t.Fatalf("output does not even name the operator:\n%s", s)
	}
}

func TestSignedVehicleConnectsThroughRealHub(t *testing.T) {
	keys := MustKeyring(t)
	iss := MustIssuer(t, keys)
	hub := natstest.RunOperatorServer(t, hubOperator(iss.Operator()))
	sys := connectSystem(t, iss, hub.ClientURL())

	a := MustAccount(t, iss, "tenant-a")
	natstest.PushAccount(t, sys, a.JWT)

	k, err := natsauth.NewUserKey()
	if err != nil {
		t.Fatal(err)
	}
	u := natsauth.User{Key: k}
	if u.JWT, err = iss.SignVehicle(a, k.Public, vehicle("tenant-a", "Drone-7"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	natstest.RunVehicleLeaf(t, hub, u)
	natstest.WaitLeafCount(t, hub, 1, 5*time.Second)

	// The service user of the same account connects as a client.
	sk, _ := natsauth.NewUserKey()
	svc := natsauth.User{Key: sk}
	if svc.JWT, err = iss.SignService(a, sk.Public, "svc", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	nc := natstest.Connect(t, hub.ClientURL(), svc)
	if err := nc.Publish("fleet.prod.veh.Drone-7.cmd.ping", nil); err != nil {
		t.Fatal(err)
	}

	// A vehicle of an account that was never pushed is refused.
	b := MustAccount(t, iss, "tenant-b")
	vk, _ := natsauth.NewUserKey()
	vb := natsauth.User{Key: vk}
	if vb.JWT, err = iss.SignVehicle(b, vk.Public, vehicle("tenant-b", "v1"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	natstest.RunVehicleLeaf(t, hub, vb)
	time.Sleep(300 * time.Millisecond)
	if n := hub.NumLeafNodes(); n != 1 {
		t.Fatalf("%d leaf connections, want 1 (tenant-b was never pushed)", n)
	}
}

func TestSystemUser(t *testing.T) {
	keys := MustKeyring(t)
	iss := MustIssuer(t, keys)
	hub := natstest.RunOperatorServer(t, hubOperator(iss.Operator()))
	nc := connectSystem(t, iss, hub.ClientURL())
	// A system-account request only the system account may make.
	m, err := nc.Request("$SYS.REQ.SERVER.PING.VARZ", nil, 2*time.Second)
	if err != nil {
		t.Fatalf("VARZ as system user: %v", err)
	}
	var r server.ServerAPIResponse
	if err := json.Unmarshal(m.Data, &r); err != nil || r.Server == nil || r.Server.Name != hub.Name() {
		t.Fatalf("VARZ reply %s: %v", m.Data, err)
	}

	j, seed, err := iss.SystemUser(time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	uc, err := jwt.DecodeUserClaims(j)
	if err != nil {
		t.Fatal(err)
	}
	if uc.IssuerAccount != iss.Operator().SystemAccountPublicKey || uc.Expires == 0 || uc.Name != natsissuer.SystemUserName {
		t.Fatalf("system user claims: %+v", uc)
	}
	j2, seed2, _ := iss.SystemUser(time.Now().Add(time.Minute))
	if j2 == j || bytes.Equal(seed, seed2) {
		t.Fatal("SystemUser reused a key")
	}
	if _, _, err := iss.SystemUser(time.Now().Add(-time.Second)); err == nil {
		t.Fatal("SystemUser accepted an expiry in the past")
	}
}

func TestWriteHubConfigBootsAHub(t *testing.T) {
	keys := MustKeyring(t)
	iss := MustIssuer(t, keys)
	dir := filepath.Join(t.TempDir(), "export")
	resolverDir := filepath.Join(t.TempDir(), "jwt")
	if err := natsissuer.WriteHubConfig(dir, iss.HubTrust(), resolverDir); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		natsissuer.OperatorJWTFile:      iss.Operator().JWT + "\n",
		natsissuer.SystemAccountJWTFile: iss.Operator().SystemAccountJWT + "\n",
	} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(b) != want {
			t.Fatalf("%s: %q, %v", name, b, err)
		}
	}
	for _, name := range []string{natsissuer.OperatorJWTFile, natsissuer.SystemAccountJWTFile, natsissuer.HubConfigFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != 0o644 {
			t.Fatalf("%s: mode %v, %v", name, fi.Mode(), err)
		}
	}

	// A hub configured by including the snippet (include paths are relative
	// to the including file) accepts pushes and vehicles.
	main := filepath.Join(dir, "nats-server.conf")
	conf := "server_name: hub-from-export\nlisten: 127.0.0.1:-1\nleafnodes { listen: 127.0.0.1:-1 }\ninclude " + natsissuer.HubConfigFile + "\n"
	if err := os.WriteFile(main, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(main)
	if err != nil {
		t.Fatalf("nats-server rejects the exported config: %v", err)
	}
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(5 * time.Second) {
		t.Fatal("hub not ready")
	}
	sys := connectSystem(t, iss, s.ClientURL())
	a := MustAccount(t, iss, "tenant-a")
	natstest.PushAccount(t, sys, a.JWT)
	if _, err := os.Stat(filepath.Join(resolverDir, a.PublicKey+".jwt")); err != nil {
		t.Fatalf("pushed account not in the resolver dir: %v", err)
	}
	k, _ := natsauth.NewUserKey()
	u := natsauth.User{Key: k}
	if u.JWT, err = iss.SignVehicle(a, k.Public, vehicle("tenant-a", "v1"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	natstest.RunVehicleLeaf(t, s, u)
	natstest.WaitLeafCount(t, s, 1, 5*time.Second)
}

// BenchmarkSignVehicle measures one enrollment's signing: open the account's
// sealed keys, sign the vehicle JWT, wipe. The Parallel variant uses every
// GOMAXPROCS (run with -cpu 2 for the 2-core target of 1,000 enrollments/s).
func BenchmarkSignVehicle(b *testing.B) {
	keys := MustKeyring(b)
	iss := MustIssuer(b, keys)
	a := MustAccount(b, iss, "tenant-a")
	u, _ := natsauth.NewUserKey()
	v := vehicle("tenant-a", "v1")
	exp := time.Now().Add(time.Hour)
	b.Run("Serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := iss.SignVehicle(a, u.Public, v, exp); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := iss.SignVehicle(a, u.Public, v, exp); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("IssueVehicleJWTOnly", func(b *testing.B) {
		// The floor: natsauth signing with a key pair already in memory.
		ak, _ := natsauth.NewAccountKeys()
		kp, _ := ak.Vehicle.KeyPair()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := natsauth.IssueVehicleJWT(kp, ak.Account.Public, u.Public, v, exp); err != nil {
				b.Fatal(err)
			}
		}
	})
}
