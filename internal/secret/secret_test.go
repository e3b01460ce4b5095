package secret

import (
	"strings"
	"testing"
)

func TestNewParseRoundTrip(t *testing.T) {
	for _, prefix := range []string{APIKeyPrefix, EnrollmentTokenPrefix} {
		id, plain, hash := New(prefix)
		if !strings.HasPrefix(plain, prefix+"_"+id+"_") {
			t.Fatalf("plaintext %q does not start with %s_%s_", plain, prefix, id)
		}
		gotID, s, err := Parse(prefix, plain)
		if err != nil || gotID != id {
			t.Fatalf("Parse(%q) = %q, %v", plain, gotID, err)
		}
		if !Equal(s, hash) {
			t.Fatal("Equal(secret, hash) = false")
		}
		if Equal(s[:len(s)-1]+"a", hash) && !strings.HasSuffix(s, "a") {
			t.Fatal("Equal accepted another secret")
		}
	}
	id1, _, _ := New(APIKeyPrefix)
	id2, _, _ := New(APIKeyPrefix)
	if id1 == id2 {
		t.Fatal("two keys share an ID")
	}
}

func TestParseRejects(t *testing.T) {
	_, good, _ := New(APIKeyPrefix)
	for _, s := range []string{
		"", "fpk", "fpk_", "fpk__", good + "x", good[:len(good)-1], strings.Replace(good, "fpk_", "fpe_", 1),
		strings.ToUpper(good), strings.Replace(good, "_", "-", -1), "fpk_" + strings.Repeat("a", 16) + "_" + strings.Repeat("1", 52),
		good + "_extra",
	} {
		if _, _, err := Parse(APIKeyPrefix, s); err == nil {
			t.Errorf("Parse(%q) accepted a malformed key", s)
		}
	}
}

func FuzzParse(f *testing.F) {
	_, good, _ := New(APIKeyPrefix)
	f.Add(good)
	f.Add("fpk_aaaaaaaaaaaaaaaa_" + strings.Repeat("b", 52))
	f.Add("fpk_\x00_")
	f.Fuzz(func(t *testing.T, s string) {
		id, sec, err := Parse(APIKeyPrefix, s)
		if err != nil {
			return
		}
		// Whatever parses is exactly prefix_id_secret of the expected shape.
		if s != APIKeyPrefix+"_"+id+"_"+sec || len(id) != 16 || len(sec) != 52 {
			t.Fatalf("Parse(%q) = %q, %q", s, id, sec)
		}
		for _, r := range id + sec {
			if !strings.ContainsRune("abcdefghijklmnopqrstuvwxyz234567", r) {
				t.Fatalf("Parse(%q) accepted rune %q", s, r)
			}
		}
	})
}
