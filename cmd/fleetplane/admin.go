package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/natsissuer"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/seal"
)

// runAdminOperator runs `admin operator init|show|export`. They work on the
// database directly: newApp needs an operator to exist.
func runAdminOperator(ctx context.Context, sub string, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleetplane admin operator "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "fleetplane", "operator name (init)")
	dir := fs.String("dir", "", "directory to write hub material into (export)")
	resolverDir := fs.String("resolver-dir", "", "the hub's account JWT directory written into the config (export; default ./"+natsissuer.DefaultResolverDir+")")
	asJSON := fs.Bool("json", false, "print as JSON (show)")
	ifMissing := fs.Bool("if-missing", false, "init: succeed without changes when the operator exists (for provisioning scripts)")
	cfg := defaultConfig()
	if err := loadConfig(fs, args, getenv, &cfg); err != nil {
		return err
	}
	if cfg.DatabaseURL == "" {
		return &usageError{"no database: set --database-url, FLEETPLANE_DATABASE_URL(_FILE) or DATABASE_URL"}
	}
	if sub == "export" && *dir == "" {
		return &usageError{"admin operator export: --dir is required"}
	}
	pool, err := postgres.Open(ctx, cfg.DatabaseURL, 2)
	if err != nil {
		return fmt.Errorf("database %s: %w", redactURL(cfg.DatabaseURL), err)
	}
	defer pool.Close()
	store := postgres.NewStore(pool)
	var op *controlplane.Operator
	switch sub {
	case "init":
		keys, err := loadKeyring(&cfg)
		if err != nil {
			return err
		}
		if *ifMissing {
			if op, err := store.FindOperator(ctx); err == nil {
				fmt.Fprintf(stdout, "operator %s exists: %s (unchanged)\n", op.Name, op.PublicKey)
				return nil
			}
		}
		if op, err = initOperator(ctx, store, keys, *name); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "operator %s created: %s\n", op.Name, op.PublicKey)
		fmt.Fprintf(stdout, "system account: %s\n", op.SystemAccountPublicKey)
		fmt.Fprintln(stdout, "next: fleetplane admin operator export --dir DIR, and include DIR/"+natsissuer.HubConfigFile+" in every hub node's config")
		return nil
	default:
		if op, err = store.FindOperator(ctx); controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
			return errors.New("no NATS operator yet: run `fleetplane admin operator init`")
		} else if err != nil {
			return err
		}
	}
	if sub == "export" {
		if err := natsissuer.WriteHubConfig(*dir, natsissuer.HubTrust(op), *resolverDir); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s, %s and %s to %s\n", natsissuer.OperatorJWTFile, natsissuer.SystemAccountJWTFile, natsissuer.HubConfigFile, *dir)
		return nil
	}
	info := map[string]any{"name": op.Name, "public_key": op.PublicKey, "signing_keys": op.SigningKeys,
		"system_account": op.SystemAccountPublicKey, "created_at": op.CreatedAt.UTC()}
	if *asJSON {
		return writeJSON(stdout, info)
	}
	fmt.Fprintf(stdout, "operator:       %s (%s)\nsigning keys:   %s\nsystem account: %s\ncreated:        %s\n",
		op.Name, op.PublicKey, strings.Join(op.SigningKeys, ", "), op.SystemAccountPublicKey, op.CreatedAt.UTC().Format(time.RFC3339))
	return nil
}

// initOperator creates the operator and stores it; an existing operator is
// never overwritten (every tenant account and hub trusts it).
func initOperator(ctx context.Context, store controlplane.Store, keys *seal.Keyring, name string) (*controlplane.Operator, error) {
	if _, err := store.FindOperator(ctx); err == nil {
		return nil, errors.New("a NATS operator already exists; refusing to overwrite it (every account and hub trusts it)")
	} else if controlplane.ErrorCode(err) != controlplane.ENOTFOUND {
		return nil, err
	}
	op, err := natsissuer.NewOperator(keys, name)
	if err != nil {
		return nil, err
	}
	if err := store.CreateOperator(ctx, op); err != nil {
		if controlplane.ErrorCode(err) == controlplane.ECONFLICT {
			return nil, errors.New("a NATS operator already exists; refusing to overwrite it (every account and hub trusts it)")
		}
		return nil, err
	}
	return op, nil
}

// loadKeyring parses the master key from the configuration.
func loadKeyring(cfg *Config) (*seal.Keyring, error) {
	if cfg.MasterKey == "" {
		return nil, errors.New("no master key: set FLEETPLANE_MASTER_KEY or FLEETPLANE_MASTER_KEY_FILE (make one with `fleetplane admin master-key generate`)")
	}
	keys, err := seal.ParseKeyring(cfg.MasterKey)
	if err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	return keys, nil
}

