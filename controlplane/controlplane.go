// Package controlplane is Fleetplane's domain: tenants, fleets, vehicles, API
// keys and audit events, the coded errors they fail with, the interfaces the
// domain consumes (Store, ...) and the Service that orchestrates them.
//
// It imports no adapter: Postgres, HTTP, NATS and Stripe live in
// controlplane/<adapter> packages, and only cmd/ wires them together. It may
// import internal/ helpers that are pure (secret, validation, passwords).
package controlplane
