package natsauth_test

import (
	"strings"
	"testing"

	"github.com/nats-io/nkeys"

	"github.com/fleetplane/fleetplane/internal/natsauth"
)

// FuzzBoundaryChecks feeds arbitrary strings to the checks that guard the
// API boundary: none panics, none accepts what the server would refuse,
// and no error message echoes a seed.
func FuzzBoundaryChecks(f *testing.F) {
	kp, _ := nkeys.CreateUser()
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	for _, s := range []string{pub, string(seed), "", "U", "fleet.prod.veh.V1.state.>", "fleet.>", "fleet..x", "12:00:00", "24:00:00", "fleet.*.veh.>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if err := natsauth.ValidateUserPublicKey(s); err == nil {
			if !nkeys.IsValidPublicUserKey(s) {
				t.Fatalf("accepted %q as a user key", s)
			}
		} else if len(s) > 8 && strings.Contains(err.Error(), s) && !nkeys.IsValidPublicUserKey(s) && s[0] == 'S' {
			t.Fatalf("error echoes its input: %v", err)
		}
		if err := natsauth.ValidateGrantSubject(s); err == nil {
			if !strings.HasPrefix(s, "fleet.") || strings.ContainsAny(s, " \t\r\n") || strings.Contains(s, "..") {
				t.Fatalf("accepted grant subject %q", s)
			}
		}
		if tr, err := natsauth.TimeWindow(s, s); err == nil && (tr.Start != s || len(s) != 8) {
			t.Fatalf("time window %q → %+v", s, tr)
		}
		_ = natsauth.VerifyUserSignature(pub, []byte(s), []byte(s))
	})
}