const adminUsage = `usage:
  fleetplane admin tenant create --name NAME --email EMAIL [--plan free|scale] [--json]
  fleetplane admin tenant plan --tenant ID --plan free|scale [--json]   change a tenant's plan (installations with billing off)
  fleetplane admin operator init [--name NAME] [--if-missing]   create the NATS operator (once; never overwrites)
  fleetplane admin operator show [--json]           print the operator's public keys
  fleetplane admin operator export --dir DIR [--resolver-dir D]   write what hub nodes need (no secrets)
  fleetplane admin user password --email E --password-file F   set a user's portal password
  fleetplane admin billing send-event --tenant ID [--type T] [--status S]   post a signed test webhook (dev with stripe-mock)
  fleetplane admin master-key generate              print a new master keyring entry
  fleetplane admin hub config --region R --node N [--out FILE] [--data-dir D] [--tls-dir D] [--route-tls=false]   write a node's hub.yaml
  fleetplane admin region add --name NAME [--display-name T] [--leaf-url U]... [--client-url U]... [--ca-file F] [--node NAME=URL]...
  fleetplane admin region list [--json]             hub regions (used after a control-plane restart)
`

func runAdmin(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cmd := ""
	if len(args) >= 2 {
		cmd = args[0] + " " + args[1]
	}
	switch cmd {
	case "tenant create":
		return runAdminTenantCreate(ctx, args[2:], getenv, stdout, stderr)
	case "tenant plan":
		return runAdminTenantPlan(ctx, args[2:], getenv, stdout, stderr)
	case "operator init", "operator show", "operator export":
		return runAdminOperator(ctx, args[1], args[2:], getenv, stdout, stderr)
	case "region add", "region list":
		return runAdminRegion(ctx, args[1], args[2:], getenv, stdout, stderr)
	case "hub config":
		return runAdminHubConfig(ctx, args[2:], getenv, stdout, stderr)
	case "user password":
		return runAdminUserPassword(ctx, args[2:], getenv, stdout, stderr)
	case "billing send-event":
		return runAdminBillingSendEvent(ctx, args[2:], getenv, stdout, stderr)
	case "master-key generate":
		fmt.Fprintf(stdout, "k%s:%s\n", time.Now().UTC().Format("20060102"), seal.GenerateKey())
		return nil
	}
	fmt.Fprint(stderr, adminUsage)
	return &usageError{"admin: unknown command " + strconv.Quote(strings.Join(args, " "))}
}

