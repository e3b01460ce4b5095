package portal

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/telemetry"
)

// The operator's fleet pages: dashboard, fleets, a fleet (vehicle table,
// fleet picture, live updates) and a vehicle (latest telemetry, history
// charts, commands and revocation, each confirmed on a page of its own
// before anything is sent).

func (s *server) fleetRoutes(r chi.Router) {
	r.Get("/dashboard", s.handle(s.dashboard))
	r.Get("/fleets", s.handle(s.fleetsPage))
	r.Post("/fleets", s.handle(s.createFleet))
	r.Get("/fleets/{fleet}", s.handle(s.fleetPage))
	r.Get("/fleets/{fleet}/live", s.handle(s.fleetLive))
	r.Get("/fleets/{fleet}/status.json", s.handle(s.fleetStatus))
	r.Get("/fleets/{fleet}/vehicles/{vehicle}", s.handle(s.vehiclePage))
	r.Post("/fleets/{fleet}/vehicles/{vehicle}/commands", s.handle(s.vehicleCommand))
	r.Post("/fleets/{fleet}/vehicles/{vehicle}/revoke", s.handle(s.vehicleRevoke))
}

// Page sizes.
const (
	dashboardFleets = 50
	dashboardEvents = 10
	fleetPageSize   = 100
	presenceLimit   = controlplane.MaxPageLimit // vehicles a live page follows
)

// --- dashboard ---

type dashboardData struct {
	Fleets        []dashboardFleet
	MoreFleets    bool
	Online, Total int
	Usage         *controlplane.UsageSummary
	VehicleLimit  int // 0 = unlimited
	Events        []*controlplane.AuditEvent
	EventsHidden  bool // the role may not read the audit log
}

type dashboardFleet struct {
	*controlplane.Fleet
	Online, Offline int
	OnlineMore      bool // more online than one page counts
}

func (s *server) dashboard(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p := s.newPage(w, r, "Dashboard", "dashboard")
	d := &dashboardData{}
	fleets, err := s.svc.Fleets(ctx, controlplane.PageRequest{Limit: dashboardFleets})
	if err != nil {
		return err
	}
	d.MoreFleets = fleets.NextCursor != ""
	online := true
	for _, f := range fleets.Items {
		vs, err := s.svc.Vehicles(ctx, f.Slug, controlplane.VehicleQuery{PageRequest: controlplane.PageRequest{Limit: controlplane.MaxPageLimit}, Online: &online})
		if err != nil {
			return err
		}
		df := dashboardFleet{Fleet: f, Online: len(vs.Items), OnlineMore: vs.NextCursor != ""}
		df.Offline = max(f.VehicleCount-df.Online, 0)
		d.Fleets = append(d.Fleets, df)
		d.Online += df.Online
		d.Total += f.VehicleCount
	}
	if d.Usage, err = s.svc.Usage(ctx); err != nil {
		return err
	}
	d.VehicleLimit = d.Usage.Limits.Vehicles
	if p.Can(string(controlplane.RoleAdmin)) {
		evs, err := s.svc.AuditEvents(ctx, controlplane.AuditQuery{PageRequest: controlplane.PageRequest{Limit: dashboardEvents}})
		if err != nil {
			return err
		}
		d.Events = evs.Items
	} else {
		d.EventsHidden = true
	}
	p.Data = d
	s.render(w, r, http.StatusOK, "dashboard.html", p)
	return nil
}

// --- fleets ---

type fleetsData struct {
	Fleets  []*controlplane.Fleet
	Next    string // cursor of the next page
	Regions []controlplane.Region
	Form    controlplane.FleetCreate
}

func (s *server) fleetsPage(w http.ResponseWriter, r *http.Request) error {
	return s.renderFleets(w, r, http.StatusOK, controlplane.FleetCreate{Environment: "prod"}, nil)
}

