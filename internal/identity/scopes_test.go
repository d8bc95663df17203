package identity

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

func TestParseScopes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []string
		wantErr bool
	}{
		{name: "none", entries: []string{""}},
		{name: "subscription and resource group", entries: []string{"a=/subscriptions/s1", " a = /Subscriptions/s2/resourceGroups/rg/ ", "*=/subscriptions/s3"}},
		{name: "no namespace", entries: []string{"=/subscriptions/s1"}, wantErr: true},
		{name: "no scope", entries: []string{"a"}, wantErr: true},
		{name: "a resource, not a scope", entries: []string{"a=/subscriptions/s/resourceGroups/rg/providers/x"}, wantErr: true},
		{name: "not an ARM path", entries: []string{"a=rg"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseScopes(tc.entries); (err != nil) != tc.wantErr {
				t.Errorf("ParseScopes(%q) error %v, want error %v", tc.entries, err, tc.wantErr)
			}
		})
	}
}

func TestScopesCheck(t *testing.T) {
	const sub = "/subscriptions/s1"
	uami := func(ns, rg string) *aadv1.AzureIdentity {
		return &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "x"}, Spec: aadv1.AzureIdentitySpec{
			Type: aadv1.UserAssignedMSI, ResourceID: sub + "/resourceGroups/" + rg + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/x"}}
	}
	scopes, err := ParseScopes([]string{"team-a=" + sub + "/resourceGroups/team-a", "team-a=/subscriptions/s2", "*=" + sub + "/resourceGroups/shared"})
	if err != nil {
		t.Fatal(err)
	}
	sp := uami("team-b", "anything")
	sp.Spec.Type = aadv1.ServicePrincipal
	for _, tc := range []struct {
		name   string
		scopes Scopes
		id     *aadv1.AzureIdentity
		ok     bool
	}{
		{name: "no restriction", scopes: nil, id: uami("team-a", "kubelet-rg"), ok: true},
		{name: "in the namespace's resource group, any case", scopes: scopes, id: uami("team-a", "TEAM-A"), ok: true},
		{name: "a resource group of the same prefix", scopes: scopes, id: uami("team-a", "team-a-other"), ok: false},
		{name: "outside the namespace's scopes", scopes: scopes, id: uami("team-a", "shared"), ok: false},
		{name: "other namespaces: the * entry", scopes: scopes, id: uami("team-b", "shared"), ok: true},
		{name: "other namespaces: outside the * entry", scopes: scopes, id: uami("team-b", "team-a"), ok: false},
		{name: "no entry at all for the namespace", scopes: Scopes{"team-a": {sub}}, id: uami("team-b", "x"), ok: false},
		{name: "service principals are not ARM resources", scopes: scopes, id: sp, ok: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.scopes.Check(tc.id); (err == nil) != tc.ok {
				t.Errorf("Check = %v, want allowed %v", err, tc.ok)
			}
		})
	}
}
