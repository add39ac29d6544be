{{/* Chart name, overridable. */}}
{{- define "podmeta.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every object: RELEASE-podmeta, or RELEASE when it already
contains the chart name. Kept to 52 characters so suffixes like "-serving-cert"
still fit the 63-character label limit.
*/}}
{{- define "podmeta.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "podmeta.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades (a Deployment selector is immutable). */}}
{{- define "podmeta.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podmeta.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "podmeta.labels" -}}
helm.sh/chart: {{ include "podmeta.chart" . }}
{{ include "podmeta.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "podmeta.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "podmeta.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "podmeta.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Names of the cert-manager objects and the serving Secret. */}}
{{- define "podmeta.servingCertName" -}}
{{- printf "%s-serving-cert" (include "podmeta.fullname" .) }}
{{- end }}
{{- define "podmeta.caName" -}}
{{- printf "%s-ca" (include "podmeta.fullname" .) }}
{{- end }}
{{- define "podmeta.tlsSecretName" -}}
{{- if eq .Values.certificates.mode "secret" }}
{{- required "certificates.secret.name is required when certificates.mode is secret: the name of a kubernetes.io/tls Secret in the release namespace" .Values.certificates.secret.name }}
{{- else }}
{{- include "podmeta.servingCertName" . }}
{{- end }}
{{- end }}

{{/*
The injection config file the webhook reads (--config): .Values.config as
mutate.Config, with the ambassador image assembled from repository/tag
(tag defaulting to the appVersion) and its pull policy.
*/}}
{{- define "podmeta.config" -}}
{{- $c := deepCopy .Values.config }}
{{- $img := $c.ambassador.image }}
{{- $_ := set $c.ambassador "image" (printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag)) }}
{{- $_ = set $c.ambassador "imagePullPolicy" $img.pullPolicy }}
{{- toYaml $c | trimSuffix "\n" }}
{{- end }}

{{/*
Tolerations of the webhook pods: the user's, then NoExecute tolerations of a
not-ready or unreachable node for nodeFailureTolerationSeconds (the API server
would give 300 s), except for a taint that a user toleration already covers
for NoExecute: the taint manager applies the shortest matching toleration, so
adding the chart's would cut the user's short.
*/}}
{{- define "podmeta.tolerations" -}}
{{- $user := .Values.tolerations | default list }}
{{- /* Missing in a release's values from before the key existed (helm
upgrade --reuse-values): the default, not 0 (a set 0 stays 0). */}}
{{- $seconds := 30 }}
{{- if hasKey .Values "nodeFailureTolerationSeconds" }}
{{- $seconds = int .Values.nodeFailureTolerationSeconds }}
{{- end }}
{{- $out := $user }}
{{- range $key := list "node.kubernetes.io/not-ready" "node.kubernetes.io/unreachable" }}
{{- $covered := false }}
{{- range $user }}
{{- $sameKey := or (eq (.key | default "") $key) (and (empty .key) (eq (.operator | default "") "Exists")) }}
{{- if and $sameKey (or (empty .effect) (eq .effect "NoExecute")) }}
{{- $covered = true }}
{{- end }}
{{- end }}
{{- if not $covered }}
{{- $out = append $out (dict "key" $key "operator" "Exists" "effect" "NoExecute" "tolerationSeconds" $seconds) }}
{{- end }}
{{- end }}
{{- with $out }}
{{- toYaml . }}
{{- end }}
{{- end }}
