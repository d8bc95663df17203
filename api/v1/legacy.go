package v1

import (
	"cmp"

	corev1 "k8s.io/api/core/v1"
)

// The shapes earlier releases wrote, grouped per kind and embedded inline
// in today's types: the CRDs must still declare every field, or the API
// server prunes them from the objects those releases stored, and the
// upgrade loses what they say. Only internal/compat reads them, and only
// the decoding here folds 1.x's spellings (it cannot call internal/compat,
// which imports this package). Nothing writes them. They go with
// internal/compat (docs/migration.md, "Compatibility code").

// LegacyIdentitySpellings are the spellings of an AzureIdentitySpec that
// 1.x manifests used: its decoding ignored case, so ResourceID and
// ClientID worked, and existing manifests and stored objects still carry
// them.
type LegacyIdentitySpellings struct {
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="self.matches('^[ -~]*$')",message="must be printable ASCII, as Azure client and resource IDs are"
	// +optional
	LegacyResourceID string `json:"ResourceID,omitempty"`
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.matches('^[ -~]*$')",message="must be printable ASCII, as Azure client and resource IDs are"
	// +optional
	LegacyClientID string `json:"ClientID,omitempty"`
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.matches('^[ -~]*$')",message="must be printable ASCII, as Azure client and resource IDs are"
	// +optional
	LegacyClientIDMixed string `json:"ClientId,omitempty"`
	// +kubebuilder:validation:MaxLength=128
	// +optional
	LegacyTenantID string `json:"TenantID,omitempty"`
	// +optional
	LegacyClientPassword *corev1.SecretReference `json:"ClientPassword,omitempty"`
}

// fold gives the 1.x spellings' values to the canonical fields that are
// unset, as 1.x's case-insensitive decoding did.
func (s *AzureIdentitySpec) fold() {
	s.ResourceID = cmp.Or(s.ResourceID, s.LegacyResourceID)
	s.ClientID = cmp.Or(s.ClientID, s.LegacyClientID, s.LegacyClientIDMixed)
	s.TenantID = cmp.Or(s.TenantID, s.LegacyTenantID)
	if s.ClientPassword == nil {
		s.ClientPassword = s.LegacyClientPassword
	}
}

// LegacyBindingSpellings are the spellings of an AzureIdentityBindingSpec
// that 1.x manifests used.
type LegacyBindingSpellings struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	// +optional
	LegacyAzureIdentity string `json:"AzureIdentity,omitempty"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`
	// +optional
	LegacySelector string `json:"Selector,omitempty"`
}

// fold gives the 1.x spellings' values to the canonical fields that are
// unset.
func (s *AzureIdentityBindingSpec) fold() {
	s.AzureIdentity = cmp.Or(s.AzureIdentity, s.LegacyAzureIdentity)
	s.Selector = cmp.Or(s.Selector, s.LegacySelector)
}

// LegacyRecordSpec is the spec of a record that held a single identity:
// aad-pod-identity 0.1's (one per identity and pool, with nodePool) and
// 1.x's (one per pod and identity, without).
type LegacyRecordSpec struct {
	// LegacyIdentityRef is the AzureIdentity a single-identity record was
	// for; read only to take such records over.
	// +optional
	LegacyIdentityRef *LegacyIdentityReference `json:"azureIdentityRef,omitempty"`
	// LegacyClientID is the client ID of that identity (0.1).
	// +optional
	LegacyClientID string `json:"clientID,omitempty"`
	// LegacyResourceID is the ARM ID of that identity (0.1).
	// +optional
	LegacyResourceID string `json:"resourceID,omitempty"`
	// LegacyPod is the pod a 1.x record was written for.
	// +optional
	LegacyPod string `json:"pod,omitempty"`
	// LegacyPodNamespace is that pod's namespace.
	// +optional
	LegacyPodNamespace string `json:"podNamespace,omitempty"`
	// LegacyNodeName is the node whose VMSS or VM MIC put the identity on.
	// +optional
	LegacyNodeName string `json:"nodename,omitempty"`
}

// LegacyIdentityReference is a single-identity record's AzureIdentity: by
// namespace and name (0.1), or the whole AzureIdentity that 1.x's MIC
// embedded, of which its namespace, name and resource ID are read.
type LegacyIdentityReference struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Metadata is the metadata of the AzureIdentity 1.x embedded.
	// +optional
	Metadata *LegacyObjectMeta `json:"metadata,omitempty"`
	// Spec is the spec of the AzureIdentity 1.x embedded.
	// +optional
	Spec *LegacyIdentitySpec `json:"spec,omitempty"`
}

// LegacyObjectMeta is what is read of the metadata of the AzureIdentity 1.x
// embedded in its records.
type LegacyObjectMeta struct {
	// +optional
	Namespace string `json:"namespace,omitempty"`
	// +optional
	Name string `json:"name,omitempty"`
}

// LegacyIdentitySpec is what is read of the AzureIdentity 1.x embedded in
// its records.
type LegacyIdentitySpec struct {
	// +optional
	ResourceID string `json:"resourceID,omitempty"`
}

// LegacyRecordStatus is the status of a single-identity record (0.1's,
// 1.x's).
type LegacyRecordStatus struct {
	// LegacyStatus is the state of a single-identity record's identity;
	// read only to take such records over.
	// +optional
	LegacyStatus AssignmentState `json:"status,omitempty"`
	// +optional
	LegacyLastError string `json:"lastError,omitempty"`
	// +optional
	LegacyExternal bool `json:"external,omitempty"`
}
