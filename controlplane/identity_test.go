package controlplane_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/hubnode"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
	"github.com/fleetplane/fleetplane/internal/password"
	"github.com/fleetplane/fleetplane/internal/pgtest"
	"github.com/fleetplane/fleetplane/internal/seal"
)

// The identity tests wire the Service to the real adapters — Postgres, the
// natsissuer (sealed keys), the hubs client — and a real embedded hub node
// in operator mode with the full resolver: every property is proven on the
// server, not on the JWTs alone.

type identityEnv struct {
	svc     *controlplane.Service
	pool    *pgxpool.Pool
	hub     *server.Server
	leafURL string
	hubs    *flakyHubs
}

// flakyHubs wraps the real hubs client and can fail the next pushes, to
// exercise the durable job path.
type flakyHubs struct {
	*hubs.Hubs
	failPushes atomic.Int32
}

func (f *flakyHubs) PushAccount(ctx context.Context, jwt string) (*controlplane.HubPush, error) {
	if f.failPushes.Add(-1) >= 0 {
		return nil, errors.New("injected: hub unreachable")
	}
	return f.Hubs.PushAccount(ctx, jwt)
}

func mustKeyring(tb testing.TB) *seal.Keyring {
	tb.Helper()
	k, err := seal.ParseKeyring("t1:" + seal.GenerateKey())
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// mustIssuer returns an issuer over a new operator (stored in the database
// when store is not nil).
func mustIssuer(tb testing.TB, store controlplane.Store) *natsissuer.Issuer {
	tb.Helper()
	keys := mustKeyring(tb)
	op, err := natsissuer.NewOperator(keys, "test")
	if err != nil {
		tb.Fatal(err)
	}
	if store != nil {
		if err := store.CreateOperator(context.Background(), op); err != nil {
			tb.Fatal(err)
		}
	}
	iss, err := natsissuer.New(keys, op)
	if err != nil {
		tb.Fatal(err)
	}
	return iss
}

func newIdentityEnv(tb testing.TB, opts ...func(*controlplane.Config)) *identityEnv {
	tb.Helper()
	pool := pgtest.NewPool(tb)
	store := postgres.NewStore(pool)
	iss := mustIssuer(tb, store)
	hub, err := hubnode.Start(hubnode.Config{Name: "hub-1", Region: "europe", Dir: tb.TempDir(),
		ClientHost: "127.0.0.1", ClientPort: -1, LeafHost: "127.0.0.1", LeafPort: -1,
		Trust: natsissuer.HubTrust(iss.Operator())})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { hub.Shutdown(); hub.WaitForShutdown() })
	h, err := hubs.New([]hubs.Node{{Name: "hub-1", URL: hub.ClientURL()}}, iss.SystemUserCreds(time.Hour), hubs.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for h.Ready(ctx) != nil && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	env := &identityEnv{pool: pool, hub: hub, leafURL: natstest.LeafURL(tb, hub), hubs: &flakyHubs{Hubs: h}}
	cfg := controlplane.Config{
		Regions: []controlplane.Region{{Name: "europe", LeafURLs: []string{env.leafURL},
			ClientURLs: []string{hub.ClientURL()}}},
		PasswordParams: password.Params{Memory: 64, Time: 1, Threads: 1},
		Issuer:         iss,
		Hubs:           env.hubs,
	}
	for _, o := range opts {
		o(&cfg)
	}
	env.svc = controlplane.NewService(store, cfg, nil)
	return env
}

// tenant signs up and creates fleet "drones" (env prod).
func (e *identityEnv) tenant(tb testing.TB, org string) context.Context {
	tb.Helper()
	ctx, _ := MustSignup(tb, e.svc, org, strings.ToLower(strings.ReplaceAll(org, " ", ""))+"@example.com")
	if _, err := e.svc.CreateFleet(ctx, controlplane.FleetCreate{Slug: "drones", Environment: "prod"}); err != nil {
		tb.Fatal(err)
	}
	return ctx
}

func (e *identityEnv) token(tb testing.TB, ctx context.Context, uses int) string {
	tb.Helper()
	exp := time.Now().Add(time.Hour)
	t, err := e.svc.CreateEnrollmentToken(ctx, "drones", controlplane.EnrollmentTokenCreate{ExpiresAt: &exp, MaxUses: uses})
	if err != nil {
		tb.Fatal(err)
	}
	return t.Secret
}

// vehicleKey is a vehicle-side nkey: the seed stays here.
type vehicleKey struct {
	pub  string
	seed []byte
	kp   nkeys.KeyPair
}

func newVehicleKey(tb testing.TB) vehicleKey {
	tb.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		tb.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	return vehicleKey{pub: pub, seed: seed, kp: kp}
}

func (e *identityEnv) enroll(tb testing.TB, token string, k vehicleKey, vid string) *controlplane.VehicleCredentials {
	tb.Helper()
	c, err := e.svc.Enroll(context.Background(), controlplane.EnrollRequest{Token: token, PublicKey: k.pub, VehicleID: vid, Hostname: "jetson", Arch: "arm64"})
	if err != nil {
		tb.Fatalf("Enroll(%s): %v", vid, err)
	}
	return c
}

// runLeaf runs a vehicle leaf with the enrollment's credentials.
func (e *identityEnv) runLeaf(tb testing.TB, c *controlplane.VehicleCredentials, k vehicleKey) *server.Server {
	tb.Helper()
	creds, err := natsauth.FormatCreds(c.JWT, k.seed)
	if err != nil {
		tb.Fatal(err)
	}
	p := filepath.Join(tb.TempDir(), "vehicle.creds")
	if err := os.WriteFile(p, creds, 0o600); err != nil {
		tb.Fatal(err)
	}
	return natstest.RunLeaf(tb, c.LeafURLs[0], p, natstest.WithLeafReconnect(100*time.Millisecond))
}

func TestEnrollConnectGrantRevoke(t *testing.T) {
	t.Parallel()
	e := newIdentityEnv(t)
	ctx := e.tenant(t, "Acme")
	k := newVehicleKey(t)
	c := e.enroll(t, e.token(t, ctx, 1), k, "Drone-1")
	if c.Vehicle.Status != controlplane.VehicleActive || c.Vehicle.UserPublicKey != k.pub ||
		c.SubjectPrefix != "fleet.prod.veh.Drone-1" || c.LeafURLs[0] != e.leafURL || !c.RenewAfter.Before(c.ExpiresAt) {
		t.Fatalf("credentials = %+v", c)
	}
	leaf := e.runLeaf(t, c, k)
	natstest.WaitLeafCount(t, e.hub, 1, 5*time.Second)

	// A grant reading the fleet's state sees the vehicle's telemetry.
	exp := time.Now().Add(time.Hour)
	g, err := e.svc.CreateGrant(ctx, controlplane.GrantCreate{Description: "partner",
		Scopes: []controlplane.GrantScopeSpec{{Fleet: "drones", Categories: []controlplane.GrantCategory{natsauth.CategoryState}}}, ExpiresAt: &exp})
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Creds) == 0 || strings.Join(g.Subscribe, ",") != "fleet.prod.veh.*.state.>" || len(g.Publish) != 0 {
		t.Fatalf("grant = %+v", g.Grant)
	}
	gc, err := nats.Connect(e.hub.ClientURL(), nats.UserJWTAndSeed(g.JWT, credsSeed(t, g.Creds)), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	sub, err := gc.SubscribeSync("fleet.prod.veh.*.state.>")
	if err != nil {
		t.Fatal(err)
	}
	_ = gc.Flush()
	local, err := nats.Connect(leaf.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_ = local.Publish("fleet.prod.veh.Drone-1.state.position", []byte(`{"lat":1}`))
		if _, err := sub.NextMsg(100 * time.Millisecond); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("grant never received the vehicle's telemetry")
		}
	}

	// Revoke the vehicle: proven on the hub, the leaf is gone and stays gone.
	r, err := e.svc.RevokeVehicle(ctx, "drones", "Drone-1")
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != controlplane.RevocationProven || r.ConnectionsRemaining != 0 || len(r.Nodes) != 1 || !r.Nodes[0].OK || r.Latency <= 0 {
		t.Fatalf("revocation = %+v", r)
	}
	t.Logf("revocation proven in %v", r.Latency)
	if n := e.hub.NumLeafNodes(); n != 0 {
		t.Fatalf("%d leaf connections after the proven revocation", n)
	}
	time.Sleep(500 * time.Millisecond) // the leaf retries every 100 ms
	if n := e.hub.NumLeafNodes(); n != 0 {
		t.Fatal("the revoked vehicle reconnected")
	}
	v, err := e.svc.Vehicle(ctx, "drones", "Drone-1")
	if err != nil || v.Status != controlplane.VehicleRevoked || v.Revocation == nil || v.Revocation.ID != r.ID {
		t.Fatalf("vehicle after revoke = %+v, %v", v, err)
	}
	// Revoking again returns the same proof.
	if r2, err := e.svc.RevokeVehicle(ctx, "drones", "Drone-1"); err != nil || r2.ID != r.ID {
		t.Fatalf("second revoke = %+v, %v", r2, err)
	}
	// It cannot renew...
	_, err = e.svc.NewAgentNonce(context.Background(), k.pub)
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	// ...nor re-enroll with the revoked key, but it can with a fresh one.
	// A fleet-wide token cannot take the vehicle over...
	_, err = e.svc.Enroll(context.Background(), controlplane.EnrollRequest{Token: e.token(t, ctx, 1), PublicKey: newVehicleKey(t).pub, VehicleID: "Drone-1"})
	WantCode(t, err, controlplane.ECONFLICT)
	// ...a token made for it can, but not with the revoked key.
	bound := func() string {
		exp := time.Now().Add(time.Hour)
		tok, err := e.svc.CreateEnrollmentToken(ctx, "drones", controlplane.EnrollmentTokenCreate{ExpiresAt: &exp, VehicleID: "Drone-1"})
		if err != nil {
			t.Fatal(err)
		}
		return tok.Secret
	}
	_, err = e.svc.Enroll(context.Background(), controlplane.EnrollRequest{Token: bound(), PublicKey: k.pub, VehicleID: "Drone-1"})
	WantCode(t, err, controlplane.EINVALID)
	k2 := newVehicleKey(t)
	c2 := e.enroll(t, bound(), k2, "Drone-1")
	e.runLeaf(t, c2, k2)
	natstest.WaitLeafCount(t, e.hub, 1, 5*time.Second)

	// Revoke the grant: its connection is closed and it cannot come back.
	closed := make(chan struct{})
	gc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	rg, err := e.svc.RevokeGrant(ctx, g.ID)
	if err != nil || rg.Status != controlplane.RevocationProven {
		t.Fatalf("grant revocation = %+v, %v", rg, err)
	}
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
		t.Fatal("the revoked grant's connection is still open")
	}
	if nc, err := nats.Connect(e.hub.ClientURL(), nats.UserJWTAndSeed(g.JWT, credsSeed(t, g.Creds)), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("the revoked grant connected again")
	}
}

