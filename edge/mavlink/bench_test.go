package mavlink

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/bluenviron/gomavlib/v3/pkg/dialects/common"
	"github.com/bluenviron/gomavlib/v3/pkg/frame"
	natsserver "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go"

	"github.com/fleetplane/fleetplane/internal/telemetry"
)

// BenchmarkDecodePublish measures MAVLink parse + decode + JSON + publish
// per core, rate limits off, on a mix of the six telemetry messages:
//
//	go test ./edge/mavlink -run '^$' -bench DecodePublish -benchtime 2s -cpu 1
func BenchmarkDecodePublish(b *testing.B) {
	mix := encode(b, telemetryMsgs()[1:7]...) // position .. vfr
	run := func(b *testing.B, pub Publisher) {
		d := newTestDecoder(b, pub, unlimited())
		d.raw = false
		d.veh.sys, d.veh.comp, d.veh.known = 1, 1, true
		r := &frame.Reader{BufByteReader: bufio.NewReaderSize(&cycleReader{b: mix}, 4096), DialectRW: dialectRW(b)}
		if err := r.Initialize(); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			fr, err := r.Read()
			if err != nil {
				b.Fatal(err)
			}
			d.handle(fr, nil, time.Now())
		}
		if nc, ok := pub.(*nats.Conn); ok {
			if err := nc.Flush(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
	}
	b.Run("noop", func(b *testing.B) { run(b, &noopPublisher{}) })
	b.Run("nats", func(b *testing.B) {
		nc, _ := runNATS(b)
		run(b, nc)
	})
}

func runNATS(b *testing.B) (*nats.Conn, string) {
	opts := natsserver.DefaultTestOptions
	opts.Port = -1
	ns := natsserver.RunServer(&opts)
	b.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	return nc, ns.ClientURL()
}

// BenchmarkAddedLatency measures one position frame at a time from the
// moment it is handed over until a local NATS subscriber has the JSON:
// "direct" starts at the decoder (the gateway's added latency), "udp" at
// the sender's write on a loopback UDP socket (adds the kernel and
// gomavlib's reader):
//
//	go test ./edge/mavlink -run '^$' -bench AddedLatency -benchtime 5000x
func BenchmarkAddedLatency(b *testing.B) {
	report := func(b *testing.B, lat []time.Duration) {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
	subscribe := func(b *testing.B, nc *nats.Conn) chan uint32 {
		got := make(chan uint32, 1)
		sub, err := nc.Subscribe("fleet.dev.veh.v1.state.position", func(m *nats.Msg) {
			var p telemetry.Position
			if err := json.Unmarshal(m.Data, &p); err == nil && p.VehicleTime != nil {
				got <- uint32(*p.VehicleTime*1e3 + 0.5)
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = sub.Unsubscribe() })
		if err := nc.Flush(); err != nil {
			b.Fatal(err)
		}
		return got
	}
	wait := func(b *testing.B, got chan uint32, want uint32) {
		for {
			select {
			case v := <-got:
				if v == want {
					return
				}
			case <-time.After(5 * time.Second):
				b.Fatalf("position %d never arrived", want)
			}
		}
	}
	b.Run("direct", func(b *testing.B) {
		nc, _ := runNATS(b)
		got := subscribe(b, nc)
		d := newTestDecoder(b, nc, unlimited())
		d.raw = false
		d.veh.sys, d.veh.comp, d.veh.known = 1, 1, true
		rw := dialectRW(b)
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := range b.N {
			raw := encode(b, &common.MessageGlobalPositionInt{TimeBootMs: uint32(i + 1), Lat: 473977420, Lon: 85455940})
			r := &frame.Reader{BufByteReader: bufio.NewReader(bytes.NewReader(raw)), DialectRW: rw}
			_ = r.Initialize()
			fr, err := r.Read()
			if err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			d.handle(fr, nil, t0)
			wait(b, got, uint32(i+1))
			lat = append(lat, time.Since(t0))
		}
		report(b, lat)
	})
	b.Run("udp", func(b *testing.B) {
		nc, _ := runNATS(b)
		got := subscribe(b, nc)
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addr := c.LocalAddr().String()
		c.Close()
		g, err := Start(Config{Env: "dev", VehicleID: "v1", Conn: nc, Endpoints: []Endpoint{{Kind: EndpointUDPServer, Address: addr}}, RateLimits: unlimited()})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(g.Close)
		conn, err := net.Dial("udp4", addr)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		if _, err := conn.Write(encode(b, heartbeatMsg())); err != nil {
			b.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if _, _, ok := g.Vehicle(); ok {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("no vehicle")
			}
		}
		var buf bytes.Buffer
		w := newStreamWriter(b, &buf, 1)
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := range b.N {
			buf.Reset()
			if err := w.Write(&common.MessageGlobalPositionInt{TimeBootMs: uint32(i + 1), Lat: 473977420, Lon: 85455940}); err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			if _, err := conn.Write(buf.Bytes()); err != nil {
				b.Fatal(err)
			}
			wait(b, got, uint32(i+1))
			lat = append(lat, time.Since(t0))
		}
		report(b, lat)
	})
}
