package portal

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Unit tests of the fleet pages' pure parts: the picture's projection, the
// charts' scaling, the payload decoding and the command form.

func near(a, b, eps float64) bool { return math.Abs(a-b) <= eps }

func TestFitProjection(t *testing.T) {
	const w, h, m = 800.0, 480.0, 40.0
	inside := func(t *testing.T, pr projection, pts []geoPoint) {
		t.Helper()
		for _, p := range pts {
			x, y := pr.project(p)
			if x < m-1e-6 || x > w-m+1e-6 || y < m-1e-6 || y > h-m+1e-6 {
				t.Errorf("%v projects to (%.2f, %.2f), outside the margin", p, x, y)
			}
			back := pr.unproject(x, y)
			if !near(back.Lat, p.Lat, 1e-9) || !near(back.Lon, p.Lon, 1e-9) {
				t.Errorf("unproject(project(%v)) = %v", p, back)
			}
		}
	}

	t.Run("none", func(t *testing.T) {
		if _, ok := fitProjection(nil, w, h, m); ok {
			t.Fatal("ok without points")
		}
		if _, ok := fitProjection([]geoPoint{{math.NaN(), 8}, {91, 8}, {47, 181}}, w, h, m); ok {
			t.Fatal("ok without valid points")
		}
	})
	t.Run("single point is centred", func(t *testing.T) {
		p := geoPoint{47.397742, 8.545594}
		pr, ok := fitProjection([]geoPoint{p}, w, h, m)
		if !ok {
			t.Fatal("not ok")
		}
		if x, y := pr.project(p); !near(x, w/2, 1e-9) || !near(y, h/2, 1e-9) {
			t.Fatalf("single point at (%v, %v), want the centre", x, y)
		}
		// The minimum span (not an infinite zoom): minSpanDeg of latitude
		// fills the inner height.
		if want := (h - 2*m) / minSpanDeg; !near(pr.Scale, want, 1e-6) {
			t.Fatalf("scale %v, want %v", pr.Scale, want)
		}
		if bar, label := scaleBar(pr.metresPerUnit(), w/4); bar <= 0 || bar > w/4 || label != "100 m" {
			t.Fatalf("scale bar %v %q", bar, label)
		}
	})
	t.Run("identical points", func(t *testing.T) {
		p := geoPoint{-33.8688, 151.2093}
		pr, ok := fitProjection([]geoPoint{p, p, p}, w, h, m)
		if !ok || math.IsInf(pr.Scale, 0) || math.IsNaN(pr.Scale) {
			t.Fatalf("projection %+v", pr)
		}
		if x, y := pr.project(p); !near(x, w/2, 1e-9) || !near(y, h/2, 1e-9) {
			t.Fatalf("at (%v, %v)", x, y)
		}
	})
	t.Run("box fits, north up, east right, ground-true aspect", func(t *testing.T) {
		pts := []geoPoint{{47.39, 8.54}, {47.41, 8.56}, {47.40, 8.50}}
		pr, ok := fitProjection(pts, w, h, m)
		if !ok || pr.Wrap {
			t.Fatalf("projection %+v", pr)
		}
		inside(t, pr, pts)
		xa, ya := pr.project(geoPoint{47.40, 8.50})
		xb, yb := pr.project(geoPoint{47.41, 8.56})
		if xb <= xa || yb >= ya {
			t.Fatalf("east is not right or north is not up: (%v,%v) → (%v,%v)", xa, ya, xb, yb)
		}
		// 0.01° of latitude and 0.01°/cos(lat) of longitude are the same
		// ground distance, so the same length in the picture.
		x0, y0 := pr.project(geoPoint{47.40, 8.53})
		_, y1 := pr.project(geoPoint{47.41, 8.53})
		x2, _ := pr.project(geoPoint{47.40, 8.53 + 0.01/math.Cos(pr.Lat0*math.Pi/180)})
		if !near(y0-y1, x2-x0, 1e-6) {
			t.Fatalf("north %v units vs east %v units for the same distance", y0-y1, x2-x0)
		}
		// Wider than high: the longitude span fills the inner width.
		span := (8.56 - 8.50) * pr.K * pr.Scale
		if !near(span, w-2*m, 1e-6) && !near((47.41-47.39)*pr.Scale, h-2*m, 1e-6) {
			t.Fatalf("neither extent fills the picture: %v", span)
		}
	})
	t.Run("southern and western hemispheres", func(t *testing.T) {
		pts := []geoPoint{{-34.61, -58.38}, {-34.60, -58.37}}
		pr, ok := fitProjection(pts, w, h, m)
		if !ok || pr.Wrap {
			t.Fatalf("projection %+v", pr)
		}
		inside(t, pr, pts)
	})
	t.Run("across the antimeridian", func(t *testing.T) {
		pts := []geoPoint{{-17.0, 179.99}, {-17.01, -179.99}}
		pr, ok := fitProjection(pts, w, h, m)
		if !ok || !pr.Wrap {
			t.Fatalf("projection %+v", pr)
		}
		inside(t, pr, pts)
		xw, _ := pr.project(pts[0])
		xe, _ := pr.project(pts[1])
		if xe <= xw {
			t.Fatalf("-179.99 is not east of 179.99: %v <= %v", xe, xw)
		}
	})
	t.Run("half the globe keeps the plain box", func(t *testing.T) {
		pts := []geoPoint{{0, -100}, {0, 0}, {0, 100}}
		pr, ok := fitProjection(pts, w, h, m)
		if !ok || pr.Wrap {
			t.Fatalf("projection %+v", pr)
		}
		inside(t, pr, pts)
	})
}

