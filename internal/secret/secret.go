// Package secret makes and checks the bearer secrets Fleetplane hands out:
// API keys (fpk_<id>_<secret>) and enrollment tokens (fpe_<id>_<secret>).
//
// The <id> is public and used to look the record up; the <secret> is 32
// random bytes, shown once and stored only as a SHA-256 hash. A fast hash is
// right here (unlike for passwords): the secret has 256 bits of entropy, so
// it cannot be guessed offline, and a fast check keeps authentication cheap.
// It imports only the standard library.
package secret

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"errors"
	"strings"
)

// Prefixes of the secret kinds.
const (
	APIKeyPrefix          = "fpk"
	EnrollmentTokenPrefix = "fpe"
)

const (
	idBytes     = 10 // 16 base32 characters
	secretBytes = 32 // 52 base32 characters
)

var enc = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// ErrMalformed is returned by Parse for anything that is not a well-formed secret of the kind.
var ErrMalformed = errors.New("malformed secret")

// New returns a fresh id, the plaintext bearer string prefix_id_secret and the
// hash to store.
func New(prefix string) (id, plaintext string, hash []byte) {
	id = randomString(idBytes)
	s := randomString(secretBytes)
	return id, prefix + "_" + id + "_" + s, Hash(s)
}

// NewID returns a random public identifier in the same alphabet as secret IDs.
func NewID() string { return randomString(idBytes) }

// Parse splits a bearer string of the given kind into its id and secret part.
func Parse(prefix, plaintext string) (id, s string, err error) {
	rest, ok := strings.CutPrefix(plaintext, prefix+"_")
	if !ok {
		return "", "", ErrMalformed
	}
	id, s, ok = strings.Cut(rest, "_")
	if !ok || len(id) != enc.EncodedLen(idBytes) || len(s) != enc.EncodedLen(secretBytes) {
		return "", "", ErrMalformed
	}
	if _, err := enc.DecodeString(id); err != nil {
		return "", "", ErrMalformed
	}
	if _, err := enc.DecodeString(s); err != nil {
		return "", "", ErrMalformed
	}
	return id, s, nil
}

// Hash returns the stored form of a secret part.
func Hash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// Equal compares a presented secret part with a stored hash in constant time.
func Equal(s string, hash []byte) bool {
	return subtle.ConstantTimeCompare(Hash(s), hash) == 1
}

func randomString(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("secret: crypto/rand failed: " + err.Error()) // never happens on Linux ≥ 3.17
	}
	return enc.EncodeToString(b)
}
