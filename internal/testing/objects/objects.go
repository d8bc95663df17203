// Package objects builds the API objects tests of several packages share.
package objects

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// AzureIdentity is an AzureIdentity of the type with the client ID.
func AzureIdentity(ns, name string, typ aadv1.IdentityType, clientID string) aadv1.AzureIdentity {
	return aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       aadv1.AzureIdentitySpec{Type: typ, ClientID: clientID},
	}
}

// Binding binds the AzureIdentity named identity to selector.
func Binding(ns, name, identity, selector string) aadv1.AzureIdentityBinding {
	return aadv1.AzureIdentityBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: selector},
	}
}
