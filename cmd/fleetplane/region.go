package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/hubs"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
)

// Regions live in Postgres (migration 000005). `admin region add` upserts
// one; the configuration's regions (YAML `regions:`, --regions) are a
// declarative bootstrap that loadRegions upserts at every serve/dev start
// before reading the table, which is then what the control plane uses.
//
// Hub connections are made at start, so a region added or changed with
// `admin region add` while the control plane runs takes effect at its next
// restart (every replica's).

// loadRegions upserts the configured regions into the table and returns
// every region it holds — the configured ones first, in configuration
// order (the first is the default region for new fleets), then the others
// by name — with the hub nodes of all of them. A configured region that
// names nothing but itself (no URL, CA file or node, like the default
// "local") is inserted when missing and otherwise left as the table has it,
// so that a bare name in the configuration does not wipe what
// `admin region add` set. Node names must be unique across regions.
func loadRegions(ctx context.Context, store controlplane.RegionStore, cfg Config) ([]controlplane.Region, []hubs.Node, error) {
	var configured []string
	for i, r := range cfg.domainRegions() {
		rc := cfg.Regions[i]
		for _, n := range rc.Nodes {
			r.Nodes = append(r.Nodes, controlplane.HubNode{Name: n.Name, URL: n.URL})
		}
		configured = append(configured, r.Name)
		if err := r.Validate(); err != nil {
			return nil, nil, fmt.Errorf("configured region %q: %s", r.Name, controlplane.ErrorMessage(err))
		}
		if bareRegion(rc) {
			if _, err := store.FindRegion(ctx, r.Name); err == nil {
				continue
			} else if controlplane.ErrorCode(err) != controlplane.ENOTFOUND {
				return nil, nil, fmt.Errorf("loading region %q: %w", r.Name, err)
			}
		}
		if err := store.UpsertRegion(ctx, &r); err != nil {
			return nil, nil, fmt.Errorf("storing configured region %q: %w", r.Name, err)
		}
	}
	rows, err := store.FindRegions(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("loading regions: %w", err)
	}
	rank := func(name string) int {
		if i := slices.Index(configured, name); i >= 0 {
			return i
		}
		return len(configured)
	}
	slices.SortStableFunc(rows, func(a, b *controlplane.Region) int { return rank(a.Name) - rank(b.Name) })
	regions := make([]controlplane.Region, 0, len(rows))
	var nodes []hubs.Node
	owner := map[string]string{}
	for _, r := range rows {
		for _, n := range r.Nodes {
			if other, dup := owner[n.Name]; dup {
				return nil, nil, fmt.Errorf("hub node %q is listed in regions %q and %q: node (server) names must be unique", n.Name, other, r.Name)
			}
			owner[n.Name] = r.Name
			nodes = append(nodes, hubs.Node{Name: n.Name, URL: n.URL})
		}
		regions = append(regions, *r)
	}
	if len(regions) == 0 {
		return nil, nil, errors.New("no regions: configure one or add one with `fleetplane admin region add`")
	}
	return regions, nodes, nil
}

// bareRegion reports whether a configured region names nothing but itself.
func bareRegion(r RegionConf) bool {
	return len(r.LeafURLs) == 0 && len(r.ClientURLs) == 0 && r.CAFile == "" && len(r.Nodes) == 0
}

// listFlag collects a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

const regionUsage = `usage:
  fleetplane admin region add --name NAME [--display-name TEXT] [--leaf-url URL]... [--client-url URL]...
                              [--ca-file PEM] [--node SERVER_NAME=nats://host:4222]...
  fleetplane admin region list [--json]
A region added or changed here is used after the control plane restarts.
`

