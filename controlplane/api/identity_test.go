package api_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/fleetplane/fleetplane/controlplane/api"
)

// --- fixtures of the identity layer ---

// userKey is a user nkey as the agent (or a grant holder) makes it: the
// seed stays here, only pub is sent.
type userKey struct {
	pub string
	kp  nkeys.KeyPair
}

func newUserKey(tb testing.TB) userKey {
	tb.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		tb.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		tb.Fatal(err)
	}
	return userKey{pub: pub, kp: kp}
}

// sign signs the nonce's bytes and encodes the signature as the API wants.
func (k userKey) sign(tb testing.TB, nonce string) string {
	tb.Helper()
	sig, err := k.kp.Sign([]byte(nonce))
	if err != nil {
		tb.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(sig)
}

func (k userKey) seed(tb testing.TB) string {
	tb.Helper()
	s, err := k.kp.Seed()
	if err != nil {
		tb.Fatal(err)
	}
	return string(s)
}

// wrongKeys are values that are not a user public key: other kinds of
// public keys and a seed.
func wrongKeys(tb testing.TB) map[string]string {
	tb.Helper()
	pub := func(create func() (nkeys.KeyPair, error)) string {
		kp, err := create()
		if err != nil {
			tb.Fatal(err)
		}
		p, _ := kp.PublicKey()
		return p
	}
	return map[string]string{
		"account key":  pub(nkeys.CreateAccount),
		"operator key": pub(nkeys.CreateOperator),
		"server key":   pub(nkeys.CreateServer),
		"user seed":    newUserKey(tb).seed(tb),
		"lower case":   strings.ToLower(newUserKey(tb).pub),
		"truncated":    newUserKey(tb).pub[:55],
		"bad checksum": newUserKey(tb).pub[:54] + "AA",
		"empty":        "",
		"garbage":      "not-a-key",
	}
}

func tokenIn(maxUses int) api.EnrollmentTokenCreate {
	return api.EnrollmentTokenCreate{ExpiresAt: time.Now().Add(time.Hour), MaxUses: &maxUses}
}

func (e *env) createToken(key, fleet string, in api.EnrollmentTokenCreate) api.EnrollmentTokenCreated {
	e.tb.Helper()
	var t api.EnrollmentTokenCreated
	e.do("POST", "/v1/fleets/"+fleet+"/enrollment-tokens", key, in).must(e.tb, http.StatusCreated, &t)
	return t
}

// enroll sends POST /v1/enroll; vehicleID "" leaves it to the token or server.
func (e *env) enroll(token string, k userKey, vehicleID string, opts ...reqOpt) *response {
	e.tb.Helper()
	in := api.EnrollRequest{Token: token, PublicKey: k.pub}
	if vehicleID != "" {
		in.VehicleId = &vehicleID
	}
	return e.do("POST", "/v1/enroll", "", in, opts...)
}

// mustEnroll enrolls k with a fresh single-use token of fleet.
// mustEnroll enrolls with a token made for vehicleID (when set): the way to
// (re-)enroll a vehicle that holds or held credentials.
func (e *env) mustEnroll(key, fleet string, k userKey, vehicleID string) api.VehicleCredentials {
	e.tb.Helper()
	in := tokenIn(1)
	if vehicleID != "" {
		in.VehicleId = &vehicleID
	}
	t := e.createToken(key, fleet, in)
	var c api.VehicleCredentials
	e.enroll(t.Token, k, vehicleID).must(e.tb, http.StatusCreated, &c)
	return c
}

func userClaims(tb testing.TB, token string) *jwt.UserClaims {
	tb.Helper()
	uc, err := jwt.DecodeUserClaims(token)
	if err != nil {
		tb.Fatalf("decoding JWT: %v", err)
	}
	return uc
}

var (
	tokenRe    = regexp.MustCompile(`^fpe_([a-z2-7]{16})_[a-z2-7]{52}$`)
	genVehicle = regexp.MustCompile(`^veh-[a-z2-7]{10}$`)
	grantIDRe  = regexp.MustCompile(`^[a-z2-7]{16}$`)
)

// --- enrollment tokens ---

func TestEnrollmentTokens(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *api.Options) { o.PublicURL = "https://fleetplane.example.com/" })
	a := e.signup("Token Co")
	member := e.createKey(a.key, "member", api.KeyRoleMember)
	e.createFleet(a.key, "alpha")

	exp := time.Now().Add(24 * time.Hour).UTC()
	r := e.do("POST", "/v1/fleets/alpha/enrollment-tokens", member.Secret, api.EnrollmentTokenCreate{
		Description: ptr("line 3 retrofit"), ExpiresAt: exp, MaxUses: ptr(5),
		SourceCidrs: &[]string{"2001:db8::/48", "203.0.113.7", "198.51.100.77/24"},
	})
	var tok api.EnrollmentTokenCreated
	r.must(t, http.StatusCreated, &tok)
	m := tokenRe.FindStringSubmatch(tok.Token)
	if m == nil || m[1] != tok.Id {
		t.Fatalf("token %q for id %q", tok.Token, tok.Id)
	}
	if loc := r.header.Get("Location"); loc != "/v1/fleets/alpha/enrollment-tokens/"+tok.Id {
		t.Errorf("Location %q", loc)
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("a response with a secret must not be cached: Cache-Control %q", cc)
	}
	if want := "curl -fsSL https://fleetplane.example.com/install.sh | sudo sh -s -- --token " + tok.Token; tok.InstallCommand != want {
		t.Errorf("install_command %q, want %q", tok.InstallCommand, want)
	}
	if tok.Fleet != "alpha" || tok.Status != api.EnrollmentTokenStatusActive || tok.MaxUses != 5 || tok.Uses != 0 ||
		tok.Description != "line 3 retrofit" || tok.VehicleId != nil || tok.LastUsedAt != nil || tok.RevokedAt != nil ||
		tok.CreatedBy != "api_key:"+member.Id || !tok.ExpiresAt.Equal(exp.Round(time.Microsecond)) {
		t.Errorf("created %+v", tok)
	}
	// Networks come back canonical and sorted; a bare address is a /32.
	if got := strings.Join(tok.SourceCidrs, " "); got != "198.51.100.0/24 2001:db8::/48 203.0.113.7/32" {
		t.Errorf("source_cidrs %q", got)
	}

	var got api.EnrollmentToken
	g := e.do("GET", "/v1/fleets/alpha/enrollment-tokens/"+tok.Id, member.Secret, nil).must(t, 200, &got)
	if got.Id != tok.Id || got.Status != api.EnrollmentTokenStatusActive || !got.CreatedAt.Equal(tok.CreatedAt) {
		t.Errorf("GET %+v", got)
	}
	_, secretPart, _ := strings.Cut(strings.TrimPrefix(tok.Token, "fpe_"), "_")
	if strings.Contains(string(g.body), secretPart) || strings.Contains(string(g.body), `"token"`) {
		t.Fatalf("GET shows the secret: %s", g.body)
	}

	// Newest first, three pages of two.
	ids := []string{tok.Id}
	for range 5 {
		ids = append(ids, e.createToken(a.key, "alpha", tokenIn(1)).Id)
	}
	slices.Reverse(ids)
	paged := walkPages(t, e, "/v1/fleets/alpha/enrollment-tokens?limit=2", a.key, func(r *response) ([]string, *string) {
		var l api.EnrollmentTokenList
		r.must(t, 200, &l)
		var out []string
		for _, it := range l.Items {
			out = append(out, it.Id)
		}
		if strings.Contains(string(r.body), secretPart) {
			t.Fatalf("a list shows a secret: %s", r.body)
		}
		return out, l.NextCursor
	})
	if !slices.Equal(paged, ids) {
		t.Errorf("pages %v, want %v", paged, ids)
	}

	// Revoked: gone from the default list, shown with include_inactive
	// and by GET; a second revoke is a 404.
	e.do("DELETE", "/v1/fleets/alpha/enrollment-tokens/"+ids[0], member.Secret, nil).must(t, http.StatusNoContent, nil)
	e.do("DELETE", "/v1/fleets/alpha/enrollment-tokens/"+ids[0], member.Secret, nil).problem(t, http.StatusNotFound)
	var l api.EnrollmentTokenList
	e.do("GET", "/v1/fleets/alpha/enrollment-tokens", a.key, nil).must(t, 200, &l)
	if len(l.Items) != 5 || l.Items[0].Id != ids[1] {
		t.Errorf("after revoke: %d items, first %s", len(l.Items), l.Items[0].Id)
	}
	e.do("GET", "/v1/fleets/alpha/enrollment-tokens?include_inactive=true", a.key, nil).must(t, 200, &l)
	if len(l.Items) != 6 || l.Items[0].Id != ids[0] || l.Items[0].Status != api.EnrollmentTokenStatusRevoked || l.Items[0].RevokedAt == nil {
		t.Errorf("include_inactive: %+v", l.Items[0])
	}
	e.do("GET", "/v1/fleets/alpha/enrollment-tokens/"+ids[0], a.key, nil).must(t, 200, &got)
	if got.Status != api.EnrollmentTokenStatusRevoked {
		t.Errorf("revoked token: %+v", got)
	}
	// Its secret no longer enrolls.
	var rev api.EnrollmentTokenCreated
	e.do("POST", "/v1/fleets/alpha/enrollment-tokens", a.key, tokenIn(1)).must(t, 201, &rev)
	e.do("DELETE", "/v1/fleets/alpha/enrollment-tokens/"+rev.Id, a.key, nil).must(t, 204, nil)
	e.enroll(rev.Token, newUserKey(t), "").problem(t, http.StatusUnauthorized)

	// Used up: exhausted, and out of the default list.
	used := e.createToken(a.key, "alpha", tokenIn(1))
	e.enroll(used.Token, newUserKey(t), "").must(t, http.StatusCreated, nil)
	e.do("GET", "/v1/fleets/alpha/enrollment-tokens/"+used.Id, a.key, nil).must(t, 200, &got)
	if got.Status != api.EnrollmentTokenStatusExhausted || got.Uses != 1 || got.LastUsedAt == nil {
		t.Errorf("used token: %+v", got)
	}
	e.do("GET", "/v1/fleets/alpha/enrollment-tokens?limit=500", a.key, nil).must(t, 200, &l)
	for _, it := range l.Items {
		if it.Id == used.Id || it.Status != api.EnrollmentTokenStatusActive {
			t.Errorf("default list has inactive token %+v", it)
		}
	}

	// Audited, without the secret.
	var audit api.AuditEventList
	ar := e.do("GET", "/v1/audit-events?target_type=enrollment_token&target_id="+ids[0], a.key, nil).must(t, 200, &audit)
	var actions []string
	for _, ev := range audit.Items {
		actions = append(actions, ev.Action)
	}
	if strings.Join(actions, " ") != "enrollment_token.revoke enrollment_token.create" {
		t.Errorf("audit %v", actions)
	}
	if strings.Contains(string(ar.body), "fpe_") {
		t.Errorf("the audit log shows a token: %s", ar.body)
	}
}

