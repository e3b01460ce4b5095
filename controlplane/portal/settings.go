package portal

import (
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// The settings pages: enrollment tokens, grants, API keys, usage and
// billing, and the audit log. Every handler calls the Service methods the
// REST API calls for the same thing (controlplane/api identity.go,
// handlers.go, billing.go), so roles, validation and auditing are the
// Service's.
//
// Secrets are shown once: the page that shows an enrollment token, an API
// key or a grant's JWT is the answer to the POST that made it (never
// stored, Cache-Control: no-store), and settings.js replaces that page's
// URL with the list's (history.replaceState), so reload and back fetch
// the list rather than posting the form again. A grant's creds file (the
// one secret the server makes and holds even briefly) is downloaded once:
// see settings_grants.go.

func (s *server) settingsRoutes(r chi.Router) {
	r.Get("/fleets/{fleet}/enroll", s.handle(s.enrollPage))
	r.Post("/fleets/{fleet}/enroll", s.handle(s.createEnrollmentToken))
	r.Post("/fleets/{fleet}/enroll/{id}/revoke", s.handle(s.revokeEnrollmentToken))

	r.Get("/grants", s.handle(s.grantsPage))
	r.Get("/grants/new", s.handle(s.newGrantPage))
	r.Post("/grants/preview", s.handle(s.previewGrant))
	r.Post("/grants", s.handle(s.createGrant))
	r.Get("/grants/{id}", s.handle(s.grantPage))
	r.Get("/grants/{id}/context", s.handle(s.grantContext))
	r.Post("/grants/{id}/creds", s.handle(s.downloadGrantCreds))
	r.Post("/grants/{id}/revoke", s.handle(s.revokeGrant))

	r.Get("/api-keys", s.handle(s.apiKeysPage))
	r.Post("/api-keys", s.handle(s.createAPIKey))
	r.Post("/api-keys/{id}/revoke", s.handle(s.revokeAPIKey))

	r.Get("/billing", s.handle(s.billingPage))
	r.Post("/billing/checkout", s.handle(s.billingCheckout))
	r.Post("/billing/portal", s.handle(s.billingPortal))

	r.Get("/audit", s.handle(s.auditPage))
}

// --- shared helpers of the settings pages ---

// settingsChoice is one option of a <select> or one checkbox.
type settingsChoice struct {
	Value, Label string
	Selected     bool
}

// choices marks the option whose value is sel.
func settingsChoices(opts [][2]string, sel string) []settingsChoice {
	out := make([]settingsChoice, len(opts))
	for i, o := range opts {
		out[i] = settingsChoice{Value: o[0], Label: o[1], Selected: o[0] == sel}
	}
	return out
}

// expiresIn parses a lifetime chosen from opts (the form's <select>): a
// value that is not one of them is refused, so the form cannot be used to
// pick arbitrary lifetimes the page never offered.
func settingsExpiry(v *controlplane.ValidationError, field, value string, opts [][2]string, now time.Time) *time.Time {
	for _, o := range opts {
		if o[0] != value {
			continue
		}
		if value == "never" {
			return nil
		}
		d, err := time.ParseDuration(value)
		if err != nil {
			break
		}
		t := now.Add(d).UTC().Truncate(time.Second)
		return &t
	}
	v.Add(field, "choose one of the offered lifetimes")
	return nil
}

// settingsSplit splits a list typed into a text field or textarea at commas
// and white space.
func settingsSplit(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool {
		return r == ',' || r == ';' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
	})
}

// settingsFormError reports whether err belongs next to the form the user
// filled in (rather than on the error page): invalid input, a missing
// fleet or vehicle named in the form, a conflict, a plan limit.
func settingsFormError(err error) bool {
	switch controlplane.ErrorCode(err) {
	case controlplane.EINVALID, controlplane.ENOTFOUND, controlplane.ECONFLICT,
		controlplane.EPAYMENTREQUIRED, controlplane.EUNPROCESSABLE:
		return true
	}
	return false
}

// fieldLabels turns the Service's (API) field names into the form's labels.
type fieldLabels [][2]string

