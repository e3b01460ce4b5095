package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/secret"
)

// --- helpers ---

// FakeKey returns a random string shaped like an nkey public key of the
// kind prefix ('O', 'A' or 'U'): what the schema checks. It is not a valid
// key (no checksum); the store never needs one.
func FakeKey(prefix byte) string {
	b := make([]byte, 35)
	rand.Read(b)
	k := []byte(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
	k[0] = prefix
	return string(k)
}

// MustRow runs sql and returns its single row as column → value, for
// checks on what is stored, past the store's reads.
func MustRow(tb testing.TB, pool *pgxpool.Pool, sql string, args ...any) map[string]any {
	tb.Helper()
	rows, _ := pool.Query(context.Background(), sql, args...)
	row, err := pgx.CollectExactlyOneRow(rows, pgx.RowToMap)
	if err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
	return row
}

func MustAccount(tb testing.TB, s controlplane.Store, tenantID string) *controlplane.Account {
	tb.Helper()
	a := &controlplane.Account{TenantID: tenantID, Name: "account " + tenantID, PublicKey: FakeKey('A'),
		SigningKeys: controlplane.AccountSigningKeys{Vehicle: FakeKey('A'), Grant: FakeKey('A'), Service: FakeKey('A')},
		Sealed:      []byte("sealed"), Limits: natsauth.Unlimited(), Version: 1, JWT: "jwt-1"}
	if err := s.CreateAccount(context.Background(), a); err != nil {
		tb.Fatalf("CreateAccount: %v", err)
	}
	return a
}

func MustToken(tb testing.TB, s controlplane.Store, f *controlplane.Fleet, maxUses int, expires time.Time) *controlplane.EnrollmentToken {
	tb.Helper()
	id, _, hash := secret.New(secret.EnrollmentTokenPrefix)
	t := &controlplane.EnrollmentToken{ID: id, TenantID: f.TenantID, FleetID: f.ID, Description: "token " + id,
		ExpiresAt: expires, MaxUses: maxUses, CreatedBy: "system:test"}
	if err := s.CreateEnrollmentToken(context.Background(), t, hash); err != nil {
		tb.Fatalf("CreateEnrollmentToken: %v", err)
	}
	return t
}

func MustGrant(tb testing.TB, s controlplane.Store, tenantID string, expires time.Time) *controlplane.Grant {
	tb.Helper()
	g := &controlplane.Grant{ID: secret.NewID(), TenantID: tenantID, Description: "grant", UserPublicKey: FakeKey('U'),
		Publish: []string{"fleet.prod.veh.v1.cmd.>"}, Subscribe: []string{"fleet.prod.veh.v1.state.>"},
		ExpiresAt: expires, ConnectionTypes: []string{"STANDARD"}, Region: "europe", CreatedBy: "system:test"}
	if err := s.CreateGrant(context.Background(), g); err != nil {
		tb.Fatalf("CreateGrant: %v", err)
	}
	return g
}

func MustRevocation(tb testing.TB, s controlplane.Store, tenantID, kind, targetID string) *controlplane.Revocation {
	tb.Helper()
	r := &controlplane.Revocation{TenantID: tenantID, Kind: kind, TargetID: targetID, UserPublicKey: FakeKey('U'), AccountVersion: 2}
	if err := s.CreateRevocation(context.Background(), r); err != nil {
		tb.Fatalf("CreateRevocation: %v", err)
	}
	return r
}

func tokenIDs(ts []*controlplane.EnrollmentToken) []string {
	return ids(ts, func(t *controlplane.EnrollmentToken) string { return t.ID })
}

func grantIDs(gs []*controlplane.Grant) []string {
	return ids(gs, func(g *controlplane.Grant) string { return g.ID })
}

// --- operator and accounts ---

func TestOperator(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	_, err := s.FindOperator(ctx)
	WantCode(t, err, controlplane.ENOTFOUND)

	op := &controlplane.Operator{Name: "fleetplane", PublicKey: FakeKey('O'), SigningKeys: []string{FakeKey('O'), FakeKey('O')},
		JWT: "op.jwt", SystemAccountPublicKey: FakeKey('A'), SystemAccountJWT: "sys.jwt", Sealed: []byte{1, 2, 3}}
	if err := s.CreateOperator(ctx, op); err != nil {
		t.Fatal(err)
	}
	if op.CreatedAt.IsZero() {
		t.Error("CreateOperator did not set CreatedAt")
	}
	got, err := s.FindOperator(ctx)
	if err != nil || !reflect.DeepEqual(got, op) {
		t.Errorf("FindOperator = %+v, %v; want %+v", got, err, op)
	}
	second := *op
	second.PublicKey = FakeKey('O')
	WantCode(t, s.CreateOperator(ctx, &second), controlplane.ECONFLICT)
	bad := *op
	bad.PublicKey = FakeKey('A')
	WantCode(t, s.CreateOperator(ctx, &bad), controlplane.EINVALID)
}

func TestAccounts(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "acme")
	_, err := s.FindAccount(ctx, tn.ID, false)
	WantCode(t, err, controlplane.ENOTFOUND)

	a := MustAccount(t, s, tn.ID)
	if a.CreatedAt.IsZero() || a.UpdatedAt.IsZero() {
		t.Fatalf("CreateAccount did not set the times: %+v", a)
	}
	got, err := s.FindAccount(ctx, tn.ID, false)
	if err != nil || !reflect.DeepEqual(got, a) {
		t.Fatalf("FindAccount = %+v, %v; want %+v", got, err, a)
	}
	WantCode(t, s.CreateAccount(ctx, &controlplane.Account{TenantID: tn.ID, Name: "again", PublicKey: FakeKey('A'),
		SigningKeys: a.SigningKeys, Sealed: []byte("x"), Version: 1, JWT: "j"}), controlplane.ECONFLICT)
	WantCode(t, s.CreateAccount(ctx, &controlplane.Account{TenantID: "00000000-0000-0000-0000-000000000000", Name: "ghost",
		PublicKey: FakeKey('A'), SigningKeys: a.SigningKeys, Sealed: []byte("x"), Version: 1, JWT: "j"}), controlplane.ENOTFOUND)

	// Limits are stored with readable keys; revocations as a JSON object.
	a.Limits = natsauth.Limits{Conn: 5, LeafNodeConn: 100, Subs: -1, Payload: 1 << 20, JetStreamDisk: 1 << 30, JetStreamMem: 0, Streams: 3, Consumers: 7}
	userKey := FakeKey('U')
	a.Revocations = map[string]int64{userKey: 1700000000}
	a.Version, a.JWT = 2, "jwt-2"
	before := a.UpdatedAt
	if err := s.UpdateAccount(ctx, a); err != nil {
		t.Fatal(err)
	}
	if !a.UpdatedAt.After(before) {
		t.Errorf("UpdatedAt %v not after %v", a.UpdatedAt, before)
	}
	row := MustRow(t, pool, `SELECT limits::text, revocations->>$2 AS rev FROM nats_accounts WHERE tenant_id = $1`, tn.ID, userKey)
	var keys map[string]int64
	if err := json.Unmarshal([]byte(row["limits"].(string)), &keys); err != nil {
		t.Fatal(err)
	}
	wantKeys := map[string]int64{"conn": 5, "leaf_node_conn": 100, "subs": -1, "payload": 1 << 20,
		"jetstream_disk": 1 << 30, "jetstream_mem": 0, "streams": 3, "consumers": 7}
	if !reflect.DeepEqual(keys, wantKeys) || row["rev"] != "1700000000" {
		t.Errorf("stored limits %v, revocation %v", keys, row["rev"])
	}
	got, err = s.FindAccount(ctx, tn.ID, true)
	if err != nil || !reflect.DeepEqual(got, a) {
		t.Fatalf("FindAccount after update = %+v, %v; want %+v", got, err, a)
	}
	WantCode(t, s.UpdateAccount(ctx, &controlplane.Account{TenantID: MustTenant(t, s, "none").ID, Version: 1, JWT: "j"}), controlplane.ENOTFOUND)

	// Pushed versions only rise, and never past the signed version.
	behind, err := s.FindAccountsBehind(ctx, 10)
	if err != nil || len(behind) != 1 || behind[0].TenantID != tn.ID {
		t.Fatalf("FindAccountsBehind = %v, %v", behind, err)
	}
	t1 := time.Now().Truncate(time.Microsecond)
	if err := s.MarkAccountPushed(ctx, tn.ID, 1, t1); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkAccountPushed(ctx, tn.ID, 2, t1.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkAccountPushed(ctx, tn.ID, 1, t1.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	got, _ = s.FindAccount(ctx, tn.ID, false)
	if got.PushedVersion != 2 || got.PushedAt == nil || !got.PushedAt.Equal(t1.Add(time.Second)) {
		t.Errorf("after pushes 1, 2, 1: version %d at %v", got.PushedVersion, got.PushedAt)
	}
	WantCode(t, s.MarkAccountPushed(ctx, tn.ID, 3, t1), controlplane.EINVALID)
	WantCode(t, s.MarkAccountPushed(ctx, "00000000-0000-0000-0000-000000000000", 1, t1), controlplane.ENOTFOUND)
	if behind, err := s.FindAccountsBehind(ctx, 10); err != nil || len(behind) != 0 {
		t.Errorf("FindAccountsBehind after the push = %v, %v", behind, err)
	}
}

// TestFindAccountForUpdate: a second transaction that locks the account
// waits for the first to end, and then reads what it wrote.
func TestFindAccountForUpdate(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "acme")
	MustAccount(t, s, tn.ID)

	locked, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- s.Tx(ctx, func(tx controlplane.Store) error {
			a, err := tx.FindAccount(ctx, tn.ID, true)
			if err != nil {
				return err
			}
			close(locked)
			<-release
			a.Version++
			return tx.UpdateAccount(ctx, a)
		})
	}()
	<-locked
	second := make(chan int64, 1)
	go func() {
		var v int64
		err := s.Tx(ctx, func(tx controlplane.Store) error {
			a, err := tx.FindAccount(ctx, tn.ID, true)
			if a != nil {
				v = a.Version
			}
			return err
		})
		if err != nil {
			t.Error(err)
		}
		second <- v
	}()
	select {
	case v := <-second:
		t.Fatalf("the second FindAccount(forUpdate) did not wait for the first transaction (read version %d)", v)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if v := <-second; v != 2 {
		t.Errorf("the second transaction read version %d, want 2", v)
	}
}

// TestEnqueueAccountPush: the job is part of the store's transaction.
func TestEnqueueAccountPush(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()
	count := func(tenantID string) int64 {
		t.Helper()
		return MustRow(t, pool, `SELECT count(*) AS n FROM river_job WHERE kind = 'account_push' AND args->>'tenant_id' = $1`, tenantID)["n"].(int64)
	}
	runAt := time.Now().Add(time.Minute).Truncate(time.Microsecond)

	errRollback := errors.New("roll back")
	err := s.Tx(ctx, func(tx controlplane.Store) error {
		if err := tx.EnqueueAccountPush(ctx, controlplane.AccountPushJob{TenantID: "rolled-back"}, runAt); err != nil {
			return err
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatal(err)
	}
	if n := count("rolled-back"); n != 0 {
		t.Errorf("%d jobs from a rolled-back transaction", n)
	}

	err = s.Tx(ctx, func(tx controlplane.Store) error {
		return tx.EnqueueAccountPush(ctx, controlplane.AccountPushJob{TenantID: "committed", RevocationID: 42}, runAt)
	})
	if err != nil {
		t.Fatal(err)
	}
	job := MustRow(t, pool, `SELECT args::text, queue, max_attempts, scheduled_at, state::text FROM river_job WHERE args->>'tenant_id' = 'committed'`)
	if job["args"] != `{"tenant_id": "committed", "revocation_id": 42}` || job["queue"] != "default" || job["max_attempts"] != int16(25) ||
		!job["scheduled_at"].(time.Time).Equal(runAt) || job["state"] != "scheduled" {
		t.Errorf("job = %v", job)
	}

	if err := s.EnqueueAccountPush(ctx, controlplane.AccountPushJob{TenantID: "no-tx"}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if n := count("no-tx"); n != 1 {
		t.Errorf("%d jobs inserted outside a transaction, want 1", n)
	}
}

// --- enrollment tokens ---

func TestEnrollmentTokens(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "acme")
	f := MustFleet(t, s, tn.ID, "drones")
	other := MustFleet(t, s, tn.ID, "other")
	future := time.Now().Add(time.Hour).Truncate(time.Microsecond)

	id, _, hash := secret.New(secret.EnrollmentTokenPrefix)
	tok := &controlplane.EnrollmentToken{ID: id, TenantID: tn.ID, FleetID: f.ID, Description: "line 3", ExpiresAt: future,
		SourceCIDRs: []string{"192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32"}, VehicleID: "drone-7", CreatedBy: "user:1"}
	if err := s.CreateEnrollmentToken(ctx, tok, hash); err != nil {
		t.Fatal(err)
	}
	if tok.MaxUses != 1 || tok.FleetSlug != "drones" || tok.CreatedAt.IsZero() {
		t.Errorf("CreateEnrollmentToken set %+v", tok)
	}
	got, err := s.FindEnrollmentTokenByID(ctx, tn.ID, id)
	if err != nil || !reflect.DeepEqual(got, tok) {
		t.Errorf("FindEnrollmentTokenByID = %+v, %v; want %+v", got, err, tok)
	}
	MustAccount(t, s, tn.ID)
	ea, err := s.FindEnrollmentForAuth(ctx, id)
	if err != nil || !reflect.DeepEqual(ea.Token, tok) || string(ea.Hash) != string(hash) ||
		ea.Fleet.ID != f.ID || ea.Fleet.Environment != f.Environment || ea.Account.TenantID != tn.ID || ea.Account.Sealed == nil {
		t.Errorf("FindEnrollmentForAuth = %+v, %v", ea, err)
	}
	if row := MustRow(t, pool, `SELECT vehicle_id, source_cidrs[3]::text AS c FROM enrollment_tokens WHERE id = $1`, id); row["vehicle_id"] != "drone-7" || row["c"] != "198.51.100.7/32" {
		t.Errorf("stored %v", row)
	}
	_, err = s.FindEnrollmentForAuth(ctx, "aaaaaaaaaaaaaaaa")
	WantCode(t, err, controlplane.ENOTFOUND)
	WantCode(t, s.CreateEnrollmentToken(ctx, tok, hash), controlplane.ECONFLICT)

	// Bad input.
	for _, tc := range []struct {
		name string
		mod  func(*controlplane.EnrollmentToken)
		code string
	}{
		{"host bits", func(t *controlplane.EnrollmentToken) { t.SourceCIDRs = []string{"192.0.2.1/24"} }, controlplane.EINVALID},
		{"no prefix", func(t *controlplane.EnrollmentToken) { t.SourceCIDRs = []string{"192.0.2.1"} }, controlplane.EINVALID},
		{"max uses", func(t *controlplane.EnrollmentToken) { t.MaxUses = 100001 }, controlplane.EINVALID},
		{"vehicle ID", func(t *controlplane.EnrollmentToken) { t.VehicleID = "a.b" }, controlplane.EINVALID},
		{"missing fleet", func(t *controlplane.EnrollmentToken) { t.FleetID = 1 << 40 }, controlplane.ENOTFOUND},
		{"missing tenant", func(t *controlplane.EnrollmentToken) { t.TenantID = "00000000-0000-0000-0000-000000000000" }, controlplane.ENOTFOUND},
	} {
		bad := &controlplane.EnrollmentToken{ID: secret.NewID(), TenantID: tn.ID, FleetID: f.ID, ExpiresAt: future, CreatedBy: "u"}
		tc.mod(bad)
		if err := s.CreateEnrollmentToken(ctx, bad, hash); controlplane.ErrorCode(err) != tc.code {
			t.Errorf("%s: err = %v, want %s", tc.name, err, tc.code)
		}
	}

	// Listing: newest first, inactive tokens only on request.
	MustExec(t, pool, `DELETE FROM enrollment_tokens`)
	at := time.Now().Add(-time.Hour).Truncate(time.Second)
	mk := func(i int, maxUses int, expires time.Time) string {
		tok := MustToken(t, s, f, maxUses, expires)
		// Distinct creation times, and two equal ones to exercise the ID tie-break.
		MustExec(t, pool, `UPDATE enrollment_tokens SET created_at = $2 WHERE id = $1`, tok.ID, at.Add(time.Duration(min(i, 4))*time.Minute))
		return tok.ID
	}
	active1 := mk(0, 1, future)
	active2 := mk(1, 5, future)
	revoked := mk(2, 1, future)
	expired := mk(3, 1, time.Now().Add(-time.Minute))
	usedUp := mk(4, 1, future)
	active3 := mk(5, 1, future) // same created_at as usedUp
	MustToken(t, s, other, 1, future)
	if err := s.RevokeEnrollmentToken(ctx, tn.ID, revoked, time.Now()); err != nil {
		t.Fatal(err)
	}
	WantCode(t, s.RevokeEnrollmentToken(ctx, tn.ID, revoked, time.Now()), controlplane.ENOTFOUND)
	WantCode(t, s.RevokeEnrollmentToken(ctx, tn.ID, "aaaaaaaaaaaaaaaa", time.Now()), controlplane.ENOTFOUND)
	if err := s.UseEnrollmentToken(ctx, usedUp, time.Now()); err != nil {
		t.Fatal(err)
	}
	tie := []string{usedUp, active3}
	if tie[0] < tie[1] {
		tie[0], tie[1] = tie[1], tie[0]
	}
	all := append(append([]string{}, tie...), expired, revoked, active2, active1)
	var active []string
	for _, id := range all {
		if id == active1 || id == active2 || id == active3 {
			active = append(active, id)
		}
	}
	ts, err := s.FindEnrollmentTokens(ctx, tn.ID, controlplane.EnrollmentTokenFilter{FleetID: f.ID, IncludeRevoked: true})
	if got := tokenIDs(ts); err != nil || !eq(got, all) {
		t.Errorf("all tokens = %v, %v; want %v", got, err, all)
	}
	ts, err = s.FindEnrollmentTokens(ctx, tn.ID, controlplane.EnrollmentTokenFilter{FleetID: f.ID})
	if got := tokenIDs(ts); err != nil || !eq(got, active) {
		t.Errorf("active tokens = %v, %v; want %v", got, err, active)
	}
	// Page by page, two at a time.
	var paged []string
	for after := ""; ; {
		ts, err := s.FindEnrollmentTokens(ctx, tn.ID, controlplane.EnrollmentTokenFilter{FleetID: f.ID, IncludeRevoked: true, After: after, Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		if len(ts) == 0 {
			break
		}
		paged = append(paged, tokenIDs(ts)...)
		after = ts[len(ts)-1].ID
	}
	if !eq(paged, all) {
		t.Errorf("paged = %v, want %v", paged, all)
	}
}

func TestUseEnrollmentToken(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "acme")
	f := MustFleet(t, s, tn.ID, "drones")
	now := time.Now()

	tok := MustToken(t, s, f, 2, now.Add(time.Hour))
	if err := s.UseEnrollmentToken(ctx, tok.ID, now); err != nil {
		t.Fatal(err)
	}
	got, _ := s.FindEnrollmentTokenByID(ctx, tn.ID, tok.ID)
	if got.Uses != 1 || got.LastUsedAt == nil || !sameTime(*got.LastUsedAt, now) {
		t.Errorf("after one use: %+v", got)
	}
	// Expiry is judged at the time given.
	WantCode(t, s.UseEnrollmentToken(ctx, tok.ID, now.Add(time.Hour)), controlplane.ECONFLICT)
	revoked := MustToken(t, s, f, 2, now.Add(time.Hour))
	if err := s.RevokeEnrollmentToken(ctx, tn.ID, revoked.ID, now); err != nil {
		t.Fatal(err)
	}
	WantCode(t, s.UseEnrollmentToken(ctx, revoked.ID, now), controlplane.ECONFLICT)
	WantCode(t, s.UseEnrollmentToken(ctx, "aaaaaaaaaaaaaaaa", now), controlplane.ECONFLICT)

	// Concurrent enrollments, each in its own transaction, use a token
	// exactly as often as it allows.
	for _, maxUses := range []int{1, 3} {
		tok := MustToken(t, s, f, maxUses, now.Add(time.Hour))
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			ok, con int
		)
		start := make(chan struct{})
		for range 10 {
			wg.Go(func() {
				<-start
				err := s.Tx(ctx, func(tx controlplane.Store) error {
					if err := tx.UseEnrollmentToken(ctx, tok.ID, time.Now()); err != nil {
						return err
					}
					time.Sleep(20 * time.Millisecond) // hold the row lock while others queue
					return nil
				})
				mu.Lock()
				defer mu.Unlock()
				switch controlplane.ErrorCode(err) {
				case "":
					ok++
				case controlplane.ECONFLICT:
					con++
				default:
					t.Errorf("UseEnrollmentToken: %v", err)
				}
			})
		}
		close(start)
		wg.Wait()
		if ok != maxUses || con != 10-maxUses {
			t.Errorf("max_uses %d: %d uses succeeded, %d conflicted", maxUses, ok, con)
		}
		got, _ := s.FindEnrollmentTokenByID(ctx, tn.ID, tok.ID)
		if got.Uses != maxUses {
			t.Errorf("max_uses %d: uses = %d", maxUses, got.Uses)
		}
	}
}

// --- vehicle credentials and user keys ---

func TestVehicleEnrollment(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "acme")
	f := MustFleet(t, s, tn.ID, "drones")
	v := MustVehicle(t, s, f, "drone-1", nil)
	other := MustVehicle(t, s, f, "drone-2", nil)
	if v.UserPublicKey != "" || v.CredentialsExpireAt != nil || v.Hostname != "" {
		t.Fatalf("new vehicle has credentials: %+v", v)
	}

	key := FakeKey('U')
	now := time.Now().Truncate(time.Microsecond)
	expires := now.Add(24 * time.Hour)
	got, err := s.SetVehicleEnrollment(ctx, tn.ID, v.ID, controlplane.VehicleEnrollment{UserPublicKey: key, CredentialsExpireAt: expires,
		Status: controlplane.VehicleActive, EnrolledAt: &now, Hostname: ptr("pi"), Arch: ptr("arm64"), AgentVersion: ptr("1.2.3")})
	if err != nil {
		t.Fatal(err)
	}
	if got.UserPublicKey != key || !got.CredentialsExpireAt.Equal(expires) || got.Status != controlplane.VehicleActive ||
		!got.EnrolledAt.Equal(now) || got.Hostname != "pi" || got.Arch != "arm64" || got.AgentVersion != "1.2.3" || got.FleetSlug != "drones" {
		t.Errorf("SetVehicleEnrollment = %+v", got)
	}
	for name, find := range map[string]func() (*controlplane.Vehicle, error){
		"FindVehicleByUserKey": func() (*controlplane.Vehicle, error) { return s.FindVehicleByUserKey(ctx, key) },
		"FindVehicle":          func() (*controlplane.Vehicle, error) { return s.FindVehicle(ctx, tn.ID, f.ID, "drone-1") },
		"FindVehicles": func() (*controlplane.Vehicle, error) {
			vs, err := s.FindVehicles(ctx, tn.ID, controlplane.VehicleFilter{Limit: 1})
			if err != nil {
				return nil, err
			}
			return vs[0], nil
		},
	} {
		if v2, err := find(); err != nil || !reflect.DeepEqual(v2, got) {
			t.Errorf("%s = %+v, %v; want %+v", name, v2, err, got)
		}
	}
	_, err = s.FindVehicleByUserKey(ctx, FakeKey('U'))
	WantCode(t, err, controlplane.ENOTFOUND)

	// Renewal: nil fields stay, the expiry moves.
	later := expires.Add(time.Hour)
	got, err = s.SetVehicleEnrollment(ctx, tn.ID, v.ID, controlplane.VehicleEnrollment{UserPublicKey: key, CredentialsExpireAt: later,
		Status: controlplane.VehicleActive, AgentVersion: ptr("1.3.0")})
	if err != nil || !got.CredentialsExpireAt.Equal(later) || !got.EnrolledAt.Equal(now) || got.Hostname != "pi" || got.AgentVersion != "1.3.0" {
		t.Errorf("renewal = %+v, %v", got, err)
	}

	// A key is one holder's: not another vehicle's, not a grant's.
	_, err = s.SetVehicleEnrollment(ctx, tn.ID, other.ID, controlplane.VehicleEnrollment{UserPublicKey: key, Status: controlplane.VehicleActive})
	WantCode(t, err, controlplane.ECONFLICT)
	g := &controlplane.Grant{ID: secret.NewID(), TenantID: tn.ID, UserPublicKey: key, ExpiresAt: expires, Region: "europe", CreatedBy: "u"}
	WantCode(t, s.CreateGrant(ctx, g), controlplane.ECONFLICT)
	grant := MustGrant(t, s, tn.ID, expires)
	_, err = s.SetVehicleEnrollment(ctx, tn.ID, other.ID, controlplane.VehicleEnrollment{UserPublicKey: grant.UserPublicKey, Status: controlplane.VehicleActive})
	WantCode(t, err, controlplane.ECONFLICT)
	nv := &controlplane.Vehicle{TenantID: tn.ID, FleetID: f.ID, VehicleID: "drone-3", Name: "n", UserPublicKey: grant.UserPublicKey}
	WantCode(t, s.CreateVehicle(ctx, nv), controlplane.ECONFLICT)
	// Even after the vehicle moves to a new key, or is deleted, its old
	// keys stay its own.
	if _, err := s.SetVehicleEnrollment(ctx, tn.ID, v.ID, controlplane.VehicleEnrollment{UserPublicKey: FakeKey('U'), Status: controlplane.VehicleActive}); err != nil {
		t.Fatal(err)
	}
	_, err = s.SetVehicleEnrollment(ctx, tn.ID, other.ID, controlplane.VehicleEnrollment{UserPublicKey: key, Status: controlplane.VehicleActive})
	WantCode(t, err, controlplane.ECONFLICT)
	if _, err := s.SetVehicleEnrollment(ctx, tn.ID, v.ID, controlplane.VehicleEnrollment{UserPublicKey: key, Status: controlplane.VehicleActive}); err != nil {
		t.Errorf("the holder taking its old key back: %v", err)
	}
	if err := s.DeleteVehicle(ctx, tn.ID, v.ID); err != nil {
		t.Fatal(err)
	}
	_, err = s.SetVehicleEnrollment(ctx, tn.ID, other.ID, controlplane.VehicleEnrollment{UserPublicKey: key, Status: controlplane.VehicleActive})
	WantCode(t, err, controlplane.ECONFLICT)
	if row := MustRow(t, pool, `SELECT count(*) AS n FROM nats_user_keys`); row["n"] != int64(3) {
		t.Errorf("nats_user_keys holds %v keys, want 3", row["n"])
	}

	// Bad input, and other tenants' vehicles.
	_, err = s.SetVehicleEnrollment(ctx, tn.ID, other.ID, controlplane.VehicleEnrollment{UserPublicKey: FakeKey('A')})
	WantCode(t, err, controlplane.EINVALID)
	_, err = s.SetVehicleEnrollment(ctx, tn.ID, v.ID, controlplane.VehicleEnrollment{UserPublicKey: FakeKey('U')})
	WantCode(t, err, controlplane.ENOTFOUND)
}

// TestUserKeyRace: a vehicle and a grant binding one key in concurrent
// transactions: the second waits for the first and then conflicts, though
// neither could see the other's row when it started.
func TestUserKeyRace(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "acme")
	v := MustVehicle(t, s, MustFleet(t, s, tn.ID, "drones"), "drone-1", nil)
	key := FakeKey('U')

	bound, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- s.Tx(ctx, func(tx controlplane.Store) error {
			_, err := tx.SetVehicleEnrollment(ctx, tn.ID, v.ID, controlplane.VehicleEnrollment{UserPublicKey: key, Status: controlplane.VehicleActive})
			close(bound)
			<-release
			return err
		})
	}()
	<-bound
	second := make(chan error, 1)
	go func() {
		second <- s.Tx(ctx, func(tx controlplane.Store) error {
			return tx.CreateGrant(ctx, &controlplane.Grant{ID: secret.NewID(), TenantID: tn.ID, UserPublicKey: key,
				ExpiresAt: time.Now().Add(time.Hour), Region: "europe", CreatedBy: "u"})
		})
	}()
	select {
	case err := <-second:
		t.Fatalf("CreateGrant did not wait for the vehicle's transaction: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	WantCode(t, <-second, controlplane.ECONFLICT)
}

func TestAgentNonces(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	key, now := FakeKey('U'), time.Now()

	for _, n := range []string{"n1", "n2", "n3"} {
		if err := s.CreateAgentNonce(ctx, key, n, now.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	WantCode(t, s.CreateAgentNonce(ctx, key, "n1", now.Add(time.Minute)), controlplane.ECONFLICT)
	WantCode(t, s.CreateAgentNonce(ctx, "not-a-key", "n9", now.Add(time.Minute)), controlplane.EINVALID)
	WantCode(t, s.ConsumeAgentNonce(ctx, FakeKey('U'), "n1", now), controlplane.ENOTFOUND) // someone else's
	WantCode(t, s.ConsumeAgentNonce(ctx, key, "n2", now.Add(time.Minute)), controlplane.ENOTFOUND)
	if err := s.ConsumeAgentNonce(ctx, key, "n1", now); err != nil {
		t.Fatal(err)
	}
	WantCode(t, s.ConsumeAgentNonce(ctx, key, "n1", now), controlplane.ENOTFOUND) // single use
	n, err := s.DeleteExpiredAgentNonces(ctx, now.Add(2*time.Minute))
	if err != nil || n != 2 {
		t.Errorf("DeleteExpiredAgentNonces = %d, %v; want 2", n, err)
	}
}

// --- grants ---

func TestGrants(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "acme")
	now := time.Now().Truncate(time.Microsecond)

	g := &controlplane.Grant{ID: secret.NewID(), TenantID: tn.ID, Description: "partner", UserPublicKey: FakeKey('U'),
		Scopes: []controlplane.GrantScopeSpec{
			{Fleet: "drones", VehicleIDs: []string{"d1", "d2"}, Categories: []controlplane.GrantCategory{natsauth.CategoryState, natsauth.CategoryEvents}},
			{Fleet: "trucks", Categories: []controlplane.GrantCategory{natsauth.CategoryState}},
		},
		Publish: []string{"fleet.prod.veh.d1.cmd.>"}, Subscribe: []string{"fleet.prod.veh.d1.state.>", "_INBOX.x.>"},
		ExpiresAt: now.Add(time.Hour), SourceCIDRs: []string{"10.0.0.0/8", "2001:db8::/48"},
		TimeWindows: []controlplane.TimeWindow{{Start: "08:00:00", End: "18:00:00"}}, Locale: "Europe/Paris",
		ConnectionTypes: []string{"STANDARD", "WEBSOCKET"}, Region: "europe", CreatedBy: "user:1"}
	if err := s.CreateGrant(ctx, g); err != nil {
		t.Fatal(err)
	}
	if g.CreatedAt.IsZero() {
		t.Error("CreateGrant did not set CreatedAt")
	}
	got, err := s.FindGrant(ctx, tn.ID, g.ID)
	if err != nil || !reflect.DeepEqual(got, g) {
		t.Errorf("FindGrant = %+v, %v\nwant %+v", got, err, g)
	}
	if row := MustRow(t, pool, `SELECT scopes->0->>'fleet' AS fleet, time_windows->0->>'start' AS start FROM grants WHERE id = $1`, g.ID); row["fleet"] != "drones" || row["start"] != "08:00:00" {
		t.Errorf("stored %v", row)
	}
	_, err = s.FindGrant(ctx, tn.ID, "aaaaaaaaaaaaaaaa")
	WantCode(t, err, controlplane.ENOTFOUND)
	WantCode(t, s.CreateGrant(ctx, g), controlplane.ECONFLICT)
	bad := *g
	bad.ID, bad.UserPublicKey, bad.SourceCIDRs = secret.NewID(), FakeKey('U'), []string{"10.0.0.1/8"}
	WantCode(t, s.CreateGrant(ctx, &bad), controlplane.EINVALID)
	bad.SourceCIDRs, bad.Region = nil, "Europe"
	WantCode(t, s.CreateGrant(ctx, &bad), controlplane.EINVALID)
	bad.Region, bad.TenantID = "europe", "00000000-0000-0000-0000-000000000000"
	WantCode(t, s.CreateGrant(ctx, &bad), controlplane.ENOTFOUND)

	// Empty lists come back empty, not nil.
	minimal := &controlplane.Grant{ID: secret.NewID(), TenantID: tn.ID, UserPublicKey: FakeKey('U'), ExpiresAt: now.Add(time.Hour),
		Region: "europe", CreatedBy: "u"}
	if err := s.CreateGrant(ctx, minimal); err != nil {
		t.Fatal(err)
	}
	got, err = s.FindGrant(ctx, tn.ID, minimal.ID)
	if err != nil || got.Scopes == nil || got.Publish == nil || got.SourceCIDRs == nil || got.TimeWindows == nil || got.ConnectionTypes == nil {
		t.Errorf("minimal grant = %+v, %v", got, err)
	}

	// Listing: newest first; revoked and expired ones only on request.
	MustExec(t, pool, `DELETE FROM grants`)
	base := now.Add(-time.Hour)
	mk := func(i int, expires time.Time) string {
		g := MustGrant(t, s, tn.ID, expires)
		MustExec(t, pool, `UPDATE grants SET created_at = $2 WHERE id = $1`, g.ID, base.Add(time.Duration(i)*time.Minute))
		return g.ID
	}
	old := mk(0, now.Add(time.Hour))
	revoked := mk(1, now.Add(time.Hour))
	expiresSoon := mk(2, now.Add(time.Minute))
	newest := mk(3, now.Add(time.Hour))
	if err := s.RevokeGrant(ctx, tn.ID, revoked, now); err != nil {
		t.Fatal(err)
	}
	WantCode(t, s.RevokeGrant(ctx, tn.ID, revoked, now), controlplane.ENOTFOUND)
	for _, tc := range []struct {
		name string
		f    controlplane.GrantFilter
		want []string
	}{
		{"all", controlplane.GrantFilter{IncludeInactive: true}, []string{newest, expiresSoon, revoked, old}},
		{"active now", controlplane.GrantFilter{Now: now}, []string{newest, expiresSoon, old}},
		{"active by the database clock", controlplane.GrantFilter{}, []string{newest, expiresSoon, old}},
		{"active in two minutes", controlplane.GrantFilter{Now: now.Add(2 * time.Minute)}, []string{newest, old}},
		{"page", controlplane.GrantFilter{IncludeInactive: true, After: newest, Limit: 2}, []string{expiresSoon, revoked}},
		{"last page", controlplane.GrantFilter{IncludeInactive: true, After: revoked, Limit: 2}, []string{old}},
		{"active page", controlplane.GrantFilter{Now: now, After: expiresSoon}, []string{old}},
		{"unknown cursor", controlplane.GrantFilter{IncludeInactive: true, After: "aaaaaaaaaaaaaaaa"}, []string{}},
	} {
		gs, err := s.FindGrants(ctx, tn.ID, tc.f)
		if got := grantIDs(gs); err != nil || !eq(got, tc.want) {
			t.Errorf("%s: %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
}

// --- revocations ---

func TestRevocations(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "acme")

	_, err := s.FindLatestRevocation(ctx, tn.ID, controlplane.RevokeVehicle, "drone-1")
	WantCode(t, err, controlplane.ENOTFOUND)
	first := MustRevocation(t, s, tn.ID, controlplane.RevokeVehicle, "drone-1")
	if first.ID == 0 || first.RequestedAt.IsZero() || first.Status != controlplane.RevocationPending {
		t.Fatalf("CreateRevocation set %+v", first)
	}
	got, err := s.FindRevocation(ctx, tn.ID, first.ID)
	if err != nil || !reflect.DeepEqual(got, &controlplane.Revocation{ID: first.ID, TenantID: tn.ID, Kind: "vehicle", TargetID: "drone-1",
		UserPublicKey: first.UserPublicKey, AccountVersion: 2, Status: "pending", RequestedAt: first.RequestedAt,
		Nodes: []controlplane.NodeAck{}, Connections: []controlplane.NodeConnections{}}) {
		t.Errorf("FindRevocation = %+v, %v", got, err)
	}
	if row := MustRow(t, pool, `SELECT latency_us FROM revocations WHERE id = $1`, first.ID); row["latency_us"] != nil {
		t.Errorf("pending latency stored as %v, want NULL", row["latency_us"])
	}

	second := MustRevocation(t, s, tn.ID, controlplane.RevokeVehicle, "drone-1")
	MustRevocation(t, s, tn.ID, controlplane.RevokeGrant, "drone-1")
	MustRevocation(t, s, tn.ID, controlplane.RevokeVehicle, "drone-2")
	done := second.RequestedAt.Add(1500 * time.Millisecond)
	second.Status, second.CompletedAt = controlplane.RevocationProven, &done
	second.Nodes = []controlplane.NodeAck{{Node: "eu-1", OK: true}, {Node: "eu-2", OK: false, Message: "timeout"}}
	second.Connections = []controlplane.NodeConnections{{Node: "eu-1", Connections: 0}, {Node: "eu-2", Error: "no answer"}}
	second.ConnectionsRemaining, second.Latency, second.Attempts, second.LastError = 0, 1500*time.Millisecond+7*time.Microsecond, 3, "eu-2: timeout"
	if err := s.UpdateRevocation(ctx, second); err != nil {
		t.Fatal(err)
	}
	got, err = s.FindLatestRevocation(ctx, tn.ID, controlplane.RevokeVehicle, "drone-1")
	if err != nil || !reflect.DeepEqual(got, second) {
		t.Errorf("FindLatestRevocation = %+v, %v\nwant %+v", got, err, second)
	}
	if row := MustRow(t, pool, `SELECT latency_us, nodes->1->>'message' AS msg FROM revocations WHERE id = $1`, second.ID); row["latency_us"] != int64(1500007) || row["msg"] != "timeout" {
		t.Errorf("stored %v", row)
	}

	WantCode(t, s.UpdateRevocation(ctx, &controlplane.Revocation{TenantID: tn.ID, ID: 1 << 40, Status: "pending"}), controlplane.ENOTFOUND)
	proven := *first
	proven.Status = controlplane.RevocationProven // without CompletedAt
	WantCode(t, s.UpdateRevocation(ctx, &proven), controlplane.EINVALID)
	WantCode(t, s.CreateRevocation(ctx, &controlplane.Revocation{TenantID: tn.ID, Kind: "fleet", TargetID: "x", UserPublicKey: FakeKey('U'), AccountVersion: 1}), controlplane.EINVALID)
	WantCode(t, s.CreateRevocation(ctx, &controlplane.Revocation{TenantID: "00000000-0000-0000-0000-000000000000", Kind: "grant", TargetID: "x", UserPublicKey: FakeKey('U'), AccountVersion: 1}), controlplane.ENOTFOUND)
}
