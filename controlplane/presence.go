package controlplane

// PresenceStore persists vehicle presence (online, last seen, hub node,
// last disconnect reason). Its methods are part of Store.
type PresenceStore interface{}

// PresenceSource delivers vehicle connect/disconnect events from the hubs
// (implemented by controlplane/hubs).
type PresenceSource interface{}
