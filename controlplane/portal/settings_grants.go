package portal

import (
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Grants: list, a form with a live preview of the exact permissions (the
// Service's dry run: POST /grants/preview answers the preview box alone
// when settings.js asks for it, the whole form page otherwise), creation,
// one-time creds download, revocation with its proof.
//
// # The creds file
//
// When the third party brings no public key, the Service makes the key
// and returns a creds file (JWT + seed) once. The portal never puts the
// seed into a page: it keeps the file in this process's memory for
// credsTTL, bound to the session that created the grant and to the grant,
// behind a random 256-bit key, and the grant-created page offers it as a
// download: a POST (CSRF-checked, so neither a link prefetcher nor a
// cross-site page can fetch or burn it) that answers the file as an
// attachment once and forgets it (the bytes are zeroed); a second download
// or one after credsTTL is a 404. So the seed never lands in the HTML, the
// history, a cache or a session restore, and a download link copied
// elsewhere is useless. The cost: a portal behind several replicas needs
// the download to reach the replica that made the grant (sticky sessions),
// else it is a 404 and the grant must be revoked and made again — or, as
// the form recommends, the third party brings its own public key and no
// seed exists here at all.

var grantIDRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

var grantLifetimes = [][2]string{{"1h", "1 hour"}, {"8h", "8 hours"}, {"24h", "1 day"}, {"168h", "7 days"}, {"720h", "30 days"}}

var grantCategories = [][2]string{
	{"state", "State: position, battery, mode"},
	{"evt", "Events"},
	{"agent", "Agent status"},
	{"cmd", "Commands: send commands and receive the replies (only with listed vehicles)"},
}

var grantFields = fieldLabels{
	{"scopes[0].vehicle_ids", "Vehicles"}, {"scopes[0].categories", "Access"}, {"scopes[0].fleet", "Fleet"},
	{"scopes[0]", "Scope"}, {"scopes", "Scope"}, {"expires_at", "Expires"}, {"source_cidrs", "Source networks"},
	{"public_key", "Public key"}, {"description", "Description"},
}

// previewHeader marks settings.js's preview requests: they get the
// preview box alone.
const previewHeader = "X-Fleetplane-Fragment"

type grantForm struct {
	Description, Fleet, Vehicles, CIDRs, PublicKey string
	Lifetimes                                      []settingsChoice
	Categories                                     []settingsChoice
	// Fleets are the tenant's fleets; FleetSelect says whether they are
	// all there (a <select>) or only the first page (a text field with
	// suggestions).
	Fleets      []settingsChoice
	FleetSelect bool
}

// grantPreview is what the preview box shows: the Service's dry run, or
// why there is none.
type grantPreview struct {
	Ready           bool
	Publish         []string
	Subscribe       []string
	ExpiresAt       time.Time
	SourceCIDRs     []string
	ConnectionTypes []string
	Placeholder     string // the stand-in for the grant's ID in reply subjects, when used
	Error           *pageError
}

type grantNewData struct {
	Form    grantForm
	Preview grantPreview
}

type grantCreatedData struct {
	Grant    *controlplane.Grant
	JWT      string // the third party's own key: its JWT, to pair with its seed
	CredsKey string // the one-time download's key ("" = no creds file)
	CredsTTL string
}

type grantRow struct {
	*controlplane.Grant
	State  string
	Active bool
	Scope  []string
}

type grantsData struct {
	Grants []grantRow
	All    bool
	Next   string
}

type revocationView struct {
	*controlplane.Revocation
	Latency string
}

type grantDetailData struct {
	grantRow
	Revocation *revocationView
}

func readGrantForm(r *http.Request) grantForm {
	pf := r.PostForm
	f := grantForm{
		Description: strings.TrimSpace(pf.Get("description")),
		Fleet:       strings.TrimSpace(pf.Get("fleet")),
		Vehicles:    strings.TrimSpace(pf.Get("vehicle_ids")),
		CIDRs:       strings.TrimSpace(pf.Get("source_cidrs")),
		PublicKey:   strings.TrimSpace(pf.Get("public_key")),
		Lifetimes:   settingsChoices(grantLifetimes, pf.Get("expires_in")),
		Categories:  settingsChoices(grantCategories, ""),
	}
	for i := range f.Categories {
		f.Categories[i].Selected = slices.Contains(pf["categories"], f.Categories[i].Value)
	}
	return f
}

// input is the Service's GrantCreate of the form: one scope (a fleet, all
// or some of its vehicles, the chosen access).
func (f *grantForm) input(now time.Time) (controlplane.GrantCreate, error) {
	var v controlplane.ValidationError
	in := controlplane.GrantCreate{Description: f.Description, SourceCIDRs: settingsSplit(f.CIDRs), PublicKey: f.PublicKey}
	in.ExpiresAt = settingsExpiry(&v, "expires_at", selectedValue(f.Lifetimes), grantLifetimes, now)
	if f.Fleet == "" {
		v.Add("scopes[0].fleet", "choose a fleet")
	}
	sc := controlplane.GrantScopeSpec{Fleet: f.Fleet, VehicleIDs: settingsSplit(f.Vehicles)}
	for _, c := range f.Categories {
		if c.Selected {
			sc.Categories = append(sc.Categories, controlplane.GrantCategory(c.Value))
		}
	}
	if len(sc.Categories) == 0 {
		v.Add("scopes[0].categories", "choose at least one kind of access")
	}
	in.Scopes = []controlplane.GrantScopeSpec{sc}
	return in, v.Err()
}

func selectedValue(cs []settingsChoice) string {
	for _, c := range cs {
		if c.Selected {
			return c.Value
		}
	}
	return ""
}

func (s *server) newGrantPage(w http.ResponseWriter, r *http.Request) error {
	f := grantForm{Lifetimes: settingsChoices(grantLifetimes, "24h"), Categories: settingsChoices(grantCategories, "")}
	f.Categories[0].Selected = true
	f.Fleet = r.URL.Query().Get("fleet")
	return s.renderGrantNew(w, r, http.StatusOK, f, grantPreview{}, nil)
}

func (s *server) renderGrantNew(w http.ResponseWriter, r *http.Request, status int, f grantForm, prev grantPreview, ferr error) error {
	// Grants are admin business: ask the Service before showing the form.
	if _, err := s.svc.Grants(r.Context(), controlplane.PageRequest{Limit: 1}, false); err != nil {
		return err
	}
	fleets, err := s.svc.Fleets(r.Context(), controlplane.PageRequest{Limit: controlplane.MaxPageLimit})
	if err != nil {
		return err
	}
	if strings.HasPrefix(f.PublicKey, "S") {
		// A seed pasted where the public key belongs (the Service refused
		// it) is not echoed into the page.
		f.PublicKey = ""
	}
	f.FleetSelect = fleets.NextCursor == ""
	f.Fleets = nil
	for _, fl := range fleets.Items {
		f.Fleets = append(f.Fleets, settingsChoice{Value: fl.Slug, Label: fl.Name, Selected: fl.Slug == f.Fleet})
	}
	if f.Fleet == "" && len(f.Fleets) > 0 && f.FleetSelect {
		f.Fleets[0].Selected = true
		f.Fleet = f.Fleets[0].Value
	}
	p := s.newPage(w, r, "New grant", "grants")
	if ferr != nil {
		p.Error = grantFields.pageError(ferr)
	}
	p.Data = &grantNewData{Form: f, Preview: prev}
	s.render(w, r, status, "grant_new.html", p)
	return nil
}

// previewGrant runs the Service's dry run of the form: nothing is issued
// or stored. settings.js gets the preview box alone; without JavaScript
// the "Preview" button gets the whole form page with the box filled.
func (s *server) previewGrant(w http.ResponseWriter, r *http.Request) error {
	f := readGrantForm(r)
	in, err := f.input(time.Now())
	var g *controlplane.GrantCreated
	if err == nil {
		in.DryRun = true
		g, err = s.svc.CreateGrant(r.Context(), in)
	}
	var prev grantPreview
	status := http.StatusOK
	if err != nil {
		if _, coded := statusOf[controlplane.ErrorCode(err)]; !coded {
			return err
		}
		prev.Error = grantFields.pageError(err)
		status = settingsStatus(err)
	} else {
		prev = grantPreview{Ready: true, Publish: g.Publish, Subscribe: g.Subscribe, ExpiresAt: g.ExpiresAt,
			SourceCIDRs: g.SourceCIDRs, ConnectionTypes: g.ConnectionTypes}
		for _, sub := range slices.Concat(g.Publish, g.Subscribe) {
			if strings.Contains(sub, controlplane.DryRunGrantID) {
				prev.Placeholder = controlplane.DryRunGrantID
			}
		}
	}
	if r.Header.Get(previewHeader) == "grant-preview" {
		p := s.newPage(w, r, "Preview", "grants")
		p.Data = &grantNewData{Form: f, Preview: prev}
		s.renderFragment(w, r, status, "grant_new.html", "settings-grant-preview", p)
		return nil
	}
	if err != nil && !settingsFormError(err) {
		return err
	}
	// The error is in the preview box, next to the form; the page's
	// status says what happened.
	return s.renderGrantNew(w, r, status, f, prev, nil)
}

func (s *server) createGrant(w http.ResponseWriter, r *http.Request) error {
	f := readGrantForm(r)
	in, err := f.input(time.Now())
	var g *controlplane.GrantCreated
	if err == nil {
		g, err = s.svc.CreateGrant(r.Context(), in)
	}
	if err != nil {
		if !settingsFormError(err) {
			return err
		}
		return s.renderGrantNew(w, r, settingsStatus(err), f, grantPreview{}, err)
	}
	d := &grantCreatedData{Grant: &g.Grant, CredsTTL: "5 minutes"}
	if g.Creds != nil {
		d.CredsKey = grantCreds.put(sessionFrom(r.Context()).ID, g.ID, g.Creds, time.Now())
		clear(g.Creds)
	} else {
		d.JWT = g.JWT
	}
	s.show(w, r, http.StatusOK, "grant_created.html", "Grant created", "grants", d)
	return nil
}

// downloadGrantCreds answers the creds file once, to the session that
// created the grant, within credsTTL.
func (s *server) downloadGrantCreds(w http.ResponseWriter, r *http.Request) error {
	id := chi.URLParam(r, "id")
	if !grantIDRe.MatchString(id) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "grant %q not found", truncateID(id))
	}
	// The Service decides who may see grants (and whether this one exists).
	g, err := s.svc.Grant(r.Context(), id)
	if err != nil {
		return err
	}
	key := r.PostForm.Get("key")
	creds, ok := grantCreds.take(key, sessionFrom(r.Context()).ID, g.ID, time.Now())
	if !ok {
		return controlplane.Errorf(controlplane.ENOTFOUND, "the creds file of grant %s was already downloaded, or its %s are over: "+
			"it is not kept. Revoke the grant and create a new one (or give the holder's own public key)", g.ID, "5 minutes")
	}
	defer clear(creds)
	if g.RevokedAt != nil {
		return controlplane.Errorf(controlplane.ENOTFOUND, "grant %s is revoked: its creds file is gone", g.ID)
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Disposition", `attachment; filename="`+g.ID+`.creds"`)
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(creds)
	return nil
}

func grantState(g *controlplane.Grant, now time.Time) (string, bool) {
	switch {
	case g.RevokedAt != nil:
		return "revoked", false
	case !g.ExpiresAt.After(now):
		return "expired", false
	}
	return "active", true
}

// grantScope describes a grant's reach in words, one line per scope.
func grantScope(g *controlplane.Grant) []string {
	var out []string
	for _, sc := range g.Scopes {
		who := "all vehicles"
		if len(sc.VehicleIDs) > 0 {
			who = strings.Join(sc.VehicleIDs, ", ")
		}
		cats := make([]string, len(sc.Categories))
		for i, c := range sc.Categories {
			cats[i] = string(c)
		}
		out = append(out, sc.Fleet+": "+who+" ("+strings.Join(cats, ", ")+")")
	}
	if len(g.Scopes) == 0 {
		out = append(out, "explicit subjects")
	}
	return out
}

func newGrantRow(g *controlplane.Grant, now time.Time) grantRow {
	st, active := grantState(g, now)
	return grantRow{Grant: g, State: st, Active: active, Scope: grantScope(g)}
}

func (s *server) grantsPage(w http.ResponseWriter, r *http.Request) error {
	all := r.URL.Query().Get("all") == "1"
	page, err := s.svc.Grants(r.Context(), settingsCursor(r), all)
	if err != nil {
		return err
	}
	now := time.Now()
	d := &grantsData{All: all}
	for _, g := range page.Items {
		d.Grants = append(d.Grants, newGrantRow(g, now))
	}
	if page.NextCursor != "" {
		d.Next = settingsPageLink("/grants", r.URL.Query(), page.NextCursor)
	}
	s.show(w, r, http.StatusOK, "grants.html", "Grants", "grants", d)
	return nil
}

func (s *server) grantPage(w http.ResponseWriter, r *http.Request) error {
	id := chi.URLParam(r, "id")
	if !grantIDRe.MatchString(id) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "grant %q not found", truncateID(id))
	}
	g, err := s.svc.Grant(r.Context(), id)
	if err != nil {
		return err
	}
	d := &grantDetailData{grantRow: newGrantRow(g, time.Now())}
	if rev := g.Revocation; rev != nil {
		d.Revocation = &revocationView{Revocation: rev}
		if rev.Status == controlplane.RevocationProven {
			d.Revocation.Latency = rev.Latency.Round(100 * time.Microsecond).String()
		}
	}
	title := "Grant " + g.ID
	if g.Description != "" {
		title = "Grant: " + g.Description
	}
	s.show(w, r, http.StatusOK, "grant.html", title, "grants", d)
	return nil
}