func TestScaleBarAndNiceNumbers(t *testing.T) {
	for _, c := range []struct {
		v, floor float64
	}{{1, 1}, {1.9, 1}, {2, 2}, {4.99, 2}, {5, 5}, {9.9, 5}, {10, 10}, {0.03, 0.02}, {740, 500}, {2500, 2000}} {
		if got := niceFloor(c.v); !near(got, c.floor, 1e-12) {
			t.Errorf("niceFloor(%v) = %v, want %v", c.v, got, c.floor)
		}
	}
	for _, c := range []struct {
		span float64
		n    int
		step float64
	}{{10, 4, 5}, {100, 4, 50}, {3, 4, 1}, {0.4, 4, 0.1}, {7, 5, 2}} {
		if got := niceStep(c.span, c.n); !near(got, c.step, 1e-12) {
			t.Errorf("niceStep(%v, %d) = %v, want %v", c.span, c.n, got, c.step)
		}
	}
	units, label := scaleBar(10, 200) // 10 m per unit, at most 200 units = 2 km
	if label != "2 km" || !near(units, 200, 1e-9) {
		t.Fatalf("scaleBar(10, 200) = %v %q", units, label)
	}
	units, label = scaleBar(0.3, 200) // at most 60 m
	if label != "50 m" || !near(units, 50/0.3, 1e-9) {
		t.Fatalf("scaleBar(0.3, 200) = %v %q", units, label)
	}
	if _, label := scaleBar(0, 200); label != "" {
		t.Fatalf("scaleBar(0) = %q", label)
	}
}

