#!/usr/bin/env bash
# Installs podmeta into a cluster the way the README's "Install with Helm"
# says: `helm install podmeta charts/podmeta` with the chart's default
# certificates (cert-manager issues them, cainjector injects the caBundle),
# the webhook and ambassador images built from this checkout (pullPolicy
# Never: there is no registry), then the README's waits (Certificate Ready,
# caBundle injected, rollout) and until the webhook really injects a pod.
# A release that is already installed is upgraded instead.
#
#   hack/e2e/deploy.sh            # the local cluster (hack/cluster/up.sh must have run)
#
# Settings (environment):
#   PODMETA_TARGET=local|kind   where images go: the local cluster's containerd
#                               (default) or `kind load image-archive` into
#                               $KIND_CLUSTER
#   PODMETA_CERT_MODE=cert-manager|secret
#                               cert-manager (default): the chart's default.
#                               On the local cluster, hack/certmanager's test
#                               build of cert-manager is installed first unless
#                               cert-manager already runs (`harness
#                               certmanager`, the code e2e/chart uses too);
#                               elsewhere (kind) cert-manager must be running.
#                               secret: for clusters without cert-manager; a CA
#                               and serving certificate generated here,
#                               installed as the chart's certificates.mode=secret
#   PODMETA_NAMESPACE (podmeta-system), PODMETA_RELEASE (podmeta)
#   KUBECONFIG                  default: the local cluster's admin kubeconfig
#   HELM                        helm binary; default: hack/tools/helm.sh, or helm on PATH
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$repo/hack/cluster/lib.sh"
export PATH=$PATH:/usr/local/go/bin

TARGET=${PODMETA_TARGET:-local}
CERT_MODE=${PODMETA_CERT_MODE:-cert-manager}
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

# 2. cert-manager (cert-manager mode), or the serving certificate when
# cert-manager does not issue it (secret mode).
# The same --set flags as the README's step 2, plus what a registry-less
# cluster needs: pullPolicy Never, and (same tag, new content) the webhook
# image's digest in the pod template so an upgrade rolls the pods.
helm_args=(
  --set "image.repository=$IMAGE_REGISTRY/webhook" --set "image.tag=$IMAGE_TAG"
  --set "config.ambassador.image.repository=$IMAGE_REGISTRY/ambassador" --set "config.ambassador.image.tag=$IMAGE_TAG"
  --set image.pullPolicy=Never --set config.ambassador.image.pullPolicy=Never
  --set-string "podAnnotations.e2e\.podmeta\.io/webhook-image=$webhook_digest"
)
case $CERT_MODE in
  cert-manager)
    phase "cert-manager"
    install=false
    if [ "$TARGET" = local ]; then
      install=true
      cm_image=$IMAGE_REGISTRY/certmanager:$IMAGE_TAG
      # hack/cluster/up.sh built and imported it with the cluster's other images.
      nsenter --target "$(cat "$STATE/pids/containerd")" --mount ctr -n k8s.io images ls -q "name==$cm_image" | grep -qx "$cm_image" ||
        die "image $cm_image is not in the local cluster's containerd; bring the cluster up again (make cluster-down cluster-up)"
    fi
    "$WORK/harness" certmanager -repo-root "$repo" -image "${cm_image:-}" -install=$install >&2 ||
      die "cert-manager is not running (for a cluster without it: PODMETA_CERT_MODE=secret)"
    ;;
  secret)
    phase "serving certificate for $FULLNAME.$NAMESPACE.svc"
    k get namespace "$NAMESPACE" >/dev/null 2>&1 || k create namespace "$NAMESPACE" >/dev/null
    (cd "$repo/e2e" && go run ./cmd/servingcert -dir "$WORK/tls" \
      -dns "$FULLNAME.$NAMESPACE.svc" -dns "$FULLNAME.$NAMESPACE.svc.cluster.local" -dns "$FULLNAME.$NAMESPACE" -dns "$FULLNAME")
    k -n "$NAMESPACE" create secret tls "$FULLNAME-e2e-tls" --cert "$WORK/tls/tls.crt" --key "$WORK/tls/tls.key" \
      --dry-run=client -o yaml | k apply -f - >/dev/null
    helm_args+=(--set certificates.mode=secret --set "certificates.secret.name=$FULLNAME-e2e-tls"
      --set "certificates.secret.caBundle=$(base64 -w0 "$WORK/tls/ca.crt")")
    ;;
  *) die "PODMETA_CERT_MODE must be cert-manager or secret, got $CERT_MODE" ;;
