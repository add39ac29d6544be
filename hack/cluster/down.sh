#!/usr/bin/env bash
# Tears the local cluster down and puts the host back as it was, also after a
# crashed or half-finished up.sh: stops the daemons (apiserver before etcd),
# kills every process left in the cluster's network namespace and in kubelet's
# cgroup subtree, removes that subtree, the network namespace (with bridge,
# veths and every iptables rule in it), the /run/netns mount `ip netns add`
# made, the mount points it had to create, and $STATE. The component logs are
# kept in $STATE.last-logs for debugging.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

[ "$(id -u)" = 0 ] || die "tearing the local cluster down needs root"
t0=$SECONDS

# The processes that belong to the cluster: everything in its network
# namespace (daemons, containerd shims) and in kubelet's cgroup subtree (pods,
# which have network namespaces of their own).
cluster_pids() {
  {
    ip netns pids "$NETNS" 2>/dev/null
    find /sys/fs/cgroup/*/"${CGROUP_ROOT#/}" -name cgroup.procs -exec cat {} + 2>/dev/null
  } | grep -vx -e "$$" -e "$BASHPID" | sort -un
}

# 1. A graceful stop first: node.sh stops the daemons in dependency order.
if [ -f "$STATE/node.pid" ] && kill -0 "$(cat "$STATE/node.pid")" 2>/dev/null; then
  log "stopping the node supervisor"
  kill -TERM "$(cat "$STATE/node.pid")" 2>/dev/null
  for _ in $(seq 200); do kill -0 "$(cat "$STATE/node.pid")" 2>/dev/null || break; sleep 0.2; done
fi

# 2. Whatever is left (pods, shims; everything after a crash): SIGTERM, a
#    short grace period, then SIGKILL until nothing is left.
left=$(cluster_pids)
if [ -n "$left" ]; then
  log "terminating $(echo "$left" | wc -w) leftover processes"
  kill -TERM $left 2>/dev/null
  for _ in $(seq 25); do [ -z "$(cluster_pids)" ] && break; sleep 0.2; done
fi
for i in $(seq 100); do
  left=$(cluster_pids)
  [ -z "$left" ] && break
  kill -KILL $left 2>/dev/null
  sleep 0.1
  [ "$i" = 100 ] && log "WARNING: processes survive SIGKILL: $left"
done

# 3. kubelet's cgroup subtree, depth first, in every hierarchy.
for d in /sys/fs/cgroup/*/"${CGROUP_ROOT#/}"; do
  [ -d "$d" ] || continue
  find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  [ -d "$d" ] && log "WARNING: could not remove cgroup $d"
done

# 4. The network namespace: its bridge, veths and iptables rules go with it.
if ip netns list | awk '{print $1}' | grep -qx "$NETNS"; then
  ip netns del "$NETNS" || log "WARNING: could not delete network namespace $NETNS"
fi
ip link show "$VETH_HOST" >/dev/null 2>&1 && ip link del "$VETH_HOST"

# 5. `ip netns add` turned /run/netns into a shared bind mount of itself; undo
#    that if it was not one before and no other namespace uses it now.
if [ "$(cat "$STATE/host-run-netns-mounted" 2>/dev/null)" = no ] && [ -z "$(ip netns list)" ]; then
  while mountpoint -q /run/netns; do umount /run/netns || break; done
  if [ "$(cat "$STATE/host-run-netns-existed" 2>/dev/null)" = no ]; then rmdir /run/netns 2>/dev/null; fi
fi

# 6. Mount points up.sh had to create on the host (they are empty there).
#    Another harness cluster running on this machine has its own bind mounts
#    on them, so hand them over to it instead: it removes them when it goes.
other=
for pidfile in "$(dirname "$STATE")"/*/node.pid; do
  [ -f "$pidfile" ] && [ "$(dirname "$pidfile")" != "$STATE" ] || continue
  kill -0 "$(cat "$pidfile")" 2>/dev/null && other=$(dirname "$pidfile") && break
done
if [ -s "$STATE/created-paths" ] && [ -n "$other" ]; then
  log "cluster in $other is running and uses $(tr '\n' ' ' <"$STATE/created-paths"); leaving them to its teardown"
  cat "$STATE/created-paths" >>"$other/created-paths"
elif [ -f "$STATE/created-paths" ]; then
  tac "$STATE/created-paths" | while read -r p; do
    find "$p" -depth -type d -empty -delete 2>/dev/null
    [ -e "$p" ] && log "WARNING: $p is not empty; left in place"
  done
fi

# 7. kubelet writes its sysctls into files bind-mounted over them, so these
#    never change; should one have, restore it.
if [ -f "$STATE/host-sysctls" ]; then
  while IFS== read -r k v; do
    cur=$(cat "/proc/sys/$k")
    if [ "$cur" != "$v" ]; then
      log "WARNING: restoring sysctl $k from $cur to $v"
      echo "$v" >"/proc/sys/$k"
    fi
  done <"$STATE/host-sysctls"
fi

# 8. The state directory; logs are kept.
if [ -d "$STATE" ]; then
  rm -rf "$STATE.last-logs"
  [ -d "$STATE/logs" ] && mv "$STATE/logs" "$STATE.last-logs"
  rm -rf "$STATE"
fi
log "cluster $CLUSTER torn down in $((SECONDS - t0))s (logs kept in $STATE.last-logs)"