func (s *server) renderFleets(w http.ResponseWriter, r *http.Request, status int, form controlplane.FleetCreate, formErr error) error {
	ctx := r.Context()
	fleets, err := s.svc.Fleets(ctx, controlplane.PageRequest{Cursor: r.URL.Query().Get("cursor"), Limit: fleetPageSize})
	if err != nil {
		return err
	}
	regions, err := s.svc.Regions(ctx)
	if err != nil {
		return err
	}
	if form.Region == "" && len(regions) > 0 {
		form.Region = regions[0].Name
	}
	p := s.newPage(w, r, "Fleets", "fleets")
	if formErr != nil {
		p.Error = formError(formErr)
	}
	p.Data = &fleetsData{Fleets: fleets.Items, Next: fleets.NextCursor, Regions: regions, Form: form}
	s.render(w, r, status, "fleets.html", p)
	return nil
}

func (s *server) createFleet(w http.ResponseWriter, r *http.Request) error {
	in := controlplane.FleetCreate{
		Slug:        strings.TrimSpace(r.PostForm.Get("slug")),
		Name:        strings.TrimSpace(r.PostForm.Get("name")),
		Environment: strings.TrimSpace(r.PostForm.Get("environment")),
		Region:      r.PostForm.Get("region"),
		Description: strings.TrimSpace(r.PostForm.Get("description")),
	}
	f, err := s.svc.CreateFleet(r.Context(), in)
	if err != nil {
		if st, ok := formStatus(err); ok {
			return s.renderFleets(w, r, st, in, err)
		}
		return err
	}
	redirect(w, r, "/fleets/"+f.Slug, "fleet-created")
	return nil
}

// formStatus is the status of a form submission that failed on its input
// (the form is shown again); ok is false for other errors.
func formStatus(err error) (int, bool) {
	switch controlplane.ErrorCode(err) {
	case controlplane.EINVALID, controlplane.ECONFLICT, controlplane.EPAYMENTREQUIRED, controlplane.EUNPROCESSABLE:
		return statusOf[controlplane.ErrorCode(err)], true
	}
	return 0, false
}

// --- a fleet ---

type fleetData struct {
	Fleet          *controlplane.Fleet
	Vehicles       []vehicleRow
	Next           string
	Online         int
	Picture        *picture
	TelemetryError string // why no telemetry is shown
	TrackMinutes   int
}

// vehicleRow is a vehicle in the fleet's table (and its presence in
// status.json and the live feed).
type vehicleRow struct {
	ID, Name string
	Status   controlplane.VehicleStatus
	Online   bool
	LastSeen *time.Time
	Reading  vehicleReading
}

func (v vehicleRow) Battery() string  { return batteryText(v.Reading.Battery) }
func (v vehicleRow) Mode() string     { return modeText(v.Reading) }
func (v vehicleRow) Position() string { return positionText(v.Reading) }

func batteryText(b *float64) string {
	if b == nil {
		return "—"
	}
	return strconv.FormatFloat(math.Round(*b), 'f', 0, 64) + " %"
}

func modeText(r vehicleReading) string {
	m := r.Mode
	if m == "" {
		m = "—"
	}
	if r.Armed != nil {
		if *r.Armed {
			m += " (armed)"
		} else {
			m += " (disarmed)"
		}
	}
	return m
}

func positionText(r vehicleReading) string {
	if r.Lat == nil {
		return "—"
	}
	s := trimFloat(*r.Lat, 6) + ", " + trimFloat(*r.Lon, 6)
	if r.Alt != nil {
		s += " · " + trimFloat(*r.Alt, 1) + " m"
	}
	return s
}

