# aad-pod-identity: webhook-driven pod identity for Kubernetes on Azure.
SHELL := /usr/bin/env bash -o pipefail
.DEFAULT_GOAL := help

K8S_VERSION  ?= 1.37.2
ETCD_VERSION ?= 3.7.0
CERT_MANAGER_VERSION ?= v1.21.2
CONTROLLER_TOOLS_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION    ?= v2.15.0

# Versioned cache: a second build of the same versions is skipped. The
# "-static" suffix names the layout: one static hyperkube linked under each
# component's name (hack/tools/k8s/hyperkube).
TOOLS_CACHE ?= $(HOME)/.cache/aad-pod-identity
ASSETS      ?= $(TOOLS_CACHE)/k8s-$(K8S_VERSION)-etcd-$(ETCD_VERSION)-static
BIN         ?= $(CURDIR)/bin
CONTROLLER_GEN ?= $(BIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
HELM_VERSION   ?= v4.3.1
# Kept in the tools cache, like the control plane, so that fresh clones reuse it. Defined before
# the rules that name it: make expands prerequisites when it reads a rule.
HELM           ?= $(TOOLS_CACHE)/helm-$(HELM_VERSION)/helm
GOLANGCI_LINT  ?= $(BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
HELM_DOCS_VERSION ?= v1.14.2
HELM_DOCS      ?= $(TOOLS_CACHE)/helm-docs-$(HELM_DOCS_VERSION)/helm-docs

# The cluster DNS of the real-node sandbox: CoreDNS with the plugins it uses
# (hack/tools/coredns), static for its image. The version must match
# hack/tools/coredns/go.mod (and corednsVersion in e2e/sandbox). Defined
# here, before the rules that name it as a prerequisite.
COREDNS_VERSION ?= 1.15.0
COREDNS ?= $(TOOLS_CACHE)/coredns-$(COREDNS_VERSION)/coredns
export COREDNS

# Every build that is not a race test uses one configuration: static,
# -trimpath, no debug info. The images need static binaries, so vet, the
# sandbox, the images and the tools all share one compile of each package
# (std included), and links without DWARF are faster (docs/performance.md,
# "Cold start"). golangci-lint too: it reads our dependencies' export data,
# which `go list -export` compiles in the configuration it is given. Race tests need cgo and are compiled apart anyway.
GO_STATIC := CGO_ENABLED=0 go
STATIC_FLAGS := -trimpath -ldflags='-s -w'

K8S_MINOR := $(word 2,$(subst ., ,$(K8S_VERSION)))
K8S_LDFLAGS := -s -w $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
	-X $(p).gitVersion=v$(K8S_VERSION) -X $(p).gitMajor=1 -X $(p).gitMinor=$(K8S_MINOR))

# Fuzz budgets are execution counts (about a minute each here): a duration
# races Go 1.26's fuzz coordinator, which then fails with "context deadline
# exceeded" and no crasher (golang/go#75804, fixed in Go 1.27).
FUZZ_ADMISSION_EXECS ?= 30000x
FUZZ_TOKEN_EXECS     ?= 120000x
export KUBEBUILDER_ASSETS := $(ASSETS)

##@ General
.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  %-18s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development
.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code.
	$(CONTROLLER_GEN) object paths=./api/...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRD, RBAC and webhook manifests into config/.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd
	$(CONTROLLER_GEN) rbac:roleName=aad-pod-identity-webhook paths=./webhook/... output:rbac:artifacts:config=config/rbac/webhook
	$(CONTROLLER_GEN) rbac:roleName=aad-pod-identity-nmi paths=./nmi/... output:rbac:artifacts:config=config/rbac/nmi
	$(CONTROLLER_GEN) rbac:roleName=aad-pod-identity-assigner paths=./assigner/... output:rbac:artifacts:config=config/rbac/assigner
	$(CONTROLLER_GEN) webhook paths=./webhook/... output:webhook:artifacts:config=config/webhook

.PHONY: verify-generated
verify-generated: generate manifests helm-docs ## Fail when generated files are stale.
	@git diff --exit-code -- api config $(CHART)/README.md || { echo "generated files are stale: run 'make generate manifests helm-docs' and commit"; exit 1; }

.PHONY: helm-docs
helm-docs: $(HELM_DOCS) ## Generate the chart README's values table from the comments in values.yaml.
	$(HELM_DOCS) --chart-search-root $(CHART) --ignore-non-descriptions --skip-version-footer --sort-values-order file

.PHONY: fmt fmt-check vet lint
fmt: ## gofmt the tree.
	gofmt -w $$(git ls-files '*.go')
fmt-check: ## Fail when a file needs gofmt.
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
vet: ## go vet, with and without the test tiers' build tags.
	$(GO_STATIC) vet -trimpath ./...
	$(GO_STATIC) vet -trimpath -tags integration,e2e ./...
lint: $(GOLANGCI_LINT) ## golangci-lint with .golangci.yml.
	CGO_ENABLED=0 GOFLAGS="$(GOFLAGS) -trimpath" $(GOLANGCI_LINT) run ./...

.PHONY: build
build: ## Build the binaries into bin/ (static, as in the images).
	$(GO_STATIC) build $(STATIC_FLAGS) -o $(BIN)/ ./cmd/...

##@ Test
# Three tiers, by what they need: unit tests nothing but Go; integration
# tests (build tag integration) the envtest control plane; end-to-end tests
# (build tag e2e) root, for network namespaces and iptables.
INTEGRATION_PKGS := ./webhook/... ./assigner/... ./charts/... ./internal/metrics/... ./internal/crdsync/... ./internal/config/...

.PHONY: test test-unit test-integration test-e2e test-fuzz
test: deps test-builds verify-generated fmt-check vet lint test-unit test-integration test-e2e test-fuzz ## Run every test: what CI runs.

test-unit: ## Unit tests: no root, no control plane.
	go test -race -count=1 ./...

test-integration: control-plane chart-test-deps ## Integration tests against envtest: webhook, assigner, charts.
	go test -race -count=1 -tags integration $(INTEGRATION_PKGS)

test-e2e: deps control-plane node-binaries cert-manager $(COREDNS) $(HELM) ## End-to-end tests, as root: NMI in network namespaces, the sandbox, the e2e suite, the demo.
	go test -race -count=1 -p 1 -timeout 30m -tags e2e ./e2e/... ./hack/images/

test-fuzz: ## Fuzz smoke runs (FUZZ_*_EXECS inputs each).
	go test -run '^$$' -fuzz FuzzAdmission -fuzztime $(FUZZ_ADMISSION_EXECS) -fuzzminimizetime 5s ./webhook/
	go test -run '^$$' -fuzz FuzzParseTokenRequest -fuzztime $(FUZZ_TOKEN_EXECS) -fuzzminimizetime 5s ./nmi/

.PHONY: bench
bench: control-plane ## Run the admission load generator (see docs/performance.md).
	go run ./hack/loadgen $(LOADGEN_ARGS)

.PHONY: bench-assigner
bench-assigner: control-plane ## Run the assigner load generator (see docs/performance.md, section Assigner).
	go test -tags integration -run '^$$' -bench BenchmarkPodReady -benchtime 1x -count=1 ./assigner/

.PHONY: bench-assigner-process
bench-assigner-process: control-plane build ## The same with the real assigner binary, so that its RSS is its own (ASSIGNER_BENCH_* sizes).
	ASSIGNER_BENCH_BINARY=$(BIN)/assigner go test -tags integration -run '^$$' -bench BenchmarkPodReady -benchtime 1x -count=1 -timeout 60m ./assigner/

# The builds the demo and the tests need, two at a time: each go build is
# parallel inside, but its links and the tails of its package graph leave a
# core idle (docs/performance.md, "Cold start"). sandbox-build compiles our
# dependencies as vet and the images do.
DEMO_BUILDS := control-plane node-binaries cert-manager coredns $(HELM) sandbox-build
TEST_BUILDS = $(DEMO_BUILDS) $(CERT_MANAGER_CRDS) $(CONTROLLER_GEN) $(HELM_DOCS) $(GOLANGCI_LINT)
.PHONY: demo-builds test-builds
demo-builds: ## Build what `make demo` needs, two builds at a time.
	$(MAKE) -j2 --output-sync=line --no-print-directory $(DEMO_BUILDS)
test-builds: ## Build what `make test` needs, two builds at a time.
	$(MAKE) -j2 --output-sync=line --no-print-directory $(TEST_BUILDS)

.PHONY: control-plane
control-plane: $(ASSETS)/.done ## Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from source.

$(ASSETS)/.done:
	mkdir -p $(ASSETS)
	cd hack/tools/k8s && $(GO_STATIC) build -trimpath -ldflags '$(K8S_LDFLAGS)' -o $(ASSETS)/ ./hyperkube k8s.io/kubernetes/cmd/kubectl
	for c in $(HYPERKUBE_COMMANDS); do ln -sf hyperkube $(ASSETS)/$$c; done
	cd hack/tools/etcd && $(GO_STATIC) build $(STATIC_FLAGS) -o $(ASSETS)/etcd go.etcd.io/etcd/server/v3
	$(ASSETS)/kube-apiserver --version
	touch $@

# What hyperkube runs as (hack/tools/k8s/hyperkube/main.go).
HYPERKUBE_COMMANDS := kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy

# The real-node sandbox's node software (kubelet, containerd, the CNI plugins), in the versioned
# cache like the control plane. The versions must match hack/tools/{k8s,containerd,cni}/go.mod.
# kubelet, kube-proxy and the static kubectl (the hooks' image) are links into the control plane's
# build: one static build serves both.
CONTAINERD_VERSION  ?= 2.4.2
CNI_PLUGINS_VERSION ?= 1.10.0
NODE_ASSETS ?= $(TOOLS_CACHE)/node-$(K8S_VERSION)-containerd-$(CONTAINERD_VERSION)-cni-$(CNI_PLUGINS_VERSION)-static
export AADPI_NODE_ASSETS := $(NODE_ASSETS)
CNI_PLUGINS := ipam/host-local main/bridge main/loopback meta/portmap

.PHONY: node-binaries
node-binaries: $(NODE_ASSETS)/.done ## Build containerd (shim, ctr) and the CNI plugins, and link kubelet, kube-proxy and a static kubectl (for the hooks' image) from the control plane's build, for real nodes (docs/sandbox.md).

$(NODE_ASSETS)/.done: $(ASSETS)/.done
	mkdir -p $(NODE_ASSETS)/cni $(NODE_ASSETS)/static
	ln -sf $(ASSETS)/hyperkube $(NODE_ASSETS)/kubelet
	ln -sf $(ASSETS)/hyperkube $(NODE_ASSETS)/kube-proxy
	ln -sf $(ASSETS)/kubectl $(NODE_ASSETS)/static/kubectl
	# Without the snapshotters that need C libraries: the sandbox uses the native one.
	cd hack/tools/containerd && $(GO_STATIC) build -trimpath -tags no_btrfs,no_devmapper,no_zfs \
		-ldflags '-s -w -X github.com/containerd/containerd/v2/version.Version=v$(CONTAINERD_VERSION)' -o $(NODE_ASSETS)/ \
		github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
		github.com/containerd/containerd/v2/cmd/ctr
	cd hack/tools/cni && $(GO_STATIC) build $(STATIC_FLAGS) -o $(NODE_ASSETS)/cni/ $(addprefix github.com/containernetworking/plugins/plugins/,$(CNI_PLUGINS))
	$(NODE_ASSETS)/kubelet --version && $(NODE_ASSETS)/containerd --version
	touch $@

# cert-manager's controller and cainjector for the sandbox (docs/sandbox.md), built from its Go
# module in hack/tools/cert-manager (at cert-manager's own dependency versions), cached like the
# node binaries, keyed by the tools module's sources too (its code is ours). CERT_MANAGER_VERSION
# must match hack/tools/cert-manager/go.mod.
CERT_MANAGER_SOURCES := $(shell find hack/tools/cert-manager -name '*.go' -o -name go.sum | sort | xargs cat | sha256sum | cut -c1-12)
CERT_MANAGER_ASSETS ?= $(TOOLS_CACHE)/cert-manager-$(CERT_MANAGER_VERSION)-$(CERT_MANAGER_SOURCES)
export AADPI_CERT_MANAGER_ASSETS := $(CERT_MANAGER_ASSETS)

.PHONY: cert-manager
cert-manager: $(CERT_MANAGER_ASSETS)/.done ## Build cert-manager's controller and cainjector from its Go module (for the sandbox).

$(CERT_MANAGER_ASSETS)/.done:
	mkdir -p $(CERT_MANAGER_ASSETS)
	cd hack/tools/cert-manager && $(GO_STATIC) build $(STATIC_FLAGS) -o $(CERT_MANAGER_ASSETS)/ ./controller ./cainjector
	touch $@

.PHONY: coredns
coredns: $(COREDNS) ## Build CoreDNS for the sandbox's cluster DNS (docs/sandbox.md).

$(COREDNS):
	cd hack/tools/coredns && $(GO_STATIC) build $(STATIC_FLAGS) -o $@ .
	$@ -version

$(CONTROLLER_GEN):
	GOBIN=$(BIN) $(GO_STATIC) install $(STATIC_FLAGS) sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(BIN)/controller-gen $@

$(HELM_DOCS):
	GOBIN=$(dir $@) $(GO_STATIC) install $(STATIC_FLAGS) github.com/norwoodj/helm-docs/cmd/helm-docs@$(HELM_DOCS_VERSION)

$(GOLANGCI_LINT):
	GOBIN=$(BIN) $(GO_STATIC) install $(STATIC_FLAGS) github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(BIN)/golangci-lint $@

# Packages a fresh Debian machine lacks; the netns tests need iptables and iproute2.
APT_PACKAGES := iptables iproute2
# The sandbox tests run a small HTTP server and client as pod programs.
APT_PACKAGES += python3
# The real node (e2e/realnode): containerd's OCI runtime, and pgrep to stop its shims.
APT_PACKAGES += runc procps
# kube-proxy's nftables mode (SANDBOX_KUBE_PROXY_MODE=nftables) runs nft.
APT_PACKAGES += nftables
.PHONY: deps
deps: ## Install the system packages the tests need (apt, when missing).
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

##@ Chart and images
CHART                := charts/aad-pod-identity
# cert-manager's CRDs are plain YAML in its Go module; the chart tests install them into envtest.
CERT_MANAGER_CRDS    ?= $(shell go env GOMODCACHE)/github.com/cert-manager/cert-manager@$(CERT_MANAGER_VERSION)/deploy/crds
export HELM CERT_MANAGER_CRDS
IMAGE_REGISTRY ?= ghcr.io/aad-pod-identity
IMAGE_TAG      ?= v0.1.0
IMAGES         := webhook assigner nmi demo
CONTAINER_TOOL ?= docker

.PHONY: chart-test-deps chart-crds update-golden images
chart-test-deps: $(HELM) $(CERT_MANAGER_CRDS) ## Build helm and fetch cert-manager's CRDs for the chart tests.

$(HELM):
	GOBIN=$(dir $@) $(GO_STATIC) install $(STATIC_FLAGS) helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)

