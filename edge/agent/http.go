package agent

import (
	"encoding/json"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func (a *Agent) startHTTP() error {
	ln := a.opts.HTTPListener
	if ln == nil {
		if a.cfg.HTTP == "" || a.cfg.HTTP == "off" {
			return nil
		}
		var err error
		if ln, err = net.Listen("tcp", a.cfg.HTTP); err != nil {
			return err
		}
	}
	a.httpLn = ln
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		// Healthy = the local server and its JetStream work; a vehicle out of
		// coverage is healthy (the link is in /status and the metrics).
		if !a.leaf.Running() || !a.leaf.JetStreamEnabled() {
			http.Error(w, "local server not running", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		s := a.Status()
		_ = json.NewEncoder(w).Encode(&s)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{}))
	a.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = a.httpSrv.Serve(ln) }()
	return nil
}

type metrics struct {
	reg         *prometheus.Registry
	linkUp      prometheus.Gauge
	backlogMsgs prometheus.Gauge
	backlogB    prometheus.Gauge
	backlogMax  prometheus.Gauge
	backlogFull prometheus.Gauge
	fullEvents  prometheus.Counter
	stored      prometheus.Gauge
	credsExpiry prometheus.Gauge
	renewals    *prometheus.CounterVec
	rates       *prometheus.GaugeVec
}

func newMetrics(version string, maxBytes int64) *metrics {
	reg := prometheus.NewRegistry()
	f := func(name, help string) prometheus.Gauge {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "fleetplane_agent", Name: name, Help: help})
		reg.MustRegister(g)
		return g
	}
	m := &metrics{reg: reg,
		linkUp:      f("link_up", "1 while the leaf link to a hub is open."),
		backlogMsgs: f("backlog_messages", "Messages in the local stream not yet forwarded to the hub."),
		backlogB:    f("backlog_bytes", "Bytes in the local stream not yet forwarded to the hub."),
		backlogMax:  f("backlog_max_bytes", "The local stream's size limit."),
		backlogFull: f("backlog_full", "1 while the local stream is full (the oldest messages are dropped)."),
		stored:      f("stream_last_seq", "The local stream's last sequence (messages stored since it was created)."),
		credsExpiry: f("credentials_expiry_timestamp_seconds", "When the vehicle JWT expires."),
		fullEvents: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "fleetplane_agent", Name: "backlog_full_total",
			Help: "Times the local stream became full."}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "fleetplane_agent", Name: "renewals_total",
			Help: "JWT renewal attempts by result."}, []string{"result"}),
		rates: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "fleetplane_agent", Name: "message_rate",
			Help: "Messages per second over the last sample: local_in, stored, to_hub, from_hub."}, []string{"path"}),
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "fleetplane_agent", Name: "build_info",
		Help: "The agent's version.", ConstLabels: prometheus.Labels{"version": version}})
	build.Set(1)
	reg.MustRegister(m.fullEvents, m.renewals, m.rates, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.backlogMax.Set(float64(maxBytes))
	m.renewals.WithLabelValues("ok")
	m.renewals.WithLabelValues("error")
	return m
}

func (m *metrics) observe(s *Status) {
	up := 0.0
	if s.Link.Connected {
		up = 1
	}
	m.linkUp.Set(up)
	m.backlogMsgs.Set(float64(s.Backlog.Messages))
	m.backlogB.Set(float64(s.Backlog.Bytes))
	if s.Backlog.MaxBytes > 0 {
		m.backlogMax.Set(float64(s.Backlog.MaxBytes))
	}
	full := 0.0
	if s.Backlog.Full {
		full = 1
	}
	m.backlogFull.Set(full)
	m.stored.Set(float64(s.Backlog.LastSeq))
	m.rates.WithLabelValues("local_in").Set(s.Rates.LocalInPerSec)
	m.rates.WithLabelValues("stored").Set(s.Rates.StoredPerSec)
	m.rates.WithLabelValues("to_hub").Set(s.Rates.ToHubPerSec)
	m.rates.WithLabelValues("from_hub").Set(s.Rates.FromHubPerSec)
}