func (s *server) fleetPage(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	slug := chi.URLParam(r, "fleet")
	f, err := s.svc.Fleet(ctx, slug)
	if err != nil {
		return err
	}
	page := controlplane.PageRequest{Cursor: r.URL.Query().Get("cursor"), Limit: fleetPageSize}
	vs, err := s.svc.Vehicles(ctx, slug, controlplane.VehicleQuery{PageRequest: page})
	if err != nil {
		return err
	}
	d := &fleetData{Fleet: f, Next: vs.NextCursor, TrackMinutes: int(trackWindow / time.Minute)}
	latest := map[string]*vehicleReading{}
	if len(vs.Items) > 0 {
		if latest, err = s.fleetLatest(ctx, slug, page); err != nil {
			if !telemetryProblem(err) {
				return err
			}
			d.TelemetryError = controlplane.ErrorMessage(err)
		}
	}
	var withPosition []string
	for _, v := range vs.Items {
		row := vehicleRow{ID: v.VehicleID, Name: v.Name, Status: v.Status, Online: v.Online, LastSeen: v.LastSeenAt}
		if l := latest[v.VehicleID]; l != nil {
			row.Reading = *l
			if l.Lat != nil {
				withPosition = append(withPosition, v.VehicleID)
			}
		}
		if v.Online {
			d.Online++
		}
		d.Vehicles = append(d.Vehicles, row)
	}
	if len(withPosition) > 0 {
		tracks := s.tracks(ctx, slug, withPosition, time.Now().Add(-trackWindow))
		var in []vehicleTrack
		for _, row := range d.Vehicles {
			if row.Reading.Lat == nil {
				continue
			}
			t := vehicleTrack{Vehicle: row.ID, Online: row.Online, Points: tracks[row.ID]}
			// The latest position ends the track even when it is older
			// than the window or the history read failed.
			last := geoPoint{*row.Reading.Lat, *row.Reading.Lon}
			if n := len(t.Points); n == 0 || t.Points[n-1] != last {
				t.Points = append(t.Points, last)
			}
			in = append(in, t)
		}
		d.Picture = buildPicture(in)
	}
	s.show(w, r, http.StatusOK, "fleet.html", f.Name, "fleets", d)
	return nil
}

// telemetryProblem reports whether err is the data plane's (telemetry not
// configured, hubs unreachable, history not provisioned yet): pages then
// show what Postgres knows and say why the rest is missing.
func telemetryProblem(err error) bool {
	switch controlplane.ErrorCode(err) {
	case controlplane.EUNAVAILABLE, controlplane.ETIMEOUT:
		return true
	}
	return false
}

// liveUpdate is one event of the fleet's live feed (and an entry of
// status.json): a vehicle's presence, or what one telemetry message says.
// Only the fields the event knows are set.
type liveUpdate struct {
	Vehicle  string   `json:"vehicle"`
	Online   *bool    `json:"online,omitempty"`
	Status   string   `json:"status,omitempty"`    // life cycle: active, revoked, ...
	LastSeen string   `json:"last_seen,omitempty"` // as the page prints it
	Lat      *float64 `json:"lat,omitempty"`
	Lon      *float64 `json:"lon,omitempty"`
	Alt      *float64 `json:"alt,omitempty"`
	Battery  *float64 `json:"battery,omitempty"`
	Mode     string   `json:"mode,omitempty"`
	Armed    *bool    `json:"armed,omitempty"`
	At       string   `json:"at,omitempty"` // RFC 3339, of the reading
}

func presenceUpdate(v *controlplane.Vehicle) liveUpdate {
	online := v.Online
	return liveUpdate{Vehicle: v.VehicleID, Online: &online, Status: string(v.Status), LastSeen: whenText(v.LastSeenAt)}
}

func whenText(t *time.Time) string {
	return funcs["when"].(func(any) string)(t)
}

type statusJSON struct {
	Vehicles []liveUpdate `json:"vehicles"`
}

