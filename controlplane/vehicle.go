package controlplane

import "time"

// VehicleStatus is where a vehicle is in its life cycle.
type VehicleStatus string

const (
	VehiclePending  VehicleStatus = "pending"  // registered, never enrolled
	VehicleActive   VehicleStatus = "active"   // enrolled, holds credentials
	VehicleDisabled VehicleStatus = "disabled" // switched off by an operator
	VehicleRevoked  VehicleStatus = "revoked"  // credentials revoked
)

// Valid reports whether s is a known status.
func (s VehicleStatus) Valid() bool {
	switch s {
	case VehiclePending, VehicleActive, VehicleDisabled, VehicleRevoked:
		return true
	}
	return false
}

// Vehicle is one drone or ground vehicle. VehicleID is unique per tenant and
// is a NATS subject token.
type Vehicle struct {
	ID         int64
	TenantID   string
	FleetID    int64
	FleetSlug  string
	VehicleID  string
	Name       string
	Labels     map[string]string
	Status     VehicleStatus
	CreatedAt  time.Time
	UpdatedAt  time.Time
	EnrolledAt *time.Time
	// LastSeenAt is when the vehicle was last known connected: when its
	// current link opened while it is online, when the link closed (or was
	// found gone) once it is offline.
	LastSeenAt *time.Time

	// Presence (presence.go): whether a leaf link is open, the hub node of
	// the current or last link, and why the last link closed.
	Online               bool
	HubNode              string
	LastDisconnectReason string

	// Credentials: the user key the vehicle enrolled with (its seed never
	// leaves the vehicle) and when its current JWT expires.
	UserPublicKey       string
	CredentialsExpireAt *time.Time
	Hostname            string
	Arch                string
	AgentVersion        string
	// Revocation is the latest revocation of this vehicle's key, if any
	// (filled by the Service on single-vehicle reads).
	Revocation *Revocation
}

// VehicleCreate pre-registers a vehicle by its ID.
type VehicleCreate struct {
	VehicleID string
	Name      string
	Labels    map[string]string
}

// VehicleUpdate changes a vehicle; nil fields are left alone. Labels, when
// set, replace all labels.
type VehicleUpdate struct {
	Name     *string
	Labels   *map[string]string
	Disabled *bool
}

// VehicleFilter selects vehicles of one tenant.
type VehicleFilter struct {
	FleetID         *int64
	FleetSlug       *string // like FleetID, without a separate fleet lookup
	Status          *VehicleStatus
	VehicleIDPrefix *string
	Label           *LabelSelector
	Online          *bool
	After           string // vehicle ID of the last item of the previous page (vehicles sort by vehicle ID)
	Limit           int
}

// LabelSelector matches vehicles whose label Key equals Value.
type LabelSelector struct {
	Key, Value string
}

// vehicleUpdateFields is what the store applies; Status is computed by the
// service from VehicleUpdate.Disabled.
type VehicleChange struct {
	Name   *string
	Labels *map[string]string
	Status *VehicleStatus
}