// A token is shown once: the replay of its creation answers 409 naming
// it, and the secret is stored nowhere.
func TestEnrollmentTokenIdempotency(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Replay Co")
	e.createFleet(a.key, "alpha")
	body := fmt.Sprintf(`{"expires_at":%q,"max_uses":3}`, time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	key := withHeader("Idempotency-Key", "token-1")
	var tok api.EnrollmentTokenCreated
	e.do("POST", "/v1/fleets/alpha/enrollment-tokens", a.key, body, key).must(t, http.StatusCreated, &tok)
	r := e.do("POST", "/v1/fleets/alpha/enrollment-tokens", a.key, body, key)
	p := r.problem(t, http.StatusConflict)
	_, secretPart, _ := strings.Cut(strings.TrimPrefix(tok.Token, "fpe_"), "_")
	if r.header.Get("Idempotent-Replayed") != "true" || !strings.Contains(p.Detail, tok.Id) ||
		!strings.Contains(p.Detail, "DELETE /v1/fleets/alpha/enrollment-tokens/"+tok.Id) || strings.Contains(string(r.body), secretPart) {
		t.Errorf("replay: %s", r.body)
	}
	var l api.EnrollmentTokenList
	e.do("GET", "/v1/fleets/alpha/enrollment-tokens", a.key, nil).must(t, 200, &l)
	if len(l.Items) != 1 {
		t.Errorf("%d tokens after a replay, want 1", len(l.Items))
	}
	var n int
	if err := e.pool.QueryRow(t.Context(),
		`SELECT count(*) FROM idempotency_keys WHERE position($1::bytea in coalesce(body, '')) > 0`, []byte(secretPart)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Error("an enrollment token is stored in idempotency_keys")
	}
}

// --- enrollment ---

func TestEnroll(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Enroll Co")
	e.createFleet(a.key, "alpha")
	tok := e.createToken(a.key, "alpha", tokenIn(3))
	if want := "curl -fsSL " + e.srv.URL + "/install.sh | sudo sh -s -- --token " + tok.Token; tok.InstallCommand != want {
		t.Errorf("install_command without PublicURL: %q, want %q", tok.InstallCommand, want)
	}

	// 1: the server picks the vehicle ID.
	k1 := newUserKey(t)
	start := time.Now()
	r := e.do("POST", "/v1/enroll", "", api.EnrollRequest{Token: tok.Token, PublicKey: k1.pub,
		Hostname: ptr("jetson-01"), Arch: ptr("arm64"), AgentVersion: ptr("0.1.0")})
	var c api.VehicleCredentials
	r.must(t, http.StatusCreated, &c)
	if r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q", r.header.Get("Cache-Control"))
	}
	v := c.Vehicle
	vid := v.VehicleId
	if !genVehicle.MatchString(vid) || v.Fleet != "alpha" || v.Status != api.VehicleStatusActive ||
		deref(v.UserPublicKey) != k1.pub || deref(v.Hostname) != "jetson-01" || deref(v.Arch) != "arm64" ||
		deref(v.AgentVersion) != "0.1.0" || v.EnrolledAt == nil || v.CredentialsExpireAt == nil ||
		!v.CredentialsExpireAt.Equal(c.ExpiresAt) || v.Revocation != nil {
		t.Errorf("vehicle %+v", v)
	}
	uc := userClaims(t, c.Jwt)
	if uc.Subject != k1.pub || uc.Name != vid || uc.IssuerAccount != c.Account || uc.Expires != c.ExpiresAt.Unix() {
		t.Errorf("JWT claims: sub %s name %s issuer_account %s exp %d; response %+v", uc.Subject, uc.Name, uc.IssuerAccount, uc.Expires, c)
	}
	if !slices.Contains(uc.AllowedConnectionTypes, "LEAFNODE") && len(uc.AllowedConnectionTypes) != 0 {
		t.Errorf("allowed connection types %v", uc.AllowedConnectionTypes)
	}
	if d := c.ExpiresAt.Sub(start); d < 7*24*time.Hour-time.Minute || d > 7*24*time.Hour+time.Minute {
		t.Errorf("expires_at %v is not 7 days ahead", c.ExpiresAt)
	}
	if !c.RenewAfter.After(start.Add(-time.Second)) || !c.RenewAfter.Before(c.ExpiresAt) {
		t.Errorf("renew_after %v", c.RenewAfter)
	}
	eu := testRegions[0]
	if c.Region != "europe" || !slices.Equal(c.LeafUrls, eu.LeafURLs) || deref(c.CaBundle) != eu.CABundle ||
		c.SubjectPrefix != "fleet.prod.veh."+vid || c.IngestSubject != "ingest.prod."+vid ||
		c.InboxPrefix != "_INBOX.veh."+vid || !strings.HasSuffix(c.JetstreamDomain, "-"+vid) {
		t.Errorf("credentials %+v", c)
	}

	// 2: the vehicle names itself; 3: a pre-registered vehicle takes its key.
	k2 := newUserKey(t)
	e.enroll(tok.Token, k2, "drone-7").must(t, http.StatusCreated, &c)
	if c.Vehicle.VehicleId != "drone-7" || c.Vehicle.Hostname != nil {
		t.Errorf("named vehicle %+v", c.Vehicle)
	}
	e.createVehicle(a.key, "alpha", "pre-1", map[string]string{"zone": "north"})
	k3 := newUserKey(t)
	e.enroll(tok.Token, k3, "pre-1").must(t, http.StatusCreated, &c)
	if c.Vehicle.Status != api.VehicleStatusActive || c.Vehicle.Labels["zone"] != "north" || deref(c.Vehicle.UserPublicKey) != k3.pub {
		t.Errorf("pre-registered vehicle %+v", c.Vehicle)
	}
	// 4: used up.
	e.enroll(tok.Token, newUserKey(t), "").problem(t, http.StatusUnauthorized)
	var got api.EnrollmentToken
	e.do("GET", "/v1/fleets/alpha/enrollment-tokens/"+tok.Id, a.key, nil).must(t, 200, &got)
	if got.Uses != 3 || got.Status != api.EnrollmentTokenStatusExhausted {
		t.Errorf("token after 3 uses: %+v", got)
	}
	var gv api.Vehicle
	e.do("GET", "/v1/fleets/alpha/vehicles/"+vid, a.key, nil).must(t, 200, &gv)
	if deref(gv.UserPublicKey) != k1.pub || deref(gv.Hostname) != "jetson-01" || gv.Status != api.VehicleStatusActive {
		t.Errorf("GET enrolled vehicle %+v", gv)
	}

	// The enrollment is audited as the token's doing.
	var audit api.AuditEventList
	e.do("GET", "/v1/audit-events?action=vehicle.enroll", a.key, nil).must(t, 200, &audit)
	if len(audit.Items) != 3 || audit.Items[0].ActorType != api.ActorTypeEnrollmentToken || audit.Items[0].ActorId != tok.Id ||
		audit.Items[0].TargetId != "pre-1" || audit.Items[0].SourceIp != "127.0.0.1" {
		t.Errorf("audit %+v", audit.Items)
	}

	// A token bound to a vehicle ID enrolls that vehicle only.
	pinned := e.createToken(a.key, "alpha", api.EnrollmentTokenCreate{ExpiresAt: time.Now().Add(time.Hour), VehicleId: ptr("pinned-1")})
	if deref(pinned.VehicleId) != "pinned-1" {
		t.Errorf("pinned token %+v", pinned)
	}
	p := e.enroll(pinned.Token, newUserKey(t), "other").problem(t, http.StatusBadRequest)
	if !strings.HasPrefix(p.Detail, "vehicle_id: ") {
		t.Errorf("another vehicle with a pinned token: %+v", p)
	}
	e.enroll(pinned.Token, newUserKey(t), "").must(t, http.StatusCreated, &c)
	if c.Vehicle.VehicleId != "pinned-1" {
		t.Errorf("pinned token enrolled %q", c.Vehicle.VehicleId)
	}

	// A fleet-wide token cannot take an enrolled vehicle over.
	e.enroll(e.createToken(a.key, "alpha", tokenIn(1)).Token, newUserKey(t), "drone-7").problem(t, http.StatusConflict)
	// Re-enrolling a vehicle with a fresh key (and a token made for it)
	// revokes the old key.
	k4 := newUserKey(t)
	e.mustEnroll(a.key, "alpha", k4, "drone-7")
	e.do("GET", "/v1/fleets/alpha/vehicles/drone-7", a.key, nil).must(t, 200, &gv)
	if deref(gv.UserPublicKey) != k4.pub || gv.Status != api.VehicleStatusActive {
		t.Errorf("re-enrolled vehicle %+v", gv)
	}
	// The replaced key can neither renew nor enroll again.
	e.do("POST", "/v1/agent/nonce", "", api.AgentNonceRequest{PublicKey: k2.pub}).problem(t, http.StatusUnauthorized)
	p = e.enroll(e.createToken(a.key, "alpha", tokenIn(1)).Token, k2, "drone-8").problem(t, http.StatusBadRequest)
	if !strings.Contains(p.Detail, "revoked") {
		t.Errorf("enrolling a revoked key: %+v", p)
	}
}

