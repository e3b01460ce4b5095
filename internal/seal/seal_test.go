package seal

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func mustKeyring(tb testing.TB, spec string) *Keyring {
	tb.Helper()
	k, err := ParseKeyring(spec)
	if err != nil {
		tb.Fatalf("ParseKeyring: %v", err)
	}
	return k
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	k := mustKeyring(t, "k1:"+GenerateKey())
	ad := AssociatedData("tenant", "7f1c", "account-seed")
	for _, pt := range [][]byte{nil, {}, []byte("SAAJ…seed"), bytes.Repeat([]byte{0xAB}, 4096)} {
		blob, err := k.Seal(pt, ad)
		if err != nil {
			t.Fatal(err)
		}
		if len(pt) > 8 && bytes.Contains(blob, pt[:8]) {
			t.Fatal("blob contains plaintext")
		}
		got, err := k.Open(blob, ad)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatalf("round trip: got %x, want %x", got, pt)
		}
	}
	a, _ := k.Seal([]byte("x"), ad)
	b, _ := k.Seal([]byte("x"), ad)
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same plaintext are equal (nonce reuse)")
	}
}

func TestRotation(t *testing.T) {
	t.Parallel()
	oldKey, newKey := GenerateKey(), GenerateKey()
	before := mustKeyring(t, "2025a:"+oldKey)
	ad := AssociatedData("tenant", "t1", "op-signing-seed")
	oldBlob, err := before.Seal([]byte("old secret"), ad)
	if err != nil {
		t.Fatal(err)
	}

	after := mustKeyring(t, " 2026b:"+newKey+" ,\n2025a:"+oldKey+"\n")
	if after.CurrentKeyID() != "2026b" {
		t.Fatalf("current = %q", after.CurrentKeyID())
	}
	if got, err := after.Open(oldBlob, ad); err != nil || string(got) != "old secret" {
		t.Fatalf("old blob after rotation: %q, %v", got, err)
	}
	if need, err := after.NeedsReseal(oldBlob); err != nil || !need {
		t.Fatalf("NeedsReseal(old) = %v, %v", need, err)
	}
	newBlob, err := after.Seal([]byte("new secret"), ad)
	if err != nil {
		t.Fatal(err)
	}
	if kid, _ := KeyID(newBlob); kid != "2026b" {
		t.Fatalf("new blob kid = %q", kid)
	}
	if need, _ := after.NeedsReseal(newBlob); need {
		t.Fatal("NeedsReseal(new) = true")
	}
	// The old keyring cannot open what the new key sealed.
	if _, err := before.Open(newBlob, ad); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("old ring on new blob: %v, want ErrUnknownKey", err)
	}
	// Retiring the old key makes old blobs unknown, not "tampered".
	retired := mustKeyring(t, "2026b:"+newKey)
	if _, err := retired.Open(oldBlob, ad); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("retired key: %v, want ErrUnknownKey", err)
	}
	// The same kid with a different key is an authentication failure.
	impostor := mustKeyring(t, "2025a:"+GenerateKey())
	if _, err := impostor.Open(oldBlob, ad); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong key under same kid: %v, want ErrAuthFailed", err)
	}
}

