package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

func TestSimSendsMAVLink(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"sim", "--udp", pc.LocalAddr().String(), "--system-id", "7"}, func(string) string { return "" }, &stdout, &stderr)
	}()
	_ = pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	// MAVLink 2 magic, system ID 7 at offset 5.
	if n < 10 || buf[0] != 0xFD || buf[5] != 7 {
		t.Fatalf("not a MAVLink 2 frame from system 7: %x", buf[:n])
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "system 7") {
		t.Fatalf("stdout %q", stdout.String())
	}
	if err := run(context.Background(), []string{"sim", "--system-id", "300"}, func(string) string { return "" }, &stdout, &stderr); err == nil {
		t.Fatal("--system-id 300 accepted")
	}
}
