# multiquery — the single entry point. `make help` lists the targets.
GO        ?= go
BIN       ?= bin
PKGS      := ./...
FUZZTIME  ?= 10s
FUZZMIN   ?= 3s
WORKERS   ?= 1,2,4,8
GOLANGCI_VERSION ?= v2.6.2
# What --version prints and mq_build_info exports (internal/version).
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS   := -X github.com/multiquery/multiquery/internal/version.version=$(VERSION) -X github.com/multiquery/multiquery/internal/version.revision=$(REVISION)
NATSCLI_VERSION  ?= v0.5.1

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build multiquery (local mode), producer, worker, collector, mqctl, llmsim and nats-server into bin/
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...
	$(GO) build -o $(BIN)/nats-server github.com/nats-io/nats-server/v2

.PHONY: nats-cli
nats-cli: ## build the nats CLI into bin/ (the docs' examples; with it the e2e doc tests run them verbatim)
	@mkdir -p $(BIN)
	GOBIN=$(abspath $(BIN)) $(GO) install github.com/nats-io/natscli/nats@$(NATSCLI_VERSION)

.PHONY: demo
demo: build ## run the whole system on examples/assessment (no Docker, no account)
	./scripts/demo.sh

.PHONY: test
test: ## vet, then every test with -race, the deploy/ checks, then short fuzz runs of the decoders and readers
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 -timeout 12m $$($(GO) list $(PKGS) | grep -v /internal/bench)
	@# The real-process tests (short chaos, collector takeover) run alone: on 2 cores they
	@# would starve the timing-sensitive end-to-end tests.
	$(GO) test -race -count=1 -timeout 10m ./internal/bench/
	$(MAKE) validate-deploy
	@# Execution counts, not durations: a duration -fuzztime races the coordinator's
	@# deadline on a busy machine (golang/go#75804, fixed in Go 1.27) and fails with a
	@# bare "context deadline exceeded" that is no finding.
	$(MAKE) fuzz FUZZTIME=30000x FUZZMIN=200x

# Its own module (deploy/validate), so that the main module carries none of Helm's,
# Kubernetes' or Prometheus's dependencies. No -race: it starts no goroutines of ours
# beyond one in-process nats-server, and the race build of those modules costs minutes.
.PHONY: validate-deploy
validate-deploy: ## render the Helm chart (strict Kubernetes types), check alert rules, dashboard, docker-compose.yml
	cd deploy/validate && $(GO) vet ./... && $(GO) test -count=1 -timeout 10m ./...

.PHONY: test-under-load
test-under-load: ## make test 3 times in a row beside a CPU hog on every core (ROUNDS=3)
	./scripts/test-under-load.sh $(or $(ROUNDS),3)

.PHONY: fuzz
fuzz: ## fuzz the CSV/JSONL readers and the answer parser for FUZZTIME each
	$(GO) test -run '^$$' -fuzz '^FuzzCSV$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMIN) ./internal/input/
	$(GO) test -run '^$$' -fuzz '^FuzzJSONL$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMIN) ./internal/input/
	$(GO) test -run '^$$' -fuzz '^FuzzParseAnswer$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMIN) ./internal/llm/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeJob$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMIN) ./internal/wire/

.PHONY: bench
bench: build ## issue 9's table on real processes, 3 interleaved rounds: CPU and NATS messages per query against a raw JetStream loop, latency-bound cells, the replaced system's scenario, make demo; the bounds checked and everything recorded in docs/BENCHMARKS.md (~7 min on a 2-core Intel Xeon, ~10 min on a 2-core AMD EPYC)
	$(BIN)/mqbench --bin $(BIN) --cost --rounds 3 --record docs/BENCHMARKS.md

.PHONY: bench-short
bench-short: build ## the same, 1 round of 5000 jobs, 5 calls per slot in the latency cells; printed, not recorded (~1.5-2 min)
	$(BIN)/mqbench --bin $(BIN) --cost --rounds 1 --raw-jobs 5000 --shapes 5000x1,500x10 --latency-calls-per-slot 5

.PHONY: bench-cost bench-cost-short
bench-cost: bench ## the name bench had in earlier figures of docs/BENCHMARKS.md
bench-cost-short: bench-short ## the name bench-short had in earlier figures of docs/BENCHMARKS.md

.PHONY: bench-go
bench-go: ## the Go benchmarks of the packages (go test -bench)
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

