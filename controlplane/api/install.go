package api

import (
	"bytes"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/agentdist"
)

// downloadWriteTimeout replaces the server's write timeout for one agent
// download: a 20 MB binary over a slow cellular link takes minutes.
const downloadWriteTimeout = 30 * time.Minute

// installRoutes serves the one-line install: the script and the agent
// binaries it downloads, outside /v1 because the one-liner and the script
// name these URLs (docs/install.md). Both are public; HEAD works.
func (s *server) installRoutes(r chi.Router) {
	r.Get("/install.sh", s.handle(s.installScript))
	r.Head("/install.sh", s.handle(s.installScript))
	r.Get("/downloads/{file}", s.handle(s.download))
	r.Head("/downloads/{file}", s.handle(s.download))
}

// installScript serves install.sh bound to this control plane's URL.
func (s *server) installScript(w http.ResponseWriter, r *http.Request) error {
	// Query strings are ignored (cache busters are common on such URLs).
	body := agentdist.Script(s.publicBase(r))
	h := w.Header()
	// text/plain: a browser shows the script, so people can read what they
	// are about to pipe into sh.
	h.Set("Content-Type", "text/plain; charset=utf-8")
	// Bound to the Host of the request when no public URL is configured: a
	// shared cache must not hand one host's script to another.
	h.Set("Cache-Control", "no-store")
	http.ServeContent(w, r, "install.sh", time.Time{}, bytes.NewReader(body))
	return nil
}

// download serves one agent binary or checksum from the fixed allow-list.
func (s *server) download(w http.ResponseWriter, r *http.Request) error {
	name := pathParam(r, "file")
	if !agentIsDownload(name) {
		return controlplane.Errorf(controlplane.ENOTFOUND, "no download %q: there are %s", name, strings.Join(agentdist.Downloads, ", "))
	}
	if s.opts.Agents == nil {
		return controlplane.Errorf(controlplane.ENOTFOUND, "this server has no agent binaries (configure agent_dir)")
	}
	f, err := s.opts.Agents.Open(name)
	switch {
	case errors.Is(err, agentdist.ErrNotFound):
		return controlplane.Errorf(controlplane.ENOTFOUND, "this server has no %s (the agent binaries in agent_dir lack it)", name)
	case errors.Is(err, agentdist.ErrBuilding):
		w.Header().Set("Retry-After", "30")
		return controlplane.Errorf(controlplane.EUNAVAILABLE, "the agent binaries are being built; retry in a minute")
	case errors.Is(err, agentdist.ErrBuildFailed):
		return controlplane.Errorf(controlplane.EUNAVAILABLE, "building the agent binaries failed; see the server log")
	case err != nil:
		return err
	}
	defer f.Close()
	h := w.Header()
	if f.Binary {
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Disposition", `attachment; filename="`+name+`"`)
	} else {
		h.Set("Content-Type", "text/plain; charset=utf-8")
	}
	// The names stay while their content changes with each release, so
	// caches may keep a copy but must revalidate it: the ETag is the
	// binary's checksum, which makes that a cheap 304.
	h.Set("Cache-Control", "public, no-cache")
	h.Set("ETag", `"`+f.SHA256+`"`)
	if r.Method == http.MethodGet {
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(downloadWriteTimeout))
	}
	http.ServeContent(w, r, name, f.ModTime, f.Content)
	return nil
}

// agentIsDownload reports whether name is on the allow-list.
func agentIsDownload(name string) bool {
	for _, d := range agentdist.Downloads {
		if name == d {
			return true
		}
	}
	return false
}

// publicBase is the control plane's base URL for links handed to clients
// (the install one-liner, the install script): Options.PublicURL, or else
// the scheme and host this request came to.
func (s *server) publicBase(r *http.Request) string {
	if base := strings.TrimRight(s.opts.PublicURL, "/"); base != "" {
		return base
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if s.opts.TrustProxyHeaders {
		if p := strings.ToLower(r.Header.Get("X-Forwarded-Proto")); p == "https" || p == "http" {
			scheme = p
		}
	}
	return scheme + "://" + r.Host
}
