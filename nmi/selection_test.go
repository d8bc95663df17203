package nmi

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

func azureIdentity(name, clientID, resourceID string) aadv1.AzureIdentity {
	return aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec:       aadv1.AzureIdentitySpec{ClientID: clientID, ResourceID: resourceID},
	}
}

func TestSelectIdentity(t *testing.T) {
	a := azureIdentity("a", "AAAA", "/subs/x/ids/a")
	b := azureIdentity("b", "bbbb", "/subs/x/ids/b")
	sp := azureIdentity("sp", "cccc", "")
	other := azureIdentity("o", "dddd", "")
	other.Namespace = "other"
	ids := func(ids ...aadv1.AzureIdentity) []aadv1.AzureIdentity { return ids }
	tests := []struct {
		name                string
		req                 tokenRequest
		candidates, unbound []aadv1.AzureIdentity
		want                string // identity name, or "" for an error
		status              int
		reason              string
		desc                string // substring of the error description
	}{
		{"only one, none named", tokenRequest{}, ids(a), nil, "a", 0, "", ""},
		{"client id any case", tokenRequest{ClientID: "aaaa"}, ids(b, a), nil, "a", 0, "", ""},
		{"resource id any case", tokenRequest{ResourceID: "/SUBS/x/ids/b"}, ids(a, b), nil, "b", 0, "", ""},
		{"service principal by client id", tokenRequest{ClientID: "cccc"}, ids(a, sp), nil, "sp", 0, "", ""},
		{"several, none named", tokenRequest{}, ids(a, b), nil, "", http.StatusBadRequest, "several_identities", "may use: AAAA, bbbb"},
		{"none admitted", tokenRequest{}, nil, nil, "", http.StatusForbidden, "no_identity", "ns/pod has no admitted"},
		{"none admitted, one named", tokenRequest{ClientID: "aaaa"}, nil, nil, "", http.StatusForbidden, "no_identity", ""},
		{"other client id", tokenRequest{ClientID: "bbbb"}, ids(a), nil, "", http.StatusForbidden, "identity_not_admitted", "may use: AAAA"},
		{"other resource id", tokenRequest{ResourceID: "/subs/x/ids/b"}, ids(a), nil, "", http.StatusForbidden, "identity_not_admitted", ""},
		{"empty resource id never matches a service principal", tokenRequest{ResourceID: "/x"}, ids(sp), nil, "", http.StatusForbidden, "identity_not_admitted", ""},
		{"binding gone, none named", tokenRequest{}, nil, ids(a, b), "", http.StatusForbidden, "binding_removed",
			`Pod ns/pod is no longer bound to AzureIdentity ns/a (client_id AAAA), ns/b (client_id bbbb): no AzureIdentityBinding with selector "sel"`},
		{"binding gone, its client id named", tokenRequest{ClientID: "bbbb"}, ids(a), ids(b), "", http.StatusForbidden, "binding_removed", "AzureIdentity ns/b (client_id bbbb)"},
		{"binding gone, its resource id named", tokenRequest{ResourceID: "/subs/x/ids/b"}, nil, ids(b), "", http.StatusForbidden, "binding_removed", "restore the binding"},
		{"binding gone, another one named", tokenRequest{ClientID: "eeee"}, nil, ids(a), "", http.StatusForbidden, "binding_removed", "ns/a"},
		{"one binding gone, the other served", tokenRequest{}, ids(a), ids(b), "a", 0, "", ""},
		{"cross-namespace binding without the flag", tokenRequest{}, nil, ids(other), "", http.StatusForbidden, "binding_removed", "policy.allowCrossNamespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := entitlement{pod: types.NamespacedName{Namespace: "ns", Name: "pod"}, selector: "sel", candidates: tt.candidates, unbound: tt.unbound}
			got, err := selectIdentity(tt.req, e)
			if tt.want != "" {
				if err != nil || got.Name != tt.want {
					t.Fatalf("got %v, %v; want %s", got, err, tt.want)
				}
				return
			}
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != tt.status || ae.reason != tt.reason || !strings.Contains(ae.desc, tt.desc) {
				t.Fatalf("got %v, %v; want %d %s containing %q", got, err, tt.status, tt.reason, tt.desc)
			}
		})
	}
}
