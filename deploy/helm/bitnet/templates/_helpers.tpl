{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "bitnet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name of every object. */}}
{{- define "bitnet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "bitnet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bitnet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bitnet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "bitnet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The chart's Secret: only for values given inline. */}}
{{- define "bitnet.secretName" -}}
{{- include "bitnet.fullname" . }}
{{- end }}

{{- define "bitnet.needsSecret" -}}
{{- if or (and .Values.database.url (not .Values.database.existingSecret)) (and .Values.redis.url (not .Values.redis.existingSecret)) (and .Values.webhook.secret (not .Values.webhook.existingSecret)) }}true{{- end }}
{{- end }}

{{/* An env entry read from a Secret: (dict "env" NAME "cfg" .Values.x "key" KEY "ctx" $). */}}
{{- define "bitnet.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .cfg.existingSecret | default (include "bitnet.secretName" .ctx) }}
      key: {{ if .cfg.existingSecret }}{{ .cfg.existingSecretKey }}{{ else }}{{ .key }}{{ end }}
{{- end }}

{{/* A flag value: whole numbers without the float formatting of JSON-decoded values. */}}
{{- define "bitnet.scalar" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/* Replicas share state only through PostgreSQL and Redis. */}}
{{- define "bitnet.validate" -}}
{{- $multi := or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- if and $multi (not (or .Values.database.url .Values.database.existingSecret)) }}
{{- fail "more than one replica needs a shared database: set database.url (postgres://…) or database.existingSecret" }}
{{- end }}
{{- if and $multi (not (or .Values.redis.url .Values.redis.existingSecret)) }}
{{- fail "more than one replica needs Redis for shared rate limits: set redis.url or redis.existingSecret" }}
{{- end }}
{{- if and .Values.webhook.url (not (or .Values.webhook.secret .Values.webhook.existingSecret)) }}
{{- fail "webhook.url needs webhook.secret or webhook.existingSecret (events are signed)" }}
{{- end }}
{{- if and (eq .Values.model.source "image") (not .Values.model.image.repository) }}
{{- fail "model.source=image needs model.image.repository" }}
{{- end }}
{{- end }}

{{/* The container's environment: secrets by reference. */}}
{{- define "bitnet.env" -}}
{{- if or .Values.database.url .Values.database.existingSecret }}
{{- include "bitnet.secretEnv" (dict "env" "BITNET_DATABASE_URL" "cfg" .Values.database "key" "database-url" "ctx" $) | nindent 0 }}
{{- end }}
{{- if or .Values.redis.url .Values.redis.existingSecret }}
{{- include "bitnet.secretEnv" (dict "env" "BITNET_REDIS_URL" "cfg" .Values.redis "key" "redis-url" "ctx" $) | nindent 0 }}
{{- end }}
{{- if .Values.webhook.url }}
- name: BITNET_WEBHOOK_URL
  value: {{ .Values.webhook.url | quote }}
{{- include "bitnet.secretEnv" (dict "env" "BITNET_WEBHOOK_SECRET" "cfg" .Values.webhook "key" "webhook-secret" "ctx" $) | nindent 0 }}
{{- end }}
{{- with .Values.extraEnv }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end }}