// runAdminRegion runs `admin region add|list` against the database.
func runAdminRegion(ctx context.Context, sub string, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleetplane admin region "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, regionUsage); fs.PrintDefaults() }
	var leafURLs, clientURLs, nodeSpecs listFlag
	name := fs.String("name", "", "region name: 1-32 characters of a-z, 0-9 and '-' (add; required)")
	display := fs.String("display-name", "", "name shown to tenants (add; default: the name)")
	fs.Var(&leafURLs, "leaf-url", "hub leafnode URL vehicles connect to, tls://host:7422 (add; repeatable)")
	fs.Var(&clientURLs, "client-url", "hub client URL for grants and the nats CLI, tls://host:4222 (add; repeatable)")
	caFile := fs.String("ca-file", "", "PEM bundle that verifies the hubs, handed to vehicles (add)")
	fs.Var(&nodeSpecs, "node", "hub node as SERVER_NAME=nats://host:4222, the control plane's system connection (add; repeatable)")
	asJSON := fs.Bool("json", false, "print as JSON")
	cfg := defaultConfig()
	if err := loadConfig(fs, args, getenv, &cfg); err != nil {
		return err
	}
	if cfg.DatabaseURL == "" {
		return &usageError{"no database: set --database-url, FLEETPLANE_DATABASE_URL(_FILE) or DATABASE_URL"}
	}
	var r controlplane.Region
	if sub == "add" {
		if *name == "" {
			return &usageError{"admin region add: --name is required"}
		}
		r = controlplane.Region{Name: *name, DisplayName: *display, LeafURLs: leafURLs, ClientURLs: clientURLs}
		for _, spec := range nodeSpecs {
			n, u, ok := strings.Cut(spec, "=")
			if !ok {
				return &usageError{fmt.Sprintf("admin region add: --node %q: want SERVER_NAME=URL", spec)}
			}
			r.Nodes = append(r.Nodes, controlplane.HubNode{Name: n, URL: u})
		}
		if *caFile != "" {
			b, err := os.ReadFile(*caFile)
			if err != nil {
				return fmt.Errorf("admin region add: --ca-file: %w", err)
			}
			r.CABundle = string(b)
		}
		if err := r.Validate(); err != nil {
			return &usageError{"admin region add: " + validationMessage(err)}
		}
	}
	pool, err := postgres.Open(ctx, cfg.DatabaseURL, 2)
	if err != nil {
		return fmt.Errorf("database %s: %w", redactURL(cfg.DatabaseURL), err)
	}
	defer pool.Close()
	store := postgres.NewStore(pool)
	if sub == "add" {
		if err := store.UpsertRegion(ctx, &r); err != nil {
			return fmt.Errorf("admin region add: %s", controlplane.ErrorMessage(err))
		}
		if *asJSON {
			return writeJSON(stdout, regionJSON(&r))
		}
		fmt.Fprintf(stdout, "region %s (%s) stored: %d leaf URLs, %d client URLs, %d hub nodes\n",
			r.Name, r.DisplayName, len(r.LeafURLs), len(r.ClientURLs), len(r.Nodes))
		fmt.Fprintln(stdout, "restart the control plane (every replica) to use it: hub connections are made at start")
		return nil
	}
	rs, err := store.FindRegions(ctx)
	if err != nil {
		return fmt.Errorf("admin region list: %w", err)
	}
	if *asJSON {
		out := make([]regionOut, len(rs))
		for i, r := range rs {
			out[i] = regionJSON(r)
		}
		return writeJSON(stdout, out)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tDISPLAY NAME\tLEAF URLS\tCLIENT URLS\tCA\tNODES\tUPDATED")
	for _, r := range rs {
		var nodes []string
		for _, n := range r.Nodes {
			nodes = append(nodes, n.Name+"="+n.URL)
		}
		ca := "system"
		if r.CABundle != "" {
			ca = "bundle"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.DisplayName, orDash(strings.Join(r.LeafURLs, ",")),
			orDash(strings.Join(r.ClientURLs, ",")), ca, orDash(strings.Join(nodes, ",")), r.UpdatedAt.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

// validationMessage lists every field problem of a validation error.
func validationMessage(err error) string {
	var e *controlplane.Error
	if errors.As(err, &e) && len(e.Fields) > 1 {
		msgs := make([]string, len(e.Fields))
		for i, f := range e.Fields {
			msgs[i] = f.Field + ": " + f.Message
		}
		return strings.Join(msgs, "; ")
	}
	return controlplane.ErrorMessage(err)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// regionOut is a region as the admin commands print it.
type regionOut struct {
	Name        string                 `json:"name"`
	DisplayName string                 `json:"display_name"`
	LeafURLs    []string               `json:"leaf_urls"`
	ClientURLs  []string               `json:"client_urls"`
	CABundle    string                 `json:"ca_bundle,omitempty"`
	Nodes       []controlplane.HubNode `json:"nodes"`
	CreatedAt   time.Time              `json:"created_at"`
	UpdatedAt   time.Time              `json:"updated_at"`
}

func regionJSON(r *controlplane.Region) regionOut {
	out := regionOut{Name: r.Name, DisplayName: r.DisplayName, LeafURLs: r.LeafURLs, ClientURLs: r.ClientURLs,
		CABundle: r.CABundle, Nodes: r.Nodes, CreatedAt: r.CreatedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC()}
	if out.LeafURLs == nil {
		out.LeafURLs = []string{}
	}
	if out.ClientURLs == nil {
		out.ClientURLs = []string{}
	}
	if out.Nodes == nil {
		out.Nodes = []controlplane.HubNode{}
	}
	return out
}