// credsSeed extracts the seed from a creds file.
func credsSeed(tb testing.TB, creds []byte) string {
	tb.Helper()
	kp, err := nkeys.ParseDecoratedNKey(creds)
	if err != nil {
		tb.Fatal(err)
	}
	seed, _ := kp.Seed()
	return string(seed)
}

func TestVehicleCredsAreLeafOnly(t *testing.T) {
	t.Parallel()
	e := newIdentityEnv(t)
	ctx := e.tenant(t, "Acme")
	k := newVehicleKey(t)
	c := e.enroll(t, e.token(t, ctx, 1), k, "V1")
	if nc, err := nats.Connect(e.hub.ClientURL(), nats.UserJWTAndSeed(c.JWT, string(k.seed)), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("vehicle credentials opened a client connection")
	}
}

func TestEnrollSingleUseTokenConcurrently(t *testing.T) {
	t.Parallel()
	e := newIdentityEnv(t)
	ctx := e.tenant(t, "Acme")
	token := e.token(t, ctx, 1)
	var wg sync.WaitGroup
	var ok, bad atomic.Int32
	for i := range 10 {
		wg.Go(func() {
			_, err := e.svc.Enroll(context.Background(), controlplane.EnrollRequest{Token: token, PublicKey: newVehicleKey(t).pub, VehicleID: fmt.Sprintf("V%d", i)})
			switch controlplane.ErrorCode(err) {
			case "":
				ok.Add(1)
			case controlplane.EUNAUTHORIZED:
				bad.Add(1)
			default:
				t.Errorf("Enroll: %v", err)
			}
		})
	}
	wg.Wait()
	vs, err := e.svc.Vehicles(ctx, "drones", controlplane.VehicleQuery{})
	if ok.Load() != 1 || bad.Load() != 9 || err != nil || len(vs.Items) != 1 {
		t.Fatalf("%d enrolled, %d refused, %d vehicles (%v); want 1, 9, 1", ok.Load(), bad.Load(), len(vs.Items), err)
	}
}