func TestBuildPicture(t *testing.T) {
	if buildPicture(nil) != nil || buildPicture([]vehicleTrack{{Vehicle: "V1"}}) != nil {
		t.Fatal("a picture without positions")
	}
	tracks := []vehicleTrack{
		{Vehicle: "V1", Online: true, Points: []geoPoint{{47.39, 8.54}, {47.395, 8.545}, {47.40, 8.55}}},
		{Vehicle: "V2", Points: []geoPoint{{47.38, 8.53}}},
		{Vehicle: "V3"}, // no position: no marker
	}
	pic := buildPicture(tracks)
	if pic == nil || len(pic.Markers) != 2 {
		t.Fatalf("picture %+v", pic)
	}
	pr, _ := fitProjection([]geoPoint{{47.39, 8.54}, {47.395, 8.545}, {47.40, 8.55}, {47.38, 8.53}}, pictureW, pictureH, pictureMargin)
	x, y := pr.project(geoPoint{47.40, 8.55})
	v1 := pic.Markers[0]
	if v1.Vehicle != "V1" || !v1.Online || v1.X != coord(x) || v1.Y != coord(y) || v1.Lat != "47.4" || v1.Lon != "8.55" {
		t.Fatalf("V1 marker %+v, want at (%s, %s)", v1, coord(x), coord(y))
	}
	if n := len(strings.Fields(v1.Track)); n != 3 || !strings.HasSuffix(v1.Track, coord(x)+","+coord(y)) {
		t.Fatalf("V1 track %q", v1.Track)
	}
	if v2 := pic.Markers[1]; v2.Vehicle != "V2" || v2.Online || v2.Track != "" {
		t.Fatalf("V2 marker %+v", v2)
	}
	// The projection is published for fleet.js: it must reproduce it.
	lat0, _ := strconv.ParseFloat(pic.Lat0, 64)
	lon0, _ := strconv.ParseFloat(pic.Lon0, 64)
	k, _ := strconv.ParseFloat(pic.K, 64)
	scale, _ := strconv.ParseFloat(pic.Scale, 64)
	js := pictureW/2 + (8.55-lon0)*k*scale
	if !near(js, x, 0.05) || !near(pictureH/2-(47.40-lat0)*scale, y, 0.05) {
		t.Fatalf("the published projection puts V1 at (%v, ...), the picture at %v", js, x)
	}
	if pic.BarLabel == "" || pic.NorthWest == "" || !strings.Contains(pic.Summary, "2 vehicles") {
		t.Fatalf("picture labels %+v", pic)
	}
	// Long tracks are thinned, keeping both ends.
	var long []geoPoint
	for i := range 1000 {
		long = append(long, geoPoint{47 + float64(i)*1e-5, 8})
	}
	pic = buildPicture([]vehicleTrack{{Vehicle: "V1", Points: long}})
	if n := len(strings.Fields(pic.Markers[0].Track)); n != maxTrackPoints {
		t.Fatalf("%d track points, want %d", n, maxTrackPoints)
	}
}

func TestChartScale(t *testing.T) {
	from := time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)
	to := from.Add(time.Hour)
	s := func(min int, v float64) sample {
		return sample{At: from.Add(time.Duration(min) * time.Minute), Value: v}
	}

	sc := newChartScale(from, to, []sample{s(0, 12), s(30, 47), s(60, 33)}, nil, nil)
	if sc.Min > 12 || sc.Max < 47 || sc.Min != 10 || sc.Max != 50 || sc.YStep != 10 {
		t.Fatalf("scale %+v", sc)
	}
	if !near(sc.x(from), chartLeft, 1e-9) || !near(sc.x(to), chartW-chartRight, 1e-9) || !near(sc.x(from.Add(30*time.Minute)), (chartLeft+chartW-chartRight)/2.0, 1e-9) {
		t.Fatalf("x: %v %v", sc.x(from), sc.x(to))
	}
	if !near(sc.y(sc.Min), chartH-chartBottom, 1e-9) || !near(sc.y(sc.Max), chartTop, 1e-9) || sc.y(40) >= sc.y(20) {
		t.Fatalf("y: %v %v", sc.y(sc.Min), sc.y(sc.Max))
	}
	// Outside the window or the range: clamped to the plot area.
	if sc.x(from.Add(-time.Hour)) != chartLeft || sc.y(1000) != chartTop {
		t.Fatal("not clamped")
	}

	for name, samples := range map[string][]sample{
		"single":    {s(10, 37)},
		"identical": {s(10, 37), s(20, 37), s(30, 37)},
		"zero":      {s(10, 0), s(20, 0)},
		"none":      nil,
	} {
		sc := newChartScale(from, to, samples, nil, nil)
		if !(sc.Max > sc.Min) || math.IsNaN(sc.y(37)) || math.IsInf(sc.YStep, 0) {
			t.Errorf("%s: scale %+v", name, sc)
		}
		if len(samples) > 0 && (samples[0].Value < sc.Min || samples[0].Value > sc.Max) {
			t.Errorf("%s: value %v outside [%v, %v]", name, samples[0].Value, sc.Min, sc.Max)
		}
	}
	// Battery: the range stays within 0-100 when the values do.
	zero, hundred := 0.0, 100.0
	sc = newChartScale(from, to, []sample{s(0, 100), s(60, 95)}, &zero, &hundred)
	if sc.Max != 100 || sc.Min < 0 || sc.Min > 95 {
		t.Fatalf("battery scale %+v", sc)
	}
	// An empty window is widened, not divided by zero.
	sc = newChartScale(from, from, nil, nil, nil)
	if math.IsNaN(sc.x(from)) {
		t.Fatal("NaN x for an empty window")
	}
}

