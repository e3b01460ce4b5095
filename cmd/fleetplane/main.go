// Command fleetplane is the Fleetplane control plane: the REST API (serve),
// the whole local system in one process (dev), schema migrations (migrate)
// and operator tasks (admin). It is the only package that wires adapters
// together (DESIGN §7).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fleetplane:", err)
		os.Exit(exitCode(err))
	}
}
