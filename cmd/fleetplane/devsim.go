package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/edge/agent"
	"github.com/fleetplane/fleetplane/edge/sim"
)

// simVehicle is one simulated vehicle of `fleetplane dev --sim-vehicles`:
// the real agent (leaf node, local stream, forwarder, MAVLink gateway) in
// this process, talking MAVLink over loopback UDP to a simulated autopilot.
type simVehicle struct {
	agent *agent.Agent
	sim   *sim.Sim
}

// startSimVehicles enrolls (once; later runs reuse the enrollment under
// stateDir/sim) and runs n simulated vehicles in the demo fleet. It waits
// for the HTTP server at baseURL, since the agents enroll through it like
// real vehicles. The returned function stops them.
func startSimVehicles(ctx context.Context, a *app, baseURL, apiKey, stateDir string, n int, logger *slog.Logger) (func(), error) {
	if err := waitHTTP(ctx, baseURL+"/healthz"); err != nil {
		return nil, err
	}
	p, err := a.svc.Authenticate(ctx, apiKey)
	if err != nil {
		return nil, err
	}
	pctx := controlplane.NewContextWithPrincipal(ctx, p)
	var vehicles []simVehicle
	stop := func() {
		for _, v := range vehicles {
			v.sim.Close()
			v.agent.Close()
		}
	}
	var token string
	for i := range n {
		vid := fmt.Sprintf("sim-%02d", i+1)
		dir := filepath.Join(stateDir, "sim", vid)
		cfg, err := agent.LoadConfig(filepath.Join(dir, "etc", agent.ConfigName))
		if err != nil {
			if token == "" {
				exp := time.Now().Add(time.Hour)
				t, err := a.svc.CreateEnrollmentToken(pctx, "demo", controlplane.EnrollmentTokenCreate{
					Description: "fleetplane dev --sim-vehicles", ExpiresAt: &exp, MaxUses: n})
				if err != nil {
					stop()
					return nil, fmt.Errorf("enrollment token for simulated vehicles: %s", controlplane.ErrorMessage(err))
				}
				token = t.Secret
			}
			_ = os.RemoveAll(dir)
			if cfg, _, err = agent.Enroll(ctx, agent.EnrollOptions{Server: baseURL, Token: token, VehicleID: vid,
				Dir: filepath.Join(dir, "etc"), DataDir: filepath.Join(dir, "var"), Version: "dev", Hostname: vid}); err != nil {
				stop()
				return nil, fmt.Errorf("enroll %s: %w", vid, err)
			}
		}
		gw, err := freeUDPAddr()
		if err != nil {
			stop()
			return nil, err
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			stop()
			return nil, err
		}
		ag, err := agent.Start(ctx, agent.Options{Config: cfg, Version: "dev", Logger: logger.With("sim", vid),
			ClientPort: -1, HTTPListener: ln, Forward: agent.StoreAndForward,
			MAVLink: &agent.MAVLinkConfig{Endpoints: []string{"udp-server:" + gw}}})
		if err != nil {
			stop()
			return nil, fmt.Errorf("agent %s: %w", vid, err)
		}
		// Spread the vehicles around the default home (Zurich airfield).
		sm, err := sim.Start(sim.Config{UDP: gw, Lat: 47.397742 + 0.002*float64(i%5), Lon: 8.545594 + 0.003*float64(i/5)})
		if err != nil {
			ag.Close()
			stop()
			return nil, fmt.Errorf("simulator %s: %w", vid, err)
		}
		vehicles = append(vehicles, simVehicle{agent: ag, sim: sm})
		logger.Info("simulated vehicle running", "vehicle", vid, "local_nats", ag.ClientURL(), "mavlink", gw)
	}
	return stop, nil
}

func freeUDPAddr() (string, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.LocalAddr().String(), nil
}

func waitHTTP(ctx context.Context, url string) error {
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return errors.New("the API did not come up")
		case <-time.After(50 * time.Millisecond):
		}
	}
}
