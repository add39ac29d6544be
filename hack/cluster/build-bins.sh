#!/usr/bin/env bash
# Builds the cluster's binaries (etcd and the Kubernetes components) from the
# Go module proxy at pinned versions and caches them outside the repo, keyed by
# version, so only the first run on a machine pays the ~10 minute cold build.
# Prints nothing but progress; the binaries end up in $(k8s_bin_dir) and
# $(etcd_bin_dir) as defined in lib.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

mkdir -p "$PODMETA_CACHE"
# Two builds at once would only fight over 2 cores and the same module cache.
exec 9>"$PODMETA_CACHE/build.lock"
flock 9

export GOFLAGS="${GOFLAGS:-} -p=${BUILD_PARALLELISM:-2} -trimpath"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=$(echo "$K8S_VERSION" | sed -E 's/^v([0-9]+)\..*/\1/') -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/') -X k8s.io/component-base/version.gitTreeState=clean"

build() { # build DIR OUT PKG [ldflags]
  local dir=$1 out=$2 pkg=$3 flags=${4:-}
  if [ -x "$out" ]; then log "cached: $out"; return; fi
  local t0=$SECONDS
  log "building $(basename "$out") (cold builds take minutes; nice'd)"
  (cd "$dir" && nice -n 10 go build -ldflags "$flags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
  log "built $(basename "$out") in $((SECONDS - t0))s"
}

k8s_mod() { # prepares the throwaway module that pins k8s.io/kubernetes
  local dir=$PODMETA_CACHE/k8s-$K8S_VERSION/mod
  if [ -f "$dir/.ready" ]; then echo "$dir"; return; fi
  mkdir -p "$dir"
  local gomod
  gomod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$gomod" ] || die "could not find go.mod of k8s.io/kubernetes@$K8S_VERSION"
  local staging="v0.${K8S_VERSION#v1.}"
  {
    echo "module podmeta.local/k8sbuild"
    echo
    echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # Kubernetes' own go.mod replaces each staging module with ./staging/...,
    # which a dependent module ignores; point each at its published version.
    sed -n '/^replace (/,/^)/p' "$gomod" | awk '$2=="=>" && $3 ~ /^\.\/staging/ {print $1}' |
      grep -v -e sample-cli-plugin -e sample-controller |
      while read -r m; do echo "replace $m => $m $staging"; done
  } >"$dir/go.mod"
  local pkgs=()
  for c in $K8S_COMPONENTS; do pkgs+=("k8s.io/kubernetes/cmd/$c@$K8S_VERSION"); done
  (cd "$dir" && go get "${pkgs[@]}" >&2)
  touch "$dir/.ready"
  echo "$dir"
}

t_all=$SECONDS
bin=$(k8s_bin_dir)
mkdir -p "$bin"
need=0
for c in $K8S_COMPONENTS; do [ -x "$bin/$c" ] || need=1; done
if [ $need = 1 ]; then
  mod=$(k8s_mod)
  for c in $K8S_COMPONENTS; do build "$mod" "$bin/$c" "k8s.io/kubernetes/cmd/$c" "$ldflags"; done
else
  log "cached: Kubernetes $K8S_VERSION binaries in $bin"
fi

ebin=$(etcd_bin_dir)
if [ ! -x "$ebin/etcd" ]; then
  emod=$PODMETA_CACHE/etcd-$ETCD_VERSION/mod
  mkdir -p "$emod" "$ebin"
  if [ ! -f "$emod/go.mod" ]; then
    (cd "$emod" && go mod init podmeta.local/etcdbuild >/dev/null 2>&1 && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2)
  fi
  build "$emod" "$ebin/etcd" go.etcd.io/etcd/server/v3 "-s -w"
else
  log "cached: etcd $ETCD_VERSION in $ebin"
fi
log "binaries ready in $((SECONDS - t_all))s"
