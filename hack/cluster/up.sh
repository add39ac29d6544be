#!/usr/bin/env bash
# Brings up the local one-node cluster (see README "Local cluster harness").
# Idempotent: if the cluster is already up and healthy it only says so.
# After a crashed or half-finished run it tears the leftovers down first.
#
#   hack/cluster/up.sh          # prints the KUBECONFIG to use at the end
#
# Everything runs inside the network namespace $NETNS and one private mount
# namespace started by node.sh; the host is reachable from the API server
# through a veth pair, and the host reaches the API server at
# https://$API_IP:6443 with $STATE/pki/admin.kubeconfig.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/lib.sh"

[ "$(id -u)" = 0 ] || die "the local cluster needs root (network namespaces, mounts, cgroups)"

healthy() {
  [ -f "$STATE/up" ] && kc get --raw /readyz >/dev/null 2>&1
}

if healthy; then
  log "cluster $CLUSTER is already up; KUBECONFIG=$STATE/pki/admin.kubeconfig"
  exit 0
fi
if [ -e "$STATE" ] || ip netns list | grep -qw "$NETNS"; then
  log "leftovers of an earlier run of cluster $CLUSTER found; tearing them down first"
  "$here/down.sh"
fi

t0=$SECONDS
phase() { log "$1 (+$((SECONDS - t0))s)"; }
failed() {
  local rc=$?
  log "cluster-up FAILED (exit $rc); component logs are in $STATE/logs, tails follow"
  log_tails 30
  log "tear down with: make cluster-down (or $here/down.sh)"
  exit $rc
}
trap failed ERR

"$here/install-deps.sh"
"$here/build-bins.sh"
phase "binaries ready"

mkdir -p "$STATE"/{bin,pki,logs,images,log-pods,cni/net.d,cni/ipam,containerd/root,containerd/opt,sysctl,config,kube-cache}
# Host state teardown must restore exactly: sysctls kubelet would touch, and
# whether /run/netns was a mount point before `ip netns add` made it one.
for kv in $KUBELET_SYSCTLS; do k=${kv%%=*}; printf '%s=%s\n' "$k" "$(cat "/proc/sys/$k")"; done >"$STATE/host-sysctls"
if mountpoint -q /run/netns 2>/dev/null; then echo yes; else echo no; fi >"$STATE/host-run-netns-mounted"
[ -d /run/netns ] && echo yes >"$STATE/host-run-netns-existed" || echo no >"$STATE/host-run-netns-existed"
: >"$STATE/created-paths"
for p in $HARDCODED_PATHS; do
  if [ ! -e "$p" ]; then
    # record the topmost missing ancestor so teardown removes all it created
    top=$p
    while [ ! -e "$(dirname "$top")" ]; do top=$(dirname "$top"); done
    mkdir -p "$p"
    echo "$top" >>"$STATE/created-paths"
  fi
done

phase "building the harness tool and images"
(cd "$repo/e2e" && go build -o "$STATE/bin/harness" ./cmd/harness)
"$STATE/bin/harness" images -repo-root "$repo" -out "$STATE/images" -registry "$IMAGE_REGISTRY" -tag "$IMAGE_TAG" >&2
grep -q '^pause ' "$STATE/images/images.txt" || die "the pause image was not built"
"$STATE/bin/harness" pki -dir "$STATE/pki" -cluster-name "$CLUSTER" -node-name "$NODE_NAME" \
  -node-ip "$NODE_IP" -service-ip "$SERVICE_IP" -extra-ip "$API_IP" \
  -internal-url "https://$NODE_IP:$API_PORT" -external-url "https://$API_IP:$API_PORT"
"$here/render-config.sh"
phase "images, PKI and configs ready"

# The network namespace and the host's way in.
ip netns add "$NETNS"
ip link add "$VETH_HOST" type veth peer name "$VETH_NS"
ip link set "$VETH_NS" netns "$NETNS"
ip addr add "$HOST_IP/30" dev "$VETH_HOST"
ip link set "$VETH_HOST" up
ip netns exec "$NETNS" ip addr add "$API_IP/30" dev "$VETH_NS"
ip netns exec "$NETNS" ip link set "$VETH_NS" up

# node.sh starts every daemon from one mount namespace and supervises them.
setsid ip netns exec "$NETNS" "$here/node.sh" </dev/null >"$STATE/logs/node.log" 2>&1 &
echo $! >"$STATE/node.pid"

node_alive() { kill -0 "$(cat "$STATE/node.pid")" 2>/dev/null; }
api_ready() { node_alive && kc get --raw /readyz; }
wait_for 120 "the API server" api_ready
phase "API server ready"
node_ready() {
  node_alive && [ "$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_for 120 "node $NODE_NAME Ready" node_ready
phase "node Ready"
wait_for 120 "the default ServiceAccount" kc -n default get serviceaccount default
wait_for 60 "the kube-root-ca.crt ConfigMap" kc -n default get configmap kube-root-ca.crt
touch "$STATE/up"
phase "cluster $CLUSTER up"
cat >&2 <<MSG
  export KUBECONFIG=$STATE/pki/admin.kubeconfig   # works from the host
  kubectl: $(k8s_bin_dir)/kubectl   (or hack/cluster/kubectl.sh ...)
  images:  $(awk '{print $2}' "$STATE/images/images.txt" | tr '\n' ' ')
  logs:    $STATE/logs
  down:    make cluster-down
MSG
