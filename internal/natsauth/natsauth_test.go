package natsauth_test

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

func mustOperator(tb testing.TB) *natsauth.Operator {
	tb.Helper()
	op, err := natsauth.NewOperator("fleetplane")
	if err != nil {
		tb.Fatal(err)
	}
	return op
}

func mustKP(tb testing.TB, k natsauth.Key) nkeys.KeyPair {
	tb.Helper()
	kp, err := k.KeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	return kp
}

func mustUserKey(tb testing.TB) natsauth.Key {
	tb.Helper()
	k, err := natsauth.NewUserKey()
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func TestNewOperator(t *testing.T) {
	t.Parallel()
	op := mustOperator(t)
	oc, err := jwt.DecodeOperatorClaims(op.JWT)
	if err != nil {
		t.Fatal(err)
	}
	if oc.Subject != op.Identity.Public || oc.Issuer != op.Identity.Public || oc.Name != "fleetplane" {
		t.Errorf("operator claims: sub %s iss %s name %s", oc.Subject, oc.Issuer, oc.Name)
	}
	if !oc.StrictSigningKeyUsage || !slices.Equal(oc.SigningKeys, []string{op.SigningKey.Public}) {
		t.Errorf("strict=%v signing keys %v", oc.StrictSigningKeyUsage, oc.SigningKeys)
	}
	if oc.SystemAccount != op.System.Identity.Public || oc.AssertServerVersion != natsauth.MinServerVersion {
		t.Errorf("system account %s, assert version %q", oc.SystemAccount, oc.AssertServerVersion)
	}

	sys, err := jwt.DecodeAccountClaims(op.System.JWT)
	if err != nil {
		t.Fatal(err)
	}
	if sys.Issuer != op.SigningKey.Public || sys.Name != natsauth.SystemAccountName || !sys.SigningKeys.Contains(op.System.SigningKey.Public) {
		t.Errorf("system account: iss %s name %s signing keys %v", sys.Issuer, sys.Name, sys.SigningKeys.Keys())
	}
	if !oc.DidSign(sys) {
		t.Error("operator JWT does not vouch for the system account's issuer")
	}

	uc, err := jwt.DecodeUserClaims(op.System.User.JWT)
	if err != nil {
		t.Fatal(err)
	}
	if uc.Issuer != op.System.SigningKey.Public || uc.IssuerAccount != op.System.Identity.Public || uc.Subject != op.System.User.Public || uc.Expires != 0 {
		t.Errorf("system user: %+v", uc.ClaimsData)
	}
	creds, err := op.System.User.Creds()
	if err != nil {
		t.Fatal(err)
	}
	if j, err := jwt.ParseDecoratedJWT(creds); err != nil || j != op.System.User.JWT {
		t.Errorf("creds JWT round trip: %v", err)
	}

	// The seeds are real and match the public keys (a copy, not a wiped buffer).
	for name, k := range map[string]natsauth.Key{
		"identity": op.Identity, "signing": op.SigningKey, "sys": op.System.Identity,
		"sys signing": op.System.SigningKey, "sys user": op.System.User.Key,
	} {
		kp := mustKP(t, k)
		if pub, _ := kp.PublicKey(); pub != k.Public {
			t.Errorf("%s: seed is for %s, public key %s", name, pub, k.Public)
		}
	}
	trust := op.HubTrust()
	if trust.ResolverPreload()[op.System.Identity.Public] != op.System.JWT {
		t.Error("resolver preload lacks the system account")
	}
	if s := fmt.Sprintf("%v %+v %#v", trust, op.SigningKey, *op); strings.Contains(s, string(op.SigningKey.Seed)) || strings.Contains(s, string(op.Identity.Seed)) {
		t.Error("formatting an operator prints a seed")
	}
}

func TestIssueAccountJWT(t *testing.T) {
	t.Parallel()
	op := mustOperator(t)
	sk := mustKP(t, op.SigningKey)
	keys, err := natsauth.NewAccountKeys()
	if err != nil {
		t.Fatal(err)
	}
	revoked := mustUserKey(t).Public
	spec := natsauth.AccountSpec{
		Name: "acme", TenantID: "0b9c7f0e-2f4e-4d2b-9d3e-1a2b3c4d5e6f",
		Limits: natsauth.Limits{Conn: 20, LeafNodeConn: 10, Subs: 5000, Payload: 1 << 20,
			JetStreamDisk: 1 << 30, JetStreamMem: 0, Streams: 4, Consumers: 100},
		Revocations: map[string]int64{revoked: 1_700_000_000},
	}
	j, err := natsauth.IssueAccountJWT(sk, keys.Account.Public, keys.RoleKeys(), spec)
	if err != nil {
		t.Fatal(err)
	}
	ac, err := jwt.DecodeAccountClaims(j)
	if err != nil {
		t.Fatal(err)
	}
	l := ac.Limits
	if ac.Issuer != op.SigningKey.Public || ac.Subject != keys.Account.Public || ac.Name != "acme" {
		t.Errorf("iss %s sub %s name %s", ac.Issuer, ac.Subject, ac.Name)
	}
	if l.Conn != 20 || l.LeafNodeConn != 10 || l.Subs != 5000 || l.Payload != 1<<20 || !l.DisallowBearer {
		t.Errorf("limits %+v", l)
	}
	if !l.IsJSEnabled() || l.DiskStorage != 1<<30 || l.MemoryStorage != 0 || l.Streams != 4 || l.Consumer != 100 {
		t.Errorf("JetStream limits %+v", l.JetStreamLimits)
	}
	if !slices.Equal(ac.Tags, jwt.TagList{"tenant:0b9c7f0e-2f4e-4d2b-9d3e-1a2b3c4d5e6f"}) {
		t.Errorf("tags %v", ac.Tags)
	}
	if ac.Revocations[revoked] != 1_700_000_000 || !ac.Revocations.IsRevoked(revoked, time.Unix(1_700_000_000, 0)) {
		t.Errorf("revocations %v", ac.Revocations)
	}
	// Role keys: vehicle and service scoped, grant plain.
	vs, ok := ac.SigningKeys.GetScope(keys.Vehicle.Public)
	if !ok || vs == nil {
		t.Fatal("vehicle key missing or unscoped")
	}
	us := vs.(*jwt.UserScope)
	if us.Role != natsauth.RoleVehicle || !slices.Equal(us.Template.AllowedConnectionTypes, jwt.StringList{"LEAFNODE"}) {
		t.Errorf("vehicle scope %+v", us)
	}
	wantPub := jwt.StringList{"fleet.{{tag(env)}}.veh.{{name()}}.>", "ingest.{{tag(env)}}.{{name()}}.>"}
	wantSub := jwt.StringList{"fleet.{{tag(env)}}.veh.{{name()}}.cmd.>", "_INBOX.veh.{{name()}}.>"}
	if !reflect.DeepEqual(us.Template.Pub.Allow, wantPub) || !reflect.DeepEqual(us.Template.Sub.Allow, wantSub) || us.Template.Resp != nil {
		t.Errorf("vehicle template pub %v sub %v resp %v", us.Template.Pub.Allow, us.Template.Sub.Allow, us.Template.Resp)
	}
	if gs, ok := ac.SigningKeys.GetScope(keys.Grant.Public); !ok || gs != nil {
		t.Errorf("grant key: present=%v scope=%v (want present, unscoped)", ok, gs)
	}
	ss, ok := ac.SigningKeys.GetScope(keys.Service.Public)
	if !ok || ss == nil || ss.(*jwt.UserScope).Role != natsauth.RoleService {
		t.Fatal("service key missing or unscoped")
	}
	// Exactly what controlplane/twin needs (TestServiceUserScope shows it
	// on a server); TCP only (in-process is not used).
	st := ss.(*jwt.UserScope).Template
	wantPub = jwt.StringList{"$JS.API.STREAM.INFO.TWIN", "$JS.API.STREAM.CREATE.TWIN", "$JS.API.STREAM.UPDATE.TWIN",
		"$JS.API.DIRECT.GET.TWIN", "fleet.*.veh.*.cmd.>"}
	wantSub = jwt.StringList{"fleet.*.veh.*.state.>", "fleet.*.veh.*.evt.>", "fleet.*.veh.*.rpl.svc.>", "_INBOX.svc.{{name()}}.>"}
	if !reflect.DeepEqual(st.Pub.Allow, wantPub) || !reflect.DeepEqual(st.Sub.Allow, wantSub) || st.Resp != nil ||
		len(st.Pub.Deny) != 0 || len(st.Sub.Deny) != 0 || !slices.Equal(st.AllowedConnectionTypes, jwt.StringList{"STANDARD"}) {
		t.Errorf("service template pub %v sub %v resp %v types %v", st.Pub, st.Sub, st.Resp, st.AllowedConnectionTypes)
	}

	// JetStream stays off without disk.
	spec.Limits.JetStreamDisk = 0
	spec.Limits.JetStreamMem = 1 << 20
	j, _ = natsauth.IssueAccountJWT(sk, keys.Account.Public, keys.RoleKeys(), spec)
	ac, _ = jwt.DecodeAccountClaims(j)
	if ac.Limits.IsJSEnabled() {
		t.Errorf("JetStream enabled without disk: %+v", ac.Limits.JetStreamLimits)
	}
}

func TestIssueAccountJWTRejects(t *testing.T) {
	t.Parallel()
	op := mustOperator(t)
	sk := mustKP(t, op.SigningKey)
	keys, _ := natsauth.NewAccountKeys()
	good := natsauth.AccountSpec{Name: "acme", TenantID: "t1", Limits: natsauth.Unlimited()}
	user := mustUserKey(t).Public
	for name, tc := range map[string]struct {
		kp   nkeys.KeyPair
		acc  string
		keys natsauth.RoleKeys
		spec func(*natsauth.AccountSpec)
	}{
		"account key signs":   {kp: mustKP(t, keys.Account)},
		"user as account":     {acc: user},
		"role key = account":  {keys: natsauth.RoleKeys{Vehicle: keys.Account.Public, Grant: keys.Grant.Public, Service: keys.Service.Public}},
		"role keys equal":     {keys: natsauth.RoleKeys{Vehicle: keys.Grant.Public, Grant: keys.Grant.Public, Service: keys.Service.Public}},
		"role key is user":    {keys: natsauth.RoleKeys{Vehicle: user, Grant: keys.Grant.Public, Service: keys.Service.Public}},
		"no name":             {spec: func(s *natsauth.AccountSpec) { s.Name = "" }},
		"tenant with space":   {spec: func(s *natsauth.AccountSpec) { s.TenantID = "a b" }},
		"tenant with colon":   {spec: func(s *natsauth.AccountSpec) { s.TenantID = "a:b" }},
		"limit below -1":      {spec: func(s *natsauth.AccountSpec) { s.Limits.Subs = -2 }},
		"revoke account key":  {spec: func(s *natsauth.AccountSpec) { s.Revocations = map[string]int64{keys.Account.Public: 1} }},
		"revoke garbage":      {spec: func(s *natsauth.AccountSpec) { s.Revocations = map[string]int64{"nope": 1} }},
		"nil operator key":    {kp: nil, acc: "nil"},
		"empty role key":      {keys: natsauth.RoleKeys{Grant: keys.Grant.Public, Service: keys.Service.Public}},
		"operator identity?!": {kp: mustKP(t, keys.Vehicle)},
	} {
		kp, acc, rk, spec := sk, keys.Account.Public, keys.RoleKeys(), good
		if tc.kp != nil || tc.acc == "nil" {
			kp = tc.kp
		}
		if tc.acc != "" && tc.acc != "nil" {
			acc = tc.acc
		}
		if tc.keys != (natsauth.RoleKeys{}) || name == "empty role key" {
			rk = tc.keys
		}
		if tc.spec != nil {
			tc.spec(&spec)
		}
		if _, err := natsauth.IssueAccountJWT(kp, acc, rk, spec); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// "*" revokes everyone and is allowed.
	all := good
	all.Revocations = map[string]int64{jwt.All: time.Now().Unix()}
	if _, err := natsauth.IssueAccountJWT(sk, keys.Account.Public, keys.RoleKeys(), all); err != nil {
		t.Errorf("revoke *: %v", err)
	}
}

func TestIssueVehicleJWT(t *testing.T) {
	t.Parallel()
	keys, _ := natsauth.NewAccountKeys()
	vk := mustKP(t, keys.Vehicle)
	user := mustUserKey(t).Public
	v := natsauth.VehicleIdentity{TenantID: "0b9c7f0e-2f4e-4d2b-9d3e-1a2b3c4d5e6f", Fleet: "survey-east", Env: "prod", VehicleID: "Drone-7_B"}
	exp := time.Now().Add(30 * 24 * time.Hour)
	j, err := natsauth.IssueVehicleJWT(vk, keys.Account.Public, user, v, exp)
	if err != nil {
		t.Fatal(err)
	}
	uc, err := jwt.DecodeUserClaims(j)
	if err != nil {
		t.Fatal(err)
	}
	if uc.Name != "Drone-7_B" || uc.Subject != user || uc.Issuer != keys.Vehicle.Public || uc.IssuerAccount != keys.Account.Public || uc.Expires != exp.Unix() {
		t.Errorf("claims %+v", uc.ClaimsData)
	}
	if !uc.HasEmptyPermissions() {
		t.Errorf("a scoped vehicle user must carry no permissions: %+v", uc.UserPermissionLimits)
	}
	want := jwt.TagList{"tenant:0b9c7f0e-2f4e-4d2b-9d3e-1a2b3c4d5e6f", "fleet:survey-east", "env:prod", "vehicle:drone-7_b"}
	if !reflect.DeepEqual(uc.Tags, want) {
		t.Errorf("tags %v, want %v", uc.Tags, want)
	}
	// The scope accepts it.
	if err := natsauth.VehicleScope(keys.Vehicle.Public).ValidateScopedSigner(uc); err != nil {
		t.Errorf("scope rejects the vehicle JWT: %v", err)
	}

	bad := func(f func(*natsauth.VehicleIdentity)) natsauth.VehicleIdentity { c := v; f(&c); return c }
	for name, tc := range map[string]struct {
		kp   nkeys.KeyPair
		user string
		v    natsauth.VehicleIdentity
		exp  time.Time
		msg  string
	}{
		"vid with dot":         {v: bad(func(c *natsauth.VehicleIdentity) { c.VehicleID = "a.b" }), msg: "vehicle ID"},
		"vid wildcard":         {v: bad(func(c *natsauth.VehicleIdentity) { c.VehicleID = "*" }), msg: "vehicle ID"},
		"vid too long":         {v: bad(func(c *natsauth.VehicleIdentity) { c.VehicleID = strings.Repeat("a", 65) }), msg: "vehicle ID"},
		"vid empty":            {v: bad(func(c *natsauth.VehicleIdentity) { c.VehicleID = "" }), msg: "vehicle ID"},
		"env upper":            {v: bad(func(c *natsauth.VehicleIdentity) { c.Env = "Prod" }), msg: "environment"},
		"env trailing dash":    {v: bad(func(c *natsauth.VehicleIdentity) { c.Env = "prod-" }), msg: "environment"},
		"env dot":              {v: bad(func(c *natsauth.VehicleIdentity) { c.Env = "a.b" }), msg: "environment"},
		"fleet with space":     {v: bad(func(c *natsauth.VehicleIdentity) { c.Fleet = "a b" }), msg: "fleet"},
		"no tenant":            {v: bad(func(c *natsauth.VehicleIdentity) { c.TenantID = "" }), msg: "tenant"},
		"account key as user":  {user: keys.Account.Public, msg: "user public key"},
		"seed as user":         {user: string(keys.Vehicle.Seed), msg: "user public key"},
		"signed by account id": {kp: mustKP(t, keys.Account), msg: "account identity key"},
		"signed by user key":   {kp: mustKP(t, mustUserKey(t)), msg: "signing key"},
		"no expiry":            {exp: time.Time{}, msg: "mandatory"},
		"expired":              {exp: time.Now().Add(-time.Minute), msg: "past"},
		"too long":             {exp: time.Now().Add(natsauth.MaxUserLifetime + time.Hour), msg: "away"},
	} {
		kp, u, vi, e := vk, user, v, exp
		if tc.kp != nil {
			kp = tc.kp
		}
		if tc.user != "" {
			u = tc.user
		}
		if tc.v != (natsauth.VehicleIdentity{}) {
			vi = tc.v
		}
		if strings.Contains(name, "expir") || name == "too long" {
			e = tc.exp
		}
		_, err := natsauth.IssueVehicleJWT(kp, keys.Account.Public, u, vi, e)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, tc.msg)
		}
		if err != nil && strings.Contains(err.Error(), string(keys.Vehicle.Seed)) {
			t.Errorf("%s: error contains a seed", name)
		}
	}
}

