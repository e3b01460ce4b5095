// Package httpx holds the HTTP helpers Fleetplane's servers share: strict
// decoding of JSON request bodies, with errors precise enough to show to
// the client. It imports only the standard library, so both the control
// plane and the edge may use it.
package httpx

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxDepth is how deeply objects and arrays may nest in a request body. No
// Fleetplane request needs more than three levels; the limit keeps hostile
// bodies cheap to reject.
const MaxDepth = 32

// Error is a request body the server refuses. Detail is safe to show to the
// client and names the offending field when there is one.
type Error struct {
	Status int    // http.StatusBadRequest, StatusRequestEntityTooLarge or StatusUnsupportedMediaType
	Field  string // JSON path of the offending member ("labels.zone"); "" for the body as a whole
	Detail string
}

func (e *Error) Error() string { return e.Detail }

func badRequest(field, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Field: field, Detail: fmt.Sprintf(format, args...)}
}

// DecodeJSON decodes the body of r into v, which must point to a struct or a
// map, and refuses anything but one well-formed JSON object of the right
// shape:
//
//   - Content-Type other than application/json (charset, if given, utf-8): 415;
//   - a body larger than maxBytes (read through http.MaxBytesReader): 413;
//   - an empty body, invalid UTF-8, a JSON syntax error (with its byte offset),
//     anything after the first value, a top-level value that is not an object,
//     nesting deeper than MaxDepth, a duplicate object key, null anywhere,
//     an unknown field, or a value of the wrong type (naming the field and the
//     expected type): 400.
//
// null is refused because no Fleetplane request field is nullable: accepting
// it would blur "absent" and "cleared" in PATCH bodies. Duplicate keys are
// refused because parsers disagree on which one wins.
//
// Every error is an *Error.
func DecodeJSON(w http.ResponseWriter, r *http.Request, maxBytes int64, v any) error {
	if err := CheckContentType(r.Header.Get("Content-Type")); err != nil {
		return err
	}
	if r.Body == nil {
		return badRequest("", "request body is empty; expected a JSON object")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return TooLarge(mbe.Limit)
		}
		return badRequest("", "reading the request body failed: %v", err)
	}
	return Decode(body, v)
}

// TooLarge is the error for a body over limit bytes.
func TooLarge(limit int64) *Error {
	return &Error{Status: http.StatusRequestEntityTooLarge,
		Detail: fmt.Sprintf("request body too large: the limit is %s", FormatBytes(limit))}
}

// FormatBytes writes n as "1048576 bytes (1 MiB)", or "100 bytes".
func FormatBytes(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d bytes (%d MiB)", n, n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d bytes (%d KiB)", n, n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// CheckContentType accepts application/json, optionally with charset=utf-8.
func CheckContentType(ct string) error {
	if ct == "" {
		return &Error{Status: http.StatusUnsupportedMediaType, Field: "Content-Type",
			Detail: "Content-Type header missing: the request body must be application/json"}
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return &Error{Status: http.StatusUnsupportedMediaType, Field: "Content-Type",
			Detail: fmt.Sprintf("Content-Type %s is not supported: the request body must be application/json", strconv.Quote(ct))}
	}
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") {
			return &Error{Status: http.StatusUnsupportedMediaType, Field: "Content-Type",
				Detail: fmt.Sprintf("Content-Type %s is not supported: only charset=utf-8 is accepted", strconv.Quote(ct))}
		}
	}
	return nil
}

// Decode is DecodeJSON for a body already read: the same checks but the
// content type and the size.
func Decode(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return badRequest("", "request body is empty; expected a JSON object")
	}
	if !utf8.Valid(body) {
		return badRequest("", "request body is not valid UTF-8")
	}
	// Syntax first, over the whole body: json.Unmarshal checks all of it
	// before decoding and reports byte offsets, including for trailing data.
	if err := json.Unmarshal(body, new(json.RawMessage)); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			if strings.Contains(se.Error(), "after top-level value") {
				return badRequest("", "request body must contain exactly one JSON value; found more at byte offset %d", se.Offset-1)
			}
			return badRequest("", "request body is not valid JSON at byte offset %d: %s", se.Offset, se.Error())
		}
		return badRequest("", "request body is not valid JSON: %v", err)
	}
	keys, err := scan(body)
	if err != nil {
		return err
	}
	// encoding/json matches keys case-insensitively: {"Slug":..} would
	// fill "slug". Parsers that disagree are a smuggling risk; demand the
	// exact names.
	if fields := fieldNames(reflect.TypeOf(v)); fields != nil {
		for _, k := range keys {
			if !slices.Contains(fields, k) {
				return badRequest(k, "%s: unknown field; expected one of %s", k, strings.Join(fields, ", "))
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err, body, keys, v)
	}
	return nil
}

