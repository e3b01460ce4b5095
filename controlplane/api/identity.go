package api

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Handlers of the NATS identity layer (DESIGN.md §2): enrollment tokens,
// enrollment and renewal (public), vehicle credentials and revocation,
// grants. Every decision is the service's; these only translate.

var (
	// enrollmentTokenIDRe: token IDs are made like API key IDs.
	enrollmentTokenIDRe = apiKeyIDRe
	grantIDRe           = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
)

// maxEnrollmentTokenUses bounds max_uses (openapi.yaml says the same).
const maxEnrollmentTokenUses = 100_000

// --- enrollment tokens ---

func enrollmentTokenPath(fleetSlug, id string) string {
	return fleetPath(fleetSlug) + "/enrollment-tokens/" + url.PathEscape(id)
}

func (s *server) listEnrollmentTokens(w http.ResponseWriter, r *http.Request) error {
	q := newQuery(r, "cursor", "limit", "include_inactive")
	page := q.page()
	includeInactive := q.boolean("include_inactive")
	if err := q.err(); err != nil {
		return err
	}
	p, err := s.svc.EnrollmentTokens(r.Context(), pathParam(r, "fleet"), page, includeInactive)
	if err != nil {
		return err
	}
	now := time.Now()
	return writeJSON(w, http.StatusOK, EnrollmentTokenList{
		Items:      listOut(p.Items, func(t *controlplane.EnrollmentToken) EnrollmentToken { return enrollmentTokenOut(t, now) }),
		NextCursor: cursorOut(p.NextCursor),
	})
}

func (s *server) createEnrollmentToken(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	var in EnrollmentTokenCreate
	if err := s.decode(w, r, &in); err != nil {
		return err
	}
	// The domain reads 0 as "the default, 1": an explicit 0 must not
	// become a usable token.
	if in.MaxUses != nil && (*in.MaxUses < 1 || *in.MaxUses > maxEnrollmentTokenUses) {
		var v controlplane.ValidationError
		v.Add("max_uses", "must be between 1 and %d", maxEnrollmentTokenUses)
		return v.Err()
	}
	slug := pathParam(r, "fleet")
	t, err := s.svc.CreateEnrollmentToken(r.Context(), slug, enrollmentTokenCreateIn(in))
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store") // holds a secret
	w.Header().Set("Location", enrollmentTokenPath(slug, t.ID))
	return writeJSON(w, http.StatusCreated, enrollmentTokenCreatedOut(t, time.Now(), s.installCommand(r, t.Secret)))
}

func (s *server) getEnrollmentToken(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	id := pathParam(r, "id")
	if !enrollmentTokenIDRe.MatchString(id) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "enrollment token %q not found", id)
	}
	t, err := s.svc.EnrollmentToken(r.Context(), pathParam(r, "fleet"), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, enrollmentTokenOut(t, time.Now()))
}

func (s *server) revokeEnrollmentToken(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	id := pathParam(r, "id")
	if !enrollmentTokenIDRe.MatchString(id) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "enrollment token %q not found", id)
	}
	if err := s.svc.RevokeEnrollmentToken(r.Context(), pathParam(r, "fleet"), id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// installCommand is the one-liner that installs the agent with token. The
// base URL is Options.PublicURL or else the one this request came to.
func (s *server) installCommand(r *http.Request, token string) string {
	return "curl -fsSL " + shellQuote(s.publicBase(r)+"/install.sh") + " | sudo sh -s -- --token " + shellQuote(token)
}

// shellQuote returns s as one sh word: unchanged when it is plainly safe
// (every URL and token the server makes), single-quoted otherwise (a Host
// header may carry characters the shell would interpret).
func shellQuote(s string) string {
	safe := s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("-_.:/@%+=,[]", r))
	})
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// --- enrollment and renewal (public) ---

func (s *server) enroll(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	var in EnrollRequest
	if err := s.decode(w, r, &in); err != nil {
		return err
	}
	// Every token problem is one EUNAUTHORIZED with one message, from the
	// service; it goes out unchanged, so the answer is no oracle.
	c, err := s.svc.Enroll(r.Context(), enrollIn(in))
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusCreated, vehicleCredentialsOut(c, ""))
}

func (s *server) createAgentNonce(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	var in AgentNonceRequest
	if err := s.decode(w, r, &in); err != nil {
		return err
	}
	n, err := s.svc.NewAgentNonce(r.Context(), in.PublicKey)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusCreated, agentNonceOut(n))
}

