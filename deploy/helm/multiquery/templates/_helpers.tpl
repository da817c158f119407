{{/* The chart's name. */}}
{{- define "multiquery.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name of every object. */}}
{{- define "multiquery.fullname" -}}
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

{{/* Labels of every object; call with (dict "ctx" $ "component" "worker"). */}}
{{- define "multiquery.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ include "multiquery.tag" .ctx | quote }}
{{ include "multiquery.selectorLabels" . }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of a component; call with (dict "ctx" $ "component" "worker"). */}}
{{- define "multiquery.selectorLabels" -}}
app.kubernetes.io/name: {{ include "multiquery.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{- define "multiquery.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* The image: repository@digest with image.digest (what admission policies that
require digests want), else repository:tag. */}}
{{- define "multiquery.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "multiquery.tag" .) }}
{{- end }}
{{- end }}

{{- define "multiquery.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "multiquery.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The NATS URL: natsClient.url, else the bundled NATS of this release. */}}
{{- define "multiquery.natsURL" -}}
{{- if .Values.natsClient.url }}
{{- .Values.natsClient.url }}
{{- else if .Values.nats.enabled }}
{{- $svc := "" }}
{{- if .Values.nats.fullnameOverride }}
{{- $svc = .Values.nats.fullnameOverride }}
{{- else if contains "nats" .Release.Name }}
{{- $svc = .Release.Name }}
{{- else }}
{{- $svc = printf "%s-nats" .Release.Name }}
{{- end }}
{{- $scheme := ternary "tls" "nats" .Values.natsClient.tls.enabled }}
{{- printf "%s://%s.%s.svc:4222" $scheme ($svc | trunc 63 | trimSuffix "-") .Release.Namespace }}
{{- else }}
{{- fail "natsClient.url is required when nats.enabled is false" }}
{{- end }}
{{- end }}

{{- define "multiquery.natsCredsSecret" -}}
{{- default (printf "%s-nats-creds" (include "multiquery.fullname" .)) .Values.natsClient.creds.existingSecret }}
{{- end }}

{{/* A component's own NATS user (<component>.natsAuth) if it names a Secret, else
nothing; call with (dict "ctx" $ "auth" .natsAuth). */}}
{{- define "multiquery.ownNATSAuth" -}}
{{- if and .auth .auth.existingSecret }}
{{- if not (has .auth.type (list "creds" "nkey" "password")) }}
{{- fail (printf "natsAuth.type %q: creds, nkey or password" .auth.type) }}
{{- end }}
{{- .auth.type }}
{{- end }}
{{- end }}

{{/* Connection flags and the deployment's --prefix, shared by every process (one list
item per flag); call with (dict "ctx" $ "auth" <component>.natsAuth). */}}
{{- define "multiquery.natsArgs" -}}
{{- $own := include "multiquery.ownNATSAuth" . }}
{{- if .ctx.Values.prefix }}
- --prefix={{ .ctx.Values.prefix }}
{{- end }}
{{- if eq $own "creds" }}
- --nats-creds=/etc/multiquery/nats-auth/{{ .auth.key }}
{{- else if eq $own "nkey" }}
- --nats-nkey=/etc/multiquery/nats-auth/{{ .auth.key }}
{{- end }}
{{- with .ctx.Values.natsClient }}
{{- if and .creds.enabled (not $own) }}
- --nats-creds=/etc/multiquery/nats-creds/{{ .creds.key }}
{{- end }}
{{- if .tls.enabled }}
- --nats-tls-ca=/etc/multiquery/nats-tls/{{ .tls.caKey }}
{{- if .tls.clientCert }}
- --nats-tls-cert=/etc/multiquery/nats-tls/{{ .tls.certKey }}
- --nats-tls-key=/etc/multiquery/nats-tls/{{ .tls.keyKey }}
{{- end }}
{{- end }}
{{- if .context.name }}
- --context={{ .context.name }}
{{- end }}
{{- end }}
{{- end }}

{{/* Environment shared by every process; call with (dict "ctx" $ "auth" ...). */}}
{{- define "multiquery.natsEnv" -}}
- name: NATS_URL
  value: {{ include "multiquery.natsURL" .ctx | quote }}
{{- if .ctx.Values.natsClient.context.name }}
- name: XDG_CONFIG_HOME
  value: /etc/multiquery/xdg
{{- end }}
{{- if eq (include "multiquery.ownNATSAuth" .) "password" }}
- name: NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ .auth.existingSecret }}
      key: {{ .auth.userKey }}
- name: NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .auth.existingSecret }}
      key: {{ .auth.passwordKey }}
{{- end }}
{{- end }}

{{/* Volume mounts for the NATS credentials, TLS files and contexts; call with (dict
"ctx" $ "auth" ...). */}}
{{- define "multiquery.natsVolumeMounts" -}}
{{- $own := include "multiquery.ownNATSAuth" . }}
{{- if has $own (list "creds" "nkey") }}
- name: nats-auth
  mountPath: /etc/multiquery/nats-auth
  readOnly: true
{{- end }}
{{- with .ctx.Values.natsClient }}
{{- if and .creds.enabled (not $own) }}
- name: nats-creds
  mountPath: /etc/multiquery/nats-creds
  readOnly: true
{{- end }}
{{- if .tls.enabled }}
- name: nats-tls
  mountPath: /etc/multiquery/nats-tls
  readOnly: true
{{- end }}
{{- if .context.name }}
- name: nats-context
  mountPath: /etc/multiquery/xdg/nats/context
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* The volumes of those mounts; call with (dict "ctx" $ "auth" ...). */}}
{{- define "multiquery.natsVolumes" -}}
{{- $own := include "multiquery.ownNATSAuth" . }}
{{- if has $own (list "creds" "nkey") }}
- name: nats-auth
  secret:
    secretName: {{ .auth.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .auth.key }}
        path: {{ .auth.key }}
{{- end }}
{{- with .ctx }}
{{- if and .Values.natsClient.creds.enabled (not $own) }}
- name: nats-creds
  secret:
    secretName: {{ include "multiquery.natsCredsSecret" . }}
    defaultMode: 0440
{{- end }}
{{- if .Values.natsClient.tls.enabled }}
- name: nats-tls
  secret:
    secretName: {{ required "natsClient.tls.existingSecret is required with natsClient.tls.enabled" .Values.natsClient.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if .Values.natsClient.context.name }}
