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
AUDIT_RETENTION_DAYS: {{ ternary .Values.retention.days 0 .Values.retention.enabled | quote }}
{{- end -}}

{{/* A secret's plain value: the one given in values, else the one this release already stored
(so upgrades keep passwords and tokens valid), else a new random one. Memoized in .Values for
the render, so every template that needs it (the app Secret, the setup hook's Secret, the NATS
server) gets the same value. Call: include "audit.secret" (list $ "KEY" given-value) */}}
{{- define "audit.secret" -}}
{{- $root := index . 0 -}}{{- $key := index . 1 -}}{{- $given := index . 2 -}}
{{- $kind := "" -}}{{- if gt (len .) 3 -}}{{- $kind = index . 3 -}}{{- end -}}
{{- $memo := $root.Values.secrets._generated | default dict -}}
{{- if not (hasKey $memo $key) -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace (include "audit.secretName" $root) -}}
{{- $stored := index (($existing | default dict).data | default dict) $key -}}
{{- $value := $given | default (and $stored ($stored | b64dec)) -}}
{{- if $value -}}
{{- else if eq $kind "ed25519" -}}{{- /* the sealing key (PEM; audit-keygen prints base64) */ -}}
{{- $value = genPrivateKey "ed25519" -}}
{{- else if eq $kind "sealCertificate" -}}{{- /* its public key, in the one form Helm can derive */ -}}
{{- $private := include "audit.secret" (list $root "AUDIT_SEAL_KEY" $root.Values.secrets.sealKey "ed25519") -}}
{{- $value = (genSelfSignedCertWithKey "audit-seal" nil nil 36500 $private).Cert -}}
{{- else -}}{{- /* a letter first: nats-server would parse a $VAR password starting with a digit as a number */ -}}
{{- $value = printf "%s%s" (randAlpha 1) (randAlphaNum 39) -}}
{{- end -}}
{{- $_ := set $memo $key $value -}}
{{- $_ := set $root.Values.secrets "_generated" $memo -}}
{{- end -}}
{{- index $memo $key -}}
{{- end -}}

{{/* Database URLs. Least privilege: the consumer gets only its writer login (INSERT/SELECT
through audit_writer), the API none, and only the setup hook the owner's URL (it migrates and
creates the writer login). Bundled PostgreSQL: both passwords generated. */}}
{{- define "audit.writerUrl" -}}
{{- $pg := .Values.postgresql.bundled -}}
{{- if $pg.enabled -}}
{{- $password := include "audit.secret" (list . "AUDIT_WRITER_PASSWORD" .Values.secrets.writerPassword) -}}
{{- printf "postgresql://audit_consumer:%s@%s:5432/%s" $password (include "audit.postgresHost" .) $pg.database -}}
{{- else -}}
{{- required "secrets.writerDatabaseUrl is required when postgresql.bundled is off (the consumer never gets the owner's URL)" .Values.secrets.writerDatabaseUrl -}}
{{- end -}}
{{- end -}}

{{- define "audit.readerUrl" -}}
{{- $pg := .Values.postgresql.bundled -}}
{{- if $pg.enabled -}}
{{- $password := include "audit.secret" (list . "AUDIT_READER_PASSWORD" .Values.secrets.readerPassword) -}}
{{- printf "postgresql://audit_verify:%s@%s:5432/%s" $password (include "audit.postgresHost" .) $pg.database -}}
{{- else -}}
{{- required "secrets.readerDatabaseUrl is required when postgresql.bundled is off (audit-verify reads with its own login)" .Values.secrets.readerDatabaseUrl -}}
{{- end -}}
{{- end -}}

{{- define "audit.queryUrl" -}}
{{- $pg := .Values.postgresql.bundled -}}
{{- if $pg.enabled -}}
{{- $password := include "audit.secret" (list . "AUDIT_QUERY_READER_PASSWORD" .Values.secrets.queryReaderPassword) -}}
{{- printf "postgresql://audit_query:%s@%s:5432/%s" $password (include "audit.postgresHost" .) $pg.database -}}
{{- else -}}
{{- required "secrets.queryDatabaseUrl is required when postgresql.bundled is off and query.enabled (audit-query reads with its own login)" .Values.secrets.queryDatabaseUrl -}}
{{- end -}}
{{- end -}}

