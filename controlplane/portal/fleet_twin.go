package portal

import (
	"context"
	"encoding/json"
	"math"
	"sync"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/telemetry"
)

// Reading the digital twin for the fleet pages: the vehicles' payloads
// (internal/telemetry's schema: state.position, state.battery,
// state.heartbeat, evt.mode, evt.armed), the fleet picture's tracks and the
// vehicle charts' series, all through the Service's twin reads.

// Message kinds the pages show.
const (
	kindPosition  = "state." + telemetry.KindPosition
	kindBattery   = "state." + telemetry.KindBattery
	kindHeartbeat = "state." + telemetry.KindHeartbeat
	kindMode      = "evt." + telemetry.EventMode
	kindArmed     = "evt." + telemetry.EventArmed
)

// vehicleReading is what one message says about the fields the pages show;
// nil fields are not in it.
type vehicleReading struct {
	Lat, Lon, Alt *float64 // alt: metres above home
	Battery       *float64 // percent remaining
	Mode          string
	Armed         *bool
	At            time.Time // when the vehicle measured it (or the hub stored it)
}

// readMessage decodes the payload of m by its kind; ok is false for kinds
// the pages do not show and for payloads that do not parse.
func readMessage(m *controlplane.TwinMessage) (r vehicleReading, ok bool) {
	var h telemetry.Header
	switch m.Kind {
	case kindPosition:
		var p telemetry.Position
		if json.Unmarshal(m.Data, &p) != nil || !validPosition(geoPoint{p.LatDeg, p.LonDeg}) || (p.LatDeg == 0 && p.LonDeg == 0) {
			return r, false // 0,0: no fix yet
		}
		r.Lat, r.Lon, r.Alt, h = &p.LatDeg, &p.LonDeg, finite(p.AltRelM), p.Header
	case kindBattery:
		var b telemetry.Battery
		if json.Unmarshal(m.Data, &b) != nil || b.RemainingPct == nil {
			return r, false
		}
		r.Battery, h = finite(*b.RemainingPct), b.Header
	case kindHeartbeat:
		var hb telemetry.Heartbeat
		if json.Unmarshal(m.Data, &hb) != nil {
			return r, false
		}
		r.Mode, r.Armed, h = hb.Mode, &hb.Armed, hb.Header
	case kindMode:
		var e telemetry.ModeEvent
		if json.Unmarshal(m.Data, &e) != nil || e.Mode == "" {
			return r, false
		}
		r.Mode, h = e.Mode, e.Header
	case kindArmed:
		var e telemetry.ArmedEvent
		if json.Unmarshal(m.Data, &e) != nil {
			return r, false
		}
		r.Armed, h = &e.Armed, e.Header
	default:
		return r, false
	}
	r.At = messageTime(m, h)
	return r, true
}

// messageTime is when the vehicle's agent received the reading, else when
// the hub stored it (or the control plane received it live).
func messageTime(m *controlplane.TwinMessage, h telemetry.Header) time.Time {
	switch {
	case !h.ReceivedAt.IsZero():
		return h.ReceivedAt
	case !m.StoredAt.IsZero():
		return m.StoredAt
	}
	return m.ReceivedAt
}

