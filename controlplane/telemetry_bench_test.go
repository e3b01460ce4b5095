package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/controlplane/postgres"
)

// BenchmarkTwinHistory pages through one vehicle's 10,000 stored messages
// (~170-byte JSON positions) on a real hub node: through the Service
// (authorization, two Postgres reads, one batch direct get per page, JSON
// payloads in TwinMessages), and, for reference, with raw batch direct
// gets on a service-user connection to the same stream.
//
//	go test ./controlplane -run '^$' -bench TwinHistory -benchtime 20x
func BenchmarkTwinHistory(b *testing.B) {
	const total = 10_000
	e := newTwinEnv(b, 1)
	ctx := e.tenant(b, "Bench Co", "drones")
	v := e.vehicle(b, ctx, "drones", "V1", true)
	v.forward(b, "state.position", map[string]any{"i": 0})
	pctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 1; i < total; i++ {
		data, _ := json.Marshal(map[string]any{"schema": 1, "i": i, "lat": 48.137154, "lon": 11.576124, "alt_m": 512.4,
			"rel_alt_m": 40.2, "hdg_deg": 271.5, "vehicle_time": "2026-01-02T15:04:05.123Z", "recv_time": "2026-01-02T15:04:05.125Z"})
		if _, err := v.js.PublishAsync(v.creds.IngestSubject+".state.position", data,
			jetstream.WithMsgID("V1-"+strconv.Itoa(i+1))); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-v.js.PublishAsyncComplete():
	case <-pctx.Done():
		b.Fatal("async publishes not acknowledged")
	}

	for _, limit := range []int{100, 1000} {
		b.Run(fmt.Sprintf("service/limit=%d", limit), func(b *testing.B) {
			for b.Loop() {
				n := 0
				q := controlplane.HistoryQuery{Limit: limit}
				for {
					p, err := e.svc.VehicleHistory(ctx, "drones", "V1", q)
					if err != nil {
						b.Fatal(err)
					}
					n += len(p.Items)
					if p.NextCursor == "" {
						break
					}
					q.Cursor = p.NextCursor
				}
				if n != total {
					b.Fatalf("%d messages, want %d", n, total)
				}
			}
			b.ReportMetric(float64(total*b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}

	a, err := postgres.NewStore(e.pool).FindAccount(context.Background(), controlplane.PrincipalFromContext(ctx).TenantID, false)
	if err != nil {
		b.Fatal(err)
	}
	nc, err := serviceConn(e, a)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	for _, batch := range []int{1000, total} {
		b.Run(fmt.Sprintf("direct-get/batch=%d", batch), func(b *testing.B) {
			for b.Loop() {
				n := 0
				for seq := uint64(1); ; {
					got, last, err := rawDirectGet(nc, seq, batch)
					if err != nil {
						b.Fatal(err)
					}
					n += got
					if got < batch {
						break
					}
					seq = last + 1
				}
				if n != total {
					b.Fatalf("%d messages, want %d", n, total)
				}
			}
			b.ReportMetric(float64(total*b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// rawDirectGet reads up to batch messages of fleet.prod.veh.V1.> from seq
// with one direct get, as `nats stream get`-style tooling would.
func rawDirectGet(nc *nats.Conn, seq uint64, batch int) (n int, last uint64, err error) {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	req := fmt.Sprintf(`{"seq":%d,"next_by_subj":"fleet.prod.veh.V1.>","batch":%d}`, seq, batch)
	if err := nc.PublishRequest("$JS.API.DIRECT.GET."+controlplane.TwinStream, inbox, []byte(req)); err != nil {
		return 0, 0, err
	}
	for {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			return n, last, err
		}
		switch m.Header.Get("Status") {
		case "":
			n++
			last, _ = strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
		case "204", "404":
			return n, last, nil
		default:
			return n, last, fmt.Errorf("status %s", m.Header.Get("Status"))
		}
	}
}
