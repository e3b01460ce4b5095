package api_test

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/fleetplane/fleetplane/controlplane/api"
)

func TestIdempotencyReplay(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Idem Co")
	key := withHeader("Idempotency-Key", "create-alpha-1")

	first := e.do("POST", "/v1/fleets", a.key, `{"slug":"alpha","name":"Alpha"}`, key).must(t, http.StatusCreated, nil)
	again := e.do("POST", "/v1/fleets", a.key, `{"slug":"alpha","name":"Alpha"}`, key).must(t, http.StatusCreated, nil)
	if !bytes.Equal(first.body, again.body) {
		t.Errorf("replay differs:\n%s\n%s", first.body, again.body)
	}
	if again.header.Get("Idempotent-Replayed") != "true" || first.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("Idempotent-Replayed: first %q, replay %q", first.header.Get("Idempotent-Replayed"), again.header.Get("Idempotent-Replayed"))
	}
	if again.header.Get("Location") != "/v1/fleets/alpha" || again.header.Get("Content-Type") != "application/json" {
		t.Errorf("replayed headers %v", again.header)
	}
	if again.header.Get("X-Request-ID") == first.header.Get("X-Request-ID") {
		t.Error("a replay is a new request and gets its own request ID")
	}
	var l api.FleetList
	e.do("GET", "/v1/fleets", a.key, nil).must(t, 200, &l)
	if len(l.Items) != 1 {
		t.Errorf("%d fleets after a replay, want 1", len(l.Items))
	}

	// Same key, another body: 422, and nothing created.
	p := e.do("POST", "/v1/fleets", a.key, `{"slug":"beta"}`, key).problem(t, http.StatusUnprocessableEntity)
	if p.Code != api.ProblemCodeUnprocessable || !strings.Contains(p.Detail, "create-alpha-1") {
		t.Errorf("reuse: %+v", p)
	}
	// Same key and body on another endpoint: a different request too.
	e.do("POST", "/v1/fleets/alpha/vehicles", a.key, `{"slug":"alpha","name":"Alpha"}`, key, malformed()).
		problem(t, http.StatusUnprocessableEntity)
	e.do("GET", "/v1/fleets", a.key, nil).must(t, 200, &l)
	if len(l.Items) != 1 {
		t.Errorf("%d fleets, want 1", len(l.Items))
	}

	// Keys are per tenant: another tenant may use the same key.
	b := e.signup("Other Co")
	e.do("POST", "/v1/fleets", b.key, `{"slug":"alpha","name":"Alpha"}`, key).must(t, http.StatusCreated, nil)

	// A 4xx outcome is stored and replayed too: the request is not run again.
	bad := withHeader("Idempotency-Key", "bad-slug")
	p1 := e.do("POST", "/v1/fleets", a.key, `{"slug":"Bad Slug"}`, bad, malformed())
	p2 := e.do("POST", "/v1/fleets", a.key, `{"slug":"Bad Slug"}`, bad, malformed())
	p1.problem(t, 400)
	p2.problem(t, 400)
	if !bytes.Equal(p1.body, p2.body) || p2.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("4xx replay:\n%s\n%s", p1.body, p2.body)
	}

	// Vehicles, with a Location to replay.
	vkey := withHeader("Idempotency-Key", "veh-1")
	v1 := e.do("POST", "/v1/fleets/alpha/vehicles", a.key, `{"vehicle_id":"v1"}`, vkey).must(t, http.StatusCreated, nil)
	v2 := e.do("POST", "/v1/fleets/alpha/vehicles", a.key, `{"vehicle_id":"v1"}`, vkey).must(t, http.StatusCreated, nil)
	if !bytes.Equal(v1.body, v2.body) || v2.header.Get("Location") != "/v1/fleets/alpha/vehicles/v1" {
		t.Errorf("vehicle replay: %s / %s %v", v1.body, v2.body, v2.header)
	}
}

