package api

import (
	"slices"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
)

// This file is the one place where generated API types and domain types
// meet. Times leave in UTC; lists never leave as null.

// utc normalises a time for output: UTC, at the microsecond precision of
// the database, so that the response to a create shows what a later read
// will (an expires_at the caller sent in nanoseconds included).
func utc(t time.Time) time.Time { return t.UTC().Round(time.Microsecond) }

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := utc(*t)
	return &u
}

func cursorOut(c string) *string {
	if c == "" {
		return nil
	}
	return &c
}

func listOut[T, U any](items []T, conv func(T) U) []U {
	out := make([]U, 0, len(items))
	for _, it := range items {
		out = append(out, conv(it))
	}
	return out
}

func tenantOut(t *controlplane.Tenant) Tenant {
	return Tenant{Id: t.ID, Name: t.Name, Plan: Plan(t.Plan), CreatedAt: utc(t.CreatedAt), UpdatedAt: utc(t.UpdatedAt)}
}

func userOut(u *controlplane.User) User {
	return User{Id: u.ID, Email: u.Email, CreatedAt: utc(u.CreatedAt)}
}

func apiKeyOut(k *controlplane.APIKey) APIKey {
	return APIKey{
		Id:         k.ID,
		Name:       k.Name,
		Role:       Role(k.Role),
		CreatedBy:  k.CreatedBy,
		CreatedAt:  utc(k.CreatedAt),
		ExpiresAt:  utcPtr(k.ExpiresAt),
		LastUsedAt: utcPtr(k.LastUsedAt),
		RevokedAt:  utcPtr(k.RevokedAt),
	}
}

func apiKeyCreatedOut(k *controlplane.APIKeyCreated) APIKeyCreated {
	o := apiKeyOut(&k.APIKey)
	return APIKeyCreated{
		Id: o.Id, Name: o.Name, Role: o.Role, CreatedBy: o.CreatedBy, CreatedAt: o.CreatedAt,
		ExpiresAt: o.ExpiresAt, LastUsedAt: o.LastUsedAt, RevokedAt: o.RevokedAt,
		Secret: k.Secret,
	}
}

func apiKeyCreateIn(in APIKeyCreate) controlplane.APIKeyCreate {
	out := controlplane.APIKeyCreate{Name: in.Name, ExpiresAt: in.ExpiresAt}
	if in.Role != nil {
		out.Role = controlplane.Role(*in.Role)
	}
	return out
}

func signupIn(in SignupRequest) controlplane.SignupRequest {
	return controlplane.SignupRequest{Organisation: in.Organisation, Email: in.Email, Password: in.Password}
}

func signupOut(res *controlplane.SignupResult) SignupResponse {
	return SignupResponse{Tenant: tenantOut(res.Tenant), User: userOut(res.User), ApiKey: apiKeyCreatedOut(res.APIKey)}
}

func fleetOut(f *controlplane.Fleet) Fleet {
	return Fleet{
		Slug:         f.Slug,
		Name:         f.Name,
		Description:  f.Description,
		Environment:  f.Environment,
		Region:       f.Region,
		VehicleCount: f.VehicleCount,
		CreatedAt:    utc(f.CreatedAt),
		UpdatedAt:    utc(f.UpdatedAt),
	}
}

func fleetCreateIn(in FleetCreate) controlplane.FleetCreate {
	return controlplane.FleetCreate{
		Slug:        in.Slug,
		Name:        deref(in.Name),
		Description: deref(in.Description),
		Environment: deref(in.Environment),
		Region:      deref(in.Region),
	}
}

func fleetUpdateIn(in FleetUpdate) controlplane.FleetUpdate {
	return controlplane.FleetUpdate{Name: in.Name, Description: in.Description}
}