// pageError is formError with the API's field names replaced by the
// form's labels (longest names first).
func (l fieldLabels) pageError(err error) *pageError {
	pe := formError(err)
	pe.Message = l.replace(pe.Message)
	for i, f := range pe.Fields {
		pe.Fields[i] = l.replace(f)
	}
	return pe
}

func (l fieldLabels) replace(s string) string {
	for _, fl := range l {
		if strings.HasPrefix(s, fl[0]) {
			return fl[1] + strings.TrimPrefix(s, fl[0])
		}
	}
	return s
}

// settingsStatus is the HTTP status of a form error.
func settingsStatus(err error) int {
	if st, ok := statusOf[controlplane.ErrorCode(err)]; ok {
		return st
	}
	return http.StatusBadRequest
}

// settingsPageLink is the URL of path with the query q and cursor (when not "").
func settingsPageLink(path string, q url.Values, cursor string) string {
	v := url.Values{}
	for k, vs := range q {
		if k != "cursor" && k != "m" && len(vs) > 0 && vs[0] != "" {
			v.Set(k, vs[0])
		}
	}
	if cursor != "" {
		v.Set("cursor", cursor)
	}
	if len(v) == 0 {
		return path
	}
	return path + "?" + v.Encode()
}

// pageRequest reads the cursor of a list page (the Service validates it).
func settingsCursor(r *http.Request) controlplane.PageRequest {
	return controlplane.PageRequest{Cursor: r.URL.Query().Get("cursor")}
}

// --- enrollment tokens ---

var (
	// tokenIDRe and apiKeyIDRe: IDs are made by internal/secret (16
	// base32 characters); anything else is not found without asking.
	tokenIDRe  = regexp.MustCompile(`^[a-z2-7]{16}$`)
	apiKeyIDRe = tokenIDRe
)

var tokenLifetimes = [][2]string{{"1h", "1 hour"}, {"24h", "1 day"}, {"168h", "7 days"}, {"720h", "30 days"}}

var tokenFields = fieldLabels{
	{"expires_at", "Expires"}, {"max_uses", "Uses"}, {"vehicle_id", "Vehicle ID"},
	{"source_cidrs", "Source networks"}, {"description", "Description"},
}

type tokenForm struct {
	Description, MaxUses, VehicleID, CIDRs string
	Lifetimes                              []settingsChoice
}

type tokenRow struct {
	*controlplane.EnrollmentToken
	State  string // active, revoked, expired, used up
	Active bool
}

type enrollData struct {
	Fleet  *controlplane.Fleet
	Tokens []tokenRow
	All    bool   // inactive tokens are listed too
	Next   string // the next page's URL ("" = last page)
	Form   tokenForm
}

type enrollCreatedData struct {
	Fleet   *controlplane.Fleet
	Token   *controlplane.EnrollmentTokenCreated
	Command string // the install one-liner, with the token's secret
	ListURL string
}

func enrollPath(fleet string) string { return "/fleets/" + url.PathEscape(fleet) + "/enroll" }

func (s *server) enrollPage(w http.ResponseWriter, r *http.Request) error {
	return s.renderEnroll(w, r, http.StatusOK, tokenForm{MaxUses: "1", Lifetimes: settingsChoices(tokenLifetimes, "24h")}, nil)
}

func (s *server) renderEnroll(w http.ResponseWriter, r *http.Request, status int, f tokenForm, ferr error) error {
	ctx := r.Context()
	f0, err := s.svc.Fleet(ctx, chi.URLParam(r, "fleet"))
	if err != nil {
		return err
	}
	all := r.URL.Query().Get("all") == "1"
	page, err := s.svc.EnrollmentTokens(ctx, f0.Slug, settingsCursor(r), all)
	if err != nil {
		return err
	}
	now := time.Now()
	d := &enrollData{Fleet: f0, All: all, Form: f}
	for _, t := range page.Items {
		row := tokenRow{EnrollmentToken: t}
		switch {
		case t.RevokedAt != nil:
			row.State = "revoked"
		case !t.ExpiresAt.After(now):
			row.State = "expired"
		case t.Uses >= t.MaxUses:
			row.State = "used up"
		default:
			row.State, row.Active = "active", true
		}
		d.Tokens = append(d.Tokens, row)
	}
	if page.NextCursor != "" {
		d.Next = settingsPageLink(enrollPath(f0.Slug), r.URL.Query(), page.NextCursor)
	}
	p := s.newPage(w, r, "Enroll vehicles in "+f0.Name, "fleets")
	if ferr != nil {
		p.Error = tokenFields.pageError(ferr)
	}
	p.Data = d
	s.render(w, r, status, "enroll.html", p)
	return nil
}

