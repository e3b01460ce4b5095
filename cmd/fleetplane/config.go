package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/agentdist"
)

// Config is the control plane's configuration. It is built here, in cmd/,
// from defaults, then the YAML file (--config / FLEETPLANE_CONFIG), then the
// environment (FLEETPLANE_<NAME>, secrets also from FLEETPLANE_<NAME>_FILE),
// then flags; the later source wins. Validate checks it once.
type Config struct {
	HTTPAddr            string        `yaml:"http_addr"`
	PublicURL           string        `yaml:"public_url"`
	DatabaseURL         string        `yaml:"database_url"`
	DatabaseURLFile     string        `yaml:"database_url_file"`
	DBMaxConns          int           `yaml:"db_max_conns"`
	MigrateOnStart      bool          `yaml:"migrate_on_start"`
	Regions             []RegionConf  `yaml:"regions"`
	LogLevel            string        `yaml:"log_level"`
	LogFormat           string        `yaml:"log_format"`
	SignupRatePerMinute int           `yaml:"signup_rate_per_minute"`
	TrustProxyHeaders   bool          `yaml:"trust_proxy_headers"`
	ShutdownTimeout     time.Duration `yaml:"shutdown_timeout"`

	// MasterKey is the keyring that seals NATS seeds at rest,
	// "kid:base64key[,oldkid:oldkey...]" (the first key seals; the others
	// only open older rows). From FLEETPLANE_MASTER_KEY(_FILE) or the file.
	MasterKey            string        `yaml:"master_key"`
	MasterKeyFile        string        `yaml:"master_key_file"`
	EnrollRatePerMinute  int           `yaml:"enroll_rate_per_minute"`
	WebhookRatePerMinute int           `yaml:"webhook_rate_per_minute"`
	VehicleCredentialTTL time.Duration `yaml:"vehicle_credential_ttl"`
	MaxGrantTTL          time.Duration `yaml:"max_grant_ttl"`
	JobWorkers           int           `yaml:"job_workers"`

	// Plans override the built-in free and scale plans (plans.go,
	// docs/plans.md); PlanGrace is the downgrade grace (default 168h).
	Plans     map[string]PlanConf `yaml:"plans"`
	PlanGrace time.Duration       `yaml:"plan_grace"`

	// Stripe billing (billing.go, docs/billing.md): off while
	// StripeSecretKey is empty. The secrets come from the file, the
	// environment (FLEETPLANE_STRIPE_SECRET_KEY, ..._WEBHOOK_SECRET, or
	// their _FILE variants) or flags; never logged.
	StripeSecretKey     string `yaml:"stripe_secret_key"`
	StripeWebhookSecret string `yaml:"stripe_webhook_secret"`
	StripePriceID       string `yaml:"stripe_price_id"`
	StripeMeterEvent    string `yaml:"stripe_meter_event"`
	// StripeAPIBase points the client at stripe-mock (tests, dev).
	StripeAPIBase string `yaml:"stripe_api_base"`

	// The portal's e-mail (confirmation, password reset, invitations):
	// SMTP submission with STARTTLS when SMTPAddr is set, else the mails
	// are written to the log (development).
	SMTPAddr     string `yaml:"smtp_addr"`
	SMTPFrom     string `yaml:"smtp_from"`
	SMTPUsername string `yaml:"smtp_username"`
	SMTPPassword string `yaml:"smtp_password"`
	SMTPInsecure bool   `yaml:"smtp_insecure"`
	// MailToLog writes the e-mails to the log instead (development; serve
	// refuses to start with neither).
	MailToLog bool `yaml:"mail_to_log"`

	// AgentDir holds the agent binaries served at /downloads/ for
	// /install.sh: fleetplane-agent-linux-{arm64,amd64} and their .sha256
	// files, as `make agents` writes them into dist/ (docs/install.md).
	AgentDir string `yaml:"agent_dir"`
	// agents is what /downloads/ serves: set by `fleetplane dev` (which may
	// build the binaries), else made from AgentDir by agentDist.
	agents *agentdist.Dir
}

