// Command fleetplane-agent is the Fleetplane edge agent that runs on each
// vehicle: an embedded NATS leaf node with local store-and-forward and a
// MAVLink gateway (DESIGN §6). It is built as one static binary
// (CGO_ENABLED=0) for linux/arm64 and linux/amd64. It never imports the
// control plane; shared code lives in internal/.
//
// This release carries only the command skeleton: enroll, run, status and
// sim arrive with the edge agent issue.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `fleetplane-agent — the Fleetplane vehicle agent

Usage:
  fleetplane-agent version    print the version and platform
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fleetplane-agent:", err)
		os.Exit(2)
	}
}

func run(_ context.Context, args []string, _ func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("no command given")
	}
	switch args[0] {
	case "version", "--version":
		fmt.Fprintf(stdout, "fleetplane-agent %s %s/%s\n", version, runtime.GOOS, runtime.GOARCH)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}