func (s *server) createEnrollmentToken(w http.ResponseWriter, r *http.Request) error {
	slug := chi.URLParam(r, "fleet")
	f := tokenForm{
		Description: strings.TrimSpace(r.PostForm.Get("description")),
		MaxUses:     strings.TrimSpace(r.PostForm.Get("max_uses")),
		VehicleID:   strings.TrimSpace(r.PostForm.Get("vehicle_id")),
		CIDRs:       strings.TrimSpace(r.PostForm.Get("source_cidrs")),
		Lifetimes:   settingsChoices(tokenLifetimes, r.PostForm.Get("expires_in")),
	}
	var v controlplane.ValidationError
	in := controlplane.EnrollmentTokenCreate{Description: f.Description, VehicleID: f.VehicleID, SourceCIDRs: settingsSplit(f.CIDRs)}
	in.ExpiresAt = settingsExpiry(&v, "expires_at", r.PostForm.Get("expires_in"), tokenLifetimes, time.Now())
	in.MaxUses = 1
	if f.MaxUses != "" {
		// The domain reads 0 as 1: an explicit 0 must not become a token.
		n, err := strconv.Atoi(f.MaxUses)
		if err != nil || n < 1 || n > 100_000 {
			v.Add("max_uses", "must be a whole number between 1 and 100000")
		}
		in.MaxUses = n
	}
	err := v.Err()
	var t *controlplane.EnrollmentTokenCreated
	if err == nil {
		t, err = s.svc.CreateEnrollmentToken(r.Context(), slug, in)
	}
	if err != nil {
		if !settingsFormError(err) {
			return err
		}
		// A fleet that does not exist fails renderEnroll with its 404.
		return s.renderEnroll(w, r, settingsStatus(err), f, err)
	}
	fl, err := s.svc.Fleet(r.Context(), t.FleetSlug)
	if err != nil {
		return err
	}
	s.show(w, r, http.StatusOK, "enroll_created.html", "Enrollment token created", "fleets", &enrollCreatedData{Fleet: fl, Token: t, Command: s.installCommand(r, t.Secret), ListURL: enrollPath(fl.Slug)})
	return nil
}

func (s *server) revokeEnrollmentToken(w http.ResponseWriter, r *http.Request) error {
	slug, id := chi.URLParam(r, "fleet"), chi.URLParam(r, "id")
	if !tokenIDRe.MatchString(id) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "enrollment token %q not found", truncateID(id))
	}
	if err := s.svc.RevokeEnrollmentToken(r.Context(), slug, id); err != nil {
		return err
	}
	redirect(w, r, enrollPath(slug), "revoked")
	return nil
}

// installCommand is the one-liner that installs the agent with token, like
// the API's: the install script is served at the control plane's public
// URL (Options.PublicURL, else the origin this request came to).
func (s *server) installCommand(r *http.Request, token string) string {
	base := strings.TrimRight(s.opts.PublicURL, "/")
	if base == "" {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		if s.opts.TrustProxyHeaders {
			if p := strings.ToLower(r.Header.Get("X-Forwarded-Proto")); p == "https" || p == "http" {
				scheme = p
			}
		}
		base = scheme + "://" + r.Host
	}
	return "curl -fsSL " + installShellQuote(base+"/install.sh") + " | sudo sh -s -- --token " + installShellQuote(token)
}

// installShellQuote returns s as one sh word: unchanged when plainly safe,
// single-quoted otherwise (a Host header may carry characters the shell
// would interpret).
func installShellQuote(s string) string {
	safe := s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("-_.:/@%+=,[]", r))
	})
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func truncateID(id string) string {
	if len(id) > 64 {
		return strings.ToValidUTF8(id[:64], "") + "…"
	}
	return id
}

// --- API keys ---

