package postgres

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// NewPoolCollector returns a Prometheus collector that reads pool.Stat() at
// every scrape and exports it as fleetplane_db_pool_*.
func NewPoolCollector(pool *pgxpool.Pool) prometheus.Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("fleetplane_db_pool_"+name, help, nil, nil)
	}
	return &poolCollector{
		pool:             pool,
		acquired:         d("acquired_conns", "Connections currently checked out of the pool."),
		idle:             d("idle_conns", "Idle connections in the pool."),
		constructing:     d("constructing_conns", "Connections being opened."),
		total:            d("total_conns", "All connections of the pool: acquired, idle and being opened."),
		max:              d("max_conns", "The pool's maximum number of connections."),
		acquires:         d("acquire_total", "Successful acquires of a connection from the pool."),
		acquireSeconds:   d("acquire_duration_seconds_total", "Time spent in successful acquires, in seconds."),
		emptyAcquires:    d("empty_acquire_total", "Successful acquires that had to wait for a connection."),
		emptyWaitSeconds: d("empty_acquire_wait_seconds_total", "Time spent waiting in acquires that found the pool empty, in seconds."),
		canceledAcquires: d("canceled_acquire_total", "Acquires canceled by their context."),
		newConns:         d("new_conns_total", "Connections opened."),
		lifetimeDestroys: d("max_lifetime_destroyed_total", "Connections closed for exceeding their maximum lifetime."),
		idleDestroys:     d("max_idle_destroyed_total", "Connections closed for exceeding their maximum idle time."),
	}
}

type poolCollector struct {
	pool *pgxpool.Pool

	acquired, idle, constructing, total, max *prometheus.Desc
	acquires, acquireSeconds, emptyAcquires  *prometheus.Desc
	emptyWaitSeconds, canceledAcquires       *prometheus.Desc
	newConns, lifetimeDestroys, idleDestroys *prometheus.Desc
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.acquired, c.idle, c.constructing, c.total, c.max,
		c.acquires, c.acquireSeconds, c.emptyAcquires, c.emptyWaitSeconds, c.canceledAcquires,
		c.newConns, c.lifetimeDestroys, c.idleDestroys} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.pool.Stat()
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge(c.acquired, float64(st.AcquiredConns()))
	gauge(c.idle, float64(st.IdleConns()))
	gauge(c.constructing, float64(st.ConstructingConns()))
	gauge(c.total, float64(st.TotalConns()))
	gauge(c.max, float64(st.MaxConns()))
	counter(c.acquires, float64(st.AcquireCount()))
	counter(c.acquireSeconds, st.AcquireDuration().Seconds())
	counter(c.emptyAcquires, float64(st.EmptyAcquireCount()))
	counter(c.emptyWaitSeconds, st.EmptyAcquireWaitTime().Seconds())
	counter(c.canceledAcquires, float64(st.CanceledAcquireCount()))
	counter(c.newConns, float64(st.NewConnsCount()))
	counter(c.lifetimeDestroys, float64(st.MaxLifetimeDestroyCount()))
	counter(c.idleDestroys, float64(st.MaxIdleDestroyCount()))
}
