package v1_test

import (
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// Objects are decoded the way every component decodes them (the
// apimachinery codec, case-sensitive); the 1.x spellings fold into the
// canonical fields, which win when both are set.
func TestLegacySpellingsFold(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := aadv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	decode := serializer.NewCodecFactory(scheme).UniversalDeserializer().Decode
	for _, tc := range []struct {
		name, spec                           string
		resourceID, clientID, tenant, secret string
	}{
		{name: "canonical", spec: `{"type":0,"resourceID":"/r","clientID":"c"}`, resourceID: "/r", clientID: "c"},
		{name: "1.x spellings", spec: `{"type":1,"ResourceID":"/r","ClientId":"c","TenantID":"t","ClientPassword":{"name":"s"}}`, resourceID: "/r", clientID: "c", tenant: "t", secret: "s"},
		{name: "canonical wins", spec: `{"type":0,"resourceID":"/new","ResourceID":"/old","clientID":"new","ClientID":"old"}`, resourceID: "/new", clientID: "new"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obj, _, err := decode([]byte(`{"apiVersion":"aadpodidentity.k8s.io/v1","kind":"AzureIdentity","metadata":{"name":"x"},"spec":`+tc.spec+`}`), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			s := obj.(*aadv1.AzureIdentity).Spec
			var secret string
			if s.ClientPassword != nil {
				secret = s.ClientPassword.Name
			}
			if s.ResourceID != tc.resourceID || s.ClientID != tc.clientID || s.TenantID != tc.tenant || secret != tc.secret {
				t.Errorf("spec %+v", s)
			}
		})
	}
	obj, _, err := decode([]byte(`{"apiVersion":"aadpodidentity.k8s.io/v1","kind":"AzureIdentityBinding","metadata":{"name":"x"},"spec":{"AzureIdentity":"id","Selector":"sel"}}`), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := obj.(*aadv1.AzureIdentityBinding).Spec; s.AzureIdentity != "id" || s.Selector != "sel" {
		t.Errorf("binding spec %+v", s)
	}
}
