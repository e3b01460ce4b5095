package portal

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Usage and billing, and the audit log.

// billingState is what the page may offer.
type billingState int

const (
	billingUnknown billingState = iota // not an admin: the page cannot ask
	billingOff                         // no payment provider: a note, no buttons
	billingOn
)

type billingData struct {
	Usage       *controlplane.UsageSummary
	Off         bool // billing is not enabled on this installation
	Admin       bool
	Subscribed  bool // scale with a live subscription: manage, not upgrade
	HasCustomer bool // checked out before: the customer portal exists
	Chart       *usageChart
	Vehicles    string // "3 of 10"
	Grants      string
	Price       string // per vehicle-day
	Projected   string
}

func (s *server) billingPage(w http.ResponseWriter, r *http.Request) error {
	p := s.newPage(w, r, "Usage and billing", "billing")
	switch r.URL.Query().Get("checkout") {
	case "success":
		f := flashes["checkout-done"]
		p.Flash = &f
	case "cancel":
		f := flashes["checkout-again"]
		p.Flash = &f
	}
	return s.renderBilling(w, r, http.StatusOK, p, billingUnknown)
}

// renderBilling renders the usage and billing page. state is what a
// billing call just found out (billingUnknown: find out without side
// effects, see billingProbe).
func (s *server) renderBilling(w http.ResponseWriter, r *http.Request, status int, p *page, state billingState) error {
	ctx := r.Context()
	u, err := s.svc.Usage(ctx)
	if err != nil {
		return err
	}
	t, err := s.svc.Tenant(ctx)
	if err != nil {
		return err
	}
	d := &billingData{Usage: u, Admin: p.Can(string(controlplane.RoleAdmin)), HasCustomer: t.StripeCustomerID != "",
		Subscribed: u.Plan == controlplane.PlanScale && (u.BillingStatus == controlplane.BillingActive || u.BillingStatus == controlplane.BillingPastDue),
		Chart:      newUsageChart(u)}
	if state == billingUnknown && d.Admin {
		state = s.billingProbe(r, t)
	}
	d.Off = state == billingOff
	d.Vehicles = ofLimit(u.Current.Vehicles, u.Limits.Vehicles)
	d.Grants = ofLimit(u.Current.ActiveGrants, u.Limits.Grants)
	if pc := u.Projected; pc != nil {
		d.Price = fmtMoney(pc.UnitAmountCents, pc.Currency)
		d.Projected = fmtMoney(pc.AmountCents, pc.Currency)
	}
	p.Data = d
	s.render(w, r, status, "billing.html", p)
	return nil
}

// billingProbe finds out whether billing is on, without side effects: a
// tenant with a Stripe customer had billing; for one without, the
// customer-portal call answers ENOTIMPLEMENTED (billing off) or ECONFLICT
// ("no billing account yet") before it would reach the provider.
// (A Service method saying whether billing is on would be plainer.)
func (s *server) billingProbe(r *http.Request, t *controlplane.Tenant) billingState {
	if t.StripeCustomerID != "" {
		return billingOn
	}
	_, err := s.svc.BillingPortal(r.Context())
	if controlplane.ErrorCode(err) == controlplane.ENOTIMPLEMENTED {
		return billingOff
	}
	return billingOn
}

func ofLimit(n, limit int) string {
	if limit <= 0 {
		return strconv.Itoa(n) + " (no limit)"
	}
	return fmt.Sprintf("%d of %d", n, limit)
}

func fmtMoney(cents int64, currency string) string {
	return fmt.Sprintf("%.2f %s", float64(cents)/100, strings.ToUpper(currency))
}

func (s *server) billingCheckout(w http.ResponseWriter, r *http.Request) error {
	red, err := s.svc.BillingCheckout(r.Context())
	return s.billingRedirect(w, r, red, err)
}

func (s *server) billingPortal(w http.ResponseWriter, r *http.Request) error {
	red, err := s.svc.BillingPortal(r.Context())
	return s.billingRedirect(w, r, red, err)
}

// billingRedirect sends the browser to the provider's page: the only
// external redirect of the portal, and only ever to the URL the Service
// returned (it builds the return URLs from its own public URL; nothing of
// the request goes into either).
func (s *server) billingRedirect(w http.ResponseWriter, r *http.Request, red *controlplane.BillingRedirect, err error) error {
	if err != nil {
		switch controlplane.ErrorCode(err) {
		case controlplane.ENOTIMPLEMENTED:
			return s.renderBilling(w, r, http.StatusNotImplemented, s.newPage(w, r, "Usage and billing", "billing"), billingOff)
		case controlplane.ECONFLICT, controlplane.EUNAVAILABLE, controlplane.EINVALID:
			p := s.newPage(w, r, "Usage and billing", "billing")
			p.Error = formError(err)
			return s.renderBilling(w, r, settingsStatus(err), p, billingOn)
		}
		return err
	}
	u, perr := url.Parse(red.URL)
	if perr != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
		s.log.ErrorContext(r.Context(), "portal: the billing provider returned an unusable URL")
		return fmt.Errorf("billing redirect: not an absolute http(s) URL")
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, red.URL, http.StatusSeeOther)
	return nil
}

