package v1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// AzurePodIdentityExceptionSpec lets pods in the exception's namespace that
// carry any one of PodLabels reach IMDS with the node's own identities.
type AzurePodIdentityExceptionSpec struct {
	// +kubebuilder:validation:MinProperties=1
	PodLabels map[string]string `json:"podLabels"`
}

// AzurePodIdentityExceptionStatus is kept for compatibility.
type AzurePodIdentityExceptionStatus struct {
	// +optional
	Status string `json:"status,omitempty"`
}

// AzurePodIdentityException exempts matching pods from interception.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved, the aadpodidentity.k8s.io API predates the approval process and is kept for compatibility"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AzurePodIdentityException struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AzurePodIdentityExceptionSpec   `json:"spec,omitempty"`
	Status AzurePodIdentityExceptionStatus `json:"status,omitempty"`
}

// AzurePodIdentityExceptionList is a list of AzurePodIdentityException.
// +kubebuilder:object:root=true
type AzurePodIdentityExceptionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzurePodIdentityException `json:"items"`
}

func init() {
	SchemeBuilder.Register(&AzurePodIdentityException{}, &AzurePodIdentityExceptionList{})
}