// Every token problem gets the very same answer: the endpoint tells
// nothing about which tokens exist or why one failed.
func TestEnrollNoOracle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Oracle Co")
	e.createFleet(a.key, "alpha")
	expiring := e.createToken(a.key, "alpha", api.EnrollmentTokenCreate{ExpiresAt: time.Now().Add(time.Second), MaxUses: ptr(1)})
	revoked := e.createToken(a.key, "alpha", tokenIn(1))
	e.do("DELETE", "/v1/fleets/alpha/enrollment-tokens/"+revoked.Id, a.key, nil).must(t, 204, nil)
	used := e.createToken(a.key, "alpha", tokenIn(1))
	e.enroll(used.Token, newUserKey(t), "").must(t, 201, nil)
	elsewhere := e.createToken(a.key, "alpha", api.EnrollmentTokenCreate{ExpiresAt: time.Now().Add(time.Hour), SourceCidrs: &[]string{"203.0.113.0/24"}})
	good := e.createToken(a.key, "alpha", tokenIn(1))
	_, other, _ := strings.Cut(strings.TrimPrefix(e.createToken(a.key, "alpha", tokenIn(1)).Token, "fpe_"), "_")
	_, otherSecret, _ := strings.Cut(other, "_")
	time.Sleep(time.Until(expiring.ExpiresAt) + 20*time.Millisecond)

	tokens := map[string]string{
		"unknown":        "fpe_aaaaaaaaaaaaaaaa_" + strings.Repeat("a", 52),
		"wrong secret":   "fpe_" + good.Id + "_" + otherSecret,
		"malformed":      "fpe_nope",
		"api key":        a.key,
		"upper case":     strings.ToUpper(good.Token),
		"expired":        expiring.Token,
		"revoked":        revoked.Token,
		"used up":        used.Token,
		"wrong network":  elsewhere.Token,
		"trailing space": good.Token + " ",
	}
	var first *response
	var firstName string
	for name, tok := range tokens {
		r := e.enroll(tok, newUserKey(t), "", withHeader("X-Request-ID", "probe"))
		r.problem(t, http.StatusUnauthorized)
		if first == nil {
			first, firstName = r, name
			continue
		}
		if !bytes.Equal(r.body, first.body) || r.header.Get("WWW-Authenticate") != first.header.Get("WWW-Authenticate") {
			t.Errorf("%s answers\n%s\n%s answers\n%s", name, r.body, firstName, first.body)
		}
	}
	// The good token still works: no failure above consumed it.
	e.enroll(good.Token, newUserKey(t), "").must(t, http.StatusCreated, nil)
}

