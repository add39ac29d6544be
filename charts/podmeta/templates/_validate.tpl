{{/*
Render-time checks of values that pass values.schema.json (JSON Schema cannot
compare two values) but could not work. Each fails `helm install`, `helm
upgrade` and `helm template` with the values at fault, instead of a Deployment
whose replicas crash-loop. Only exact, simple rules live here; the webhook
checks its whole config again when it starts (mutate.ParseConfig). Included
once, from deployment.yaml; renders nothing.
*/}}
{{- define "podmeta.validate" -}}
{{- /* The webhook refuses two injected env vars with one name. */}}
{{- $envOwner := dict }}
{{- range $key, $name := .Values.config.envNames }}
{{- if $name }}
{{- if hasKey $envOwner $name }}
{{- fail (printf "config.envNames.%s: %q is also the name of config.envNames.%s; every injected env var needs its own name (\"\" leaves one out)" (get $envOwner $name) $name $key) }}
{{- end }}
{{- $_ := set $envOwner $name $key }}
{{- end }}
{{- end }}

{{- /* That the shutdown delay leaves time for in-flight reviews is checked
where deployment.yaml computes --shutdown-grace (podmeta.shutdownGraceSeconds). */}}

{{- /* Two listeners cannot share a port: the replica would exit at start. */}}
{{- if eq (int .Values.ports.webhook) (int .Values.ports.metrics) }}
{{- fail (printf "ports.webhook and ports.metrics are both %d: the webhook's TLS listener and its metrics/health listener need different ports" (int .Values.ports.webhook)) }}
{{- end }}

{{- /* A budget that keeps every replica up allows no eviction at all: node
drains hang. minAvailable as a percentage is rounded up, so it covers
every replica when replicas * percent > 100 * (replicas - 1). */}}
{{- $replicas := int .Values.replicaCount }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (gt $replicas 1) }}
{{- $min := $pdb.minAvailable }}
{{- $blocks := false }}
{{- if and (kindIs "string" $min) (hasSuffix "%" $min) }}
{{- $pct := int (trimSuffix "%" $min) }}
{{- $blocks = gt (mul $replicas $pct) (mul 100 (sub $replicas 1)) }}
{{- else }}
{{- $blocks = ge (int $min) $replicas }}
{{- end }}
{{- if $blocks }}
{{- fail (printf "podDisruptionBudget.minAvailable (%v) must come to fewer than replicaCount (%d) replicas: a budget that keeps every replica up never allows an eviction and blocks every node drain" $min $replicas) }}
{{- end }}
{{- end }}

{{- /* maxSurge 0 and maxUnavailable 0: the rollout could never progress (the API server refuses it). */}}
{{- with .Values.updateStrategy.rollingUpdate }}
{{- if and (hasKey . "maxSurge") (hasKey . "maxUnavailable") }}
{{- if and (eq (toString .maxSurge | trimSuffix "%" | int) 0) (eq (toString .maxUnavailable | trimSuffix "%" | int) 0) }}
{{- fail "updateStrategy.rollingUpdate.maxSurge and maxUnavailable are both 0: the rolling update could never replace a replica (keep maxUnavailable 0 and maxSurge at least 1)" }}
{{- end }}
{{- end }}
{{- end }}

{{- /* matchCondition names are unique within the webhook; the chart's own are taken. */}}
{{- $conditionNames := dict }}
{{- if .Values.webhook.skipMirrorPods }}
{{- $_ := set $conditionNames "not-a-mirror-pod" "the chart's own condition (webhook.skipMirrorPods)" }}
{{- end }}
{{- range $i, $c := .Values.webhook.extraMatchConditions }}
{{- if hasKey $conditionNames $c.name }}
{{- fail (printf "webhook.extraMatchConditions[%d]: the name %q is already %s; matchCondition names must be unique" $i $c.name (get $conditionNames $c.name)) }}
{{- end }}
{{- $_ := set $conditionNames $c.name (printf "webhook.extraMatchConditions[%d]" $i) }}
{{- end }}
{{- end }}

{{/* --shutdown-grace in seconds: what the grace period leaves after the shutdown delay, minus one second of slack; the render fails when that is below 1 s. */}}
{{- define "podmeta.shutdownGraceSeconds" -}}
{{- $grace := int .Values.terminationGracePeriodSeconds }}
{{- $delay := int .Values.shutdownDelaySeconds }}
{{- $left := sub (sub $grace $delay) 1 }}
{{- if lt (int $left) 1 }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least shutdownDelaySeconds (%d) + 2: after the shutdown delay a replica gets the rest of the grace period minus 1 s (here %d s) to finish in-flight reviews, and needs at least 1 s before the kubelet kills it" $grace $delay $left) }}
{{- end }}
{{- $left }}
{{- end }}
