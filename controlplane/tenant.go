package controlplane

import "time"

// Plans known to the control plane. Their limits come from configuration
// (billing issue); here they only gate which names are valid.
const (
	PlanFree  = "free"
	PlanScale = "scale"
)

// ValidPlan reports whether p names a plan.
func ValidPlan(p string) bool { return p == PlanFree || p == PlanScale }

// Tenant is one customer organisation. Each tenant becomes one NATS account.
type Tenant struct {
	ID   string // UUID
	Name string
	Plan string
	// GracePlan and GraceUntil are set during a downgrade grace: the
	// account keeps GracePlan's leaf limit until GraceUntil (plan.go).
	GracePlan  string
	GraceUntil *time.Time
	// StripeCustomerID is the tenant's Stripe customer ("" = none yet);
	// BillingStatus is Billing* (billing.go).
	StripeCustomerID string
	BillingStatus    string
	CreatedAt        time.Time
	UpdatedAt        time.Time
}

// User is a portal user, identified by e-mail. A user may belong to several
// tenants through memberships.
type User struct {
	ID        string // UUID
	Email     string // lower-cased
	CreatedAt time.Time
}

// Role is what a member or an API key may do inside a tenant.
type Role string

const (
	RoleOwner  Role = "owner"  // everything, including the tenant itself
	RoleAdmin  Role = "admin"  // everything but deleting the tenant
	RoleMember Role = "member" // fleets and vehicles, read everything else
	RoleViewer Role = "viewer" // read only
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool {
	switch r {
	case RoleOwner, RoleAdmin, RoleMember, RoleViewer:
		return true
	}
	return false
}

// rank orders roles so that a check can say "at least member".
func (r Role) rank() int {
	switch r {
	case RoleOwner:
		return 4
	case RoleAdmin:
		return 3
	case RoleMember:
		return 2
	case RoleViewer:
		return 1
	}
	return 0
}

// AtLeast reports whether r grants everything min grants.
func (r Role) AtLeast(min Role) bool { return r.rank() >= min.rank() && r.rank() > 0 }

// Membership links a user to a tenant with a role.
type Membership struct {
	TenantID  string
	UserID    string
	Role      Role
	CreatedAt time.Time
}

// SignupRequest is what a new organisation sends to sign up.
type SignupRequest struct {
	Organisation string
	Email        string
	Password     string
}

// SignupResult is the outcome of a signup: the API key secret is shown once.
type SignupResult struct {
	Tenant *Tenant
	User   *User
	APIKey *APIKeyCreated
}
