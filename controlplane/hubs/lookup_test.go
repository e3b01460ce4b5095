package hubs_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
)

// count returns how often each JWT appears in answers, with "" as "none".
func count(answers []string, names map[string]string) map[string]int {
	out := map[string]int{}
	for _, a := range answers {
		n, ok := names[a]
		if !ok {
			n = "other"
		}
		out[n]++
	}
	return out
}

func wantCounts(tb testing.TB, what string, got map[string]int, want map[string]int) {
	tb.Helper()
	if len(got) != len(want) {
		tb.Fatalf("%s: answers %v, want %v", what, got, want)
	}
	for k, v := range want {
		if got[k] != v {
			tb.Fatalf("%s: answers %v, want %v", what, got, want)
		}
	}
}

func TestAccountJWTsCluster(t *testing.T) {
	op := natstest.MustOperator(t)
	servers := runCluster(t, op, 3)
	h := MustHubs(t, op, hubs.Options{Timeout: time.Second}, servers...)
	pushed, never := newTenant(t, op, "tenant-a"), newTenant(t, op, "tenant-b")
	v1 := pushed.JWT(t)
	waitFor(t, 5*time.Second, "a complete push", func() bool {
		p, err := h.PushAccount(context.Background(), v1)
		return err == nil && p.Complete()
	})
	a, b := pushed.Keys.Account.Public, never.Keys.Account.Public

	start := time.Now()
	got, err := h.AccountJWTs(context.Background(), []string{a, b})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lookup of 2 accounts on 3 nodes: %s", time.Since(start))
	if got.Expected != 3 || !slices.Equal(got.Answering, []string{"hub-1", "hub-2", "hub-3"}) {
		t.Fatalf("expected %d, answering %v", got.Expected, got.Answering)
	}
	names := map[string]string{v1: "v1", "": "none"}
	wantCounts(t, "pushed account", count(got.Held[a], names), map[string]int{"v1": 3})
	wantCounts(t, "account never pushed", count(got.Held[b], names), map[string]int{"none": 3})

	// A newer JWT, then hub-3 goes down: the two nodes that answer hold it,
	// and hub-3 is not waited for.
	pushed.Spec.Limits.Subs = 1000
	v2 := pushed.JWT(t)
	names[v2] = "v2"
	if p, err := h.PushAccount(context.Background(), v2); err != nil || !p.Complete() {
		t.Fatalf("push v2: %+v, %v", p, err)
	}
	servers[2].Shutdown()
	servers[2].WaitForShutdown()
	waitFor(t, 5*time.Second, "hub-3 seen down", func() bool { return !h.Status()[2].Up })
	got, err = h.AccountJWTs(context.Background(), []string{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Answering, []string{"hub-1", "hub-2"}) || got.Expected != 3 {
		t.Fatalf("with hub-3 down: expected %d, answering %v", got.Expected, got.Answering)
	}
	wantCounts(t, "pushed account, hub-3 down", count(got.Held[a], names), map[string]int{"v2": 2})
	wantCounts(t, "account never pushed, hub-3 down", count(got.Held[b], names), map[string]int{"none": 2})

	health := h.NodeHealth()
	if len(health) != 3 || !health[0].Up || !health[1].Up || health[2].Up || health[2].Error == "" || health[2].Node != "hub-3" {
		t.Fatalf("NodeHealth: %+v", health)
	}
}

func TestAccountJWTsSeesAStaleNode(t *testing.T) {
	// Two standalone servers (two clusters of one): each is asked through
	// its own connection. s2 gets a newer JWT that s1 never sees.
	op := natstest.MustOperator(t)
	s1 := natstest.RunOperatorServer(t, op, natstest.WithServerName("hub-1"))
	s2 := natstest.RunOperatorServer(t, op, natstest.WithServerName("hub-2"))
	h := MustHubs(t, op, hubs.Options{Timeout: time.Second}, s1, s2)
	only2 := MustHubs(t, op, hubs.Options{Timeout: time.Second}, s2)
	tn := newTenant(t, op, "tenant-a")
	v1 := tn.JWT(t)
	if p, err := h.PushAccount(context.Background(), v1); err != nil || !p.Complete() {
		t.Fatalf("push v1: %+v, %v", p, err)
	}
	revs, err := natsauth.RevokeUser(nil, vehicleUser(t, tn, "v1").Public, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tn.Spec.Revocations = revs
	v2 := tn.JWT(t)
	if p, err := only2.PushAccount(context.Background(), v2); err != nil || !p.Complete() {
		t.Fatalf("push v2 to hub-2: %+v, %v", p, err)
	}
	got, err := h.AccountJWTs(context.Background(), []string{tn.Keys.Account.Public})
	if err != nil {
		t.Fatal(err)
	}
	wantCounts(t, "stale hub-1", count(got.Held[tn.Keys.Account.Public], map[string]string{v1: "v1", v2: "v2"}),
		map[string]int{"v1": 1, "v2": 1})
}

func TestAccountJWTsRejects(t *testing.T) {
	op := natstest.MustOperator(t)
	s := natstest.RunOperatorServer(t, op, natstest.WithServerName("hub-1"))
	h := MustHubs(t, op, hubs.Options{Timeout: 200 * time.Millisecond}, s)
	ctx := context.Background()
	if _, err := h.AccountJWTs(ctx, []string{"ABAD"}); err == nil || !strings.Contains(err.Error(), "invalid account") {
		t.Fatalf("invalid key: %v", err)
	}
	if _, err := h.AccountJWTs(ctx, make([]string, hubs.MaxLookupAccounts+1)); err == nil {
		t.Fatal("accepted too many accounts")
	}
	// No account: only the ping.
	got, err := h.AccountJWTs(ctx, nil)
	if err != nil || len(got.Held) != 0 || !slices.Equal(got.Answering, []string{"hub-1"}) {
		t.Fatalf("no accounts: %+v, %v", got, err)
	}
	s.Shutdown()
	s.WaitForShutdown()
	waitFor(t, 5*time.Second, "hub-1 seen down", func() bool { return !h.Status()[0].Up })
	if _, err := h.AccountJWTs(ctx, nil); err == nil || !strings.Contains(err.Error(), "no hub node connected") {
		t.Fatalf("no node: %v", err)
	}
}

var _ controlplane.Hubs = (*hubs.Hubs)(nil)