func (s *server) revokeGrant(w http.ResponseWriter, r *http.Request) error {
	id := chi.URLParam(r, "id")
	if !grantIDRe.MatchString(id) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "grant %q not found", truncateID(id))
	}
	if _, err := s.svc.RevokeGrant(r.Context(), id); err != nil {
		return err
	}
	// The grant's page shows the revocation and its proof.
	redirect(w, r, "/grants/"+id, "revoked")
	return nil
}

var contextFileRe = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// grantContext downloads the grant's `nats` CLI context (no secret: it
// names the path where the holder keeps the creds file).
func (s *server) grantContext(w http.ResponseWriter, r *http.Request) error {
	id := chi.URLParam(r, "id")
	if !grantIDRe.MatchString(id) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "grant %q not found", truncateID(id))
	}
	c, err := s.svc.GrantContext(r.Context(), id)
	if err != nil {
		return err
	}
	name := c.Name
	if !contextFileRe.MatchString(name) {
		name = id
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Disposition", `attachment; filename="`+name+`.json"`)
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(c.Context)
	return nil
}

// --- the one-time creds store ---

// credsTTL is how long a creds file waits for its download.
const credsTTL = 5 * time.Minute

// maxPendingCreds bounds the store (the oldest file goes first), and
// maxPendingCredsPerSession one session's share of it, so that one tenant
// creating many grants cannot push out another's pending downloads.
const (
	maxPendingCreds           = 10_000
	maxPendingCredsPerSession = 20
)

