{{- define "tierguard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tierguard.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tierguard.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tierguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tierguard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tierguard.watchNamespace" -}}
{{- default .Release.Namespace .Values.watch.namespace -}}
{{- end -}}

{{/* The operator's permissions: shared by the Role and the ClusterRole. */}}
{{- define "tierguard.rules" -}}
# The policies: watched, annotated (kopf's bookkeeping, finalizer, manual-action cleanup).
- apiGroups: ["tierguard.io"]
  resources: ["cascadepolicies"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["tierguard.io"]
  resources: ["cascadepolicies/status"]
  verbs: ["get", "patch"]
# Owner references with blockOwnerDeletion on children.
- apiGroups: ["tierguard.io"]
  resources: ["cascadepolicies/finalizers"]
  verbs: ["update"]
- apiGroups: ["tierguard.io"]
  resources: ["qualityslos"]
  verbs: ["get", "list", "watch"]
# Children, written with server-side apply (create + patch) and read back (get).
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Proxy pods: annotated with the config hash after a ConfigMap write, so the kubelet re-reads
# the mounted file at once instead of at its next periodic sync.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "patch"]
# spec.autoTune: a CronJob running `tierguard tune --apply`, and the identity it runs as (a Role
# allowing get/patch on its own policy only: RBAC lets the operator grant what it holds itself).
- apiGroups: ["batch"]
  resources: ["cronjobs"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "patch"]
{{- end -}}


{{/* Leader election: on with several replicas, or when asked for. */}}
{{- define "tierguard.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}
