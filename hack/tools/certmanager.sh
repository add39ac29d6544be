#!/usr/bin/env bash
# Builds hack/certmanager (cert-manager's controller and CA injector wired from
# its exported Go packages; see hack/certmanager/main.go for why) as a static
# binary and prints its path. Cached outside the repo, keyed by the
# cert-manager version and a hash of the tool's own sources, so an edit
# rebuilds and everything else reuses it.
#
#   BIN=$(hack/tools/certmanager.sh)
#
# Also prints nothing but the path on stdout; progress goes to stderr.
# CRDS=1 prints the directory holding cert-manager's CRDs instead (from the
# same module version, in the Go module cache).
set -euo pipefail
export PATH=$PATH:/usr/local/go/bin
root=$(cd "$(dirname "$0")/../.." && pwd)
src=$root/hack/certmanager
version=$(cd "$src" && go list -m -f '{{.Version}}' github.com/cert-manager/cert-manager)

if [ "${CRDS:-}" = 1 ]; then
  dir=$(cd "$src" && go mod download -json github.com/cert-manager/cert-manager | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  echo "$dir/deploy/crds"
  exit 0
fi

hash=$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -c1-12)
CACHE=${PODMETA_CACHE:-/var/cache/podmeta}
dir=$CACHE/certmanager/$version-$hash
bin=$dir/podmeta-certmanager
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if [ ! -x "$bin" ]; then
  echo "certmanager.sh: building cert-manager $version tools into $dir (3-4 minutes the first time)" >&2
  start=$(date +%s)
  (cd "$src" && CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "-s -w" -o "$bin.tmp" .)
  mv "$bin.tmp" "$bin"
  echo "certmanager.sh: built in $(( $(date +%s) - start ))s" >&2
fi
echo "$bin"