$(CERT_MANAGER_CRDS):
	cd $(CURDIR) && go mod download github.com/cert-manager/cert-manager@$(CERT_MANAGER_VERSION)

chart-crds: ## Copy config/crd into the chart (a chart test fails when they differ).
	rm -f $(CHART)/crds/*.yaml && cp config/crd/*.yaml $(CHART)/crds/

update-golden: chart-test-deps ## Rewrite the chart's golden helm template outputs.
	go test -tags integration ./charts/... -run TestGolden -update

images: ## Build the images offline (no container engine, no registry) into build/images as OCI archives.
	$(GO_STATIC) run -trimpath ./hack/images --out build/images --registry $(IMAGE_REGISTRY) --version $(IMAGE_TAG) \
		--revision $$(git rev-parse HEAD 2>/dev/null) --deb-cache $(TOOLS_CACHE)/debs

.PHONY: docker-images
docker-images: ## Build the images with a container engine from build/Dockerfile (the chart's default, public bases).
	@for i in $(IMAGES); do \
		$(CONTAINER_TOOL) build -f build/Dockerfile --target $$i --build-arg GO_VERSION=$$(go env GOVERSION | sed 's/^go//') \
			-t $(IMAGE_REGISTRY)/$$i:$(IMAGE_TAG) . || exit 1; done

NMI_LOAD_PODS ?= 10000
NMI_LOAD_DURATION ?= 8s
NMI_LOAD_RECORD_ENTRIES ?= 1,1000
.PHONY: bench-nmi
bench-nmi: deps control-plane ## NMI load generator in network namespaces, as root (see docs/performance.md, section NMI).
	AADPI_NMI_LOAD=1 AADPI_NMI_LOAD_PODS=$(NMI_LOAD_PODS) AADPI_NMI_LOAD_DURATION=$(NMI_LOAD_DURATION) AADPI_NMI_LOAD_RECORD_ENTRIES=$(NMI_LOAD_RECORD_ENTRIES) go test -tags e2e -count=1 -v -timeout 30m -run '^TestNMILoad$$' ./e2e/nmi/

.PHONY: bench-nmi-density
bench-nmi-density: deps control-plane ## NMI at node density, as root: 250 pods, 50 identities, one cold-cache burst (docs/performance.md).
	AADPI_NMI_DENSITY=1 go test -tags e2e -count=1 -v -timeout 15m -run '^TestNMINodeDensity$$' ./e2e/nmi/

##@ Sandbox (local cluster in network namespaces; see docs/sandbox.md)
SANDBOX_DIR ?= /tmp/aadpi-sbx-make

.PHONY: sandbox-build
sandbox-build: ## Build the component binaries and the sandbox into bin/.
	$(GO_STATIC) build $(STATIC_FLAGS) -o $(BIN)/ ./cmd/... ./e2e/cmd/...

.PHONY: sandbox-up
sandbox-up: deps control-plane node-binaries cert-manager $(COREDNS) sandbox-build ## Run the sandbox cluster in the foreground; Ctrl-C tears it down.
	$(BIN)/sandbox up --dir $(SANDBOX_DIR)

.PHONY: sandbox-down
sandbox-down: ## Remove the namespaces and processes a killed sandbox left behind.
	$(GO_STATIC) run -trimpath ./e2e/cmd/sandbox down

.PHONY: bench-sandbox
bench-sandbox: deps control-plane node-binaries cert-manager $(COREDNS) ## Time 100 pods to Running and to deleted on the sandbox's real nodes (docs/performance.md, "Sandbox").
	go test -tags e2e -count=1 -run '^$$' -bench BenchmarkPodStartup100 -benchtime 3x ./e2e/sandbox/

.PHONY: bench-e2e
bench-e2e: deps control-plane node-binaries cert-manager $(COREDNS) $(HELM) ## Time from `kubectl apply` of 100 demo pods to each one's first token, on the helm-installed sandbox (E2E_BENCH_* sizes; E2E_BENCH_MODE=federated).
	go test -tags e2e -count=1 -run '^$$' -bench BenchmarkTimeToFirstToken -benchtime 1x -timeout 30m ./e2e/suite/

.PHONY: bench-install
bench-install: deps control-plane node-binaries cert-manager $(HELM) ## Time helm install to the webhook Ready and to the first admitted pod, with cert-manager and with the built-in certificates (docs/performance.md).
	go test -tags e2e -count=1 -run '^$$' -bench BenchmarkInstall -benchtime 3x -timeout 30m ./e2e/suite/

##@ Demo
.PHONY: demo
demo: deps demo-builds ## The walkthrough end to end on the sandbox (as root, ~2 min); KEEP=1 leaves the cluster up; MODE=federated runs it with workload identity federation.
	BIN=$(BIN) HELM=$(HELM) KEEP=$(KEEP) MODE=$(MODE) hack/demo.sh
