{{- define "tts-worker.name" -}}{{ .Chart.Name }}{{- end -}}
{{- define "tts-worker.fullname" -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "tts-worker.labels" -}}
app.kubernetes.io/name: {{ include "tts-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "tts-worker.selector" -}}
app.kubernetes.io/name: {{ include "tts-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