var keyLifetimes = [][2]string{{"never", "Never"}, {"720h", "30 days"}, {"2160h", "90 days"}, {"8760h", "1 year"}}

var keyRoles = [][2]string{{"viewer", "viewer — reads everything"}, {"member", "member — fleets and vehicles"}, {"admin", "admin — everything but the organisation"}}

var keyFields = fieldLabels{{"name", "Name"}, {"role", "Role"}, {"expires_at", "Expires"}}

type keyForm struct {
	Name      string
	Roles     []settingsChoice
	Lifetimes []settingsChoice
}

type keyRow struct {
	*controlplane.APIKey
	State  string
	Active bool
}

type apiKeysData struct {
	Keys []keyRow
	All  bool
	Next string
	Form keyForm
}

type apiKeyCreatedData struct {
	Key *controlplane.APIKeyCreated
}

func (s *server) apiKeysPage(w http.ResponseWriter, r *http.Request) error {
	return s.renderAPIKeys(w, r, http.StatusOK, keyForm{Roles: settingsChoices(keyRoles, "viewer"), Lifetimes: settingsChoices(keyLifetimes, "never")}, nil)
}

func (s *server) renderAPIKeys(w http.ResponseWriter, r *http.Request, status int, f keyForm, ferr error) error {
	all := r.URL.Query().Get("all") == "1"
	page, err := s.svc.APIKeys(r.Context(), settingsCursor(r), all)
	if err != nil {
		return err
	}
	now := time.Now()
	d := &apiKeysData{All: all, Form: f}
	for _, k := range page.Items {
		row := keyRow{APIKey: k}
		switch {
		case k.RevokedAt != nil:
			row.State = "revoked"
		case k.ExpiresAt != nil && !k.ExpiresAt.After(now):
			row.State = "expired"
		default:
			row.State, row.Active = "active", true
		}
		d.Keys = append(d.Keys, row)
	}
	if page.NextCursor != "" {
		d.Next = settingsPageLink("/api-keys", r.URL.Query(), page.NextCursor)
	}
	p := s.newPage(w, r, "API keys", "api-keys")
	if ferr != nil {
		p.Error = keyFields.pageError(ferr)
	}
	p.Data = d
	s.render(w, r, status, "api_keys.html", p)
	return nil
}

func (s *server) createAPIKey(w http.ResponseWriter, r *http.Request) error {
	f := keyForm{
		Name:      strings.TrimSpace(r.PostForm.Get("name")),
		Roles:     settingsChoices(keyRoles, r.PostForm.Get("role")),
		Lifetimes: settingsChoices(keyLifetimes, r.PostForm.Get("expires_in")),
	}
	var v controlplane.ValidationError
	in := controlplane.APIKeyCreate{Name: f.Name, Role: controlplane.Role(r.PostForm.Get("role"))}
	if in.Role == "" {
		// The Service's default is admin: the portal asks explicitly.
		v.Add("role", "choose a role")
	}
	in.ExpiresAt = settingsExpiry(&v, "expires_at", r.PostForm.Get("expires_in"), keyLifetimes, time.Now())
	err := v.Err()
	var k *controlplane.APIKeyCreated
	if err == nil {
		k, err = s.svc.CreateAPIKey(r.Context(), in)
	}
	if err != nil {
		if !settingsFormError(err) {
			return err
		}
		return s.renderAPIKeys(w, r, settingsStatus(err), f, err)
	}
	s.show(w, r, http.StatusOK, "api_key_created.html", "API key created", "api-keys", &apiKeyCreatedData{Key: k})
	return nil
}

func (s *server) revokeAPIKey(w http.ResponseWriter, r *http.Request) error {
	id := chi.URLParam(r, "id")
	if !apiKeyIDRe.MatchString(id) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "API key %q not found", truncateID(id))
	}
	if err := s.svc.RevokeAPIKey(r.Context(), id); err != nil {
		return err
	}
	redirect(w, r, "/api-keys", "revoked")
	return nil
}

// --- fragments ---

// renderFragment executes one named template of page (a partial) alone:
// the grant preview that settings.js swaps into the form.
func (s *server) renderFragment(w http.ResponseWriter, r *http.Request, status int, pageName, name string, p *page) {
	s.execute(w, r, status, pageName, name, p)
}