{{/* Integrity keys (README, "Integrity"): the API signs events with AUDIT_EVENT_KEYS,
audit-query and audit-dlq the records they make with keys of their own; consumers and
audit-verify check with all of them (AUDIT_CHECK_EVENT_KEYS, the latter two bound to the
actions they record); consumers alone hold
AUDIT_SEAL_KEY; audit-verify gets the public key. */}}
{{- define "audit.integritySecretData" -}}
{{- if and .Values.secrets.sealKey (not .Values.secrets.sealPublicKeys) -}}
{{- fail "secrets.sealPublicKeys is required with secrets.sealKey (audit-keygen prints both)" -}}
{{- end -}}
{{- $api := include "audit.secret" (list . "AUDIT_EVENT_KEYS" .Values.secrets.eventKeys) }}
{{- $query := include "audit.secret" (list . "AUDIT_QUERY_EVENT_KEY" .Values.secrets.queryEventKey) }}
{{- $dlq := include "audit.secret" (list . "AUDIT_DLQ_EVENT_KEY" .Values.secrets.dlqEventKey) }}
{{- $retention := include "audit.secret" (list . "AUDIT_RETENTION_EVENT_KEY" .Values.secrets.retentionEventKey) }}
AUDIT_EVENT_KEYS: {{ $api | b64enc | quote }}
AUDIT_QUERY_EVENT_KEY: {{ $query | b64enc | quote }}
AUDIT_DLQ_EVENT_KEY: {{ $dlq | b64enc | quote }}
AUDIT_RETENTION_EVENT_KEY: {{ $retention | b64enc | quote }}
{{- /* each record-keeping producer's key may sign only its own actions (authorship.READS, REPLAYS, REMOVALS) */}}
AUDIT_CHECK_EVENT_KEYS: {{ list $api (printf "%s@audit.query|audit.read|audit.export|audit.feed" $query) (printf "%s@audit.dlq" $dlq) (printf "%s@audit.retention" $retention) | join "," | b64enc | quote }}
AUDIT_SEAL_KEY: {{ include "audit.secret" (list . "AUDIT_SEAL_KEY" .Values.secrets.sealKey "ed25519") | b64enc | quote }}
AUDIT_SEAL_PUBLIC_KEYS: {{ include "audit.secret" (list . "AUDIT_SEAL_PUBLIC_KEYS" .Values.secrets.sealPublicKeys "sealCertificate") | b64enc | quote }}
{{- if .Values.verify.enabled }}
AUDIT_READER_DATABASE_URL: {{ include "audit.readerUrl" . | b64enc | quote }}
{{- end }}
{{- if .Values.query.enabled }}
AUDIT_QUERY_DATABASE_URL: {{ include "audit.queryUrl" . | b64enc | quote }}
{{- end }}
{{- end -}}

{{- define "audit.ownerUrl" -}}
{{- $pg := .Values.postgresql.bundled -}}
{{- if $pg.enabled -}}
{{- $password := include "audit.secret" (list . "POSTGRES_PASSWORD" $pg.password) -}}
{{- printf "postgresql://%s:%s@%s:5432/%s" $pg.user $password (include "audit.postgresHost" .) $pg.database -}}
{{- else -}}
{{- required "secrets.databaseUrl is required when postgresql.bundled is off and no existingSecret" .Values.secrets.databaseUrl -}}
{{- end -}}
{{- end -}}

{{/* The Secret keys of the NATS identities' passwords (audit_events/broker.py PASSWORD_VARS) */}}
{{- define "audit.natsPasswordKeys" -}}
{{- list "AUDIT_NATS_API_PASSWORD" "AUDIT_NATS_CONSUMER_PASSWORD" "AUDIT_NATS_SETUP_PASSWORD" "AUDIT_NATS_QUERY_PASSWORD" "AUDIT_NATS_DLQ_PASSWORD" "AUDIT_NATS_RETENTION_PASSWORD" | toJson -}}
{{- end -}}

