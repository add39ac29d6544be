#!/usr/bin/env bash
# `make e2e-kind`: the e2e suite against a kind cluster, for users with
# Docker and internet access. UNTESTED on our CI: our machines cannot run
# kind (no registry, no privileged containers); the local harness
# (`make e2e`) runs the same suite there.
#
# Creates kind cluster $KIND_CLUSTER (default podmeta-e2e) unless it exists,
# loads the images built from this checkout with `kind load image-archive`,
# installs cert-manager $CERT_MANAGER_VERSION from its released chart
# (jetstack), installs podmeta from charts/podmeta in cert-manager mode, runs
# `go test -tags e2e ./...` in e2e/ with KUBECONFIG pointing at the cluster,
# and deletes the cluster at the end unless KEEP_CLUSTER=1 (or it existed).
# Needs docker, kind, helm (3.x) and go on PATH.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$repo/hack/cluster/lib.sh"
KIND_CLUSTER=${KIND_CLUSTER:-podmeta-e2e}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.21.2}
for tool in docker kind helm go; do
  command -v "$tool" >/dev/null || die "make e2e-kind needs $tool on PATH"
done
work=${TMPDIR:-/tmp}/podmeta-kind-$KIND_CLUSTER
mkdir -p "$work"

created=no
if kind get clusters | grep -qx "$KIND_CLUSTER"; then
  log "reusing kind cluster $KIND_CLUSTER"
else
  kind create cluster --name "$KIND_CLUSTER" --wait 3m
  created=yes
fi
cleanup() {
  if [ "$created" = yes ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    kind delete cluster --name "$KIND_CLUSTER"
  else
    log "kind cluster $KIND_CLUSTER kept; delete it with: kind delete cluster --name $KIND_CLUSTER"
  fi
}
trap cleanup EXIT
kind get kubeconfig --name "$KIND_CLUSTER" >"$work/kubeconfig"
export KUBECONFIG=$work/kubeconfig

log "installing cert-manager $CERT_MANAGER_VERSION (jetstack chart)"
helm repo add jetstack https://charts.jetstack.io --force-update >/dev/null
helm upgrade --install cert-manager jetstack/cert-manager --version "$CERT_MANAGER_VERSION" \
  --namespace cert-manager --create-namespace --set crds.enabled=true --wait --timeout 5m

PODMETA_TARGET=kind PODMETA_CERT_MODE=cert-manager KIND_CLUSTER=$KIND_CLUSTER PODMETA_WORK=$work HELM=helm KUBECTL=kubectl \
  "$here/deploy.sh"

cd "$repo/e2e"
# e2e/chart is left out: it installs podmeta itself, with the harness-built
# cert-manager image, which is for the local cluster only.
# shellcheck disable=SC2046
PODMETA_IMAGE_REGISTRY=$IMAGE_REGISTRY PODMETA_IMAGE_TAG=$IMAGE_TAG \
  go test -tags e2e -count=1 -timeout 20m "$@" $(go list -tags e2e ./... | grep -v '/e2e/chart$')
