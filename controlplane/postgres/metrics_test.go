package postgres_test

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetplane/fleetplane/controlplane/postgres"
	"github.com/fleetplane/fleetplane/internal/pgtest"
)

func TestPoolCollectorAndOpen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := postgres.Open(ctx, pgtest.NewURL(t), 3)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := postgres.NewStore(pool).Ping(ctx); err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(postgres.NewPoolCollector(pool)); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			got[mf.GetName()] = g.GetValue()
		} else {
			got[mf.GetName()] = m.GetCounter().GetValue()
		}
	}
	for _, name := range []string{"acquired_conns", "idle_conns", "total_conns", "max_conns", "acquire_total",
		"acquire_duration_seconds_total", "empty_acquire_total", "canceled_acquire_total"} {
		if _, ok := got["fleetplane_db_pool_"+name]; !ok {
			t.Errorf("missing fleetplane_db_pool_%s", name)
		}
	}
	if got["fleetplane_db_pool_max_conns"] != 3 || got["fleetplane_db_pool_acquire_total"] < 1 || got["fleetplane_db_pool_total_conns"] < 1 {
		t.Errorf("metrics = %v", got)
	}

	if _, err := postgres.Open(ctx, "postgres://postgres@127.0.0.1:1/nope?sslmode=disable&connect_timeout=2", 0); err == nil ||
		!strings.Contains(err.Error(), "127.0.0.1:1/nope") {
		t.Errorf("Open of a closed port: %v", err)
	}
}
