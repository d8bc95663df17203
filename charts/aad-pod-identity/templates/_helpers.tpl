{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "aad-pod-identity.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-wide name prefix; components append -webhook, -assigner, -nmi. */}}
{{- define "aad-pod-identity.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "aad-pod-identity.webhook" -}}{{ include "aad-pod-identity.fullname" . }}-webhook{{- end }}
{{- define "aad-pod-identity.assigner" -}}{{ include "aad-pod-identity.fullname" . }}-assigner{{- end }}
{{- define "aad-pod-identity.nmi" -}}{{ include "aad-pod-identity.fullname" . }}-nmi{{- end }}
{{- define "aad-pod-identity.cleanup" -}}{{ include "aad-pod-identity.fullname" . }}-cleanup{{- end }}
{{/* Secret holding the webhook's serving certificate (cert-manager or built-in rotation). */}}
{{- /* The webhook's serving certificate Secret: the chart's own with the built-in certificates,
cert-manager's otherwise. Two names, so that neither mode adopts the other's Secret on a switch. */}}
{{- define "aad-pod-identity.webhookCertSecret" -}}{{ include "aad-pod-identity.webhook" . }}-{{ ternary "tls" "cert" .Values.certManager.enabled }}{{- end }}

{{/* Labels on every object; call with (dict "root" $ "component" "webhook"). */}}
{{- define "aad-pod-identity.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "aad-pod-identity.selectorLabels" . }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "aad-pod-identity.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aad-pod-identity.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* repository:tag, the tag defaulting to the chart's appVersion; call with (dict "root" $ "image" .Values.x.image). */}}
{{- define "aad-pod-identity.image" -}}
{{ .image.repository }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end }}

{{/* Scheduling and pod-level settings shared by every component; call with (dict "root" $ "v" .Values.x). */}}
{{- define "aad-pod-identity.podScheduling" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "aad-pod-identity.config" -}}{{ include "aad-pod-identity.fullname" . }}-config{{- end }}

{{/* NMI's DaemonSet node selection, from the values its pod template uses: the webhook and
assigner put identities only onto the pools of nodes NMI runs on (policy.nmiNodeSelection). */}}
{{- define "aad-pod-identity.nmiNodeSelection" -}}
{{- $s := dict -}}
{{- with .Values.nmi.nodeSelector }}{{ $_ := set $s "nodeSelector" . }}{{ end -}}
{{- with .Values.nmi.affinity }}{{ $_ := set $s "affinity" . }}{{ end -}}
{{- with .Values.nmi.tolerations }}{{ $_ := set $s "tolerations" . }}{{ end -}}
{{- toJson $s -}}
{{- end }}

{{/* "true" when NMI serves federated identities: policy.federation.enabled or mode federated. */}}
{{- define "aad-pod-identity.federation" -}}
{{- if or .Values.policy.federation.enabled (eq .Values.policy.mode "federated") -}}
{{- if not .Values.policy.federation.tenantID }}{{ fail "policy.federation.tenantID is required with federation (mode federated or policy.federation.enabled): the Azure AD tenant's ID, az account show --query tenantId -o tsv" }}{{ end -}}
true
{{- end -}}
{{- end }}
{{/* The components' one configuration file (internal/config, docs/configuration.md): the
webhook, the assigner and NMI all read it from the release's ConfigMap. */}}
{{- define "aad-pod-identity.configuration" -}}
{{- $nmi := .Values.nmi -}}
{{- $exceptions := dict "namespaces" .Values.policy.exceptions.namespaces "tokens" .Values.policy.exceptions.tokens -}}
{{- with include "aad-pod-identity.nodeIdentityClientIDs" . | splitList "," | compact }}{{ $_ := set $exceptions "nodeIdentityClientIDs" . }}{{ end -}}
{{- $policy := dict "mode" .Values.policy.mode "allowCrossNamespace" .Values.policy.allowCrossNamespace "exceptions" $exceptions
  "serveExternalIdentities" .Values.policy.serveExternalIdentities "nmiNodeSelection" (include "aad-pod-identity.nmiNodeSelection" . | fromJson) -}}
{{- with include "aad-pod-identity.protectedIdentities" . | splitList "," | compact }}{{ $_ := set $policy "protectedIdentities" . }}{{ end -}}
{{- with .Values.policy.identityScopes }}{{ $_ := set $policy "identityScopes" . }}{{ end -}}
{{- if include "aad-pod-identity.federation" . }}{{ $_ := set $policy "federation" (dict "enabled" true "tenantID" .Values.policy.federation.tenantID) }}{{ end -}}
{{- $webhook := dict "configurationName" (include "aad-pod-identity.fullname" .) "adoptPreexistingPods" .Values.webhook.adoptPreexistingPods
  "trustedServiceAccounts" (list (printf "%s/%s" .Release.Namespace (include "aad-pod-identity.webhook" .)) (printf "%s/%s" .Release.Namespace (include "aad-pod-identity.assigner" .))) -}}
{{- if not .Values.certManager.enabled }}
{{- $_ := set $webhook "certRotation" (dict "enabled" true "secretName" (include "aad-pod-identity.webhookCertSecret" .) "serviceName" (include "aad-pod-identity.webhook" .)) -}}
{{- end -}}
{{- $assigner := dict "leaderElect" .Values.assigner.leaderElect "gcGracePeriod" .Values.assigner.gcGracePeriod "driftCheckPeriod" .Values.assigner.driftCheckPeriod -}}
{{- with concat .Values.assigner.immutableIdentities (list .Values.nodeIdentity.clientID .Values.nodeIdentity.resourceID | compact) }}{{ $_ := set $assigner "immutableIdentities" . }}{{ end -}}
{{- $nmiConfig := dict "syncPeriod" $nmi.syncPeriod "unknownCallerWait" $nmi.unknownCallerWait "tokenCacheSize" (int $nmi.tokenCacheSize)
  "allowedMetadataPaths" $nmi.allowedMetadataPaths "removeStartupTaint" $nmi.removeStartupTaint "enableServicePrincipals" $nmi.enableServicePrincipals
  "allowCrossNamespaceSecrets" $nmi.allowCrossNamespaceSecrets "flushConntrack" $nmi.flushConntrack "iptablesBackend" $nmi.iptablesBackend -}}
{{- with $nmi.criSocket }}{{ $_ := set $nmiConfig "criSocket" (printf "/run/cri/%s" (base .)) }}{{ end -}}
{{- with $nmi.cniCacheDir }}{{ $_ := set $nmiConfig "cniCacheDir" . }}{{ end -}}
{{- toYaml (dict "apiVersion" "config.aadpodidentity.k8s.io/v1alpha1" "kind" "Configuration" "policy" $policy "webhook" $webhook "assigner" $assigner "nmi" $nmiConfig) -}}
{{- end }}

{{/* Values that moved under policy: say where, rather than ignore them. */}}
{{- define "aad-pod-identity.movedValues" -}}
{{- $moved := list -}}
{{- range $k := list "mode" "exceptions" "protectedIdentities" "identityScopes" -}}
{{- if hasKey $.Values $k }}{{ $moved = append $moved (printf "%s is now policy.%s" $k $k) }}{{ end -}}
{{- end -}}
{{- if hasKey .Values.webhook "allowCrossNamespace" }}{{ $moved = append $moved "webhook.allowCrossNamespace is now policy.allowCrossNamespace" }}{{ end -}}
{{- if hasKey .Values.nmi "serveExternalIdentities" }}{{ $moved = append $moved "nmi.serveExternalIdentities is now policy.serveExternalIdentities" }}{{ end -}}
{{- with $moved }}{{ fail (printf "values moved under policy (docs/configuration.md): %s" (join "; " .)) }}{{ end -}}
{{- end }}

{{/* The configuration's mount, for the webhook's, the assigner's and NMI's containers. */}}
{{- define "aad-pod-identity.configMount" -}}
- name: config
  mountPath: /etc/aad-pod-identity
  readOnly: true
{{- end }}
{{- define "aad-pod-identity.configVolume" -}}
- name: config
  configMap:
    name: {{ include "aad-pod-identity.config" . }}
{{- end }}

{{/* Pod template metadata; call with (dict "root" $ "component" "webhook" "v" .Values.webhook). */}}
{{- define "aad-pod-identity.podMetadata" -}}
metadata:
  labels:
    {{- include "aad-pod-identity.labels" . | nindent 4 }}
    {{- with .v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- /* A changed configuration rolls the pods, as a changed flag did. */}}
    checksum/config: {{ include "aad-pod-identity.configuration" .root | sha256sum }}
    {{- with .v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The flags that locate NMI's iptables redirect; `nmi` and `nmi cleanup` take the same. */}}
{{/* The node's address, for the default listen address ($(HOST_IP) in nmiRedirectArgs). */}}
{{- define "aad-pod-identity.hostIPEnv" -}}
- name: HOST_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end }}
{{- define "aad-pod-identity.nmiRedirectArgs" -}}
- --listen-address={{ .Values.nmi.listenAddress | default (printf "$(HOST_IP):%d" (int .Values.nmi.listenPort)) }}
- --metadata-ip={{ .Values.nmi.metadataIP }}
- --metadata-port={{ .Values.nmi.metadataPort }}
{{- end }}

{{/* Authentication and authorization of metrics scrapers (secureMetrics). */}}
{{- define "aad-pod-identity.metricsAuthRules" -}}
# Authentication and authorization of metrics scrapers.
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
- apiGroups: [authorization.k8s.io]
  resources: [subjectaccessreviews]
  verbs: [create]
{{- end }}

{{/* iptables takes the host's xtables lock so that NMI and kube-proxy do not race. */}}
{{- define "aad-pod-identity.xtablesMount" -}}
- name: xtables-lock
  mountPath: /run/xtables.lock
{{- end }}
{{- define "aad-pod-identity.xtablesVolume" -}}
- name: xtables-lock
  hostPath:
    path: /run/xtables.lock
    type: FileOrCreate
{{- end }}

{{/* The usernames of the service accounts the pod validator trusts with our label, annotations and gate, as a JSON list for CEL. */}}
{{- define "aad-pod-identity.trustedUsernames" -}}
{{- list (printf "system:serviceaccount:%s:%s" .Release.Namespace (include "aad-pod-identity.webhook" .)) (printf "system:serviceaccount:%s:%s" .Release.Namespace (include "aad-pod-identity.assigner" .)) | toJson }}
{{- end }}

{{/* The cluster's own identities: no AzureIdentity may name them (webhook) and NMI serves them to no pod. */}}
{{- define "aad-pod-identity.protectedIdentities" -}}
{{ join "," (concat .Values.policy.protectedIdentities .Values.assigner.immutableIdentities (include "aad-pod-identity.nodeIdentityClientIDs" . | splitList "," | compact) (list .Values.nodeIdentity.resourceID | compact) | uniq) }}
{{- end }}

{{/* The node identities exception pods may name: exceptions.nodeIdentityClientIDs and nodeIdentity.clientID. */}}
{{- define "aad-pod-identity.nodeIdentityClientIDs" -}}
{{ join "," (concat .Values.policy.exceptions.nodeIdentityClientIDs (list .Values.nodeIdentity.clientID | compact) | uniq) }}
{{- end }}

{{/* identityScopes as namespace=scope entries, for the webhook's and NMI's --identity-scopes. */}}
{{- define "aad-pod-identity.identityScopes" -}}
{{- $entries := list }}
{{- range $ns := keys .Values.policy.identityScopes | sortAlpha }}
{{- range index $.Values.policy.identityScopes $ns }}
{{- $entries = append $entries (printf "%s=%s" $ns .) }}
{{- end }}
{{- end }}
{{- join "," $entries }}
{{- end }}