func TestBuildChart(t *testing.T) {
	from := time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)
	to := from.Add(15 * time.Minute)
	c := buildChart("chart-altitude", "Altitude above home", "m", from, to, nil, nil, nil)
	if !c.Empty || c.Points != "" || c.Dot != nil || !strings.Contains(c.Summary, "No altitude") || len(c.XTicks) != 5 {
		t.Fatalf("empty chart %+v", c)
	}
	c = buildChart("a", "Altitude", "m", from, to, []sample{{from.Add(time.Minute), 20}}, nil, nil)
	if c.Empty || c.Points != "" || c.Dot == nil || c.Dot.X != coord(chartLeft+float64(chartW-chartLeft-chartRight)/15) {
		t.Fatalf("one sample: %+v", c)
	}
	samples := []sample{{from.Add(-time.Minute), 999}, {from, 0}, {from.Add(5 * time.Minute), 10}, {from.Add(10 * time.Minute), math.NaN()}, {to, 20}}
	c = buildChart("a", "Altitude", "m", from, to, samples, nil, nil)
	pts := strings.Fields(c.Points)
	if len(pts) != 3 || pts[0] != coord(chartLeft)+","+coord(chartH-chartBottom) || pts[2] != coord(chartW-chartRight)+","+coord(chartTop) ||
		c.Dot == nil || c.Dot.X+","+c.Dot.Y != pts[2] {
		t.Fatalf("points %q (y ticks %+v)", c.Points, c.YTicks)
	}
	if c.XTicks[0].Label != "15:00" || c.XTicks[4].Label != "15:15" || c.YTicks[0].Label != "0" || c.YTicks[len(c.YTicks)-1].Label != "20" {
		t.Fatalf("ticks %+v %+v", c.XTicks, c.YTicks)
	}
	if !strings.Contains(c.Summary, "3 samples") || !strings.Contains(c.Summary, "last 20 m") {
		t.Fatalf("summary %q", c.Summary)
	}
}

func TestThin(t *testing.T) {
	in := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	if got := thin(in, 20); len(got) != 10 {
		t.Fatal(got)
	}
	got := thin(in, 4)
	if len(got) != 4 || got[0] != 0 || got[3] != 9 {
		t.Fatal(got)
	}
}

