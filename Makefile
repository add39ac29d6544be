# podmeta — see README.md. `make check` is the whole suite and what .ci/run
# runs; `make test` is its quick first part.
GO ?= go

.PHONY: check test unit vet fmt-check fuzz-short soak bench-load faults chart-test chart-certmanager-test helm certmanager cluster-up cluster-down e2e deploy demo e2e-bench e2e-kind

# The whole suite, what .ci/run runs (needs root for the local cluster):
# test, soak, e2e on the local cluster with teardown and host check, and the
# chart's cert-manager test. See hack/check.sh.
check:
	hack/check.sh

# The quick part: gofmt, vet, unit/golden/fuzz-seed tests, short fuzzing,
# chart render tests.
test: fmt-check vet unit fuzz-short chart-test

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# The e2e module (client-go, go-containerregistry) is separate from the
# webhook's; vet and unit-test it too. Its cluster tests need -tags e2e.
vet:
	$(GO) vet ./...
	cd e2e && $(GO) vet -tags e2e ./...

unit:
	$(GO) test -race -count=1 ./...
	cd e2e && $(GO) test -race -count=1 ./...

# A short run of every fuzz target (go test runs only their seeds). Longer:
# make fuzz-short FUZZTIME=10m, or one target with go test -fuzz.
FUZZTIME ?= 10s
fuzz-short:
	@GO=$(GO) FUZZTIME=$(FUZZTIME) hack/fuzz-short.sh

# Issue 6, see BENCHMARKS.md "Admission under load". soak is the 60-second
# steady-rate run (zero errors, flat RSS) that .ci/run adds after test; the
# short version of every fault scenario is already in test.
soak:
	$(GO) test -count=1 -run '^TestSoak$$' -v ./hack/loadtest/scenario -soak 60s

bench-load:
	hack/loadtest/run.sh bench

faults:
	hack/loadtest/run.sh faults

# Render tests of charts/podmeta (own module; builds helm 3 and 4 from the Go
# module proxy on first use, cached in $${PODMETA_CACHE:-/var/cache/podmeta}).
chart-test:
	cd charts/podmeta/tests && $(GO) vet ./... && $(GO) vet -tags certmanager ./... && $(GO) test -count=1 ./...

# The chart against a real API server (etcd + kube-apiserver on loopback, from
# the local cluster's binary cache or PODMETA_ETCD / PODMETA_KUBE_APISERVER)
# with cert-manager's controller and cainjector from hack/certmanager.
chart-certmanager-test:
	cd charts/podmeta/tests && $(GO) test -tags certmanager -count=1 -run TestWithCertManager ./...

# Prints the path of the pinned helm binary, building it if needed.
helm:
	@hack/tools/helm.sh

# Prints the path of the test build of cert-manager (hack/certmanager),
# building it if needed; the e2e suite runs it on the local cluster.
certmanager:
	@hack/tools/certmanager.sh

# Local one-node cluster (README "Local cluster harness"); needs root.
cluster-up:
	hack/cluster/up.sh

cluster-down:
	hack/cluster/down.sh

# The e2e suite against the local cluster (brought up if it is not, podmeta
# installed with Helm from this checkout first).
e2e:
	hack/cluster/e2e.sh

# podmeta from this checkout into the local cluster (brought up if it is not).
deploy: cluster-up
	hack/e2e/deploy.sh

# The README's first command: cluster, podmeta, a labeled pod and what it sees.
demo:
	hack/e2e/demo.sh

# Pod-create latency with and without podmeta, written to BENCHMARKS.md.
e2e-bench:
	PODMETA_BENCH_FILE=$(CURDIR)/BENCHMARKS.md hack/cluster/e2e.sh -run TestPodCreateLatency -v

# The same suite on a kind cluster (Docker + internet; untested on our CI).
e2e-kind:
	hack/e2e/kind.sh
