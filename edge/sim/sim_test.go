package sim

import (
	"math"
	"testing"

	"github.com/bluenviron/gomavlib/v3/pkg/dialects/common"
)

// TestFlightPhases drives the physics directly (no network, no clock):
// arm, takeoff, circle, goto, RTL, landing and disarm on touchdown.
func TestFlightPhases(t *testing.T) {
	s := &Sim{cfg: Config{Lat: 47.397742, Lon: 8.545594, Tick: 1e8}, battery: 100}
	nan := math.NaN()
	cmd := func(c common.MAV_CMD, p ...float64) common.MAV_RESULT {
		var a [7]float64
		copy(a[:], p)
		return s.command(c, a)
	}
	steps := func(n int) {
		for range n {
			s.step(0.1)
		}
	}
	if r := cmd(common.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, nan, nan, nan, 10); r != common.MAV_RESULT_DENIED {
		t.Fatalf("takeoff disarmed: %v", r)
	}
	if r := cmd(common.MAV_CMD_COMPONENT_ARM_DISARM, 1); r != common.MAV_RESULT_ACCEPTED || !s.armed {
		t.Fatalf("arm: %v", r)
	}
	if r := cmd(common.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, nan, nan, nan, 10); r != common.MAV_RESULT_ACCEPTED || s.mode != ModeGuided {
		t.Fatalf("takeoff: %v", r)
	}
	steps(50) // 5 s at 2.5 m/s reaches 10 m
	if s.ph != holding || s.alt != 10 {
		t.Fatalf("after takeoff: phase %v alt %v", s.ph, s.alt)
	}
	n0, e0 := s.n, s.e
	steps(10)
	if d := math.Hypot(s.n-n0, s.e-e0); d < 3 || d > 6 {
		t.Fatalf("circling moved %v m in 1 s, want ~5", d)
	}
	lat, lon := s.latLon(200, 0)
	if r := s.reposition(lat, lon, 20); r != common.MAV_RESULT_ACCEPTED || s.ph != going {
		t.Fatalf("goto: %v", r)
	}
	steps(400)
	if s.ph != holding || math.Abs(s.alt-20) > 1e-9 {
		t.Fatalf("after goto: phase %v alt %v", s.ph, s.alt)
	}
	if r := cmd(common.MAV_CMD_COMPONENT_ARM_DISARM, 0); r != common.MAV_RESULT_DENIED {
		t.Fatalf("disarm in flight: %v", r)
	}
	if r := cmd(common.MAV_CMD_NAV_RETURN_TO_LAUNCH); r != common.MAV_RESULT_ACCEPTED || s.mode != ModeRTL {
		t.Fatalf("rtl: %v", r)
	}
	steps(1000)
	if s.ph != landed || s.armed || math.Hypot(s.n, s.e) > 1e-6 || s.alt != 0 {
		t.Fatalf("after RTL: phase %v armed %v at %v,%v alt %v", s.ph, s.armed, s.n, s.e, s.alt)
	}
	if s.battery >= 100 || s.battery < 90 {
		t.Fatalf("battery %v after a short flight", s.battery)
	}
	if r := cmd(common.MAV_CMD_DO_SET_MODE, 1, 99); r != common.MAV_RESULT_DENIED {
		t.Fatalf("unknown mode: %v", r)
	}
	if r := cmd(common.MAV_CMD_DO_SET_MODE, 1, float64(ModeLoiter)); r != common.MAV_RESULT_ACCEPTED || s.mode != ModeLoiter {
		t.Fatalf("set_mode: %v", r)
	}
	if r := cmd(common.MAV_CMD_DO_MOTOR_TEST); r != common.MAV_RESULT_UNSUPPORTED {
		t.Fatalf("unsupported: %v", r)
	}
	if len(s.pendingTxt) == 0 {
		t.Fatal("no status texts")
	}
}