func TestReadMessage(t *testing.T) {
	at := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	msg := func(kind, data string) *controlplane.TwinMessage {
		return &controlplane.TwinMessage{VehicleID: "V1", Kind: kind, Data: []byte(data), StoredAt: at.Add(time.Second)}
	}
	r, ok := readMessage(msg(kindPosition, `{"v":1,"received_at":"2026-01-02T15:04:05Z","lat_deg":47.1,"lon_deg":8.5,"alt_msl_m":500,"alt_rel_m":12.5}`))
	if !ok || *r.Lat != 47.1 || *r.Lon != 8.5 || *r.Alt != 12.5 || !r.At.Equal(at) {
		t.Fatalf("position %+v", r)
	}
	if _, ok := readMessage(msg(kindPosition, `{"lat_deg":0,"lon_deg":0}`)); ok {
		t.Fatal("0,0 (no fix) read as a position")
	}
	if _, ok := readMessage(msg(kindPosition, `{"lat_deg":95,"lon_deg":0}`)); ok {
		t.Fatal("latitude 95 read as a position")
	}
	r, ok = readMessage(msg(kindBattery, `{"remaining_pct":87}`))
	if !ok || *r.Battery != 87 || !r.At.Equal(at.Add(time.Second)) {
		t.Fatalf("battery %+v (no received_at: the stored time)", r)
	}
	if _, ok := readMessage(msg(kindBattery, `{"voltage_v":12}`)); ok {
		t.Fatal("battery without remaining_pct")
	}
	r, ok = readMessage(msg(kindHeartbeat, `{"mode":"GUIDED","armed":true}`))
	if !ok || r.Mode != "GUIDED" || !*r.Armed {
		t.Fatalf("heartbeat %+v", r)
	}
	if _, ok := readMessage(msg("state.attitude", `{}`)); ok {
		t.Fatal("attitude is not shown")
	}
	if _, ok := readMessage(msg(kindHeartbeat, `not json`)); ok {
		t.Fatal("not json")
	}
	row := vehicleRow{Reading: r}
	if row.Mode() != "GUIDED (armed)" || row.Battery() != "—" || row.Position() != "—" {
		t.Fatalf("row %q %q %q", row.Mode(), row.Battery(), row.Position())
	}
}

func TestParseCommandForm(t *testing.T) {
	for _, c := range []struct {
		form   map[string][]string
		params string
		bad    string
	}{
		{form: map[string][]string{"command": {"rtl"}}, params: `{}`},
		{form: map[string][]string{"command": {"arm"}, "lat": {"1"}}, params: `{}`},
		{form: map[string][]string{"command": {"goto"}, "lat": {"47.5"}, "lon": {" -8.25 "}, "alt": {"30"}}, params: `{"alt":30,"lat":47.5,"lon":-8.25}`},
		{form: map[string][]string{"command": {"takeoff"}, "alt": {"15"}}, params: `{"alt":15}`},
		{form: map[string][]string{"command": {"goto"}, "lat": {"91"}, "lon": {"0"}, "alt": {"1"}}, bad: "lat"},
		{form: map[string][]string{"command": {"goto"}, "lat": {"NaN"}, "lon": {"x"}, "alt": {"1"}}, bad: "lat"},
		{form: map[string][]string{"command": {"takeoff"}, "alt": {"0"}}, bad: "alt"},
		{form: map[string][]string{"command": {"set_mode"}}, bad: "choose"},
		{form: map[string][]string{"command": {"rtl.>"}}, bad: "choose"},
		{form: map[string][]string{}, bad: "choose"},
	} {
		cf, err := parseCommandForm(c.form)
		if c.bad != "" {
			if err == nil || controlplane.ErrorCode(err) != controlplane.EINVALID || !strings.Contains(controlplane.ErrorMessage(err)+formError(err).Message, c.bad) {
				t.Errorf("%v: err %v, want one about %s", c.form, err, c.bad)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", c.form, err)
			continue
		}
		var a any
		_ = json.Unmarshal(cf.Params, &a)
		if ab, _ := json.Marshal(a); string(ab) != c.params {
			t.Errorf("%v: params %s, want %s", c.form, cf.Params, c.params)
		}
	}
}