.PHONY: fmt
fmt: ## gofmt the tree
	gofmt -w $$(git ls-files '*.go')

.PHONY: lint
lint: ## gofmt check, go vet, golangci-lint (pinned) when installed
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet $(PKGS)
	@if command -v golangci-lint >/dev/null; then golangci-lint run; else echo "golangci-lint $(GOLANGCI_VERSION) not installed: skipped"; fi

.PHONY: tidy-check
tidy-check: ## fail if go.mod/go.sum (and deploy/validate's) are not tidy
	$(GO) mod tidy -diff
	cd deploy/validate && $(GO) mod tidy -diff

.PHONY: clean
clean: ## remove build and demo outputs
	rm -rf $(BIN) .demo out

.PHONY: bench-throttle
bench-throttle: build ## fleet throttle vs naive baseline on real processes, W = 1,2,4,8 x 3 runs (WORKERS=1,2,4,8,16,32,64 for more), then the limit-change scenario (~40 min)
	$(GO) run ./cmd/mqbench --bin $(BIN) --workers $(WORKERS)

.PHONY: bench-throttle-short
bench-throttle-short: build ## the same with W = 2, one run, 20 s window, no limit change (~1 min)
	$(GO) run ./cmd/mqbench --bin $(BIN) --workers 2 --runs 1 --warmup 5s --measure 20s --adapt=false

.PHONY: bench-throttle-scale
bench-throttle-scale: build ## fleet throttle at 16-64 workers x 4-8 slots and 4x64+28x4, 3 runs each, worker weight and throttle traffic, then the limit change at 32x4 (~45 min)
	$(GO) run ./cmd/mqbench --bin $(BIN) --workers 16x4,16x8,32x4,32x8,64x4,64x8,4x64+28x4 --modes fleet --adapt-workers 32x4

.PHONY: bench-pool
bench-pool: build ## deployment pool: llmsim east 10 + west 40 req/s as one pool, 2x32 workers, goodput and 429s over 60 s, then east killed: the run completes on west (~3 min)
	$(GO) run ./cmd/mqbench --bin $(BIN) --pool

.PHONY: bench-tokens
bench-tokens: build ## token budget: llmsim limited to 60000 tokens/min only, 2x32 workers, goodput in tokens and 429s over 60 s, budget configured then learned from headers (~4 min)
	$(GO) run ./cmd/mqbench --bin $(BIN) --tokens 60000
	$(GO) run ./cmd/mqbench --bin $(BIN) --tokens 60000 --tokens-learned

.PHONY: bench-churn
bench-churn: build ## churn at 50 req/s: rolling replacement of 16x8 workers, scale-up 4x8 -> 32x8; 3 runs each, every row exactly once (~12 min)
	$(GO) run ./cmd/mqbench --bin $(BIN) --churn rolling,scaleup --modes fleet

.PHONY: bench-start
bench-start: build ## start storm at 40 req/s: a fresh fleet (1x32, 4x32) runs 100 rows x 4 queries twice, llmsim headers none/openai/azure, 3 runs (~10 min)
	$(GO) run ./cmd/mqbench --bin $(BIN) --start

.PHONY: chaos
chaos: build ## kill -9 workers, collector and nats-server during 2000 rows x 4 queries; 3 seeds; checks rows in = rows out
	$(GO) build -o $(BIN)/ ./cmd/mqchaos
	$(BIN)/mqchaos --bin $(BIN) --rows 2000 --queries 4 --workers 3 --seeds 1,2,3

.PHONY: bench-memory
bench-memory: build ## the collector's peak RSS at 50 000 and 200 000 rows x 2 queries
	$(GO) run ./cmd/mqbench --bin $(BIN) --collector-memory 50000,200000

.PHONY: chaos-cluster
chaos-cluster: build ## the chaos run on a 3-node JetStream cluster (3 replicas), kill -9 of one node that stays down
	$(GO) build -o $(BIN)/ ./cmd/mqchaos
	$(BIN)/mqchaos --bin $(BIN) --rows 2000 --queries 4 --workers 3 --seeds 1 --cluster

.PHONY: bench-flow
bench-flow: build ## flow control: 100 000 rows through a fleet limited to 50 req/s, max-ahead 1000 (~35 min)
	$(GO) run ./cmd/mqbench --bin $(BIN) --flow-rows 100000 --rps 50 --flow-ahead 1000
