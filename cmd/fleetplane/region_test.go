package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

// writeCA writes a self-signed CA certificate as PEM and returns its path.
func writeCA(tb testing.TB) string {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hub CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	p := filepath.Join(tb.TempDir(), "ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

func TestAdminRegion(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": pgtest.NewURL(t)}
	ctx := context.Background()
	ca := writeCA(t)
	admin := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		err := run(ctx, append([]string{"admin", "region"}, args...), mapEnv(env), &out, &errb)
		return out.String() + errb.String(), err
	}
	list := func() []regionOut {
		t.Helper()
		out, err := admin("list", "--json")
		if err != nil {
			t.Fatalf("region list: %v\n%s", err, out)
		}
		var rs []regionOut
		if err := json.Unmarshal([]byte(out), &rs); err != nil {
			t.Fatalf("region list --json: %v\n%s", err, out)
		}
		return rs
	}
	if rs := list(); len(rs) != 0 {
		t.Fatalf("regions before any add: %+v", rs)
	}

	out, err := admin("add", "--name", "europe", "--display-name", "Europe (Frankfurt)",
		"--leaf-url", "tls://hub-1.eu.example.com:7422", "--leaf-url", "tls://hub-2.eu.example.com:7422",
		"--client-url", "tls://hub-1.eu.example.com:4222", "--ca-file", ca,
		"--node", "hub-eu-1=nats://10.0.0.1:4222", "--node", "hub-eu-2=tls://10.0.0.2:4222")
	if err != nil || !strings.Contains(out, "region europe (Europe (Frankfurt)) stored") || !strings.Contains(out, "restart the control plane") {
		t.Fatalf("region add: %v\n%s", err, out)
	}
	if out, err := admin("add", "--name", "americas"); err != nil {
		t.Fatalf("bare region add: %v\n%s", err, out)
	}
	rs := list()
	if len(rs) != 2 || rs[0].Name != "americas" || rs[0].DisplayName != "americas" || len(rs[0].Nodes) != 0 {
		t.Fatalf("regions: %+v", rs)
	}
	eu := rs[1]
	pemBytes, _ := os.ReadFile(ca)
	if eu.Name != "europe" || len(eu.LeafURLs) != 2 || len(eu.ClientURLs) != 1 || eu.CABundle != string(pemBytes) ||
		len(eu.Nodes) != 2 || eu.Nodes[1] != (controlplane.HubNode{Name: "hub-eu-2", URL: "tls://10.0.0.2:4222"}) {
		t.Fatalf("europe: %+v", eu)
	}

	// Add again: the region is replaced as a whole.
	if out, err := admin("add", "--name", "europe", "--node", "hub-eu-3=nats://10.0.0.3:4222"); err != nil {
		t.Fatalf("region re-add: %v\n%s", err, out)
	}
	eu2 := list()[1]
	if eu2.DisplayName != "europe" || len(eu2.LeafURLs) != 0 || eu2.CABundle != "" || len(eu2.Nodes) != 1 ||
		!eu2.CreatedAt.Equal(eu.CreatedAt) || !eu2.UpdatedAt.After(eu.UpdatedAt) {
		t.Fatalf("europe after re-add: %+v", eu2)
	}
	out, err = admin("list")
	if err != nil || !strings.Contains(out, "hub-eu-3=nats://10.0.0.3:4222") || !strings.Contains(out, "NAME") {
		t.Fatalf("region list: %v\n%s", err, out)
	}

	notPEM := filepath.Join(t.TempDir(), "ca.txt")
	_ = os.WriteFile(notPEM, []byte("hello"), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"add"}, "--name is required"},
		{[]string{"add", "--name", "Europe"}, "name: must be"},
		{[]string{"add", "--name", "eu", "--leaf-url", "http://hub:7422"}, "leaf_urls: URL"},
		{[]string{"add", "--name", "eu", "--client-url", "tls://user:pw@hub:4222"}, "must not carry credentials"},
		{[]string{"add", "--name", "eu", "--leaf-url", "tls://"}, "needs a scheme and a host"},
		{[]string{"add", "--name", "eu", "--node", "hub-1"}, "want SERVER_NAME=URL"},
		{[]string{"add", "--name", "eu", "--node", "hub 1=nats://h:4222"}, "server_name"},
		{[]string{"add", "--name", "eu", "--node", "hub-1=ws://h:4222"}, `node "hub-1": URL`},
		{[]string{"add", "--name", "eu", "--node", "hub-1=nats://a:4222", "--node", "hub-1=nats://b:4222"}, "listed twice"},
		{[]string{"add", "--name", "eu", "--ca-file", notPEM}, "ca_bundle: must be PEM certificates"},
		{[]string{"add", "--name", "eu", "--ca-file", filepath.Join(t.TempDir(), "missing.pem")}, "--ca-file"},
	} {
		out, err := admin(tc.args...)
		if err == nil || !strings.Contains(err.Error()+out, tc.want) {
			t.Errorf("admin region %v: %v (%s), want %q", tc.args, err, out, tc.want)
		}
	}
	if rs := list(); len(rs) != 2 {
		t.Fatalf("a rejected add stored something: %+v", rs)
	}
}

