package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/httpx"
)

// idempotent makes a POST with an Idempotency-Key safe to retry. The key is
// scoped to the tenant (or, on public routes, see idempotentPublic, to the
// route's scope and the client IP) and bound to a hash of method, path and
// body:
//
//   - first use: the request runs and its response is stored, unless it is
//     a 5xx, whose claim is released so that a retry runs again;
//   - same key, same request, completed: the stored response is replayed
//     byte for byte with Idempotent-Replayed: true;
//   - same key, another request: 422; first request still running: 409.
//
// Without the header the request runs as usual.
//
// A response that carries a secret (signup, new API keys, enrollment
// tokens, grant creds) is never stored: secrets are shown once and kept
// only hashed. For those routes note describes what was created, and a
// replay answers 409 with that note instead of the secret.
func (s *server) idempotent(note secretNote) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler { return s.idempotentHandler(next, "", note) }
}

// idempotentPublic is idempotent for a route without an API key: keys are
// scoped to "<scope>:<client IP>", so that clients behind different
// addresses never share keys and public routes do not share them with
// each other.
func (s *server) idempotentPublic(scope string, note secretNote) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler { return s.idempotentHandler(next, scope, note) }
}

// secretNote turns the body of a 2xx response that holds a secret into
// the detail of the problem replayed in its place. It returns "" when this
// body holds no secret after all (a grant for the holder's own key), which
// is then stored and replayed as it is.
type secretNote func(body []byte) string

func (s *server) idempotentHandler(next http.Handler, publicScope string, note secretNote) http.Handler {
	return s.handle(func(w http.ResponseWriter, r *http.Request) error {
		values, present := r.Header["Idempotency-Key"]
		if !present {
			next.ServeHTTP(w, r)
			return nil
		}
		if len(values) != 1 {
			return controlplane.Errorf(controlplane.EINVALID, "Idempotency-Key: give the header once")
		}
		key := values[0]
		var scope string
		if p := controlplane.PrincipalFromContext(r.Context()); p != nil {
			scope = "tenant:" + p.TenantID
		} else if publicScope != "" {
			scope = publicScope + ":" + requestInfoFrom(r.Context()).clientIP
		} else {
			return errors.New("idempotent: a route without a principal has no public scope")
		}

		var body []byte
		if r.Body != nil {
			var err error
			body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes))
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return controlplane.Errorf(controlplane.ETOOLARGE, "%s", httpx.TooLarge(mbe.Limit).Detail)
			} else if err != nil {
				return controlplane.Errorf(controlplane.EINVALID, "reading the request body failed")
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		h := sha256.New()
		h.Write([]byte(r.Method + "\x00" + r.URL.Path + "\x00"))
		h.Write(body)

		stored, err := s.svc.BeginIdempotent(r.Context(), scope, key, h.Sum(nil))
		switch controlplane.ErrorCode(err) {
		case "":
		case controlplane.EUNPROCESSABLE:
			return controlplane.Errorf(controlplane.EUNPROCESSABLE,
				"Idempotency-Key %q was already used for a different request; use a new key for a new request", key)
		case controlplane.ECONFLICT:
			return controlplane.Errorf(controlplane.ECONFLICT,
				"a request with Idempotency-Key %q is still in progress; retry later", key)
		default:
			return err
		}
		if !stored.Fresh {
			if stored.ContentType != "" {
				w.Header().Set("Content-Type", stored.ContentType)
			}
			if stored.Location != "" {
				w.Header().Set("Location", stored.Location)
			}
			w.Header().Set("Idempotent-Replayed", "true")
			w.WriteHeader(stored.Status)
			_, _ = w.Write(stored.Body)
			return nil
		}

		// Storing the outcome must happen even when the client has gone.
		ctx := context.WithoutCancel(r.Context())
		rec := &recorder{header: http.Header{}}
		func() {
			defer func() {
				if v := recover(); v != nil {
					s.release(ctx, scope, key)
					panic(v)
				}
			}()
			next.ServeHTTP(rec, r)
		}()
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		stored = &controlplane.IdempotentResponse{
			Status:      rec.status,
			ContentType: rec.header.Get("Content-Type"),
			Location:    rec.header.Get("Location"),
			Body:        rec.body.Bytes(),
		}
		if note != nil && rec.status < 300 {
			if detail := note(rec.body.Bytes()); detail != "" {
				stored = &controlplane.IdempotentResponse{
					Status:      http.StatusConflict,
					ContentType: problemContentType,
					Body:        s.problemBody(r, http.StatusConflict, controlplane.ECONFLICT, detail, nil),
				}
			}
		}
		if rec.status >= 500 {
			s.release(ctx, scope, key)
		} else if err := s.svc.CompleteIdempotent(ctx, scope, key, stored); err != nil {
			// The request took effect, so the claim stays (a retry answers
			// 409 until the key expires) rather than risk doing it twice.
			s.log.ErrorContext(ctx, "storing idempotent response failed", "request_id", requestInfoFrom(ctx).id, "err", err)
		}
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.status)
		_, _ = w.Write(rec.body.Bytes())
		return nil
	})
}