func TestEnrollTokenProblemsLookAlike(t *testing.T) {
	t.Parallel()
	e := newIdentityEnv(t)
	ctx := e.tenant(t, "Acme")
	used := e.token(t, ctx, 1)
	e.enroll(t, used, newVehicleKey(t), "V1")
	revoked := e.token(t, ctx, 1)
	revokedID := strings.Split(revoked, "_")[1]
	if err := e.svc.RevokeEnrollmentToken(ctx, "drones", revokedID); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	cidr, err := e.svc.CreateEnrollmentToken(ctx, "drones", controlplane.EnrollmentTokenCreate{ExpiresAt: &exp, SourceCIDRs: []string{"10.0.0.0/8"}})
	if err != nil {
		t.Fatal(err)
	}
	wrongSecret := revoked[:len(revoked)-2] + "aa"
	toks, err := e.svc.EnrollmentTokens(ctx, "drones", controlplane.PageRequest{}, false)
	if err != nil || len(toks.Items) != 1 || toks.Items[0].ID != cidr.ID {
		t.Fatalf("active tokens = %+v, %v; want only the CIDR-bound one", toks, err)
	}
	var msgs []string
	for _, tok := range []string{"fpe_nope", used, revoked, wrongSecret, cidr.Secret, "fpk_" + revoked[4:]} {
		_, err := e.svc.Enroll(controlplane.NewContextWithRequestMeta(context.Background(), controlplane.RequestMeta{SourceIP: "192.0.2.1"}),
			controlplane.EnrollRequest{Token: tok, PublicKey: newVehicleKey(t).pub})
		WantCode(t, err, controlplane.EUNAUTHORIZED)
		msgs = append(msgs, controlplane.ErrorMessage(err))
	}
	for _, m := range msgs[1:] {
		if m != msgs[0] {
			t.Fatalf("token errors differ: %q", msgs)
		}
	}
}

