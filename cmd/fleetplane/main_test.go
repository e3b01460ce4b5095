package main

import (
	"testing"

	"github.com/fleetplane/fleetplane/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }
