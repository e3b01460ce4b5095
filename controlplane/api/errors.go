package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/httpx"
)

// Error codes of HTTP-only problems, which the domain never returns.
const (
	codeMethodNotAllowed     = "method_not_allowed"
	codeUnsupportedMediaType = "unsupported_media_type"
)

// statusOf is the one table from error codes to HTTP status.
var statusOf = map[string]int{
	controlplane.EINVALID:         http.StatusBadRequest,
	controlplane.EUNAUTHORIZED:    http.StatusUnauthorized,
	controlplane.EPAYMENTREQUIRED: http.StatusPaymentRequired,
	controlplane.EFORBIDDEN:       http.StatusForbidden,
	controlplane.ENOTFOUND:        http.StatusNotFound,
	codeMethodNotAllowed:          http.StatusMethodNotAllowed,
	controlplane.ECONFLICT:        http.StatusConflict,
	controlplane.ETOOLARGE:        http.StatusRequestEntityTooLarge,
	codeUnsupportedMediaType:      http.StatusUnsupportedMediaType,
	controlplane.EUNPROCESSABLE:   http.StatusUnprocessableEntity,
	controlplane.ERATELIMIT:       http.StatusTooManyRequests,
	controlplane.EINTERNAL:        http.StatusInternalServerError,
	controlplane.EUNAVAILABLE:     http.StatusServiceUnavailable,
	controlplane.ENOTIMPLEMENTED:  http.StatusNotImplemented,
	controlplane.ETIMEOUT:         http.StatusGatewayTimeout,
}

const problemContentType = "application/problem+json"

// writeError writes err as problem+json. Errors that carry no code are bugs
// or failures of a dependency: they are logged with the request ID and
// shown as "internal error" only.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := controlplane.ErrorCode(err)
	msg := controlplane.ErrorMessage(err)
	status, known := statusOf[code]
	if !known {
		status, msg = http.StatusInternalServerError, "internal error"
	}
	ri := requestInfoFrom(r.Context())
	if status >= 500 && status != http.StatusServiceUnavailable && status != http.StatusGatewayTimeout {
		s.log.ErrorContext(r.Context(), "request failed", "request_id", ri.id, "method", r.Method,
			"route", routePattern(r), "tenant", ri.tenant, "err", err)
	}
	var fields []controlplane.FieldError
	var e *controlplane.Error
	if errors.As(err, &e) {
		fields = e.Fields
	}
	if status == http.StatusUnauthorized {
		// RFC 6750 §3: say which scheme, and whether a presented token was bad.
		challenge := `Bearer realm="fleetplane"`
		if r.Header.Get("Authorization") != "" {
			challenge += `, error="invalid_token"`
		}
		w.Header().Set("WWW-Authenticate", challenge)
	}
	s.writeProblem(w, r, status, code, msg, fields)
}

func (s *server) writeProblem(w http.ResponseWriter, r *http.Request, status int, code, detail string, fields []controlplane.FieldError) {
	body := s.problemBody(r, status, code, detail, fields)
	w.Header().Set("Content-Type", problemContentType)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// problemBody encodes a problem+json body for a response to r.
func (s *server) problemBody(r *http.Request, status int, code, detail string, fields []controlplane.FieldError) []byte {
	if _, known := statusOf[code]; !known {
		code = controlplane.EINTERNAL
	}
	path := r.URL.Path
	p := Problem{
		Type:      "urn:fleetplane:problem:" + code,
		Title:     http.StatusText(status),
		Status:    status,
		Detail:    detail,
		Instance:  &path,
		RequestId: requestInfoFrom(r.Context()).id,
		Code:      ProblemCode(code),
	}
	if len(fields) > 0 {
		fe := make([]FieldError, len(fields))
		for i, f := range fields {
			fe[i] = FieldError{Field: f.Field, Message: f.Message}
		}
		p.Errors = &fe
	}
	var body bytes.Buffer
	enc := json.NewEncoder(&body) // as writeJSON: subjects in details keep their '>'
	enc.SetEscapeHTML(false)
	if err := enc.Encode(p); err != nil { // cannot happen: Problem holds strings and ints only
		s.log.ErrorContext(r.Context(), "encoding problem failed", "err", err)
		return []byte(`{"type":"urn:fleetplane:problem:internal","title":"Internal Server Error","status":500,"detail":"internal error","request_id":"","code":"internal"}` + "\n")
	}
	return body.Bytes()
}

// writeJSON writes v as the JSON response body with the given status.
// '<', '>' and '&' stay as they are: NATS subjects are full of '>', and
// the body is never HTML (nosniff is set on every response).
func writeJSON(w http.ResponseWriter, status int, v any) error {
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil { // Encode adds the final newline
		return fmt.Errorf("encoding response: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body.Bytes())
	return nil
}

// decode reads the JSON request body into v (see httpx.DecodeJSON) and
// turns its errors into coded ones.
func (s *server) decode(w http.ResponseWriter, r *http.Request, v any) error {
	err := httpx.DecodeJSON(w, r, s.opts.MaxBodyBytes, v)
	var he *httpx.Error
	if !errors.As(err, &he) {
		return err
	}
	switch he.Status {
	case http.StatusRequestEntityTooLarge:
		return controlplane.Errorf(controlplane.ETOOLARGE, "%s", he.Detail)
	case http.StatusUnsupportedMediaType:
		return controlplane.Errorf(codeUnsupportedMediaType, "%s", he.Detail)
	}
	e := controlplane.Errorf(controlplane.EINVALID, "%s", he.Detail)
	if he.Field != "" {
		e.Fields = []controlplane.FieldError{{Field: he.Field, Message: strings.TrimPrefix(he.Detail, he.Field+": ")}}
	}
	return e
}

func (s *server) notFound(w http.ResponseWriter, r *http.Request) error {
	return controlplane.Errorf(controlplane.ENOTFOUND, "no such endpoint: %s %s", r.Method, r.URL.Path)
}

func (s *server) methodNotAllowed(w http.ResponseWriter, r *http.Request) error {
	path := r.URL.Path
	if r.URL.RawPath != "" {
		path = r.URL.RawPath // chi routes on the raw path when there is one
	}
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		if s.mux.Match(chi.NewRouteContext(), m, path) {
			allowed = append(allowed, m)
		}
	}
	if len(allowed) == 0 {
		return s.notFound(w, r)
	}
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	return controlplane.Errorf(codeMethodNotAllowed, "method %s is not allowed on %s; allowed: %s",
		r.Method, r.URL.Path, strings.Join(allowed, ", "))
}