// vehicleOut converts v; fleetSlug is the fleet of the request path, used
// when the store did not fill in the slug.
func vehicleOut(v *controlplane.Vehicle, fleetSlug string) Vehicle {
	labels := Labels(v.Labels)
	if labels == nil {
		labels = Labels{}
	}
	slug := v.FleetSlug
	if slug == "" {
		slug = fleetSlug
	}
	return Vehicle{
		VehicleId:            v.VehicleID,
		Fleet:                slug,
		Name:                 v.Name,
		Labels:               labels,
		Status:               VehicleStatus(v.Status),
		CreatedAt:            utc(v.CreatedAt),
		UpdatedAt:            utc(v.UpdatedAt),
		EnrolledAt:           utcPtr(v.EnrolledAt),
		LastSeenAt:           utcPtr(v.LastSeenAt),
		Online:               v.Online,
		HubNode:              nonEmpty(v.HubNode),
		LastDisconnectReason: nonEmpty(v.LastDisconnectReason),
		UserPublicKey:        nonEmpty(v.UserPublicKey),
		CredentialsExpireAt:  utcPtr(v.CredentialsExpireAt),
		Hostname:             nonEmpty(v.Hostname),
		Arch:                 nonEmpty(v.Arch),
		AgentVersion:         nonEmpty(v.AgentVersion),
		Revocation:           revocationPtr(v.Revocation),
	}
}

func vehicleCreateIn(in VehicleCreate) controlplane.VehicleCreate {
	out := controlplane.VehicleCreate{VehicleID: in.VehicleId, Name: deref(in.Name)}
	if in.Labels != nil {
		out.Labels = map[string]string(*in.Labels)
	}
	return out
}

func vehicleUpdateIn(in VehicleUpdate) controlplane.VehicleUpdate {
	out := controlplane.VehicleUpdate{Name: in.Name, Disabled: in.Disabled}
	if in.Labels != nil {
		m := map[string]string(*in.Labels)
		out.Labels = &m
	}
	return out
}

func regionOut(r controlplane.Region) Region {
	return Region{Name: r.Name, DisplayName: r.DisplayName}
}

