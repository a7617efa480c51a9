{{/*
The line document read by all three services. `line` and `devices` come from
.Values.line; the other sections are written here so that listen addresses, ports and
Service names always match the Deployments and Services of this chart. Secrets are
referenced by environment variable, set from existing Secrets in the Deployments.
*/}}
{{- define "fieldline.lineDocument" -}}
{{- $fullname := include "fieldline.fullname" . -}}
line: {{ required "line.name is required" .Values.line.name | quote }}
mqtt:
  address: {{ required "mqtt.address is required" .Values.mqtt.address | quote }}
  keep_alive: {{ .Values.mqtt.keepAlive | quote }}
  {{- if .Values.mqtt.username }}
  username: {{ .Values.mqtt.username | quote }}
  {{- if .Values.mqtt.existingSecret }}
  password:
    env: FIELDLINE_MQTT_PASSWORD
  {{- end }}
  {{- end }}
adapter:
  id: {{ printf "%s-adapter" $fullname | quote }}
  grpc_listen: "0.0.0.0:{{ .Values.adapter.ports.grpc }}"
  http_listen: "0.0.0.0:{{ .Values.adapter.ports.http }}"
  state_dir: /var/lib/fieldline
  {{- if .Values.adapter.writeToken.existingSecret }}
  write_token:
    env: FIELDLINE_WRITE_TOKEN
  {{- end }}
processor:
  grpc_listen: "0.0.0.0:{{ .Values.processor.ports.grpc }}"
  http_listen: "0.0.0.0:{{ .Values.processor.ports.http }}"
  storage_url: "http://{{ $fullname }}-storage:{{ .Values.storage.ports.grpc }}"
  adapter_url: "http://{{ $fullname }}-adapter:{{ .Values.adapter.ports.grpc }}"
  client_id: {{ printf "%s-processor" $fullname | quote }}
storage:
  grpc_listen: "0.0.0.0:{{ .Values.storage.ports.grpc }}"
  http_listen: "0.0.0.0:{{ .Values.storage.ports.http }}"
  {{- if .Values.influx.enabled }}
  influx:
    url: {{ required "influx.url is required" .Values.influx.url | quote }}
    database: {{ required "influx.database is required" .Values.influx.database | quote }}
    {{- with .Values.influx.retentionPolicy }}
    retention_policy: {{ . | quote }}
    {{- end }}
    create_database: {{ .Values.influx.createDatabase }}
    timeout: {{ .Values.influx.timeout | quote }}
  {{- end }}
  {{- if .Values.sql.enabled }}
  sql:
    url: {{ required "sql.url is required" .Values.sql.url | quote }}
    {{- if .Values.sql.existingSecret }}
    password:
      env: FIELDLINE_SQL_PASSWORD
    {{- end }}
  {{- end }}
devices:
{{- required "line.devices needs at least one device" .Values.line.devices | toYaml | nindent 2 }}
{{- end }}
