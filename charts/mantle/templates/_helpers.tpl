{{/* Names and labels. */}}
{{- define "mantle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mantle.fullname" -}}
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

{{- define "mantle.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "mantle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The daemon's pods: the Service, HPA, PDB and NetworkPolicy select these (the
migration Job's pod carries other labels, so it never receives traffic). */}}
{{- define "mantle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mantle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "mantle.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mantle.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mantle.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion (toString .Values.image.tag)) }}
{{- end }}

{{/* Where the daemon keeps its data, and where the keys file is mounted. */}}
{{- define "mantle.dataDir" -}}/var/lib/mantle{{- end }}
{{- define "mantle.keysDir" -}}/etc/mantle/tenant-keys{{- end }}
{{- define "mantle.keysFile" -}}tenant-keys.json{{- end }}

{{/* Storage: PostgreSQL when a postgres:// URL or an existing Secret (which must hold one)
is given; the embedded SQLite database otherwise. Renders "true" or "". */}}
{{- define "mantle.postgres" -}}
{{- if or .Values.existingSecret (hasPrefix "postgres://" .Values.secret.databaseUrl) (hasPrefix "postgresql://" .Values.secret.databaseUrl) }}true{{ end }}
{{- end }}

{{/* The Secret the daemon's credentials come from. */}}
{{- define "mantle.secretName" -}}
{{- default (include "mantle.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* Whether the chart renders its own Secret: "true" or "". */}}
{{- define "mantle.chartSecret" -}}
{{- if and (not .Values.existingSecret) (or .Values.secret.databaseUrl .Values.secret.encryptionKey .Values.secret.encryptionKeyPrevious (include "mantle.keysInChartSecret" .)) }}true{{ end }}
{{- end }}

{{- define "mantle.keysInChartSecret" -}}
{{- if and .Values.tenantKeys.enabled (not .Values.tenantKeys.existingSecret) (not .Values.existingSecret) }}true{{ end }}
{{- end }}

{{- define "mantle.keysSecretName" -}}
{{- default (include "mantle.secretName" .) .Values.tenantKeys.existingSecret }}
{{- end }}

{{/* config.* key -> environment variable. */}}
{{- define "mantle.configKeys" -}}
logLevel: MANTLE_LOG_LEVEL
logFormat: MANTLE_LOG_FORMAT
shutdownGracePeriodSeconds: MANTLE_SHUTDOWN_GRACE_PERIOD
retentionDays: MANTLE_RETENTION_DAYS
auditRetentionDays: MANTLE_AUDIT_RETENTION_DAYS
retentionInterval: MANTLE_RETENTION_INTERVAL
databaseMaxConnections: MANTLE_DATABASE_MAX_CONNECTIONS
databaseConnectTimeout: MANTLE_DATABASE_CONNECT_TIMEOUT
engineLeaseTtl: MANTLE_ENGINE_LEASE_TTL
enginePollInterval: MANTLE_ENGINE_POLL_INTERVAL
idempotencyTtl: MANTLE_IDEMPOTENCY_TTL
maxStepOutputBytes: MANTLE_MAX_STEP_OUTPUT_BYTES
maxInputBytes: MANTLE_MAX_INPUT_BYTES
maxStepsPerWorkflow: MANTLE_MAX_STEPS_PER_WORKFLOW
maxRuntimeMinutes: MANTLE_MAX_RUNTIME_MINUTES
maxConcurrentExecutions: MANTLE_MAX_CONCURRENT_EXECUTIONS
rateLimitBackend: MANTLE_RATE_LIMIT_BACKEND
httpAllowPrivateNetworks: MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS
httpProxy: MANTLE_HTTP_PROXY
httpMaxBufferedBytes: MANTLE_HTTP_MAX_BUFFERED_BYTES
exprMaxCost: MANTLE_EXPR_MAX_COST
exprMaxValueBytes: MANTLE_EXPR_MAX_VALUE_BYTES
exprTimeout: MANTLE_EXPR_TIMEOUT
cpuThreads: MANTLE_CPU_THREADS
maxWatchStreams: MANTLE_MAX_WATCH_STREAMS
aiAllowedBaseUrls: MANTLE_AI_ALLOWED_BASE_URLS
aiMaxToolResultBytes: MANTLE_AI_MAX_TOOL_RESULT_BYTES
aiMaxConversationBytes: MANTLE_AI_MAX_CONVERSATION_BYTES
maxCostUsd: MANTLE_MAX_COST_USD
{{- end }}

{{/* A value as the daemon reads it: whole numbers without an exponent (values files give
every number as a float). */}}
{{- define "mantle.scalar" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/* The ConfigMap's data, as YAML: the chart's fixed settings and config.*. The migration
Job sets the same variables inline (it runs before the ConfigMap exists). */}}
{{- define "mantle.configData" -}}
{{- $keys := include "mantle.configKeys" . | fromYaml }}
{{- $out := dict "MANTLE_API_ADDRESS" (printf "0.0.0.0:%d" (int .Values.service.port)) "MANTLE_DATA_DIR" (include "mantle.dataDir" .) }}
{{- if .Values.tenantKeys.enabled }}
{{- $_ := set $out "MANTLE_TENANT_KEYS_PATH" (printf "%s/%s" (include "mantle.keysDir" .) (include "mantle.keysFile" .)) }}
{{- end }}
{{- range $key, $value := .Values.config }}
{{- if eq $key "env" }}
{{- range $name, $v := $value }}
{{- $_ := set $out (printf "MANTLE_ENV_%s" $name) (include "mantle.scalar" $v) }}
{{- end }}
{{- else if not (hasKey $keys $key) }}
{{- fail (printf "config.%s is not a Mantle setting (the settings are the keys of config in values.yaml)" $key) }}
{{- else if eq $key "shutdownGracePeriodSeconds" }}
{{- $_ := set $out (get $keys $key) (printf "%ds" (int $value)) }}
{{- else if not (kindIs "invalid" $value) }}
{{- $_ := set $out (get $keys $key) (include "mantle.scalar" $value) }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* terminationGracePeriodSeconds: the daemon's drain plus a margin, from one value. */}}
{{- define "mantle.terminationGracePeriodSeconds" -}}
{{- add (int .Values.config.shutdownGracePeriodSeconds) (int .Values.terminationGraceMarginSeconds) }}
{{- end }}

{{/* Credentials from the Secret, as EnvVar objects. */}}
{{- define "mantle.secretEnv" -}}
{{- $name := include "mantle.secretName" . }}
{{- if .Values.existingSecret }}
- name: MANTLE_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ $name }}, key: MANTLE_DATABASE_URL}
- name: MANTLE_ENCRYPTION_KEY
  valueFrom:
    secretKeyRef: {name: {{ $name }}, key: MANTLE_ENCRYPTION_KEY}
- name: MANTLE_ENCRYPTION_KEY_PREVIOUS
  valueFrom:
    secretKeyRef: {name: {{ $name }}, key: MANTLE_ENCRYPTION_KEY_PREVIOUS, optional: true}
{{- else }}
{{- range $key, $value := dict "MANTLE_DATABASE_URL" .Values.secret.databaseUrl "MANTLE_ENCRYPTION_KEY" .Values.secret.encryptionKey "MANTLE_ENCRYPTION_KEY_PREVIOUS" .Values.secret.encryptionKeyPrevious }}
{{- if $value }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef: {name: {{ $name }}, key: {{ $key }}}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes every pod of the chart mounts: /tmp (the root filesystem is read-only). */}}
{{- define "mantle.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{/* Refuses values that would deploy something broken. */}}
{{- define "mantle.validate" -}}
{{- $postgres := include "mantle.postgres" . }}
{{- $url := .Values.secret.databaseUrl }}
{{- if and $url (not .Values.existingSecret) (not $postgres) (not (hasPrefix "sqlite:" $url)) }}
{{- fail "secret.databaseUrl: expected postgres://USER:PASSWORD@HOST:PORT/DB or sqlite:PATH" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not $postgres) }}
{{- fail (printf "replicaCount is %d but no PostgreSQL is configured: the embedded SQLite database serves one daemon at a time. Set secret.databaseUrl (postgres://…) or existingSecret, or replicaCount: 1" (int .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not $postgres) }}
{{- fail "autoscaling.enabled needs PostgreSQL: the embedded SQLite database serves one daemon at a time. Set secret.databaseUrl (postgres://…) or existingSecret" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (dig "requests" "cpu" "" .Values.resources)) }}
{{- fail "autoscaling.enabled needs resources.requests.cpu: the HPA scales on CPU utilization of the request" }}
{{- end }}
{{- if and .Values.persistence.enabled $postgres }}
{{- fail "persistence.enabled is for the embedded SQLite database; with PostgreSQL the pods keep nothing worth a volume" }}
{{- end }}
{{- if and $postgres (not .Values.existingSecret) (not .Values.secret.encryptionKey) }}
{{- fail "secret.encryptionKey is required with PostgreSQL (64 hex characters: mantle secrets generate-key), the same for every replica" }}
{{- end }}
{{- range $key := list "encryptionKey" "encryptionKeyPrevious" }}
{{- $v := get $.Values.secret $key }}
{{- if and $v (not $.Values.existingSecret) (not (regexMatch "^[0-9a-fA-F]{64}$" $v)) }}
{{- fail (printf "secret.%s: expected 64 hexadecimal characters (mantle secrets generate-key)" $key) }}
{{- end }}
{{- end }}
{{- if .Values.tenantKeys.enabled }}
{{- if ne (mod (int .Values.tenantKeys.defaultMode) 8) 0 }}
{{- fail (printf "tenantKeys.defaultMode %#o lets other users read the keys file, which the daemon refuses: use 0440 or 0400" (int .Values.tenantKeys.defaultMode)) }}
{{- end }}
{{- if and (include "mantle.keysInChartSecret" .) (not .Values.tenantKeys.json) }}
{{- fail "tenantKeys.enabled needs the file: tenantKeys.json, tenantKeys.existingSecret or existingSecret (key tenant-keys.json)" }}
{{- end }}
{{- end }}
{{- if not (has .Values.probes.type (list "grpc" "http")) }}
{{- fail (printf "probes.type: expected grpc or http, got %q" (toString .Values.probes.type)) }}
{{- end }}
{{- end }}

{{/* The readiness check (also the startup probe's): gRPC Health/Check of the service ""
or GET /readyz; both fail while the database does not answer. */}}
{{- define "mantle.readinessCheck" -}}
{{- if eq .Values.probes.type "grpc" -}}
grpc:
  port: {{ .Values.service.port }}
  service: ""
{{- else -}}
httpGet:
  path: /readyz
  port: grpc
{{- end }}
{{- end }}
