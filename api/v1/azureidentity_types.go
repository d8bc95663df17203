package v1

import (
	"encoding/json"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// IdentityType says how an AzureIdentity authenticates.
// +kubebuilder:validation:Minimum=0
// +kubebuilder:validation:Maximum=2
type IdentityType int

const (
	// UserAssignedMSI is a user-assigned managed identity, served by IMDS once
	// it is on the node's VMSS or VM.
	UserAssignedMSI IdentityType = 0
	// ServicePrincipal authenticates with a client secret.
	ServicePrincipal IdentityType = 1
	// ServicePrincipalCertificate authenticates with a client certificate.
	ServicePrincipalCertificate IdentityType = 2
)

// The CEL rules hold every field rule, so a bad identity is refused by the
// apiserver itself with a message naming the field. Client and resource IDs
// are printable ASCII: they compare ignoring ASCII case only (SameID), and
// the type 0 rule's (?i) would let a Unicode look-alike (ſ for s) through.

// AzureIdentitySpec describes an Azure AD identity pods may be bound to.
// The 1.x spellings (ResourceID, ClientID, ...) count where the canonical
// field is unset, as in Go's decoding (LegacyIdentitySpellings).
// +kubebuilder:validation:XValidation:rule="self.type != 0 || (has(self.resourceID) && self.resourceID.matches('(?i)^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\\\\.managedidentity/userassignedidentities/[^/]+$')) || (!has(self.resourceID) && has(self.ResourceID) && self.ResourceID.matches('(?i)^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\\\\.managedidentity/userassignedidentities/[^/]+$'))",message="type 0 (user-assigned identity) needs resourceID of the form /subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>",fieldPath=".resourceID",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="self.type != 0 || (has(self.clientID) && self.clientID.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')) || (!has(self.clientID) && has(self.ClientID) && self.ClientID.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')) || (!has(self.clientID) && !has(self.ClientID) && has(self.ClientId) && self.ClientId.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'))",message="type 0 (user-assigned identity) needs clientID, a GUID such as 00000000-0000-0000-0000-000000000000",fieldPath=".clientID",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="self.type == 0 || (has(self.tenantID) && size(self.tenantID) > 0) || (!has(self.tenantID) && has(self.TenantID) && size(self.TenantID) > 0)",message="type 1 and 2 (service principal) need tenantID",fieldPath=".tenantID",reason=FieldValueRequired
// +kubebuilder:validation:XValidation:rule="self.type == 0 || (has(self.clientID) && size(self.clientID) > 0) || (!has(self.clientID) && has(self.ClientID) && size(self.ClientID) > 0) || (!has(self.clientID) && !has(self.ClientID) && has(self.ClientId) && size(self.ClientId) > 0)",message="type 1 and 2 (service principal) need clientID",fieldPath=".clientID",reason=FieldValueRequired
// +kubebuilder:validation:XValidation:rule="self.type == 0 || (has(self.clientPassword) && has(self.clientPassword.name) && size(self.clientPassword.name) > 0) || (!has(self.clientPassword) && has(self.ClientPassword) && has(self.ClientPassword.name) && size(self.ClientPassword.name) > 0)",message="type 1 and 2 (service principal) need clientPassword, a reference {name, namespace} to the Secret holding the credential",fieldPath=".clientPassword",reason=FieldValueRequired
type AzureIdentitySpec struct {
	// Type is 0 for a user-assigned managed identity, 1 for a service
	// principal with a client secret, 2 for a service principal with a
	// certificate.
	// +kubebuilder:default=0
	// +optional
	Type IdentityType `json:"type"`

	// ResourceID is the ARM ID of the user-assigned identity (type 0).
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="self.matches('^[ -~]*$')",message="must be printable ASCII, as Azure client and resource IDs are"
	// +optional
	ResourceID string `json:"resourceID,omitempty"`

	// ClientID is the application (client) ID of the identity.
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.matches('^[ -~]*$')",message="must be printable ASCII, as Azure client and resource IDs are"
	// +optional
	ClientID string `json:"clientID,omitempty"`

	// TenantID is the Azure AD tenant of a service principal (type 1 and 2).
	// +kubebuilder:validation:MaxLength=128
	// +optional
	TenantID string `json:"tenantID,omitempty"`

	// ClientPassword references the Secret holding a service principal's
	// credential: key clientSecret (or the only key) for type 1, keys
	// certificate and password for type 2.
	// +optional
	ClientPassword *corev1.SecretReference `json:"clientPassword,omitempty"`

	// AuxiliaryTenantIDs are further tenants a service principal may get
	// tokens for.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	AuxiliaryTenantIDs []string `json:"auxiliaryTenantIDs,omitempty"`

	// ADEndpoint is the Azure AD authority host for a service principal,
	// for sovereign clouds.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	ADEndpoint string `json:"adEndpoint,omitempty"`

	// ADResourceID is kept for compatibility with earlier releases.
	// +optional
	ADResourceID string `json:"adResourceID,omitempty"`

	// Replicas is kept for compatibility with earlier releases.
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// LegacyIdentitySpellings are 1.x's spellings of the fields above;
	// decoding folds them in (legacy.go).
	LegacyIdentitySpellings `json:",inline"`
}

// UnmarshalJSON decodes the spec and folds the 1.x spellings, so that
// every reader (the webhook, the assigner, NMI) sees the canonical fields.
func (s *AzureIdentitySpec) UnmarshalJSON(b []byte) error {
	type plain AzureIdentitySpec
	if err := json.Unmarshal(b, (*plain)(s)); err != nil {
		return err
	}
	s.fold()
	return nil
}

// AzureIdentityStatus is kept for compatibility with earlier releases.
type AzureIdentityStatus struct {
	// +optional
	AvailableReplicas int32 `json:"availableReplicas,omitempty"`
}

// AzureIdentity is an Azure AD identity that pods can be bound to.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved, the aadpodidentity.k8s.io API predates the approval process and is kept for compatibility"
// +kubebuilder:printcolumn:name="Type",type=integer,JSONPath=`.spec.type`
// +kubebuilder:printcolumn:name="ClientID",type=string,JSONPath=`.spec.clientID`
// +kubebuilder:printcolumn:name="ResourceID",type=string,JSONPath=`.spec.resourceID`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AzureIdentity struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AzureIdentitySpec   `json:"spec,omitempty"`
	Status AzureIdentityStatus `json:"status,omitempty"`
}

// AzureIdentityList is a list of AzureIdentity.
// +kubebuilder:object:root=true
type AzureIdentityList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzureIdentity `json:"items"`
}

func init() {
	SchemeBuilder.Register(&AzureIdentity{}, &AzureIdentityList{})
}
