package controlplane

import "time"

// Fleet groups vehicles of one tenant. Its environment is part of every
// subject its vehicles use (fleet.<env>.veh.<vid>...), and its region decides
// which hub cluster the vehicles connect to; both are fixed at creation.
type Fleet struct {
	ID           int64
	TenantID     string
	Slug         string
	Name         string
	Description  string
	Environment  string
	Region       string
	VehicleCount int
	CreatedAt    time.Time
	UpdatedAt    time.Time
}

// FleetCreate is the input to CreateFleet.
type FleetCreate struct {
	Slug        string
	Name        string
	Description string
	Environment string // defaults to "prod"
	Region      string // defaults to the first configured region
}

// FleetUpdate changes a fleet; nil fields are left alone.
type FleetUpdate struct {
	Name        *string
	Description *string
}

// FleetFilter selects fleets of one tenant.
type FleetFilter struct {
	After string // slug of the last item of the previous page (fleets sort by slug)
	Limit int
}
