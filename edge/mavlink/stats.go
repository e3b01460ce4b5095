package mavlink

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Stats counts what the gateway did. All methods are safe for concurrent
// use; the zero value is ready. Register Collector() with a Prometheus
// registry to export it (names fleetplane_agent_mavlink_*).
type Stats struct {
	FramesReceived   atomic.Uint64 // every decoded frame from the link
	FramesMalformed  atomic.Uint64 // parse errors: bad magic, checksum, length, signature
	FramesIgnored    atomic.Uint64 // valid frames from other systems/components or of kinds not published
	PublishErrors    atomic.Uint64
	RawPublished     atomic.Uint64
	CommandsBad      atomic.Uint64 // malformed or unknown command requests
	CommandsTimedOut atomic.Uint64

	mu          sync.Mutex
	published   map[string]uint64 // by "state.<kind>" / "evt.<kind>"
	rateLimited map[string]uint64
	commands    map[[2]string]uint64 // verb, outcome (MAV_RESULT name or error)
}

func (s *Stats) add(m *map[string]uint64, k string) {
	s.mu.Lock()
	if *m == nil {
		*m = make(map[string]uint64)
	}
	(*m)[k]++
	s.mu.Unlock()
}

func (s *Stats) command(verb, outcome string) {
	s.mu.Lock()
	if s.commands == nil {
		s.commands = make(map[[2]string]uint64)
	}
	s.commands[[2]string{verb, outcome}]++
	s.mu.Unlock()
}

// Published returns the number of messages published for a subject suffix
// such as "state.position" or "evt.armed".
func (s *Stats) Published(suffix string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.published[suffix]
}

// RateLimited returns the number of messages dropped by the rate limit of a
// subject suffix.
func (s *Stats) RateLimited(suffix string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rateLimited[suffix]
}

// Collector exports the counters to Prometheus.
func (s *Stats) Collector() prometheus.Collector { return statsCollector{s} }

var (
	descFrames      = prometheus.NewDesc("fleetplane_agent_mavlink_frames_total", "MAVLink frames from the autopilot link by outcome (decoded, malformed, ignored).", []string{"outcome"}, nil)
	descPublished   = prometheus.NewDesc("fleetplane_agent_mavlink_published_total", "Telemetry and event messages published to NATS by subject suffix.", []string{"subject"}, nil)
	descRateLimited = prometheus.NewDesc("fleetplane_agent_mavlink_rate_limited_total", "Telemetry messages dropped by the per-kind rate limit.", []string{"subject"}, nil)
	descPubErrors   = prometheus.NewDesc("fleetplane_agent_mavlink_publish_errors_total", "NATS publish errors.", nil, nil)
	descCommands    = prometheus.NewDesc("fleetplane_agent_mavlink_commands_total", "Command requests by verb and outcome (MAV_RESULT name, timeout, bad_request, ...).", []string{"verb", "outcome"}, nil)
)

type statsCollector struct{ s *Stats }

func (c statsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descFrames
	ch <- descPublished
	ch <- descRateLimited
	ch <- descPubErrors
	ch <- descCommands
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	ch <- prometheus.MustNewConstMetric(descFrames, prometheus.CounterValue, float64(s.FramesReceived.Load()), "decoded")
	ch <- prometheus.MustNewConstMetric(descFrames, prometheus.CounterValue, float64(s.FramesMalformed.Load()), "malformed")
	ch <- prometheus.MustNewConstMetric(descFrames, prometheus.CounterValue, float64(s.FramesIgnored.Load()), "ignored")
	ch <- prometheus.MustNewConstMetric(descPubErrors, prometheus.CounterValue, float64(s.PublishErrors.Load()))
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.published {
		ch <- prometheus.MustNewConstMetric(descPublished, prometheus.CounterValue, float64(v), k)
	}
	for k, v := range s.rateLimited {
		ch <- prometheus.MustNewConstMetric(descRateLimited, prometheus.CounterValue, float64(v), k)
	}
	for k, v := range s.commands {
		ch <- prometheus.MustNewConstMetric(descCommands, prometheus.CounterValue, float64(v), k[0], k[1])
	}
}