func runAdminTenantCreate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleetplane admin tenant create", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "organisation name (required)")
	email := fs.String("email", "", "owner e-mail address (required)")
	plan := fs.String("plan", controlplane.PlanFree, "plan: free or scale")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	cfg := defaultConfig()
	if err := loadConfig(fs, args, getenv, &cfg); err != nil {
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

// runAdminTenantPlan moves a tenant to another plan (Service.ChangePlan:
// the account JWT is re-signed with the plan's limits and pushed; a
// downgrade below the vehicle count starts the grace of docs/plans.md).
// Meant for installations with billing off: with Stripe, the tenant's
// subscription sets the plan and its next event overrides this.
func runAdminTenantPlan(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleetplane admin tenant plan", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tenantID := fs.String("tenant", "", "tenant ID (required)")
	plan := fs.String("plan", "", "the new plan: free or scale (required)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	cfg := defaultConfig()
	if err := loadConfig(fs, args, getenv, &cfg); err != nil {
		return err
	}
	if *tenantID == "" || *plan == "" {
		return &usageError{"admin tenant plan: --tenant and --plan are required"}
	}
	if !controlplane.ValidPlan(*plan) {
		return &usageError{fmt.Sprintf("admin tenant plan: --plan must be %s or %s, got %q", controlplane.PlanFree, controlplane.PlanScale, *plan)}
	}
	if cfg.DatabaseURL == "" {
		return &usageError{"no database: set --database-url, FLEETPLANE_DATABASE_URL(_FILE) or DATABASE_URL"}
	}
	if cfg.StripeSecretKey != "" {
		fmt.Fprintln(stderr, "warning: billing is enabled: a tenant with a Stripe subscription gets its subscription's plan again at the next subscription event")
	}
	a, err := newApp(ctx, cfg, newLogger(&cfg, io.Discard))
	if err != nil {
		return err
	}
	defer a.Close()
	store := postgres.NewStore(a.pool)
	before, err := store.FindTenantByID(ctx, *tenantID)
	if controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
		return fmt.Errorf("change plan: no tenant %q (the tenant ID is a UUID, e.g. from GET /v1/tenant)", *tenantID)
	} else if err != nil {
		return fmt.Errorf("change plan: %s", controlplane.ErrorMessage(err))
	}
	// ChangePlan pushes the re-signed account inline (bounded by the push
	// timeout); what the hubs did not acknowledge is left to the push job
	// of a running control plane.
	t, err := a.svc.ChangePlan(ctx, before.ID, *plan)
	if err != nil {
		return fmt.Errorf("change plan: %s", controlplane.ErrorMessage(err))
	}
	acct, err := store.FindAccount(ctx, t.ID, false)
	if err != nil {
		return fmt.Errorf("change plan: reading the account: %s", controlplane.ErrorMessage(err))
	}
	res := tenantPlanChanged{TenantID: t.ID, Name: t.Name, Plan: t.Plan, PreviousPlan: before.Plan,
		Changed: before.Plan != t.Plan, GracePlan: t.GracePlan, AccountVersion: acct.Version,
		PushedVersion: acct.PushedVersion, Pushed: acct.PushedVersion >= acct.Version}
	if t.GraceUntil != nil {
		g := t.GraceUntil.UTC()
		res.GraceUntil = &g
	}
	if *asJSON {
		return writeJSON(stdout, res)
	}
	if !res.Changed {
		fmt.Fprintf(stdout, "tenant %s (%s) is on plan %s already (unchanged)\n", t.ID, t.Name, t.Plan)
	} else {
		fmt.Fprintf(stdout, "tenant %s (%s): plan %s -> %s\n", t.ID, t.Name, before.Plan, t.Plan)
	}
	if res.GraceUntil != nil {
		fmt.Fprintf(stdout, "downgrade grace until %s: the account keeps the %s plan's leaf-connection limit until then (new vehicles are refused at once)\n",
			res.GraceUntil.Format(time.RFC3339), t.GracePlan)
	}
	switch {
	case res.Pushed && a.hubs == nil:
		fmt.Fprintf(stdout, "account JWT version %d (no hub nodes configured: nothing to push)\n", acct.Version)
	case res.Pushed:
		fmt.Fprintf(stdout, "account JWT version %d pushed to every hub node\n", acct.Version)
	default:
		fmt.Fprintf(stdout, "account JWT version %d pending: not every hub node acknowledged it yet (version %d is); "+
			"the control plane's push job retries (GET /readyz: accounts_behind)\n", acct.Version, acct.PushedVersion)
	}
	return nil
}

// tenantPlanChanged is the JSON `admin tenant plan` prints.
type tenantPlanChanged struct {
	TenantID     string     `json:"tenant_id"`
	Name         string     `json:"name"`
	Plan         string     `json:"plan"`
	PreviousPlan string     `json:"previous_plan"`
	Changed      bool       `json:"changed"`
	GracePlan    string     `json:"grace_plan,omitempty"`
	GraceUntil   *time.Time `json:"grace_until"`
	// AccountVersion is the account JWT's version; Pushed is true once
	// every hub node acknowledged it (PushedVersion is the newest they did).
	AccountVersion int64 `json:"account_version"`
	PushedVersion  int64 `json:"pushed_version"`
	Pushed         bool  `json:"pushed"`
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

// runAdminUserPassword sets a user's portal password (an operator's way to
// let someone in, e.g. an owner created by `admin tenant create`). The
// password comes from a file (never a flag: it would show in ps).
func runAdminUserPassword(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleetplane admin user password", flag.ContinueOnError)
	fs.SetOutput(stderr)
	email := fs.String("email", "", "the user's e-mail address (required)")
	pwFile := fs.String("password-file", "", "file holding the new password (required; at least 12 characters)")
	cfg := defaultConfig()
	if err := loadConfig(fs, args, getenv, &cfg); err != nil {
		return err
	}
	if *email == "" || *pwFile == "" {
		return &usageError{"admin user password: --email and --password-file are required"}
	}
	pw, err := readSecretFile(*pwFile)
	if err != nil {
		return fmt.Errorf("admin user password: %w", err)
	}
	if cfg.DatabaseURL == "" {
		return &usageError{"no database: set --database-url, FLEETPLANE_DATABASE_URL(_FILE) or DATABASE_URL"}
	}
	a, err := newApp(ctx, cfg, newLogger(&cfg, io.Discard))
	if err != nil {
		return err
	}
	defer a.Close()
	if err := a.svc.AdminSetPassword(ctx, *email, pw); err != nil {
		return fmt.Errorf("admin user password: %s", controlplane.ErrorMessage(err))
	}
	fmt.Fprintf(stdout, "password set for %s; their sessions were ended\n", *email)
	return nil
}
