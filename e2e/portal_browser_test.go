package e2e_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/mail"
	"github.com/fleetplane/fleetplane/controlplane/portal"
	"github.com/fleetplane/fleetplane/edge/agent"
	"github.com/fleetplane/fleetplane/edge/sim"
)

// portalRootHandler serves the portal next to the API as
// cmd/fleetplane/serve.go does (portal.Options.API).
func portalRootHandler(log *slog.Logger) func(testing.TB, *controlplane.Service, string, http.Handler) http.Handler {
	return func(tb testing.TB, svc *controlplane.Service, publicURL string, apiHandler http.Handler) http.Handler {
		tb.Helper()
		h, err := portal.New(svc, portal.Options{Logger: log.With("component", "portal"), PublicURL: publicURL,
			API: apiHandler, InsecureCookies: true}) // plain http: a Secure cookie would not come back
		if err != nil {
			tb.Fatal(err)
		}
		return h
	}
}

// installLine is the portal's install one-liner:
// curl -fsSL <server>/install.sh | sudo sh -s -- --token <token>
// (each word possibly single-quoted).
var installLine = regexp.MustCompile(`^curl -fsSL '?(https?://[^' ]+)/install\.sh'? \| sudo sh -s -- --token '?(fpe_[A-Za-z0-9_-]+)'?$`)