func TestLoadRegions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := postgres.Open(ctx, pgtest.NewURL(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store := postgres.NewStore(pool)
	ca := writeCA(t)

	cfg := defaultConfig()
	cfg.Regions = []RegionConf{
		{Name: "europe", DisplayName: "Europe", LeafURLs: []string{"tls://eu.example.com:7422"}, CAFile: ca,
			Nodes: []HubNodeConf{{Name: "hub-eu-1", URL: "nats://127.0.0.1:4222"}}},
		{Name: "local"},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	regions, nodes, err := loadRegions(ctx, store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	names := func(rs []controlplane.Region) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.Name)
		}
		return out
	}
	if !slices.Equal(names(regions), []string{"europe", "local"}) || !slices.Equal(nodes, []hubs.Node{{Name: "hub-eu-1", URL: "nats://127.0.0.1:4222"}}) {
		t.Fatalf("regions %v, nodes %v", names(regions), nodes)
	}
	if !strings.Contains(regions[0].CABundle, "BEGIN CERTIFICATE") || regions[1].DisplayName != "local" {
		t.Fatalf("regions: %+v", regions)
	}

	// Regions added with the admin command join, after the configured ones;
	// a configured bare name does not wipe what the table holds for it.
	for _, r := range []*controlplane.Region{
		{Name: "asia", DisplayName: "Asia", Nodes: []controlplane.HubNode{{Name: "hub-as-1", URL: "nats://10.0.1.1:4222"}}},
		{Name: "americas", DisplayName: "Americas"},
		{Name: "local", DisplayName: "Local hub", LeafURLs: []string{"nats://127.0.0.1:7422"}},
	} {
		if err := store.UpsertRegion(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	regions, nodes, err = loadRegions(ctx, store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names(regions), []string{"europe", "local", "americas", "asia"}) || len(nodes) != 2 || nodes[1].Name != "hub-as-1" {
		t.Fatalf("regions %v, nodes %v", names(regions), nodes)
	}
	if regions[1].DisplayName != "Local hub" || len(regions[1].LeafURLs) != 1 {
		t.Fatalf("the bare configured region overwrote the table: %+v", regions[1])
	}

	// A configured region with content wins over the table.
	if err := store.UpsertRegion(ctx, &controlplane.Region{Name: "europe", DisplayName: "Old"}); err != nil {
		t.Fatal(err)
	}
	regions, _, err = loadRegions(ctx, store, cfg)
	if err != nil || regions[0].DisplayName != "Europe" || len(regions[0].Nodes) != 1 {
		t.Fatalf("configured europe after a table edit: %+v, %v", regions[0], err)
	}

	// Node names are unique across regions.
	if err := store.UpsertRegion(ctx, &controlplane.Region{Name: "asia", DisplayName: "Asia",
		Nodes: []controlplane.HubNode{{Name: "hub-eu-1", URL: "nats://10.0.1.1:4222"}}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadRegions(ctx, store, cfg); err == nil || !strings.Contains(err.Error(), `"hub-eu-1" is listed in regions`) {
		t.Fatalf("duplicate node across regions: %v", err)
	}

	// A configured region that does not validate is refused, naming it.
	bad := defaultConfig()
	bad.Regions = []RegionConf{{Name: "europe", Nodes: []HubNodeConf{{Name: "hub eu", URL: "nats://h:4222"}}}}
	if _, _, err := loadRegions(ctx, store, bad); err == nil || !strings.Contains(err.Error(), `configured region "europe"`) {
		t.Fatalf("invalid configured region: %v", err)
	}
}
