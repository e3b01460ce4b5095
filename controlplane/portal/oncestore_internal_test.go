package portal

import (
	"net/http/httptest"
	"testing"
	"time"
)

// TestOnceStoreLimits: one session cannot push out another's pending
// downloads; items expire; a wrong session cannot take (or burn) one.
func TestOnceStoreLimits(t *testing.T) {
	now := time.Now()
	o := &onceStore{ttl: time.Minute, max: 30, perSession: 3}
	victim := o.put("victim", "g1", []byte("creds"), now)
	var keys []string
	for i := range 50 {
		keys = append(keys, o.put("attacker", "g", []byte{byte(i)}, now.Add(time.Duration(i)*time.Millisecond)))
	}
	if n := o.count("attacker"); n != 3 {
		t.Fatalf("attacker holds %d items, want its cap 3", n)
	}
	if _, ok := o.take(keys[0], "attacker", "g", now); ok {
		t.Fatal("the attacker's oldest item survived its cap")
	}
	if _, ok := o.take(victim, "attacker", "g1", now); ok {
		t.Fatal("another session took the victim's item")
	}
	if data, ok := o.take(victim, "victim", "g1", now); !ok || string(data) != "creds" {
		t.Fatalf("victim's item: %q, %v", data, ok)
	}
	if _, ok := o.take(victim, "victim", "g1", now); ok {
		t.Fatal("taken twice")
	}
	late := o.put("s", "g", []byte("x"), now)
	if _, ok := o.take(late, "s", "g", now.Add(2*time.Minute)); ok {
		t.Fatal("an expired item was taken")
	}
}

func TestStaticFilesOnly(t *testing.T) {
	h, err := New(nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{"/static/app.css": 200, "/static/": 404, "/static/../static/": 404, "/static/nope.js": 404} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != want {
			t.Errorf("GET %s = %d, want %d", path, rec.Code, want)
		}
		if rec.Header().Get("Content-Security-Policy") == "" {
			t.Errorf("GET %s: no CSP", path)
		}
	}
}