func TestRenewWithProofOfPossession(t *testing.T) {
	t.Parallel()
	e := newIdentityEnv(t)
	ctx := e.tenant(t, "Acme")
	k := newVehicleKey(t)
	first := e.enroll(t, e.token(t, ctx, 1), k, "V1")
	sign := func(kp nkeys.KeyPair, nonce string) string {
		sig, err := kp.Sign([]byte(nonce))
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(sig)
	}
	n, err := e.svc.NewAgentNonce(context.Background(), k.pub)
	if err != nil {
		t.Fatal(err)
	}
	// A signature by another key fails and burns the nonce.
	_, err = e.svc.RenewAgent(context.Background(), controlplane.RenewRequest{PublicKey: k.pub, Nonce: n.Nonce, Signature: sign(newVehicleKey(t).kp, n.Nonce)})
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	_, err = e.svc.RenewAgent(context.Background(), controlplane.RenewRequest{PublicKey: k.pub, Nonce: n.Nonce, Signature: sign(k.kp, n.Nonce)})
	WantCode(t, err, controlplane.EUNAUTHORIZED)

	time.Sleep(1100 * time.Millisecond) // a later iat, so the JWT differs
	n, err = e.svc.NewAgentNonce(context.Background(), k.pub)
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.svc.RenewAgent(context.Background(), controlplane.RenewRequest{PublicKey: k.pub, Nonce: n.Nonce, Signature: sign(k.kp, n.Nonce)})
	if err != nil {
		t.Fatal(err)
	}
	if c.JWT == first.JWT || c.Vehicle.VehicleID != "V1" || c.Vehicle.UserPublicKey != k.pub {
		t.Fatalf("renewed = %+v", c)
	}
	// The renewed JWT works.
	e.runLeaf(t, c, k)
	natstest.WaitLeafCount(t, e.hub, 1, 5*time.Second)
	// A nonce is single use.
	_, err = e.svc.RenewAgent(context.Background(), controlplane.RenewRequest{PublicKey: k.pub, Nonce: n.Nonce, Signature: sign(k.kp, n.Nonce)})
	WantCode(t, err, controlplane.EUNAUTHORIZED)
}