// Ten vehicles race for one single-use token: exactly one wins.
func TestEnrollSingleUseConcurrently(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Race Enroll Co")
	e.createFleet(a.key, "alpha")
	tok := e.createToken(a.key, "alpha", tokenIn(1))
	generic := e.enroll("fpe_aaaaaaaaaaaaaaaa_"+strings.Repeat("a", 52), newUserKey(t), "").problem(t, 401).Detail

	const n = 10
	keys := make([]userKey, n)
	for i := range keys {
		keys[i] = newUserKey(t)
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		statuses = map[int]int{}
		details  = map[string]int{}
	)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			r := e.enroll(tok.Token, keys[i], "")
			mu.Lock()
			defer mu.Unlock()
			statuses[r.status]++
			if r.status != http.StatusCreated {
				var p api.Problem
				_ = json.Unmarshal(r.body, &p)
				details[p.Detail]++
			}
		})
	}
	close(start)
	wg.Wait()
	if statuses[http.StatusCreated] != 1 || statuses[http.StatusUnauthorized] != n-1 {
		t.Errorf("statuses %v, want one 201 and %d 401s", statuses, n-1)
	}
	if len(details) != 1 || details[generic] != n-1 {
		t.Errorf("401 details %v, want only %q", details, generic)
	}
	var l api.VehicleList
	e.do("GET", "/v1/fleets/alpha/vehicles", a.key, nil).must(t, 200, &l)
	if len(l.Items) != 1 {
		t.Errorf("%d vehicles, want 1", len(l.Items))
	}
	var got api.EnrollmentToken
	e.do("GET", "/v1/fleets/alpha/enrollment-tokens/"+tok.Id, a.key, nil).must(t, 200, &got)
	if got.Uses != 1 {
		t.Errorf("uses %d", got.Uses)
	}
}

