package controlplane

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fleetplane/fleetplane/internal/natsauth"
)

// Digital-twin operations of the Service (telemetry.go, docs/twin.md):
// provisioning of the tenants' history streams on the push path, state and
// history reads, the fleet's live feed and commands to vehicles. The data
// plane is Config.Telemetry; when it is nil these answer EUNAVAILABLE.

const (
	// ServiceUserName names the per-tenant service users the control plane
	// connects with (every one has a fresh nkey).
	ServiceUserName = "fleetplane-cp"
	// ServiceUserTTL is a service user's lifetime: a cached connection
	// mints a new one when it reconnects after that (the server closes a
	// connection whose JWT expired).
	ServiceUserTTL = time.Hour
	// defaultTwinReplicas is the history stream's replication when the
	// region's node count is unknown (the adapter falls back to 1 on a
	// server that is not clustered).
	defaultTwinReplicas = 3
	// liveRefresh is how often a live feed re-reads the fleet's vehicles.
	liveRefresh = 30 * time.Second
	// liveBuffer is the live feed's buffer; a slower reader drops.
	liveBuffer = 256
)

func (s *Service) telemetry() (Telemetry, error) {
	if s.cfg.Telemetry == nil {
		return nil, Errorf(EUNAVAILABLE, "telemetry is not configured on this control plane (no hub connection for digital-twin reads and commands)")
	}
	return s.cfg.Telemetry, nil
}

// telemetryTarget is a tenant's account in a region, with a service user
// minted on demand.
func (s *Service) telemetryTarget(tenantID, region string) TelemetryTarget {
	return TelemetryTarget{
		TenantID: tenantID,
		Region:   s.region(region),
		Stream:   TwinStream,
		Credentials: func(ctx context.Context) (*ServiceUser, error) {
			return s.serviceUser(ctx, tenantID)
		},
	}
}

// serviceUser signs a fresh, short-lived service user of the tenant's
// account (a new nkey every time; the seed is the caller's to wipe).
func (s *Service) serviceUser(ctx context.Context, tenantID string) (*ServiceUser, error) {
	iss, err := s.issuer()
	if err != nil {
		return nil, err
	}
	a, err := s.store.FindAccount(ctx, tenantID, false)
	if err != nil {
		return nil, err
	}
	k, err := natsauth.NewUserKey()
	if err != nil {
		return nil, err
	}
	exp := s.now().Add(ServiceUserTTL).Truncate(time.Second)
	j, err := iss.SignService(a, k.Public, ServiceUserName, exp)
	if err != nil {
		k.Wipe()
		return nil, fmt.Errorf("signing the service user: %w", err)
	}
	return &ServiceUser{Name: ServiceUserName, InboxPrefix: natsauth.ServiceInboxPrefix(ServiceUserName),
		JWT: j, Seed: k.Seed, ExpiresAt: exp}, nil
}

// --- provisioning ---

// twinStreamSpec is the history stream a plan and its account limits give
// in a region; ok is false when the account has no JetStream storage.
func twinStreamSpec(p HistoryPolicy, l AccountLimits, r Region) (spec StreamSpec, ok bool) {
	if l.JetStreamDisk == 0 {
		return StreamSpec{}, false
	}
	spec = StreamSpec{Name: TwinStream, Replicas: defaultTwinReplicas, MaxAge: p.Retention,
		Duplicates: p.DedupeWindow, StorageBudget: natsauth.NoLimit}
	if n := len(r.Nodes); n > 0 {
		spec.Replicas = min(defaultTwinReplicas, n)
	}
	if l.JetStreamDisk > 0 {
		spec.StorageBudget = l.JetStreamDisk * p.StoragePercent / 100
	}
	return spec, true
}