esac

# 3. helm install (helm upgrade when the release is there already: a re-run
# of make demo or make deploy on a cluster that is up).
diagnose() {
  log "deploy: $1; the webhook pods, certificates and events:"
  k -n "$NAMESPACE" get pods,certificates,certificaterequests -o wide >&2 || true
  k -n "$NAMESPACE" get events --sort-by=.lastTimestamp >&2 | tail -20 || true
  exit 1
}
status=$("$HELM" status "$RELEASE" --namespace "$NAMESPACE" -o json 2>/dev/null) || status=
if [ -n "$status" ]; then
  if ! grep -q '"status":"deployed"' <<<"$status"; then
    log "deploy: release $RELEASE is there but not deployed (a failed install?); uninstalling it first"
    "$HELM" uninstall "$RELEASE" --namespace "$NAMESPACE" --wait >&2
    status=
  fi
fi
if [ -n "$status" ]; then
  phase "helm upgrade $RELEASE $CHART"
  "$HELM" upgrade "$RELEASE" "$CHART" --namespace "$NAMESPACE" "${helm_args[@]}" >&2 || diagnose "helm upgrade failed"
else
  phase "helm install $RELEASE $CHART"
  "$HELM" install "$RELEASE" "$CHART" --namespace "$NAMESPACE" --create-namespace "${helm_args[@]}" >&2 ||
    diagnose "helm install failed"
fi

# 4. The README's waits, then more than it asks: the injected caBundle holds
# the CA in the serving Secret, and both replicas are Ready.
if [ "$CERT_MODE" = cert-manager ]; then
  phase "waiting for the Certificate and the caBundle"
  k -n "$NAMESPACE" wait "certificate/$FULLNAME-serving-cert" --for=condition=Ready --timeout=2m >&2 ||
    diagnose "Certificate $FULLNAME-serving-cert not Ready"
  k wait "mutatingwebhookconfiguration/$FULLNAME" --for=jsonpath='{.webhooks[0].clientConfig.caBundle}' --timeout=2m >&2 ||
    diagnose "cainjector did not inject the caBundle"
  # Every webhook's caBundle holds the serving Secret's CA (after an upgrade
  # from secret mode, the old bundle may still be there for a moment). Holds,
  # not is: cainjector merges a new CA into the bundle, keeping the ones that
  # have not expired, and cert-manager can issue the CA twice on a fresh
  # install (a race in its controllers); the bundle then has both, which is
  # harmless as they share the key (rotationPolicy Never).
  bundle_has_ca() {
    local ca b bundles
    ca=$(k -n "$NAMESPACE" get secret "$FULLNAME-serving-cert" -o 'jsonpath={.data.ca\.crt}') && [ -n "$ca" ] || return 1
    ca=$(base64 -d <<<"$ca") || return 1
    bundles=$(k get mutatingwebhookconfiguration "$FULLNAME" -o 'jsonpath={range .webhooks[*]}{.clientConfig.caBundle}{"\n"}{end}') || return 1
    [ -n "$bundles" ] || return 1
    while read -r b; do
      [ -n "$b" ] && [[ "$(base64 -d <<<"$b")" == *"$ca"* ]] || return 1
    done <<<"$bundles"
  }
  if ! wait_for 60 "the caBundle to hold the CA of Secret $FULLNAME-serving-cert" bundle_has_ca; then
    k get mutatingwebhookconfiguration "$FULLNAME" -o 'jsonpath={range .webhooks[*]}{.clientConfig.caBundle}{"\n"}{end}' |
      while read -r b; do log "deploy: a caBundle of $(base64 -d <<<"$b" | grep -c 'BEGIN CERTIFICATE') certificate(s)"; done || true
    diagnose "the webhook's caBundle does not hold the CA of Secret $FULLNAME-serving-cert"
  fi
fi
phase "waiting for the rollout"
k -n "$NAMESPACE" rollout status "deployment/$FULLNAME" --timeout=3m >&2 || diagnose "deployment $FULLNAME not rolled out"
ready=$(k -n "$NAMESPACE" get deployment "$FULLNAME" -o 'jsonpath={.status.readyReplicas}/{.spec.replicas}')
[ "${ready%/*}" = "${ready#*/}" ] || diagnose "deployment $FULLNAME: $ready replicas Ready"

# 5. Ready means admission works: the API server reaches the webhook through
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
phase "podmeta is installed in namespace $NAMESPACE ($CERT_MODE certificates, $ready replicas Ready) and injecting"
