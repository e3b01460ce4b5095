package controlplane

// TelemetryStore persists what the telemetry side needs (tenant stream
// provisioning state). Its methods are part of Store.
type TelemetryStore interface{}

// Telemetry is the tenant's data plane as the control plane uses it:
// stream provisioning, digital-twin reads, live updates and commands
// (implemented by controlplane/twin).
type Telemetry interface{}