func finite(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

// merge copies the fields r has into into.
func (r vehicleReading) merge(into *vehicleReading) {
	if r.Lat != nil {
		into.Lat, into.Lon, into.Alt = r.Lat, r.Lon, r.Alt
	}
	if r.Battery != nil {
		into.Battery = r.Battery
	}
	if r.Mode != "" {
		into.Mode = r.Mode
	}
	if r.Armed != nil {
		into.Armed = r.Armed
	}
	if r.At.After(into.At) {
		into.At = r.At
	}
}

// fleetLatest reads the last position, battery and heartbeat of a page of
// the fleet's vehicles (the same page as the vehicle list: both page by
// vehicle ID). A telemetry error (not configured, hub unreachable, history
// not provisioned yet) is returned for the page to show; what was read
// before it is kept.
func (s *server) fleetLatest(ctx context.Context, fleet string, page controlplane.PageRequest) (map[string]*vehicleReading, error) {
	out := map[string]*vehicleReading{}
	for _, kind := range []string{kindPosition, kindBattery, kindHeartbeat} {
		st, err := s.svc.FleetState(ctx, fleet, controlplane.FleetStateQuery{PageRequest: page, Kind: kind})
		if err != nil {
			return out, err
		}
		for _, it := range st.Items {
			if it.Message == nil {
				continue
			}
			r, ok := readMessage(it.Message)
			if !ok {
				continue
			}
			if out[it.VehicleID] == nil {
				out[it.VehicleID] = &vehicleReading{}
			}
			r.merge(out[it.VehicleID])
		}
	}
	return out, nil
}

// Limits of the fleet picture's tracks.
const (
	trackWindow      = 5 * time.Minute
	trackPages       = 2  // of controlplane.MaxHistoryLimit positions
	trackVehicles    = 50 // vehicles that get a track; the rest a marker only
	trackConcurrency = 4
)

// tracks reads the recent positions of vids (at most trackVehicles of
// them), oldest first. Vehicles whose history cannot be read have none.
func (s *server) tracks(ctx context.Context, fleet string, vids []string, since time.Time) map[string][]geoPoint {
	if len(vids) > trackVehicles {
		vids = vids[:trackVehicles]
	}
	out := make(map[string][]geoPoint, len(vids))
	var mu sync.Mutex
	forEach(vids, trackConcurrency, func(vid string) {
		var pts []geoPoint
		q := controlplane.HistoryQuery{Since: &since, Kind: kindPosition, Limit: controlplane.MaxHistoryLimit}
		for range trackPages {
			page, err := s.svc.VehicleHistory(ctx, fleet, vid, q)
			if err != nil {
				s.log.DebugContext(ctx, "portal: track", "fleet", fleet, "vehicle", vid, "err", err)
				break
			}
			for _, m := range page.Items {
				if r, ok := readMessage(m); ok && r.Lat != nil {
					pts = append(pts, geoPoint{*r.Lat, *r.Lon})
				}
			}
			if page.NextCursor == "" {
				break
			}
			q.Cursor = page.NextCursor
		}
		mu.Lock()
		out[vid] = pts
		mu.Unlock()
	})
	return out
}

// forEach runs f for every item with at most n at a time.
func forEach[T any](items []T, n int, f func(T)) {
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	for _, it := range items {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			f(it)
		}()
	}
	wg.Wait()
}

// Sampling of the vehicle charts: a window whose messages fit one history
// page is drawn from all of them; a longer or denser one from the first
// message of each of chartBuckets equal time slices (one small read each,
// so a day of 5 Hz positions costs what an hour does).
const (
	chartBuckets     = 120
	chartConcurrency = 8
)

// series reads one value of kind over [from, to).
func (s *server) series(ctx context.Context, fleet, vid, kind string, from, to time.Time, value func(vehicleReading) *float64) ([]sample, error) {
	pick := func(msgs []*controlplane.TwinMessage, into []sample) []sample {
		for _, m := range msgs {
			if r, ok := readMessage(m); ok {
				if v := value(r); v != nil {
					into = append(into, sample{At: r.At, Value: *v})
				}
			}
		}
		return into
	}
	page, err := s.svc.VehicleHistory(ctx, fleet, vid, controlplane.HistoryQuery{Since: &from, Until: &to, Kind: kind, Limit: controlplane.MaxHistoryLimit})
	if err != nil {
		return nil, err
	}
	if page.NextCursor == "" {
		return thin(pick(page.Items, nil), 2*chartBuckets), nil
	}
	buckets := make([][]sample, chartBuckets)
	width := to.Sub(from) / chartBuckets
	idx := make([]int, chartBuckets)
	for i := range idx {
		idx[i] = i
	}
	var mu sync.Mutex
	var firstErr error
	forEach(idx, chartConcurrency, func(i int) {
		since := from.Add(time.Duration(i) * width)
		until := since.Add(width)
		p, err := s.svc.VehicleHistory(ctx, fleet, vid, controlplane.HistoryQuery{Since: &since, Until: &until, Kind: kind, Limit: 1})
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			return
		}
		buckets[i] = pick(p.Items, nil)
	})
	if firstErr != nil {
		return nil, firstErr
	}
	var out []sample
	for _, b := range buckets {
		out = append(out, b...)
	}
	return out, nil
}
