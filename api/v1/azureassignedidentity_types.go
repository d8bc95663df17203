package v1

import (
	"cmp"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AssignmentState is the state of one identity on one node pool.
// +kubebuilder:validation:Enum=Assigning;Assigned;Unassigning;Failed
type AssignmentState string

const (
	// StateAssigning: the entry exists, the ARM write may not have finished.
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
}

// AzureAssignedIdentitySpec names the node pool (VMSS or standalone VM)
// whose user-assigned identities the record tracks. The assigner keeps one
// record per pool, so a burst of pods costs a few writes per pool rather
// than a record per identity and pool.
type AzureAssignedIdentitySpec struct {
	// NodePool is the ARM ID of the VMSS or VM.
	// +optional
	NodePool string `json:"nodePool,omitempty"`

	// LegacyRecordSpec holds the fields of earlier releases' one-identity
	// records (legacy.go).
	LegacyRecordSpec `json:",inline"`
}

// IdentityAssignment is one user-assigned identity on the record's pool.
// Its entry is written before the ARM write that adds the identity, so that
// ownership survives a crash.
type IdentityAssignment struct {
	// AzureIdentityRef is the AzureIdentity this assignment serves.
	AzureIdentityRef IdentityReference `json:"azureIdentityRef"`
	// ClientID of the identity, as the AzureIdentity named it.
	ClientID string `json:"clientID"`
	// ResourceID is the ARM ID of the user-assigned identity.
	ResourceID string `json:"resourceID"`
	// State is Assigning until ARM confirms the identity.
	// +optional
	State AssignmentState `json:"state,omitempty"`
	// Pods is the number of live pods that need this identity on this pool.
	// +optional
	Pods int32 `json:"pods,omitempty"`
	// LastError is the last ARM error for this assignment.
	// +optional
	LastError string `json:"lastError,omitempty"`
	// External is true when the identity was on the pool before it was
	// needed here; the assigner never removes it.
	// +optional
	External bool `json:"external,omitempty"`
	// UnneededSince is when the last pod that needed the identity went
	// away; the grace period runs from there.
	// +optional
	UnneededSince *metav1.MicroTime `json:"unneededSince,omitempty"`
	// AdoptedFrom names the earlier record (1.x's or 0.1's) that showed the
	// identity was put on the pool for us.
	// +optional
	AdoptedFrom string `json:"adoptedFrom,omitempty"`
	// Preexisting is true when the identity was on the pool before this
	// entry was recorded and 1.x's record showed it was put there for this
	// AzureIdentity: it is served, but the assigner never removes it, since
	// a record it cannot fully verify must not take an identity off a pool.
	// +optional
	Preexisting bool `json:"preexisting,omitempty"`
}

// AzureAssignedIdentityStatus says where the pool's assignments stand.
type AzureAssignedIdentityStatus struct {
	// Identities are the pool's user-assigned identities, sorted by
	// AzureIdentity namespace, then name (Find relies on the order).
	// +optional
	// +listType=atomic
	Identities []IdentityAssignment `json:"identities,omitempty"`
	// Assigned counts the Assigned Identities, for kubectl get.
	// +optional
	Assigned int32 `json:"assigned,omitempty"`
	// Assigning counts the Identities being assigned or removed.
	// +optional
	Assigning int32 `json:"assigning,omitempty"`
	// Failed counts the Failed Identities.
	// +optional
	Failed int32 `json:"failed,omitempty"`
	// NodePoolName is the VMSS or VM name of spec.nodePool, for kubectl
	// get (a printer column cannot cut it out of the ARM ID).
	// +optional
	NodePoolName string `json:"nodePoolName,omitempty"`

	// LegacyRecordStatus holds the status of earlier releases'
	// one-identity records (legacy.go).
	LegacyRecordStatus `json:",inline"`
}

// Find returns the entry of the AzureIdentity namespace/name, or nil. It
// searches the sorted Identities (a pod's round looks up each of its
// identities in the record of each of its pools).
func (s *AzureAssignedIdentityStatus) Find(namespace, name string) *IdentityAssignment {
	i, found := slices.BinarySearchFunc(s.Identities, [2]string{namespace, name}, func(e IdentityAssignment, key [2]string) int {
		return CompareRefs(e.AzureIdentityRef, key[0], key[1])
	})
	if !found {
		return nil
	}
	return &s.Identities[i]
}

// CompareRefs orders an AzureIdentity reference against namespace/name:
// by namespace, then name.
func CompareRefs(ref IdentityReference, namespace, name string) int {
	return cmp.Or(strings.Compare(ref.Namespace, namespace), strings.Compare(ref.Name, name))
}

// AzureAssignedIdentity records the user-assigned identities the assigner
// put, or is putting, on one node pool.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved, the aadpodidentity.k8s.io API predates the approval process and is kept for compatibility"
// +kubebuilder:printcolumn:name="Pool",type=string,JSONPath=`.status.nodePoolName`
// +kubebuilder:printcolumn:name="Assigned",type=integer,JSONPath=`.status.assigned`
// +kubebuilder:printcolumn:name="Assigning",type=integer,JSONPath=`.status.assigning`
// +kubebuilder:printcolumn:name="Failed",type=integer,JSONPath=`.status.failed`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Pool ID",type=string,JSONPath=`.spec.nodePool`,priority=1
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