// provisionTenant brings the tenant's history stream to its plan in every
// region that has one of its fleets: it creates or updates a stream only
// when the recorded configuration differs, so on the push path it usually
// costs three reads. It runs after the account is on the hubs (a stream
// needs the account's JetStream limits there).
func (s *Service) provisionTenant(ctx context.Context, tenantID string) error {
	tel := s.cfg.Telemetry
	if tel == nil {
		return nil
	}
	regions, err := s.store.FindFleetRegions(ctx, tenantID)
	if err != nil || len(regions) == 0 {
		return err
	}
	t, err := s.store.FindTenantByID(ctx, tenantID)
	if err != nil {
		return err
	}
	a, err := s.store.FindAccount(ctx, tenantID, false)
	if err != nil {
		return err
	}
	have, err := s.store.FindTenantStreams(ctx, tenantID)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range regions {
		r := s.region(name)
		spec, ok := twinStreamSpec(s.plan(t.Plan).History, a.Limits, r)
		if !ok {
			s.logger.WarnContext(ctx, "the tenant's plan has no JetStream storage: no history stream", "tenant", tenantID, "plan", t.Plan)
			return nil
		}
		hash := spec.Hash()
		if i := slices.IndexFunc(have, func(ts *TenantStream) bool { return ts.Region == name }); i >= 0 && have[i].ConfigHash == hash {
			continue
		}
		applied, err := tel.EnsureStream(ctx, s.telemetryTarget(tenantID, name), spec)
		if err != nil {
			errs = append(errs, fmt.Errorf("history stream of tenant %s in region %s: %w", tenantID, name, err))
			continue
		}
		ts := &TenantStream{TenantID: tenantID, Region: name, Stream: applied.Name, ConfigHash: hash,
			Replicas: applied.Replicas, MaxAge: applied.MaxAge, MaxBytes: applied.MaxBytes, Duplicates: applied.Duplicates}
		if err := s.store.SetTenantStream(ctx, ts); err != nil {
			errs = append(errs, err)
			continue
		}
		s.logger.InfoContext(ctx, "history stream provisioned", "tenant", tenantID, "region", name, "stream", applied.Name,
			"created", applied.Created, "updated", applied.Updated, "replicas", applied.Replicas,
			"max_age", applied.MaxAge, "max_bytes", applied.MaxBytes, "duplicates", applied.Duplicates)
	}
	return errors.Join(errs...)
}

// provisionAfterCommit provisions inline after a change; failures are
// logged and left to the durable push job.
func (s *Service) provisionAfterCommit(ctx context.Context, tenantID string) {
	if s.cfg.Telemetry == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.PushTimeout)
	defer cancel()
	if err := s.provisionTenant(ctx, tenantID); err != nil {
		s.logger.WarnContext(ctx, "provisioning the tenant's history failed; the push job will retry", "tenant", tenantID, "err", err)
	}
}

// --- reads ---

// kindRe is a history kind filter: a category, or category.kind.
var kindRe = regexp.MustCompile(`^(state|evt|agent)(\.[A-Za-z0-9_-]{1,64})?$`)

// twinCategories are what the vehicle state shows.
var twinCategories = []natsauth.Category{natsauth.CategoryState, natsauth.CategoryEvents}

// annotate fills VehicleID and Kind from the subject
// fleet.<env>.veh.<vid>.<kind>.
func annotate(m *TwinMessage) *TwinMessage {
	toks := strings.SplitN(m.Subject, ".", 5)
	if len(toks) == 5 {
		m.VehicleID, m.Kind = toks[3], toks[4]
	}
	return m
}

// twinError words the adapter's errors for API callers.
func twinError(err error, region string) error {
	if ErrorCode(err) == ENOTFOUND {
		return Errorf(EUNAVAILABLE, "the history of this tenant is not provisioned in region %q yet (it is created with the region's first fleet); retry shortly", region)
	}
	return err
}

// VehicleState returns the latest message of each kind of state.* and
// evt.* of a vehicle, as of at (nil = now).
func (s *Service) VehicleState(ctx context.Context, fleetSlug, vehicleID string, at *time.Time) (*VehicleState, error) {
	p, err := s.authorize(ctx, RoleViewer)
	if err != nil {
		return nil, err
	}
	f, v, err := s.findFleetVehicle(ctx, p.TenantID, fleetSlug, vehicleID)
	if err != nil {
		return nil, err
	}
	tel, err := s.telemetry()
	if err != nil {
		return nil, err
	}
	prefix := natsauth.VehicleSubjectPrefix(f.Environment, v.VehicleID)
	q := LastQuery{UpTo: at}
	for _, c := range twinCategories {
		q.Subjects = append(q.Subjects, prefix+"."+string(c)+".>")
	}
	msgs, err := tel.LastMessages(ctx, s.telemetryTarget(p.TenantID, f.Region), q)
	if err != nil {
		return nil, twinError(err, f.Region)
	}
	for _, m := range msgs {
		annotate(m)
	}
	return &VehicleState{VehicleID: v.VehicleID, Messages: msgs}, nil
}

