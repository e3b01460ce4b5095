package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Handlers of the digital twin (docs/twin.md): vehicle state and history,
// fleet state, the fleet's live feed (Server-Sent Events) and commands.
// Vehicle payloads are passed through as JSON.

func (s *server) twinRoutes(r chi.Router) {
	r.Get("/v1/fleets/{fleet}/state", s.handle(s.getFleetState))
	r.Get("/v1/fleets/{fleet}/live", s.handle(s.getFleetLive))
	r.Get("/v1/fleets/{fleet}/vehicles/{vehicle}/state", s.handle(s.getVehicleState))
	r.Get("/v1/fleets/{fleet}/vehicles/{vehicle}/history", s.handle(s.getVehicleHistory))
	r.With(s.idempotent(nil)).Post("/v1/fleets/{fleet}/vehicles/{vehicle}/commands", s.handle(s.sendCommand))
}

// twinData is a payload as JSON: itself when it is valid JSON, else a
// string of it.
func twinData(b []byte) *TwinData {
	var d TwinData
	if json.Valid(b) {
		d = TwinData(bytes.Clone(b))
	} else {
		s := string(b)
		if !utf8.ValidString(s) {
			s = string(bytes.ToValidUTF8(b, []byte("\uFFFD")))
		}
		d, _ = json.Marshal(s) // a string always encodes
	}
	return &d
}

func twinMessageOut(m *controlplane.TwinMessage) TwinMessage {
	return TwinMessage{VehicleId: m.VehicleID, Subject: m.Subject, Kind: m.Kind, Sequence: int64(m.Sequence),
		StoredAt: utc(m.StoredAt), Data: twinData(m.Data)}
}

func liveMessageOut(m *controlplane.TwinMessage) LiveMessage {
	return LiveMessage{VehicleId: m.VehicleID, Subject: m.Subject, Kind: m.Kind, ReceivedAt: utc(m.ReceivedAt), Data: twinData(m.Data)}
}

func (s *server) getVehicleState(w http.ResponseWriter, r *http.Request) error {
	q := newQuery(r, "at")
	at := q.time("at")
	if err := q.err(); err != nil {
		return err
	}
	st, err := s.svc.VehicleState(r.Context(), pathParam(r, "fleet"), pathParam(r, "vehicle"), at)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, VehicleState{VehicleId: st.VehicleID, Messages: listOut(st.Messages, twinMessageOut)})
}

func (s *server) getVehicleHistory(w http.ResponseWriter, r *http.Request) error {
	q := newQuery(r, "since", "until", "kind", "limit", "cursor")
	hq := controlplane.HistoryQuery{Since: q.time("since"), Until: q.time("until"), Kind: q.text("kind", 200)}
	if q.has("cursor") {
		if hq.Cursor = q.str("cursor"); hq.Cursor == "" {
			q.v.Add("cursor", "must not be empty; omit it for the first page")
		}
	}
	if q.has("limit") {
		n, err := strconv.Atoi(q.str("limit"))
		if err != nil || n < 1 || n > controlplane.MaxHistoryLimit {
			q.v.Add("limit", "must be an integer between 1 and %d", controlplane.MaxHistoryLimit)
		}
		hq.Limit = n
	}
	if err := q.err(); err != nil {
		return err
	}
	p, err := s.svc.VehicleHistory(r.Context(), pathParam(r, "fleet"), pathParam(r, "vehicle"), hq)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, TwinMessageList{Items: listOut(p.Items, twinMessageOut), NextCursor: cursorOut(p.NextCursor)})
}

func (s *server) getFleetState(w http.ResponseWriter, r *http.Request) error {
	q := newQuery(r, "kind", "at", "cursor", "limit")
	fq := controlplane.FleetStateQuery{PageRequest: q.page(), Kind: q.text("kind", 200), At: q.time("at")}
	if err := q.err(); err != nil {
		return err
	}
	if fq.Kind == "" {
		fq.Kind = "state.position"
	}
	p, err := s.svc.FleetState(r.Context(), pathParam(r, "fleet"), fq)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, FleetState{
		Kind: fq.Kind,
		Items: listOut(p.Items, func(v *controlplane.FleetVehicleState) FleetVehicleState {
			out := FleetVehicleState{VehicleId: v.VehicleID}
			if v.Message != nil {
				m := twinMessageOut(v.Message)
				out.Message = &m
			}
			return out
		}),
		NextCursor: cursorOut(p.NextCursor),
	})
}

// getFleetLive streams the fleet's live messages as Server-Sent Events
// until the client goes away or the feed ends. Errors before the first
// byte are problem+json like everywhere else.
func (s *server) getFleetLive(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	feed, err := s.svc.FleetLive(r.Context(), pathParam(r, "fleet"))
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
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	// A first comment tells the client that the subscription is in place.
	if _, err := w.Write([]byte(": live\n\n")); err != nil {
		return nil
	}
	if rc.Flush() != nil {
		return nil
	}
	hb := time.NewTicker(s.opts.LiveHeartbeat)
	defer hb.Stop()
	var buf bytes.Buffer
	for {
		buf.Reset()
		select {
		case <-r.Context().Done():
			return nil
		case <-hb.C:
			buf.WriteString(": heartbeat\n\n")
		case m, ok := <-feed.C:
			if !ok {
				return nil // the hub connection went away: the client reconnects
			}
			b, err := json.Marshal(liveMessageOut(m))
			if err != nil {
				continue
			}
			buf.WriteString("event: message\ndata: ")
			buf.Write(b)
			buf.WriteString("\n\n")
		}
		if _, err := w.Write(buf.Bytes()); err != nil {
			return nil // the client is gone
		}
		if rc.Flush() != nil {
			return nil
		}
	}
}

func (s *server) sendCommand(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	var in CommandRequest
	if err := s.decode(w, r, &in); err != nil {
		return err
	}
	req := controlplane.CommandRequest{Command: string(in.Command), TimeoutMS: deref(in.TimeoutMs)}
	if in.Params != nil {
		req.Params = *in.Params
	}
	res, err := s.svc.SendCommand(r.Context(), pathParam(r, "fleet"), pathParam(r, "vehicle"), req)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, CommandResult{VehicleId: res.VehicleID, Command: CommandName(res.Command), Subject: res.Subject,
		Reply: twinData(res.Reply), LatencyMs: float64(res.Latency.Microseconds()) / 1000})
}
