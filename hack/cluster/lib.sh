# Shared settings and helpers of the local cluster harness. Sourced, not run.
# Everything the harness creates on the host is named after $PODMETA_CLUSTER
# and recorded under $STATE so teardown (and check-clean.sh) find it again.
# shellcheck shell=bash

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
K8S_COMPONENTS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"
PODMETA_CACHE=${PODMETA_CACHE:-/var/cache/podmeta}

CLUSTER=${PODMETA_CLUSTER:-podmeta}
STATE=${PODMETA_STATE:-/var/lib/podmeta/$CLUSTER}
NETNS=$CLUSTER
NODE_NAME=$CLUSTER-node
CGROUP_ROOT=/$CLUSTER-cluster
# The cluster network lives inside $NETNS: a bridge for pods (its address is
# the node IP) and a veth pair to the host, whose inner end is where the host
# reaches the API server (https://$API_IP:6443).
BRIDGE=pm0
POD_CIDR=${PODMETA_POD_CIDR:-10.233.7.0/24}
NODE_IP=${PODMETA_NODE_IP:-10.233.7.1}
SERVICE_CIDR=${PODMETA_SERVICE_CIDR:-10.96.0.0/16}
SERVICE_IP=${PODMETA_SERVICE_IP:-10.96.0.1}
VETH_HOST=${CLUSTER:0:10}-host
VETH_NS=${CLUSTER:0:10}-ns
HOST_IP=${PODMETA_HOST_IP:-10.233.6.1}
API_IP=${PODMETA_API_IP:-10.233.6.2}
API_PORT=6443
IMAGE_REGISTRY=${PODMETA_IMAGE_REGISTRY:-podmeta.local}
IMAGE_TAG=${PODMETA_IMAGE_TAG:-dev}

# Paths some component uses no matter how it is configured. Inside the
# cluster's mount namespace a scratch directory under $STATE is bind-mounted
# over each; on the host they stay untouched except that a missing mount point
# is created (and recorded, and removed by teardown).
HARDCODED_PATHS="/var/lib/kubelet /var/log/containers /var/lib/cni /run/containerd"
# Global (not per network namespace) sysctls kubelet sets; inside the mount
# namespace files holding kubelet's wanted values are bind-mounted over them.
KUBELET_SYSCTLS="vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000"

# kubectl would otherwise cache discovery in ~/.kube/cache.
export KUBECACHEDIR=${KUBECACHEDIR:-$STATE/kube-cache}

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

k8s_bin_dir() { echo "$PODMETA_CACHE/k8s-$K8S_VERSION/bin"; }
etcd_bin_dir() { echo "$PODMETA_CACHE/etcd-$ETCD_VERSION/bin"; }

# kubectl as the cluster admin, from the host.
kc() { "$(k8s_bin_dir)/kubectl" --kubeconfig "$STATE/pki/admin.kubeconfig" "$@"; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s.
wait_for() {
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then log "timed out after ${limit}s waiting for $what"; return 1; fi
    sleep 0.2
  done
}

# Prints the last lines of every component log (for failures).
log_tails() {
  local n=${1:-25} f
  for f in "$STATE"/logs/*.log; do
    [ -f "$f" ] || continue
    echo "===== $f (last $n lines) =====" >&2
    tail -n "$n" "$f" >&2
  done
}