// TestPlanLeafLimitFollowsPlan: on the free plan the hub itself refuses
// the 11th vehicle's leaf (account JWT limit); after ChangePlan(scale) it
// connects. The 11th vehicle is enrolled on scale, then the tenant is
// downgraded and its grace expired (the API would refuse it on free).
func TestPlanLeafLimitFollowsPlan(t *testing.T) {
	t.Parallel()
	e := newIdentityEnv(t)
	ctx := e.tenant(t, "Acme")
	tn, err := e.svc.Tenant(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bg := context.Background()
	if _, err := e.svc.ChangePlan(bg, tn.ID, controlplane.PlanScale); err != nil {
		t.Fatal(err)
	}
	token := e.token(t, ctx, 20)
	creds := make([]*controlplane.VehicleCredentials, controlplane.FreeVehicleLimit+1)
	keys := make([]vehicleKey, len(creds))
	for i := range creds {
		keys[i] = newVehicleKey(t)
		creds[i] = e.enroll(t, token, keys[i], fmt.Sprintf("V%02d", i))
	}
	if _, err := e.svc.ChangePlan(bg, tn.ID, controlplane.PlanFree); err != nil {
		t.Fatal(err)
	}
	controlplane.SetNow(e.svc, func() time.Time { return time.Now().Add(controlplane.DefaultPlanGrace + time.Hour) })
	if n, err := e.svc.ApplyPlanGraceExpiry(bg); err != nil || n != 1 {
		t.Fatalf("ApplyPlanGraceExpiry = %d, %v", n, err)
	}
	controlplane.SetNow(e.svc, time.Now)

	var leafs []*server.Server
	for i := range creds {
		leafs = append(leafs, e.runLeaf(t, creds[i], keys[i]))
		if i < controlplane.FreeVehicleLimit {
			natstest.WaitLeafCount(t, e.hub, i+1, 5*time.Second)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if n := e.hub.NumLeafNodes(); n != controlplane.FreeVehicleLimit {
		t.Fatalf("%d leaf connections, want the free plan's %d", n, controlplane.FreeVehicleLimit)
	}
	if leafs[controlplane.FreeVehicleLimit].NumLeafNodes() != 0 {
		t.Fatal("the 11th vehicle's leaf is connected")
	}

	// Scale: the account JWT loses its leaf limit; the 11th leaf (it
	// retries every 100 ms) connects.
	if _, err := e.svc.ChangePlan(bg, tn.ID, controlplane.PlanScale); err != nil {
		t.Fatal(err)
	}
	natstest.WaitLeafCount(t, e.hub, controlplane.FreeVehicleLimit+1, 10*time.Second)
}

func TestGrantExpiresOnTheHub(t *testing.T) {
	t.Parallel()
	e := newIdentityEnv(t)
	ctx := e.tenant(t, "Acme")
	// See natsauth's TestGrantExpires: connect just after a second boundary.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second + 20*time.Millisecond)))
	exp := time.Now().Truncate(time.Second).Add(2 * time.Second)
	g, err := e.svc.CreateGrant(ctx, controlplane.GrantCreate{Subscribe: []string{"fleet.prod.>"}, ExpiresAt: &exp})
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan time.Time, 1)
	nc, err := nats.Connect(e.hub.ClientURL(), nats.UserJWTAndSeed(g.JWT, credsSeed(t, g.Creds)), nats.NoReconnect(),
		nats.ClosedHandler(func(*nats.Conn) { closed <- time.Now() }), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	select {
	case at := <-closed:
		if d := at.Sub(exp); d < -time.Second || d > time.Second {
			t.Fatalf("grant closed %v from its expiry", d)
		}
	case <-time.After(time.Until(exp) + 3*time.Second):
		t.Fatal("grant connection open after its expiry")
	}
}

func TestRevocationRetriedByTheJob(t *testing.T) {
	t.Parallel()
	e := newIdentityEnv(t)
	ctx := e.tenant(t, "Acme")
	k := newVehicleKey(t)
	e.runLeaf(t, e.enroll(t, e.token(t, ctx, 1), k, "V1"), k)
	natstest.WaitLeafCount(t, e.hub, 1, 5*time.Second)

	e.hubs.failPushes.Store(1)
	r, err := e.svc.RevokeVehicle(ctx, "drones", "V1")
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != controlplane.RevocationPending || r.LastError == "" || r.Attempts != 1 {
		t.Fatalf("revocation with the hub down = %+v", r)
	}
	if e.hub.NumLeafNodes() != 1 {
		t.Fatal("the leaf went away without a push")
	}
	// The durable job was enqueued in the revocation's transaction.
	var jobs int
	if err := e.pool.QueryRow(context.Background(),
		`SELECT count(*) FROM river_job WHERE kind = 'account_push' AND (args->>'revocation_id')::bigint = $1`, r.ID).Scan(&jobs); err != nil || jobs != 1 {
		t.Fatalf("push jobs for the revocation: %d, %v", jobs, err)
	}
	if err := e.svc.RunAccountPush(context.Background(), controlplane.AccountPushJob{TenantID: r.TenantID, RevocationID: r.ID}); err != nil {
		t.Fatal(err)
	}
	natstest.WaitLeafCount(t, e.hub, 0, 2*time.Second)
	v, err := e.svc.Vehicle(ctx, "drones", "V1")
	if err != nil || v.Revocation == nil || v.Revocation.Status != controlplane.RevocationProven || v.Revocation.Attempts != 2 {
		t.Fatalf("revocation after the job = %+v, %v", v.Revocation, err)
	}
}

func TestDeleteVehicleRevokesItsKey(t *testing.T) {
	t.Parallel()
	e := newIdentityEnv(t)
	ctx := e.tenant(t, "Acme")
	k := newVehicleKey(t)
	e.runLeaf(t, e.enroll(t, e.token(t, ctx, 1), k, "V1"), k)
	natstest.WaitLeafCount(t, e.hub, 1, 5*time.Second)
	if err := e.svc.DeleteVehicle(ctx, "drones", "V1"); err != nil {
		t.Fatal(err)
	}
	natstest.WaitLeafCount(t, e.hub, 0, 2*time.Second)
	_, err := e.svc.NewAgentNonce(context.Background(), k.pub)
	WantCode(t, err, controlplane.EUNAUTHORIZED)
}

// TestSeedsEncryptedAtRest reads every row of every table as text and finds
// no nkey seed: operator, system and account seeds are sealed.
func TestSeedsEncryptedAtRest(t *testing.T) {
	t.Parallel()
	e := newIdentityEnv(t)
	ctx := e.tenant(t, "Acme")
	e.enroll(t, e.token(t, ctx, 1), newVehicleKey(t), "V1")
	exp := time.Now().Add(time.Hour)
	if _, err := e.svc.CreateGrant(ctx, controlplane.GrantCreate{Subscribe: []string{"fleet.>"}, ExpiresAt: &exp}); err != nil {
		t.Fatal(err)
	}
	bg := context.Background()
	rows, err := e.pool.Query(bg, `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		_ = rows.Scan(&n)
		tables = append(tables, n)
	}
	rows.Close()
	seedRe := regexp.MustCompile(`S[OAU][A-Z2-7]{56}`)
	var sealedRows int
	for _, tbl := range tables {
		rows, err := e.pool.Query(bg, fmt.Sprintf(`SELECT row_to_json(t)::text FROM %q t`, tbl))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var row string
			_ = rows.Scan(&row)
			if seedRe.MatchString(row) {
				t.Errorf("table %s holds a plaintext seed", tbl)
			}
			if strings.Contains(row, `"sealed"`) {
				sealedRows++
			}
		}
		rows.Close()
	}
	if sealedRows < 2 { // the operator and the tenant's account
		t.Fatalf("%d rows with sealed keys; the schema changed under this test", sealedRows)
	}
}

// TestTenantIsolationThroughIssuedCredentials: credentials the Service
// issued for tenant A (a vehicle leaf and a wide grant) neither see nor
// reach tenant B's traffic or JetStream API on a shared hub, and B's
// traffic flows to B's own grant meanwhile (so silence is not an accident).
func TestTenantIsolationThroughIssuedCredentials(t *testing.T) {
	t.Parallel()
	e := newIdentityEnv(t)
	type side struct {
		local, grant *nats.Conn
		grantSub     *nats.Subscription
	}
	mk := func(org, vid string) side {
		ctx := e.tenant(t, org)
		k := newVehicleKey(t)
		leaf := e.runLeaf(t, e.enroll(t, e.token(t, ctx, 1), k, vid), k)
		exp := time.Now().Add(time.Hour)
		g, err := e.svc.CreateGrant(ctx, controlplane.GrantCreate{ExpiresAt: &exp,
			Scopes: []controlplane.GrantScopeSpec{
				{Fleet: "drones", Categories: []controlplane.GrantCategory{natsauth.CategoryState, natsauth.CategoryEvents}},
				{Fleet: "drones", VehicleIDs: []string{vid}, Categories: []controlplane.GrantCategory{natsauth.CategoryCommands}}}})
		if err != nil {
			t.Fatal(err)
		}
		gc, err := nats.Connect(e.hub.ClientURL(), nats.UserJWTAndSeed(g.JWT, credsSeed(t, g.Creds)), nats.NoReconnect(),
			nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(gc.Close)
		sub, err := gc.SubscribeSync("fleet.prod.veh.*.state.>")
		if err != nil {
			t.Fatal(err)
		}
		_ = gc.Flush()
		local, err := nats.Connect(leaf.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(local.Close)
		return side{local: local, grant: gc, grantSub: sub}
	}
	a := mk("Alpha", "A1")
	b := mk("Bravo", "B1")
	natstest.WaitLeafCount(t, e.hub, 2, 5*time.Second)

	// B's vehicle reaches B's grant (the channel works)...
	bCmd, _ := b.local.SubscribeSync("fleet.prod.veh.B1.cmd.>")
	_ = b.local.Flush()
	waitDelivered := func(pub *nats.Conn, subj string, sub *nats.Subscription) {
		deadline := time.Now().Add(5 * time.Second)
		for {
			_ = pub.Publish(subj, []byte("marker"))
			if _, err := sub.NextMsg(100 * time.Millisecond); err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never arrived", subj)
			}
		}
	}
	waitDelivered(b.local, "fleet.prod.veh.B1.state.position", b.grantSub)
	waitDelivered(b.grant, "fleet.prod.veh.B1.cmd.land", bCmd)

	// ...while A's vehicle and A's grant, aiming at B's subjects, reach nothing of B's.
	for range 20 {
		_ = a.local.Publish("fleet.prod.veh.B1.state.position", []byte("spoof"))
		_ = a.grant.Publish("fleet.prod.veh.B1.cmd.land", []byte("spoof"))
		_ = b.local.Publish("fleet.prod.veh.B1.state.position", []byte("b-only"))
	}
	_ = a.local.Flush()
	_ = a.grant.Flush()
	_ = b.local.Flush()
	time.Sleep(300 * time.Millisecond)
	if m, err := a.grantSub.NextMsg(50 * time.Millisecond); err == nil {
		t.Fatalf("A's grant received %s %q from tenant B", m.Subject, m.Data)
	}
	for {
		m, err := b.grantSub.NextMsg(50 * time.Millisecond)
		if err != nil {
			break
		}
		if string(m.Data) == "spoof" {
			t.Fatal("A's vehicle published into tenant B")
		}
	}
	if m, err := bCmd.NextMsg(50 * time.Millisecond); err == nil {
		t.Fatalf("B's vehicle received a command %q from A's grant", m.Data)
	}
	// No JetStream API for a grant, in its own account or any other.
	if _, err := a.grant.Request("$JS.API.INFO", nil, 500*time.Millisecond); err == nil {
		t.Fatal("A's grant reached a JetStream API")
	}
}
