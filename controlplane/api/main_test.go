package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/api"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/password"
	"github.com/fleetplane/fleetplane/internal/pgtest"
	"github.com/fleetplane/fleetplane/internal/seal"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var testRegions = []controlplane.Region{
	{Name: "europe", DisplayName: "Europe (Frankfurt)",
		LeafURLs:   []string{"tls://hub-1.europe.example.com:7422", "tls://hub-2.europe.example.com:7422"},
		ClientURLs: []string{"tls://hub-1.europe.example.com:4222", "tls://hub-2.europe.example.com:4222"},
		CABundle:   "-----BEGIN CERTIFICATE-----\nTEST\n-----END CERTIFICATE-----\n"},
	{Name: "americas", DisplayName: "Americas (Virginia)",
		LeafURLs: []string{"tls://hub.americas.example.com:7422"}, ClientURLs: []string{"tls://hub.americas.example.com:4222"}},
}

// testConfig is the Service configuration of the API tests: a real NATS
// issuer (a fresh operator, as `fleetplane admin operator init` makes one)
// and no hubs, so that pushes succeed with zero nodes.
func testConfig(tb testing.TB) controlplane.Config {
	tb.Helper()
	keys, err := seal.ParseKeyring("k1:" + seal.GenerateKey())
	if err != nil {
		tb.Fatal(err)
	}
	op, err := natsissuer.NewOperator(keys, "fleetplane-api-test")
	if err != nil {
		tb.Fatalf("NewOperator: %v", err)
	}
	iss, err := natsissuer.New(keys, op)
	if err != nil {
		tb.Fatalf("natsissuer.New: %v", err)
	}
	tb.Cleanup(iss.Wipe)
	return controlplane.Config{Regions: testRegions, PasswordParams: fastPasswords, Issuer: iss}
}

// fastPasswords keeps argon2id cheap in tests.
var fastPasswords = password.Params{Memory: 64, Time: 1, Threads: 1}

// env is one API server over its own throwaway database.
type env struct {
	tb     testing.TB
	pool   *pgxpool.Pool
	svc    *controlplane.Service
	srv    *httptest.Server
	client *http.Client // validates every exchange against openapi.yaml
	reg    *prometheus.Registry
	logs   *lockedBuffer
}

// newEnv starts the real router over Postgres. Options default to high
// signup and enrollment limits so that tests may sign up and enroll freely.
func newEnv(tb testing.TB, opts ...func(*api.Options)) *env {
	tb.Helper()
	return newEnvConfig(tb, nil, opts...)
}

// newEnvConfig is newEnv with the Service configuration changed by cfg
// (when not nil) first.
func newEnvConfig(tb testing.TB, cfg func(*controlplane.Config), opts ...func(*api.Options)) *env {
	tb.Helper()
	pool := pgtest.NewPool(tb)
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := testConfig(tb)
	if cfg != nil {
		cfg(&c)
	}
	svc := controlplane.NewService(postgres.NewStore(pool), c, logger)
	reg := prometheus.NewRegistry()
	o := api.Options{Logger: logger, Registerer: reg, Gatherer: reg, SignupRatePerMinute: 10000, EnrollRatePerMinute: 10000}
	for _, f := range opts {
		f(&o)
	}
	srv := httptest.NewServer(api.New(svc, o))
	tb.Cleanup(srv.Close)
	e := &env{tb: tb, pool: pool, svc: svc, srv: srv, reg: reg, logs: logs}
	e.client = &http.Client{Transport: &validatingTransport{tb: tb, v: mustValidator(tb), base: srv.Client().Transport}}
	return e
}

// --- requests ---

type response struct {
	status int
	header http.Header
	body   []byte
}

type reqOpt func(*http.Request)

// withHeader sets a request header.
func withHeader(k, v string) reqOpt { return func(r *http.Request) { r.Header.Set(k, v) } }

// withoutHeader removes a request header (e.g. the default Content-Type).
func withoutHeader(k string) reqOpt { return func(r *http.Request) { r.Header.Del(k) } }

// malformed marks a request that deliberately breaks openapi.yaml: the
// response is still validated, the request is not.
func malformed() reqOpt {
	return func(r *http.Request) { *r = *r.WithContext(context.WithValue(r.Context(), malformedKey{}, true)) }
}

type malformedKey struct{}