// --- the usage chart ---

// usageChart is the period's daily vehicles drawn as SVG bars: one slot
// per day of the period, two bars (registered, online) for each day so
// far. Geometry is computed here; the template only places it.
type usageChart struct {
	W, H     int
	Title    string
	Days     []usageDayBars
	Ticks    []usageTick
	Limit    *usageTick // the plan's vehicle limit, when it fits the scale
	BaseY    float64
	Left     float64
	Right    float64
	Period   string
	Empty    bool
	Captions []usageTick // x-axis labels
}

type usageDayBars struct {
	Label      string // 2025-05-03
	Title      string // the bars' tooltip
	Registered usageBar
	Online     usageBar
	Day        controlplane.UsageDay
}

type usageBar struct{ X, Y, W, H float64 }

type usageTick struct {
	X, Y  float64
	Label string
}

const (
	usageChartW      = 720
	usageChartH      = 220
	usageChartLeft   = 40.0
	usageChartRight  = 8.0
	usageChartTop    = 12.0
	usageChartBottom = 28.0
)

func newUsageChart(u *controlplane.UsageSummary) *usageChart {
	first := u.PeriodStart.UTC().Truncate(24 * time.Hour)
	last := u.PeriodEnd.UTC().Add(-24 * time.Hour).Truncate(24 * time.Hour)
	slots := int(last.Sub(first).Hours()/24) + 1
	slots = max(slots, len(u.Daily), 1)
	c := &usageChart{W: usageChartW, H: usageChartH, BaseY: usageChartH - usageChartBottom, Left: usageChartLeft, Right: usageChartW - usageChartRight,
		Period: first.Format("2 Jan 2006") + " – " + last.Format("2 Jan 2006"), Empty: len(u.Daily) == 0}
	top := 1
	for _, d := range u.Daily {
		top = max(top, d.VehiclesRegistered, d.VehiclesOnline)
	}
	if l := u.Limits.Vehicles; l > 0 && l <= top*2 {
		top = max(top, l)
	}
	top = usageCeil(top)
	plotH := c.BaseY - usageChartTop
	y := func(v int) float64 { return c.BaseY - float64(v)/float64(top)*plotH }
	for _, v := range []int{0, top / 2, top} {
		if v == top/2 && top%2 != 0 {
			continue
		}
		c.Ticks = append(c.Ticks, usageTick{X: usageChartLeft - 6, Y: y(v), Label: strconv.Itoa(v)})
	}
	if l := u.Limits.Vehicles; l > 0 && l <= top {
		c.Limit = &usageTick{X: c.Right, Y: y(l), Label: fmt.Sprintf("limit %d", l)}
	}
	slotW := (c.Right - usageChartLeft) / float64(slots)
	barW := slotW * 0.38
	for i, d := range u.Daily {
		x := usageChartLeft + float64(i)*slotW + slotW*0.1
		day := d.Day.UTC().Format("2006-01-02")
		c.Days = append(c.Days, usageDayBars{
			Label: day, Day: d,
			Title:      fmt.Sprintf("%s: %d registered, %d online", day, d.VehiclesRegistered, d.VehiclesOnline),
			Registered: usageBar{X: chartRound(x), Y: chartRound(y(d.VehiclesRegistered)), W: chartRound(barW), H: chartRound(c.BaseY - y(d.VehiclesRegistered))},
			Online:     usageBar{X: chartRound(x + barW), Y: chartRound(y(d.VehiclesOnline)), W: chartRound(barW), H: chartRound(c.BaseY - y(d.VehiclesOnline))},
		})
	}
	// Day-of-month labels: about every fifth day, and the first.
	step := max(1, (slots+5)/6)
	for i := 0; i < slots; i += step {
		c.Captions = append(c.Captions, usageTick{X: chartRound(usageChartLeft + (float64(i)+0.5)*slotW), Y: usageChartH - 8,
			Label: first.AddDate(0, 0, i).Format("2 Jan")})
	}
	c.Title = fmt.Sprintf("Vehicles registered and online per day, %s", c.Period)
	return c
}

// usageCeil rounds n up to 1, 2 or 5 times a power of ten.
func usageCeil(n int) int {
	if n <= 1 {
		return 1
	}
	p := 1
	for p*10 < n {
		p *= 10
	}
	for _, m := range []int{1, 2, 5, 10} {
		if m*p >= n {
			return m * p
		}
	}
	return 10 * p
}

func chartRound(v float64) float64 { return float64(int(v*10+0.5)) / 10 }

// --- audit log ---

type auditFilter struct {
	Action, TargetType, TargetID, Since, Until string
}

