package api

import (
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// query reads and validates the query parameters of one request. Problems
// accumulate; err returns them as one EINVALID error naming each parameter.
type query struct {
	values url.Values
	v      controlplane.ValidationError
}

// maxQueryValueLen bounds every query value: nothing the API takes is longer.
const maxQueryValueLen = 1024

// newQuery parses r's query string and refuses parameters not in allowed
// (a misspelt filter must not silently return everything) and parameters
// given twice.
func newQuery(r *http.Request, allowed ...string) *query {
	q := &query{}
	values, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		q.v.Add("query", "malformed query string")
		return q
	}
	q.values = values
	names := make([]string, 0, len(values))
	for name := range values {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		switch vs := values[name]; {
		case !slices.Contains(allowed, name):
			if len(allowed) == 0 {
				q.v.Add(name, "unknown query parameter; this endpoint takes none")
			} else {
				q.v.Add(name, "unknown query parameter; expected one of %s", strings.Join(allowed, ", "))
			}
		case len(vs) > 1:
			q.v.Add(name, "given more than once")
		case len(vs[0]) > maxQueryValueLen:
			q.v.Add(name, "must be at most %d bytes", maxQueryValueLen)
		case !utf8.ValidString(vs[0]) || strings.ContainsFunc(vs[0], func(r rune) bool { return r < 0x20 || r == 0x7f }):
			q.v.Add(name, "must be printable UTF-8")
		}
	}
	return q
}

// str returns the value of name ("" when absent or invalid).
func (q *query) str(name string) string {
	if q.values == nil || len(q.values[name]) != 1 {
		return ""
	}
	s := q.values[name][0]
	if len(s) > maxQueryValueLen || !utf8.ValidString(s) {
		return ""
	}
	return s
}

// has reports whether name was given.
func (q *query) has(name string) bool { return q.values != nil && len(q.values[name]) > 0 }

// text returns a free-text filter of at most maxLen characters.
func (q *query) text(name string, maxLen int) string {
	s := q.str(name)
	if q.has(name) && s == "" {
		q.v.Add(name, "must not be empty")
	} else if utf8.RuneCountInString(s) > maxLen {
		q.v.Add(name, "must be at most %d characters", maxLen)
	}
	return s
}

// page returns the cursor and limit parameters.
func (q *query) page() controlplane.PageRequest {
	var p controlplane.PageRequest
	if q.has("cursor") {
		p.Cursor = q.str("cursor")
		if p.Cursor == "" {
			q.v.Add("cursor", "must not be empty; omit it for the first page")
		}
	}
	if q.has("limit") {
		n, err := strconv.Atoi(q.str("limit"))
		if err != nil || n < 1 || n > controlplane.MaxPageLimit {
			q.v.Add("limit", "must be an integer between 1 and %d", controlplane.MaxPageLimit)
		} else {
			p.Limit = n
		}
	}
	return p
}

// boolean returns a true/false parameter (false when absent).
func (q *query) boolean(name string) bool {
	if !q.has(name) {
		return false
	}
	switch q.str(name) {
	case "true", "1":
		return true
	case "false", "0":
		return false
	}
	q.v.Add(name, "must be true or false")
	return false
}

// time returns an RFC 3339 time parameter (nil when absent).
func (q *query) time(name string) *time.Time {
	if !q.has(name) {
		return nil
	}
	t, err := time.Parse(time.RFC3339, q.str(name))
	if err != nil {
		q.v.Add(name, "must be an RFC 3339 date-time such as 2025-01-02T15:04:05Z (encode '+' as %%2B)")
		return nil
	}
	return &t
}

func (q *query) err() error { return q.v.Err() }

// pathParam returns a path parameter, unescaped. chi matches the raw
// (escaped) path when the URL has one, so "a%2Fb" arrives escaped.
func pathParam(r *http.Request, name string) string {
	v := chi.URLParam(r, name)
	if r.URL.RawPath != "" {
		if u, err := url.PathUnescape(v); err == nil {
			v = u
		}
	}
	return v
}

var apiKeyIDRe = regexp.MustCompile(`^[a-z2-7]{16}$`)
