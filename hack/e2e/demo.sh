#!/usr/bin/env bash
# `make demo`: bring up the local one-node cluster (or reuse the one that is
# up), install podmeta with Helm, start a pod that opts in and print what its
# app sees. Needs root (the cluster uses network namespaces, mounts, cgroups).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$repo/hack/cluster/lib.sh"
export PATH=$PATH:/usr/local/go/bin
t0=$SECONDS

# Runs a long step with a heartbeat, so a quiet build does not look hung.
with_progress() {
  local what=$1; shift
  local start=$SECONDS
  ( while sleep 30; do log "... $what: still working ($(( (SECONDS - start) / 60 ))m$(( (SECONDS - start) % 60 ))s so far)"; done ) &
  local ticker=$!
  local rc=0
  "$@" || rc=$?
  kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
  return $rc
}

[ "$(id -u)" = 0 ] || die "the local cluster needs root (network namespaces, mounts, cgroups); run make demo as root"
missing=""
for b in $K8S_COMPONENTS; do [ -x "$(k8s_bin_dir)/$b" ] || missing="$missing $b"; done
[ -x "$(etcd_bin_dir)/etcd" ] || missing="$missing etcd"
if [ -n "$missing" ]; then
  log "First run: building$missing from source (Go module proxy) and installing containerd, runc and CNI plugins from Debian."
  log "That takes about 15 minutes on a 2-core machine (kube-apiserver alone ~7); the binaries are cached in $PODMETA_CACHE, so later runs take about a minute."
fi

log "1/3 local cluster"
with_progress "bringing up the local cluster" "$repo/hack/cluster/up.sh"
export KUBECONFIG=$STATE/pki/admin.kubeconfig
log "2/3 installing cert-manager (test build) and podmeta (helm, charts/podmeta)"
with_progress "installing podmeta" "$here/deploy.sh"
log "3/3 starting a labeled demo pod"
(cd "$repo/e2e" && go run ./cmd/demo -namespace podmeta-demo -pod demo)

kubectl=$repo/hack/cluster/kubectl.sh
cat <<MSG

Done in $((SECONDS - t0))s. Look around (hack/cluster/kubectl.sh is kubectl v1.37 with the cluster's admin kubeconfig):
  $kubectl -n podmeta-demo get pod demo -o yaml                  # the injected pod as stored
  $kubectl -n podmeta-demo logs demo -c podmeta-ambassador       # the ambassador's log
  $kubectl get --raw /api/v1/namespaces/podmeta-demo/pods/demo:8080/proxy/env       # the app's env (JSON)
  $kubectl get --raw /api/v1/namespaces/podmeta-demo/pods/demo:8080/proxy/podinfo   # its /etc/podinfo
  $kubectl -n podmeta-demo label pod demo color=blue             # then read /podinfo again
  $kubectl -n podmeta-system get pods,svc,certificates,mutatingwebhookconfigurations
  $kubectl -n cert-manager get pods                               # the test build of cert-manager
  export KUBECONFIG=$KUBECONFIG                                   # for your own kubectl/helm/client-go
Offline, without a cluster: go run ./cmd/webhook inject -f examples/pod.yaml
Tear down (stops every component, removes the network namespace, mounts and state): make cluster-down
MSG
