package natsauth

import (
	"fmt"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// ValidateUserPublicKey checks that s is a user public nkey ("U..."). The
// message names what s looks like instead (an account or operator key, a
// seed) without echoing a seed back.
func ValidateUserPublicKey(s string) error {
	if nkeys.IsValidPublicUserKey(s) {
		return nil
	}
	if len(s) > 0 && s[0] == 'S' {
		return fmt.Errorf("want a user public key (U...), got what looks like a seed: never send a seed, send its public key")
	}
	return fmt.Errorf("want a user public key (U..., 56 characters), got %s", keyKind(s))
}

// VerifyUserSignature checks an nkey signature of data by the user key pub
// (proof of possession: the agent signs a server nonce).
func VerifyUserSignature(pub string, data, sig []byte) error {
	kp, err := nkeys.FromPublicKey(pub)
	if err != nil || !nkeys.IsValidPublicUserKey(pub) {
		return fmt.Errorf("natsauth: not a user public key")
	}
	if err := kp.Verify(data, sig); err != nil {
		return fmt.Errorf("natsauth: signature does not verify")
	}
	return nil
}

// ValidateGrantSubject checks that s may appear in a grant's explicit
// subjects: well formed and strictly inside the fleet tree.
func ValidateGrantSubject(s string) error {
	if !inFleetTree(s) {
		return fmt.Errorf("%q is not a well-formed subject under %s.>", s, SubjectRoot)
	}
	return nil
}

// TimeWindow is a daily window for GrantSpec.TimeWindows; start and end are
// "15:04:05". It checks the format the server expects.
func TimeWindow(start, end string) (jwt.TimeRange, error) {
	for _, v := range []string{start, end} {
		if _, err := time.Parse(time.TimeOnly, v); err != nil || len(v) != len(time.TimeOnly) {
			return jwt.TimeRange{}, fmt.Errorf("time %q: want HH:MM:SS", v)
		}
	}
	return jwt.TimeRange{Start: start, End: end}, nil
}
