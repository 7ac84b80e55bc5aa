{{- define "tts-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "tts-worker.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tts-worker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tts-worker.selector" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tts-worker.selector" -}}
app.kubernetes.io/name: {{ include "tts-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tts-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tts-worker.fullname" .) .Values.serviceAccount.name }}
{{- else -}}
{{- default "default" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{- define "tts-worker.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end -}}
{{- end -}}

{{/* Ready + unacked messages per replica: MAX_IN_FLIGHT unless set. */}}
{{- define "tts-worker.kedaTarget" -}}
{{- $target := .Values.autoscaling.keda.targetPerReplica | toString -}}
{{- if $target -}}
{{- $target -}}
{{- else -}}
{{- index .Values.config "TTS__AMQP__MAX_IN_FLIGHT" | default "5000" | toString -}}
{{- end -}}
{{- end -}}

{{- define "tts-worker.scaleDownBehavior" -}}
scaleDown:
  stabilizationWindowSeconds: {{ .Values.autoscaling.scaleDownStabilizationSeconds }}
  policies:
    - type: Pods
      value: {{ .Values.autoscaling.scaleDownPods }}
      periodSeconds: {{ .Values.autoscaling.scaleDownPeriodSeconds }}
{{- end -}}