func (s *Service) findFleetVehicle(ctx context.Context, tenantID, fleetSlug, vehicleID string) (*Fleet, *Vehicle, error) {
	f, err := s.findFleet(ctx, s.store, tenantID, fleetSlug)
	if err != nil {
		return nil, nil, err
	}
	if !ValidVehicleID(vehicleID) {
		return nil, nil, Errorf(ENOTFOUND, "vehicle %q not found in fleet %q", truncate(vehicleID, 64), fleetSlug)
	}
	v, err := s.store.FindVehicle(ctx, tenantID, f.ID, vehicleID)
	if ErrorCode(err) == ENOTFOUND {
		return nil, nil, Errorf(ENOTFOUND, "vehicle %q not found in fleet %q", vehicleID, fleetSlug)
	} else if err != nil {
		return nil, nil, err
	}
	return f, v, nil
}

// VehicleHistory returns a vehicle's stored messages in time (stream)
// order, a page at a time; the cursor is the next stream sequence.
func (s *Service) VehicleHistory(ctx context.Context, fleetSlug, vehicleID string, q HistoryQuery) (*Page[*TwinMessage], error) {
	p, err := s.authorize(ctx, RoleViewer)
	if err != nil {
		return nil, err
	}
	var v ValidationError
	if q.Limit == 0 {
		q.Limit = DefaultHistoryLimit
	}
	if q.Limit < 1 || q.Limit > MaxHistoryLimit {
		v.Add("limit", "must be between 1 and %d", MaxHistoryLimit)
	}
	if q.Kind != "" && !kindRe.MatchString(q.Kind) {
		v.Add("kind", "must be a category (state, evt, agent) or category.kind such as state.position")
	}
	if q.Since != nil && q.Until != nil && !q.Since.Before(*q.Until) {
		v.Add("until", "must be after since")
	}
	var startSeq uint64
	if q.Cursor != "" {
		if startSeq, err = decodeSeqCursor(q.Cursor); err != nil {
			v.Add("cursor", "malformed; pass next_cursor from the previous page unchanged")
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	f, veh, err := s.findFleetVehicle(ctx, p.TenantID, fleetSlug, vehicleID)
	if err != nil {
		return nil, err
	}
	tel, err := s.telemetry()
	if err != nil {
		return nil, err
	}
	subject := natsauth.VehicleSubjectPrefix(f.Environment, veh.VehicleID) + "."
	switch {
	case q.Kind == "":
		subject += ">"
	case !strings.Contains(q.Kind, "."):
		subject += q.Kind + ".>"
	default:
		subject += q.Kind
	}
	rq := ReadQuery{Subject: subject, StartSeq: startSeq, Until: q.Until, Limit: q.Limit}
	if startSeq == 0 {
		rq.StartTime = q.Since
	}
	res, err := tel.ReadMessages(ctx, s.telemetryTarget(p.TenantID, f.Region), rq)
	if err != nil {
		return nil, twinError(err, f.Region)
	}
	out := &Page[*TwinMessage]{Items: res.Messages}
	for _, m := range out.Items {
		annotate(m)
	}
	if out.Items == nil {
		out.Items = []*TwinMessage{}
	}
	if res.NextSeq > 0 {
		out.NextCursor = encodeSeqCursor(res.NextSeq)
	}
	return out, nil
}

// History cursors are the next stream sequence, opaque to clients.
func encodeSeqCursor(seq uint64) string { return encodeCursor("s" + strconv.FormatUint(seq, 10)) }

func decodeSeqCursor(c string) (uint64, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) < 4 || string(b[:3]) != "c:s" || !utf8.Valid(b) {
		return 0, errors.New("malformed cursor")
	}
	n, err := strconv.ParseUint(string(b[3:]), 10, 64)
	if err != nil || n == 0 {
		return 0, errors.New("malformed cursor")
	}
	return n, nil
}

// FleetState returns, a page of vehicles at a time (by vehicle ID), each
// vehicle's last message of a kind (default state.position; nil when it
// has none).
func (s *Service) FleetState(ctx context.Context, fleetSlug string, q FleetStateQuery) (*Page[*FleetVehicleState], error) {
	p, err := s.authorize(ctx, RoleViewer)
	if err != nil {
		return nil, err
	}
	limit, after, err := q.decode()
	if err != nil {
		return nil, err
	}
	if q.Kind == "" {
		q.Kind = "state.position"
	}
	if !kindRe.MatchString(q.Kind) || !strings.Contains(q.Kind, ".") {
		return nil, fieldError("kind", "must be category.kind such as state.position or evt.armed")
	}
	f, err := s.findFleet(ctx, s.store, p.TenantID, fleetSlug)
	if err != nil {
		return nil, err
	}
	tel, err := s.telemetry()
	if err != nil {
		return nil, err
	}
	vids, err := s.store.FindVehicleIDs(ctx, p.TenantID, f.ID, after, limit+1)
	if err != nil {
		return nil, err
	}
	page := newPage(vids, limit, func(v string) string { return v })
	byVehicle := map[string]*TwinMessage{}
	if len(page.Items) > 0 {
		lq := LastQuery{UpTo: q.At}
		for _, vid := range page.Items {
			lq.Subjects = append(lq.Subjects, natsauth.VehicleSubjectPrefix(f.Environment, vid)+"."+q.Kind)
		}
		msgs, err := tel.LastMessages(ctx, s.telemetryTarget(p.TenantID, f.Region), lq)
		if err != nil {
			return nil, twinError(err, f.Region)
		}
		for _, m := range msgs {
			annotate(m)
			byVehicle[m.VehicleID] = m
		}
	}
	out := &Page[*FleetVehicleState]{Items: make([]*FleetVehicleState, len(page.Items)), NextCursor: page.NextCursor}
	for i, vid := range page.Items {
		out.Items[i] = &FleetVehicleState{VehicleID: vid, Message: byVehicle[vid]}
	}
	return out, nil
}

// fleetVehicleIDs reads all of a fleet's vehicle IDs.
func (s *Service) fleetVehicleIDs(ctx context.Context, tenantID string, fleetID int64) (map[string]bool, error) {
	const batch = 1000
	out := map[string]bool{}
	after := ""
	for {
		ids, err := s.store.FindVehicleIDs(ctx, tenantID, fleetID, after, batch)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			out[id] = true
		}
		if len(ids) < batch {
			return out, nil
		}
		after = ids[len(ids)-1]
	}
}

