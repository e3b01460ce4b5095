package portal

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Server-rendered pictures of the fleet pages: the fleet picture (vehicle
// positions and short tracks, no map tiles) and the vehicle's history
// charts. Everything here is pure arithmetic on plain values, so it is
// unit-tested without a server; the templates only print the results.

// geoPoint is a WGS84 position in degrees.
type geoPoint struct{ Lat, Lon float64 }

// metresPerDegree is one degree of latitude (or of longitude at the
// equator) on a sphere of the Earth's mean radius.
const metresPerDegree = math.Pi / 180 * 6371008.8

// minSpanDeg is the smallest extent a picture shows (about 220 m), so that
// one vehicle, or several at one spot, are drawn in the middle of a
// sensible area rather than at an infinite zoom.
const minSpanDeg = 0.002

// projection maps positions into an SVG viewBox W×H: equirectangular
// around the bounding box's centre (x = Δlon·cos(lat0), y = Δlat, north up),
// scaled uniformly so that the box fits inside the margin.
type projection struct {
	W, H       float64
	Lat0, Lon0 float64 // centre of the bounding box
	K          float64 // cos(Lat0): shrinks longitudes to ground distance
	Scale      float64 // viewBox units per degree of latitude
	// Wrap is set when the box crosses the antimeridian: longitudes
	// below 0 are taken +360 so that the box stays narrow.
	Wrap bool
}

// fitProjection fits points into a W×H viewBox with margin units on
// every side. ok is false without finite points.
func fitProjection(points []geoPoint, w, h, margin float64) (pr projection, ok bool) {
	pr = projection{W: w, H: h, K: 1}
	var lats, lons []float64
	for _, p := range points {
		if validPosition(p) {
			lats = append(lats, p.Lat)
			lons = append(lons, p.Lon)
		}
	}
	if len(lats) == 0 {
		return pr, false
	}
	minLon, maxLon := minMax(lons)
	if maxLon-minLon > 180 {
		// Narrower across the antimeridian? (A fleet spread over more
		// than half the globe keeps the plain box.)
		for i, l := range lons {
			if l < 0 {
				lons[i] = l + 360
			}
		}
		if a, b := minMax(lons); b-a < maxLon-minLon {
			pr.Wrap, minLon, maxLon = true, a, b
		}
	}
	minLat, maxLat := minMax(lats)
	pr.Lat0, pr.Lon0 = (minLat+maxLat)/2, (minLon+maxLon)/2
	pr.K = math.Cos(pr.Lat0 * math.Pi / 180)
	if pr.K < 0.01 {
		pr.K = 0.01 // at the poles: keep the scale finite
	}
	spanX := math.Max((maxLon-minLon)*pr.K, minSpanDeg)
	spanY := math.Max(maxLat-minLat, minSpanDeg)
	innerW, innerH := math.Max(w-2*margin, 1), math.Max(h-2*margin, 1)
	pr.Scale = math.Min(innerW/spanX, innerH/spanY)
	return pr, true
}

func validPosition(p geoPoint) bool {
	return !math.IsNaN(p.Lat) && !math.IsNaN(p.Lon) && p.Lat >= -90 && p.Lat <= 90 && p.Lon >= -180 && p.Lon <= 180
}

func minMax(v []float64) (lo, hi float64) {
	lo, hi = v[0], v[0]
	for _, x := range v[1:] {
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	return lo, hi
}

// project returns the viewBox coordinates of p.
func (pr projection) project(p geoPoint) (x, y float64) {
	lon := p.Lon
	if pr.Wrap && lon < 0 {
		lon += 360
	}
	return pr.W/2 + (lon-pr.Lon0)*pr.K*pr.Scale, pr.H/2 - (p.Lat-pr.Lat0)*pr.Scale
}

// unproject is the inverse of project (for the grid labels).
func (pr projection) unproject(x, y float64) geoPoint {
	lon := pr.Lon0 + (x-pr.W/2)/(pr.K*pr.Scale)
	if lon > 180 {
		lon -= 360
	}
	return geoPoint{Lat: pr.Lat0 - (y-pr.H/2)/pr.Scale, Lon: lon}
}

// metresPerUnit is the ground distance of one viewBox unit.
func (pr projection) metresPerUnit() float64 { return metresPerDegree / pr.Scale }

// scaleBar picks a round ground distance (1, 2 or 5 × 10^n metres) whose
// bar is at most maxUnits long, and returns the bar's length and label.
func scaleBar(metresPerUnit, maxUnits float64) (units float64, label string) {
	if metresPerUnit <= 0 || maxUnits <= 0 {
		return 0, ""
	}
	m := niceFloor(metresPerUnit * maxUnits)
	switch {
	case m >= 1000:
		label = trimFloat(m/1000, 3) + " km"
	default:
		label = trimFloat(m, 3) + " m"
	}
	return m / metresPerUnit, label
}

// niceFloor returns the largest 1, 2 or 5 × 10^n not above v (v > 0).
func niceFloor(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, f := range []float64{5, 2, 1} {
		if f*p <= v*(1+1e-9) {
			return f * p
		}
	}
	return p
}

// niceStep returns a 1, 2 or 5 × 10^n step that divides span into at
// most n intervals (span > 0).
func niceStep(span float64, n int) float64 {
	raw := span / float64(n)
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, f := range []float64{1, 2, 5, 10} {
		if f*p >= raw*(1-1e-9) {
			return f * p
		}
	}
	return 10 * p
}

// trimFloat formats v with at most prec decimals and no trailing zeros.
func trimFloat(v float64, prec int) string {
	s := strconv.FormatFloat(v, 'f', prec, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	if s == "-0" {
		s = "0"
	}
	return s
}

// coord formats a viewBox coordinate (one decimal is finer than a pixel).
func coord(v float64) string { return trimFloat(v, 1) }

// --- the fleet picture ---

// Size of the fleet picture's viewBox; the SVG scales to its container.
const (
	pictureW      = 800
	pictureH      = 480
	pictureMargin = 40
)

// picture is the fleet picture as the template prints it.
type picture struct {
	W, H    int
	Markers []pictureMarker
	// The projection, for fleet.js to place live positions the same way.
	Lat0, Lon0, K, Scale string
	Wrap                 bool
	Margin, MinSpan      string // for fleet.js to fit the picture again
	// Scale bar (bottom left) and the coordinates of two corners.
	BarX1, BarX2, BarY, BarLabelY string
	BarLabel                      string
	NorthWest, SouthEast          string
	Summary                       string // text alternative
}

// pictureMarker is one vehicle: its last position and a track.
type pictureMarker struct {
	Vehicle string
	X, Y    string // last position
	Track   string // polyline points, oldest first ("" = none)
	Online  bool
	Lat     string // last position in degrees, for people and scripts
	Lon     string
}

// vehicleTrack is what the picture draws for one vehicle: its recent
// positions, oldest first; the last one is where it is.
type vehicleTrack struct {
	Vehicle string
	Online  bool
	Points  []geoPoint
}

// maxTrackPoints bounds a track's polyline.
const maxTrackPoints = 120

// buildPicture projects the vehicles' tracks into the fleet picture. It
// returns nil when no vehicle has a position.
func buildPicture(tracks []vehicleTrack) *picture {
	var all []geoPoint
	for _, t := range tracks {
		all = append(all, t.Points...)
	}
	pr, ok := fitProjection(all, pictureW, pictureH, pictureMargin)
	if !ok {
		return nil
	}
	pic := &picture{W: pictureW, H: pictureH,
		Lat0: trimFloat(pr.Lat0, 7), Lon0: trimFloat(pr.Lon0, 7), K: trimFloat(pr.K, 9), Scale: trimFloat(pr.Scale, 3), Wrap: pr.Wrap,
		Margin: coord(pictureMargin), MinSpan: trimFloat(minSpanDeg, 6)}
	online := 0
	for _, t := range tracks {
		pts := validPoints(t.Points)
		if len(pts) == 0 {
			continue
		}
		pts = thin(pts, maxTrackPoints)
		last := pts[len(pts)-1]
		x, y := pr.project(last)
		m := pictureMarker{Vehicle: t.Vehicle, X: coord(x), Y: coord(y), Online: t.Online,
			Lat: trimFloat(last.Lat, 6), Lon: trimFloat(last.Lon, 6)}
		if len(pts) > 1 {
			var b strings.Builder
			for i, p := range pts {
				if i > 0 {
					b.WriteByte(' ')
				}
				px, py := pr.project(p)
				b.WriteString(coord(px) + "," + coord(py))
			}
			m.Track = b.String()
		}
		if t.Online {
			online++
		}
		pic.Markers = append(pic.Markers, m)
	}
	units, label := scaleBar(pr.metresPerUnit(), pictureW/4)
	x1 := float64(pictureMargin) / 2
	pic.BarX1, pic.BarX2, pic.BarY, pic.BarLabelY = coord(x1), coord(x1+units), coord(pictureH-14), coord(pictureH-20)
	pic.BarLabel = label
	nw, se := pr.unproject(0, 0), pr.unproject(pictureW, pictureH)
	pic.NorthWest = latLonText(nw)
	pic.SouthEast = latLonText(se)
	pic.Summary = fmt.Sprintf("%d vehicles with a position (%d online) between %s and %s; the scale bar shows %s.",
		len(pic.Markers), online, pic.NorthWest, pic.SouthEast, label)
	return pic
}

func validPoints(in []geoPoint) []geoPoint {
	out := make([]geoPoint, 0, len(in))
	for _, p := range in {
		if validPosition(p) {
			out = append(out, p)
		}
	}
	return out
}

// thin keeps at most n points, evenly spread, always the first and the
// last.
func thin[T any](in []T, n int) []T {
	if len(in) <= n || n < 2 {
		return in
	}
	out := make([]T, 0, n)
	step := float64(len(in)-1) / float64(n-1)
	for i := range n {
		out = append(out, in[int(math.Round(float64(i)*step))])
	}
	return out
}

// latLonText is "47.3977° N, 8.5456° E".
func latLonText(p geoPoint) string {
	ns, ew := "N", "E"
	if p.Lat < 0 {
		ns = "S"
	}
	if p.Lon < 0 {
		ew = "W"
	}
	return fmt.Sprintf("%s° %s, %s° %s", strconv.FormatFloat(math.Abs(p.Lat), 'f', 4, 64), ns,
		strconv.FormatFloat(math.Abs(p.Lon), 'f', 4, 64), ew)
}

// --- history charts ---

// Size of a chart's viewBox and its plot area.
const (
	chartW      = 640
	chartH      = 220
	chartLeft   = 56
	chartRight  = 24
	chartTop    = 16
	chartBottom = 36
)

// sample is one value of a series at a time.
type sample struct {
	At    time.Time
	Value float64
}

// chart is a line chart as the template prints it.
type chart struct {
	ID, Title, Unit string
	W, H            int
	// Plot area.
	Left, Right, Top, Bottom string
	Points                   string // polyline; "" when fewer than two samples
	Dot                      *chartTick
	XTicks, YTicks           []chartTick
	Summary                  string // text alternative: range and last value
	Empty                    bool
	MidX, MidY               string // centre of the plot area
}

// chartTick is an axis label at a position (X or Y in viewBox units).
type chartTick struct {
	X, Y  string
	Label string
}

// chartScale maps times to x and values to y of a chart's plot area.
type chartScale struct {
	From, To    time.Time
	Min, Max    float64 // y range after padding to round ticks
	Left, Right float64
	Top, Bottom float64
	YStep       float64
}

// newChartScale fits [from, to] and the samples' values: the y range is
// widened to round ticks and never empty (one sample, or identical values,
// get a range around the value).
func newChartScale(from, to time.Time, samples []sample, clampMin, clampMax *float64) chartScale {
	sc := chartScale{From: from, To: to, Left: chartLeft, Right: chartW - chartRight, Top: chartTop, Bottom: chartH - chartBottom}
	if !to.After(from) {
		sc.To = from.Add(time.Minute)
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range samples {
		if !math.IsNaN(s.Value) && !math.IsInf(s.Value, 0) {
			lo, hi = math.Min(lo, s.Value), math.Max(hi, s.Value)
		}
	}
	if math.IsInf(lo, 1) {
		lo, hi = 0, 1
	}
	if hi-lo < 1e-9 {
		pad := math.Max(math.Abs(lo)*0.1, 1)
		lo, hi = lo-pad, hi+pad
	}
	sc.YStep = niceStep(hi-lo, 4)
	sc.Min = math.Floor(lo/sc.YStep) * sc.YStep
	sc.Max = math.Ceil(hi/sc.YStep) * sc.YStep
	if clampMin != nil && sc.Min < *clampMin && lo >= *clampMin {
		sc.Min = *clampMin
	}
	if clampMax != nil && sc.Max > *clampMax && hi <= *clampMax {
		sc.Max = *clampMax
	}
	if sc.Max <= sc.Min {
		sc.Max = sc.Min + sc.YStep
	}
	return sc
}

// x maps a time into the plot area (clamped to it).
func (sc chartScale) x(t time.Time) float64 {
	f := float64(t.Sub(sc.From)) / float64(sc.To.Sub(sc.From))
	f = math.Max(0, math.Min(1, f))
	return sc.Left + f*(sc.Right-sc.Left)
}

// y maps a value into the plot area (up is more).
func (sc chartScale) y(v float64) float64 {
	f := (v - sc.Min) / (sc.Max - sc.Min)
	f = math.Max(0, math.Min(1, f))
	return sc.Bottom - f*(sc.Bottom-sc.Top)
}

// buildChart draws samples over [from, to]. unit is printed after values.
func buildChart(id, title, unit string, from, to time.Time, samples []sample, clampMin, clampMax *float64) *chart {
	var pts []sample
	for _, s := range samples {
		if !math.IsNaN(s.Value) && !math.IsInf(s.Value, 0) && !s.At.Before(from) && !s.At.After(to) {
			pts = append(pts, s)
		}
	}
	// Vehicle clocks stamp the samples: keep the line going forward.
	slices.SortStableFunc(pts, func(a, b sample) int { return a.At.Compare(b.At) })
	sc := newChartScale(from, to, pts, clampMin, clampMax)
	c := &chart{ID: id, Title: title, Unit: unit, W: chartW, H: chartH,
		Left: coord(sc.Left), Right: coord(sc.Right), Top: coord(sc.Top), Bottom: coord(sc.Bottom), Empty: len(pts) == 0,
		MidX: coord((sc.Left + sc.Right) / 2), MidY: coord((sc.Top + sc.Bottom) / 2)}
	for v := sc.Min; v <= sc.Max+sc.YStep/1e6; v += sc.YStep {
		c.YTicks = append(c.YTicks, chartTick{X: coord(sc.Left - 6), Y: coord(sc.y(v)), Label: trimFloat(v, 2)})
	}
	for i := range 5 {
		t := from.Add(time.Duration(float64(to.Sub(from)) * float64(i) / 4))
		c.XTicks = append(c.XTicks, chartTick{X: coord(sc.x(t)), Y: coord(sc.Bottom + 18), Label: t.UTC().Format("15:04")})
	}
	if len(pts) == 0 {
		c.Summary = "No " + strings.ToLower(title) + " data in this window."
		return c
	}
	if len(pts) > 1 {
		var b strings.Builder
		for i, s := range pts {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(coord(sc.x(s.At)) + "," + coord(sc.y(s.Value)))
		}
		c.Points = b.String()
	}
	// The last sample is marked (one sample is only a dot).
	last := pts[len(pts)-1]
	c.Dot = &chartTick{X: coord(sc.x(last.At)), Y: coord(sc.y(last.Value))}
	vals := make([]float64, len(pts))
	for i, s := range pts {
		vals[i] = s.Value
	}
	lo, hi := minMax(vals)
	c.Summary = fmt.Sprintf("%s from %s to %s UTC: %d samples, between %s and %s %s; last %s %s at %s UTC.", title,
		from.UTC().Format("15:04"), to.UTC().Format("15:04"), len(pts), trimFloat(lo, 1), trimFloat(hi, 1), unit,
		trimFloat(last.Value, 1), unit, last.At.UTC().Format("15:04:05"))
	return c
}
