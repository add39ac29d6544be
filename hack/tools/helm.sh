#!/usr/bin/env bash
# Prints the path of a helm binary at the pinned version, building it from the
# Go module proxy the first time. The binary is cached outside the repo, keyed
# by version, so every worktree, test and CI run on the machine reuses it.
#
#   hack/tools/helm.sh           # helm 3 (default; what the chart tests and e2e use)
#   HELM_MAJOR=4 hack/tools/helm.sh   # helm 4, to check the chart with both
#
# Progress goes to stderr; stdout is only the path, so callers can do
#   HELM=$(hack/tools/helm.sh)
set -euo pipefail

HELM_MAJOR=${HELM_MAJOR:-3}
case "$HELM_MAJOR" in
  3) HELM_VERSION=${HELM_VERSION:-v3.22.0} ;;
  4) HELM_VERSION=${HELM_VERSION:-v4.3.1} ;;
  *) echo "helm.sh: HELM_MAJOR must be 3 or 4, got $HELM_MAJOR" >&2; exit 2 ;;
esac
CACHE=${PODMETA_CACHE:-/var/cache/podmeta}
dir=$CACHE/helm/$HELM_VERSION
bin=$dir/helm

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

export PATH=$PATH:/usr/local/go/bin
mkdir -p "$dir"
# One builder at a time: parallel test packages may all ask for helm at once.
exec 9>"$dir/.lock"
flock 9
if [ ! -x "$bin" ]; then
  echo "helm.sh: building helm $HELM_VERSION from the Go module proxy into $dir (about 2-4 minutes the first time)" >&2
  start=$(date +%s)
  tmp=$(mktemp -d "$dir/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  mod=helm.sh/helm/v$HELM_MAJOR
  # Set what helm's own Makefile sets at link time: its version (else
  # `helm version` says v3.x-dev) and, for helm 3, the Kubernetes version
  # that `helm template`/`helm lint` assume without a cluster (else v1.20,
  # which fails every chart with a kubeVersion constraint), taken from the
  # client-go version helm is built with. Helm 4 reads that from its build
  # info by itself.
  ldflags="-s -w -X $mod/internal/version.version=$HELM_VERSION"
  if [ "$HELM_MAJOR" = 3 ]; then
    gomod=$(cd "$tmp" && go mod download -json "$mod@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
    k8sminor=$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod" | head -n1)
    [ -n "$k8sminor" ] || { echo "helm.sh: cannot find helm's client-go version in $gomod" >&2; exit 1; }
    for p in "$mod/pkg/chartutil" "$mod/pkg/lint/rules"; do
      ldflags="$ldflags -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$k8sminor"
    done
  fi
  CGO_ENABLED=0 GOBIN=$tmp GOFLAGS=-mod=mod nice -n 10 go install -ldflags "$ldflags" \
    "$mod/cmd/helm@$HELM_VERSION" >&2
  mv "$tmp/helm" "$bin"
  echo "helm.sh: built in $(( $(date +%s) - start ))s" >&2
fi
echo "$bin"
