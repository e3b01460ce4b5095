package controlplane

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestRoleAtLeast(t *testing.T) {
	order := []Role{RoleViewer, RoleMember, RoleAdmin, RoleOwner}
	for i, r := range order {
		for j, min := range order {
			if got, want := r.AtLeast(min), i >= j; got != want {
				t.Errorf("%s.AtLeast(%s) = %v, want %v", r, min, got, want)
			}
		}
	}
	if Role("root").AtLeast(RoleViewer) || Role("").AtLeast(RoleViewer) {
		t.Error("an unknown role grants something")
	}
}

func TestErrorCodeAndMessage(t *testing.T) {
	coded := Errorf(ENOTFOUND, "fleet %q not found", "x")
	wrapped := fmt.Errorf("context: %w", coded)
	if ErrorCode(wrapped) != ENOTFOUND || ErrorMessage(wrapped) != `fleet "x" not found` {
		t.Errorf("wrapped coded error: %q %q", ErrorCode(wrapped), ErrorMessage(wrapped))
	}
	plain := errors.New("pq: password authentication failed for user secret")
	if ErrorCode(plain) != EINTERNAL || ErrorMessage(plain) != "internal error" {
		t.Errorf("uncoded error leaks: %q %q", ErrorCode(plain), ErrorMessage(plain))
	}
	if ErrorCode(nil) != "" {
		t.Error("ErrorCode(nil) != \"\"")
	}
}

func TestValidationError(t *testing.T) {
	var v ValidationError
	if v.Err() != nil {
		t.Fatal("empty ValidationError is an error")
	}
	v.Add("slug", "is required")
	v.Add("region", "unknown region %q", "mars")
	err := v.Err()
	var e *Error
	if !errors.As(err, &e) || e.Code != EINVALID || len(e.Fields) != 2 || !strings.Contains(e.Message, "slug: is required (and 1 more)") {
		t.Fatalf("Err() = %#v", err)
	}
}

func TestPageCursor(t *testing.T) {
	limit, after, err := PageRequest{Cursor: encodeCursor("drone-07"), Limit: 10}.decode()
	if err != nil || limit != 10 || after != "drone-07" {
		t.Fatalf("decode = %d %q %v", limit, after, err)
	}
	if l, _, _ := (PageRequest{}).decode(); l != DefaultPageLimit {
		t.Errorf("default limit = %d", l)
	}
	for _, p := range []PageRequest{{Limit: -1}, {Limit: MaxPageLimit + 1}, {Cursor: "%%%"}, {Cursor: "Zm9v"}, {Cursor: encodeCursor("x")[1:]}} {
		if _, _, err := p.decode(); ErrorCode(err) != EINVALID {
			t.Errorf("decode(%+v) = %v, want EINVALID", p, err)
		}
	}
	pg := newPage([]string{"a", "b", "c"}, 2, func(s string) string { return s })
	if len(pg.Items) != 2 || pg.NextCursor != encodeCursor("b") {
		t.Errorf("newPage = %+v", pg)
	}
	if pg := newPage[string](nil, 2, func(s string) string { return s }); pg.Items == nil || pg.NextCursor != "" {
		t.Errorf("empty page = %#v", pg)
	}
}

func TestNormalizeEmail(t *testing.T) {
	good := map[string]string{"Ops@Acme.Example": "ops@acme.example", " a.b+c@d.io ": "a.b+c@d.io"}
	for in, want := range good {
		if got, ok := normalizeEmail(in); !ok || got != want {
			t.Errorf("normalizeEmail(%q) = %q, %v", in, got, ok)
		}
	}
	for _, in := range []string{"", "ops", "ops@", "@acme.io", "Ops <ops@acme.io>", "ops@localhost", "a@b@c.io", strings.Repeat("a", 250) + "@x.io"} {
		if got, ok := normalizeEmail(in); ok {
			t.Errorf("normalizeEmail(%q) accepted %q", in, got)
		}
	}
}

func TestIdentifierTables(t *testing.T) {
	vehicleIDs := map[string]bool{
		"drone-01": true, "A_b-9": true, strings.Repeat("a", 64): true,
		"": false, strings.Repeat("a", 65): false, "a.b": false, "a b": false, "a*": false, ">": false, "drøne": false, "a\n": false,
	}
	for s, want := range vehicleIDs {
		if ValidVehicleID(s) != want {
			t.Errorf("ValidVehicleID(%q) = %v", s, !want)
		}
	}
	slugs := map[string]bool{
		"survey": true, "a": true, "a-1": true, strings.Repeat("a", 63): true,
		"": false, "-a": false, "a-": false, "A": false, "a_b": false, "a.b": false, strings.Repeat("a", 64): false,
	}
	for s, want := range slugs {
		if ValidSlug(s) != want {
			t.Errorf("ValidSlug(%q) = %v", s, !want)
		}
	}
	envs := map[string]bool{"prod": true, "staging_2": true, "dev-eu": true, "Prod": false, "a.b": false, "": false, strings.Repeat("a", 33): false}
	for s, want := range envs {
		if ValidEnvironment(s) != want {
			t.Errorf("ValidEnvironment(%q) = %v", s, !want)
		}
	}
}