{{/* The apps' Secret: the JWT secret, the writer's URL, every NATS identity's password (the
bundled NATS server reads them too); generated values are stored so upgrades find them. The
owner's URL is only in the setup hook's Secret. */}}
{{- define "audit.appSecretData" -}}
AUDIT_JWT_SECRET: {{ include "audit.secret" (list . "AUDIT_JWT_SECRET" .Values.secrets.jwtSecret) | b64enc | quote }}
AUDIT_WRITER_DATABASE_URL: {{ include "audit.writerUrl" . | b64enc | quote }}
{{- range $key := include "audit.natsPasswordKeys" . | fromJsonArray }}
{{ $key }}: {{ include "audit.secret" (list $ $key "") | b64enc | quote }}
{{- end }}
{{ include "audit.integritySecretData" . }}
{{- if .Values.postgresql.bundled.enabled }}
AUDIT_WRITER_PASSWORD: {{ include "audit.secret" (list . "AUDIT_WRITER_PASSWORD" .Values.secrets.writerPassword) | b64enc | quote }}
AUDIT_READER_PASSWORD: {{ include "audit.secret" (list . "AUDIT_READER_PASSWORD" .Values.secrets.readerPassword) | b64enc | quote }}
AUDIT_QUERY_READER_PASSWORD: {{ include "audit.secret" (list . "AUDIT_QUERY_READER_PASSWORD" .Values.secrets.queryReaderPassword) | b64enc | quote }}
POSTGRES_PASSWORD: {{ include "audit.secret" (list . "POSTGRES_PASSWORD" .Values.postgresql.bundled.password) | b64enc | quote }}
{{- end }}
{{- end -}}

{{- define "audit.setupSecretData" -}}
DATABASE_URL: {{ include "audit.ownerUrl" . | b64enc | quote }}
AUDIT_WRITER_DATABASE_URL: {{ include "audit.writerUrl" . | b64enc | quote }}
{{- if .Values.verify.enabled }}
AUDIT_READER_DATABASE_URL: {{ include "audit.readerUrl" . | b64enc | quote }}
{{- end }}
{{- if .Values.query.enabled }}
AUDIT_QUERY_DATABASE_URL: {{ include "audit.queryUrl" . | b64enc | quote }}
{{- end }}
AUDIT_NATS_SETUP_PASSWORD: {{ include "audit.secret" (list . "AUDIT_NATS_SETUP_PASSWORD" "") | b64enc | quote }}
{{- end -}}

{{/* The bundled NATS server's users: the permissions of audit_events/broker.py for these
names (tests/chart checks the two agree), passwords from the server's environment */}}
{{- define "audit.natsAuthorization" -}}
{{- $j := .Values.jetstream -}}
{{- $setup := list -}}
{{- range $name := list $j.stream $j.dlqStream -}}
{{- range $verb := list "CREATE" "UPDATE" "INFO" -}}
{{- $setup = append $setup (printf "$JS.API.STREAM.%s.%s" $verb $name) -}}
{{- end -}}
{{- end -}}
{{- $setup = concat $setup (list (printf "$JS.API.CONSUMER.CREATE.%s.%s" $j.stream $j.durable) (printf "$JS.API.CONSUMER.CREATE.%s.%s.>" $j.stream $j.durable) (printf "$JS.API.CONSUMER.DURABLE.CREATE.%s.%s" $j.stream $j.durable) (printf "$JS.API.CONSUMER.INFO.%s.%s" $j.stream $j.durable)) -}}
{{- $api := dict "publish" (dict "allow" (list (printf "%s.events.>" $j.subjectPrefix) (printf "$JS.API.STREAM.INFO.%s" $j.stream))) "subscribe" (dict "allow" (list "_INBOX_audit-api.>")) -}}
{{- $consumer := dict "publish" (dict "allow" (list (printf "$JS.API.CONSUMER.MSG.NEXT.%s.%s" $j.stream $j.durable) (printf "$JS.ACK.%s.%s.>" $j.stream $j.durable) (printf "$JS.API.CONSUMER.INFO.%s.%s" $j.stream $j.durable) (printf "$JS.API.STREAM.PURGE.%s" $j.stream) (printf "%s.dlq.>" $j.subjectPrefix))) "subscribe" (dict "allow" (list "_INBOX_audit-consumer.>")) -}}
{{- $setupPerms := dict "publish" (dict "allow" $setup) "subscribe" (dict "allow" (list "_INBOX_audit-setup.>")) -}}
{{- $query := dict "publish" (dict "allow" (list (printf "%s.events.audit.>" $j.subjectPrefix) (printf "$JS.API.STREAM.INFO.%s" $j.stream))) "subscribe" (dict "allow" (list "_INBOX_audit-query.>")) -}}
{{- $dlq := dict "publish" (dict "allow" (list (printf "$JS.API.STREAM.INFO.%s" $j.dlqStream) (printf "$JS.API.STREAM.MSG.GET.%s" $j.dlqStream) (printf "%s.events.>" $j.subjectPrefix))) "subscribe" (dict "allow" (list "_INBOX_audit-dlq.>")) -}}
{{- $retention := dict "publish" (dict "allow" (list (printf "%s.events.audit.retention.>" $j.subjectPrefix) (printf "$JS.API.STREAM.INFO.%s" $j.stream))) "subscribe" (dict "allow" (list "_INBOX_audit-retention.>")) -}}
authorization {
  users = [
    {user: "audit-api", password: $AUDIT_NATS_API_PASSWORD, permissions: {{ $api | toJson | replace "\\u003e" ">" }}},
    {user: "audit-consumer", password: $AUDIT_NATS_CONSUMER_PASSWORD, permissions: {{ $consumer | toJson | replace "\\u003e" ">" }}},
    {user: "audit-setup", password: $AUDIT_NATS_SETUP_PASSWORD, permissions: {{ $setupPerms | toJson | replace "\\u003e" ">" }}},
    {user: "audit-query", password: $AUDIT_NATS_QUERY_PASSWORD, permissions: {{ $query | toJson | replace "\\u003e" ">" }}},
    {user: "audit-dlq", password: $AUDIT_NATS_DLQ_PASSWORD, permissions: {{ $dlq | toJson | replace "\\u003e" ">" }}},
    {user: "audit-retention", password: $AUDIT_NATS_RETENTION_PASSWORD, permissions: {{ $retention | toJson | replace "\\u003e" ">" }}}
  ]
}
{{- end -}}

