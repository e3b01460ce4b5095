package stripemock

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"sync"
)

// Request is one request as a Recorder saw it.
type Request struct {
	Method string
	Path   string
	// Form holds the parameters: the URL query plus a form-encoded body,
	// keys as stripe-go encodes them (e.g. "line_items[0][price]").
	Form           url.Values
	IdempotencyKey string
	StripeVersion  string
}

// ErrAnswerLost is what a client gets instead of the answer to a request
// that FailAfter made fail.
var ErrAnswerLost = errors.New("stripemock: the answer was lost (Recorder.FailAfter)")

// Recorder is an http.RoundTripper that records each request's method, path,
// parameters and idempotency key, then sends it on through Transport. It
// never records the Authorization header. Safe for concurrent use.
type Recorder struct {
	// Transport sends the requests; nil means http.DefaultTransport.
	Transport http.RoundTripper

	mu       sync.Mutex
	reqs     []Request
	failFrom int // 1-based index into reqs from which answers are lost; 0: none
}

// FailAfter makes the n-th request from now (1: the next one) and every
// later one lose its answer: the request is recorded and sent, the server
// handles it, and the client gets ErrAnswerLost instead of the response
// (a connection that drops after the request went out: did Stripe apply
// it?). n <= 0 turns this off.
func (r *Recorder) FailAfter(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n <= 0 {
		r.failFrom = 0
		return
	}
	r.failFrom = len(r.reqs) + n
}

// Client returns an HTTP client that sends through r (for stripe-go's
// BackendConfig.HTTPClient).
func (r *Recorder) Client() *http.Client { return &http.Client{Transport: r} }

// RoundTrip records req and sends it.
func (r *Recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	rec := Request{
		Method:         req.Method,
		Path:           req.URL.Path,
		IdempotencyKey: req.Header.Get("Idempotency-Key"),
		StripeVersion:  req.Header.Get("Stripe-Version"),
		Form:           req.URL.Query(),
	}
	if req.Body != nil && req.Body != http.NoBody {
		body, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("stripemock: recorder reading the request body: %w", err)
		}
		// A RoundTripper must not modify the request: send a copy whose
		// body is what we read.
		req = req.Clone(req.Context())
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		if ct, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type")); ct == "application/x-www-form-urlencoded" {
			form, err := url.ParseQuery(string(body))
			if err != nil {
				return nil, fmt.Errorf("stripemock: recorder parsing the form body: %w", err)
			}
			for k, vs := range form {
				rec.Form[k] = append(rec.Form[k], vs...)
			}
		}
	}
	r.mu.Lock()
	r.reqs = append(r.reqs, rec)
	lose := r.failFrom > 0 && len(r.reqs) >= r.failFrom
	r.mu.Unlock()

	t := r.Transport
	if t == nil {
		t = http.DefaultTransport
	}
	resp, err := t.RoundTrip(req)
	if lose && err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil, ErrAnswerLost
	}
	return resp, err
}

// Requests returns the requests recorded so far, oldest first.
func (r *Recorder) Requests() []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Request(nil), r.reqs...)
}

// Last returns the newest request, and false when there is none.
func (r *Recorder) Last() (Request, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.reqs) == 0 {
		return Request{}, false
	}
	return r.reqs[len(r.reqs)-1], true
}

// Reset forgets the recorded requests and turns FailAfter off.
func (r *Recorder) Reset() {
	r.mu.Lock()
	r.reqs, r.failFrom = nil, 0
	r.mu.Unlock()
}