// RegionConf is one hub region in the configuration.
type RegionConf struct {
	Name        string `yaml:"name"`
	DisplayName string `yaml:"display_name"`
	// LeafURLs are what vehicles connect to (tls://hub-1.example:7422).
	LeafURLs []string `yaml:"leaf_urls"`
	// ClientURLs are for grants and the nats CLI (tls://hub-1.example:4222).
	ClientURLs []string `yaml:"client_urls"`
	// CAFile is the PEM bundle that verifies the hubs' certificates; it is
	// handed to vehicles at enrollment.
	CAFile string `yaml:"ca_file"`
	// Nodes are the hub nodes the control plane pushes account JWTs to,
	// with system-account URLs (every node of the region).
	Nodes []HubNodeConf `yaml:"nodes"`

	caBundle string // read from CAFile by Validate
}

// HubNodeConf is one hub node the control plane talks to.
type HubNodeConf struct {
	Name string `yaml:"name"`
	URL  string `yaml:"url"`
	// Only for `fleetplane admin hub config` (docs/hubs.md); all optional.
	// RouteURL is how the region's other nodes reach this node's cluster
	// port (default nats-route://<url host>:6222); GatewayURL is how other
	// regions reach its gateway port (no gateway when unset); LeafListen
	// and MonitorListen default to 0.0.0.0:7422 and 127.0.0.1:8222.
	RouteURL      string `yaml:"route_url,omitempty"`
	GatewayURL    string `yaml:"gateway_url,omitempty"`
	LeafListen    string `yaml:"leaf_listen,omitempty"`
	MonitorListen string `yaml:"monitor_listen,omitempty"`
}

func defaultConfig() Config {
	return Config{
		HTTPAddr:            ":8080",
		DBMaxConns:          16,
		Regions:             []RegionConf{{Name: "local", DisplayName: "Local"}},
		LogLevel:            "info",
		LogFormat:           "json",
		SignupRatePerMinute: 10,
		ShutdownTimeout:     20 * time.Second,

		EnrollRatePerMinute:  60,
		VehicleCredentialTTL: 7 * 24 * time.Hour,
		MaxGrantTTL:          30 * 24 * time.Hour,
		JobWorkers:           10,
	}
}

// setting binds one configuration value to its flag, environment variable
// and parser, so each value is declared once.
type setting struct {
	name   string // flag name; the env name is FLEETPLANE_ + upper(name with - → _)
	usage  string
	secret bool // also read FLEETPLANE_<NAME>_FILE
	get    func() string
	set    func(string) error
}

func (s setting) envName() string {
	return "FLEETPLANE_" + strings.ToUpper(strings.ReplaceAll(s.name, "-", "_"))
}