// TestPortalBrowser is issue 7's browser test, in a real headless Chromium:
// sign up → confirm the e-mail through the link the Capture mailer
// recorded → create a fleet → create an enrollment token and copy its
// install line → a simulated vehicle enrolls with that token through the
// real agent code (edge/agent + edge/sim over MAVLink) → the fleet page
// shows it online (live) → arm and take off from the vehicle page, each
// through its confirmation page → its marker moves on the fleet picture
// (live) → RTL with confirmation shows the vehicle's reply → revoke with
// confirmation and proof → the fleet page shows it offline. On failure the
// screenshot, page HTML, console and server log are saved (the path is in
// the test log). `make test-browser` runs it alone.
func TestPortalBrowser(t *testing.T) {
	chromium := needChromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var serverLog lockedBuffer
	log := slog.New(slog.NewTextHandler(&serverLog, &slog.HandlerOptions{Level: slog.LevelInfo}))
	mails := mail.NewCapture()
	s := newStackWith(t, ctx, stackOptions{log: log, mailer: mails, noTenant: true, handler: portalRootHandler(log)})
	b := newBrowser(t, chromium, s.url)
	b.serverLog = serverLog.Bytes

	const (
		org      = "Skyward Surveys"
		email    = "pilot@skyward.example"
		password = "correct horse battery staple"
		vid      = "Drone-7"
	)
	row := "#vehicle-" + vid // the vehicle's row in the fleet's table
	online := row + ` [data-field="online"] [data-online]`

	b.Step("sign up")
	b.Open("/")
	b.Submit(`header a[href="/signup"]`)
	b.Fill("#organisation", org)
	b.Fill("#email", email)
	b.Fill("#password", password)
	b.Submit(`form[action="/signup"] button[type="submit"]`)
	if h := b.Text("main h1"); h != "Check your e-mail" {
		t.Fatalf("after signup the page says %q", h)
	}

	b.Step("confirm e-mail")
	mctx, mcancel := context.WithTimeout(ctx, 30*time.Second)
	m, err := mails.WaitFor(mctx, email, "Confirm")
	mcancel()
	if err != nil {
		t.Fatalf("no confirmation mail: %v; mails %+v", err, mails.Mails())
	}
	link := mail.Link(m, "/confirm")
	if !strings.HasPrefix(link, s.url+"/confirm?token=") {
		t.Fatalf("confirmation link %q does not point at the portal %s; mail:\n%s", link, s.url, m.Text)
	}
	b.load("open the e-mail's link", chromedp.Navigate(link))
	b.Fill(`form[action="/confirm"] #password`, password) // the one chosen at signup
	b.Submit(`form[action="/confirm"] button[type="submit"]`)
	if loc := b.Location(); !strings.HasSuffix(loc, "/dashboard") {
		t.Fatalf("after confirming: at %s", loc)
	}
	if who := b.Text("header .who"); !strings.Contains(who, email) {
		t.Fatalf("signed in as %q", who)
	}

	b.Step("create fleet")
	b.Submit(`header nav a[href="/fleets"]`)
	b.Fill("#fleet-slug", "survey")
	b.Fill("#fleet-name", "Survey drones")
	b.Fill("#fleet-environment", "prod")
	b.Submit(`#create-fleet button[type="submit"]`)
	if loc := b.Location(); !strings.Contains(loc, "/fleets/survey") {
		t.Fatalf("after creating the fleet: at %s", loc)
	}
	if h := b.Text("main h1"); h != "Survey drones" {
		t.Fatalf("fleet page heading %q", h)
	}

	b.Step("enrollment token")
	b.Open("/fleets/survey/enroll")
	b.Select("#enroll-expires", "1h")
	b.Fill("#enroll-uses", "1")
	b.Fill("#enroll-description", "browser test")
	b.Submit("#enroll-create")
	shown := b.Text("#enroll-command")
	b.GrantClipboard()
	b.Click("#enroll-copy")
	b.UntilText("the copy button confirms", "#enroll-copy", stepTimeout, func(s string) bool { return s == "Copied" })
	copied := strings.TrimSpace(b.Clipboard())
	if copied != shown {
		t.Fatalf("the clipboard holds %q, the page shows %q", copied, shown)
	}
	mm := installLine.FindStringSubmatch(copied)
	if mm == nil {
		t.Fatalf("the install line %q is not curl … | sudo sh -s -- --token fpe_…", copied)
	}
	server, token := mm[1], mm[2]
	if server != s.url {
		t.Fatalf("the install line's server %s is not the portal's %s", server, s.url)
	}

	b.Step("vehicle enrolls")
	flyVehicle(t, ctx, server, token, vid)

	b.Step("online on fleet page")
	b.Open("/fleets/survey")
	b.UntilAttr("the vehicle shows online", online, "data-online", 60*time.Second, eq("true"))
	if st := b.Text(row + ` [data-field="online"]`); st != "Online" {
		t.Fatalf("the connection cell says %q", st) // not by colour alone
	}
	// Telemetry arrives live (the server-sent events) in the table.
	b.UntilText("a live position in the table", row+` [data-field="position"]`, 60*time.Second,
		func(s string) bool { return strings.Contains(s, ",") })

	b.Step("arm and take off")
	b.Submit(row + " th a")
	b.command("arm", nil, "{}")
	b.Submit("#back-to-vehicle")
	b.command("takeoff", func() { b.Fill("#takeoff-alt", "6") }, `{"alt":6}`)

	b.Step("marker moves")
	b.Submit(`main a[href="/fleets/survey"]`)
	marker := "#marker-" + vid
	b.UntilAttr("the marker shows online", marker, "data-online", stepTimeout, eq("true"))
	p0 := b.marker(marker, stepTimeout, func(markerPos) bool { return true })
	// The simulator climbs, then circles at 5 m/s: fleet.js moves the
	// marker with the live positions, without a reload.
	p1 := b.marker(marker, 60*time.Second, func(p markerPos) bool {
		return math.Hypot(p.X-p0.X, p.Y-p0.Y) >= 5 && (p.Lat != p0.Lat || p.Lon != p0.Lon)
	})
	t.Logf("the marker moved %.1f viewBox units, from %s,%s to %s,%s", math.Hypot(p1.X-p0.X, p1.Y-p0.Y), p0.Lat, p0.Lon, p1.Lat, p1.Lon)

	b.Step("RTL with confirmation")
	b.Submit(row + " th a")
	b.command("rtl", nil, "{}")
	if raw := b.Text("#command-raw"); !strings.Contains(raw, `"ok":true`) {
		t.Fatalf("the RTL reply shown is %q", raw)
	}
	if ok := b.Text("#command-ok"); ok != "yes" {
		t.Fatalf("the RTL reply's Accepted says %q", ok)
	}

	b.Step("revoke with confirmation")
	b.Submit("#back-to-vehicle")
	b.Submit("#revoke-button")
	if h := b.Text("main h1"); !strings.Contains(h, "revoke "+vid) {
		t.Fatalf("the revoke confirmation page says %q", h)
	}
	b.Submit("#confirm-revoke-button")
	if st := b.Attr("#revoke-result", "data-status"); st != "proven" {
		t.Fatalf("revocation status %q: %s", st, b.Text("#revoke-summary"))
	}

	b.Step("offline on fleet page")
	b.Submit(`main a[href="/fleets/survey"]`)
	b.UntilAttr("the vehicle shows offline", online, "data-online", 60*time.Second, eq("false"))
	if st := b.Text(row + ` [data-field="status"]`); st != "revoked" {
		t.Fatalf("the status cell says %q", st)
	}
	b.Done()
}

