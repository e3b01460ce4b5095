package controlplane_test

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Vehicle IDs and environments become NATS subject tokens
// (fleet.<env>.veh.<vid>.state.<kind>) and slugs appear in URLs. These
// fuzzers check the validators against the documented rules, written out
// again by hand, and against what a subject token may hold.

var identSeeds = []string{
	"", "a", "A", "0", "-", "_", "a-b", "a_b", "a.b", "a b", "a*", ">", "a>", "*", "prod", "staging-eu",
	"drone-01", "Drone_01", "-a", "a-", "ä", "✈", "a\u0000", "a\tb", "a\nb", "a\u00a0b", "a\u2028b",
	strings.Repeat("a", 32), strings.Repeat("a", 33), strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("a", 65),
	"fleet.>", "veh.*.state", "\xff", "a\r", "A-Z", "a--b", "a__b",
}

// natsLiteralToken reports whether s can stand as one token of a literal
// NATS subject: non-empty, no separator, no wildcard, no whitespace (the
// server refuses subjects with " \t\n\r\f"), valid UTF-8.
func natsLiteralToken(s string) bool {
	return s != "" && utf8.ValidString(s) && !strings.ContainsAny(s, ".*> \t\n\r\f")
}

// checkToken asserts the properties every accepted identifier must have.
func checkToken(t *testing.T, kind, s string, maxLen int) {
	t.Helper()
	if len(s) > maxLen {
		t.Fatalf("%s %q accepted with %d bytes (max %d)", kind, s, len(s), maxLen)
	}
	if strings.ContainsAny(s, ".*>") || strings.ContainsFunc(s, unicode.IsSpace) {
		t.Fatalf("%s %q accepted with a separator, wildcard or whitespace", kind, s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf || s[i] < 0x20 {
			t.Fatalf("%s %q accepted with a non-ASCII or control byte", kind, s)
		}
	}
	if !natsLiteralToken(s) {
		t.Fatalf("%s %q accepted but is not a valid NATS subject token", kind, s)
	}
	// It stays exactly one token inside a real subject.
	subject := "fleet." + s + ".veh." + s + ".state.position"
	if n := len(strings.Split(subject, ".")); n != 6 {
		t.Fatalf("%s %q makes subject %q of %d tokens, want 6", kind, s, subject, n)
	}
}

func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

func isAlnum(c byte) bool { return isLowerAlnum(c) || 'A' <= c && c <= 'Z' }

// allBytes reports whether every byte of s satisfies ok.
func allBytes(s string, ok func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

func FuzzValidVehicleID(f *testing.F) {
	for _, s := range identSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := controlplane.ValidVehicleID(s)
		// 1-64 characters of A-Z, a-z, 0-9, '_' and '-'.
		want := len(s) >= 1 && len(s) <= 64 && allBytes(s, func(c byte) bool { return isAlnum(c) || c == '_' || c == '-' })
		if got != want {
			t.Fatalf("ValidVehicleID(%q) = %v, want %v", s, got, want)
		}
		if got {
			checkToken(t, "vehicle ID", s, 64)
		}
	})
}

func FuzzValidSlug(f *testing.F) {
	for _, s := range identSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := controlplane.ValidSlug(s)
		// 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit.
		want := len(s) >= 1 && len(s) <= 63 && isLowerAlnum(s[0]) && isLowerAlnum(s[len(s)-1]) &&
			allBytes(s, func(c byte) bool { return isLowerAlnum(c) || c == '-' })
		if got != want {
			t.Fatalf("ValidSlug(%q) = %v, want %v", s, got, want)
		}
		if got {
			checkToken(t, "slug", s, 63)
			if strings.ContainsAny(s, "/?#%&=+") {
				t.Fatalf("slug %q needs escaping in a URL", s)
			}
		}
	})
}

func FuzzValidEnvironment(f *testing.F) {
	for _, s := range identSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := controlplane.ValidEnvironment(s)
		// 1-32 characters of a-z, 0-9, '_' and '-', starting and ending with a letter or digit.
		want := len(s) >= 1 && len(s) <= 32 && isLowerAlnum(s[0]) && isLowerAlnum(s[len(s)-1]) &&
			allBytes(s, func(c byte) bool { return isLowerAlnum(c) || c == '-' || c == '_' })
		if got != want {
			t.Fatalf("ValidEnvironment(%q) = %v, want %v", s, got, want)
		}
		if got {
			checkToken(t, "environment", s, 32)
		}
	})
}
