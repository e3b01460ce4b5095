package postgres_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/pgtest"
	"github.com/fleetplane/fleetplane/internal/secret"
)

func mustMember(tb testing.TB, s controlplane.Store, tenantID, email string, role controlplane.Role, portal bool) *controlplane.User {
	tb.Helper()
	ctx := context.Background()
	u := &controlplane.User{Email: email}
	var err error
	if portal {
		err = s.CreatePortalUser(ctx, u, "$argon2id$hash")
	} else {
		err = s.CreateUser(ctx, u, "$argon2id$hash")
	}
	if err != nil {
		tb.Fatalf("creating user %s: %v", email, err)
	}
	if err := s.CreateMembership(ctx, &controlplane.Membership{TenantID: tenantID, UserID: u.ID, Role: role}); err != nil {
		tb.Fatalf("CreateMembership: %v", err)
	}
	return u
}

func mustSession(tb testing.TB, s controlplane.Store, tenantID, userID string, at time.Time) (*controlplane.Session, []byte) {
	tb.Helper()
	id, _, hash := secret.New("fps")
	sess := &controlplane.Session{ID: id, UserID: userID, TenantID: tenantID, CSRF: "csrf-secret-0123456789",
		CreatedAt: at, LastSeenAt: at, ExpiresAt: at.Add(24 * time.Hour)}
	if err := s.CreateSession(context.Background(), sess, hash, "192.0.2.7", "Firefox"); err != nil {
		tb.Fatalf("CreateSession: %v", err)
	}
	return sess, hash
}

func mustUserToken(tb testing.TB, s controlplane.Store, purpose, userID, tenantID string, at time.Time, ttl time.Duration) *controlplane.UserToken {
	tb.Helper()
	id, _, hash := secret.New("fpt")
	t := &controlplane.UserToken{ID: id, Purpose: purpose, UserID: userID, TenantID: tenantID, CreatedAt: at, ExpiresAt: at.Add(ttl)}
	if err := s.CreateUserToken(context.Background(), t, hash); err != nil {
		tb.Fatalf("CreateUserToken(%s): %v", purpose, err)
	}
	return t
}

func TestUsersVerification(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "Acme")
	api := mustMember(t, s, tn.ID, "api@acme.example", controlplane.RoleOwner, false)
	portal := mustMember(t, s, tn.ID, "portal@acme.example", controlplane.RoleAdmin, true)

	// Users made outside the portal count as verified; the portal's not.
	u, err := s.FindUserByEmail(ctx, "api@acme.example")
	if err != nil || u.ID != api.ID || u.EmailVerifiedAt == nil || u.PasswordHash != "$argon2id$hash" {
		t.Fatalf("FindUserByEmail(api) = %+v, %v", u, err)
	}
	u, err = s.FindUserByEmail(ctx, "portal@acme.example")
	if err != nil || u.ID != portal.ID || u.EmailVerifiedAt != nil {
		t.Fatalf("FindUserByEmail(portal) = %+v, %v", u, err)
	}
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	if err := s.VerifyUserEmail(ctx, portal.ID, at); err != nil {
		t.Fatal(err)
	}
	if err := s.VerifyUserEmail(ctx, portal.ID, at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if u, _ = s.FindUserByEmail(ctx, "portal@acme.example"); u.EmailVerifiedAt == nil || !u.EmailVerifiedAt.Equal(at) {
		t.Fatalf("verified at %v, want the first time %v", u.EmailVerifiedAt, at)
	}
	if err := s.SetUserPassword(ctx, portal.ID, "$argon2id$new", at); err != nil {
		t.Fatal(err)
	}
	if u, _ = s.FindUserByEmail(ctx, "portal@acme.example"); u.PasswordHash != "$argon2id$new" {
		t.Fatalf("password hash %q", u.PasswordHash)
	}
	pending := &controlplane.User{Email: "pending@acme.example"}
	if err := s.CreatePortalUser(ctx, pending, ""); err != nil {
		t.Fatal(err)
	}
	if u, _ = s.FindUserByEmail(ctx, "pending@acme.example"); u.PasswordHash != "" {
		t.Fatalf("pending user has hash %q", u.PasswordHash)
	}
	WantCode(t, s.CreatePortalUser(ctx, &controlplane.User{Email: "portal@acme.example"}, ""), controlplane.ECONFLICT)
	_, err = s.FindUserByEmail(ctx, "nobody@acme.example")
	WantCode(t, err, controlplane.ENOTFOUND)
	WantCode(t, s.VerifyUserEmail(ctx, "7f0e4b1e-8a43-4b43-9d4c-2a8a5e6f0d11", at), controlplane.ENOTFOUND)
	WantCode(t, s.SetUserPassword(ctx, "not-a-uuid", "$argon2id$x", at), controlplane.ENOTFOUND)
}