// command sends verb from the vehicle page (fill, when set, fills the
// command's form first): its button leads to the confirmation page, which
// must name the command and its parameters (payload) and has sent
// nothing; its button sends it, and the result page must show the
// vehicle's accepting reply. A vehicle that did not answer (504) is asked
// again.
func (b *browser) command(verb string, fill func(), payload string) {
	b.t.Helper()
	back := b.Location()
	for attempt := 1; ; attempt++ {
		if fill != nil {
			fill()
		}
		b.Submit("#command-" + verb)
		if got := b.Text("#confirm-command-verb"); got != verb {
			b.t.Fatalf("the confirmation page is for %q, not %q", got, verb)
		}
		if got := b.Text("#confirm-command-payload"); got != payload {
			b.t.Fatalf("the confirmation page shows the parameters %s, not %s", got, payload)
		}
		status := b.submitStatus("#confirm-command-button")
		outcome := b.Attr("#command-reply", "data-outcome")
		if status == http.StatusOK && outcome == "accepted" {
			b.t.Logf("%s: accepted in %s", verb, b.Text("#command-latency"))
			return
		}
		if status != http.StatusGatewayTimeout || attempt == 3 {
			b.t.Fatalf("%s: status %d, outcome %q: %s", verb, status, outcome, b.Text("#command-reply"))
		}
		b.t.Logf("%s: attempt %d got no answer (%s); again", verb, attempt, outcome)
		b.load("back to the vehicle", chromedp.Navigate(back))
	}
}

// flyVehicle enrolls vid with token like the install line's agent does,
// then runs the agent with a simulated autopilot behind its MAVLink
// gateway, until the test ends.
func flyVehicle(t *testing.T, ctx context.Context, server, token, vid string) {
	t.Helper()
	dir := t.TempDir()
	cfg, _, err := agent.Enroll(ctx, agent.EnrollOptions{Server: server, Token: token, VehicleID: vid,
		Dir: filepath.Join(dir, "etc"), DataDir: filepath.Join(dir, "var"), Version: "e2e"})
	if err != nil {
		t.Fatalf("enrolling with the token the browser showed: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gw := udp.LocalAddr().String()
	udp.Close()
	log := slog.New(slog.DiscardHandler)
	a, err := agent.Start(ctx, agent.Options{Config: cfg, Version: "e2e", Logger: log, ClientPort: -1,
		HTTPListener: ln, MonitorInterval: 100 * time.Millisecond, Forward: agent.StoreAndForward,
		MAVLink: &agent.MAVLinkConfig{Endpoints: []string{"udp-server:" + gw}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	sm, err := sim.Start(sim.Config{UDP: gw})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sm.Close)
}

// --- small helpers over the page ---

func eq(want string) func(string) bool { return func(s string) bool { return s == want } }

// markerPos is a marker of the fleet picture: where it is drawn
// (transform="translate(x y)") and the position it stands for.
type markerPos struct {
	X, Y     float64
	Lat, Lon string
}

var translateRe = regexp.MustCompile(`^translate\(\s*(-?[0-9.]+)[ ,]+(-?[0-9.]+)\s*\)$`)

// marker waits until the fleet picture's marker sel exists and ok accepts
// its position, and returns it.
func (b *browser) marker(sel string, timeout time.Duration, ok func(markerPos) bool) markerPos {
	b.t.Helper()
	var p markerPos
	expr := `(() => { const e = document.querySelector(` + jsString(sel) + `);
		return e ? [e.getAttribute("transform"), e.dataset.lat, e.dataset.lon] : null; })()`
	b.Until("the marker "+sel, expr, timeout, func(raw []byte) bool {
		var v []string
		if json.Unmarshal(raw, &v) != nil || len(v) != 3 {
			return false
		}
		m := translateRe.FindStringSubmatch(v[0])
		if m == nil {
			return false
		}
		x, errX := strconv.ParseFloat(m[1], 64)
		y, errY := strconv.ParseFloat(m[2], 64)
		p = markerPos{X: x, Y: y, Lat: v[1], Lon: v[2]}
		return errX == nil && errY == nil && ok(p)
	})
	return p
}