// FleetLive opens a live feed of the state.* and evt.* messages of a
// fleet's vehicles, as they arrive at the hub (not from history). Fleets of
// a tenant may share an environment, so the feed keeps only the fleet's
// vehicles (re-read every 30 s). The feed ends when ctx ends, on Close, or
// when the hub connection goes away; a reader slower than the vehicles
// loses messages rather than holding the hub up.
func (s *Service) FleetLive(ctx context.Context, fleetSlug string) (*LiveFeed, error) {
	p, err := s.authorize(ctx, RoleViewer)
	if err != nil {
		return nil, err
	}
	f, err := s.findFleet(ctx, s.store, p.TenantID, fleetSlug)
	if err != nil {
		return nil, err
	}
	tel, err := s.telemetry()
	if err != nil {
		return nil, err
	}
	vids, err := s.fleetVehicleIDs(ctx, p.TenantID, f.ID)
	if err != nil {
		return nil, err
	}
	var subjects []string
	for _, c := range twinCategories {
		subjects = append(subjects, natsauth.VehicleSubjectPrefix(f.Environment, "*")+"."+string(c)+".>")
	}
	ctx, cancel := context.WithCancel(ctx)
	sub, err := tel.Subscribe(ctx, s.telemetryTarget(p.TenantID, f.Region), subjects)
	if err != nil {
		cancel()
		return nil, twinError(err, f.Region)
	}
	out := make(chan *TwinMessage, liveBuffer)
	go func() {
		defer close(out)
		defer sub.Close()
		refresh := time.NewTicker(liveRefresh)
		defer refresh.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-refresh.C:
				if fresh, err := s.fleetVehicleIDs(ctx, p.TenantID, f.ID); err == nil {
					vids = fresh
				}
			case m, ok := <-sub.Messages():
				if !ok {
					return
				}
				if !vids[annotate(m).VehicleID] {
					continue
				}
				select {
				case out <- m:
				default: // the reader is behind: drop, as the subscription does
				}
			}
		}
	}()
	return &LiveFeed{C: out, close: cancel}, nil
}

