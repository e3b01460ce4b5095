// Package seal encrypts secrets at rest (NATS nkey seeds, above all) with
// AES-256-GCM under a named master key, so the master key can rotate: new
// blobs use the current key, old blobs still open with the key they name.
//
// Blob format (binary, stored as bytea), version 1:
//
//	0x01 | len(kid) (1 byte) | kid | nonce (12 bytes) | ciphertext+tag (16-byte tag)
//
// The GCM additional data is the header (version, kid length, kid) followed by
// the caller's associated data, so neither the key ID nor the row binding can
// be changed without Open failing. Callers bind a blob to its row with
// AssociatedData (for example tenant ID + purpose), so a blob copied into
// another row does not open.
//
// Errors never contain key material, plaintext or ciphertext bytes; a Keyring
// formats as its key IDs only. The package imports only the standard library.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
)

const (
	version1  = 0x01
	keyLen    = 32
	nonceLen  = 12
	tagLen    = 16
	maxKIDLen = 32
)

// kidRe is deliberately narrow: a kid is written into every blob and appears
// in logs and errors.
var kidRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// Errors returned by Open. They are sentinel values so callers can tell a
// configuration problem (unknown key) from corrupted or swapped data.
var (
	ErrMalformed   = errors.New("seal: malformed blob")
	ErrUnknownKey  = errors.New("seal: blob sealed with an unknown key ID")
	ErrAuthFailed  = errors.New("seal: authentication failed (wrong key, wrong associated data or tampered blob)")
	errEmptySpec   = errors.New("seal: empty keyring spec")
	errNilKeyring  = errors.New("seal: nil keyring")
	errBothSources = errors.New("seal: both the variable and its _FILE variant are set")
)

// Keyring holds named 256-bit master keys and the ID of the current one. It
// is safe for concurrent use; it is immutable after ParseKeyring.
type Keyring struct {
	current string
	order   []string // spec order, current first
	aeads   map[string]cipher.AEAD
}

// GenerateKey returns a new random 256-bit key, standard base64 encoded, in
// the form ParseKeyring expects after "kid:".
func GenerateKey() string {
	var k [keyLen]byte
	_, _ = rand.Read(k[:]) // crypto/rand.Read never fails (Go ≥ 1.24).
	return base64.StdEncoding.EncodeToString(k[:])
}

// ParseKeyring parses "kid1:base64key,kid2:base64key"; the first entry is the
// current key (used by Seal), the others only open older blobs. Key IDs are
// 1-32 characters of [A-Za-z0-9_-]; keys are 32 bytes in standard or URL
// base64, padded or not. Whitespace around entries (a trailing newline from a
// file) is ignored.
func ParseKeyring(spec string) (*Keyring, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, errEmptySpec
	}
	k := &Keyring{aeads: make(map[string]cipher.AEAD)}
	for i, entry := range strings.Split(spec, ",") {
		entry = strings.TrimSpace(entry)
		kid, b64, ok := strings.Cut(entry, ":")
		if !ok {
			return nil, fmt.Errorf("seal: keyring entry %d: want kid:base64key", i+1)
		}
		if !kidRe.MatchString(kid) {
			return nil, fmt.Errorf("seal: keyring entry %d: key ID must be 1-32 characters of [A-Za-z0-9_-]", i+1)
		}
		if _, dup := k.aeads[kid]; dup {
			return nil, fmt.Errorf("seal: keyring entry %d: duplicate key ID %q", i+1, kid)
		}
		key, err := decodeKey(b64)
		if err != nil {
			return nil, fmt.Errorf("seal: key %q: %w", kid, err)
		}
		aead, err := newAEAD(key)
		clear(key)
		if err != nil {
			return nil, fmt.Errorf("seal: key %q: %w", kid, err)
		}
		k.aeads[kid] = aead
		k.order = append(k.order, kid)
	}
	k.current = k.order[0]
	return k, nil
}

// LoadKeyring reads a keyring spec from the environment variable name, or
// from the file named by name+"_FILE" (the usual way to mount a secret). It is
// an error if both or neither are set. getenv is os.Getenv in production.
func LoadKeyring(name string, getenv func(string) string) (*Keyring, error) {
	inline, file := getenv(name), getenv(name+"_FILE")
	switch {
	case inline != "" && file != "":
		return nil, fmt.Errorf("%w: %s", errBothSources, name)
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			// The path is not secret; the content never reaches the error.
			return nil, fmt.Errorf("seal: read %s_FILE: %w", name, err)
		}
		defer clear(b)
		k, err := ParseKeyring(string(b))
		if err != nil {
			return nil, fmt.Errorf("%s_FILE: %w", name, err)
		}
		return k, nil
	case inline != "":
		k, err := ParseKeyring(inline)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return k, nil
	default:
		return nil, fmt.Errorf("seal: neither %s nor %s_FILE is set", name, name)
	}
}

func decodeKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != keyLen {
				n := len(b)
				clear(b)
				return nil, fmt.Errorf("key is %d bytes, want %d", n, keyLen)
			}
			return b, nil
		}
	}
	return nil, errors.New("key is not valid base64")
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, errors.New("cannot create AES cipher")
	}
	return cipher.NewGCM(block)
}

// CurrentKeyID is the ID of the key Seal uses.
func (k *Keyring) CurrentKeyID() string { return k.current }

// KeyIDs lists the key IDs, current first.
func (k *Keyring) KeyIDs() []string { return append([]string(nil), k.order...) }

// Seal encrypts plaintext under the current key, bound to associatedData.
func (k *Keyring) Seal(plaintext, associatedData []byte) ([]byte, error) {
	if k == nil || k.current == "" {
		return nil, errNilKeyring
	}
	aead := k.aeads[k.current]
	hdr := header(k.current)
	out := make([]byte, len(hdr), len(hdr)+nonceLen+len(plaintext)+tagLen)
	copy(out, hdr)
	nonce := out[len(hdr) : len(hdr)+nonceLen]
	out = out[:len(hdr)+nonceLen]
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		return nil, errors.New("seal: cannot read random nonce")
	}
	return aead.Seal(out, nonce, plaintext, additional(hdr, associatedData)), nil
}

// Open decrypts a blob made by Seal with any key of the ring, checking it was
// sealed with the same associatedData. It never panics on arbitrary input.
func (k *Keyring) Open(blob, associatedData []byte) ([]byte, error) {
	if k == nil {
		return nil, errNilKeyring
	}
	kid, rest, err := parse(blob)
	if err != nil {
		return nil, err
	}
	aead, ok := k.aeads[kid]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownKey, kid)
	}
	hdr := blob[:len(blob)-len(rest)]
	pt, err := aead.Open(nil, rest[:nonceLen], rest[nonceLen:], additional(hdr, associatedData))
	if err != nil {
		return nil, ErrAuthFailed
	}
	return pt, nil
}

// KeyID returns the ID of the key a blob was sealed with, without opening it,
// so a rotation job can find blobs that still use an old key.
func KeyID(blob []byte) (string, error) {
	kid, _, err := parse(blob)
	return kid, err
}

// NeedsReseal reports whether blob was sealed with a key other than the current one.
func (k *Keyring) NeedsReseal(blob []byte) (bool, error) {
	kid, err := KeyID(blob)
	if err != nil {
		return false, err
	}
	return kid != k.current, nil
}

// parse splits a blob into its key ID and nonce+ciphertext.
func parse(blob []byte) (kid string, rest []byte, err error) {
	if len(blob) < 2 || blob[0] != version1 {
		return "", nil, ErrMalformed
	}
	n := int(blob[1])
	if n == 0 || n > maxKIDLen || len(blob) < 2+n+nonceLen+tagLen {
		return "", nil, ErrMalformed
	}
	kid = string(blob[2 : 2+n])
	if !kidRe.MatchString(kid) {
		return "", nil, ErrMalformed
	}
	return kid, blob[2+n:], nil
}

func header(kid string) []byte {
	h := make([]byte, 0, 2+len(kid))
	h = append(h, version1, byte(len(kid)))
	return append(h, kid...)
}

func additional(hdr, ad []byte) []byte {
	out := make([]byte, 0, len(hdr)+len(ad))
	return append(append(out, hdr...), ad...)
}

// AssociatedData builds unambiguous associated data from parts (each is
// length-prefixed, so ("ab","c") and ("a","bc") differ). Use it to bind a blob
// to its row: AssociatedData("tenant", tenantID, "account-seed").
func AssociatedData(parts ...string) []byte {
	var out []byte
	for _, p := range parts {
		out = binary.AppendUvarint(out, uint64(len(p)))
		out = append(out, p...)
	}
	return out
}

// String describes the keyring by key IDs only.
func (k *Keyring) String() string {
	if k == nil {
		return "seal.Keyring(nil)"
	}
	return fmt.Sprintf("seal.Keyring{current: %s, keys: %s}", k.current, strings.Join(k.order, ","))
}

// Format makes every fmt verb (%v, %+v, %#v, %x ...) print String, so a
// keyring logged by mistake shows no key material.
func (k *Keyring) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, k.String()) }

// LogValue keeps key material out of slog output.
func (k *Keyring) LogValue() slog.Value { return slog.StringValue(k.String()) }
