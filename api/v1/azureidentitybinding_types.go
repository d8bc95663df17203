package v1

import (
	"encoding/json"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AzureIdentityBindingSpec binds pods labelled aadpodidbinding=<selector> to
// an AzureIdentity in the binding's namespace. azureIdentity and selector
// are required, in either spelling (1.x manifests wrote AzureIdentity and
// Selector).
// +kubebuilder:validation:XValidation:rule="has(self.azureIdentity) || has(self.AzureIdentity)",message="azureIdentity is required: the name of an AzureIdentity in this namespace",fieldPath=".azureIdentity",reason=FieldValueRequired
// +kubebuilder:validation:XValidation:rule="has(self.selector) || has(self.Selector)",message="selector is required: the aadpodidbinding label value of the pods to bind",fieldPath=".selector",reason=FieldValueRequired
type AzureIdentityBindingSpec struct {
	// AzureIdentity is the name of an AzureIdentity in this namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	// +optional
	AzureIdentity string `json:"azureIdentity,omitempty"`

	// Selector equals the aadpodidbinding label value of the pods to bind.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`
	// +optional
	Selector string `json:"selector,omitempty"`

	// Weight is kept for compatibility with earlier releases.
	// +optional
	Weight int `json:"weight,omitempty"`

	// LegacyBindingSpellings are 1.x's spellings of the fields above;
	// decoding folds them in (legacy.go).
	LegacyBindingSpellings `json:",inline"`
}

// UnmarshalJSON decodes the spec and folds the 1.x spellings.
func (s *AzureIdentityBindingSpec) UnmarshalJSON(b []byte) error {
	type plain AzureIdentityBindingSpec
	if err := json.Unmarshal(b, (*plain)(s)); err != nil {
		return err
	}
	s.fold()
	return nil
}

// AzureIdentityBindingStatus is kept for compatibility with earlier releases.
type AzureIdentityBindingStatus struct {
	// +optional
	AvailableReplicas int32 `json:"availableReplicas,omitempty"`
}

// AzureIdentityBinding gives pods with a matching aadpodidbinding label an
// AzureIdentity.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved, the aadpodidentity.k8s.io API predates the approval process and is kept for compatibility"
// +kubebuilder:printcolumn:name="Identity",type=string,JSONPath=`.spec.azureIdentity`
// +kubebuilder:printcolumn:name="Selector",type=string,JSONPath=`.spec.selector`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AzureIdentityBinding struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AzureIdentityBindingSpec   `json:"spec,omitempty"`
	Status AzureIdentityBindingStatus `json:"status,omitempty"`
}

// AzureIdentityBindingList is a list of AzureIdentityBinding.
// +kubebuilder:object:root=true
type AzureIdentityBindingList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzureIdentityBinding `json:"items"`
}

func init() {
	SchemeBuilder.Register(&AzureIdentityBinding{}, &AzureIdentityBindingList{})
}
