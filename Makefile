# Fleetplane build, run and test entry points. `make run` and `make test` are
# the two set-up commands of the README; both install what is missing.

GO       ?= go
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
BIN      := bin
DIST     := dist
AGENT_ARCHES := arm64 amd64
BENCHTIME ?= 1x
# Outside tools some tests drive when present (CI requires them).
TOOLS    := $(CURDIR)/bin/tools
NATSCLI_VERSION := v0.5.0
export PATH := $(TOOLS):$(PATH)

.PHONY: all build agents run test test-race test-browser lint generate bench deps tools tidy clean

all: build

## build: both binaries for this machine, plus the static agent for linux/arm64 and linux/amd64
build: agents
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/fleetplane ./cmd/fleetplane
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/fleetplane-agent ./cmd/fleetplane-agent

agents:
	@mkdir -p $(DIST)
	@for arch in $(AGENT_ARCHES); do \
		echo "CGO_ENABLED=0 GOOS=linux GOARCH=$$arch go build ./cmd/fleetplane-agent"; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS)" \
			-o $(DIST)/fleetplane-agent-linux-$$arch ./cmd/fleetplane-agent || exit 1; \
		(cd $(DIST) && sha256sum fleetplane-agent-linux-$$arch > fleetplane-agent-linux-$$arch.sha256); \
	done

deps:
	@bash .ci/ensure-deps.sh

## tools: the nats CLI (pinned) into bin/tools, used by the ecosystem test in cmd/fleetplane
tools:
	@test -x $(TOOLS)/nats || { echo "installing the nats CLI $(NATSCLI_VERSION) into $(TOOLS)"; \
		GOBIN=$(TOOLS) $(GO) install github.com/nats-io/natscli/nats@$(NATSCLI_VERSION); }

## run: the whole system locally (Postgres under ./.fleetplane, API on 127.0.0.1:8080, hub, demo tenant, SIM_VEHICLES simulated drones; BILLING=stripe-mock for Stripe's mock)
SIM_VEHICLES ?= 3
BILLING ?= off
run: deps
	$(GO) run ./cmd/fleetplane dev --sim-vehicles $(SIM_VEHICLES) --billing $(BILLING)

## test: every test, against a throwaway Postgres the tests start themselves
test: deps
	$(GO) test -count=1 -timeout 30m ./...

## test-browser: only the portal's browser test (headless Chromium via chromedp; FLEETPLANE_ARTIFACTS=dir keeps failure screenshots there)
test-browser: deps
	$(GO) test -count=1 -timeout 10m -run '^TestPortalBrowser$$' -v ./e2e

test-race: deps
	$(GO) test -count=1 -race -timeout 45m ./...

## lint: formatting, vet, staticcheck, generated code and go.mod up to date
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	$(GO) mod tidy -diff
	@$(MAKE) --no-print-directory generate
	@git diff --exit-code -- '*.gen.go' || { echo "generated code is stale: run make generate and commit"; exit 1; }

generate:
	$(GO) generate ./...

## bench: the benchmarks recorded in docs/BENCHMARKS.md (BENCHTIME=2000x for the recorded runs)
bench: deps
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 30m ./...

tidy:
	$(GO) mod tidy

clean:
	rm -rf $(BIN) $(DIST)
