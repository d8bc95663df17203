// Package v1 contains the aadpodidentity.k8s.io/v1 API: the CRDs users apply
// (AzureIdentity, AzureIdentityBinding, AzurePodIdentityException) and the
// AzureAssignedIdentity records the assigner keeps.
// +kubebuilder:object:generate=true
// +groupName=aadpodidentity.k8s.io
package v1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the API group and version of these types.
	GroupVersion = schema.GroupVersion{Group: "aadpodidentity.k8s.io", Version: "v1"}

	// SchemeBuilder registers the types with a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types in this group-version to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
