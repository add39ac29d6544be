#!/usr/bin/env bash
# Runs the e2e suite (go test -tags e2e in the e2e module) against the local
# cluster, bringing it up first if it is not up. Extra arguments go to
# `go test` (e.g. -run TestClusterSmoke). With KUBECONFIG already set to
# another cluster (kind), use `cd e2e && go test -tags e2e ./...` directly.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/lib.sh"

"$here/up.sh"
export KUBECONFIG=$STATE/pki/admin.kubeconfig
export PODMETA_IMAGE_REGISTRY=$IMAGE_REGISTRY PODMETA_IMAGE_TAG=$IMAGE_TAG
cd "$repo/e2e"
t0=$SECONDS
rc=0
go test -tags e2e -count=1 -timeout 20m "$@" ./... || rc=$?
log "e2e tests finished in $((SECONDS - t0))s (exit $rc)"
if [ $rc != 0 ]; then
  log "component log tails follow (full logs: $STATE/logs)"
  log_tails 30
fi
exit $rc