// do sends a request. key is the bearer API key ("" for none); body is sent
// as is when it is a []byte or string, as JSON otherwise, and not at all
// when nil.
func (e *env) do(method, path, key string, body any, opts ...reqOpt) *response {
	e.tb.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.tb.Fatalf("encoding request body: %v", err)
		}
		rd = bytes.NewReader(j)
	}
	u, err := url.Parse(e.srv.URL + path)
	if err != nil {
		e.tb.Fatalf("bad test path %q: %v", path, err)
	}
	req, err := http.NewRequest(method, e.srv.URL, rd)
	if err != nil {
		e.tb.Fatalf("new request: %v", err)
	}
	req.URL = u
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for _, o := range opts {
		o(req)
	}
	res, err := e.client.Do(req)
	if err != nil {
		e.tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.tb.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return &response{status: res.StatusCode, header: res.Header, body: b}
}

// must asserts the status and decodes the body into out (when not nil).
func (r *response) must(tb testing.TB, status int, out any) *response {
	tb.Helper()
	if r.status != status {
		tb.Fatalf("status %d, want %d; body: %s", r.status, status, r.body)
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			tb.Fatalf("decoding %s: %v", r.body, err)
		}
	}
	return r
}

// problem asserts a problem+json response with the status and returns it.
func (r *response) problem(tb testing.TB, status int) api.Problem {
	tb.Helper()
	var p api.Problem
	r.must(tb, status, &p)
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		tb.Fatalf("Content-Type %q, want application/problem+json", ct)
	}
	return p
}

// --- fixtures ---

type tenant struct {
	id     string
	key    string // admin API key secret
	keyID  string
	userID string
}

var signupSeq struct {
	sync.Mutex
	n int
}

// signup creates a tenant through the API and returns its admin key.
func (e *env) signup(org string) tenant {
	e.tb.Helper()
	signupSeq.Lock()
	signupSeq.n++
	n := signupSeq.n
	signupSeq.Unlock()
	var res api.SignupResponse
	e.do("POST", "/v1/signup", "", api.SignupRequest{
		Organisation: org,
		Email:        fmt.Sprintf("owner%d-%d@%s.example.com", n, time.Now().UnixNano(), strings.ToLower(strings.ReplaceAll(org, " ", "-"))),
		Password:     "correct horse battery staple",
	}).must(e.tb, http.StatusCreated, &res)
	return tenant{id: res.Tenant.Id, key: res.ApiKey.Secret, keyID: res.ApiKey.Id, userID: res.User.Id}
}

// createKey creates an API key with role and returns it.
func (e *env) createKey(adminKey, name string, role api.KeyRole) api.APIKeyCreated {
	e.tb.Helper()
	var k api.APIKeyCreated
	e.do("POST", "/v1/api-keys", adminKey, api.APIKeyCreate{Name: name, Role: &role}).must(e.tb, http.StatusCreated, &k)
	return k
}

func (e *env) createFleet(key, slug string) api.Fleet {
	e.tb.Helper()
	var f api.Fleet
	e.do("POST", "/v1/fleets", key, api.FleetCreate{Slug: slug}).must(e.tb, http.StatusCreated, &f)
	return f
}

func (e *env) createVehicle(key, fleet, id string, labels map[string]string) api.Vehicle {
	e.tb.Helper()
	in := api.VehicleCreate{VehicleId: id}
	if labels != nil {
		l := api.Labels(labels)
		in.Labels = &l
	}
	var v api.Vehicle
	e.do("POST", "/v1/fleets/"+fleet+"/vehicles", key, in).must(e.tb, http.StatusCreated, &v)
	return v
}

// --- OpenAPI validation of every exchange ---

type validator struct {
	doc     *openapi3.T
	router  routers.Router
	opts    *openapi3filter.Options
	problem *openapi3.Schema
}

var loadValidator = sync.OnceValues(func() (*validator, error) {
	doc, err := openapi3.NewLoader().LoadFromFile("openapi.yaml")
	if err != nil {
		return nil, err
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("openapi.yaml is not valid: %w", err)
	}
	doc.SetStringFormatValidator("email", openapi3.NewRegexpFormatValidator(openapi3.FormatOfStringForEmail))
	doc.SetStringFormatValidator("uuid", openapi3.NewRegexpFormatValidator(openapi3.FormatOfStringForUUIDOfRFC9562))
	router, err := legacy.NewRouter(doc)
	if err != nil {
		return nil, err
	}
	return &validator{
		doc:    doc,
		router: router,
		opts: &openapi3filter.Options{
			IncludeResponseStatus:   true,
			MultiError:              true,
			AuthenticationFunc:      openapi3filter.NoopAuthenticationFunc,
			SchemaValidationOptions: doc.GetSchemaValidationOptions(),
		},
		problem: doc.Components.Schemas["Problem"].Value,
	}, nil
})

