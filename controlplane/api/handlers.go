package api

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
)

// --- ops ---

func (s *server) health(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, Status{Status: StatusStatusOk})
}

func (s *server) ready(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	h, err := s.svc.Health(ctx)
	if err != nil {
		return err
	}
	out := Readiness{Status: ReadinessStatusOk, Database: ReadinessDatabaseOk,
		HubNodes: make([]HubNodeHealth, len(h.HubNodes)), AccountsBehind: h.AccountsBehind}
	if h.Degraded() {
		out.Status = ReadinessStatusDegraded
	}
	for i, n := range h.HubNodes {
		out.HubNodes[i] = HubNodeHealth{Node: n.Node, Up: n.Up}
		if n.Error != "" {
			out.HubNodes[i].Error = &n.Error
		}
	}
	// Probes poll; never serve a cached state.
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, out)
}

func (s *server) openAPI(w http.ResponseWriter, r *http.Request) error {
	b, err := specJSON()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(b)
	return nil
}

// --- signup and tenant ---

func (s *server) signup(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	var in SignupRequest
	if err := s.decode(w, r, &in); err != nil {
		return err
	}
	res, err := s.svc.Signup(r.Context(), signupIn(in))
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store") // holds a secret
	return writeJSON(w, http.StatusCreated, signupOut(res))
}

func (s *server) getTenant(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	t, err := s.svc.Tenant(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, tenantOut(t))
}

// --- API keys ---

func (s *server) listAPIKeys(w http.ResponseWriter, r *http.Request) error {
	q := newQuery(r, "cursor", "limit", "include_revoked")
	page := q.page()
	includeRevoked := q.boolean("include_revoked")
	if err := q.err(); err != nil {
		return err
	}
	p, err := s.svc.APIKeys(r.Context(), page, includeRevoked)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, APIKeyList{
		Items:      listOut(p.Items, apiKeyOut),
		NextCursor: cursorOut(p.NextCursor),
	})
}

func (s *server) createAPIKey(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	var in APIKeyCreate
	if err := s.decode(w, r, &in); err != nil {
		return err
	}
	k, err := s.svc.CreateAPIKey(r.Context(), apiKeyCreateIn(in))
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store") // holds a secret
	return writeJSON(w, http.StatusCreated, apiKeyCreatedOut(k))
}

func (s *server) revokeAPIKey(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	id := pathParam(r, "id")
	if !apiKeyIDRe.MatchString(id) {
		// Not an ID we could have issued: as missing as any other.
		return controlplane.Errorf(controlplane.ENOTFOUND, "API key %q not found", id)
	}
	if err := s.svc.RevokeAPIKey(r.Context(), id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// --- fleets ---

func (s *server) listFleets(w http.ResponseWriter, r *http.Request) error {
	q := newQuery(r, "cursor", "limit")
	page := q.page()
	if err := q.err(); err != nil {
		return err
	}
	p, err := s.svc.Fleets(r.Context(), page)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, FleetList{Items: listOut(p.Items, fleetOut), NextCursor: cursorOut(p.NextCursor)})
}

func (s *server) createFleet(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	var in FleetCreate
	if err := s.decode(w, r, &in); err != nil {
		return err
	}
	f, err := s.svc.CreateFleet(r.Context(), fleetCreateIn(in))
	if err != nil {
		return err
	}
	w.Header().Set("Location", fleetPath(f.Slug))
	return writeJSON(w, http.StatusCreated, fleetOut(f))
}

func (s *server) getFleet(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	f, err := s.svc.Fleet(r.Context(), pathParam(r, "fleet"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, fleetOut(f))
}

func (s *server) updateFleet(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	var in FleetUpdate
	if err := s.decode(w, r, &in); err != nil {
		return err
	}
	f, err := s.svc.UpdateFleet(r.Context(), pathParam(r, "fleet"), fleetUpdateIn(in))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, fleetOut(f))
}

func (s *server) deleteFleet(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	if err := s.svc.DeleteFleet(r.Context(), pathParam(r, "fleet")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func fleetPath(slug string) string { return "/v1/fleets/" + url.PathEscape(slug) }

// --- vehicles ---

func (s *server) listVehicles(w http.ResponseWriter, r *http.Request) error {
	q := newQuery(r, "cursor", "limit", "status", "vehicle_id_prefix", "label", "online")
	vq := controlplane.VehicleQuery{
		PageRequest:     q.page(),
		Status:          q.text("status", 32),
		VehicleIDPrefix: q.text("vehicle_id_prefix", 64),
		Label:           q.text("label", 320),
	}
	if q.has("online") {
		online := q.boolean("online")
		vq.Online = &online
	}
	if vq.Status != "" && !VehicleStatus(vq.Status).Valid() {
		q.v.Add("status", "must be one of pending, active, disabled, revoked")
	}
	if err := q.err(); err != nil {
		return err
	}
	slug := pathParam(r, "fleet")
	p, err := s.svc.Vehicles(r.Context(), slug, vq)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, VehicleList{
		Items:      listOut(p.Items, func(v *controlplane.Vehicle) Vehicle { return vehicleOut(v, slug) }),
		NextCursor: cursorOut(p.NextCursor),
	})
}

func (s *server) createVehicle(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	var in VehicleCreate
	if err := s.decode(w, r, &in); err != nil {
		return err
	}
	slug := pathParam(r, "fleet")
	v, err := s.svc.CreateVehicle(r.Context(), slug, vehicleCreateIn(in))
	if err != nil {
		return err
	}
	w.Header().Set("Location", fleetPath(slug)+"/vehicles/"+url.PathEscape(v.VehicleID))
	return writeJSON(w, http.StatusCreated, vehicleOut(v, slug))
}

func (s *server) getVehicle(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	slug := pathParam(r, "fleet")
	v, err := s.svc.Vehicle(r.Context(), slug, pathParam(r, "vehicle"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, vehicleOut(v, slug))
}

func (s *server) updateVehicle(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	var in VehicleUpdate
	if err := s.decode(w, r, &in); err != nil {
		return err
	}
	slug := pathParam(r, "fleet")
	v, err := s.svc.UpdateVehicle(r.Context(), slug, pathParam(r, "vehicle"), vehicleUpdateIn(in))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, vehicleOut(v, slug))
}

func (s *server) deleteVehicle(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	if err := s.svc.DeleteVehicle(r.Context(), pathParam(r, "fleet"), pathParam(r, "vehicle")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// --- regions and audit ---

func (s *server) listRegions(w http.ResponseWriter, r *http.Request) error {
	if err := newQuery(r).err(); err != nil {
		return err
	}
	regions, err := s.svc.Regions(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, RegionList{Items: listOut(regions, regionOut)})
}

func (s *server) listAuditEvents(w http.ResponseWriter, r *http.Request) error {
	q := newQuery(r, "cursor", "limit", "action", "target_type", "target_id", "since", "until")
	aq := controlplane.AuditQuery{
		PageRequest: q.page(),
		Action:      q.text("action", 200),
		TargetType:  q.text("target_type", 200),
		TargetID:    q.text("target_id", 200),
		Since:       q.time("since"),
		Until:       q.time("until"),
	}
	if aq.Since != nil && aq.Until != nil && !aq.Until.After(*aq.Since) {
		q.v.Add("until", "must be after since")
	}
	if err := q.err(); err != nil {
		return err
	}
	p, err := s.svc.AuditEvents(r.Context(), aq)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, AuditEventList{Items: listOut(p.Items, auditEventOut), NextCursor: cursorOut(p.NextCursor)})
}
