{{/* Chart name, shortened to fit label values. */}}
{{- define "fieldline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Base name of the objects: the release name, with the chart name unless the release
name already contains it. Component names are appended, so keep room for "-processor".
*/}}
{{- define "fieldline.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 53 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 53 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 53 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fieldline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "fieldline.labels" -}}
helm.sh/chart: {{ include "fieldline.chart" . }}
app.kubernetes.io/name: {{ include "fieldline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
fieldline.io/line: {{ .Values.line.name | quote }}
{{- end }}

{{/* Selector labels of one component; call with (dict "root" $ "component" "storage"). */}}
{{- define "fieldline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fieldline.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "fieldline.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Path of the line document inside the containers. */}}
{{- define "fieldline.configPath" -}}
/etc/fieldline/line.yaml
{{- end }}

{{/* Environment shared by the three services. */}}
{{- define "fieldline.env" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: FIELDLINE_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The MQTT password, for the services that talk to the broker. */}}
{{- define "fieldline.mqttPasswordEnv" -}}
{{- if and .Values.mqtt.username .Values.mqtt.existingSecret }}
- name: FIELDLINE_MQTT_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.mqtt.existingSecret }}
      key: {{ .Values.mqtt.existingSecretKey }}
{{- end }}
{{- end }}

{{/* The adapter's write token, for the adapter and the processor. */}}
{{- define "fieldline.writeTokenEnv" -}}
{{- if .Values.adapter.writeToken.existingSecret }}
- name: FIELDLINE_WRITE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.adapter.writeToken.existingSecret }}
      key: {{ .Values.adapter.writeToken.existingSecretKey }}
{{- end }}
{{- end }}

{{/* Startup, liveness and readiness probes on the container port named http. */}}
{{- define "fieldline.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
{{- end }}

{{/* Annotations that restart the pods when the line document changes. */}}
{{- define "fieldline.podAnnotations" -}}
checksum/line: {{ include "fieldline.lineDocument" . | sha256sum }}
{{- end }}
