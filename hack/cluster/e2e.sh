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
# e2e/chart installs and uninstalls podmeta itself (release podmeta in
# podmeta-system, the same one hack/e2e/deploy.sh installs; one left from an
# earlier deploy is uninstalled first): run it first, alone, then install
# podmeta for every other package the way the README does, with cert-manager
# issuing its certificate. Both install hack/certmanager's test build of
# cert-manager if it is not running yet (e2e/certmanager.Ensure), so it is
# installed once, by whichever comes first, and stays until the cluster goes.
go test -tags e2e -count=1 -timeout 20m "$@" ./chart/... || rc=$?
deployed=0
"$repo/hack/e2e/deploy.sh" || deployed=$?
if [ $deployed != 0 ]; then
  rc=$deployed
else
  # shellcheck disable=SC2046
  go test -tags e2e -count=1 -timeout 20m "$@" $(go list -tags e2e ./... | grep -v '/e2e/chart$') || rc=$?
fi
log "e2e tests finished in $((SECONDS - t0))s (exit $rc)"
if [ $rc != 0 ]; then
  log "component log tails follow (full logs: $STATE/logs)"
  log_tails 30
fi
exit $rc
