#!/usr/bin/env bash
# Installs podmeta into a cluster the way a user does: `helm upgrade --install`
# of charts/podmeta, with the webhook and ambassador images built from this
# checkout (pullPolicy Never: there is no registry), then waits until the
# webhook really answers admission requests.
#
#   hack/e2e/deploy.sh            # the local cluster (hack/cluster/up.sh must have run)
#
# Settings (environment):
#   PODMETA_TARGET=local|kind   where images go: the local cluster's containerd
#                               (default) or `kind load image-archive` into
#                               $KIND_CLUSTER
#   PODMETA_CERT_MODE=secret|cert-manager
#                               secret (default): a CA and serving certificate
#                               generated here, installed as the chart's
#                               certificates.mode=secret; cert-manager: the
#                               chart's default (cert-manager must be running)
#   PODMETA_NAMESPACE (podmeta-system), PODMETA_RELEASE (podmeta)
#   KUBECONFIG                  default: the local cluster's admin kubeconfig
#   HELM                        helm binary; default: hack/tools/helm.sh, or helm on PATH
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$repo/hack/cluster/lib.sh"
export PATH=$PATH:/usr/local/go/bin

TARGET=${PODMETA_TARGET:-local}
CERT_MODE=${PODMETA_CERT_MODE:-secret}
NAMESPACE=${PODMETA_NAMESPACE:-podmeta-system}
RELEASE=${PODMETA_RELEASE:-podmeta}
CHART=${PODMETA_CHART:-$repo/charts/podmeta}
case $TARGET in
  local) WORK=${PODMETA_WORK:-$STATE/podmeta}; export KUBECONFIG=${KUBECONFIG:-$STATE/pki/admin.kubeconfig} ;;
  kind) WORK=${PODMETA_WORK:-${TMPDIR:-/tmp}/podmeta-kind-${KIND_CLUSTER:?KIND_CLUSTER is required with PODMETA_TARGET=kind}} ;;
  *) die "PODMETA_TARGET must be local or kind, got $TARGET" ;;
esac
[ -f "$CHART/Chart.yaml" ] || die "no Helm chart at $CHART"
# The chart names its objects RELEASE-podmeta, or RELEASE when the release name contains "podmeta".
case $RELEASE in *podmeta*) FULLNAME=$RELEASE ;; *) FULLNAME=$RELEASE-podmeta ;; esac

if [ -z "${HELM:-}" ]; then
  if [ -x "$repo/hack/tools/helm.sh" ]; then HELM=$("$repo/hack/tools/helm.sh")
  elif command -v helm >/dev/null; then HELM=helm
  else die "helm not found: set HELM or put helm on PATH"; fi
fi
if [ -z "${KUBECTL:-}" ]; then
  if [ -x "$(k8s_bin_dir)/kubectl" ]; then KUBECTL=$(k8s_bin_dir)/kubectl; else KUBECTL=kubectl; fi
fi
k() { "$KUBECTL" "$@"; }
mkdir -p "$WORK"
t0=$SECONDS
phase() { log "deploy: $1 (+$((SECONDS - t0))s)"; }

# 1. Images: static Go binaries in single-layer images (e2e/internal/imagebuild).
phase "building the webhook, ambassador and testapp images"
(cd "$repo/e2e" && go build -o "$WORK/harness" ./cmd/harness)
"$WORK/harness" images -repo-root "$repo" -out "$WORK/images" -registry "$IMAGE_REGISTRY" -tag "$IMAGE_TAG" \
  webhook ambassador testapp >&2
for img in webhook ambassador testapp; do
  grep -q "^$img " "$WORK/images/images.txt" || die "image $img was not built (see above)"