// A response that holds a secret is never stored: its replay says what was
// created instead of showing the secret again.
func TestIdempotencySecrets(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Secret Co")
	key := withHeader("Idempotency-Key", "ci-key")
	var k api.APIKeyCreated
	e.do("POST", "/v1/api-keys", a.key, `{"name":"ci"}`, key).must(t, http.StatusCreated, &k)
	r := e.do("POST", "/v1/api-keys", a.key, `{"name":"ci"}`, key)
	p := r.problem(t, http.StatusConflict)
	if r.header.Get("Idempotent-Replayed") != "true" || !strings.Contains(p.Detail, k.Id) || strings.Contains(string(r.body), k.Secret) {
		t.Errorf("replay of a key: %s", r.body)
	}
	var list api.APIKeyList
	e.do("GET", "/v1/api-keys", a.key, nil).must(t, 200, &list)
	if len(list.Items) != 2 {
		t.Errorf("%d keys, want 2", len(list.Items))
	}

	sk := withHeader("Idempotency-Key", "signup-1")
	body := `{"organisation":"Once","email":"once@example.com","password":"correct horse battery staple"}`
	var res api.SignupResponse
	e.do("POST", "/v1/signup", "", body, sk).must(t, http.StatusCreated, &res)
	r = e.do("POST", "/v1/signup", "", body, sk)
	p = r.problem(t, http.StatusConflict)
	if !strings.Contains(p.Detail, res.Tenant.Id) || strings.Contains(string(r.body), res.ApiKey.Secret) {
		t.Errorf("replay of a signup: %s", r.body)
	}
	// No secret anywhere in the database.
	var n int
	_, secretPart, _ := strings.Cut(strings.TrimPrefix(res.ApiKey.Secret, "fpk_"), "_")
	if err := e.pool.QueryRow(t.Context(),
		`SELECT count(*) FROM idempotency_keys WHERE position($1::bytea in coalesce(body, '')) > 0`, []byte(secretPart)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("an API key secret is stored in idempotency_keys")
	}
}

// Concurrent duplicates create exactly one object; every other answer is
// the replay or a 409 "in progress".
func TestIdempotencyConcurrent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.signup("Race Co")
	e.createFleet(a.key, "alpha")

	for round := range 3 {
		const n = 8
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			statuses = map[int]int{}
			bodies   [][]byte
		)
		vid := fmt.Sprintf("racer-%d", round)
		start := make(chan struct{})
		for range n {
			wg.Go(func() {
				<-start
				r := e.do("POST", "/v1/fleets/alpha/vehicles", a.key, `{"vehicle_id":"`+vid+`"}`,
					withHeader("Idempotency-Key", "race-"+vid))
				mu.Lock()
				defer mu.Unlock()
				statuses[r.status]++
				if r.status == http.StatusCreated {
					bodies = append(bodies, r.body)
				}
			})
		}
		close(start)
		wg.Wait()
		if statuses[http.StatusCreated]+statuses[http.StatusConflict] != n || statuses[http.StatusCreated] == 0 {
			t.Fatalf("round %d: statuses %v", round, statuses)
		}
		for _, b := range bodies[1:] {
			if !bytes.Equal(b, bodies[0]) {
				t.Errorf("round %d: different 201 bodies:\n%s\n%s", round, bodies[0], b)
			}
		}
		var l api.VehicleList
		e.do("GET", "/v1/fleets/alpha/vehicles?vehicle_id_prefix="+vid, a.key, nil).must(t, 200, &l)
		if len(l.Items) != 1 {
			t.Errorf("round %d: %d vehicles created, want 1", round, len(l.Items))
		}
		t.Logf("round %d: %v", round, statuses)
	}
	var audit api.AuditEventList
	e.do("GET", "/v1/audit-events?action=vehicle.create", a.key, nil).must(t, 200, &audit)
	if len(audit.Items) != 3 {
		t.Errorf("%d vehicle.create events, want 3", len(audit.Items))
	}
}