// The enrollment routes share one budget per address: the 429 is a
// problem with Retry-After, and other routes are not limited by it.
func TestEnrollRateLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *api.Options) { o.EnrollRatePerMinute = 2; o.TrustProxyHeaders = true })
	from := func(ip string) reqOpt { return withHeader("X-Real-IP", ip) }
	bad := "fpe_aaaaaaaaaaaaaaaa_" + strings.Repeat("a", 52)
	k := newUserKey(t)

	e.enroll(bad, k, "", from("2001:db8::1")).problem(t, http.StatusUnauthorized)
	e.do("POST", "/v1/agent/nonce", "", api.AgentNonceRequest{PublicKey: k.pub}, from("2001:db8::2")).problem(t, http.StatusUnauthorized)
	for _, r := range []*response{
		e.enroll(bad, k, "", from("2001:db8::3")),
		e.do("POST", "/v1/agent/renew", "", api.RenewRequest{PublicKey: k.pub, Nonce: "x", Signature: "eA"}, from("2001:db8::4")),
		e.do("POST", "/v1/agent/nonce", "", api.AgentNonceRequest{PublicKey: k.pub}, from("2001:db8::ffff:1")),
	} {
		p := r.problem(t, http.StatusTooManyRequests)
		if p.Code != api.ProblemCodeRateLimited || r.header.Get("Retry-After") == "" || !strings.Contains(p.Detail, "enrollment") {
			t.Errorf("rate limited: %+v, Retry-After %q", p, r.header.Get("Retry-After"))
		}
	}
	// Another /64 has its own budget; other routes are not limited.
	e.enroll(bad, k, "", from("2001:db8:0:1::1")).problem(t, http.StatusUnauthorized)
	a := e.signup("Limited Co")
	e.do("GET", "/v1/tenant", a.key, nil, from("2001:db8::1")).must(t, 200, nil)
}

// --- renewal ---

func TestAgentRenew(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Renew Co")
	e.createFleet(a.key, "alpha")
	k := newUserKey(t)
	first := e.mustEnroll(a.key, "alpha", k, "drone-1")

	nonce := func(k userKey) api.AgentNonce {
		t.Helper()
		var n api.AgentNonce
		r := e.do("POST", "/v1/agent/nonce", "", api.AgentNonceRequest{PublicKey: k.pub}).must(t, http.StatusCreated, &n)
		if n.Nonce == "" || !n.ExpiresAt.After(time.Now()) || n.ExpiresAt.After(time.Now().Add(10*time.Minute)) ||
			r.header.Get("Cache-Control") != "no-store" {
			t.Fatalf("nonce %+v", n)
		}
		return n
	}
	renew := func(k userKey, nonce, sig string) *response {
		t.Helper()
		return e.do("POST", "/v1/agent/renew", "", api.RenewRequest{PublicKey: k.pub, Nonce: nonce, Signature: sig})
	}

	time.Sleep(1100 * time.Millisecond) // a later second: a later exp
	n := nonce(k)
	var c api.VehicleCredentials
	r := renew(k, n.Nonce, k.sign(t, n.Nonce)).must(t, http.StatusOK, &c)
	if r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q", r.header.Get("Cache-Control"))
	}
	uc := userClaims(t, c.Jwt)
	if uc.Subject != k.pub || uc.Name != "drone-1" || c.Vehicle.VehicleId != "drone-1" || c.Vehicle.Fleet != "alpha" ||
		!c.ExpiresAt.After(first.ExpiresAt) || c.SubjectPrefix != first.SubjectPrefix || c.Account != first.Account {
		t.Errorf("renewed %+v (first %+v)", c, first)
	}

	// A nonce is single-use.
	p := renew(k, n.Nonce, k.sign(t, n.Nonce)).problem(t, http.StatusUnauthorized)
	if !strings.Contains(p.Detail, "nonce") {
		t.Errorf("reused nonce: %+v", p)
	}
	// Signed by another key: refused (and the nonce is spent).
	n = nonce(k)
	other := newUserKey(t)
	renew(k, n.Nonce, other.sign(t, n.Nonce)).problem(t, http.StatusUnauthorized)
	renew(k, n.Nonce, k.sign(t, n.Nonce)).problem(t, http.StatusUnauthorized)
	// A nonce is bound to the key it was issued for.
	e.mustEnroll(a.key, "alpha", other, "drone-2")
	n = nonce(k)
	renew(other, n.Nonce, other.sign(t, n.Nonce)).problem(t, http.StatusUnauthorized)
	// Padded base64url is accepted too.
	n = nonce(k)
	sig, _ := k.kp.Sign([]byte(n.Nonce))
	renew(k, n.Nonce, base64.URLEncoding.EncodeToString(sig)).must(t, http.StatusOK, nil)

	// A key no vehicle holds gets no nonce.
	e.do("POST", "/v1/agent/nonce", "", api.AgentNonceRequest{PublicKey: newUserKey(t).pub}).problem(t, http.StatusUnauthorized)

	// Renewals are audited as the vehicle's doing.
	var audit api.AuditEventList
	e.do("GET", "/v1/audit-events?action=vehicle.renew", a.key, nil).must(t, 200, &audit)
	if len(audit.Items) != 2 || audit.Items[0].ActorType != api.ActorTypeVehicle || audit.Items[0].ActorId != "drone-1" {
		t.Errorf("audit %+v", audit.Items)
	}

	// A disabled vehicle gets no nonce.
	e.do("PATCH", "/v1/fleets/alpha/vehicles/drone-1", a.key, api.VehicleUpdate{Disabled: ptr(true)}).must(t, 200, nil)
	e.do("POST", "/v1/agent/nonce", "", api.AgentNonceRequest{PublicKey: k.pub}).problem(t, http.StatusUnauthorized)
}