func (c *Config) settings() []setting {
	str := func(p *string) func(string) error { return func(v string) error { *p = v; return nil } }
	return []setting{
		{name: "http-addr", usage: "HTTP listen address", get: func() string { return c.HTTPAddr }, set: str(&c.HTTPAddr)},
		{name: "public-url", usage: "public base URL of the control plane (for links and the install script)", get: func() string { return c.PublicURL }, set: str(&c.PublicURL)},
		{name: "database-url", usage: "Postgres URL (also DATABASE_URL)", secret: true, get: func() string { return redactURL(c.DatabaseURL) }, set: str(&c.DatabaseURL)},
		{name: "db-max-conns", usage: "maximum Postgres connections", get: func() string { return strconv.Itoa(c.DBMaxConns) }, set: intSetter(&c.DBMaxConns)},
		{name: "migrate-on-start", usage: "apply pending migrations at start", get: func() string { return strconv.FormatBool(c.MigrateOnStart) }, set: boolSetter(&c.MigrateOnStart)},
		{name: "regions", usage: "hub regions as name[:Display Name],...", get: func() string { return formatRegions(c.Regions) }, set: func(v string) error {
			r, err := parseRegions(v)
			if err == nil {
				c.Regions = r
			}
			return err
		}},
		{name: "log-level", usage: "debug, info, warn or error", get: func() string { return c.LogLevel }, set: str(&c.LogLevel)},
		{name: "log-format", usage: "json or text", get: func() string { return c.LogFormat }, set: str(&c.LogFormat)},
		{name: "signup-rate-per-minute", usage: "signups allowed per client IP per minute", get: func() string { return strconv.Itoa(c.SignupRatePerMinute) }, set: intSetter(&c.SignupRatePerMinute)},
		{name: "trust-proxy-headers", usage: "take the client IP from X-Forwarded-For (only behind a trusted proxy)", get: func() string { return strconv.FormatBool(c.TrustProxyHeaders) }, set: boolSetter(&c.TrustProxyHeaders)},
		{name: "master-key", usage: "keyring sealing NATS seeds: kid:base64key[,oldkid:key]", secret: true, get: func() string { return redactSecret(c.MasterKey) }, set: str(&c.MasterKey)},
		{name: "enroll-rate-per-minute", usage: "enrollments (and agent renewals) allowed per client IP per minute", get: func() string { return strconv.Itoa(c.EnrollRatePerMinute) }, set: intSetter(&c.EnrollRatePerMinute)},
		{name: "webhook-rate-per-minute", usage: "billing webhook deliveries allowed per client IP per minute", get: func() string { return strconv.Itoa(c.WebhookRatePerMinute) }, set: intSetter(&c.WebhookRatePerMinute)},
		{name: "vehicle-credential-ttl", usage: "lifetime of a vehicle JWT (agents renew at half)", get: func() string { return c.VehicleCredentialTTL.String() }, set: durationSetter(&c.VehicleCredentialTTL)},
		{name: "max-grant-ttl", usage: "longest grant lifetime", get: func() string { return c.MaxGrantTTL.String() }, set: durationSetter(&c.MaxGrantTTL)},
		{name: "job-workers", usage: "background job workers", get: func() string { return strconv.Itoa(c.JobWorkers) }, set: intSetter(&c.JobWorkers)},
		{name: "agent-dir", usage: "directory of the agent binaries served at /downloads/ for /install.sh (make agents writes dist/)", get: func() string { return c.AgentDir }, set: str(&c.AgentDir)},
		{name: "shutdown-timeout", usage: "how long to drain requests on shutdown", get: func() string { return c.ShutdownTimeout.String() }, set: durationSetter(&c.ShutdownTimeout)},
		{name: "stripe-secret-key", usage: "Stripe secret API key; empty = billing off", secret: true, get: func() string { return redactSecret(c.StripeSecretKey) }, set: str(&c.StripeSecretKey)},
		{name: "stripe-webhook-secret", usage: "signing secret of the Stripe webhook endpoint (whsec_...)", secret: true, get: func() string { return redactSecret(c.StripeWebhookSecret) }, set: str(&c.StripeWebhookSecret)},
		{name: "stripe-price-id", usage: "Stripe price of the scale plan (metered per vehicle-day)", get: func() string { return c.StripePriceID }, set: str(&c.StripePriceID)},
		{name: "stripe-meter-event", usage: "event name of the Stripe billing meter (default fleetplane_vehicle_days)", get: func() string { return c.StripeMeterEvent }, set: str(&c.StripeMeterEvent)},
		{name: "smtp-addr", usage: "SMTP submission server host:port for the portal's e-mail; empty = e-mails are logged", get: func() string { return c.SMTPAddr }, set: str(&c.SMTPAddr)},
		{name: "smtp-from", usage: "sender address of the portal's e-mail", get: func() string { return c.SMTPFrom }, set: str(&c.SMTPFrom)},
		{name: "smtp-username", usage: "SMTP user (AUTH PLAIN over TLS)", get: func() string { return c.SMTPUsername }, set: str(&c.SMTPUsername)},
		{name: "smtp-password", usage: "SMTP password", secret: true, get: func() string { return redactSecret(c.SMTPPassword) }, set: str(&c.SMTPPassword)},
		{name: "mail-to-log", usage: "write the portal's e-mails (with their links) to the log instead of sending them: development only", get: func() string { return strconv.FormatBool(c.MailToLog) }, set: boolSetter(&c.MailToLog)},
		{name: "smtp-insecure", usage: "allow SMTP without STARTTLS (a relay on localhost only)", get: func() string { return strconv.FormatBool(c.SMTPInsecure) }, set: boolSetter(&c.SMTPInsecure)},
		{name: "stripe-api-base", usage: "Stripe API base URL (stripe-mock in tests and dev)", get: func() string { return c.StripeAPIBase }, set: str(&c.StripeAPIBase)},
	}
}

