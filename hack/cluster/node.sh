#!/usr/bin/env bash
# The node: run by up.sh as `ip netns exec $NETNS node.sh`, i.e. inside the
# cluster's network namespace and a fresh mount namespace. It prepares that
# mount namespace, starts every daemon from it (so kubelet's volume mounts are
# visible to containerd and runc) and supervises them until SIGTERM, when it
# stops them in dependency order (apiserver before etcd). down.sh sends the
# SIGTERM and then removes whatever is left.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
bin=$(k8s_bin_dir)
pki=$STATE/pki
cfg=$STATE/config
logs=$STATE/logs
mkdir -p "$STATE/pids"

# Nothing mounted here may propagate back to the host.
mount --make-rprivate /

# 1. `ip netns exec` mounted a fresh sysfs, without the cgroup hierarchies.
#    Mount them again exactly as the host (pid 1) has them.
mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
while read -r mp fstype opts; do
  mkdir -p "$mp"
  if [ "$fstype" = cgroup2 ]; then
    mount -t cgroup2 none "$mp"
  else
    case $opts in name=*) opts=none,$opts ;; esac # a named hierarchy without controllers
    mount -t cgroup -o "$opts" cgroup "$mp"
  fi
done < <(awk '{ for (i = 7; $i != "-"; i++); fs = $(i+1); if ((fs == "cgroup" || fs == "cgroup2") && $5 ~ "^/sys/fs/cgroup/") { o = $(i+3); sub(/^rw,?/, "", o); print $5, fs, o } }' /proc/1/mountinfo)

# kubelet's cgroupRoot, pre-created in every v1 hierarchy; teardown kills
# whatever is left in it and removes it.
for h in /sys/fs/cgroup/*/; do
  [ "$(stat -f -c %T "$h")" = cgroupfs ] || continue
  mkdir -p "$h$CGROUP_ROOT"
  if [ -f "${h}cpuset.cpus" ]; then
    cat "${h}cpuset.cpus" >"$h$CGROUP_ROOT/cpuset.cpus"
    cat "${h}cpuset.mems" >"$h$CGROUP_ROOT/cpuset.mems"
  fi
done

# 3. Paths components use regardless of configuration: scratch dirs over them.
for p in $HARDCODED_PATHS; do
  d=$STATE/hard/$(echo "${p#/}" | tr / _)
  mkdir -p "$d"
  mount --bind "$d" "$p"
done

# 4. Global sysctls kubelet sets: it finds and writes files of its own.
for kv in $KUBELET_SYSCTLS; do
  k=${kv%%=*}
  f=$STATE/sysctl/$(echo "$k" | tr / .)
  echo "${kv#*=}" >"$f"
  mount --bind "$f" "/proc/sys/$k"
done

# Network: loopback, the pod bridge (node IP) and a route so node-side
# clients reach ClusterIPs (5.: the namespace has no default route).
ip link set lo up
ip link add "$BRIDGE" type bridge
ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up
ip route add "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
# Per network namespace, so only the cluster's copies change.
echo 1 >/proc/sys/net/ipv4/ip_forward
echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
echo 1 >/proc/sys/net/ipv4/conf/all/route_localnet

declare -A pids
start() { # start NAME COMMAND...
  local name=$1; shift
  log "starting $name"
  "$@" >>"$logs/$name.log" 2>&1 &
  pids[$name]=$!
  echo $! >"$STATE/pids/$name"
}

stop() { # stop NAME...: SIGTERM, then SIGKILL after 10 s
  local n p
  for n in "$@"; do p=${pids[$n]:-}; [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for n in "$@"; do
    p=${pids[$n]:-}; [ -n "$p" ] || continue
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    unset "pids[$n]"
    log "stopped $n"
  done
}

shutdown() {
  trap - TERM INT
  log "node shutting down"
  stop kube-proxy kubelet kube-scheduler kube-controller-manager
  stop kube-apiserver
  stop etcd
  stop containerd
  log "node stopped"
  exit 0
}
trap shutdown TERM INT

start containerd containerd --config "$cfg/containerd.toml"
wait_for 30 "containerd's socket" ctr --address /run/containerd/containerd.sock version
while read -r name ref tarball; do
  ctr --address /run/containerd/containerd.sock -n k8s.io images import "$tarball" >>"$logs/images.log" 2>&1 ||
    { log "importing $name failed"; exit 1; }
  log "imported $ref"
done <"$STATE/images/images.txt"

start etcd "$(etcd_bin_dir)/etcd" --name "$NODE_NAME" --data-dir "$STATE/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster "$NODE_NAME=http://127.0.0.1:2380" --listen-metrics-urls http://127.0.0.1:2381 \
  --unsafe-no-fsync --log-level warn
etcd_up() { (exec 3<>/dev/tcp/127.0.0.1/2379) 2>/dev/null; }
wait_for 30 etcd etcd_up

start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers http://127.0.0.1:2379 \
  --bind-address 0.0.0.0 --secure-port "$API_PORT" --advertise-address "$NODE_IP" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --client-ca-file "$pki/ca.crt" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --tls-min-version VersionTLS12 \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --allow-privileged=true --enable-aggregator-routing=true --profiling=false
# kube-controller-manager exits if the RBAC bootstrap roles are not there yet.
api_ready() { "$bin/kubectl" --kubeconfig "$pki/admin.kubeconfig" get --raw /readyz; }
wait_for 120 "the API server" api_ready
log "API server ready"
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$pki/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$pki/controller-manager.kubeconfig" --authorization-kubeconfig "$pki/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
  --root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/sa.key" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" --profiling=false
start kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig "$pki/scheduler.kubeconfig" \
  --authentication-kubeconfig "$pki/scheduler.kubeconfig" --authorization-kubeconfig "$pki/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --profiling=false
start kubelet "$bin/kubelet" --config "$cfg/kubelet.yaml" --kubeconfig "$pki/kubelet.kubeconfig" \
  --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
start kube-proxy "$bin/kube-proxy" --config "$cfg/kube-proxy.yaml"
log "all components started"

# Supervise: report any daemon that exits on its own; keep the rest running so
# its log can be read. `wait` returns early when SIGTERM arrives.
while [ ${#pids[@]} -gt 0 ]; do
  for n in "${!pids[@]}"; do
    if ! kill -0 "${pids[$n]}" 2>/dev/null; then
      rc=0; wait "${pids[$n]}" || rc=$?
      log "$n exited on its own (exit $rc); see $logs/$n.log"
      unset "pids[$n]"
    fi
  done
  sleep 1 & wait $! || true
done
log "every component has exited"
