package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/fleetplane/fleetplane/edge/forward"
	"github.com/fleetplane/fleetplane/edge/leaf"
)

// Status is the running agent's report (GET /status, `fleetplane-agent status`).
type Status struct {
	Vehicle   string    `json:"vehicle"`
	Fleet     string    `json:"fleet"`
	Region    string    `json:"region"`
	Version   string    `json:"version"`
	Started   time.Time `json:"started"`
	ClientURL string    `json:"client_url"`
	// Link is the hub link; LinkChanged when it last went up or down.
	Link        leaf.Link  `json:"link"`
	LinkChanged *time.Time `json:"link_changed,omitempty"`
	// Backlog is the local stream: what the forwarder has not delivered yet.
	Backlog Backlog `json:"backlog"`
	// LastHeartbeat is when the vehicle's state.heartbeat was last seen locally.
	LastHeartbeat *time.Time  `json:"last_heartbeat"`
	Rates         Rates       `json:"rates"`
	Credentials   Credentials `json:"credentials"`
	Forwarder     string      `json:"forwarder"`
	// Forward is the forwarder's counters (nil before it runs).
	Forward *forward.Stats `json:"forward,omitempty"`

	sampled sampled
}

type sampled struct {
	at               time.Time
	linkID           uint64
	out, in, localIn int64
	lastSeq          uint64
	full             bool
	alerted          time.Time
}

// Backlog is the local stream's state.
type Backlog struct {
	Messages uint64 `json:"messages"`
	Bytes    uint64 `json:"bytes"`
	MaxBytes int64  `json:"max_bytes"`
	Full     bool   `json:"full"`
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
}

// Rates are messages per second over the last sample interval.
type Rates struct {
	StoredPerSec  float64 `json:"stored_per_sec"`   // into the local stream
	ToHubPerSec   float64 `json:"to_hub_per_sec"`   // over the leaf link
	FromHubPerSec float64 `json:"from_hub_per_sec"` // over the leaf link
	LocalInPerSec float64 `json:"local_in_per_sec"` // published by on-vehicle clients
}

// Credentials is the JWT's lifecycle.
type Credentials struct {
	ExpiresAt   time.Time  `json:"expires_at"`
	RenewAfter  time.Time  `json:"renew_after"`
	LastRenewal *time.Time `json:"last_renewal,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
}

// Status reports the agent's state: the link as of now, the rest as of the
// last sample.
func (a *Agent) Status() Status {
	lk := a.leaf.Link()
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.status
	s.Link = lk
	s.Vehicle, s.Fleet, s.Region = a.enr.Vehicle.VehicleID, a.enr.Vehicle.Fleet, a.enr.Region
	s.Version, s.Started, s.ClientURL = a.opts.Version, a.started, a.leaf.ClientURL()
	s.Credentials.ExpiresAt, s.Credentials.RenewAfter = a.enr.ExpiresAt, a.enr.RenewAfter
	if a.fwdStats != nil {
		fs := a.fwdStats()
		s.Forward = &fs
	}
	return s
}

// FetchStatus asks a running agent at addr (host:port of its HTTP endpoint).
func FetchStatus(ctx context.Context, addr string) (*Status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("no agent answering at %s (is `fleetplane-agent run` running? systemctl status fleetplane-agent): %w", addr, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent at %s answered %s", addr, resp.Status)
	}
	var s Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, err
	}
	return &s, nil
}

// WriteText prints the status for people.
func (s *Status) WriteText(w io.Writer) {
	ago := func(t *time.Time) string {
		if t == nil {
			return "never"
		}
		return fmt.Sprintf("%s ago (%s)", time.Since(*t).Round(time.Second), t.Local().Format(time.RFC3339))
	}
	fmt.Fprintf(w, "vehicle      %s (fleet %s, region %s), agent %s, up %s\n", s.Vehicle, s.Fleet, s.Region, s.Version, time.Since(s.Started).Round(time.Second))
	if s.Link.Connected {
		fmt.Fprintf(w, "link         up: hub %s at %s, rtt %s, since %s\n", s.Link.Hub, s.Link.Addr, s.Link.RTT, ago(s.LinkChanged))
	} else {
		fmt.Fprintf(w, "link         DOWN since %s\n", ago(s.LinkChanged))
	}
	full := ""
	if s.Backlog.Full {
		full = "  FULL: oldest messages are being dropped"
	}
	fmt.Fprintf(w, "backlog      %d messages, %s of %s%s\n", s.Backlog.Messages, bytesIEC(int64(s.Backlog.Bytes)), bytesIEC(s.Backlog.MaxBytes), full)
	fmt.Fprintf(w, "forwarder    %s\n", s.Forwarder)
	if f := s.Forward; f != nil {
		fmt.Fprintf(w, "forwarded    %d (duplicates %d, retries %d, order violations %d, last hub seq %d)\n",
			f.Forwarded, f.Duplicates, f.Retries, f.OrderViolations, f.LastHubSeq)
		if f.LastError != "" {
			fmt.Fprintf(w, "last error   %s\n", f.LastError)
		}
	}
	fmt.Fprintf(w, "heartbeat    %s\n", ago(s.LastHeartbeat))
	fmt.Fprintf(w, "rates        local in %.1f/s, stored %.1f/s, to hub %.1f/s, from hub %.1f/s\n",
		s.Rates.LocalInPerSec, s.Rates.StoredPerSec, s.Rates.ToHubPerSec, s.Rates.FromHubPerSec)
	fmt.Fprintf(w, "credentials  expire %s, renew after %s", s.Credentials.ExpiresAt.Local().Format(time.RFC3339), s.Credentials.RenewAfter.Local().Format(time.RFC3339))
	if s.Credentials.LastError != "" {
		fmt.Fprintf(w, ", last renewal failed: %s", s.Credentials.LastError)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "local nats   %s\n", s.ClientURL)
}

func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