type auditRow struct {
	*controlplane.AuditEvent
	Actor   string
	Details string // indented JSON ("" = none)
}

type auditData struct {
	Filter      auditFilter
	Events      []auditRow
	Next        string // the next (older) page
	First       string // the newest page with the same filters
	Filtered    bool
	Paged       bool // not the first page
	Actions     []string
	TargetTypes []string
}

// auditActions and auditTargetTypes suggest filter values (the Service's
// audit actions; the fields take any text).
var (
	auditActions = []string{
		"api_key.create", "api_key.revoke", "billing.checkout", "billing.invoice_paid", "billing.payment_failed",
		"billing.subscription", "enrollment_token.create", "enrollment_token.revoke", "fleet.create", "fleet.delete",
		"fleet.update", "grant.create", "grant.revoke", "member.invite", "member.remove", "member.update_role",
		"tenant.create", "tenant.plan_change", "tenant.plan_grace_end", "user.confirm_email", "user.login",
		"user.logout", "user.set_password", "vehicle.create", "vehicle.delete", "vehicle.renew", "vehicle.revoke",
		"vehicle.update",
	}
	auditTargetTypes = []string{"api_key", "enrollment_token", "fleet", "grant", "invoice", "subscription", "tenant", "user", "vehicle"}
)

var auditFields = fieldLabels{{"since", "From"}, {"until", "Until"}, {"cursor", "Page"}, {"limit", "Page"}}

// auditTimeLayouts are what the filter's time fields accept: the
// datetime-local input's value (read as UTC), a date, RFC 3339.
var auditTimeLayouts = []string{"2006-01-02T15:04", "2006-01-02T15:04:05", "2006-01-02", time.RFC3339}

func parseAuditTime(v *controlplane.ValidationError, field, s string) *time.Time {
	if s == "" {
		return nil
	}
	for _, l := range auditTimeLayouts {
		if t, err := time.ParseInLocation(l, s, time.UTC); err == nil {
			return &t
		}
	}
	v.Add(field, "must be a date and time such as 2025-01-02T15:04 (UTC)")
	return nil
}

func (s *server) auditPage(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := auditFilter{
		Action:     strings.TrimSpace(q.Get("action")),
		TargetType: strings.TrimSpace(q.Get("target_type")),
		TargetID:   strings.TrimSpace(q.Get("target_id")),
		Since:      strings.TrimSpace(q.Get("since")),
		Until:      strings.TrimSpace(q.Get("until")),
	}
	var v controlplane.ValidationError
	aq := controlplane.AuditQuery{PageRequest: settingsCursor(r), Action: f.Action, TargetType: f.TargetType, TargetID: f.TargetID,
		Since: parseAuditTime(&v, "since", f.Since), Until: parseAuditTime(&v, "until", f.Until)}
	for _, x := range []struct{ name, val string }{{"action", f.Action}, {"target_type", f.TargetType}, {"target_id", f.TargetID}} {
		if len([]rune(x.val)) > 200 {
			v.Add(x.name, "must be at most 200 characters")
		}
	}
	if aq.Since != nil && aq.Until != nil && !aq.Until.After(*aq.Since) {
		v.Add("until", "must be after the start")
	}
	d := &auditData{Filter: f, Paged: aq.Cursor != "", Filtered: f != auditFilter{},
		First: settingsPageLink("/audit", q, ""), Actions: auditActions, TargetTypes: auditTargetTypes}
	p := s.newPage(w, r, "Audit log", "audit")
	status := http.StatusOK
	err := v.Err()
	var page *controlplane.Page[*controlplane.AuditEvent]
	if err == nil {
		page, err = s.svc.AuditEvents(r.Context(), aq)
	}
	if err != nil {
		if controlplane.ErrorCode(err) != controlplane.EINVALID {
			return err
		}
		p.Error = auditFields.pageError(err)
		status = http.StatusBadRequest
	} else {
		// People by e-mail (current members; others by ID).
		emails := map[string]string{}
		if ms, err := s.svc.Members(r.Context()); err == nil {
			for _, m := range ms {
				emails[m.UserID] = m.Email
			}
		}
		for _, e := range page.Items {
			row := auditRow{AuditEvent: e, Actor: e.ActorType}
			if email, ok := emails[e.ActorID]; ok && e.ActorType == "user" {
				row.Actor = email
			} else if e.ActorID != "" {
				row.Actor += ":" + e.ActorID
			}
			if len(e.Details) > 0 {
				if b, err := json.MarshalIndent(e.Details, "", "  "); err == nil {
					row.Details = string(b)
				}
			}
			d.Events = append(d.Events, row)
		}
		if page.NextCursor != "" {
			d.Next = settingsPageLink("/audit", q, page.NextCursor)
		}
	}
	p.Data = d
	s.render(w, r, status, "audit.html", p)
	return nil
}