// scan walks the tokens of a syntactically valid body and refuses what
// encoding/json would silently accept: a top-level non-object, deep nesting,
// duplicate keys and null. It returns the top-level keys in order.
func scan(body []byte) ([]string, error) {
	type frame struct {
		object  bool
		path    string
		keys    map[string]bool
		wantKey bool   // object: the next token is a key or '}'
		member  string // object: path of the current member
		index   int    // array: index of the next element
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var (
		stack   []*frame
		topKeys []string
	)
	next := func() { // a value just ended
		if n := len(stack); n > 0 {
			if top := stack[n-1]; top.object {
				top.wantKey = true
			} else {
				top.index++
			}
		}
	}
	for first := true; ; first = false {
		tok, err := dec.Token()
		if err == io.EOF {
			return topKeys, nil
		} else if err != nil {
			return nil, badRequest("", "request body is not valid JSON at byte offset %d: %v", dec.InputOffset(), err)
		}
		if first {
			if d, ok := tok.(json.Delim); !ok || d != '{' {
				return nil, badRequest("", "request body must be a JSON object, not %s", jsonKind(tok))
			}
		}
		if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].wantKey {
			top := stack[n-1]
			if tok == json.Delim('}') {
				stack = stack[:n-1]
				next()
				continue
			}
			key, _ := tok.(string)
			top.member = joinPath(top.path, key)
			if top.keys[key] {
				return nil, badRequest(top.member, "%s: duplicate key", top.member)
			}
			top.keys[key] = true
			top.wantKey = false
			if n == 1 {
				topKeys = append(topKeys, key)
			}
			continue
		}
		path := ""
		if n := len(stack); n > 0 {
			if top := stack[n-1]; top.object {
				path = top.member
			} else {
				path = top.path + "[" + strconv.Itoa(top.index) + "]"
			}
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if len(stack) >= MaxDepth {
				return nil, badRequest("", "request body nests deeper than %d levels", MaxDepth)
			}
			stack = append(stack, &frame{object: tok == json.Delim('{'), path: path, keys: map[string]bool{}, wantKey: true})
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
			next()
		case nil:
			return nil, badRequest(path, "%s: must not be null; omit the field instead", path)
		default:
			next()
		}
	}
}

func joinPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func jsonKind(tok json.Token) string {
	switch t := tok.(type) {
	case json.Delim:
		if t == '[' {
			return "an array"
		}
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return "a JSON value"
}

// decodeError turns an encoding/json error into an *Error naming the field.
func decodeError(err error, body []byte, keys []string, v any) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		got, literal, _ := strings.Cut(te.Value, " ")
		if got == "number" && isInteger(te.Type) && literal != "" && !strings.ContainsAny(literal, ".eE") {
			return badRequest(te.Field, "%s: number %s is out of range", te.Field, literal)
		}
		if te.Field == "" {
			return badRequest("", "request body must be %s, not %s", expected(te.Type), article(got))
		}
		return badRequest(te.Field, "%s: expected %s, got %s", te.Field, expected(te.Type), article(got))
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if n, uerr := strconv.Unquote(name); uerr == nil {
			name = n
		}
		msg := fmt.Sprintf("%s: unknown field", name)
		if fields := fieldNames(reflect.TypeOf(v)); len(fields) > 0 {
			msg += "; expected one of " + strings.Join(fields, ", ")
		}
		return badRequest(name, "%s", msg)
	}
	// Errors from a type's own UnmarshalJSON (time.Time, ...) do not say
	// which field failed: find it by decoding the top-level members one at
	// a time.
	field, raw := "", json.RawMessage(nil)
	t := reflect.TypeOf(v)
	if t != nil && t.Kind() == reflect.Pointer {
		var members map[string]json.RawMessage
		if json.Unmarshal(body, &members) == nil {
			for _, k := range keys {
				one, _ := json.Marshal(map[string]json.RawMessage{k: members[k]})
				if json.Unmarshal(one, reflect.New(t.Elem()).Interface()) != nil {
					field, raw = k, members[k]
					break
				}
			}
		}
	}
	var pe *time.ParseError
	switch {
	case field == "":
		return badRequest("", "request body has an invalid value: %v", err)
	case fieldType(t, field) == timeType && len(raw) > 0 && raw[0] != '"':
		return badRequest(field, "%s: expected an RFC 3339 date-time string, got %s", field, jsonKindOf(raw))
	case errors.As(err, &pe) || fieldType(t, field) == timeType:
		return badRequest(field, "%s: expected an RFC 3339 date-time such as 2025-01-02T15:04:05Z", field)
	}
	return badRequest(field, "%s: invalid value: %v", field, err)
}

// fieldType returns the type (pointers removed) of the struct field with
// JSON name name, or nil.
func fieldType(t reflect.Type, name string) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	for f := range t.Fields() {
		if n, _, _ := strings.Cut(f.Tag.Get("json"), ","); n == name || (n == "" && f.Name == name) {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			return ft
		}
	}
	return nil
}

// jsonKindOf names the kind of a raw JSON value.
func jsonKindOf(raw json.RawMessage) string {
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

func isInteger(t reflect.Type) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

var timeType = reflect.TypeFor[time.Time]()

// expected describes the JSON that a Go type takes.
func expected(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == timeType {
		return "an RFC 3339 date-time string"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	}
	if isInteger(t) {
		return "an integer"
	}
	return t.String()
}

func article(jsonType string) string {
	switch jsonType {
	case "array", "object":
		return "an " + jsonType
	case "bool":
		return "a boolean"
	case "":
		return "something else"
	}
	return "a " + jsonType
}

// fieldNames lists the JSON names of a struct's fields, sorted.
func fieldNames(t reflect.Type) []string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	var names []string
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}
