package httpx_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/fleetplane/fleetplane/internal/httpx"
)

type target struct {
	Name    string            `json:"name"`
	Count   *int              `json:"count,omitempty"`
	Enabled *bool             `json:"enabled,omitempty"`
	When    *time.Time        `json:"when,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Tags    []string          `json:"tags,omitempty"`
}

func TestDecodeJSON(t *testing.T) {
	for _, c := range []struct {
		name, ct, body string
		status         int    // 0 = success
		field, detail  string // detail: substring
	}{
		{"ok", "application/json", `{"name":"x","count":2,"labels":{"a":"b"},"tags":["t"]}`, 0, "", ""},
		{"ok charset", "application/json; charset=UTF-8", `{"name":"x"}`, 0, "", ""},
		{"ok whitespace", "application/json", " \n{\"name\":\"x\"}\n ", 0, "", ""},
		{"ok time", "application/json", `{"when":"2025-01-02T03:04:05Z"}`, 0, "", ""},
		{"no content type", "", `{}`, 415, "Content-Type", "missing"},
		{"text", "text/plain", `{}`, 415, "Content-Type", "text/plain"},
		{"json-ish", "application/json-patch+json", `{}`, 415, "Content-Type", "not supported"},
		{"charset", "application/json; charset=utf-16", `{}`, 415, "Content-Type", "charset"},
		{"bad media type", "application/json; =", `{}`, 415, "Content-Type", "not supported"},
		{"empty", "application/json", ``, 400, "", "empty"},
		{"blank", "application/json", "  \n", 400, "", "empty"},
		{"truncated", "application/json", `{"name":"x"`, 400, "", "byte offset 11"},
		{"syntax", "application/json", `{"name":x}`, 400, "", "byte offset 9"},
		{"trailing", "application/json", `{"name":"x"} {}`, 400, "", "exactly one JSON value; found more at byte offset 13"},
		{"trailing garbage", "application/json", `{"name":"x"}garbage`, 400, "", "exactly one"},
		{"array", "application/json", `[]`, 400, "", "not an array"},
		{"null", "application/json", `null`, 400, "", "not null"},
		{"number", "application/json", `12`, 400, "", "not a number"},
		{"unknown", "application/json", `{"nmae":"x"}`, 400, "nmae", "nmae: unknown field; expected one of count, enabled, labels, name, tags, when"},
		{"case", "application/json", `{"Name":"x"}`, 400, "Name", "unknown field"},
		{"duplicate", "application/json", `{"name":"x","name":"y"}`, 400, "name", "duplicate"},
		{"duplicate nested", "application/json", `{"labels":{"a":"1","a":"2"}}`, 400, "labels.a", "labels.a: duplicate key"},
		{"null field", "application/json", `{"name":null}`, 400, "name", "name: must not be null"},
		{"null nested", "application/json", `{"labels":{"a":null}}`, 400, "labels.a", "must not be null"},
		{"null in array", "application/json", `{"tags":["a",null]}`, 400, "tags[1]", "tags[1]: must not be null"},
		{"wrong type", "application/json", `{"name":1}`, 400, "name", "name: expected a string, got a number"},
		{"wrong type bool", "application/json", `{"enabled":"yes"}`, 400, "enabled", "enabled: expected a boolean, got a string"},
		{"wrong type int", "application/json", `{"count":1.5}`, 400, "count", "count: expected an integer, got a number"},
		{"overflow", "application/json", `{"count":99999999999999999999}`, 400, "count", "out of range"},
		{"wrong type map", "application/json", `{"labels":[]}`, 400, "labels", "labels: expected an object, got an array"},
		{"wrong type map value", "application/json", `{"labels":{"a":1}}`, 400, "labels", "labels: expected a string"}, // encoding/json names no map key
		{"wrong type time", "application/json", `{"when":12}`, 400, "when", "when: expected an RFC 3339 date-time string, got a number"},
		{"bad time", "application/json", `{"when":"tomorrow"}`, 400, "when", "when: expected an RFC 3339 date-time"},
		{"invalid utf-8", "application/json", "{\"name\":\"\xff\"}", 400, "", "UTF-8"},
		{"deep", "application/json", `{"tags":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, 400, "", "deeper than 32"},
		{"too large", "application/json", `{"name":"` + strings.Repeat("a", 200) + `"}`, 413, "", "the limit is 128 bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/", strings.NewReader(c.body))
			if c.ct != "" {
				r.Header.Set("Content-Type", c.ct)
			}
			limit := int64(1 << 20)
			if c.status == 413 {
				limit = 128
			}
			var v target
			err := httpx.DecodeJSON(httptest.NewRecorder(), r, limit, &v)
			if c.status == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var he *httpx.Error
			if !errors.As(err, &he) {
				t.Fatalf("error %v (%T), want *httpx.Error", err, err)
			}
			if he.Status != c.status || he.Field != c.field || !strings.Contains(he.Detail, c.detail) {
				t.Errorf("got %d field %q detail %q; want %d field %q detail ~ %q", he.Status, he.Field, he.Detail, c.status, c.field, c.detail)
			}
		})
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{100: "100 bytes", 2048: "2048 bytes (2 KiB)", 1 << 20: "1048576 bytes (1 MiB)", 1<<20 + 1: "1048577 bytes"} {
		if got := httpx.FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// FuzzDecode: whatever the body, Decode returns nil or an *httpx.Error with
// a 400 and a valid UTF-8 detail, never panics, and accepts only bodies that
// are one JSON object which encoding/json itself reads into the target and
// that, re-encoded, decode again to the same value.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"name":"x","count":2,"labels":{"a":"b"},"tags":["t"]}`, `{}`, `{"name":"x"} x`, `[]`, `null`,
		`{"name":"x","name":"y"}`, `{"Name":"x"}`, `{"labels":{"a":null}}`, `{"when":"2025-01-02T03:04:05Z"}`,
		`{"count":1e400}`, "{\"name\":\"\xff\"}", `{"tags":[[[[[[]]]]]]}`, `{"name":"\u0000"}`, ` {"enabled":true} `,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var v target
		err := httpx.Decode(body, &v)
		if err != nil {
			var he *httpx.Error
			if !errors.As(err, &he) {
				t.Fatalf("error %v is %T", err, err)
			}
			if he.Status != http.StatusBadRequest || he.Detail == "" || !utf8.ValidString(he.Detail) {
				t.Fatalf("bad error %+v", he)
			}
			return
		}
		trimmed := bytes.TrimSpace(body)
		if !json.Valid(body) || len(trimmed) == 0 || trimmed[0] != '{' || !utf8.Valid(body) {
			t.Fatalf("accepted %q", body)
		}
		var loose target
		if err := json.Unmarshal(body, &loose); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", body, err)
		}
		again, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var v2 target
		if err := httpx.Decode(again, &v2); err != nil {
			t.Fatalf("re-encoded %s refused: %v", again, err)
		}
		if third, _ := json.Marshal(v2); !bytes.Equal(third, again) {
			t.Fatalf("round trip: %s != %s", third, again)
		}
	})
}
