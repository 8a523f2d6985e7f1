{{/* Names */}}
{{- define "audit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "audit.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "audit.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "audit.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels: app.kubernetes.io/* plus a component label (api, consumer, setup, nats, postgresql) */}}
{{- define "audit.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
app.kubernetes.io/name: {{ include "audit.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: audit
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "audit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "audit.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Where things are */}}
{{- define "audit.natsHost" -}}{{ include "audit.fullname" . }}-nats{{- end -}}
{{- define "audit.postgresHost" -}}{{ include "audit.fullname" . }}-postgresql{{- end -}}

{{- define "audit.natsUrl" -}}
{{- if .Values.nats.bundled.enabled -}}
nats://{{ include "audit.natsHost" . }}:4222
{{- else -}}
{{- required "nats.url is required when nats.bundled.enabled is false" .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{- define "audit.natsMonitoringEndpoint" -}}
{{- if .Values.nats.bundled.enabled -}}
{{ include "audit.natsHost" . }}.{{ .Release.Namespace }}.svc.cluster.local:8222
{{- else -}}
{{- required "nats.monitoringEndpoint (host:port) is required for KEDA when NATS is external" .Values.nats.monitoringEndpoint -}}
{{- end -}}
{{- end -}}

{{- define "audit.secretName" -}}
{{- default (printf "%s-secrets" (include "audit.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "audit.configName" -}}{{ include "audit.fullname" . }}-config{{- end -}}

{{/* Non-secret configuration shared by every app (rendered for the apps and for the setup hook) */}}
{{- define "audit.configData" -}}
NATS_URL: {{ include "audit.natsUrl" . | quote }}
AUDIT_STREAM: {{ .Values.jetstream.stream | quote }}
AUDIT_DLQ_STREAM: {{ .Values.jetstream.dlqStream | quote }}
AUDIT_DURABLE: {{ .Values.jetstream.durable | quote }}
AUDIT_SUBJECT_PREFIX: {{ .Values.jetstream.subjectPrefix | quote }}
AUDIT_STREAM_REPLICAS: {{ .Values.jetstream.replicas | quote }}
AUDIT_SETUP_WAIT_SECONDS: {{ .Values.setup.waitSeconds | quote }}
AUDIT_LOG_FORMAT: {{ .Values.logFormat | quote }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ .Values.otel.endpoint | quote }}
{{- end -}}

{{/* Database URLs. Least privilege: the consumer gets only its writer login (INSERT/SELECT
through audit_writer), the API none, and only the setup hook the owner's URL (it migrates and
creates the writer login). */}}
{{- define "audit.writerUrl" -}}
{{- $pg := .Values.postgresql.bundled -}}
{{- if $pg.enabled -}}
{{- printf "postgresql://audit_consumer:%s@%s:5432/%s" .Values.secrets.writerPassword (include "audit.postgresHost" .) $pg.database -}}
{{- else -}}
{{- required "secrets.writerDatabaseUrl is required when postgresql.bundled is off (the consumer never gets the owner's URL)" .Values.secrets.writerDatabaseUrl -}}
{{- end -}}
{{- end -}}

{{- define "audit.ownerUrl" -}}
{{- $pg := .Values.postgresql.bundled -}}
{{- if $pg.enabled -}}
{{- printf "postgresql://%s:%s@%s:5432/%s" $pg.user $pg.password (include "audit.postgresHost" .) $pg.database -}}
{{- else -}}
{{- required "secrets.databaseUrl is required when postgresql.bundled is off and no existingSecret" .Values.secrets.databaseUrl -}}
{{- end -}}
{{- end -}}

{{/* What the apps' Secret holds (the owner's URL is only in the setup hook's Secret) */}}
{{- define "audit.appSecretData" -}}
AUDIT_JWT_SECRET: {{ include "audit.jwtSecret" . | quote }}
AUDIT_WRITER_DATABASE_URL: {{ include "audit.writerUrl" . | b64enc | quote }}
{{- end -}}

{{- define "audit.setupSecretData" -}}
DATABASE_URL: {{ include "audit.ownerUrl" . | b64enc | quote }}
AUDIT_WRITER_DATABASE_URL: {{ include "audit.writerUrl" . | b64enc | quote }}
{{- end -}}

{{/* The JWT secret: the given one, else the one this release already stored, else a new
random one (so `helm install` works out of the box and upgrades keep tokens valid). */}}
{{- define "audit.jwtSecret" -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "audit.secretName" .) -}}
{{- if .Values.secrets.jwtSecret -}}
{{- .Values.secrets.jwtSecret | b64enc -}}
{{- else if and $existing (index ($existing.data | default dict) "AUDIT_JWT_SECRET") -}}
{{- index $existing.data "AUDIT_JWT_SECRET" -}}
{{- else -}}
{{- randAlphaNum 48 | b64enc -}}
{{- end -}}
{{- end -}}

{{/* "repository:tag" of an image; the tag defaults to the chart's appVersion */}}
{{- define "audit.image" -}}
{{- $root := index . 0 -}}{{- $image := index . 1 -}}
{{- printf "%s:%s" $image.repository ($image.tag | default $root.Chart.AppVersion) | quote -}}
{{- end -}}

{{/* Where pods may run, and their extra annotations: the same values for every app pod */}}
{{- define "audit.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Hardened security contexts */}}
{{- define "audit.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default 10001 }}
runAsGroup: {{ .uid | default 10001 }}
fsGroup: {{ .uid | default 10001 }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "audit.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Config checksums: pods roll when their configuration changes */}}
{{- define "audit.checksums" -}}
checksum/config: {{ include "audit.configData" . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include "audit.writerUrl" . | sha256sum }}
{{- end }}
{{- end -}}