func TestIssueServiceJWT(t *testing.T) {
	t.Parallel()
	keys, _ := natsauth.NewAccountKeys()
	user := mustUserKey(t).Public
	j, err := natsauth.IssueServiceJWT(mustKP(t, keys.Service), keys.Account.Public, user, "cp", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	uc, _ := jwt.DecodeUserClaims(j)
	if !uc.HasEmptyPermissions() || uc.Name != "cp" || uc.Issuer != keys.Service.Public {
		t.Errorf("service user %+v", uc)
	}
	for _, name := range []string{"", "a.b", "cp.>", "a b", "*", strings.Repeat("x", 65)} {
		if _, err := natsauth.IssueServiceJWT(mustKP(t, keys.Service), keys.Account.Public, user, name, time.Now().Add(time.Hour)); err == nil {
			t.Errorf("name %q accepted: it is a token of the inbox subjects", name)
		}
	}
	if _, err := natsauth.IssueServiceJWT(mustKP(t, keys.Service), keys.Account.Public, user, "cp", time.Time{}); err == nil {
		t.Error("no expiry accepted")
	}
}

// (g) A grant's JWT carries its subjects, CIDRs, time windows, locale,
// connection types and expiry.
func TestIssueGrantJWT(t *testing.T) {
	t.Parallel()
	keys, _ := natsauth.NewAccountKeys()
	gk := mustKP(t, keys.Grant)
	user := mustUserKey(t).Public
	exp := time.Now().Add(7 * 24 * time.Hour)
	g := natsauth.GrantSpec{
		Name:        "insurer-1",
		Subscribe:   []string{"fleet.prod.veh.*.state.>", "fleet.prod.veh.V1.rpl.grant.insurer-1.>"},
		Publish:     []string{"fleet.prod.veh.V1.cmd.>"},
		Expires:     exp,
		SourceCIDRs: []string{"192.0.2.0/24", "2001:db8::/32"},
		TimeWindows: []jwt.TimeRange{{Start: "08:00:00", End: "18:00:00"}, {Start: "22:00:00", End: "02:00:00"}},
		Locale:      "Europe/Berlin",
	}
	j, err := natsauth.IssueGrantJWT(gk, keys.Account.Public, user, g)
	if err != nil {
		t.Fatal(err)
	}
	uc, err := jwt.DecodeUserClaims(j)
	if err != nil {
		t.Fatal(err)
	}
	if uc.Name != "insurer-1" || uc.Expires != exp.Unix() || uc.Issuer != keys.Grant.Public || uc.IssuerAccount != keys.Account.Public {
		t.Errorf("claims %+v", uc.ClaimsData)
	}
	if !reflect.DeepEqual([]string(uc.Src), g.SourceCIDRs) || !reflect.DeepEqual(uc.Times, g.TimeWindows) || uc.Locale != "Europe/Berlin" {
		t.Errorf("src %v times %v locale %q", uc.Src, uc.Times, uc.Locale)
	}
	if !reflect.DeepEqual([]string(uc.AllowedConnectionTypes), []string{"STANDARD", "WEBSOCKET"}) {
		t.Errorf("connection types %v", uc.AllowedConnectionTypes)
	}
	if !reflect.DeepEqual([]string(uc.Pub.Allow), g.Publish) || !reflect.DeepEqual([]string(uc.Sub.Allow), g.Subscribe) || uc.Resp != nil {
		t.Errorf("perms %+v", uc.Permissions)
	}

	// Read-only by default: no publish list means deny all publishing.
	ro := g
	ro.Publish, ro.SourceCIDRs, ro.TimeWindows, ro.Locale = nil, nil, nil, ""
	ro.ConnectionTypes = []string{"WEBSOCKET"}
	j, _ = natsauth.IssueGrantJWT(gk, keys.Account.Public, user, ro)
	uc, _ = jwt.DecodeUserClaims(j)
	if len(uc.Pub.Allow) != 0 || !reflect.DeepEqual([]string(uc.Pub.Deny), []string{">"}) || !reflect.DeepEqual([]string(uc.AllowedConnectionTypes), []string{"WEBSOCKET"}) {
		t.Errorf("read-only grant: pub %+v types %v", uc.Pub, uc.AllowedConnectionTypes)
	}

	base := natsauth.GrantSpec{Name: "g", Subscribe: []string{"fleet.>"}, Expires: exp}
	for name, f := range map[string]func(*natsauth.GrantSpec){
		"no expiry":        func(g *natsauth.GrantSpec) { g.Expires = time.Time{} },
		"expired":          func(g *natsauth.GrantSpec) { g.Expires = time.Now().Add(-time.Second) },
		"name with dot":    func(g *natsauth.GrantSpec) { g.Name = "a.b" },
		"no name":          func(g *natsauth.GrantSpec) { g.Name = "" },
		"outside fleet":    func(g *natsauth.GrantSpec) { g.Subscribe = []string{"ingest.>"} },
		"whole account":    func(g *natsauth.GrantSpec) { g.Subscribe = []string{">"} },
		"fleet root only":  func(g *natsauth.GrantSpec) { g.Subscribe = []string{"fleet"} },
		"inbox":            func(g *natsauth.GrantSpec) { g.Subscribe = []string{"_INBOX.>"} },
		"JS API":           func(g *natsauth.GrantSpec) { g.Publish = []string{"$JS.API.>"} },
		"empty token":      func(g *natsauth.GrantSpec) { g.Subscribe = []string{"fleet..veh"} },
		"gt not last":      func(g *natsauth.GrantSpec) { g.Subscribe = []string{"fleet.>.veh"} },
		"partial wildcard": func(g *natsauth.GrantSpec) { g.Subscribe = []string{"fleet.pro*.veh"} },
		"trailing dot":     func(g *natsauth.GrantSpec) { g.Publish = []string{"fleet.prod."} },
		"whitespace":       func(g *natsauth.GrantSpec) { g.Publish = []string{"fleet.prod veh"} },
		"leafnode":         func(g *natsauth.GrantSpec) { g.ConnectionTypes = []string{"LEAFNODE"} },
		"mqtt":             func(g *natsauth.GrantSpec) { g.ConnectionTypes = []string{"STANDARD", "MQTT"} },
		"bad cidr":         func(g *natsauth.GrantSpec) { g.SourceCIDRs = []string{"10.0.0.0/33"} },
		"bad window":       func(g *natsauth.GrantSpec) { g.TimeWindows = []jwt.TimeRange{{Start: "25:00:00", End: "26:00:00"}} },
		"bad locale": func(g *natsauth.GrantSpec) {
			g.TimeWindows = []jwt.TimeRange{{Start: "01:00:00", End: "02:00:00"}}
			g.Locale = "Mars/Olympus"
		},
		"signed by vehicle?": nil,
	} {
		spec := base
		kp := gk
		if f == nil {
			kp = mustKP(t, keys.Account)
		} else {
			f(&spec)
		}
		if _, err := natsauth.IssueGrantJWT(kp, keys.Account.Public, user, spec); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestGrantPermissions(t *testing.T) {
	t.Parallel()
	cats := func(c ...natsauth.Category) []natsauth.Category { return c }
	for _, tc := range []struct {
		name          string
		scopes        []natsauth.GrantScope
		wantPub       []string
		wantSub       []string
		wantErrSubstr string
	}{
		{
			name:    "read a whole environment",
			scopes:  []natsauth.GrantScope{{Env: "prod", Categories: cats(natsauth.CategoryState, natsauth.CategoryEvents)}},
			wantSub: []string{"fleet.prod.veh.*.evt.>", "fleet.prod.veh.*.state.>"},
		},
		{
			name: "read two vehicles, command one",
			scopes: []natsauth.GrantScope{
				{Env: "prod", VehicleIDs: []string{"V2", "V1"}, Categories: cats(natsauth.CategoryState)},
				{Env: "prod", VehicleIDs: []string{"V1"}, Categories: cats(natsauth.CategoryCommands, natsauth.CategoryState)},
			},
			wantPub: []string{"fleet.prod.veh.V1.cmd.>"},
			wantSub: []string{"fleet.prod.veh.V1.rpl.grant.g1.>", "fleet.prod.veh.V1.state.>", "fleet.prod.veh.V2.state.>"},
		},
		{
			name:    "agent health across environments",
			scopes:  []natsauth.GrantScope{{Env: "prod", Categories: cats(natsauth.CategoryAgent)}, {Env: "staging", Categories: cats(natsauth.CategoryAgent)}},
			wantSub: []string{"fleet.prod.veh.*.agent.>", "fleet.staging.veh.*.agent.>"},
		},
		{name: "no scopes", wantErrSubstr: "at least one"},
		{name: "command everyone", scopes: []natsauth.GrantScope{{Env: "prod", Categories: cats(natsauth.CategoryCommands)}}, wantErrSubstr: "explicitly"},
		{name: "bad env", scopes: []natsauth.GrantScope{{Env: "PROD", Categories: cats(natsauth.CategoryState)}}, wantErrSubstr: "environment"},
		{name: "wildcard env", scopes: []natsauth.GrantScope{{Env: "*", Categories: cats(natsauth.CategoryState)}}, wantErrSubstr: "environment"},
		{name: "bad vid", scopes: []natsauth.GrantScope{{Env: "prod", VehicleIDs: []string{">"}, Categories: cats(natsauth.CategoryState)}}, wantErrSubstr: "vehicle ID"},
		{name: "no categories", scopes: []natsauth.GrantScope{{Env: "prod"}}, wantErrSubstr: "categories"},
		{name: "unknown category", scopes: []natsauth.GrantScope{{Env: "prod", Categories: cats("rpl")}}, wantErrSubstr: "category"},
	} {
		pub, sub, err := natsauth.GrantPermissions("g1", tc.scopes...)
		if tc.wantErrSubstr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErrSubstr) {
				t.Errorf("%s: err = %v, want %q", tc.name, err, tc.wantErrSubstr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !slices.Equal(pub, tc.wantPub) || !slices.Equal(sub, tc.wantSub) {
			t.Errorf("%s:\n pub %v, want %v\n sub %v, want %v", tc.name, pub, tc.wantPub, sub, tc.wantSub)
		}
		// Every produced list is accepted by IssueGrantJWT.
		keys, _ := natsauth.NewAccountKeys()
		if _, err := natsauth.IssueGrantJWT(mustKP(t, keys.Grant), keys.Account.Public, mustUserKey(t).Public,
			natsauth.GrantSpec{Name: "g1", Publish: pub, Subscribe: sub, Expires: time.Now().Add(time.Hour)}); err != nil {
			t.Errorf("%s: IssueGrantJWT rejects GrantPermissions' output: %v", tc.name, err)
		}
	}
	if _, _, err := natsauth.GrantPermissions("a.b", natsauth.GrantScope{Env: "prod", Categories: cats(natsauth.CategoryState)}); err == nil {
		t.Error("grant name with a dot accepted")
	}
}

func TestSubjects(t *testing.T) {
	t.Parallel()
	for got, want := range map[string]string{
		natsauth.VehicleSubjectPrefix("prod", "Drone-7"):        "fleet.prod.veh.Drone-7",
		natsauth.IngestSubject("prod", "Drone-7"):               "ingest.prod.Drone-7",
		natsauth.VehicleInboxPrefix("Drone-7"):                  "_INBOX.veh.Drone-7",
		natsauth.ServiceReplyPrefix("prod", "Drone-7"):          "fleet.prod.veh.Drone-7.rpl.svc",
		natsauth.GrantReplyPrefix("prod", "Drone-7", "ins-1"):   "fleet.prod.veh.Drone-7.rpl.grant.ins-1",
		natsauth.IngestStreamSubjects:                           "ingest.>",
		natsauth.SubjectRoot + "." + natsauth.CommandReplies:    "fleet.rpl",
		string(natsauth.CLIContext("d", "nats://h:4222", "/c")): "{\n  \"description\": \"d\",\n  \"url\": \"nats://h:4222\",\n  \"creds\": \"/c\"\n}\n",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

func TestIngestSubjectFor(t *testing.T) {
	t.Parallel()
	if got, err := natsauth.IngestSubjectFor("fleet.prod.veh.Drone-7.state.position"); err != nil || got != "ingest.prod.Drone-7.state.position" {
		t.Errorf("got %q, %v", got, err)
	}
	if got, err := natsauth.IngestSubjectFor("fleet.dev.veh.V1.evt.a.b"); err != nil || got != "ingest.dev.V1.evt.a.b" {
		t.Errorf("got %q, %v", got, err)
	}
	for _, s := range []string{
		"", "fleet.prod.veh.V1", "fleet.prod.veh.V1.", "fleet.prod.veh.*.state.x", "fleet.prod.veh.V1.state.>",
		"fleet.Prod.veh.V1.state.x", "fleet.prod.vehicle.V1.state.x", "ingest.prod.V1.state.x", "fleet.prod.veh..state.x",
	} {
		if got, err := natsauth.IngestSubjectFor(s); err == nil {
			t.Errorf("IngestSubjectFor(%q) = %q, want an error", s, got)
		}
	}
}

func TestRevokeAndPrune(t *testing.T) {
	t.Parallel()
	u1, u2 := mustUserKey(t).Public, mustUserKey(t).Public
	t0 := time.Unix(1_800_000_000, 0)
	revs, err := natsauth.RevokeUser(nil, u1, t0)
	if err != nil {
		t.Fatal(err)
	}
	revs2, _ := natsauth.RevokeUser(revs, u2, t0.Add(time.Hour))
	if len(revs) != 1 || len(revs2) != 2 {
		t.Fatalf("RevokeUser must copy: %v / %v", revs, revs2)
	}
	// A revocation never moves back in time.
	revs3, _ := natsauth.RevokeUser(revs2, u1, t0.Add(-time.Hour))
	if revs3[u1] != t0.Unix() {
		t.Errorf("revocation moved back: %d", revs3[u1])
	}
	revs3, _ = natsauth.RevokeUser(revs3, u1, t0.Add(time.Minute))
	if revs3[u1] != t0.Add(time.Minute).Unix() {
		t.Errorf("revocation did not move forward: %d", revs3[u1])
	}
	if _, err := natsauth.RevokeUser(nil, "ABC", t0); err == nil {
		t.Error("revoking a non-user key accepted")
	}
	if r, err := natsauth.RevokeUser(nil, jwt.All, t0); err != nil || r[jwt.All] != t0.Unix() {
		t.Errorf("revoke all: %v %v", r, err)
	}

	life := natsauth.MaxUserLifetime
	pruned := natsauth.PruneRevocations(revs3, t0.Add(life+30*time.Minute), life)
	if _, ok := pruned[u1]; ok || pruned[u2] == 0 || len(pruned) != 1 {
		t.Errorf("prune at t0+life+30m: %v (u1 revoked at t0+1m must go, u2 at t0+1h stay)", pruned)
	}
	if len(revs3) != 2 {
		t.Error("PruneRevocations modified its input")
	}
	if p := natsauth.PruneRevocations(revs3, t0, life); len(p) != 2 {
		t.Errorf("prune too early: %v", p)
	}
}

func TestFormatCreds(t *testing.T) {
	t.Parallel()
	keys, _ := natsauth.NewAccountKeys()
	u, other := mustUserKey(t), mustUserKey(t)
	j, err := natsauth.IssueServiceJWT(mustKP(t, keys.Service), keys.Account.Public, u.Public, "cp", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	creds, err := natsauth.FormatCreds(j, u.Seed)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := jwt.ParseDecoratedUserNKey(creds)
	if err != nil {
		t.Fatal(err)
	}
	if pub, _ := kp.PublicKey(); pub != u.Public {
		t.Error("creds carry another seed")
	}
	if _, err := natsauth.FormatCreds(j, other.Seed); err == nil {
		t.Error("creds with a foreign seed accepted")
	}
	if _, err := natsauth.FormatCreds(j, keys.Account.Seed); err == nil {
		t.Error("creds with an account seed accepted")
	} else if strings.Contains(err.Error(), string(keys.Account.Seed)) {
		t.Error("error contains the seed")
	}
	if _, err := natsauth.FormatCreds("not a jwt", u.Seed); err == nil {
		t.Error("garbage JWT accepted")
	}
}

func BenchmarkIssueVehicleJWT(b *testing.B) {
	keys, err := natsauth.NewAccountKeys()
	if err != nil {
		b.Fatal(err)
	}
	vk := mustKP(b, keys.Vehicle)
	user := mustUserKey(b).Public
	v := natsauth.VehicleIdentity{TenantID: "0b9c7f0e-2f4e-4d2b-9d3e-1a2b3c4d5e6f", Fleet: "survey", Env: "prod", VehicleID: "Drone-7"}
	exp := time.Now().Add(30 * 24 * time.Hour)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := natsauth.IssueVehicleJWT(vk, keys.Account.Public, user, v, exp); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkIssueAccountJWT(b *testing.B) {
	op := mustOperator(b)
	sk := mustKP(b, op.SigningKey)
	keys, _ := natsauth.NewAccountKeys()
	spec := natsauth.AccountSpec{Name: "acme", TenantID: "t1", Limits: natsauth.Unlimited(), Revocations: map[string]int64{}}
	for range 1000 { // a tenant with a thousand revoked vehicles
		spec.Revocations[mustUserKey(b).Public] = time.Now().Unix()
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := natsauth.IssueAccountJWT(sk, keys.Account.Public, keys.RoleKeys(), spec); err != nil {
			b.Fatal(err)
		}
	}
}
