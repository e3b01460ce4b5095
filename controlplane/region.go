package controlplane

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Region is a hub region fleets can live in: a hub cluster, the URLs
// vehicles and grants connect to, and the nodes the control plane pushes
// account JWTs to.
//
// Regions live in Postgres (RegionStore; `fleetplane admin region add`).
// The control plane's configured regions are upserted at start, then the
// table is what counts; Config.Regions is what was loaded at start. Hub
// connections are made at start too, so a region added or changed while the
// control plane runs takes effect at its next restart.
type Region struct {
	Name        string
	DisplayName string
	// LeafURLs are the hub leafnode URLs vehicles connect to (tls://...).
	LeafURLs []string
	// ClientURLs are the hub client URLs grants and the nats CLI use.
	ClientURLs []string
	// CABundle is the PEM CA bundle that verifies the hubs ("" = system roots).
	CABundle string
	// Nodes are the region's hub nodes, as the control plane reaches them.
	Nodes     []HubNode
	CreatedAt time.Time
	UpdatedAt time.Time
}

// HubNode is one hub nats-server: Name is its server_name (the control plane
// attributes every system reply to a node by it), URL the client URL the
// control plane's system user connects to.
type HubNode struct {
	Name string `json:"name"`
	URL  string `json:"url"`
}

// RegionStore persists hub regions. Its methods are part of Store. Regions
// are not tenant data: every tenant sees every region.
type RegionStore interface {
	// UpsertRegion inserts r, or replaces every field of the region with
	// its name, and sets CreatedAt and UpdatedAt. Validate r first.
	UpsertRegion(ctx context.Context, r *Region) error
	// FindRegions lists every region by name.
	FindRegions(ctx context.Context) ([]*Region, error)
	// FindRegion returns one region (ENOTFOUND when there is none).
	FindRegion(ctx context.Context, name string) (*Region, error)

	ReconcileStore // reconcile.go
}

// Limits of a region's lists.
const (
	MaxRegionURLs  = 32
	MaxRegionNodes = 32
	// MaxCABundleLen bounds a CA bundle (a few certificates).
	MaxCABundleLen = 64 << 10
)

// hubNodeNameRe is a nats-server server_name as Fleetplane allows it: it
// appears in logs, metrics labels and subjects-free JSON, so keep it plain.
var hubNodeNameRe = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?$`)

// ValidHubNodeName reports whether s is a valid hub node (server) name:
// 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-', starting and ending with
// a letter or digit.
func ValidHubNodeName(s string) bool { return hubNodeNameRe.MatchString(s) }

// Normalize trims r's text fields and defaults DisplayName to Name.
func (r *Region) Normalize() {
	r.Name = strings.TrimSpace(r.Name)
	r.DisplayName = strings.TrimSpace(r.DisplayName)
	if r.DisplayName == "" {
		r.DisplayName = r.Name
	}
	trim := func(ss []string) []string {
		out := make([]string, 0, len(ss))
		for _, s := range ss {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		return out
	}
	r.LeafURLs, r.ClientURLs = trim(r.LeafURLs), trim(r.ClientURLs)
	r.CABundle = strings.TrimSpace(r.CABundle)
	if r.CABundle != "" {
		r.CABundle += "\n"
	}
	for i := range r.Nodes {
		r.Nodes[i].Name = strings.TrimSpace(r.Nodes[i].Name)
		r.Nodes[i].URL = strings.TrimSpace(r.Nodes[i].URL)
	}
}

// Validate normalizes r and checks it: a region name like a fleet's region,
// URLs with a NATS scheme and a host and no credentials (they are shown to
// tenants and vehicles), a CA bundle of PEM certificates, and hub nodes with
// unique server names and nats:// or tls:// URLs.
func (r *Region) Validate() error {
	r.Normalize()
	var v ValidationError
	if !ValidRegionName(r.Name) {
		v.Add("name", "must be 1-32 characters of a-z, 0-9 and '-', starting and ending with a letter or digit")
	}
	validateName(&v, "display_name", r.DisplayName, true)
	validateURLs(&v, "leaf_urls", r.LeafURLs, []string{"tls", "nats", "ws", "wss"})
	validateURLs(&v, "client_urls", r.ClientURLs, []string{"tls", "nats", "ws", "wss"})
	if r.CABundle != "" {
		if err := checkCABundle(r.CABundle); err != "" {
			v.Add("ca_bundle", "%s", err)
		}
	}
	if len(r.Nodes) > MaxRegionNodes {
		v.Add("nodes", "at most %d nodes", MaxRegionNodes)
	}
	seen := map[string]bool{}
	for _, n := range r.Nodes {
		if !ValidHubNodeName(n.Name) {
			v.Add("nodes", "node name %q must be the node's server_name: 1-64 characters of A-Z, a-z, 0-9, '_', '.' and '-'", n.Name)
			continue
		}
		if seen[n.Name] {
			v.Add("nodes", "node %q is listed twice", n.Name)
		}
		seen[n.Name] = true
		if msg := checkURL(n.URL, []string{"nats", "tls"}); msg != "" {
			v.Add("nodes", "node %q: %s", n.Name, msg)
		}
	}
	return v.Err()
}

func validateURLs(v *ValidationError, field string, urls []string, schemes []string) {
	if len(urls) > MaxRegionURLs {
		v.Add(field, "at most %d URLs", MaxRegionURLs)
		return
	}
	for _, u := range urls {
		if msg := checkURL(u, schemes); msg != "" {
			v.Add(field, "%s", msg)
		}
	}
}

// checkURL returns what is wrong with u, or "".
func checkURL(u string, schemes []string) string {
	pu, err := url.Parse(u)
	switch {
	case len(u) > 2048 || !utf8.ValidString(u) || strings.ContainsFunc(u, isControl):
		return "URL must be at most 2048 bytes of printable UTF-8"
	case err != nil || pu.Host == "" || pu.Hostname() == "":
		return "URL " + quote(u) + " needs a scheme and a host"
	case !slices.Contains(schemes, pu.Scheme):
		return "URL " + quote(u) + " must be " + strings.Join(schemes, "://, ") + "://"
	case pu.User != nil:
		return "URL " + quote(u) + " must not carry credentials"
	case pu.RawQuery != "" || pu.Fragment != "" || pu.Opaque != "":
		return "URL " + quote(u) + " must not have a query or fragment"
	case (pu.Scheme == "nats" || pu.Scheme == "tls") && pu.Path != "" && pu.Path != "/":
		return "URL " + quote(u) + " must be " + pu.Scheme + "://host:port without a path"
	}
	return ""
}

func quote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"` }

// checkCABundle returns what is wrong with a PEM bundle, or "".
func checkCABundle(b string) string {
	if len(b) > MaxCABundleLen {
		return "must be at most 64 KiB"
	}
	rest := []byte(b)
	n := 0
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return "must hold only CERTIFICATE PEM blocks, found " + blk.Type
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return "holds a certificate that does not parse: " + err.Error()
		}
		n++
	}
	if n == 0 || strings.TrimSpace(string(rest)) != "" {
		return "must be PEM certificates (-----BEGIN CERTIFICATE-----) and nothing else"
	}
	return ""
}
