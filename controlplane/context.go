package controlplane

import "context"

// Principal is who is calling: an API key or a portal user acting in one
// tenant with one role, plus where the call came from (for the audit log).
type Principal struct {
	TenantID  string
	Role      Role
	ActorType string // "api_key", "user" or "system"
	ActorID   string
	SourceIP  string
	RequestID string
}

type principalKey struct{}

// NewContextWithPrincipal returns ctx carrying p.
func NewContextWithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFromContext returns the principal of ctx, or nil.
func PrincipalFromContext(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// RequestMeta is what an unauthenticated call (signup) knows about itself.
type RequestMeta struct {
	SourceIP  string
	RequestID string
}

type metaKey struct{}

// NewContextWithRequestMeta returns ctx carrying m.
func NewContextWithRequestMeta(ctx context.Context, m RequestMeta) context.Context {
	return context.WithValue(ctx, metaKey{}, m)
}

// RequestMetaFromContext returns the request metadata of ctx (zero when unset).
func RequestMetaFromContext(ctx context.Context) RequestMeta {
	m, _ := ctx.Value(metaKey{}).(RequestMeta)
	return m
}
