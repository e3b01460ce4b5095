package postgres_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
)

func TestVehiclePresence(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()
	tn, tn2 := MustTenant(t, s, "acme"), MustTenant(t, s, "globex")
	acc, acc2 := MustAccount(t, s, tn.ID), MustAccount(t, s, tn2.ID)
	f := MustFleet(t, s, tn.ID, "drones")
	enrolled := func(f *controlplane.Fleet, vid string) (*controlplane.Vehicle, string) {
		v := MustVehicle(t, s, f, vid, nil)
		key := FakeKey('U')
		if _, err := s.SetVehicleEnrollment(ctx, f.TenantID, v.ID, controlplane.VehicleEnrollment{UserPublicKey: key,
			CredentialsExpireAt: time.Now().Add(time.Hour), Status: controlplane.VehicleActive}); err != nil {
			t.Fatal(err)
		}
		return v, key
	}
	_, key1 := enrolled(f, "drone-1")
	_, key2 := enrolled(f, "drone-2")
	MustVehicle(t, s, f, "drone-3", nil) // never enrolled: no key
	base := time.Now().Add(-time.Hour).Truncate(time.Microsecond)
	link := func(key, node string, id uint64, start int) controlplane.LeafConn {
		return controlplane.LeafConn{Node: node, ID: id, Account: acc.PublicKey, User: key, Start: base.Add(time.Duration(start) * time.Second)}
	}
	get := func(vid string) *controlplane.Vehicle {
		v, err := s.FindVehicle(ctx, tn.ID, f.ID, vid)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	wantChanged := func(what string, changed bool, err error, want bool) {
		t.Helper()
		if err != nil || changed != want {
			t.Fatalf("%s: changed=%v, %v; want %v", what, changed, err, want)
		}
	}

	// An event of another account never touches the vehicle.
	foreign := link(key1, "hub-1", 1, 10)
	foreign.Account = acc2.PublicKey
	ok, err := s.SetVehicleOnline(ctx, foreign, foreign.Start)
	wantChanged("online in another account", ok, err, false)
	ok, err = s.SetVehicleOffline(ctx, foreign, foreign.Start, "x")
	wantChanged("offline in another account", ok, err, false)

	l1 := link(key1, "hub-1", 1, 10)
	ok, err = s.SetVehicleOnline(ctx, l1, l1.Start)
	wantChanged("online", ok, err, true)
	ok, err = s.SetVehicleOnline(ctx, l1, l1.Start)
	wantChanged("the same connect again", ok, err, false)
	if v := get("drone-1"); !v.Online || v.HubNode != "hub-1" || !v.LastSeenAt.Equal(l1.Start) || v.LastDisconnectReason != "" {
		t.Fatalf("online vehicle = %+v", v)
	}
	for _, c := range []struct {
		online bool
		want   []string
	}{{true, []string{"drone-1"}}, {false, []string{"drone-2", "drone-3"}}} {
		vs, err := s.FindVehicles(ctx, tn.ID, controlplane.VehicleFilter{FleetID: &f.ID, Online: &c.online})
		if err != nil || !eq(vehicleIDs(vs), c.want) {
			t.Fatalf("online=%v: %v, %v; want %v", c.online, vehicleIDs(vs), err, c.want)
		}
	}

	// Presence reads: every online vehicle, plus the keys asked for.
	ps, err := s.FindVehiclePresence(ctx, nil)
	if err != nil || len(ps) != 1 {
		t.Fatalf("FindVehiclePresence(nil) = %+v, %v", ps, err)
	}
	p := ps[0]
	if p.TenantID != tn.ID || p.VehicleID != "drone-1" || p.UserKey != key1 || p.Account != acc.PublicKey || !p.Online ||
		p.HubNode != "hub-1" || p.ConnID != 1 || !p.ConnStart.Equal(l1.Start) || !p.LastSeenAt.Equal(l1.Start) {
		t.Fatalf("presence = %+v", p)
	}
	if ps, err := s.FindVehiclePresence(ctx, []string{key2, FakeKey('U')}); err != nil || len(ps) != 2 || ps[0].UserKey == ps[1].UserKey {
		t.Fatalf("FindVehiclePresence(key2, unknown) = %+v, %v", ps, err)
	}

	// A closed link leaves the vehicle offline with the reason and the time.
	ok, err = s.SetVehicleOffline(ctx, l1, base.Add(20*time.Second), "Client Closed")
	wantChanged("offline", ok, err, true)
	if v := get("drone-1"); v.Online || v.HubNode != "hub-1" || v.LastDisconnectReason != "Client Closed" || !v.LastSeenAt.Equal(base.Add(20*time.Second)) {
		t.Fatalf("offline vehicle = %+v", v)
	}
	ok, err = s.SetVehicleOnline(ctx, l1, l1.Start)
	wantChanged("a late connect of the closed link", ok, err, false)

	// Reconciliation's changes apply only from the state they were
	// computed from.
	from := controlplane.PresenceState{HubNode: "hub-1", ConnID: 1, ConnStart: l1.Start}
	to := controlplane.PresenceState{Online: true, HubNode: "hub-2", ConnID: 5, ConnStart: base.Add(30 * time.Second)}
	stale := from
	stale.Online = true
	n, err := s.UpdateVehiclePresence(ctx, []controlplane.PresenceChange{{UserKey: key1, From: stale, To: to, LastSeenAt: to.ConnStart}})
	if err != nil || n != 0 {
		t.Fatalf("change from a stale state: %d, %v", n, err)
	}
	n, err = s.UpdateVehiclePresence(ctx, []controlplane.PresenceChange{
		{UserKey: key1, From: from, To: to, LastSeenAt: to.ConnStart},
		// A vehicle that never connected (no link recorded) goes offline
		// from "offline, no link": a no-op change, still applied.
		{UserKey: key2, To: controlplane.PresenceState{}, LastSeenAt: base, Reason: "r"},
	})
	if err != nil || n != 2 {
		t.Fatalf("changes: %d, %v", n, err)
	}
	if v := get("drone-1"); !v.Online || v.HubNode != "hub-2" || v.LastDisconnectReason != "Client Closed" || !v.LastSeenAt.Equal(to.ConnStart) {
		t.Fatalf("after the change = %+v", v)
	}
	// Last seen never moves back.
	back := controlplane.PresenceChange{UserKey: key1, From: to, To: to, LastSeenAt: base}
	back.To.Online = false
	if n, err := s.UpdateVehiclePresence(ctx, []controlplane.PresenceChange{back}); err != nil || n != 1 {
		t.Fatalf("offline change: %d, %v", n, err)
	}
	if v := get("drone-1"); v.Online || !v.LastSeenAt.Equal(to.ConnStart) || v.LastDisconnectReason != "" {
		t.Fatalf("after going offline with an older time = %+v", v)
	}
	// More changes than one statement takes.
	many := make([]controlplane.PresenceChange, 2500)
	for i := range many {
		many[i] = controlplane.PresenceChange{UserKey: FakeKey('U'), To: to, LastSeenAt: base}
	}
	if n, err := s.UpdateVehiclePresence(ctx, many); err != nil || n != 0 {
		t.Fatalf("changes of unknown keys: %d, %v", n, err)
	}

	// The schema refuses an online vehicle without its node and link.
	if _, err := pool.Exec(ctx, `UPDATE vehicles SET online = true, hub_node = '' WHERE user_public_key = $1`, key2); err == nil {
		t.Fatal("online without a hub node accepted")
	}
}

// TestPresenceEventRacesReconciliation: a connect of a new link and a
// reconciliation that saw the old one (and decided "unreachable") run at
// once; whichever commits first, the new link wins.
func TestPresenceEventRacesReconciliation(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()
	tn := MustTenant(t, s, "acme")
	acc := MustAccount(t, s, tn.ID)
	f := MustFleet(t, s, tn.ID, "drones")
	base := time.Now().Add(-time.Hour).Truncate(time.Microsecond)
	for i := range 20 {
		v := MustVehicle(t, s, f, fmt.Sprintf("v-%d", i), nil)
		key := FakeKey('U')
		if _, err := s.SetVehicleEnrollment(ctx, tn.ID, v.ID, controlplane.VehicleEnrollment{UserPublicKey: key,
			CredentialsExpireAt: time.Now().Add(time.Hour), Status: controlplane.VehicleActive}); err != nil {
			t.Fatal(err)
		}
		old := controlplane.LeafConn{Node: "hub-3", ID: 1, Account: acc.PublicKey, User: key, Start: base}
		if ok, err := s.SetVehicleOnline(ctx, old, base); err != nil || !ok {
			t.Fatal(ok, err)
		}
		newer := controlplane.LeafConn{Node: "hub-1", ID: 9, Account: acc.PublicKey, User: key, Start: base.Add(time.Second)}
		unreachable := controlplane.PresenceChange{UserKey: key,
			From: controlplane.PresenceState{Online: true, HubNode: "hub-3", ConnID: 1, ConnStart: base},
			To:   controlplane.PresenceState{HubNode: "hub-3", ConnID: 1, ConnStart: base}, LastSeenAt: time.Now(), Reason: "hub node hub-3 unreachable"}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			if _, err := s.SetVehicleOnline(ctx, newer, newer.Start); err != nil {
				t.Error(err)
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := s.UpdateVehiclePresence(ctx, []controlplane.PresenceChange{unreachable}); err != nil {
				t.Error(err)
			}
		}()
		wg.Wait()
		got, err := s.FindVehicle(ctx, tn.ID, f.ID, v.VehicleID)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Online || got.HubNode != "hub-1" {
			t.Fatalf("round %d: online=%v node=%q reason=%q", i, got.Online, got.HubNode, got.LastDisconnectReason)
		}
	}
}
