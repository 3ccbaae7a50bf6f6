{{/* Chart name, overridable with nameOverride. */}}
{{- define "finetune-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name of the operator's objects, overridable with fullnameOverride. */}}
{{- define "finetune-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "finetune-operator.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "finetune-operator.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "finetune-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "finetune-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "finetune-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "finetune-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag of an image value ({repository, tag}); the tag defaults to the chart's appVersion. */}}
{{- define "finetune-operator.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/*
Pod Security "restricted" for the operator and the test Job: both run the operator image's non-root user (uid
1000) with nothing writable but an emptyDir, so they are admitted in a namespace that enforces the profile.
*/}}
{{- define "finetune-operator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "finetune-operator.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The namespaces watched when rbac.clusterWide is false, as a YAML list. */}}
{{- define "finetune-operator.namespaces" -}}
{{- toYaml (default (list .Release.Namespace) .Values.namespaces) -}}
{{- end -}}

{{/*
What the operator does with FineTuneJobs and their children, granted cluster-wide or per namespace.
Kopf lists and watches FineTuneJobs (patch: it removes a finalizer an older Kopf-based version left, if any), the
operator reads one and deletes it after ttlSecondsAfterFinished; it patches only the status subresource; it
creates Services and Jobs (never updates or deletes them: owner references let the garbage collector do that), watches Jobs and pods (its in-memory view of them: phases, readiness, termination messages) and lists
them (to fill that view), suspends/resumes Jobs by patch, posts Events.
*/}}
{{- define "finetune-operator.rules" -}}
- apiGroups: [finetune.io]
  resources: [finetunejobs]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [finetune.io]
  resources: [finetunejobs/status]
  verbs: [get, patch]
# Children carry blockOwnerDeletion owner references, which need this where
# OwnerReferencesPermissionEnforcement is enabled.
- apiGroups: [finetune.io]
  resources: [finetunejobs/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, list, watch, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [services]
  verbs: [create]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Why Kueue holds a queued job's Job (spec.queueName): its Workload, found by the Job's uid label.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list]
{{- end -}}
