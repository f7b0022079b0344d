{{/*
Expand the name of the chart.
*/}}
{{- define "roundhouse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "roundhouse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Object names. They are deliberately fixed ("backend", "lb") rather than
release-prefixed, so that the chart renders the same objects as manifests/
and the lb's --service/--default-upstream flags keep pointing at "backend".
Consequence: one release of this chart per namespace.
*/}}
{{- define "roundhouse.backend.fullname" -}}
backend
{{- end }}

{{- define "roundhouse.lb.fullname" -}}
lb
{{- end }}

{{/*
Common labels (metadata of every object). Helm adds instance/managed-by/chart
on top of the labels that manifests/ carries.
*/}}
{{- define "roundhouse.labels" -}}
helm.sh/chart: {{ include "roundhouse.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "roundhouse.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/*
Selector labels: identical to manifests/ (selectors are immutable, so a
cluster deployed with kubectl apply can be taken over by the chart).
*/}}
{{- define "roundhouse.backend.selectorLabels" -}}
app.kubernetes.io/name: backend
app.kubernetes.io/part-of: {{ include "roundhouse.name" . }}
{{- end }}

{{- define "roundhouse.lb.selectorLabels" -}}
app.kubernetes.io/name: lb
app.kubernetes.io/part-of: {{ include "roundhouse.name" . }}
{{- end }}

{{- define "roundhouse.backend.labels" -}}
{{ include "roundhouse.labels" . }}
app.kubernetes.io/name: backend
app.kubernetes.io/component: backend
{{- end }}

{{- define "roundhouse.lb.labels" -}}
{{ include "roundhouse.labels" . }}
app.kubernetes.io/name: lb
app.kubernetes.io/component: load-balancer
{{- end }}

{{/*
Pod template labels: selector labels plus component (no helm/version labels,
so that a chart upgrade alone does not roll the pods).
*/}}
{{- define "roundhouse.backend.podLabels" -}}
{{ include "roundhouse.backend.selectorLabels" . }}
app.kubernetes.io/component: backend
{{- end }}

{{- define "roundhouse.lb.podLabels" -}}
{{ include "roundhouse.lb.selectorLabels" . }}
app.kubernetes.io/component: load-balancer
{{- end }}

{{/*
The lb's Role rule for the TLS Secrets of tls.secrets (nothing without them).
The lb gets each Secret by name at start, then lists and watches it with
fieldSelector metadata.name=NAME (lb/src/discovery/k8s/secrets.rs). The API
server authorizes a list or watch with that field selector as a request for
that one name, so resourceNames restricts all three verbs: the lb can read
these Secrets and no other.
*/}}
{{- define "roundhouse.lb.tlsSecretsRule" -}}
{{- with .Values.tls.secrets }}
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: {{ toJson . }}
  verbs: ["get", "list", "watch"]
{{- end }}
{{- end }}

{{/*
Images: tag defaults to the chart appVersion.
*/}}
{{- define "roundhouse.backend.image" -}}
{{- printf "%s:%s" .Values.backend.image.repository (default .Chart.AppVersion .Values.backend.image.tag) }}
{{- end }}

{{- define "roundhouse.lb.image" -}}
{{- printf "%s:%s" .Values.lb.image.repository (default .Chart.AppVersion .Values.lb.image.tag) }}
{{- end }}
