# paystream: make help lists the targets.
SHELL     := bash
GO        ?= go
BIN       := bin
PKGS      := ./...
# Fuzz targets whose seed corpora run in `make test`; `make fuzz` explores them.
FUZZ_TIME ?= 30s

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build ingest, worker and the other binaries into bin/
	$(GO) build -o $(BIN)/ ./cmd/...

.PHONY: test
test: ## go vet, then the whole suite under -race (fuzz seed corpora included), ending with a summary line
	$(GO) vet $(PKGS)
	$(GO) build -o $(BIN)/testsum ./cmd/testsum
	set -o pipefail; $(GO) test -race -count=1 -timeout 8m -json $(PKGS) | $(BIN)/testsum

.PHONY: fuzz
fuzz: ## run each fuzz target for FUZZ_TIME (default 30s)
	$(GO) test ./internal/cobo -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZ_TIME)
	$(GO) test ./internal/cobo -run '^$$' -fuzz '^FuzzVerifyKeyMatchesStdlib$$' -fuzztime $(FUZZ_TIME)
	$(GO) test ./internal/cobo -run '^$$' -fuzz '^FuzzParseEnvelope$$' -fuzztime $(FUZZ_TIME)
	$(GO) test ./internal/cobo -run '^$$' -fuzz '^FuzzParseEnvelopeData$$' -fuzztime $(FUZZ_TIME)
	$(GO) test ./internal/cobo -run '^$$' -fuzz '^FuzzNonEmptyString$$' -fuzztime $(FUZZ_TIME)
	$(GO) test ./internal/cobo -run '^$$' -fuzz '^FuzzAmount$$' -fuzztime $(FUZZ_TIME)
	$(GO) test ./internal/allocation -run '^$$' -fuzz '^FuzzParseRules$$' -fuzztime $(FUZZ_TIME)
	$(GO) test ./internal/bitgo -run '^$$' -fuzz '^FuzzParseSigningKey$$' -fuzztime $(FUZZ_TIME)

.PHONY: run
run: build ## local demo on loopback: embedded NATS, ingest, two workers, sandbox (Ctrl-C stops)
	$(BIN)/demo $(DEMO_ARGS)

# Soak length for `make bench`; the published figure uses SOAK=8m (the soak's short
# windows are full after 4 minutes, BENCHMARKS.md).
SOAK      ?= 1m

# The worker `make bench` compares CPU per event with, in the same run: the
# revision before issue 17's per-event work.
BASELINE  ?= 11d2a21

.PHONY: bench
bench: build ## Go benchmarks, then loadgen and workers against the real binaries; rewrites BENCHMARKS.md
	@mkdir -p .bench
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./internal/cobo ./internal/events | tee .bench/gobench.txt
	$(GO) test -run '^$$' -bench AllocationThroughput -benchtime 3000x ./internal/allocation | tee -a .bench/gobench.txt
	rm -rf .bench/baseline && mkdir -p .bench/baseline/src
	git archive $(BASELINE) | tar -x -C .bench/baseline/src
	cd .bench/baseline/src && $(GO) build -o ../bin/ ./cmd/worker
	$(BIN)/benchrun -gobench .bench/gobench.txt -soak $(SOAK) -baseline-bin .bench/baseline/bin -baseline-rev $(BASELINE) -out BENCHMARKS.md

.PHONY: clean
clean: ## remove build output and demo data
	rm -rf $(BIN) data .run .bench

# The container image (Dockerfile); deploy/k8s and deploy/compose use this name.
IMAGE     ?= ghcr.io/paystream/paystream
IMAGE_TAG ?= dev

.PHONY: image
image: ## build the container image from the Dockerfile (IMAGE, IMAGE_TAG; needs Docker)
	docker build -t $(IMAGE):$(IMAGE_TAG) .
