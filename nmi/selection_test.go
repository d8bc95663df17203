package nmi

import (
	"errors"
	"net/http"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

func identity(name, clientID, resourceID string) aadv1.AzureIdentity {
	return aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec:       aadv1.AzureIdentitySpec{ClientID: clientID, ResourceID: resourceID},
	}
}

func TestSelectIdentity(t *testing.T) {
	a := identity("a", "AAAA", "/subs/x/ids/a")
	b := identity("b", "bbbb", "/subs/x/ids/b")
	sp := identity("sp", "cccc", "")
	tests := []struct {
		name     string
		req      tokenRequest
		admitted []aadv1.AzureIdentity
		want     string // identity name, or "" for an error
		status   int
		reason   string
	}{
		{"only one, none named", tokenRequest{}, []aadv1.AzureIdentity{a}, "a", 0, ""},
		{"client id any case", tokenRequest{ClientID: "aaaa"}, []aadv1.AzureIdentity{b, a}, "a", 0, ""},
		{"resource id any case", tokenRequest{ResourceID: "/SUBS/x/ids/b"}, []aadv1.AzureIdentity{a, b}, "b", 0, ""},
		{"service principal by client id", tokenRequest{ClientID: "cccc"}, []aadv1.AzureIdentity{a, sp}, "sp", 0, ""},
		{"several, none named", tokenRequest{}, []aadv1.AzureIdentity{a, b}, "", http.StatusBadRequest, "several_identities"},
		{"none admitted", tokenRequest{}, nil, "", http.StatusForbidden, "no_identity"},
		{"none admitted, one named", tokenRequest{ClientID: "aaaa"}, nil, "", http.StatusForbidden, "no_identity"},
		{"other client id", tokenRequest{ClientID: "bbbb"}, []aadv1.AzureIdentity{a}, "", http.StatusForbidden, "identity_not_admitted"},
		{"other resource id", tokenRequest{ResourceID: "/subs/x/ids/b"}, []aadv1.AzureIdentity{a}, "", http.StatusForbidden, "identity_not_admitted"},
		{"empty resource id never matches a service principal", tokenRequest{ResourceID: "/x"}, []aadv1.AzureIdentity{sp}, "", http.StatusForbidden, "identity_not_admitted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := selectIdentity(tt.req, "ns/pod", tt.admitted)
			if tt.want != "" {
				if err != nil || got.Name != tt.want {
					t.Fatalf("got %v, %v; want %s", got, err, tt.want)
				}
				return
			}
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != tt.status || ae.reason != tt.reason {
				t.Fatalf("got %v, %v; want %d %s", got, err, tt.status, tt.reason)
			}
		})
	}
}