// TestMigrationVerifiesExistingUsers: users from before 000010 count as
// verified since they were created.
func TestMigrationVerifiesExistingUsers(t *testing.T) {
	t.Parallel()
	url := pgtest.NewURL(t)
	if err := postgres.MigrateDown(url, 2); err != nil { // to 000009
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	created := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	if _, err := conn.Exec(ctx, `INSERT INTO users (email, created_at) VALUES ('old@acme.example', $1)`, created); err != nil {
		t.Fatal(err)
	}
	if err := postgres.MigrateUp(url); err != nil {
		t.Fatal(err)
	}
	var verified *time.Time
	if err := conn.QueryRow(ctx, `SELECT email_verified_at FROM users WHERE email = 'old@acme.example'`).Scan(&verified); err != nil {
		t.Fatal(err)
	}
	if verified == nil || !verified.Equal(created) {
		t.Fatalf("email_verified_at = %v, want %v", verified, created)
	}
}

func TestMembers(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	a, b := MustTenant(t, s, "A"), MustTenant(t, s, "B")
	owner := mustMember(t, s, a.ID, "owner@a.example", controlplane.RoleOwner, false)
	viewer := mustMember(t, s, a.ID, "viewer@a.example", controlplane.RoleViewer, true)
	pending := &controlplane.User{Email: "pending@a.example"}
	if err := s.CreatePortalUser(ctx, pending, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.CreatePendingMembership(ctx, &controlplane.Membership{TenantID: a.ID, UserID: pending.ID, Role: controlplane.RoleMember}); err != nil {
		t.Fatal(err)
	}
	other := mustMember(t, s, b.ID, "owner@b.example", controlplane.RoleOwner, false)
	// The viewer of A is also an admin of B, later.
	if err := s.CreateMembership(ctx, &controlplane.Membership{TenantID: b.ID, UserID: viewer.ID, Role: controlplane.RoleAdmin}); err != nil {
		t.Fatal(err)
	}

	ms, err := s.FindMembers(ctx, a.ID)
	if err != nil || len(ms) != 3 {
		t.Fatalf("FindMembers(A) = %v, %v", ms, err)
	}
	if ms[0].UserID != owner.ID || ms[0].Role != controlplane.RoleOwner || ms[0].Pending || ms[0].AcceptedAt == nil ||
		ms[1].Email != "viewer@a.example" || ms[2].UserID != pending.ID || !ms[2].Pending || ms[2].AcceptedAt != nil {
		t.Fatalf("members %+v %+v %+v", ms[0], ms[1], ms[2])
	}
	if n, err := s.CountOwners(ctx, a.ID); n != 1 || err != nil {
		t.Fatalf("CountOwners = %d, %v", n, err)
	}
	// Another tenant's member is not found.
	_, err = s.FindMember(ctx, a.ID, other.ID)
	WantCode(t, err, controlplane.ENOTFOUND)
	_, err = s.UpdateMemberRole(ctx, a.ID, other.ID, controlplane.RoleViewer)
	WantCode(t, err, controlplane.ENOTFOUND)
	WantCode(t, s.DeleteMembership(ctx, a.ID, other.ID), controlplane.ENOTFOUND)
	_, err = s.FindMember(ctx, a.ID, "not-a-uuid")
	WantCode(t, err, controlplane.ENOTFOUND)

	m, err := s.UpdateMemberRole(ctx, a.ID, viewer.ID, controlplane.RoleMember)
	if err != nil || m.Role != controlplane.RoleMember || m.Email != "viewer@a.example" {
		t.Fatalf("UpdateMemberRole = %+v, %v", m, err)
	}
	_, err = s.UpdateMemberRole(ctx, a.ID, viewer.ID, "root")
	WantCode(t, err, controlplane.EINVALID)

	um, err := s.FindUserMemberships(ctx, viewer.ID)
	if err != nil || len(um) != 2 || um[0].TenantID != a.ID || um[1].TenantID != b.ID || um[1].Role != controlplane.RoleAdmin {
		t.Fatalf("FindUserMemberships = %+v, %v", um, err)
	}
	if um, err := s.FindUserMemberships(ctx, "not-a-uuid"); err == nil && len(um) != 0 {
		t.Fatalf("FindUserMemberships(bad) = %v", um)
	}
}

func TestSessions(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()
	a, b := MustTenant(t, s, "A"), MustTenant(t, s, "B")
	u := mustMember(t, s, a.ID, "u@a.example", controlplane.RoleAdmin, false)
	mustMember(t, s, b.ID, "b@b.example", controlplane.RoleOwner, false)
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

	// A session needs a membership in its tenant.
	id, _, hash := secret.New("fps")
	err := s.CreateSession(ctx, &controlplane.Session{ID: id, UserID: u.ID, TenantID: b.ID, CSRF: "csrf-secret-0123456789",
		CreatedAt: now, LastSeenAt: now, ExpiresAt: now.Add(time.Hour)}, hash, "", "")
	WantCode(t, err, controlplane.ENOTFOUND)

	sess, hash := mustSession(t, s, a.ID, u.ID, now)
	got, gotHash, err := s.FindSessionForAuth(ctx, sess.ID)
	if err != nil || got.UserID != u.ID || got.TenantID != a.ID || got.Email != "u@a.example" || got.Role != controlplane.RoleAdmin ||
		got.CSRF != sess.CSRF || !got.CreatedAt.Equal(now) || !got.ExpiresAt.Equal(now.Add(24*time.Hour)) || string(gotHash) != string(hash) {
		t.Fatalf("FindSessionForAuth = %+v, %v", got, err)
	}
	var ip, ua string
	if err := pool.QueryRow(ctx, `SELECT source_ip, user_agent FROM sessions WHERE id = $1`, sess.ID).Scan(&ip, &ua); err != nil ||
		ip != "192.0.2.7" || ua != "Firefox" {
		t.Fatalf("origin = %q %q, %v", ip, ua, err)
	}

	// The role is the membership's, as it is now.
	if _, err := s.UpdateMemberRole(ctx, a.ID, u.ID, controlplane.RoleViewer); err != nil {
		t.Fatal(err)
	}
	if got, _, _ = s.FindSessionForAuth(ctx, sess.ID); got.Role != controlplane.RoleViewer {
		t.Fatalf("role after change = %s", got.Role)
	}

	// Touch writes at most once a minute.
	if err := s.TouchSession(ctx, sess.ID, now.Add(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got, _, _ = s.FindSessionForAuth(ctx, sess.ID); !got.LastSeenAt.Equal(now) {
		t.Fatalf("touched within a minute: %v", got.LastSeenAt)
	}
	if err := s.TouchSession(ctx, sess.ID, now.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if got, _, _ = s.FindSessionForAuth(ctx, sess.ID); !got.LastSeenAt.Equal(now.Add(2 * time.Minute)) {
		t.Fatalf("not touched after a minute: %v", got.LastSeenAt)
	}

	WantCode(t, s.DeleteSession(ctx, sess.ID), "")
	WantCode(t, s.DeleteSession(ctx, sess.ID), controlplane.ENOTFOUND)
	_, _, err = s.FindSessionForAuth(ctx, sess.ID)
	WantCode(t, err, controlplane.ENOTFOUND)

	// All of a user's sessions, in every tenant.
	if err := s.CreateMembership(ctx, &controlplane.Membership{TenantID: b.ID, UserID: u.ID, Role: controlplane.RoleMember}); err != nil {
		t.Fatal(err)
	}
	mustSession(t, s, a.ID, u.ID, now)
	mustSession(t, s, b.ID, u.ID, now)
	if n, err := s.DeleteUserSessions(ctx, u.ID); n != 2 || err != nil {
		t.Fatalf("DeleteUserSessions = %d, %v", n, err)
	}

	// Removing the membership ends its sessions and voids its tokens, not
	// the user's other ones.
	inA, _ := mustSession(t, s, a.ID, u.ID, now)
	inB, _ := mustSession(t, s, b.ID, u.ID, now)
	invite := mustUserToken(t, s, controlplane.TokenInvite, u.ID, a.ID, now, time.Hour)
	reset := mustUserToken(t, s, controlplane.TokenResetPassword, u.ID, "", now, time.Hour)
	if err := s.DeleteMembership(ctx, a.ID, u.ID); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.FindSessionForAuth(ctx, inA.ID)
	WantCode(t, err, controlplane.ENOTFOUND)
	_, _, err = s.FindUserTokenForAuth(ctx, invite.ID)
	WantCode(t, err, controlplane.ENOTFOUND)
	if _, _, err := s.FindSessionForAuth(ctx, inB.ID); err != nil {
		t.Fatalf("session in B: %v", err)
	}
	if _, _, err := s.FindUserTokenForAuth(ctx, reset.ID); err != nil {
		t.Fatalf("reset token: %v", err)
	}
}

func TestUserTokens(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	a := MustTenant(t, s, "A")
	u := mustMember(t, s, a.ID, "u@a.example", controlplane.RoleOwner, true)
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

	tok := mustUserToken(t, s, controlplane.TokenVerifyEmail, u.ID, a.ID, now, time.Hour)
	got, hash, err := s.FindUserTokenForAuth(ctx, tok.ID)
	if err != nil || got.Purpose != controlplane.TokenVerifyEmail || got.UserID != u.ID || got.TenantID != a.ID ||
		!got.ExpiresAt.Equal(now.Add(time.Hour)) || got.UsedAt != nil || len(hash) != 32 {
		t.Fatalf("FindUserTokenForAuth = %+v, %v", got, err)
	}

	// Single use, also when raced.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { errs <- s.UseUserToken(ctx, tok.ID, now.Add(time.Minute)) })
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		if err == nil {
			ok++
		} else {
			WantCode(t, err, controlplane.ECONFLICT)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of 8 concurrent uses succeeded", ok)
	}
	if got, _, _ = s.FindUserTokenForAuth(ctx, tok.ID); got.UsedAt == nil {
		t.Fatal("used_at not set")
	}
	// Expired.
	old := mustUserToken(t, s, controlplane.TokenResetPassword, u.ID, "", now, time.Hour)
	WantCode(t, s.UseUserToken(ctx, old.ID, now.Add(time.Hour)), controlplane.ECONFLICT)
	WantCode(t, s.UseUserToken(ctx, "aaaaaaaaaaaaaaaa", now), controlplane.ECONFLICT)

	// The schema pairs purposes with tenants.
	id, _, h := secret.New("fpt")
	err = s.CreateUserToken(ctx, &controlplane.UserToken{ID: id, Purpose: controlplane.TokenResetPassword, UserID: u.ID, TenantID: a.ID,
		CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, h)
	WantCode(t, err, controlplane.EINVALID)
	err = s.CreateUserToken(ctx, &controlplane.UserToken{ID: id, Purpose: controlplane.TokenInvite, UserID: u.ID,
		CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, h)
	WantCode(t, err, controlplane.EINVALID)
	err = s.CreateUserToken(ctx, &controlplane.UserToken{ID: id, Purpose: "login", UserID: u.ID,
		CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, h)
	WantCode(t, err, controlplane.EINVALID)
	// An invitation needs the membership.
	b := MustTenant(t, s, "B")
	err = s.CreateUserToken(ctx, &controlplane.UserToken{ID: id, Purpose: controlplane.TokenInvite, UserID: u.ID, TenantID: b.ID,
		CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, h)
	WantCode(t, err, controlplane.ENOTFOUND)

	unused := mustUserToken(t, s, controlplane.TokenResetPassword, u.ID, "", now, 2*time.Hour)
	inv := mustUserToken(t, s, controlplane.TokenInvite, u.ID, a.ID, now, 2*time.Hour)
	if n, err := s.DeleteUserTokens(ctx, u.ID, controlplane.TokenResetPassword); n != 2 || err != nil { // unused and old
		t.Fatalf("DeleteUserTokens = %d, %v", n, err)
	}
	_, _, err = s.FindUserTokenForAuth(ctx, unused.ID)
	WantCode(t, err, controlplane.ENOTFOUND)
	if _, _, err := s.FindUserTokenForAuth(ctx, inv.ID); err != nil {
		t.Fatalf("an invitation went with the resets: %v", err)
	}
}

func TestCleanupSessions(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	a := MustTenant(t, s, "A")
	u := mustMember(t, s, a.ID, "u@a.example", controlplane.RoleOwner, false)
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

	expired, _ := mustSession(t, s, a.ID, u.ID, now.Add(-25*time.Hour)) // expires 24 h after creation
	idle, _ := mustSession(t, s, a.ID, u.ID, now.Add(-13*time.Hour))
	live, _ := mustSession(t, s, a.ID, u.ID, now.Add(-time.Hour))
	oldTok := mustUserToken(t, s, controlplane.TokenResetPassword, u.ID, "", now.Add(-2*time.Hour), time.Hour)
	newTok := mustUserToken(t, s, controlplane.TokenResetPassword, u.ID, "", now, time.Hour)

	n, err := s.CleanupSessions(ctx, now, now.Add(-12*time.Hour))
	if n != 3 || err != nil {
		t.Fatalf("CleanupSessions = %d, %v; want 3", n, err)
	}
	for _, id := range []string{expired.ID, idle.ID} {
		_, _, err := s.FindSessionForAuth(ctx, id)
		WantCode(t, err, controlplane.ENOTFOUND)
	}
	_, _, err = s.FindUserTokenForAuth(ctx, oldTok.ID)
	WantCode(t, err, controlplane.ENOTFOUND)
	if _, _, err := s.FindSessionForAuth(ctx, live.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.FindUserTokenForAuth(ctx, newTok.ID); err != nil {
		t.Fatal(err)
	}
	if n, err := s.CleanupSessions(ctx, now, now.Add(-12*time.Hour)); n != 0 || err != nil {
		t.Fatalf("second CleanupSessions = %d, %v", n, err)
	}
}

// TestMembershipAcceptance: a pending membership (an invitation) grants
// nothing: not in a user's memberships, not as an owner, no session;
// AcceptMembership changes that once, and voids its other invitation links.
func TestMembershipAcceptance(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()
	a, b := MustTenant(t, s, "A"), MustTenant(t, s, "B")
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	// A user with a password and an accepted membership in B, invited to
	// A as an owner.
	u := mustMember(t, s, b.ID, "u@b.example", controlplane.RoleMember, false)
	mustMember(t, s, a.ID, "owner@a.example", controlplane.RoleOwner, false)
	m := &controlplane.Membership{TenantID: a.ID, UserID: u.ID, Role: controlplane.RoleOwner}
	if err := s.CreatePendingMembership(ctx, m); err != nil || m.CreatedAt.IsZero() {
		t.Fatalf("CreatePendingMembership = %v, CreatedAt %v", err, m.CreatedAt)
	}
	WantCode(t, s.CreatePendingMembership(ctx, m), controlplane.ECONFLICT)
	WantCode(t, s.CreatePendingMembership(ctx, &controlplane.Membership{TenantID: a.ID, UserID: "nope", Role: controlplane.RoleAdmin}), controlplane.ENOTFOUND)

	if um, err := s.FindUserMemberships(ctx, u.ID); err != nil || len(um) != 1 || um[0].TenantID != b.ID {
		t.Fatalf("FindUserMemberships with a pending one = %+v, %v", um, err)
	}
	if n, err := s.CountOwners(ctx, a.ID); n != 1 || err != nil {
		t.Fatalf("CountOwners with a pending owner = %d, %v; want 1", n, err)
	}
	if om, err := s.FindOwnerMembershipByEmail(ctx, "u@b.example"); err == nil {
		t.Fatalf("FindOwnerMembershipByEmail found the pending owner membership %+v", om)
	}
	// No session in A: neither made, nor (when one exists) found.
	id, _, hash := secret.New("fps")
	err := s.CreateSession(ctx, &controlplane.Session{ID: id, UserID: u.ID, TenantID: a.ID, CSRF: "csrf-secret-0123456789",
		CreatedAt: now, LastSeenAt: now, ExpiresAt: now.Add(time.Hour)}, hash, "", "")
	WantCode(t, err, controlplane.ENOTFOUND)
	if _, err := pool.Exec(ctx, `
		INSERT INTO sessions (id, token_hash, user_id, tenant_id, csrf, created_at, last_seen_at, expires_at)
		VALUES ($1, $2, $3, $4, 'csrf-secret-0123456789', $5, $5, $6)`, id, hash, u.ID, a.ID, now, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.FindSessionForAuth(ctx, id)
	WantCode(t, err, controlplane.ENOTFOUND)

	// Accepting: once; the membership's other invitation links go, the
	// user's others stay.
	inv1 := mustUserToken(t, s, controlplane.TokenInvite, u.ID, a.ID, now, time.Hour)
	inv2 := mustUserToken(t, s, controlplane.TokenInvite, u.ID, a.ID, now, time.Hour)
	reset := mustUserToken(t, s, controlplane.TokenResetPassword, u.ID, "", now, time.Hour)
	if err := s.UseUserToken(ctx, inv1.ID, now); err != nil {
		t.Fatal(err)
	}
	if err := s.AcceptMembership(ctx, a.ID, u.ID, now); err != nil {
		t.Fatalf("AcceptMembership = %v", err)
	}
	WantCode(t, s.AcceptMembership(ctx, a.ID, u.ID, now), controlplane.ENOTFOUND)
	WantCode(t, s.AcceptMembership(ctx, b.ID, "not-a-uuid", now), controlplane.ENOTFOUND)
	_, _, err = s.FindUserTokenForAuth(ctx, inv2.ID)
	WantCode(t, err, controlplane.ENOTFOUND)
	for _, tok := range []*controlplane.UserToken{inv1, reset} {
		if _, _, err := s.FindUserTokenForAuth(ctx, tok.ID); err != nil {
			t.Fatalf("token %s after accepting: %v", tok.Purpose, err)
		}
	}
	mem, err := s.FindMember(ctx, a.ID, u.ID)
	if err != nil || mem.Pending || mem.AcceptedAt == nil || !mem.AcceptedAt.Equal(now) {
		t.Fatalf("FindMember after accepting = %+v, %v", mem, err)
	}
	if _, _, err := s.FindSessionForAuth(ctx, id); err != nil {
		t.Fatalf("FindSessionForAuth after accepting: %v", err)
	}
	if n, err := s.CountOwners(ctx, a.ID); n != 2 || err != nil {
		t.Fatalf("CountOwners after accepting = %d, %v; want 2", n, err)
	}
	if um, err := s.FindUserMemberships(ctx, u.ID); err != nil || len(um) != 2 {
		t.Fatalf("FindUserMemberships after accepting = %+v, %v", um, err)
	}
	if om, err := s.FindOwnerMembershipByEmail(ctx, "u@b.example"); err != nil || om.TenantID != a.ID {
		t.Fatalf("FindOwnerMembershipByEmail after accepting = %+v, %v", om, err)
	}
	// The role change keeps the acceptance.
	if mem, err := s.UpdateMemberRole(ctx, a.ID, u.ID, controlplane.RoleAdmin); err != nil || mem.Pending {
		t.Fatalf("UpdateMemberRole = %+v, %v", mem, err)
	}
}

// TestMigrationMembershipAcceptance: 000011 accepts the memberships that
// existed, since their creation, except invitations that were pending
// under the old rule (an invited user without a password).
func TestMigrationMembershipAcceptance(t *testing.T) {
	t.Parallel()
	url := pgtest.NewURL(t)
	if err := postgres.MigrateDown(url, 1); err != nil { // to 000010
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	created := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	var tenant string
	if err := conn.QueryRow(ctx, `INSERT INTO tenants (name, plan) VALUES ('Acme', 'free') RETURNING id`).Scan(&tenant); err != nil {
		t.Fatal(err)
	}
	users := map[string]string{}
	for _, u := range []struct {
		email string
		pw    *string
	}{
		{"owner@acme.example", new("$argon2id$x")}, // a signup's owner
		{"added@acme.example", new("$argon2id$x")}, // an existing user added at once
		{"pending@acme.example", nil},              // invited, never set a password
		{"operator@acme.example", nil},             // an operator's tenant creation, no password yet
	} {
		var id string
		if err := conn.QueryRow(ctx, `INSERT INTO users (email, password_hash) VALUES ($1, $2) RETURNING id`, u.email, u.pw).Scan(&id); err != nil {
			t.Fatal(err)
		}
		users[u.email] = id
		if _, err := conn.Exec(ctx, `INSERT INTO memberships (tenant_id, user_id, role, created_at) VALUES ($1, $2, 'member', $3)`,
			tenant, id, created); err != nil {
			t.Fatal(err)
		}
	}
	for _, invited := range []string{"added@acme.example", "pending@acme.example"} {
		if _, err := conn.Exec(ctx, `
			INSERT INTO audit_events (tenant_id, actor_type, actor_id, action, target_type, target_id)
			VALUES ($1, 'user', 'x', 'member.invite', 'user', $2)`, tenant, users[invited]); err != nil {
			t.Fatal(err)
		}
	}
	if err := postgres.MigrateUp(url); err != nil {
		t.Fatal(err)
	}
	for email, want := range map[string]*time.Time{
		"owner@acme.example": &created, "added@acme.example": &created, "pending@acme.example": nil, "operator@acme.example": &created,
	} {
		var got *time.Time
		if err := conn.QueryRow(ctx, `SELECT accepted_at FROM memberships WHERE user_id = $1`, users[email]).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if (got == nil) != (want == nil) || (got != nil && !got.Equal(*want)) {
			t.Errorf("%s: accepted_at = %v, want %v", email, got, want)
		}
	}
}
