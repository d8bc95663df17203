package v1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// AssignmentState is the state of one identity on one node pool.
// +kubebuilder:validation:Enum=Assigning;Assigned;Unassigning;Failed
type AssignmentState string

const (
	// StateAssigning: the record exists, the ARM write may not have finished.
	StateAssigning AssignmentState = "Assigning"
	// StateAssigned: ARM confirmed the identity on the pool.
	StateAssigned AssignmentState = "Assigned"
	// StateUnassigning: no pod needs it any more; removal is under way.
	StateUnassigning AssignmentState = "Unassigning"
	// StateFailed: ARM refused the identity; see lastError.
	StateFailed AssignmentState = "Failed"
)

// IdentityReference names an AzureIdentity.
type IdentityReference struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// LegacySpec is part of the whole AzureIdentity aad-pod-identity 1.x's
	// MIC embedded here; read only to adopt the identities it assigned.
	// +optional
	LegacySpec *LegacyIdentitySpec `json:"spec,omitempty"`
}

// LegacyIdentitySpec is what is read of the AzureIdentity 1.x embedded in
// its records.
type LegacyIdentitySpec struct {
	// +optional
	ResourceID string `json:"resourceID,omitempty"`
}

// AzureAssignedIdentitySpec records one user-assigned identity on one node
// pool (VMSS or standalone VM).
type AzureAssignedIdentitySpec struct {
	// AzureIdentityRef is the AzureIdentity this assignment serves.
	AzureIdentityRef IdentityReference `json:"azureIdentityRef"`
	// ClientID of the identity.
	ClientID string `json:"clientID"`
	// ResourceID is the ARM ID of the user-assigned identity.
	ResourceID string `json:"resourceID"`
	// NodePool is the ARM ID of the VMSS or VM.
	NodePool string `json:"nodePool"`

	// aad-pod-identity 1.x's MIC wrote one record per pod and identity,
	// without a node pool; these of its fields are read only to adopt the
	// identities it assigned (docs/migration.md).

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

// AzureAssignedIdentityStatus says where the assignment stands.
type AzureAssignedIdentityStatus struct {
	// +optional
	Status AssignmentState `json:"status,omitempty"`
	// Pods is the number of live pods that need this identity on this pool.
	// +optional
	Pods int32 `json:"pods,omitempty"`
	// LastError is the last ARM error for this assignment.
	// +optional
	LastError string `json:"lastError,omitempty"`
	// External is true when the identity was on the pool before it was
	// needed here; it is never removed by the assigner.
	// +optional
	External bool `json:"external,omitempty"`
}

// AzureAssignedIdentity records that a user-assigned identity is (being)
// assigned to a node pool.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved, the aadpodidentity.k8s.io API predates the approval process and is kept for compatibility"
// +kubebuilder:printcolumn:name="Identity",type=string,JSONPath=`.spec.azureIdentityRef.name`
// +kubebuilder:printcolumn:name="ClientID",type=string,JSONPath=`.spec.clientID`
// +kubebuilder:printcolumn:name="Pool",type=string,JSONPath=`.spec.nodePool`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.status`
// +kubebuilder:printcolumn:name="Pods",type=integer,JSONPath=`.status.pods`
// +kubebuilder:printcolumn:name="External",type=boolean,JSONPath=`.status.external`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AzureAssignedIdentity struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AzureAssignedIdentitySpec   `json:"spec,omitempty"`
	Status AzureAssignedIdentityStatus `json:"status,omitempty"`
}

// AzureAssignedIdentityList is a list of AzureAssignedIdentity.
// +kubebuilder:object:root=true
type AzureAssignedIdentityList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzureAssignedIdentity `json:"items"`
}

func init() {
	SchemeBuilder.Register(&AzureAssignedIdentity{}, &AzureAssignedIdentityList{})
}