func (s *server) release(ctx context.Context, scope, key string) {
	if err := s.svc.ReleaseIdempotent(ctx, scope, key); err != nil {
		s.log.ErrorContext(ctx, "releasing idempotency key failed", "request_id", requestInfoFrom(ctx).id, "err", err)
	}
}

// recorder captures a response so that it can be stored before it is sent.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (rec *recorder) Header() http.Header { return rec.header }

func (rec *recorder) WriteHeader(status int) {
	if rec.status == 0 {
		rec.status = status
	}
}

func (rec *recorder) Write(b []byte) (int, error) {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return rec.body.Write(b)
}

// apiKeyNote is the replay of a request that created an API key.
func apiKeyNote(body []byte) string {
	var k struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(body, &k)
	return fmt.Sprintf("the request with this Idempotency-Key already created API key %s; its secret was shown once, "+
		"in the response to that request, and is not stored. If it was lost, revoke the key (DELETE /v1/api-keys/%s) and create another", k.ID, k.ID)
}

// signupNote is the replay of a signup.
func signupNote(body []byte) string {
	var res struct {
		Tenant struct {
			ID string `json:"id"`
		} `json:"tenant"`
		User struct {
			Email string `json:"email"`
		} `json:"user"`
	}
	_ = json.Unmarshal(body, &res)
	return fmt.Sprintf("the signup with this Idempotency-Key already created tenant %s for %s; its API key secret was shown once, "+
		"in the response to that request, and is not stored. If it was lost, sign in to the portal and create a new API key", res.Tenant.ID, res.User.Email)
}

// enrollmentTokenNote is the replay of a request that created an
// enrollment token.
func enrollmentTokenNote(body []byte) string {
	var t struct {
		ID    string `json:"id"`
		Fleet string `json:"fleet"`
	}
	_ = json.Unmarshal(body, &t)
	return fmt.Sprintf("the request with this Idempotency-Key already created enrollment token %s for fleet %s; its secret "+
		"was shown once, in the response to that request, and is not stored. If it was lost, revoke the token "+
		"(DELETE %s) and create another", t.ID, t.Fleet, enrollmentTokenPath(t.Fleet, t.ID))
}

// grantNote is the replay of a request that created a grant: only a
// grant whose key the server made carries a secret (its creds).
func grantNote(body []byte) string {
	var g struct {
		ID    string  `json:"id"`
		Creds *string `json:"creds"`
	}
	if err := json.Unmarshal(body, &g); err == nil && g.Creds == nil {
		return "" // no creds: the response is stored as it is
	}
	return fmt.Sprintf("the request with this Idempotency-Key already created grant %s; its creds (with the private key) "+
		"were shown once, in the response to that request, and are not stored. If they were lost, revoke the grant "+
		"(DELETE %s) and create another", g.ID, grantPath(g.ID))
}
