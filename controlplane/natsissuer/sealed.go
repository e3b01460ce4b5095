package natsissuer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/fleetplane/fleetplane/internal/natsauth"
)

// The plaintext of a sealed blob is a small JSON document:
//
//	{"v":1,"keys":{"<role>":[{"pub":"<public key>","seed":"<seed>"}, ...], ...}}
//
// Public keys sit next to their seeds so that, once the blob has opened (the
// AEAD proves it is the one sealed for this row), a caller can match a role
// key against the row's public keys without deriving it from the seed (an
// ed25519 key derivation, ~25 µs, on every signature).
//
// The document is written by hand rather than with json.Marshal: Marshal
// builds its output in a pooled buffer that keeps a copy of the seeds after
// the call, out of reach of Wipe. Seeds and public keys are base32
// (A-Z, 2-7), so they need no escaping; sealKeys checks that. Decoding uses
// json.Unmarshal, which hands seedBytes.UnmarshalJSON a slice of the input;
// the seed is copied once into a slice this package wipes.
const sealedVersion = 1

// Roles in the sealed documents.
const (
	roleOperator        = "operator"
	roleOperatorSigning = "operator_signing"
	roleSystem          = "system"
	roleSystemSigning   = "system_signing"
	roleAccount         = "account"
	roleVehicle         = natsauth.RoleVehicle
	roleGrant           = natsauth.RoleGrant
	roleService         = natsauth.RoleService
)

// roleKeys is one role's keys in a sealed document, in order.
type roleKeys struct {
	role string
	keys []natsauth.Key
}

// encodeKeys writes the plaintext document. The caller wipes the result.
func encodeKeys(roles []roleKeys) ([]byte, error) {
	size := 32
	for _, r := range roles {
		size += len(r.role) + 8
		for _, k := range r.keys {
			size += len(k.Public) + len(k.Seed) + 24
		}
	}
	b := make([]byte, 0, size) // sized so append never reallocates (and leaves no copy behind)
	b = fmt.Appendf(b, `{"v":%d,"keys":{`, sealedVersion)
	for i, r := range roles {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, r.role...)
		b = append(b, `":[`...)
		for j, k := range r.keys {
			if !isBase32(k.Public) || !isBase32(k.Seed) {
				clear(b)
				return nil, fmt.Errorf("natsissuer: %s key %d is not an nkey", r.role, j)
			}
			if j > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"pub":"`...)
			b = append(b, k.Public...)
			b = append(b, `","seed":"`...)
			b = append(b, k.Seed...)
			b = append(b, `"}`...)
		}
		b = append(b, ']')
	}
	b = append(b, "}}"...)
	return b, nil
}

func isBase32[T string | []byte](s T) bool {
	if len(s) == 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'A' || c > 'Z') && (c < '2' || c > '7') {
			return false
		}
	}
	return true
}

// seedBytes decodes a JSON string into a private copy that Wipe clears.
type seedBytes []byte

func (s *seedBytes) UnmarshalJSON(b []byte) error {
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' || !isBase32(b[1:len(b)-1]) {
		return errors.New("seed is not a base32 string") // never echo b
	}
	*s = bytes.Clone(b[1 : len(b)-1])
	return nil
}

type sealedKey struct {
	Public string    `json:"pub"`
	Seed   seedBytes `json:"seed"`
}

// sealedDoc is a decoded plaintext document.
type sealedDoc struct {
	Version int                    `json:"v"`
	Keys    map[string][]sealedKey `json:"keys"`
}

// decodeKeys parses a plaintext document and wipes it.
func decodeKeys(plain []byte) (*sealedDoc, error) {
	defer clear(plain)
	var d sealedDoc
	if err := json.Unmarshal(plain, &d); err != nil {
		d.wipe()
		// A json.SyntaxError carries only an offset; an UnmarshalTypeError
		// names a field. Neither quotes the input, but keep to a fixed text.
		return nil, errors.New("natsissuer: sealed keys: malformed document")
	}
	if d.Version != sealedVersion {
		d.wipe()
		return nil, fmt.Errorf("natsissuer: sealed keys: unknown version %d", d.Version)
	}
	return &d, nil
}

// key returns the only (or first) key of role. The Key shares the document's
// seed: wipe the document, not the key.
func (d *sealedDoc) key(role string) (natsauth.Key, error) {
	ks := d.Keys[role]
	if len(ks) == 0 || len(ks[0].Seed) == 0 {
		return natsauth.Key{}, fmt.Errorf("natsissuer: sealed keys: no %s key", role)
	}
	return natsauth.Key{Public: ks[0].Public, Seed: ks[0].Seed}, nil
}

// keyFor returns role's key with public key pub.
func (d *sealedDoc) keyFor(role, pub string) (natsauth.Key, error) {
	i := slices.IndexFunc(d.Keys[role], func(k sealedKey) bool { return k.Public == pub })
	if i < 0 || len(d.Keys[role][i].Seed) == 0 {
		return natsauth.Key{}, fmt.Errorf("natsissuer: sealed keys: no %s key %s", role, show(pub))
	}
	k := d.Keys[role][i]
	return natsauth.Key{Public: k.Public, Seed: k.Seed}, nil
}

func (d *sealedDoc) wipe() {
	for _, ks := range d.Keys {
		for _, k := range ks {
			clear(k.Seed)
		}
	}
}