// fleetStatus is the presence of the fleet's vehicles as JSON: fleet.js
// polls it while the live feed is not connected.
func (s *server) fleetStatus(w http.ResponseWriter, r *http.Request) error {
	vs, err := s.svc.Vehicles(r.Context(), chi.URLParam(r, "fleet"), controlplane.VehicleQuery{PageRequest: controlplane.PageRequest{Limit: presenceLimit}})
	if err != nil {
		return err
	}
	out := statusJSON{Vehicles: make([]liveUpdate, 0, len(vs.Items))}
	for _, v := range vs.Items {
		out.Vehicles = append(out.Vehicles, presenceUpdate(v))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	return json.NewEncoder(w).Encode(out)
}

// --- a vehicle ---

// chartWindows are the vehicle charts' windows, in the select's order.
var chartWindows = []struct {
	Value, Label string
	D            time.Duration
}{
	{"15m", "Last 15 minutes", 15 * time.Minute},
	{"1h", "Last hour", time.Hour},
	{"6h", "Last 6 hours", 6 * time.Hour},
	{"24h", "Last 24 hours", 24 * time.Hour},
}

const defaultChartWindow = "1h"

type vehicleData struct {
	Fleet          *controlplane.Fleet
	Vehicle        *controlplane.Vehicle
	Row            vehicleRow
	Latest         []latestItem
	TelemetryError string
	Window         string
	Windows        []windowOption
	Charts         []*chart
	ChartError     string
	CanCommand     bool // member role and an active vehicle
	CanRevoke      bool // member role and a key that is not revoked yet
	Member         bool
	Goto           gotoDefaults
	Verbs          []commandVerb // the commands without arguments
}

type latestItem struct {
	Kind    string
	At      time.Time
	Payload string // as the vehicle sent it
}

type windowOption struct {
	Value, Label string
	Selected     bool
}

type gotoDefaults struct{ Lat, Lon, Alt string }

func (s *server) vehiclePage(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	slug, vid := chi.URLParam(r, "fleet"), chi.URLParam(r, "vehicle")
	f, err := s.svc.Fleet(ctx, slug)
	if err != nil {
		return err
	}
	v, err := s.svc.Vehicle(ctx, slug, vid)
	if err != nil {
		return err
	}
	p := s.newPage(w, r, v.VehicleID+" · "+f.Name, "fleets")
	member := p.Can(string(controlplane.RoleMember))
	d := &vehicleData{Fleet: f, Vehicle: v, Member: member,
		Row:        vehicleRow{ID: v.VehicleID, Name: v.Name, Status: v.Status, Online: v.Online, LastSeen: v.LastSeenAt},
		CanCommand: member && v.Status == controlplane.VehicleActive,
		CanRevoke:  member && v.UserPublicKey != "" && v.Status != controlplane.VehicleRevoked,
		Verbs:      simpleVerbs, Goto: gotoDefaults{Alt: "20"}}
	d.Window = r.URL.Query().Get("window")
	var window time.Duration
	for _, cw := range chartWindows {
		if cw.Value == d.Window {
			window = cw.D
		}
	}
	if window == 0 {
		d.Window, window = defaultChartWindow, time.Hour
	}
	for _, cw := range chartWindows {
		d.Windows = append(d.Windows, windowOption{Value: cw.Value, Label: cw.Label, Selected: cw.Value == d.Window})
	}

	st, err := s.svc.VehicleState(ctx, slug, v.VehicleID, nil)
	switch {
	case err == nil:
		for _, m := range st.Messages {
			at := m.StoredAt
			if rd, ok := readMessage(m); ok {
				rd.merge(&d.Row.Reading)
				at = rd.At
			}
			d.Latest = append(d.Latest, latestItem{Kind: m.Kind, At: at, Payload: string(m.Data)})
		}
	case telemetryProblem(err):
		d.TelemetryError = controlplane.ErrorMessage(err)
	default:
		return err
	}
	if rd := d.Row.Reading; rd.Lat != nil {
		d.Goto.Lat, d.Goto.Lon = trimFloat(*rd.Lat, 7), trimFloat(*rd.Lon, 7)
	}
	if d.TelemetryError == "" {
		d.Charts, err = s.vehicleCharts(ctx, slug, v.VehicleID, window)
		if err != nil {
			if !telemetryProblem(err) {
				return err
			}
			d.ChartError = controlplane.ErrorMessage(err)
		}
	}
	p.Data = d
	s.render(w, r, http.StatusOK, "vehicle.html", p)
	return nil
}

// vehicleCharts draws altitude and battery over the window ending now.
func (s *server) vehicleCharts(ctx context.Context, fleet, vid string, window time.Duration) ([]*chart, error) {
	to := time.Now().UTC()
	from := to.Add(-window)
	alt, err := s.series(ctx, fleet, vid, kindPosition, from, to, func(r vehicleReading) *float64 { return r.Alt })
	if err != nil {
		return nil, err
	}
	bat, err := s.series(ctx, fleet, vid, kindBattery, from, to, func(r vehicleReading) *float64 { return r.Battery })
	if err != nil {
		return nil, err
	}
	zero, hundred := 0.0, 100.0
	return []*chart{
		buildChart("chart-altitude", "Altitude above home", "m", from, to, alt, nil, nil),
		buildChart("chart-battery", "Battery remaining", "%", from, to, bat, &zero, &hundred),
	}, nil
}

// --- commands ---

// commandVerb is a command the vehicle page offers.
type commandVerb struct {
	Verb, Label string
	Danger      bool
}

// simpleVerbs take no arguments; takeoff and goto have forms of their own.
var simpleVerbs = []commandVerb{
	{"arm", "Arm", true},
	{"disarm", "Disarm", true},
	{"land", "Land", false},
	{"rtl", "Return to launch", false},
}

var commandLabels = map[string]string{"arm": "Arm", "disarm": "Disarm", "land": "Land", "rtl": "Return to launch (RTL)",
	"takeoff": "Take off", "goto": "Go to"}

// commandForm is a command as the vehicle page's forms post it.
type commandForm struct {
	Verb, Label   string
	Lat, Lon, Alt string // as entered (goto; takeoff: Alt)
	Params        json.RawMessage
}

// parseCommandForm validates a command form and builds its parameters
// (the vehicle's command handler expects lat and lon in degrees, alt in
// metres above home).
func parseCommandForm(form map[string][]string) (*commandForm, error) {
	get := func(k string) string {
		if v := form[k]; len(v) > 0 {
			return strings.TrimSpace(v[0])
		}
		return ""
	}
	c := &commandForm{Verb: get("command")}
	label, ok := commandLabels[c.Verb]
	if !ok {
		return nil, controlplane.Errorf(controlplane.EINVALID, "choose one of the commands on the vehicle page")
	}
	c.Label = label
	var v controlplane.ValidationError
	num := func(name, text string, lo, hi float64) float64 {
		f, err := strconv.ParseFloat(text, 64)
		if err != nil || math.IsNaN(f) || f < lo || f > hi {
			v.Add(name, "must be a number from %s to %s", trimFloat(lo, 0), trimFloat(hi, 0))
		}
		return f
	}
	params := map[string]float64{}
	switch c.Verb {
	case "goto":
		c.Lat, c.Lon, c.Alt = get("lat"), get("lon"), get("alt")
		params["lat"] = num("lat", c.Lat, -90, 90)
		params["lon"] = num("lon", c.Lon, -180, 180)
		params["alt"] = num("alt", c.Alt, -500, 10000)
	case "takeoff":
		c.Alt = get("alt")
		if params["alt"] = num("alt", c.Alt, 0, 10000); params["alt"] <= 0 {
			v.Add("alt", "must be above 0 metres")
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	c.Params = json.RawMessage("{}")
	if len(params) > 0 {
		c.Params, _ = json.Marshal(params) // finite numbers: cannot fail
	}
	return c, nil
}

type confirmCommandData struct {
	Fleet   *controlplane.Fleet
	Vehicle *controlplane.Vehicle
	Command *commandForm
	Payload string
}

type commandResultData struct {
	Fleet   *controlplane.Fleet
	Vehicle *controlplane.Vehicle
	Command *commandForm
	Outcome string // accepted, rejected, answered, offline, timeout
	Error   string
	Subject string
	Latency string // round trip through the hub, in ms
	Reply   *telemetry.CommandReply
	Raw     string
}

// vehicleCommand is the command's confirmation page (one POST sends
// nothing) and, with confirm=1, sends it and shows the vehicle's reply.
func (s *server) vehicleCommand(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	slug, vid := chi.URLParam(r, "fleet"), chi.URLParam(r, "vehicle")
	if err := requireRole(r, controlplane.RoleMember, "send commands"); err != nil {
		return err
	}
	f, err := s.svc.Fleet(ctx, slug)
	if err != nil {
		return err
	}
	v, err := s.svc.Vehicle(ctx, slug, vid)
	if err != nil {
		return err
	}
	c, err := parseCommandForm(r.PostForm)
	if err != nil {
		return err
	}
	if r.PostForm.Get("confirm") != "1" {
		s.show(w, r, http.StatusOK, "confirm_command.html", "Confirm: "+c.Label+" · "+v.VehicleID, "fleets", &confirmCommandData{Fleet: f, Vehicle: v, Command: c, Payload: string(c.Params)})
		return nil
	}
	d := &commandResultData{Fleet: f, Vehicle: v, Command: c}
	status := http.StatusOK
	res, err := s.svc.SendCommand(ctx, slug, v.VehicleID, controlplane.CommandRequest{Command: c.Verb, Params: c.Params})
	switch {
	case err == nil:
		d.Subject = res.Subject
		d.Latency = trimFloat(float64(res.Latency.Microseconds())/1000, 1)
		d.Raw = string(res.Reply)
		var reply telemetry.CommandReply
		if json.Unmarshal(res.Reply, &reply) == nil {
			d.Reply = &reply
		}
		switch {
		case d.Reply == nil:
			d.Outcome = "answered"
		case reply.OK:
			d.Outcome = "accepted"
		default:
			d.Outcome = "rejected"
		}
	case controlplane.ErrorCode(err) == controlplane.ETIMEOUT:
		status, d.Error = http.StatusGatewayTimeout, controlplane.ErrorMessage(err)
		d.Outcome = "timeout"
		if strings.Contains(d.Error, "offline") {
			d.Outcome = "offline"
		}
	default:
		return err
	}
	s.show(w, r, status, "command_result.html", c.Label+" · "+v.VehicleID, "fleets", d)
	return nil
}

// requireRole answers 403 before a confirmation page is shown to a user
// whose role could not go through with it (the Service checks again).
func requireRole(r *http.Request, role controlplane.Role, what string) error {
	sess := sessionFrom(r.Context())
	if sess == nil || !sess.Role.AtLeast(role) {
		have := controlplane.Role("")
		if sess != nil {
			have = sess.Role
		}
		return controlplane.Errorf(controlplane.EFORBIDDEN, "to %s you need the %s role or higher; you have %s", what, role, have)
	}
	return nil
}

// --- revocation ---

type revokeData struct {
	Fleet      *controlplane.Fleet
	Vehicle    *controlplane.Vehicle
	Revocation *controlplane.Revocation
	Latency    string
}

// vehicleRevoke confirms, then (confirm=1) revokes the vehicle's key and
// shows the proof: every hub node's acknowledgement and connection count.
func (s *server) vehicleRevoke(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	slug, vid := chi.URLParam(r, "fleet"), chi.URLParam(r, "vehicle")
	if err := requireRole(r, controlplane.RoleMember, "revoke vehicles"); err != nil {
		return err
	}
	f, err := s.svc.Fleet(ctx, slug)
	if err != nil {
		return err
	}
	v, err := s.svc.Vehicle(ctx, slug, vid)
	if err != nil {
		return err
	}
	d := &revokeData{Fleet: f, Vehicle: v}
	if r.PostForm.Get("confirm") != "1" {
		s.show(w, r, http.StatusOK, "confirm_revoke.html", "Confirm: revoke "+v.VehicleID, "fleets", d)
		return nil
	}
	if d.Revocation, err = s.svc.RevokeVehicle(ctx, slug, v.VehicleID); err != nil {
		return err
	}
	d.Latency = trimFloat(float64(d.Revocation.Latency.Microseconds())/1000, 1)
	s.show(w, r, http.StatusOK, "revoke_result.html", "Revoked "+v.VehicleID, "fleets", d)
	return nil
}
