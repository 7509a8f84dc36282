{{/* Names, labels and the pieces every pod template shares. */}}

{{- define "rookery.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rookery.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rookery.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rookery.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rookery.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rookery.labels" -}}
helm.sh/chart: {{ include "rookery.chart" . }}
{{ include "rookery.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rookery
{{- end }}

{{/* The component holding the store: "combined" or "store". */}}
{{- define "rookery.storeComponent" -}}
{{- if eq .Values.mode "split" }}store{{ else }}combined{{ end }}
{{- end }}

{{/* The component holding the MQTT listeners: "combined" or "edge". */}}
{{- define "rookery.edgeComponent" -}}
{{- if eq .Values.mode "split" }}edge{{ else }}combined{{ end }}
{{- end }}

{{- define "rookery.componentName" -}}
{{- $root := index . 0 }}{{ $component := index . 1 }}
{{- if eq $component "combined" }}{{ include "rookery.fullname" $root }}{{ else }}{{ include "rookery.fullname" $root }}-{{ $component }}{{ end }}
{{- end }}

{{- define "rookery.headlessName" -}}
{{ include "rookery.fullname" . }}-headless
{{- end }}

{{/* The headless Service's DNS name: resolves to every store pod, ready or not. */}}
{{- define "rookery.storeDomain" -}}
{{ include "rookery.headlessName" . }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}
{{- end }}

{{- define "rookery.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rookery.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rookery.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Secret names: the user's existing Secret, or the one the chart makes. */}}
{{- define "rookery.tlsSecret" -}}
{{ default (printf "%s-tls" (include "rookery.fullname" .)) .Values.tls.existingSecret }}
{{- end }}
{{- define "rookery.clientCaSecret" -}}
{{ default (printf "%s-client-ca" (include "rookery.fullname" .)) .Values.tls.clientCa.existingSecret }}
{{- end }}
{{- define "rookery.clusterTlsSecret" -}}
{{ default (printf "%s-cluster-tls" (include "rookery.fullname" .)) .Values.clusterTls.existingSecret }}
{{- end }}
{{- define "rookery.adminTokenSecret" -}}
{{ default (printf "%s-admin-token" (include "rookery.fullname" .)) .Values.adminToken.existingSecret }}
{{- end }}
{{- define "rookery.passwordSecret" -}}
{{ default (printf "%s-passwords" (include "rookery.fullname" .)) .Values.auth.passwordFile.existingSecret }}
{{- end }}
{{- define "rookery.aclSecret" -}}
{{ default (printf "%s-acl" (include "rookery.fullname" .)) .Values.auth.aclFile.existingSecret }}
{{- end }}

{{/* Whether a TLS listener (mqtts or wss) is on. */}}
{{- define "rookery.listenerTls" -}}
{{- if or .Values.listeners.mqtts.enabled .Values.listeners.wss.enabled }}true{{ end }}
{{- end }}

{{/* Where the mounted files are; the generated rookery.toml names them. */}}
{{- define "rookery.paths" -}}
config: /etc/rookery/config
tls: /etc/rookery/tls
clientCa: /etc/rookery/client-ca
clusterTls: /etc/rookery/cluster-tls
adminToken: /etc/rookery/admin
passwords: /etc/rookery/passwords
acl: /etc/rookery/acl
data: /data
{{- end }}

{{/*
One TOML value from a YAML value. Values reach templates as JSON numbers
(float64): printed as they are, 1000000 would be "1e+06", so whole numbers
are printed as integers. toJson quotes strings with escapes TOML accepts.
*/}}
{{- define "rookery.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ fail (printf "rookery.toml takes whole numbers only, not %v" .) }}{{ end }}
{{- else if kindIs "slice" . }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "rookery.tomlValue" $v }}{{ end }}]
{{- else }}{{ fail (printf "rookery.toml cannot hold %v (%s)" . (kindOf .)) }}
{{- end }}
{{- end }}

{{/* `key = value` lines of a map rendered whole (config.* maps), sorted. */}}
{{- define "rookery.tomlKeys" -}}
{{- range $key := keys . | sortAlpha }}
{{ $key }} = {{ include "rookery.tomlValue" (get $ $key) }}
{{- end }}
{{- end }}

{{/*
rookery.toml for one component (combined, store or edge). Per-pod values
(node_id, store.advertise, broker.edge_id, cluster.forward_advertise) come
from environment variables set in the pod template.
*/}}
{{- define "rookery.toml" -}}
{{- $root := index . 0 }}{{ $component := index . 1 }}
{{- $v := $root.Values }}
{{- $paths := include "rookery.paths" $root | fromYaml }}
{{- $isStore := or (eq $component "combined") (eq $component "store") }}
{{- $isEdge := or (eq $component "combined") (eq $component "edge") }}
{{- $bind := $v.bindAddress }}
{{- $replicas := ternary $v.combined.replicas $v.store.replicas (eq $v.mode "combined") }}
# rookery.toml of the {{ $component }} nodes, written by the rookery Helm chart
# from its values. docs/configuration.md describes every key.
roles = [{{ if $isStore }}"store"{{ end }}{{ if and $isStore $isEdge }}, {{ end }}{{ if $isEdge }}"edge"{{ end }}]
data_dir = {{ $paths.data | quote }}

[log]
{{- include "rookery.tomlKeys" $v.config.log }}

[http]
listen = "{{ $bind }}:{{ $v.http.port }}"
# The admin API off loopback takes cluster.admin_token_file's token.
{{- if $isStore }}

[store]
listen = "{{ $bind }}:{{ $v.clusterPorts.store }}"
# advertise: this pod's DNS name, from ROOKERY_STORE__ADVERTISE.
{{- include "rookery.tomlKeys" $v.config.store }}
{{- end }}

[cluster]
seeds = ["{{ include "rookery.storeDomain" $root }}:{{ $v.clusterPorts.store }}"]
{{- if $isStore }}
bootstrap_expect = {{ int64 $replicas }}
{{- end }}
{{- if $isEdge }}
forward_listen = "{{ $bind }}:{{ $v.clusterPorts.forward }}"
# forward_advertise: from ROOKERY_CLUSTER__FORWARD_ADVERTISE.
{{- end }}
admin_token_file = "{{ $paths.adminToken }}/admin-token"
{{- include "rookery.tomlKeys" $v.config.cluster }}
{{- if $v.clusterTls.enabled }}

[cluster.tls]
ca_file = "{{ $paths.clusterTls }}/ca.crt"
cert_file = "{{ $paths.clusterTls }}/tls.crt"
key_file = "{{ $paths.clusterTls }}/tls.key"
server_name = {{ $v.clusterTls.serverName | toJson }}
{{- end }}

[broker]
# edge_id: the pod's name, from ROOKERY_BROKER__EDGE_ID.
{{- include "rookery.tomlKeys" $v.config.broker }}
{{- if $isEdge }}

[broker.auth]
allow_anonymous = {{ $v.auth.allowAnonymous }}
failure_delay_ms = {{ int64 $v.auth.failureDelayMs }}
bind_client_id = {{ $v.auth.bindClientId | toJson }}
{{- if $v.auth.passwordFile.enabled }}
password_file = "{{ $paths.passwords }}/passwords"
{{- end }}
{{- if $v.auth.aclFile.enabled }}
acl_file = "{{ $paths.acl }}/acl"
{{- end }}

[broker.limits]
{{- include "rookery.tomlKeys" $v.config.limits }}
{{- $proxy := $v.service.proxyProtocol }}
{{- range $name, $kind := dict "mqtt" "tcp" "mqtts" "tls" "ws" "ws" "wss" "wss" }}
{{- $l := get $v.listeners $name }}
{{- if $l.enabled }}

[[broker.listeners]]
name = {{ $name | quote }}
kind = {{ $kind | quote }}
address = "{{ $bind }}:{{ $l.port }}"
proxy_protocol = {{ $proxy }}
{{- if hasKey $l "path" }}
ws_path = {{ $l.path | toJson }}
{{- end }}
max_connections = {{ int64 $l.maxConnections }}
max_connection_rate = {{ int64 $l.maxConnectionRate }}
{{- if has $kind (list "tls" "wss") }}
use_identity_as_username = {{ and $v.tls.clientCa.enabled $v.tls.clientCa.useIdentityAsUsername }}

[broker.listeners.tls]
cert_file = "{{ $paths.tls }}/tls.crt"
key_file = "{{ $paths.tls }}/tls.key"
{{- if $v.tls.clientCa.enabled }}
client_ca_file = "{{ $paths.clientCa }}/ca.crt"
require_client_cert = {{ $v.tls.clientCa.requireClientCert }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if $v.listeners.internal.enabled }}

[[broker.listeners]]
name = "internal"
kind = "tcp"
address = "{{ $bind }}:{{ $v.listeners.internal.port }}"
{{- end }}
{{- end }}
{{- with $v.config.extra }}

# config.extra
{{ . }}
{{- end }}
{{- end }}

{{- define "rookery.componentLabels" -}}
{{- $root := index . 0 }}{{ $component := index . 1 -}}
{{ include "rookery.selectorLabels" $root }}
app.kubernetes.io/component: {{ $component }}
{{- end }}

{{/* Seconds Kubernetes waits after the preStop hook began before SIGKILL. */}}
{{- define "rookery.terminationGrace" -}}
{{- $drain := int64 (default 25 .Values.config.broker.shutdown_grace_s) }}
{{- $preStop := int64 .Values.preStopSleepSeconds }}
{{- if .Values.terminationGracePeriodSeconds }}
{{- if le (int64 .Values.terminationGracePeriodSeconds) (add $drain $preStop) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + config.broker.shutdown_grace_s (%d): the node would be killed mid-drain" (int64 .Values.terminationGracePeriodSeconds) (add $drain $preStop)) }}
{{- end }}
{{- int64 .Values.terminationGracePeriodSeconds }}
{{- else }}
{{- add $drain $preStop 10 }}
{{- end }}
{{- end }}

{{/* The pod template of one component: combined, store or edge. */}}
{{- define "rookery.podTemplate" -}}
{{- $root := index . 0 }}{{ $component := index . 1 }}
{{- $v := $root.Values }}
{{- $paths := include "rookery.paths" $root | fromYaml }}
{{- $isStore := or (eq $component "combined") (eq $component "store") }}
{{- $isEdge := or (eq $component "combined") (eq $component "edge") }}
{{- $selector := include "rookery.componentLabels" (list $root $component) | fromYaml }}
{{- $configFile := ternary "rookery.toml" (printf "rookery-%s.toml" $component) (eq $component "combined") }}
{{- $resources := get (get $v $component) "resources" }}
metadata:
  labels:
    {{- include "rookery.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # A changed configuration (or a chart-made Secret) rolls the pods.
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    checksum/secrets: {{ include (print $root.Template.BasePath "/secrets.yaml") $root | sha256sum }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "rookery.serviceAccountName" $root }}
  automountServiceAccountToken: false
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ include "rookery.terminationGrace" $root }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  {{- if $v.affinity }}
  affinity:
    {{- toYaml $v.affinity | nindent 4 }}
  {{- else if ne $v.antiAffinity "none" }}
  affinity:
    podAntiAffinity:
      {{- $term := dict "topologyKey" $v.antiAffinityTopologyKey "labelSelector" (dict "matchLabels" $selector) }}
      {{- if eq $v.antiAffinity "hard" }}
      requiredDuringSchedulingIgnoredDuringExecution:
        {{- toYaml (list $term) | nindent 8 }}
      {{- else }}
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            {{- toYaml $term | nindent 12 }}
      {{- end }}
  {{- end }}
  {{- if $v.topologySpread.enabled }}
  topologySpreadConstraints:
    - maxSkew: {{ int64 $v.topologySpread.maxSkew }}
      topologyKey: {{ $v.topologySpread.topologyKey }}
      whenUnsatisfiable: {{ $v.topologySpread.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- toYaml $selector | nindent 10 }}
  {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: rookery
      image: {{ include "rookery.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      {{- if $isStore }}
      # node_id from the StatefulSet ordinal: pod -0 is node 1.
      command: ["/bin/sh", "{{ $paths.config }}/start.sh"]
      {{- else }}
      args: ["serve"]
      {{- end }}
      env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        - name: ROOKERY_CONFIG
          value: {{ printf "%s/%s" $paths.config $configFile | quote }}
        - name: ROOKERY_DATA_DIR
          value: {{ $paths.data | quote }}
        # Quoted inside: ROOKERY_* values are read as TOML-like values.
        {{- if $isStore }}
        - name: ROOKERY_STORE__ADVERTISE
          value: '"$(POD_NAME).{{ include "rookery.storeDomain" $root }}:{{ $v.clusterPorts.store }}"'
        {{- end }}
        {{- if $isEdge }}
        - name: ROOKERY_BROKER__EDGE_ID
          value: '"$(POD_NAME)"'
        - name: ROOKERY_CLUSTER__FORWARD_ADVERTISE
          {{- if $isStore }}
          value: '"$(POD_NAME).{{ include "rookery.storeDomain" $root }}:{{ $v.clusterPorts.forward }}"'
          {{- else }}
          value: '"$(POD_IP):{{ $v.clusterPorts.forward }}"'
          {{- end }}
        {{- end }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: http
          containerPort: {{ $v.http.port }}
        {{- if $isStore }}
        - name: store
          containerPort: {{ $v.clusterPorts.store }}
        {{- end }}
        {{- if $isEdge }}
        - name: forward
          containerPort: {{ $v.clusterPorts.forward }}
        {{- range $name := list "mqtt" "mqtts" "ws" "wss" "internal" }}
        {{- $l := get $v.listeners $name }}
        {{- if $l.enabled }}
        - name: {{ $name }}
          containerPort: {{ $l.port }}
        {{- end }}
        {{- end }}
        {{- end }}
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: {{ $v.probes.startup.periodSeconds }}
        failureThreshold: {{ $v.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: {{ $v.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ $v.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        periodSeconds: {{ $v.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ $v.probes.readiness.failureThreshold }}
      {{- if $v.preStopSleepSeconds }}
      lifecycle:
        # Endpoints and load balancers drop the pod while it sleeps; SIGTERM
        # (the drain) comes after.
        preStop:
          exec:
            command: ["sleep", "{{ int64 $v.preStopSleepSeconds }}"]
      {{- end }}
      {{- with $resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: {{ $paths.config }}
          readOnly: true
        - name: data
          mountPath: {{ $paths.data }}
        - name: tmp
          mountPath: /tmp
        - name: admin-token
          mountPath: {{ $paths.adminToken }}
          readOnly: true
        {{- if $v.clusterTls.enabled }}
        - name: cluster-tls
          mountPath: {{ $paths.clusterTls }}
          readOnly: true
        {{- end }}
        {{- if $isEdge }}
        {{- if include "rookery.listenerTls" $root }}
        - name: tls
          mountPath: {{ $paths.tls }}
          readOnly: true
        {{- if $v.tls.clientCa.enabled }}
        - name: client-ca
          mountPath: {{ $paths.clientCa }}
          readOnly: true
        {{- end }}
        {{- end }}
        {{- if $v.auth.passwordFile.enabled }}
        - name: passwords
          mountPath: {{ $paths.passwords }}
          readOnly: true
        {{- end }}
        {{- if $v.auth.aclFile.enabled }}
        - name: acl
          mountPath: {{ $paths.acl }}
          readOnly: true
        {{- end }}
        {{- end }}
        {{- with $v.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "rookery.fullname" $root }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if not $isStore }}
    # An edge keeps no data; /data only has to be writable.
    - name: data
      emptyDir:
        sizeLimit: 64Mi
    {{- else if not (get (get $v $component) "persistence").enabled }}
    - name: data
      emptyDir: {}
    {{- end }}
    - name: admin-token
      secret:
        secretName: {{ include "rookery.adminTokenSecret" $root }}
        defaultMode: 0440
    {{- if $v.clusterTls.enabled }}
    - name: cluster-tls
      secret:
        secretName: {{ include "rookery.clusterTlsSecret" $root }}
        defaultMode: 0440
    {{- end }}
    {{- if $isEdge }}
    {{- if include "rookery.listenerTls" $root }}
    - name: tls
      secret:
        secretName: {{ include "rookery.tlsSecret" $root }}
        defaultMode: 0440
    {{- if $v.tls.clientCa.enabled }}
    - name: client-ca
      secret:
        secretName: {{ include "rookery.clientCaSecret" $root }}
        defaultMode: 0440
    {{- end }}
    {{- end }}
    {{- if $v.auth.passwordFile.enabled }}
    - name: passwords
      secret:
        secretName: {{ include "rookery.passwordSecret" $root }}
        defaultMode: 0440
    {{- end }}
    {{- if $v.auth.aclFile.enabled }}
    - name: acl
      secret:
        secretName: {{ include "rookery.aclSecret" $root }}
        defaultMode: 0440
    {{- end }}
    {{- end }}
    {{- with $v.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* volumeClaimTemplates of a StatefulSet component (combined or store). */}}
{{- define "rookery.volumeClaims" -}}
{{- $root := index . 0 }}{{ $component := index . 1 }}
{{- $p := get (get $root.Values $component) "persistence" }}
{{- if $p.enabled }}
persistentVolumeClaimRetentionPolicy:
  {{- toYaml $p.retentionPolicy | nindent 2 }}
volumeClaimTemplates:
  - metadata:
      name: data
      labels:
        {{- include "rookery.componentLabels" (list $root $component) | nindent 8 }}
      {{- with $p.annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      accessModes:
        {{- toYaml $p.accessModes | nindent 8 }}
      {{- with $p.storageClass }}
      storageClassName: {{ . }}
      {{- end }}
      resources:
        requests:
          storage: {{ $p.size }}
{{- end }}
{{- end }}

{{/* The Prometheus job name: the full name, with "rookery" in it for the alert rules. */}}
{{- define "rookery.jobName" -}}
{{- $name := include "rookery.fullname" . }}
{{- if contains "rookery" $name }}{{ $name }}{{ else }}{{ $name }}-rookery{{ end }}
{{- end }}
