# OpsConductor build. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# Tools are pinned here and installed into .bin by `go install`.
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_CONNECT_GO_VERSION := v1.19.1
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
GOOGLEAPIS_MODULE := github.com/grpc-ecosystem/grpc-gateway@v1.16.0

BIN := $(CURDIR)/.bin
export PATH := $(BIN):$(PATH)
GO_TEST_FLAGS ?=
FUZZTIME ?= 10s
PROTO_FILES := $(shell find proto/opsconductor -name '*.proto' -not -path '*/plugin/*' | sort)
# The plugin protocol is plain gRPC (go-plugin needs grpc-go), not Connect.
PLUGIN_PROTO_FILES := $(shell find proto/opsconductor/plugin -name '*.proto' | sort)

.PHONY: help
help: ## Show this help.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(BIN)/protoc-gen-connect-go:
	GOBIN=$(BIN) go install connectrpc.com/connect/cmd/protoc-gen-connect-go@$(PROTOC_GEN_CONNECT_GO_VERSION)

$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

.PHONY: generate
generate: $(BIN)/protoc-gen-go $(BIN)/protoc-gen-connect-go $(BIN)/protoc-gen-go-grpc ## Regenerate proto/gen from proto/ (needs protoc: apt-get install protobuf-compiler).
	@command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler" >&2; exit 1; }
	googleapis="$$(go mod download -json $(GOOGLEAPIS_MODULE) | sed -n 's/.*"Dir": "\(.*\)",/\1/p')/third_party/googleapis"; \
	rm -rf proto/gen && mkdir -p proto/gen && \
	protoc -I proto -I "$$googleapis" \
		--go_out=proto/gen --go_opt=paths=source_relative \
		--connect-go_out=proto/gen --connect-go_opt=paths=source_relative \
		$(PROTO_FILES) && \
	protoc -I proto \
		--go_out=proto/gen --go_opt=paths=source_relative \
		--go-grpc_out=proto/gen --go-grpc_opt=paths=source_relative \
		$(PLUGIN_PROTO_FILES)

.PHONY: check-generate
check-generate: generate ## Fail when `make generate` changes the committed code.
	@git add -N proto/gen >/dev/null 2>&1 || true
	@git diff --exit-code --stat -- proto/gen || { echo "generated code is stale: run make generate and commit" >&2; exit 1; }

.PHONY: build
build: ## Build opsconductor and opsconductor-agent into bin/.
	go build -o bin/opsconductor ./controlplane/cmd/opsconductor
	go build -o bin/opsconductor-agent ./agent/cmd/opsconductor-agent

# bench/river is a module of its own: River, the baseline of benchmark B3,
# stays out of the main module's dependencies.
.PHONY: lint
lint: ## gofmt, go vet and the import boundaries.
	@out="$$(gofmt -l $$(git ls-files '*.go' | grep -v '^proto/gen/'))"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	cd bench/river && go vet ./...
	@./.ci/check-imports
	shellcheck installer/install.sh .ci/run .ci/check-imports docs/examples/demo.sh deploy/compose/gen-certs.sh

.PHONY: cross
cross: ## The agent still builds for Windows and macOS (vet of the code they use).
	GOOS=windows GOARCH=amd64 go build -o /dev/null ./agent/cmd/opsconductor-agent
	GOOS=darwin GOARCH=arm64 go vet ./agent/ ./agent/cmd/... ./agent/sandbox/ ./agent/runner/ ./agent/state/ ./agent/transport/

# The agent for every platform the installers serve, with SHA256SUMS
# (opsconductor server --dist-dir dist serves them at /downloads/).
# On Windows and macOS the agent runs actions without the sandbox and
# run_as (Linux only); on Windows an action's children are not stopped with it.
DIST_PLATFORMS := linux/amd64 linux/arm64 windows/amd64 darwin/arm64
.PHONY: dist
dist: ## Build the agent for linux amd64/arm64, windows amd64, darwin arm64 into dist/ with SHA256SUMS.
	@mkdir -p dist && rm -f dist/opsconductor-agent-* dist/SHA256SUMS
	@for p in $(DIST_PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; ext=; [ "$$os" = windows ] && ext=.exe; \
		echo "go build opsconductor-agent $$os/$$arch"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch go build -trimpath -ldflags "-s -w" -o dist/opsconductor-agent-$$os-$$arch$$ext ./agent/cmd/opsconductor-agent || exit 1; \
	done
	@cd dist && sha256sum opsconductor-agent-* > SHA256SUMS && cat SHA256SUMS

.PHONY: test
test: lint cross check-generate test-go test-deploy test-race fuzz bench-smoke demo ## Run every test (needs PostgreSQL, Redis and RabbitMQ; see README).

.PHONY: test-go
test-go: ## go test ./... (PostgreSQL at 127.0.0.1:5432, Redis at 127.0.0.1:6379, RabbitMQ at 127.0.0.1:5672).
	go test $(GO_TEST_FLAGS) -count=1 -timeout 15m ./...

# deploy/ is a module of its own: kustomize and the Kubernetes types stay
# out of the main module's build.
.PHONY: test-deploy
test-deploy: ## The deployment files: kustomize render + strict k8s decoding, docker-compose config.
	cd deploy && go vet ./... && go test -count=1 ./...

.PHONY: test-race
test-race: ## The race detector on the concurrent packages.
	go test -race -count=1 -timeout 15m ./controlplane/dispatch/... ./controlplane/notify/... ./controlplane/bus/... ./controlplane/audit/... ./controlplane/execution/... ./controlplane/schedule/... ./controlplane/server/... ./controlplane/remote/... ./controlplane/router/... ./agent/...

.PHONY: fuzz
fuzz: ## Run the fuzz targets briefly (FUZZTIME, default 10s each).
	go test -run='^$$' -fuzz=FuzzCheck -fuzztime=$(FUZZTIME) ./agent/safety/
	go test -run='^$$' -fuzz=FuzzJobDecode -fuzztime=$(FUZZTIME) ./controlplane/cli/

.PHONY: bench
bench: ## Run the benchmarks (docs/benchmarks.md; BENCH=b6 runs one part); writes bench-results.json.
	go run ./bench/cmd/bench -part $(or $(BENCH),all)

.PHONY: bench-smoke
bench-smoke: ## Each benchmark part once at a tiny size, so the harness cannot rot (part of make test).
	go run ./bench/cmd/bench -size tiny -out $${TMPDIR:-/tmp}/bench-smoke.json

.PHONY: demo
demo: build ## Start `opsconductor dev`, run the example job with --follow, stop.
	./docs/examples/demo.sh