// --- vehicle credentials and revocation ---

func TestVehicleCredentialsAndRevoke(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Revoke Co")
	member := e.createKey(a.key, "member", api.KeyRoleMember).Secret
	e.createFleet(a.key, "alpha")
	e.createVehicle(a.key, "alpha", "v1", nil)

	k1 := newUserKey(t)
	var c api.VehicleCredentials
	r := e.do("POST", "/v1/fleets/alpha/vehicles/v1/credentials", member, api.VehicleCredentialsRequest{PublicKey: k1.pub}).
		must(t, http.StatusCreated, &c)
	if r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q", r.header.Get("Cache-Control"))
	}
	if c.Vehicle.VehicleId != "v1" || c.Vehicle.Fleet != "alpha" || c.Vehicle.Status != api.VehicleStatusActive ||
		deref(c.Vehicle.UserPublicKey) != k1.pub || userClaims(t, c.Jwt).Subject != k1.pub || c.SubjectPrefix != "fleet.prod.veh.v1" {
		t.Errorf("credentials %+v", c)
	}
	// A new key replaces (and revokes) the old one.
	k2 := newUserKey(t)
	e.do("POST", "/v1/fleets/alpha/vehicles/v1/credentials", member, api.VehicleCredentialsRequest{PublicKey: k2.pub}).
		must(t, http.StatusCreated, &c)
	p := e.do("POST", "/v1/fleets/alpha/vehicles/v1/credentials", member, api.VehicleCredentialsRequest{PublicKey: k1.pub}).
		problem(t, http.StatusBadRequest)
	if !strings.Contains(p.Detail, "revoked") {
		t.Errorf("a revoked key again: %+v", p)
	}

	// Revoke: proven at once (no hubs to ask), the vehicle is revoked and
	// shows the revocation; revoking again returns the same one.
	before := time.Now().Add(-time.Second)
	var rev api.Revocation
	e.do("POST", "/v1/fleets/alpha/vehicles/v1/revoke", member, nil).must(t, http.StatusOK, &rev)
	if rev.Id < 1 || rev.Kind != api.RevocationKindVehicle || rev.TargetId != "v1" || rev.UserPublicKey != k2.pub ||
		rev.Status != api.RevocationStatusProven || rev.CompletedAt == nil || rev.RequestedAt.Before(before) ||
		len(rev.Nodes) != 0 || len(rev.Connections) != 0 || rev.ConnectionsRemaining != 0 || rev.Attempts != 1 ||
		rev.LastError != nil || rev.LatencyMs < 0 || rev.AccountVersion < 2 {
		t.Errorf("revocation %+v", rev)
	}
	var v api.Vehicle
	e.do("GET", "/v1/fleets/alpha/vehicles/v1", a.key, nil).must(t, 200, &v)
	if v.Status != api.VehicleStatusRevoked || v.Revocation == nil || v.Revocation.Id != rev.Id {
		t.Errorf("revoked vehicle %+v", v)
	}
	var again api.Revocation
	e.do("POST", "/v1/fleets/alpha/vehicles/v1/revoke", a.key, "{}").must(t, http.StatusOK, &again)
	if again.Id != rev.Id {
		t.Errorf("second revoke made revocation %d, want %d", again.Id, rev.Id)
	}
	// The revoked key can no longer renew; the vehicle stays revoked
	// until it enrolls with a fresh key.
	e.do("POST", "/v1/agent/nonce", "", api.AgentNonceRequest{PublicKey: k2.pub}).problem(t, http.StatusUnauthorized)
	e.do("PATCH", "/v1/fleets/alpha/vehicles/v1", a.key, api.VehicleUpdate{Disabled: ptr(false)}).problem(t, http.StatusConflict)
	k3 := newUserKey(t)
	c = e.mustEnroll(a.key, "alpha", k3, "v1")
	if c.Vehicle.Status != api.VehicleStatusActive || deref(c.Vehicle.UserPublicKey) != k3.pub {
		t.Errorf("re-enrolled %+v", c.Vehicle)
	}

	var audit api.AuditEventList
	e.do("GET", "/v1/audit-events?action=vehicle.revoke", a.key, nil).must(t, 200, &audit)
	if len(audit.Items) != 1 || audit.Items[0].TargetId != "v1" {
		t.Errorf("audit %+v", audit.Items)
	}
}

// --- grants ---

func TestGrants(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Grant Co")
	e.createFleet(a.key, "alpha")
	e.createVehicle(a.key, "alpha", "v1", nil)
	e.createVehicle(a.key, "alpha", "v2", nil)
	exp := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	scopes := []api.GrantScope{
		{Fleet: "alpha", Categories: []api.GrantCategory{api.GrantCategoryState, api.GrantCategoryEvt}},
		{Fleet: "alpha", VehicleIds: &[]string{"v1"}, Categories: []api.GrantCategory{api.GrantCategoryCmd}},
	}

	// Dry runs, by query or body: the permissions, nothing created.
	before := snapshot(t, e.pool)
	var pv api.GrantPreview
	r := e.do("POST", "/v1/grants?dry_run=true", a.key, api.GrantCreate{Scopes: &scopes, ExpiresAt: exp}).must(t, http.StatusOK, &pv)
	if !strings.Contains(string(r.body), `"publish":["fleet.prod.veh.v1.cmd.>"]`) || pv.UserPublicKey != nil ||
		!slices.Contains(pv.Subscribe, "fleet.prod.veh.*.state.>") || !slices.Contains(pv.Subscribe, "fleet.prod.veh.*.evt.>") ||
		pv.Region != "europe" || !pv.ExpiresAt.Equal(exp) || strings.Join(connTypes(pv.ConnectionTypes), ",") != "STANDARD,WEBSOCKET" {
		t.Errorf("dry run %s", r.body)
	}
	e.do("POST", "/v1/grants", a.key, api.GrantCreate{Scopes: &scopes, ExpiresAt: exp, DryRun: ptr(true)}).must(t, http.StatusOK, nil)
	e.do("POST", "/v1/grants?dry_run=true", a.key, api.GrantCreate{Scopes: &scopes, ExpiresAt: exp, DryRun: ptr(true)}).must(t, http.StatusOK, nil)
	if d := diffSnapshots(before, snapshot(t, e.pool)); d != "" {
		t.Errorf("a dry run changed the database: %s", d)
	}

	// The server makes the key: creds, shown once.
	var g1 api.GrantCreated
	r = e.do("POST", "/v1/grants", a.key, api.GrantCreate{Description: ptr("dashboard"), Scopes: &scopes, ExpiresAt: exp},
		withHeader("Idempotency-Key", "grant-1")).must(t, http.StatusCreated, &g1)
	if !grantIDRe.MatchString(g1.Id) || r.header.Get("Location") != "/v1/grants/"+g1.Id || r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("created grant %s, headers %v", g1.Id, r.header)
	}
	if g1.Creds == nil {
		t.Fatalf("no creds: %s", r.body)
	}
	credsJWT, err := jwt.ParseDecoratedJWT([]byte(*g1.Creds))
	if err != nil || credsJWT != g1.Jwt {
		t.Errorf("creds JWT: %v", err)
	}
	kp, err := jwt.ParseDecoratedUserNKey([]byte(*g1.Creds))
	if err != nil {
		t.Fatalf("creds seed: %v", err)
	}
	if pub, _ := kp.PublicKey(); pub != g1.UserPublicKey {
		t.Errorf("creds seed is for %s, grant for %s", pub, g1.UserPublicKey)
	}
	uc := userClaims(t, g1.Jwt)
	if uc.Subject != g1.UserPublicKey || uc.Name != g1.Id || uc.Expires != exp.Unix() ||
		!slices.Equal([]string(uc.Pub.Allow), g1.Publish) || !slices.Equal([]string(uc.Sub.Allow), g1.Subscribe) {
		t.Errorf("JWT %+v vs grant %+v", uc, g1)
	}
	if !slices.Contains(g1.Subscribe, "fleet.prod.veh.v1.rpl.grant."+g1.Id+".>") || g1.Description != "dashboard" ||
		g1.CreatedBy != "api_key:"+a.keyID || g1.RevokedAt != nil || g1.Revocation != nil || g1.Region != "europe" {
		t.Errorf("grant %+v", g1)
	}
	// Its replay names the grant instead of showing the creds again.
	r = e.do("POST", "/v1/grants", a.key, api.GrantCreate{Description: ptr("dashboard"), Scopes: &scopes, ExpiresAt: exp},
		withHeader("Idempotency-Key", "grant-1"))
	p := r.problem(t, http.StatusConflict)
	if !strings.Contains(p.Detail, g1.Id) || strings.Contains(string(r.body), "NKEY") || r.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("replay of a grant with creds: %s", r.body)
	}

	// The holder's own key, with every restriction: no creds, and a replay
	// is the stored response.
	k := newUserKey(t)
	in := api.GrantCreate{
		Subscribe: &[]string{"fleet.prod.veh.v2.state.position"}, ExpiresAt: exp, PublicKey: &k.pub,
		SourceCidrs: &[]string{"198.51.100.0/24"}, TimeWindows: &[]api.TimeWindow{{Start: "08:00:00", End: "18:00:00"}},
		Locale: ptr("Europe/Berlin"), ConnectionTypes: &[]api.ConnectionType{api.ConnectionTypeWEBSOCKET},
	}
	var g2 api.GrantCreated
	first := e.do("POST", "/v1/grants", a.key, in, withHeader("Idempotency-Key", "grant-2")).must(t, http.StatusCreated, &g2)
	replay := e.do("POST", "/v1/grants", a.key, in, withHeader("Idempotency-Key", "grant-2")).must(t, http.StatusCreated, nil)
	if !bytes.Equal(first.body, replay.body) || replay.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("replay of an own-key grant:\n%s\n%s", first.body, replay.body)
	}
	if g2.Creds != nil || g2.UserPublicKey != k.pub || len(g2.Publish) != 0 || strings.Join(g2.Subscribe, ",") != "fleet.prod.veh.v2.state.position" ||
		len(g2.Scopes) != 0 || g2.Locale != "Europe/Berlin" || strings.Join(connTypes(g2.ConnectionTypes), ",") != "WEBSOCKET" {
		t.Errorf("own-key grant %s", first.body)
	}
	uc = userClaims(t, g2.Jwt)
	if uc.Subject != k.pub || strings.Join(uc.Src, ",") != "198.51.100.0/24" || len(uc.Times) != 1 || uc.Times[0].Start != "08:00:00" ||
		uc.Locale != "Europe/Berlin" || strings.Join(uc.AllowedConnectionTypes, ",") != "WEBSOCKET" {
		t.Errorf("own-key JWT %+v", uc)
	}

	// Reads.
	var got api.Grant
	e.do("GET", "/v1/grants/"+g1.Id, a.key, nil).must(t, 200, &got)
	if got.Id != g1.Id || !slices.Equal(got.Subscribe, g1.Subscribe) || !got.CreatedAt.Equal(g1.CreatedAt) || len(got.Scopes) != 2 ||
		got.Scopes[1].VehicleIds == nil || (*got.Scopes[1].VehicleIds)[0] != "v1" {
		t.Errorf("GET %+v", got)
	}
	var l api.GrantList
	e.do("GET", "/v1/grants", a.key, nil).must(t, 200, &l)
	if len(l.Items) != 2 || l.Items[0].Id != g2.Id || l.Items[1].Id != g1.Id {
		t.Errorf("list %+v", l.Items)
	}

	// The nats CLI context.
	r = e.do("GET", "/v1/grants/"+g1.Id+"/context", a.key, nil).must(t, 200, nil)
	var ctxDoc map[string]string
	if err := json.Unmarshal(r.body, &ctxDoc); err != nil {
		t.Fatal(err)
	}
	if r.header.Get("Content-Type") != "application/json" ||
		r.header.Get("Content-Disposition") != `attachment; filename="fleetplane-`+g1.Id+`.json"` ||
		ctxDoc["url"] != strings.Join(testRegions[0].ClientURLs, ",") || !strings.HasSuffix(ctxDoc["creds"], g1.Id+".creds") {
		t.Errorf("context %v %s", r.header, r.body)
	}

	// Revoke: proven, shown on the grant, out of the default list.
	var rev api.Revocation
	e.do("DELETE", "/v1/grants/"+g1.Id, a.key, nil).must(t, http.StatusOK, &rev)
	if rev.Kind != api.RevocationKindGrant || rev.TargetId != g1.Id || rev.UserPublicKey != g1.UserPublicKey ||
		rev.Status != api.RevocationStatusProven || rev.CompletedAt == nil {
		t.Errorf("revocation %+v", rev)
	}
	e.do("GET", "/v1/grants/"+g1.Id, a.key, nil).must(t, 200, &got)
	if got.RevokedAt == nil || got.Revocation == nil || got.Revocation.Id != rev.Id {
		t.Errorf("revoked grant %+v", got)
	}
	var again api.Revocation
	e.do("DELETE", "/v1/grants/"+g1.Id, a.key, nil).must(t, http.StatusOK, &again)
	if again.Id != rev.Id {
		t.Errorf("second revoke: %d, want %d", again.Id, rev.Id)
	}
	e.do("GET", "/v1/grants", a.key, nil).must(t, 200, &l)
	if len(l.Items) != 1 || l.Items[0].Id != g2.Id {
		t.Errorf("list after revoke %+v", l.Items)
	}
	e.do("GET", "/v1/grants?include_inactive=true", a.key, nil).must(t, 200, &l)
	if len(l.Items) != 2 {
		t.Errorf("include_inactive: %d", len(l.Items))
	}
	// The holder's key is spent: another grant cannot reuse it.
	e.do("POST", "/v1/grants", a.key, api.GrantCreate{Subscribe: &[]string{"fleet.prod.>"}, ExpiresAt: exp, PublicKey: &g1.UserPublicKey}).
		problem(t, http.StatusBadRequest)
	e.do("POST", "/v1/grants", a.key, api.GrantCreate{Subscribe: &[]string{"fleet.prod.>"}, ExpiresAt: exp, PublicKey: &k.pub}).
		problem(t, http.StatusConflict)
}