func intSetter(p *int) func(string) error {
	return func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("not an integer: %q", v)
		}
		*p = n
		return nil
	}
}

func boolSetter(p *bool) func(string) error {
	return func(v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("not a boolean: %q", v)
		}
		*p = b
		return nil
	}
}

func durationSetter(p *time.Duration) func(string) error {
	return func(v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("not a duration: %q", v)
		}
		*p = d
		return nil
	}
}

// loadConfig builds the configuration for a command: fs must already hold
// the command's own flags; loadConfig adds the shared ones, parses args
// and applies file, environment and flags in that order.
func loadConfig(fs *flag.FlagSet, args []string, getenv func(string) string, cfg *Config) error {
	configPath := getenv("FLEETPLANE_CONFIG")
	fs.StringVar(&configPath, "config", configPath, "YAML configuration file (also FLEETPLANE_CONFIG)")
	// Flags are recorded first and applied last, so that they win over the
	// file and the environment.
	type pending struct {
		s setting
		v string
	}
	var fromFlags []pending
	for _, s := range cfg.settings() {
		fs.Func(s.name, s.usage+" (env "+s.envName()+")", func(v string) error {
			fromFlags = append(fromFlags, pending{s, v})
			return nil
		})
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected arguments: %q", fs.Args())}
	}
	if configPath != "" {
		if err := loadConfigFile(configPath, cfg); err != nil {
			return err
		}
	}
	if cfg.DatabaseURLFile != "" {
		v, err := readSecretFile(cfg.DatabaseURLFile)
		if err != nil {
			return fmt.Errorf("config: database_url_file: %w", err)
		}
		cfg.DatabaseURL = v
	}
	if cfg.MasterKeyFile != "" {
		v, err := readSecretFile(cfg.MasterKeyFile)
		if err != nil {
			return fmt.Errorf("config: master_key_file: %w", err)
		}
		cfg.MasterKey = v
	}
	if v := getenv("DATABASE_URL"); v != "" {
		cfg.DatabaseURL = v
	}
	for _, s := range cfg.settings() {
		if s.secret {
			if path := getenv(s.envName() + "_FILE"); path != "" {
				v, err := readSecretFile(path)
				if err != nil {
					return fmt.Errorf("config: %s_FILE: %w", s.envName(), err)
				}
				if err := s.set(v); err != nil {
					return fmt.Errorf("config: %s_FILE: %w", s.envName(), err)
				}
			}
		}
		if v := getenv(s.envName()); v != "" {
			if err := s.set(v); err != nil {
				return fmt.Errorf("config: %s: %w", s.envName(), err)
			}
		}
	}
	for _, p := range fromFlags {
		if err := p.s.set(p.v); err != nil {
			return &usageError{fmt.Sprintf("flag -%s: %v", p.s.name, err)}
		}
	}
	return cfg.Validate()
}