func auditEventOut(e *controlplane.AuditEvent) AuditEvent {
	details := e.Details
	if details == nil {
		details = map[string]any{}
	}
	return AuditEvent{
		Id:         e.ID,
		At:         utc(e.At),
		ActorType:  ActorType(e.ActorType),
		ActorId:    e.ActorID,
		Action:     e.Action,
		TargetType: e.TargetType,
		TargetId:   e.TargetID,
		SourceIp:   e.SourceIP,
		RequestId:  e.RequestID,
		Details:    details,
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// nonEmpty is nil for "", which the API shows as null.
func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// orEmpty never lets a list leave as null.
func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// --- NATS identity ---

// vehicleCredentialsOut converts c; fleetSlug is the fleet of the request
// path, if it has one.
func vehicleCredentialsOut(c *controlplane.VehicleCredentials, fleetSlug string) VehicleCredentials {
	return VehicleCredentials{
		Vehicle:         vehicleOut(c.Vehicle, fleetSlug),
		Jwt:             c.JWT,
		ExpiresAt:       utc(c.ExpiresAt),
		RenewAfter:      utc(c.RenewAfter),
		Account:         c.AccountKey,
		Region:          c.Region,
		LeafUrls:        orEmpty(c.LeafURLs),
		CaBundle:        nonEmpty(c.CABundle),
		SubjectPrefix:   c.SubjectPrefix,
		IngestSubject:   c.IngestSubject,
		InboxPrefix:     c.InboxPrefix,
		JetstreamDomain: c.JetStreamDomain,
	}
}

func enrollIn(in EnrollRequest) controlplane.EnrollRequest {
	return controlplane.EnrollRequest{
		Token:        in.Token,
		PublicKey:    in.PublicKey,
		VehicleID:    deref(in.VehicleId),
		Hostname:     deref(in.Hostname),
		Arch:         deref(in.Arch),
		AgentVersion: deref(in.AgentVersion),
	}
}

func renewIn(in RenewRequest) controlplane.RenewRequest {
	return controlplane.RenewRequest{PublicKey: in.PublicKey, Nonce: in.Nonce, Signature: in.Signature}
}

func agentNonceOut(n *controlplane.AgentNonce) AgentNonce {
	return AgentNonce{Nonce: n.Nonce, ExpiresAt: utc(n.ExpiresAt)}
}

// enrollmentTokenStatus derives what the list shows; the service decides
// what can actually enroll.
func enrollmentTokenStatus(t *controlplane.EnrollmentToken, now time.Time) EnrollmentTokenStatus {
	switch {
	case t.RevokedAt != nil:
		return EnrollmentTokenStatusRevoked
	case !now.Before(t.ExpiresAt):
		return EnrollmentTokenStatusExpired
	case t.Uses >= t.MaxUses:
		return EnrollmentTokenStatusExhausted
	}
	return EnrollmentTokenStatusActive
}

func enrollmentTokenOut(t *controlplane.EnrollmentToken, now time.Time) EnrollmentToken {
	return EnrollmentToken{
		Id:          t.ID,
		Fleet:       t.FleetSlug,
		Description: t.Description,
		Status:      enrollmentTokenStatus(t, now),
		ExpiresAt:   utc(t.ExpiresAt),
		MaxUses:     t.MaxUses,
		Uses:        t.Uses,
		SourceCidrs: orEmpty(t.SourceCIDRs),
		VehicleId:   nonEmpty(t.VehicleID),
		CreatedBy:   t.CreatedBy,
		CreatedAt:   utc(t.CreatedAt),
		LastUsedAt:  utcPtr(t.LastUsedAt),
		RevokedAt:   utcPtr(t.RevokedAt),
	}
}

func enrollmentTokenCreatedOut(t *controlplane.EnrollmentTokenCreated, now time.Time, installCommand string) EnrollmentTokenCreated {
	o := enrollmentTokenOut(&t.EnrollmentToken, now)
	return EnrollmentTokenCreated{
		Id: o.Id, Fleet: o.Fleet, Description: o.Description, Status: o.Status, ExpiresAt: o.ExpiresAt,
		MaxUses: o.MaxUses, Uses: o.Uses, SourceCidrs: o.SourceCidrs, VehicleId: o.VehicleId,
		CreatedBy: o.CreatedBy, CreatedAt: o.CreatedAt, LastUsedAt: o.LastUsedAt, RevokedAt: o.RevokedAt,
		Token:          t.Secret,
		InstallCommand: installCommand,
	}
}

func enrollmentTokenCreateIn(in EnrollmentTokenCreate) controlplane.EnrollmentTokenCreate {
	out := controlplane.EnrollmentTokenCreate{
		Description: deref(in.Description),
		MaxUses:     deref(in.MaxUses),
		SourceCIDRs: deref(in.SourceCidrs),
		VehicleID:   deref(in.VehicleId),
	}
	if !in.ExpiresAt.IsZero() { // absent: the service says it is required
		out.ExpiresAt = &in.ExpiresAt
	}
	return out
}

func revocationOut(r *controlplane.Revocation) Revocation {
	nodes := make([]NodeAck, 0, len(r.Nodes))
	for _, n := range r.Nodes {
		nodes = append(nodes, NodeAck{Node: n.Node, Ok: n.OK, Message: nonEmpty(n.Message)})
	}
	conns := make([]NodeConnections, 0, len(r.Connections))
	for _, c := range r.Connections {
		conns = append(conns, NodeConnections{Node: c.Node, Connections: c.Connections, Error: nonEmpty(c.Error)})
	}
	return Revocation{
		Id:                   r.ID,
		Kind:                 RevocationKind(r.Kind),
		TargetId:             r.TargetID,
		UserPublicKey:        r.UserPublicKey,
		AccountVersion:       r.AccountVersion,
		Status:               RevocationStatus(r.Status),
		RequestedAt:          utc(r.RequestedAt),
		CompletedAt:          utcPtr(r.CompletedAt),
		Nodes:                nodes,
		Connections:          conns,
		ConnectionsRemaining: r.ConnectionsRemaining,
		LatencyMs:            float64(r.Latency) / float64(time.Millisecond),
		Attempts:             r.Attempts,
		LastError:            nonEmpty(r.LastError),
	}
}

func revocationPtr(r *controlplane.Revocation) *Revocation {
	if r == nil {
		return nil
	}
	o := revocationOut(r)
	return &o
}

func grantScopesOut(scopes []controlplane.GrantScopeSpec) []GrantScope {
	out := make([]GrantScope, 0, len(scopes))
	for _, sc := range scopes {
		g := GrantScope{Fleet: sc.Fleet, Categories: make([]GrantCategory, 0, len(sc.Categories))}
		for _, c := range sc.Categories {
			g.Categories = append(g.Categories, GrantCategory(c))
		}
		if len(sc.VehicleIDs) > 0 {
			vids := slices.Clone(sc.VehicleIDs)
			g.VehicleIds = &vids
		}
		out = append(out, g)
	}
	return out
}

func timeWindowsOut(ws []controlplane.TimeWindow) []TimeWindow {
	out := make([]TimeWindow, 0, len(ws))
	for _, w := range ws {
		out = append(out, TimeWindow{Start: w.Start, End: w.End})
	}
	return out
}

func connectionTypesOut(ts []string) []ConnectionType {
	out := make([]ConnectionType, 0, len(ts))
	for _, t := range ts {
		out = append(out, ConnectionType(t))
	}
	return out
}

func grantOut(g *controlplane.Grant) Grant {
	return Grant{
		Id:              g.ID,
		Description:     g.Description,
		UserPublicKey:   g.UserPublicKey,
		Scopes:          grantScopesOut(g.Scopes),
		Publish:         orEmpty(g.Publish),
		Subscribe:       orEmpty(g.Subscribe),
		ExpiresAt:       utc(g.ExpiresAt),
		SourceCidrs:     orEmpty(g.SourceCIDRs),
		TimeWindows:     timeWindowsOut(g.TimeWindows),
		Locale:          g.Locale,
		ConnectionTypes: connectionTypesOut(g.ConnectionTypes),
		Region:          g.Region,
		CreatedBy:       g.CreatedBy,
		CreatedAt:       utc(g.CreatedAt),
		RevokedAt:       utcPtr(g.RevokedAt),
		Revocation:      revocationPtr(g.Revocation),
	}
}

func grantCreatedOut(g *controlplane.GrantCreated) GrantCreated {
	o := grantOut(&g.Grant)
	out := GrantCreated{
		Id: o.Id, Description: o.Description, UserPublicKey: o.UserPublicKey, Scopes: o.Scopes,
		Publish: o.Publish, Subscribe: o.Subscribe, ExpiresAt: o.ExpiresAt, SourceCidrs: o.SourceCidrs,
		TimeWindows: o.TimeWindows, Locale: o.Locale, ConnectionTypes: o.ConnectionTypes, Region: o.Region,
		CreatedBy: o.CreatedBy, CreatedAt: o.CreatedAt, RevokedAt: o.RevokedAt, Revocation: o.Revocation,
		Jwt: g.JWT,
	}
	if len(g.Creds) > 0 {
		out.Creds = ptr(string(g.Creds))
	}
	return out
}

func grantPreviewOut(g *controlplane.Grant) GrantPreview {
	o := grantOut(g)
	return GrantPreview{
		Description: o.Description, UserPublicKey: nonEmpty(o.UserPublicKey), Scopes: o.Scopes,
		Publish: o.Publish, Subscribe: o.Subscribe, ExpiresAt: o.ExpiresAt, SourceCidrs: o.SourceCidrs,
		TimeWindows: o.TimeWindows, Locale: o.Locale, ConnectionTypes: o.ConnectionTypes, Region: o.Region,
	}
}

func grantCreateIn(in GrantCreate) controlplane.GrantCreate {
	out := controlplane.GrantCreate{
		Description: deref(in.Description),
		Publish:     deref(in.Publish),
		Subscribe:   deref(in.Subscribe),
		SourceCIDRs: deref(in.SourceCidrs),
		Locale:      deref(in.Locale),
		PublicKey:   deref(in.PublicKey),
		DryRun:      deref(in.DryRun),
	}
	if !in.ExpiresAt.IsZero() { // absent: the service says it is required
		out.ExpiresAt = &in.ExpiresAt
	}
	for _, sc := range deref(in.Scopes) {
		spec := controlplane.GrantScopeSpec{Fleet: sc.Fleet, VehicleIDs: deref(sc.VehicleIds)}
		for _, c := range sc.Categories {
			spec.Categories = append(spec.Categories, controlplane.GrantCategory(c))
		}
		out.Scopes = append(out.Scopes, spec)
	}
	for _, w := range deref(in.TimeWindows) {
		out.TimeWindows = append(out.TimeWindows, controlplane.TimeWindow{Start: w.Start, End: w.End})
	}
	for _, t := range deref(in.ConnectionTypes) {
		out.ConnectionTypes = append(out.ConnectionTypes, string(t))
	}
	return out
}

func ptr[T any](v T) *T { return &v }
