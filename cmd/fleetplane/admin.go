package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
)

const adminUsage = `usage: fleetplane admin tenant create --name NAME --email EMAIL [--plan free|scale] [--json]
`

func runAdmin(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) < 2 || args[0] != "tenant" || args[1] != "create" {
		fmt.Fprint(stderr, adminUsage)
		return &usageError{"admin: expected 'tenant create'"}
	}
	fs := flag.NewFlagSet("fleetplane admin tenant create", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "organisation name (required)")
	email := fs.String("email", "", "owner e-mail address (required)")
	plan := fs.String("plan", controlplane.PlanFree, "plan: free or scale")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	cfg := defaultConfig()
	if err := loadConfig(fs, args[2:], getenv, &cfg); err != nil {
		return err
	}
	if *name == "" || *email == "" {
		return &usageError{"admin tenant create: --name and --email are required"}
	}
	if cfg.DatabaseURL == "" {
		return &usageError{"no database: set --database-url, FLEETPLANE_DATABASE_URL(_FILE) or DATABASE_URL"}
	}
	a, err := newApp(ctx, cfg, newLogger(&cfg, io.Discard))
	if err != nil {
		return err
	}
	defer a.Close()
	res, err := a.svc.AdminCreateTenant(ctx, *name, *email, *plan)
	if err != nil {
		return fmt.Errorf("create tenant: %s", controlplane.ErrorMessage(err))
	}
	if *asJSON {
		return writeJSON(stdout, newTenantCreated(res))
	}
	fmt.Fprintf(stdout, "tenant %s (%s, plan %s) created; owner %s\n", res.Tenant.ID, res.Tenant.Name, res.Tenant.Plan, res.User.Email)
	fmt.Fprintf(stdout, "API key %s (shown once, store it now):\n%s\n", res.APIKey.ID, res.APIKey.Secret)
	return nil
}

// tenantCreated is the JSON the admin command prints.
type tenantCreated struct {
	Tenant struct {
		ID        string    `json:"id"`
		Name      string    `json:"name"`
		Plan      string    `json:"plan"`
		CreatedAt time.Time `json:"created_at"`
	} `json:"tenant"`
	Owner struct {
		ID    string `json:"id"`
		Email string `json:"email"`
	} `json:"owner"`
	APIKey struct {
		ID     string `json:"id"`
		Role   string `json:"role"`
		Secret string `json:"secret"`
	} `json:"api_key"`
}

func newTenantCreated(r *controlplane.SignupResult) tenantCreated {
	var out tenantCreated
	out.Tenant.ID, out.Tenant.Name, out.Tenant.Plan, out.Tenant.CreatedAt = r.Tenant.ID, r.Tenant.Name, r.Tenant.Plan, r.Tenant.CreatedAt.UTC()
	out.Owner.ID, out.Owner.Email = r.User.ID, r.User.Email
	out.APIKey.ID, out.APIKey.Role, out.APIKey.Secret = r.APIKey.ID, string(r.APIKey.Role), r.APIKey.Secret
	return out
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