done
while read -r name ref tarball; do
  case $TARGET in
    local)
      # containerd runs in the cluster's own mount namespace, where its socket is.
      pid=$(cat "$STATE/pids/containerd" 2>/dev/null) || die "the local cluster is not up (no containerd pid in $STATE/pids); run make cluster-up"
      nsenter --target "$pid" --mount ctr -n k8s.io images import "$tarball" >/dev/null ||
        die "importing $tarball into the local cluster's containerd failed"
      ;;
    kind) kind load image-archive --name "$KIND_CLUSTER" "$tarball" >&2 ;;
  esac
  log "deploy: loaded $ref"
done <"$WORK/images/images.txt"
# Same tag, new content: a changed digest in the pod template rolls the webhook.
webhook_digest=$(sha256sum "$WORK/images/webhook.tar" | cut -c1-16)

# 2. The serving certificate, when cert-manager does not issue it.
values=$WORK/values.yaml
cat >"$values" <<YAML
# Written by hack/e2e/deploy.sh: the chart's values for images built from this checkout.
image:
  repository: $IMAGE_REGISTRY/webhook
  tag: "$IMAGE_TAG"
  pullPolicy: Never
podAnnotations:
  e2e.podmeta.io/webhook-image: "$webhook_digest"
config:
  ambassador:
    image:
      repository: $IMAGE_REGISTRY/ambassador
      tag: "$IMAGE_TAG"
      pullPolicy: Never
YAML
k get namespace "$NAMESPACE" >/dev/null 2>&1 || k create namespace "$NAMESPACE" >/dev/null
case $CERT_MODE in
  secret)
    phase "serving certificate for $FULLNAME.$NAMESPACE.svc"
    (cd "$repo/e2e" && go run ./cmd/servingcert -dir "$WORK/tls" \
      -dns "$FULLNAME.$NAMESPACE.svc" -dns "$FULLNAME.$NAMESPACE.svc.cluster.local" -dns "$FULLNAME.$NAMESPACE" -dns "$FULLNAME")
    k -n "$NAMESPACE" create secret tls "$FULLNAME-e2e-tls" --cert "$WORK/tls/tls.crt" --key "$WORK/tls/tls.key" \
      --dry-run=client -o yaml | k apply -f - >/dev/null
    cat >>"$values" <<YAML
certificates:
  mode: secret
  secret:
    name: $FULLNAME-e2e-tls
    caBundle: $(base64 -w0 "$WORK/tls/ca.crt")
YAML
    ;;
  cert-manager) ;;
  *) die "PODMETA_CERT_MODE must be secret or cert-manager, got $CERT_MODE" ;;
esac

# 3. helm install; --wait covers the Deployment's rollout.
phase "helm upgrade --install $RELEASE $CHART"
"$HELM" upgrade --install "$RELEASE" "$CHART" --namespace "$NAMESPACE" --values "$values" \
  --wait --timeout 5m >&2 || {
  log "deploy: helm failed; the webhook pods and their events:"
  k -n "$NAMESPACE" get pods -o wide >&2 || true
  k -n "$NAMESPACE" get events --sort-by=.lastTimestamp >&2 | tail -20 || true
  exit 1
}

# 4. Ready means admission works: the API server reaches the webhook through
# its Service (kube-proxy, TLS against the caBundle) and the pod comes back
# injected. A server-side dry run stores nothing.
phase "waiting until the webhook injects (server-side dry run)"
probe() {
  k create --dry-run=server -o 'jsonpath={.metadata.annotations.podmeta\.io/status}' -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: podmeta-deploy-probe, namespace: default, labels: {podmeta.io/inject: "true"}}
spec: {containers: [{name: probe, image: $IMAGE_REGISTRY/testapp:$IMAGE_TAG}]}
YAML
}
deadline=$((SECONDS + 120))
until out=$(probe 2>&1) && [ -n "$out" ]; do
  if [ $SECONDS -ge $deadline ]; then
    log "deploy: the webhook did not inject a dry-run pod within 120s; last answer: $out"
    k -n "$NAMESPACE" get pods,endpoints -o wide >&2 || true
    exit 1
  fi
  sleep 1
done
phase "podmeta is installed in namespace $NAMESPACE and injecting"