- name: nats-context
  secret:
    secretName: {{ required "natsClient.context.existingSecret is required with natsClient.context.name" .Values.natsClient.context.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end }}

{{/* Topology spread constraints of a component: its own topologySpread if it has one,
else the chart's; call with (dict "ctx" $ "component" "worker" "values" $w). */}}
{{- define "multiquery.topologySpread" -}}
{{- $sel := include "multiquery.selectorLabels" . | fromYaml }}
{{- $spread := .ctx.Values.topologySpread }}
{{- if hasKey .values "topologySpread" }}
{{- $spread = .values.topologySpread }}
{{- end }}
{{- range $spread }}
- {{ toYaml (merge (dict "labelSelector" (dict "matchLabels" $sel)) .) | nindent 2 | trim }}
{{- end }}
{{- end }}

{{/* Where a component's pods run: priority class, spread, node selector, tolerations,
affinity; call with (dict "ctx" $ "component" "worker" "values" $w). */}}
{{- define "multiquery.scheduling" -}}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with include "multiquery.topologySpread" . | trim }}
topologySpreadConstraints:
  {{- . | nindent 2 }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Prometheus scrape annotations; call with (dict "ctx" $ "port" 9090). */}}
{{- define "multiquery.scrapeAnnotations" -}}
{{- if .ctx.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* The pod-level part every component shares. */}}
{{- define "multiquery.podCommon" -}}
serviceAccountName: {{ include "multiquery.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Bytes of a Kubernetes memory quantity ("512Mi", "1G", 536870912), or "" if it is
none the chart can read (an exponent, millibytes). */}}
{{- define "multiquery.bytes" -}}
{{- $q := kindIs "string" . | ternary . (printf "%d" (int64 .)) }}
{{- $m := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- $units := dict "" 1.0 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 }}
{{- $unit := trimPrefix $m $q }}
{{- if and $m (hasKey $units $unit) }}
{{- printf "%.0f" (mulf (float64 $m) (get $units $unit)) }}
{{- end }}
{{- end }}

{{/* GOMEMLIMIT of a container: goMemLimitRatio of its memory limit, in bytes, unless
its extraEnv sets GOMEMLIMIT; call with (dict "ctx" $ "resources" .resources "extraEnv"
.extraEnv "what" "worker"). */}}
{{- define "multiquery.goMemLimit" -}}
{{- $ratio := float64 .ctx.Values.goMemLimitRatio }}
{{- $limit := dig "limits" "memory" "" (.resources | default dict) }}
{{- $own := false }}
{{- range .extraEnv }}{{- if eq .name "GOMEMLIMIT" }}{{- $own = true }}{{- end }}{{- end }}
{{- if and (gt $ratio 0.0) $limit (not $own) }}
{{- $bytes := include "multiquery.bytes" $limit }}
{{- if not $bytes }}
{{- fail (printf "%s.resources.limits.memory %v: GOMEMLIMIT cannot be derived from it (write it like 512Mi or 1G), or set goMemLimitRatio: 0" .what $limit) }}
{{- end }}
- name: GOMEMLIMIT
  value: {{ printf "%.0f" (floor (mulf (float64 $bytes) $ratio)) | quote }}
{{- end }}
{{- end }}