func TestWrongAssociatedData(t *testing.T) {
	t.Parallel()
	k := mustKeyring(t, "k1:"+GenerateKey())
	blob, err := k.Seal([]byte("seed"), AssociatedData("tenant", "A", "account-seed"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ad := range [][]byte{
		nil,
		AssociatedData("tenant", "B", "account-seed"),
		AssociatedData("tenant", "A", "vehicle-signing-seed"),
		AssociatedData("tenantA", "", "account-seed"),
		[]byte("tenantAaccount-seed"),
	} {
		if _, err := k.Open(blob, ad); !errors.Is(err, ErrAuthFailed) {
			t.Errorf("Open with ad %q: %v, want ErrAuthFailed", ad, err)
		}
	}
	if bytes.Equal(AssociatedData("ab", "c"), AssociatedData("a", "bc")) {
		t.Fatal("AssociatedData is ambiguous")
	}
}

func TestTampering(t *testing.T) {
	t.Parallel()
	k := mustKeyring(t, "k1:"+GenerateKey()+",k2:"+GenerateKey())
	ad := []byte("row-1")
	blob, err := k.Seal([]byte("a seed that matters"), ad)
	if err != nil {
		t.Fatal(err)
	}
	for i := range blob {
		for _, bit := range []byte{0x01, 0x80} {
			mod := bytes.Clone(blob)
			mod[i] ^= bit
			if pt, err := k.Open(mod, ad); err == nil {
				t.Fatalf("flipping bit %#x of byte %d still opened: %q", bit, i, pt)
			}
		}
	}
	// Changing the kid to the other key of the ring must not open either.
	mod := bytes.Clone(blob)
	copy(mod[2:4], "k2")
	if _, err := k.Open(mod, ad); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("kid swap: %v, want ErrAuthFailed", err)
	}
	for _, n := range []int{0, 1, 2, 4, 4 + nonceLen, len(blob) - 1} {
		if _, err := k.Open(blob[:n], ad); err == nil {
			t.Fatalf("truncated to %d bytes still opened", n)
		}
	}
	if _, err := k.Open(append(bytes.Clone(blob), 0), ad); err == nil {
		t.Fatal("extended blob still opened")
	}
}

func TestUnknownKID(t *testing.T) {
	t.Parallel()
	a := mustKeyring(t, "alpha:"+GenerateKey())
	b := mustKeyring(t, "beta:"+GenerateKey())
	blob, _ := a.Seal([]byte("x"), nil)
	_, err := b.Open(blob, nil)
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), `"alpha"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestParseKeyringRejects(t *testing.T) {
	t.Parallel()
	good := GenerateKey()
	raw, _ := base64.StdEncoding.DecodeString(good)
	short := base64.StdEncoding.EncodeToString(raw[:16])
	for name, spec := range map[string]string{
		"empty":        "",
		"blank":        " \n",
		"no colon":     "k1" + good,
		"empty kid":    ":" + good,
		"bad kid":      "k 1:" + good,
		"dotted kid":   "k.1:" + good,
		"long kid":     strings.Repeat("k", 33) + ":" + good,
		"not base64":   "k1:%%%%",
		"short key":    "k1:" + short,
		"long key":     "k1:" + base64.StdEncoding.EncodeToString(append(raw, 1)),
		"duplicate":    "k1:" + good + ",k1:" + GenerateKey(),
		"empty entry":  "k1:" + good + ",",
		"empty key":    "k1:",
		"double colon": "k1::" + good,
	} {
		k, err := ParseKeyring(spec)
		if err == nil {
			t.Errorf("%s: ParseKeyring(%q) accepted: %v", name, spec, k)
			continue
		}
		if strings.Contains(err.Error(), good) || strings.Contains(err.Error(), short) {
			t.Errorf("%s: error leaks key material: %v", name, err)
		}
	}
	// All base64 variants of a key are accepted.
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if _, err := ParseKeyring("k1:" + enc.EncodeToString(raw)); err != nil {
			t.Errorf("encoding %v: %v", enc, err)
		}
	}
}

func TestKeyringNeverPrintsKeys(t *testing.T) {
	t.Parallel()
	key := GenerateKey()
	raw, _ := base64.StdEncoding.DecodeString(key)
	k := mustKeyring(t, "k1:"+key)
	var logBuf bytes.Buffer
	slog.New(slog.NewTextHandler(&logBuf, nil)).Info("ring", "k", k)
	outputs := []string{logBuf.String()}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%d", "%q"} {
		outputs = append(outputs, fmt.Sprintf(verb, k), fmt.Sprintf(verb, *k))
	}
	for _, out := range outputs {
		if strings.Contains(out, key) || strings.Contains(out, fmt.Sprintf("%x", raw[:8])) || bytes.Contains([]byte(out), raw[:8]) {
			t.Fatalf("key material in output %q", out)
		}
	}
}

func TestLoadKeyring(t *testing.T) {
	t.Parallel()
	spec := "k1:" + GenerateKey()
	file := filepath.Join(t.TempDir(), "master.key")
	if err := os.WriteFile(file, []byte(spec+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	if k, err := LoadKeyring("FP_KEYS", env(map[string]string{"FP_KEYS": spec})); err != nil || k.CurrentKeyID() != "k1" {
		t.Fatalf("inline: %v, %v", k, err)
	}
	if k, err := LoadKeyring("FP_KEYS", env(map[string]string{"FP_KEYS_FILE": file})); err != nil || k.CurrentKeyID() != "k1" {
		t.Fatalf("file: %v, %v", k, err)
	}
	for name, m := range map[string]map[string]string{
		"neither": {},
		"both":    {"FP_KEYS": spec, "FP_KEYS_FILE": file},
		"missing": {"FP_KEYS_FILE": file + ".nope"},
		"bad":     {"FP_KEYS": "k1:nope"},
	} {
		if _, err := LoadKeyring("FP_KEYS", env(m)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzOpen(f *testing.F) {
	k, err := ParseKeyring("k1:" + GenerateKey() + ",k2:" + GenerateKey())
	if err != nil {
		f.Fatal(err)
	}
	good, _ := k.Seal([]byte("seed"), []byte("ad"))
	f.Add(good, []byte("ad"))
	f.Add([]byte{}, []byte{})
	f.Add([]byte{version1}, []byte(nil))
	f.Add([]byte{version1, 0xff, 'k'}, []byte(nil))
	f.Add(append([]byte{version1, 2, 'k', '2'}, make([]byte, nonceLen+tagLen)...), []byte("ad"))
	f.Fuzz(func(t *testing.T, blob, ad []byte) {
		pt, err := k.Open(blob, ad)
		if err == nil && !(bytes.Equal(blob, good) && string(ad) == "ad" && string(pt) == "seed") {
			t.Fatalf("forged blob opened: %x", blob)
		}
		_, _ = KeyID(blob)
	})
}

func BenchmarkSealOpen(b *testing.B) {
	k, err := ParseKeyring("k1:" + GenerateKey())
	if err != nil {
		b.Fatal(err)
	}
	seed := bytes.Repeat([]byte("S"), 58) // the size of an nkey seed
	ad := AssociatedData("tenant", "0b9c7f0e-2f4e-4d2b-9d3e-1a2b3c4d5e6f", "account-seed")
	b.ReportAllocs()
	for b.Loop() {
		blob, err := k.Seal(seed, ad)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := k.Open(blob, ad); err != nil {
			b.Fatal(err)
		}
	}
}