func (s *server) renewAgent(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	var in RenewRequest
	if err := s.decode(w, r, &in); err != nil {
		return err
	}
	c, err := s.svc.RenewAgent(r.Context(), renewIn(in))
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, vehicleCredentialsOut(c, ""))
}

func (s *server) agentIngestPosition(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	var in RenewRequest
	if err := s.decode(w, r, &in); err != nil {
		return err
	}
	pos, err := s.svc.AgentIngestPosition(r.Context(), renewIn(in))
	if err != nil {
		return err
	}
	out := IngestPosition{StoredAt: pos.StoredAt}
	if pos.MsgID != "" {
		out.LastMsgId = &pos.MsgID
	}
	if pos.Sequence > 0 {
		seq := int64(pos.Sequence)
		out.LastSequence = &seq
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, out)
}

// --- vehicle credentials and revocation ---

func (s *server) issueVehicleCredentials(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	var in VehicleCredentialsRequest
	if err := s.decode(w, r, &in); err != nil {
		return err
	}
	slug := pathParam(r, "fleet")
	c, err := s.svc.IssueVehicleCredentials(r.Context(), slug, pathParam(r, "vehicle"), in.PublicKey)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusCreated, vehicleCredentialsOut(c, slug))
}

func (s *server) revokeVehicle(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	if err := s.noBody(w, r); err != nil {
		return err
	}
	rev, err := s.svc.RevokeVehicle(r.Context(), pathParam(r, "fleet"), pathParam(r, "vehicle"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, revocationOut(rev))
}

// noBody accepts a POST that takes no input: no body, or an empty JSON
// object. Anything else is refused rather than silently ignored.
func (s *server) noBody(w http.ResponseWriter, r *http.Request) error {
	if r.ContentLength == 0 && len(r.TransferEncoding) == 0 {
		return nil
	}
	return s.decode(w, r, &struct{}{})
}

// --- grants ---

func grantPath(id string) string { return "/v1/grants/" + url.PathEscape(id) }

func (s *server) listGrants(w http.ResponseWriter, r *http.Request) error {
	q := newQuery(r, "cursor", "limit", "include_inactive")
	page := q.page()
	includeInactive := q.boolean("include_inactive")
	if err := q.err(); err != nil {
		return err
	}
	p, err := s.svc.Grants(r.Context(), page, includeInactive)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, GrantList{Items: listOut(p.Items, grantOut), NextCursor: cursorOut(p.NextCursor)})
}

func (s *server) createGrant(w http.ResponseWriter, r *http.Request) error {
	q := newQuery(r, "dry_run")
	queryDryRun := q.boolean("dry_run")
	if err := q.err(); err != nil {
		return err
	}
	var body GrantCreate
	if err := s.decode(w, r, &body); err != nil {
		return err
	}
	if q.has("dry_run") && body.DryRun != nil && *body.DryRun != queryDryRun {
		var v controlplane.ValidationError
		v.Add("dry_run", "the query parameter says %t, the body %t; give one or make them agree", queryDryRun, *body.DryRun)
		return v.Err()
	}
	in := grantCreateIn(body)
	in.DryRun = in.DryRun || queryDryRun
	g, err := s.svc.CreateGrant(r.Context(), in)
	if err != nil {
		return err
	}
	if in.DryRun {
		return writeJSON(w, http.StatusOK, grantPreviewOut(&g.Grant))
	}
	w.Header().Set("Cache-Control", "no-store") // may hold creds
	w.Header().Set("Location", grantPath(g.ID))
	return writeJSON(w, http.StatusCreated, grantCreatedOut(g))
}

func (s *server) grantID(r *http.Request) (string, error) {
	id := pathParam(r, "id")
	if !grantIDRe.MatchString(id) {
		return "", controlplane.Errorf(controlplane.ENOTFOUND, "grant %q not found", id)
	}
	return id, nil
}

func (s *server) getGrant(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	id, err := s.grantID(r)
	if err != nil {
		return err
	}
	g, err := s.svc.Grant(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, grantOut(g))
}

func (s *server) revokeGrant(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	id, err := s.grantID(r)
	if err != nil {
		return err
	}
	rev, err := s.svc.RevokeGrant(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, revocationOut(rev))
}

// contextFileRe keeps the suggested file name harmless in a header.
var contextFileRe = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

func (s *server) getGrantContext(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	id, err := s.grantID(r)
	if err != nil {
		return err
	}
	c, err := s.svc.GrantContext(r.Context(), id)
	if err != nil {
		return err
	}
	name := c.Name
	if !contextFileRe.MatchString(name) {
		name = id
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`.json"`)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(c.Context)
	return nil
}
