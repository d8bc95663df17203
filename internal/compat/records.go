package compat

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// Record1x is what a record of aad-pod-identity 1.x's MIC says: it put an
// identity on a node's VMSS or VM for a pod. Fields the record lacks (it
// may have been pruned) are empty.
type Record1x struct {
	// Pod is the pod the record was written for.
	Pod types.NamespacedName
	// Node is the pod's node, whose VMSS or VM got the identity.
	Node string
	// Identity is the AzureIdentity MIC embedded, and ResourceID its
	// user-assigned identity.
	Identity   types.NamespacedName
	ResourceID string
	// State is MIC's: Assigned once the identity was on the node's pool.
	State aadv1.AssignmentState
}

// Read1x reads rec as 1.x's per-pod record; ok is false for a record that
// names its node pool (0.1's and today's always do).
func Read1x(rec *aadv1.AzureAssignedIdentity) (r Record1x, ok bool) {
	if rec.Spec.NodePool != "" {
		return Record1x{}, false
	}
	spec := &rec.Spec.LegacyRecordSpec
	r = Record1x{
		Pod:   types.NamespacedName{Namespace: spec.LegacyPodNamespace, Name: spec.LegacyPod},
		Node:  spec.LegacyNodeName,
		State: rec.Status.LegacyStatus,
	}
	if ref := spec.LegacyIdentityRef; ref != nil {
		if ref.Metadata != nil {
			r.Identity = types.NamespacedName{Namespace: ref.Metadata.Namespace, Name: ref.Metadata.Name}
		}
		if ref.Spec != nil {
			r.ResourceID = ref.Spec.ResourceID
		}
	}
	return r, true
}

// unneededSince is the annotation in which 0.1 kept when the last pod that
// needed a record's identity went away.
const unneededSince = aadv1.AnnotationPrefix + "unneeded-since"

// Read01 converts rec, when it is one of 0.1's one-identity records (one
// per identity and pool), into the entry that says the same in the pool's
// record; ok is false for any other record.
func Read01(rec *aadv1.AzureAssignedIdentity) (e *aadv1.IdentityAssignment, ok bool) {
	ref := rec.Spec.LegacyIdentityRef
	if rec.Spec.NodePool == "" || ref == nil {
		return nil, false
	}
	status := &rec.Status.LegacyRecordStatus
	e = &aadv1.IdentityAssignment{
		AzureIdentityRef: aadv1.IdentityReference{Namespace: ref.Namespace, Name: ref.Name},
		ClientID:         rec.Spec.LegacyClientID,
		ResourceID:       rec.Spec.LegacyResourceID,
		State:            status.LegacyStatus,
		LastError:        status.LegacyLastError,
		External:         status.LegacyExternal,
		AdoptedFrom:      types.NamespacedName{Namespace: rec.Namespace, Name: rec.Name}.String(),
	}
	if since, err := time.Parse(time.RFC3339Nano, rec.Annotations[unneededSince]); err == nil {
		e.UnneededSince = &metav1.MicroTime{Time: since}
	}
	return e, true
}
