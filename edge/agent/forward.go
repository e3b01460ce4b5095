package agent

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetplane/fleetplane/edge/forward"
)

// ForwarderDurable is the store-and-forward forwarder's durable consumer on
// the local stream.
const ForwarderDurable = "forwarder"

// StoreAndForward is the agent's forwarder (edge/forward, ADR 0009) on the
// local stream: pass it as Options.Forward.
func StoreAndForward(ctx context.Context, env ForwardEnv) error {
	js, err := jetstream.New(env.Local)
	if err != nil {
		return err
	}
	f, err := forward.New(forward.Config{
		Local: js, LocalStream: env.Stream, Durable: ForwarderDurable, Hub: env.Hub,
		IngestPrefix: env.IngestSubject, SubjectPrefix: env.SubjectPrefix, MsgIDPrefix: env.VehicleID,
		Resume: env.Resume, Logger: env.Logger,
	})
	if err != nil {
		return err
	}
	if env.ReportStats != nil {
		env.ReportStats(f.Stats)
	}
	if env.Registerer != nil {
		if err := env.Registerer.Register(forwardCollector{f}); err != nil {
			return err
		}
		defer env.Registerer.Unregister(forwardCollector{f})
	}
	err = f.Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

var (
	fwdForwarded  = prometheus.NewDesc("fleetplane_agent_forwarded_total", "Messages the hub acknowledged (duplicates included).", nil, nil)
	fwdDuplicates = prometheus.NewDesc("fleetplane_agent_forward_duplicates_total", "PubAcks reporting a duplicate (a re-sent message the hub already had).", nil, nil)
	fwdRetries    = prometheus.NewDesc("fleetplane_agent_forward_retries_total", "Failures that held the forwarder and re-sent from the ack floor.", nil, nil)
	fwdOrder      = prometheus.NewDesc("fleetplane_agent_forward_order_violations_total", "Re-sent messages stored as new after a later one (must stay 0).", nil, nil)
	fwdLastHubSeq = prometheus.NewDesc("fleetplane_agent_forward_last_hub_sequence", "Hub stream sequence of the last forwarded message.", nil, nil)
)

// forwardCollector exports the forwarder's counters.
type forwardCollector struct{ f *forward.Forwarder }

func (forwardCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{fwdForwarded, fwdDuplicates, fwdRetries, fwdOrder, fwdLastHubSeq} {
		ch <- d
	}
}

func (c forwardCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.f.Stats()
	ch <- prometheus.MustNewConstMetric(fwdForwarded, prometheus.CounterValue, float64(s.Forwarded))
	ch <- prometheus.MustNewConstMetric(fwdDuplicates, prometheus.CounterValue, float64(s.Duplicates))
	ch <- prometheus.MustNewConstMetric(fwdRetries, prometheus.CounterValue, float64(s.Retries))
	ch <- prometheus.MustNewConstMetric(fwdOrder, prometheus.CounterValue, float64(s.OrderViolations))
	ch <- prometheus.MustNewConstMetric(fwdLastHubSeq, prometheus.GaugeValue, float64(s.LastHubSeq))
}
