package controlplane

import (
	"errors"
	"fmt"
)

// Error codes. Every error the domain returns to a caller carries one; the
// API maps each code to an HTTP status in exactly one place.
const (
	EINVALID         = "invalid"          // the request is malformed or fails validation
	EUNAUTHORIZED    = "unauthorized"     // missing or bad credentials
	EFORBIDDEN       = "forbidden"        // authenticated, but the role does not allow it
	ENOTFOUND        = "not_found"        // no such object in this tenant
	ECONFLICT        = "conflict"         // the object exists, or is in use
	EUNPROCESSABLE   = "unprocessable"    // well-formed, but cannot be applied (e.g. idempotency key reuse)
	EPAYMENTREQUIRED = "payment_required" // the tenant's plan does not allow it
	ETOOLARGE        = "too_large"        // the request body is too large
	ERATELIMIT       = "rate_limited"     // too many requests
	EUNAVAILABLE     = "unavailable"      // a dependency is down
	ETIMEOUT         = "timeout"          // a vehicle did not answer (offline, or not in time)
	ENOTIMPLEMENTED  = "not_implemented"  // the installation does not offer it (e.g. billing off)
	EINTERNAL        = "internal"         // a bug or an unexpected failure; details are logged, never shown
)

// Error is a coded, user-presentable error. Message is safe to show to the
// caller; anything that is not an *Error is reported as "internal error".
type Error struct {
	Code    string
	Message string
	// Fields lists per-field validation problems, when there are any.
	Fields []FieldError
}

// FieldError names one invalid input field (JSON name) and what is wrong with it.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("fleetplane error: code=%s message=%s", e.Code, e.Message)
}

// Errorf returns a coded error with a formatted, user-presentable message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of err, EINTERNAL when it carries none, and ""
// for nil.
func ErrorCode(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the user-presentable message of err, or
// "internal error" when it is not coded.
func ErrorMessage(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// ValidationError collects field errors and turns them into one EINVALID error.
type ValidationError struct{ fields []FieldError }

// Add records a problem with field.
func (v *ValidationError) Add(field, format string, args ...any) {
	v.fields = append(v.fields, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
}

// Err returns nil when nothing was added, else an EINVALID *Error listing the fields.
func (v *ValidationError) Err() error {
	if len(v.fields) == 0 {
		return nil
	}
	msg := v.fields[0].Field + ": " + v.fields[0].Message
	if len(v.fields) > 1 {
		msg += fmt.Sprintf(" (and %d more)", len(v.fields)-1)
	}
	return &Error{Code: EINVALID, Message: msg, Fields: v.fields}
}
