#!/usr/bin/env bash
# kubectl (the harness's v1.37 build, not the machine's old one) as the
# cluster admin of the local cluster, from the host:
#   hack/cluster/kubectl.sh get pods -A
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
exec "$(k8s_bin_dir)/kubectl" --kubeconfig "$STATE/pki/admin.kubeconfig" "$@"
