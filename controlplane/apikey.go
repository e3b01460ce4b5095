package controlplane

import "time"

// APIKey authenticates API calls for one tenant with one role. The secret
// (fpk_<id>_<secret>) is shown once at creation; only its hash is stored.
type APIKey struct {
	ID         string // public key ID, the <id> in fpk_<id>_<secret>
	TenantID   string
	Name       string
	Role       Role
	CreatedBy  string // actor that created it ("user:<uuid>", "api_key:<id>", "system")
	CreatedAt  time.Time
	ExpiresAt  *time.Time
	LastUsedAt *time.Time
	RevokedAt  *time.Time
}

// APIKeyCreated is an API key together with its plaintext secret, returned
// only by the call that created it.
type APIKeyCreated struct {
	APIKey
	Secret string
}

// APIKeyCreate is the input to CreateAPIKey.
type APIKeyCreate struct {
	Name      string
	Role      Role       // defaults to admin
	ExpiresAt *time.Time // optional; must be in the future
}

// APIKeyFilter selects API keys of one tenant.
type APIKeyFilter struct {
	IncludeRevoked bool
	After          string // key ID of the last item of the previous page (keys sort by ID)
	Limit          int
}