// grantCreds holds the creds files waiting for their one download. It is
// process memory only: nothing is written to Postgres or disk.
var grantCreds = &onceStore{ttl: credsTTL, max: maxPendingCreds, perSession: maxPendingCredsPerSession}

type onceStore struct {
	mu         sync.Mutex
	ttl        time.Duration
	max        int
	perSession int
	items      map[string]*onceItem
}

type onceItem struct {
	session, owner string
	data           []byte
	expires        time.Time
}

// put keeps a copy of data for session and owner (the grant) and returns
// its random key.
func (o *onceStore) put(session, owner string, data []byte, now time.Time) string {
	key := newID(32)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.items == nil {
		o.items = map[string]*onceItem{}
	}
	o.sweep(now)
	for o.perSession > 0 && o.count(session) >= o.perSession {
		o.dropOldest(session)
	}
	for len(o.items) >= o.max {
		o.dropOldest("")
	}
	o.items[key] = &onceItem{session: session, owner: owner, data: slices.Clone(data), expires: now.Add(o.ttl)}
	return key
}

// take returns the data under key and forgets it, when key, session and
// owner match and it has not expired. A wrong session or owner leaves it
// in place (someone else cannot burn it).
func (o *onceStore) take(key, session, owner string, now time.Time) ([]byte, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sweep(now)
	it, ok := o.items[key]
	if !ok || it.session != session || it.owner != owner || session == "" {
		return nil, false
	}
	delete(o.items, key)
	return it.data, true
}

func (o *onceStore) sweep(now time.Time) {
	for k, it := range o.items {
		if !now.Before(it.expires) {
			clear(it.data)
			delete(o.items, k)
		}
	}
}

func (o *onceStore) count(session string) int {
	n := 0
	for _, it := range o.items {
		if it.session == session {
			n++
		}
	}
	return n
}

// dropOldest forgets the oldest item (of session, unless "").
func (o *onceStore) dropOldest(session string) {
	var oldest string
	var at time.Time
	for k, it := range o.items {
		if session != "" && it.session != session {
			continue
		}
		if oldest == "" || it.expires.Before(at) {
			oldest, at = k, it.expires
		}
	}
	clear(o.items[oldest].data)
	delete(o.items, oldest)
}
