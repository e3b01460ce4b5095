package controlplane

// RegionStore persists hub regions (issue 4: `fleetplane admin region
// add|list`). Its methods are part of Store.
type RegionStore interface{}
