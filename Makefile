# Auditlog make targets. `make help` lists them.
GO            ?= go
STATICCHECK   ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
PKGS          ?= ./...
BENCHTIME     ?= 1s
FUZZTIME      ?= 30s
IMAGE         ?= auditlog
VERSION       ?= dev

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

.PHONY: run
run: ## run the service (embedded PostgreSQL unless database.url is set)
	$(GO) run . serve

.PHONY: build
build: ## build ./bin/auditlog
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/auditlog .

.PHONY: test
test: ## run every test against real PostgreSQL (the README's test command)
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

.PHONY: test-short
test-short: ## the tests without the race detector
	$(GO) test -count=1 $(PKGS)

.PHONY: lint
lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run $(STATICCHECK) $(PKGS)

.PHONY: bench
bench: ## run the Go benchmarks (BENCHTIME=1s)
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) $(PKGS)

.PHONY: bench-smoke
bench-smoke: ## run each Go benchmark once so none rots (CI)
	$(GO) test -run '^$$' -bench . -benchtime 1x $(PKGS)

.PHONY: bench-e2e
bench-e2e: ## end-to-end figures: auditlog bench all (see PERFORMANCE.md)
	$(GO) run . bench all

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME each
	@for pkg in $$($(GO) list $(PKGS)); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

.PHONY: soak
soak: ## long fault and load tests (build tag soak; minutes)
	$(GO) test -tags soak -count=1 -timeout 60m -run 'Soak|Backlog' -v $(PKGS)

.PHONY: docker
docker: ## build the container image IMAGE (needs a Docker engine; see README "Docker")
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .
