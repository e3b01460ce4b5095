package controlplane

import "time"

// AuditEvent records one state change: who, what, when and from where.
type AuditEvent struct {
	ID         int64
	TenantID   string
	At         time.Time
	ActorType  string // "user", "api_key", "system"
	ActorID    string
	Action     string // e.g. "fleet.create"
	TargetType string // e.g. "fleet"
	TargetID   string
	SourceIP   string
	RequestID  string
	Details    map[string]any
}

// AuditFilter selects audit events of one tenant, newest first.
type AuditFilter struct {
	Action     *string
	TargetType *string
	TargetID   *string
	Since      *time.Time
	Until      *time.Time
	Before     int64 // ID of the last item of the previous page (events sort by ID descending)
	Limit      int
}
