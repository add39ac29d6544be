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
{{- end }}
