#!/usr/bin/env bash
# Installs the Debian packages the local cluster needs, only if missing:
# containerd (the CRI runtime), runc, the CNI plugins (bridge, host-local,
# loopback, portmap), iptables (kube-proxy, CNI) and conntrack.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

pkgs=(containerd runc containernetworking-plugins iptables conntrack procps)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  log "Debian packages present: ${pkgs[*]}"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "need root to install: ${missing[*]}"
log "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# --no-install-recommends keeps docker-adjacent extras (and their services) out.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
log "installed: ${missing[*]}"