func loadConfigFile(path string, cfg *Config) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// Validate checks the configuration as a whole.
func (c *Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		errs = append(errs, fmt.Errorf("http_addr %q: %v", c.HTTPAddr, err))
	}
	if c.DBMaxConns < 1 || c.DBMaxConns > 1000 {
		errs = append(errs, fmt.Errorf("db_max_conns must be 1-1000, got %d", c.DBMaxConns))
	}
	if len(c.Regions) == 0 {
		errs = append(errs, errors.New("at least one region must be configured"))
	}
	seen := map[string]bool{}
	for _, r := range c.Regions {
		if !controlplane.ValidRegionName(r.Name) {
			errs = append(errs, fmt.Errorf("region name %q must be 1-32 characters of a-z, 0-9 and '-'", r.Name))
		}
		if seen[r.Name] {
			errs = append(errs, fmt.Errorf("region %q is configured twice", r.Name))
		}
		seen[r.Name] = true
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		errs = append(errs, fmt.Errorf("log_format must be json or text, got %q", c.LogFormat))
	}
	if c.SignupRatePerMinute < 1 {
		errs = append(errs, fmt.Errorf("signup_rate_per_minute must be at least 1, got %d", c.SignupRatePerMinute))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("shutdown_timeout must be positive"))
	}
	if c.EnrollRatePerMinute < 1 {
		errs = append(errs, fmt.Errorf("enroll_rate_per_minute must be at least 1, got %d", c.EnrollRatePerMinute))
	}
	if c.VehicleCredentialTTL < time.Hour || c.VehicleCredentialTTL > 90*24*time.Hour {
		errs = append(errs, fmt.Errorf("vehicle_credential_ttl must be between 1h and 2160h (90 days), got %s", c.VehicleCredentialTTL))
	}
	if c.MaxGrantTTL < time.Minute || c.MaxGrantTTL > 90*24*time.Hour {
		errs = append(errs, fmt.Errorf("max_grant_ttl must be between 1m and 2160h (90 days), got %s", c.MaxGrantTTL))
	}
	if c.JobWorkers < 1 || c.JobWorkers > 1000 {
		errs = append(errs, fmt.Errorf("job_workers must be 1-1000, got %d", c.JobWorkers))
	}
	errs = append(errs, c.validatePlans()...)
	errs = append(errs, c.validateBilling()...)
	if c.AgentDir != "" {
		if st, err := os.Stat(c.AgentDir); err != nil || !st.IsDir() {
			errs = append(errs, fmt.Errorf("agent_dir %q must be a directory (of make agents output)", c.AgentDir))
		}
	}
	for i := range c.Regions {
		r := &c.Regions[i]
		for _, u := range append(append([]string{}, r.LeafURLs...), r.ClientURLs...) {
			if pu, err := url.Parse(u); err != nil || pu.Host == "" || !slices.Contains([]string{"nats", "tls", "ws", "wss"}, pu.Scheme) {
				errs = append(errs, fmt.Errorf("region %q: URL %q must be nats://, tls://, ws:// or wss:// with a host", r.Name, u))
			}
		}
		for _, n := range r.Nodes {
			if pu, err := url.Parse(n.URL); n.Name == "" || err != nil || pu.Host == "" {
				errs = append(errs, fmt.Errorf("region %q: hub node %q needs a name and a nats:// or tls:// URL", r.Name, n.Name))
			}
		}
		if r.CAFile != "" {
			b, err := os.ReadFile(r.CAFile)
			if err != nil {
				errs = append(errs, fmt.Errorf("region %q: ca_file: %v", r.Name, err))
			} else if !bytes.Contains(b, []byte("-----BEGIN CERTIFICATE-----")) {
				errs = append(errs, fmt.Errorf("region %q: ca_file %s holds no PEM certificate", r.Name, r.CAFile))
			}
			r.caBundle = string(b)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	return nil
}

// agentDist is the agent directory /downloads/ serves (api.Options.Agents):
// the one `fleetplane dev` set up, else AgentDir, else none (404).
func (c *Config) agentDist() *agentdist.Dir {
	if c.agents != nil {
		return c.agents
	}
	if c.AgentDir != "" {
		return agentdist.NewDir(c.AgentDir)
	}
	return nil
}

func (c *Config) domainRegions() []controlplane.Region {
	out := make([]controlplane.Region, len(c.Regions))
	for i, r := range c.Regions {
		out[i] = controlplane.Region{Name: r.Name, DisplayName: r.DisplayName,
			LeafURLs: r.LeafURLs, ClientURLs: r.ClientURLs, CABundle: r.caBundle}
		if out[i].DisplayName == "" {
			out[i].DisplayName = r.Name
		}
	}
	return out
}

func parseRegions(v string) ([]RegionConf, error) {
	var out []RegionConf
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, display, _ := strings.Cut(part, ":")
		out = append(out, RegionConf{Name: strings.TrimSpace(name), DisplayName: strings.TrimSpace(display)})
	}
	if len(out) == 0 {
		return nil, errors.New("no regions given")
	}
	return out, nil
}

func formatRegions(rs []RegionConf) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = r.Name
		if r.DisplayName != "" {
			parts[i] += ":" + r.DisplayName
		}
	}
	return strings.Join(parts, ",")
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log_level must be debug, info, warn or error, got %q", s)
	}
	return l, nil
}

// redactSecret shows whether a secret is set, never its value.
func redactSecret(s string) string {
	if s == "" {
		return ""
	}
	return "(set)"
}

// redactURL hides the password of a URL for display.
func redactURL(s string) string {
	if s == "" {
		return ""
	}
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	return "(set)"
}