func mustValidator(tb testing.TB) *validator {
	tb.Helper()
	v, err := loadValidator()
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// validatingTransport checks every request (unless marked malformed) and
// every response against openapi.yaml, and fails the test on a mismatch.
type validatingTransport struct {
	tb   testing.TB
	v    *validator
	base http.RoundTripper
}

func (t *validatingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var reqBody []byte
	if req.Body != nil {
		var err error
		if reqBody, err = io.ReadAll(req.Body); err != nil {
			return nil, err
		}
		req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(reqBody))
	}
	res, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resBody, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return nil, err
	}
	res.Body = io.NopCloser(bytes.NewReader(resBody))
	if msg := t.v.check(req, reqBody, res, resBody); msg != "" {
		t.tb.Errorf("%s %s → %d does not match openapi.yaml:\n%s\nresponse body: %.2000s", req.Method, req.URL.RequestURI(), res.StatusCode, msg, resBody)
	}
	return res, nil
}

func (v *validator) check(req *http.Request, reqBody []byte, res *http.Response, resBody []byte) string {
	ctx := context.Background()
	var msgs []string
	if res.Header.Get("X-Request-ID") == "" {
		msgs = append(msgs, "no X-Request-ID header")
	}
	if res.Header.Get("Content-Type") == "application/problem+json" && req.Method != http.MethodHead {
		var p api.Problem
		if err := json.Unmarshal(resBody, &p); err != nil {
			msgs = append(msgs, "problem body: "+err.Error())
		} else {
			if p.Status != res.StatusCode {
				msgs = append(msgs, fmt.Sprintf("problem status %d in a %d response", p.Status, res.StatusCode))
			}
			if p.RequestId != res.Header.Get("X-Request-ID") && res.Header.Get("Idempotent-Replayed") == "" {
				msgs = append(msgs, fmt.Sprintf("problem request_id %q, header %q", p.RequestId, res.Header.Get("X-Request-ID")))
			}
		}
	}
	route, pathParams, err := v.router.FindRoute(req)
	if err != nil {
		// No such operation: the answer must be a 404 or 405 problem.
		if res.StatusCode != http.StatusNotFound && res.StatusCode != http.StatusMethodNotAllowed {
			msgs = append(msgs, fmt.Sprintf("%v, yet the server answered %d", err, res.StatusCode))
		}
		if ct := res.Header.Get("Content-Type"); ct != "application/problem+json" {
			msgs = append(msgs, "unrouted response Content-Type "+ct)
		}
		var body any
		if err := json.Unmarshal(resBody, &body); err != nil {
			msgs = append(msgs, err.Error())
		} else if err := v.problem.VisitJSON(body); err != nil {
			msgs = append(msgs, "problem: "+err.Error())
		}
		return strings.Join(msgs, "\n")
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: pathParams, Route: route, Options: v.opts}
	if bad, _ := req.Context().Value(malformedKey{}).(bool); !bad {
		clone := req.Clone(ctx)
		clone.Body = io.NopCloser(bytes.NewReader(reqBody))
		in.Request = clone
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			msgs = append(msgs, "request: "+err.Error())
		}
		in.Request = req
	}
	err = openapi3filter.ValidateResponse(ctx, &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in,
		Status:                 res.StatusCode,
		Header:                 res.Header,
		Body:                   io.NopCloser(bytes.NewReader(resBody)),
		Options:                v.opts,
	})
	if err != nil {
		msgs = append(msgs, "response: "+err.Error())
	}
	// kin-openapi accepts any body for a response without content; the API
	// sends none.
	if (res.StatusCode == http.StatusNoContent) && len(resBody) != 0 {
		msgs = append(msgs, "204 with a body")
	}
	return strings.Join(msgs, "\n")
}

// --- database snapshots ---

// snapshot fingerprints every table (pgtest.Snapshot), leaving out the
// columns that change on reads.
func snapshot(tb testing.TB, pool *pgxpool.Pool) map[string]string {
	tb.Helper()
	return pgtest.Snapshot(tb, pool, "api_keys.last_used_at")
}

// diffSnapshots describes what differs between two snapshots ("" = nothing).
func diffSnapshots(a, b map[string]string) string { return pgtest.DiffSnapshots(a, b) }

// --- misc ---

// lockedBuffer collects logs written from many goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var uuidRe = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)

func ptr[T any](v T) *T { return &v }