{{/* TLS to NATS (nats.tls.secretName: a Secret with ca.crt, and tls.crt/tls.key for client
certificates): env for the apps, and the volume it is mounted from */}}
{{- define "audit.natsTlsEnv" -}}
{{- with .Values.nats.tls.secretName }}
- {name: AUDIT_NATS_TLS_CA, value: /etc/audit/nats-tls/ca.crt}
{{- if $.Values.nats.tls.clientCertificate }}
- {name: AUDIT_NATS_TLS_CERT, value: /etc/audit/nats-tls/tls.crt}
- {name: AUDIT_NATS_TLS_KEY, value: /etc/audit/nats-tls/tls.key}
{{- end }}
{{- end }}
{{- end -}}

{{- define "audit.natsTlsMount" -}}
{{- if .Values.nats.tls.secretName }}
- {name: nats-tls, mountPath: /etc/audit/nats-tls, readOnly: true}
{{- end }}
{{- end -}}

{{- define "audit.natsTlsVolume" -}}
{{- with .Values.nats.tls.secretName }}
- name: nats-tls
  secret: {secretName: {{ . }}}
{{- end }}
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
checksum/secret: {{ include "audit.appSecretData" . | sha256sum }}
{{- end }}
{{- end -}}

{{/*
An Ingress for one HTTP service: (list $ component ingressValues serviceName servicePort).
Behind it every client arrives from the ingress controller: the app trusts the controller's
X-Forwarded-For only where forwardedAllowIps names the controller's addresses (README, "Behind
a proxy"), so folding, 429s and the recorded source_ip still see clients.
*/}}
{{- define "audit.ingress" -}}
{{- $root := index . 0 }}{{- $component := index . 1 }}{{- $ing := index . 2 }}
{{- $service := index . 3 }}{{- $port := index . 4 }}
{{- $c := dict "root" $root "component" $component }}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ $service }}
  labels: {{- include "audit.labels" $c | nindent 4 }}
  {{- with $ing.annotations }}
  annotations: {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with $ing.className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- with $ing.tls }}
  tls: {{- toYaml . | nindent 4 }}
  {{- end }}
  rules:
    {{- range $ing.hosts }}
    - host: {{ .host | quote }}
      http:
        paths:
          {{- range .paths }}
          - path: {{ .path }}
            pathType: {{ .pathType }}
            backend:
              service:
                name: {{ $service }}
                port: {number: {{ $port }}}
          {{- end }}
    {{- end }}
{{- end }}

{{/*
A serving pod's preStop (the argument: its drainSeconds): it keeps serving while Kubernetes
removes its endpoint and kube-proxy and ingress controllers stop routing to it; only then does
SIGTERM come (the app stops listening, finishes what is in flight, and closes its idle
keep-alive connections after AUDIT_*_SHUTDOWN_IDLE_SECONDS). Without it, clients that reach the
pod through its Service still open connections to a process that no longer listens
(docs/performance.md, "Rolling restart").
*/}}
{{- define "audit.preStopDrain" -}}
lifecycle:
  preStop:
    exec:
      command: ["python", "-c", "import time; time.sleep({{ . }})"]
{{- end }}
