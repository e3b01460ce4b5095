package password

import (
	"strings"
	"testing"
)

var fast = Params{Memory: 64, Time: 1, Threads: 1}

func TestHashVerify(t *testing.T) {
	h := Hash("correct horse battery staple", fast)
	if !strings.HasPrefix(h, "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Fatalf("hash %q is not PHC argon2id", h)
	}
	if ok, err := Verify("correct horse battery staple", h); !ok || err != nil {
		t.Fatalf("Verify(right) = %v, %v", ok, err)
	}
	if ok, err := Verify("correct horse battery stapl", h); ok || err != nil {
		t.Fatalf("Verify(wrong) = %v, %v", ok, err)
	}
	if a, b := Hash("x", fast), Hash("x", fast); a == b {
		t.Fatal("two hashes of one password are equal: salt missing")
	}
}

func TestVerifyMalformed(t *testing.T) {
	for _, h := range []string{"", "plain", "$argon2i$v=19$m=64,t=1,p=1$c2FsdA$a2V5", "$argon2id$v=18$m=64,t=1,p=1$c2FsdA$a2V5",
		"$argon2id$v=19$m=x,t=1,p=1$c2FsdA$a2V5", "$argon2id$v=19$m=64,t=1,p=1$!!$a2V5", "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$"} {
		if ok, err := Verify("pw", h); ok || err == nil {
			t.Errorf("Verify(%q) = %v, %v; want ErrMalformed", h, ok, err)
		}
	}
}