func connTypes(ts []api.ConnectionType) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = string(t)
	}
	return out
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// An enrollment whose response was lost can be retried with the same
// Idempotency-Key: the retry gets the same credentials (a JWT is no
// secret without the vehicle's seed) instead of spending the token again.
func TestEnrollIdempotency(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Retry Co")
	e.createFleet(a.key, "alpha")
	tok := e.createToken(a.key, "alpha", tokenIn(1))
	body := api.EnrollRequest{Token: tok.Token, PublicKey: newUserKey(t).pub, VehicleId: ptr("drone-1")}
	key := withHeader("Idempotency-Key", "enroll-drone-1")
	first := e.do("POST", "/v1/enroll", "", body, key).must(t, http.StatusCreated, nil)
	again := e.do("POST", "/v1/enroll", "", body, key).must(t, http.StatusCreated, nil)
	if !bytes.Equal(first.body, again.body) || again.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("replay:\n%s\n%s", first.body, again.body)
	}
	// Without the key, or with another body, the token is spent.
	e.do("POST", "/v1/enroll", "", body).problem(t, http.StatusUnauthorized)
	other := body
	other.PublicKey = newUserKey(t).pub
	e.do("POST", "/v1/enroll", "", other, key).problem(t, http.StatusUnprocessableEntity)

	// Keys of the public routes are their own: the same key on signup is
	// a different request, not a conflict.
	e.do("POST", "/v1/signup", "", api.SignupRequest{Organisation: "Other", Email: "retry@example.com", Password: "correct horse battery staple"},
		key).must(t, http.StatusCreated, nil)

	// Neither the token nor its secret reaches the logs.
	_, secretPart, _ := strings.Cut(strings.TrimPrefix(tok.Token, "fpe_"), "_")
	if strings.Contains(e.logs.String(), secretPart) {
		t.Error("the logs contain an enrollment token")
	}
}
