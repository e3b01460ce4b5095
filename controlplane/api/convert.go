package api

import (
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
		VehicleId:  v.VehicleID,
		Fleet:      slug,
		Name:       v.Name,
		Labels:     labels,
		Status:     VehicleStatus(v.Status),
		CreatedAt:  utc(v.CreatedAt),
		UpdatedAt:  utc(v.UpdatedAt),
		EnrolledAt: utcPtr(v.EnrolledAt),
		LastSeenAt: utcPtr(v.LastSeenAt),
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
