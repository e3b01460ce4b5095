package portal

import (
	"bytes"
	"encoding/json"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// The fleet page's live feed: Server-Sent Events of small JSON updates
// (liveUpdate) from the Service's FleetLive, as the REST API's
// /v1/fleets/{fleet}/live serves it, plus the vehicles' presence, which the
// telemetry feed does not carry: it is re-read from the vehicle list every
// livePresenceEvery and sent when it changed (and once at the start, so a
// page rendered a moment earlier catches up).

const (
	liveHeartbeat     = 15 * time.Second
	livePresenceEvery = 2 * time.Second
	// liveMaxDuration ends a stream after a while: the browser reconnects
	// at once, which checks the session cookie again (a signed-out or
	// expired session stops getting updates).
	liveMaxDuration = 10 * time.Minute
	// liveSessionEvery is how often a stream re-checks its session: a
	// signed-out or removed member, or a session past its expiry, stops
	// getting updates within it.
	liveSessionEvery = 30 * time.Second
)

func (s *server) fleetLive(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	slug := chi.URLParam(r, "fleet")
	feed, err := s.svc.FleetLive(ctx, slug)
	if err != nil {
		return err
	}
	defer feed.Close()
	rc := http.NewResponseController(w)
	// The server's write timeout is for ordinary responses; this one lasts
	// as long as the client listens.
	_ = rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	var buf bytes.Buffer
	// A first comment tells the client the subscription is in place; the
	// retry field how soon to reconnect when the stream ends.
	buf.WriteString(": live\nretry: 2000\n\n")
	sent := map[string]liveUpdate{}
	s.presenceChanges(r, slug, sent, &buf)
	if !flushTo(w, rc, &buf) {
		return nil
	}
	hb := time.NewTicker(liveHeartbeat)
	defer hb.Stop()
	pr := time.NewTicker(livePresenceEvery)
	defer pr.Stop()
	end := time.NewTimer(liveMaxDuration)
	defer end.Stop()
	recheck := time.NewTicker(liveSessionEvery)
	defer recheck.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-end.C:
			return nil
		case <-recheck.C:
			if !s.sessionStillValid(r) {
				return nil
			}
		case <-hb.C:
			buf.WriteString(": heartbeat\n\n")
		case <-pr.C:
			s.presenceChanges(r, slug, sent, &buf)
		case m, ok := <-feed.C:
			if !ok {
				return nil // the hub connection went away: the browser reconnects
			}
			if u, ok := telemetryUpdate(m); ok {
				writeEvent(&buf, u)
			}
		}
		if buf.Len() > 0 && !flushTo(w, rc, &buf) {
			return nil // the client is gone
		}
	}
}

// sessionStillValid re-resolves the request's session cookie and checks
// the caller still sees the fleet (its membership may have been removed or
// its session ended since the stream began).
func (s *server) sessionStillValid(r *http.Request) bool {
	token, _ := r.Context().Value(tokenKey).(string)
	if token == "" {
		return false
	}
	p, _, err := s.svc.SessionAuth(r.Context(), token)
	if err != nil {
		return false
	}
	_, err = s.svc.Fleet(controlplane.NewContextWithPrincipal(r.Context(), p), chi.URLParam(r, "fleet"))
	return err == nil
}

// flushTo writes and flushes buf, then empties it; false when the client
// is gone.
func flushTo(w http.ResponseWriter, rc *http.ResponseController, buf *bytes.Buffer) bool {
	defer buf.Reset()
	if _, err := w.Write(buf.Bytes()); err != nil {
		return false
	}
	return rc.Flush() == nil
}

// writeEvent appends one "vehicle" event.
func writeEvent(buf *bytes.Buffer, u liveUpdate) {
	b, err := json.Marshal(u)
	if err != nil {
		return
	}
	buf.WriteString("event: vehicle\ndata: ")
	buf.Write(b)
	buf.WriteString("\n\n")
}

// presenceChanges appends an event for every vehicle whose presence
// differs from what was sent. A failed read is skipped (the next one
// catches up).
func (s *server) presenceChanges(r *http.Request, slug string, sent map[string]liveUpdate, buf *bytes.Buffer) {
	vs, err := s.svc.Vehicles(r.Context(), slug, controlplane.VehicleQuery{PageRequest: controlplane.PageRequest{Limit: presenceLimit}})
	if err != nil {
		if r.Context().Err() == nil {
			s.log.WarnContext(r.Context(), "portal: live presence", "fleet", slug, "err", err)
		}
		return
	}
	for _, v := range vs.Items {
		u := presenceUpdate(v)
		if old, ok := sent[u.Vehicle]; ok && *old.Online == *u.Online && old.Status == u.Status && old.LastSeen == u.LastSeen {
			continue
		}
		sent[u.Vehicle] = u
		writeEvent(buf, u)
	}
}

// telemetryUpdate is the event of a live message, for the kinds the page
// shows.
func telemetryUpdate(m *controlplane.TwinMessage) (liveUpdate, bool) {
	rd, ok := readMessage(m)
	if !ok {
		return liveUpdate{}, false
	}
	u := liveUpdate{Vehicle: m.VehicleID, Lat: rd.Lat, Lon: rd.Lon, Alt: rd.Alt, Battery: rd.Battery, Mode: rd.Mode, Armed: rd.Armed}
	if !rd.At.IsZero() {
		u.At = rd.At.UTC().Format(time.RFC3339Nano)
	}
	return u, true
}
