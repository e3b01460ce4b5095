package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/fleetplane/fleetplane/edge/sim"
)

func init() { simCommand = runSim }

// runSim is `fleetplane-agent sim`: a simulated autopilot (edge/sim) that
// sends MAVLink over UDP to the gateway until ctx ends.
func runSim(ctx context.Context, args []string, _ func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	udp := fs.String("udp", "127.0.0.1:14550", "send MAVLink to this UDP host:port (the gateway's udp-server endpoint)")
	listen := fs.String("udp-listen", "", "instead listen for the gateway on this UDP host:port (gateway endpoint udp-client)")
	lat := fs.Float64("lat", 47.397742, "home latitude, degrees")
	lon := fs.Float64("lon", 8.545594, "home longitude, degrees")
	sysID := fs.Uint("system-id", 1, "MAVLink system ID (1-255)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *sysID < 1 || *sysID > 255 {
		return fmt.Errorf("sim: --system-id %d out of range 1-255", *sysID)
	}
	cfg := sim.Config{UDP: *udp, Lat: *lat, Lon: *lon, SystemID: uint8(*sysID),
		Logger: slog.New(slog.NewTextHandler(stderr, nil))}
	if *listen != "" {
		cfg.UDP, cfg.Listen = "", *listen
	}
	s, err := sim.Start(cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	target := cfg.UDP
	if target == "" {
		target = "listening on " + cfg.Listen
	}
	fmt.Fprintf(stdout, "fleetplane-agent sim: system %d at %.6f,%.6f, MAVLink UDP %s; Ctrl-C to stop\n", cfg.SystemID, *lat, *lon, target)
	<-ctx.Done()
	return nil
}
