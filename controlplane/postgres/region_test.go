package postgres_test

import (
	"context"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
)

func TestRegions(t *testing.T) {
	t.Parallel()
	s, pool := MustStore(t)
	ctx := context.Background()

	if rs, err := s.FindRegions(ctx); err != nil || rs == nil || len(rs) != 0 {
		t.Fatalf("FindRegions on an empty table: %v, %v", rs, err)
	}
	if _, err := s.FindRegion(ctx, "europe"); controlplane.ErrorCode(err) != controlplane.ENOTFOUND {
		t.Fatalf("FindRegion missing: %v", err)
	}

	eu := &controlplane.Region{Name: "europe", DisplayName: "Europe (Frankfurt)",
		LeafURLs:   []string{"tls://hub-1.eu.example.com:7422", "tls://hub-2.eu.example.com:7422"},
		ClientURLs: []string{"tls://hub-1.eu.example.com:4222"},
		CABundle:   "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
		Nodes: []controlplane.HubNode{{Name: "hub-eu-1", URL: "nats://10.0.0.1:4222"},
			{Name: "hub-eu-2", URL: "nats://10.0.0.2:4222"}}}
	if err := s.UpsertRegion(ctx, eu); err != nil {
		t.Fatal(err)
	}
	if eu.CreatedAt.IsZero() || !eu.UpdatedAt.Equal(eu.CreatedAt) {
		t.Fatalf("timestamps after insert: %v %v", eu.CreatedAt, eu.UpdatedAt)
	}
	// A bare region: empty lists stay empty lists, not NULL.
	am := &controlplane.Region{Name: "americas", DisplayName: "Americas"}
	if err := s.UpsertRegion(ctx, am); err != nil {
		t.Fatal(err)
	}

	got, err := s.FindRegion(ctx, "europe")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, eu) {
		t.Fatalf("FindRegion:\n got %+v\nwant %+v", got, eu)
	}
	// The nodes are a JSON array of {name, url} (what the migration documents).
	row := MustRow(t, pool, `SELECT nodes::text AS nodes, leaf_urls FROM regions WHERE name = 'europe'`)
	if row["nodes"] != `[{"url": "nats://10.0.0.1:4222", "name": "hub-eu-1"}, {"url": "nats://10.0.0.2:4222", "name": "hub-eu-2"}]` {
		t.Fatalf("nodes column: %v", row["nodes"])
	}

	rs, err := s.FindRegions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || rs[0].Name != "americas" || rs[1].Name != "europe" {
		t.Fatalf("FindRegions order: %+v", rs)
	}
	if rs[0].LeafURLs == nil || rs[0].ClientURLs == nil || rs[0].Nodes == nil {
		t.Fatalf("bare region has nil lists: %+v", rs[0])
	}

	// Upsert replaces every field and keeps created_at.
	time.Sleep(5 * time.Millisecond)
	eu2 := &controlplane.Region{Name: "europe", DisplayName: "Europe", LeafURLs: []string{"tls://eu.example.com:7422"},
		Nodes: []controlplane.HubNode{{Name: "hub-eu-3", URL: "tls://10.0.0.3:4222"}}}
	if err := s.UpsertRegion(ctx, eu2); err != nil {
		t.Fatal(err)
	}
	if !eu2.CreatedAt.Equal(eu.CreatedAt) || !eu2.UpdatedAt.After(eu.UpdatedAt) {
		t.Fatalf("timestamps after update: created %v→%v updated %v→%v", eu.CreatedAt, eu2.CreatedAt, eu.UpdatedAt, eu2.UpdatedAt)
	}
	got, err = s.FindRegion(ctx, "europe")
	if err != nil {
		t.Fatal(err)
	}
	if got.DisplayName != "Europe" || got.CABundle != "" || len(got.ClientURLs) != 0 ||
		!slices.Equal(got.LeafURLs, eu2.LeafURLs) || !reflect.DeepEqual(got.Nodes, eu2.Nodes) {
		t.Fatalf("after update: %+v", got)
	}

	// The schema holds the name to the fleets' rule.
	for _, bad := range []*controlplane.Region{
		{Name: "Europe", DisplayName: "x"},
		{Name: "-eu", DisplayName: "x"},
		{Name: "eu", DisplayName: ""},
	} {
		if err := s.UpsertRegion(ctx, bad); controlplane.ErrorCode(err) != controlplane.EINVALID {
			t.Errorf("UpsertRegion(%q, %q): %v, want EINVALID", bad.Name, bad.DisplayName, err)
		}
	}
	// Inside a transaction.
	err = s.Tx(ctx, func(tx controlplane.Store) error {
		return tx.UpsertRegion(ctx, &controlplane.Region{Name: "asia", DisplayName: "Asia"})
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.FindRegion(ctx, "asia"); err != nil {
		t.Fatal(err)
	}
}

func TestReconcileQueries(t *testing.T) {
	t.Parallel()
	s, _ := MustStore(t)
	ctx := context.Background()

	if as, err := s.FindAccounts(ctx, "", 10); err != nil || len(as) != 0 {
		t.Fatalf("FindAccounts on no accounts: %v, %v", as, err)
	}
	var tenants []string
	for _, name := range []string{"A", "B", "C", "D", "E"} {
		tn := MustTenant(t, s, name)
		MustAccount(t, s, tn.ID)
		tenants = append(tenants, tn.ID)
	}
	slices.Sort(tenants)

	// Keyset pages by tenant ID cover every account once, in order.
	var seen []string
	after := ""
	for {
		page, err := s.FindAccounts(ctx, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, a := range page {
			seen = append(seen, a.TenantID)
			if a.JWT != "jwt-1" || a.PublicKey == "" || a.Sealed == nil {
				t.Fatalf("account not fully read: %+v", a)
			}
		}
		after = page[len(page)-1].TenantID
	}
	if !slices.Equal(seen, tenants) {
		t.Fatalf("pages: %v, want %v", seen, tenants)
	}
	for _, bad := range []int{0, -1, 1001} {
		if _, err := s.FindAccounts(ctx, "", bad); controlplane.ErrorCode(err) != controlplane.EINVALID {
			t.Errorf("limit %d: %v", bad, err)
		}
	}
	if _, err := s.FindAccounts(ctx, "not-a-uuid", 10); controlplane.ErrorCode(err) != controlplane.EINVALID {
		t.Errorf("malformed after: %v", err)
	}

	// Every new account is behind (pushed version 0) until marked.
	if n, err := s.CountAccountsBehind(ctx); err != nil || n != 5 {
		t.Fatalf("CountAccountsBehind: %d, %v", n, err)
	}
	for _, id := range tenants[:3] {
		if err := s.MarkAccountPushed(ctx, id, 1, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.CountAccountsBehind(ctx); err != nil || n != 2 {
		t.Fatalf("CountAccountsBehind after marking 3: %d, %v", n, err)
	}

	// Pending revocations of one tenant, oldest first; proven ones and other
	// tenants' are not listed.
	r1 := MustRevocation(t, s, tenants[0], controlplane.RevokeVehicle, "v1")
	r2 := MustRevocation(t, s, tenants[0], controlplane.RevokeGrant, "g1")
	r3 := MustRevocation(t, s, tenants[0], controlplane.RevokeVehicle, "v2")
	MustRevocation(t, s, tenants[1], controlplane.RevokeVehicle, "v1")
	now := time.Now()
	r2.Status, r2.CompletedAt = controlplane.RevocationProven, &now
	if err := s.UpdateRevocation(ctx, r2); err != nil {
		t.Fatal(err)
	}
	rs, err := s.FindPendingRevocations(ctx, tenants[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || rs[0].ID != r1.ID || rs[1].ID != r3.ID || rs[0].Status != controlplane.RevocationPending {
		t.Fatalf("FindPendingRevocations: %+v", rs)
	}
	if rs, err := s.FindPendingRevocations(ctx, "not-a-uuid"); err != nil || len(rs) != 0 {
		t.Fatalf("malformed tenant: %v, %v", rs, err)
	}
}
