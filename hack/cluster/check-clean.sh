#!/usr/bin/env bash
# Proves that the local cluster leaves no trace on the host:
#
#   hack/cluster/check-clean.sh snapshot FILE   # before cluster-up
#   hack/cluster/check-clean.sh compare FILE    # after cluster-down; exit 1 and a diff if anything changed
#
# It records what the harness could leave behind: network links, addresses,
# routes and namespaces, mounts, iptables/ip6tables rules (nft and legacy),
# sysctls (minus counters that change by themselves), cgroups, the mount points
# the harness may create, and processes running cluster binaries.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

snapshot() {
  echo "## links"; ip -o link show | awk '{print $2, $3}' | sort
  echo "## addresses"; ip -o addr show | awk '{print $2, $3, $4}' | sort
  echo "## routes"; { ip route show table all; ip -6 route show table all; } | sort
  echo "## network namespaces"; ip netns list 2>/dev/null | sort
  echo "## mounts"; awk '{ for (i = 7; $i != "-"; i++); print $5, $(i+1) }' /proc/self/mountinfo | sort
  local t
  for t in iptables-nft-save ip6tables-nft-save iptables-legacy-save ip6tables-legacy-save; do
    echo "## $t"
    if command -v "$t" >/dev/null; then "$t" 2>/dev/null | sed -e '/^#/d' -e 's/\[[0-9]*:[0-9]*\]//'; fi
  done
  echo "## sysctls"
  sysctl -a 2>/dev/null | grep -Ev '^(fs\.(dentry-state|file-nr|inode-nr|inode-state|aio-nr|quota\.)|kernel\.(ns_last_pid|random\.|pty\.nr)|net\.netfilter\.nf_conntrack_count)' | sort
  echo "## cgroups"; find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -type d | sort
  echo "## paths"
  local p
  for p in $HARDCODED_PATHS /run/netns /etc/cni /opt/containerd /var/lib/containerd; do
    if [ -e "$p" ]; then echo "$p exists"; else echo "$p absent"; fi
  done
  echo "## processes of cluster binaries"
  local exe
  for exe in /proc/[0-9]*/exe; do readlink "$exe" 2>/dev/null || true; done |
    grep -E "^$PODMETA_CACHE/|/(containerd|containerd-shim[^/]*|runc|etcd|kube-[a-z-]+|kubelet|pause|testapp|podmeta-[a-z]+)$" | sort -u || true
}

case ${1:-} in
snapshot)
  [ -n "${2:-}" ] || die "usage: $0 snapshot FILE"
  snapshot >"$2"
  log "host state recorded in $2"
  ;;
compare)
  [ -f "${2:-}" ] || die "usage: $0 compare FILE (taken with: $0 snapshot FILE)"
  now=$(mktemp)
  trap 'rm -f "$now"' EXIT
  snapshot >"$now"
  if ! diff -u "$2" "$now"; then
    die "the host differs from before the cluster was brought up (diff above: - before, + now)"
  fi
  log "host state is identical to $2"
  ;;
*) die "usage: $0 snapshot|compare FILE" ;;
esac