// --- commands ---

// SendCommand sends a command to a vehicle (request/reply on
// fleet.<env>.veh.<vid>.cmd.<verb>, the reply under the vehicle's own
// tree, natsauth.ServiceReplyPrefix) and returns its reply. An offline
// vehicle and a silent one are ETIMEOUT with different messages. Every
// attempt that reaches the hub is audited with its outcome.
func (s *Service) SendCommand(ctx context.Context, fleetSlug, vehicleID string, in CommandRequest) (*CommandResult, error) {
	p, err := s.authorize(ctx, RoleMember)
	if err != nil {
		return nil, err
	}
	var v ValidationError
	if !slices.Contains(CommandVerbs, in.Command) {
		v.Add("command", "must be one of %s", strings.Join(CommandVerbs, ", "))
	}
	params := in.Params
	if len(params) == 0 || string(params) == "null" {
		params = json.RawMessage("{}")
	}
	if len(params) > MaxCommandParamsBytes {
		v.Add("params", "must be at most %d bytes of JSON", MaxCommandParamsBytes)
	} else if !isJSONObject(params) {
		v.Add("params", "must be a JSON object")
	}
	timeout := DefaultCommandTimeout
	if in.TimeoutMS != 0 {
		timeout = time.Duration(in.TimeoutMS) * time.Millisecond
		if timeout < MinCommandTimeout || timeout > MaxCommandTimeout {
			v.Add("timeout_ms", "must be between %d and %d", MinCommandTimeout.Milliseconds(), MaxCommandTimeout.Milliseconds())
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	f, veh, err := s.findFleetVehicle(ctx, p.TenantID, fleetSlug, vehicleID)
	if err != nil {
		return nil, err
	}
	if veh.Status != VehicleActive {
		return nil, Errorf(ECONFLICT, "vehicle %q is %s and cannot receive commands", veh.VehicleID, veh.Status)
	}
	tel, err := s.telemetry()
	if err != nil {
		return nil, err
	}
	prefix := natsauth.VehicleSubjectPrefix(f.Environment, veh.VehicleID)
	res := &CommandResult{VehicleID: veh.VehicleID, Command: in.Command, Subject: prefix + "." + string(natsauth.CategoryCommands) + "." + in.Command}
	start := time.Now()
	res.Reply, err = tel.Request(ctx, s.telemetryTarget(p.TenantID, f.Region), TelemetryRequest{
		Subject: res.Subject, ReplyPrefix: natsauth.ServiceReplyPrefix(f.Environment, veh.VehicleID),
		Data: params, Timeout: timeout})
	res.Latency = time.Since(start)
	outcome := "ok"
	switch {
	case errors.Is(err, ErrNoResponders):
		outcome = "offline"
		err = Errorf(ETIMEOUT, "vehicle %q is offline (no responders on %s)", veh.VehicleID, res.Subject)
	case errors.Is(err, ErrRequestTimeout):
		outcome = "timeout"
		err = Errorf(ETIMEOUT, "vehicle %q did not answer within %d ms", veh.VehicleID, timeout.Milliseconds())
	case err != nil:
		outcome = "error"
		err = twinError(err, f.Region)
	}
	details := map[string]any{"fleet": f.Slug, "command": in.Command, "params_bytes": len(params),
		"timeout_ms": timeout.Milliseconds(), "outcome": outcome, "latency_ms": res.Latency.Milliseconds()}
	// The command happened whatever the audit write does: its failure is
	// logged, not returned (a retry would repeat the command).
	if aerr := s.audit(context.WithoutCancel(ctx), s.store, p, "vehicle.command", "vehicle", veh.VehicleID, details); aerr != nil {
		s.logger.ErrorContext(ctx, "auditing a command failed", "tenant", p.TenantID, "vehicle", veh.VehicleID, "command", in.Command, "err", aerr)
	}
	if err != nil {
		return nil, err
	}
	return res, nil
}

// isJSONObject reports whether b is one valid JSON object.
func isJSONObject(b []byte) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(b, &m) == nil && m != nil
}
