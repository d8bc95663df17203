package nmi

import (
	"net/url"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
)

// exceptionFixture serves an exception pod (10.0.0.5, app=agent), a plain
// pod (10.0.0.3) and a pod admitted for id-a (client-a, on the pool), with
// exceptions limited to the node identity client-x.
func exceptionFixture(t *testing.T) *fixture {
	t.Helper()
	idA := azureIdentity("id-a", "client-a", "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a")
	exception := &aadv1.AzurePodIdentityException{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "agents"},
		Spec:       aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "agent"}},
	}
	objs := []client.Object{&idA, exception,
		pod("agent", "10.0.0.5", func(p *corev1.Pod) { p.Labels = map[string]string{"app": "agent"} }),
		pod("plain", "10.0.0.3"),
		pod("a", "10.0.0.1", admitted("ns/id-a")),
	}
	return newFixture(t, append(objs, bindings("ns/id-a")...)...)
}

// An exception limited to the node's identity reaches IMDS's identity API
// only through the token route, with the variables NMI judged: no other
// spelling of the path or of a variable's name gets a pool identity.
func TestExceptionPodsGetOnlyTheNodeIdentity(t *testing.T) {
	const q = "?api-version=2018-02-01&resource=r"
	rid := url.QueryEscape("/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a")
	tests := []struct {
		name   string
		ip     string
		tokens config.ExceptionTokens
		paths  []string // NMI's nmi.allowedMetadataPaths; nil: the default
		target string
		status int
	}{
		{"trailing slash", "10.0.0.5", config.ExceptionTokensNode, nil, "/metadata/identity/oauth2/token/" + q + "&client_id=client-a", 403},
		{"last segment in another case", "10.0.0.5", config.ExceptionTokensNode, nil, "/metadata/identity/oauth2/Token" + q + "&client_id=client-a", 403},
		{"identity segment in another case", "10.0.0.5", config.ExceptionTokensNode, nil, "/metadata/IDENTITY/oauth2/token" + q + "&client_id=client-a", 403},
		{"every segment in another case, trailing slash", "10.0.0.5", config.ExceptionTokensNode, nil, "/Metadata/Identity/OAuth2/Token/" + q + "&client_id=client-a", 403},
		{"extra segment", "10.0.0.5", config.ExceptionTokensNode, nil, "/metadata/identity/oauth2/token/x" + q + "&client_id=client-a", 403},
		{"identity API itself", "10.0.0.5", config.ExceptionTokensNode, nil, "/metadata/identity" + q + "&client_id=client-a", 403},
		{"another identity endpoint", "10.0.0.5", config.ExceptionTokensNode, nil, "/metadata/identity/info" + q, 403},
		{"escaped slashes", "10.0.0.5", config.ExceptionTokensNode, nil, "/metadata/identity%2Foauth2%2Ftoken" + q + "&client_id=client-a", 400},
		{"Client_Id", "10.0.0.5", config.ExceptionTokensNode, nil, "/metadata/identity/oauth2/token" + q + "&Client_Id=client-a", 403},
		{"CLIENT_ID", "10.0.0.5", config.ExceptionTokensNode, nil, "/metadata/identity/oauth2/token" + q + "&CLIENT_ID=client-a", 403},
		{"escaped name", "10.0.0.5", config.ExceptionTokensNode, nil, "/metadata/identity/oauth2/token" + q + "&client%5Fid=client-a", 403},
		{"Mi_Res_Id", "10.0.0.5", config.ExceptionTokensNode, nil, "/metadata/identity/oauth2/token" + q + "&Mi_Res_Id=" + rid, 403},
		{"MSI_RES_ID", "10.0.0.5", config.ExceptionTokensNode, nil, "/metadata/identity/oauth2/token" + q + "&MSI_RES_ID=" + rid, 403},
		{"node identity and another spelled otherwise", "10.0.0.5", config.ExceptionTokensNode, nil, "/metadata/identity/oauth2/token" + q + "&client_id=client-x&Client_Id=client-a", 400},
		{"Object_Id", "10.0.0.5", config.ExceptionTokensNode, nil, "/metadata/identity/oauth2/token" + q + "&Object_Id=oid-a", 400},
		{"no tokens, path in another case", "10.0.0.5", config.ExceptionTokensNone, nil, "/metadata/IDENTITY/oauth2/token" + q + "&client_id=client-a", 403},
		{"no tokens, trailing slash", "10.0.0.5", config.ExceptionTokensNone, nil, "/metadata/identity/oauth2/token/" + q, 403},
		{"allowlist naming the metadata root", "10.0.0.3", config.ExceptionTokensNode, []string{"/metadata"}, "/metadata/identity/oauth2/Token" + q + "&client_id=client-a", 403},
		{"allowlist naming the identity API", "10.0.0.3", config.ExceptionTokensNode, []string{"/metadata/identity"}, "/metadata/identity/oauth2/token/" + q + "&client_id=client-a", 403},
		{"admitted pod, Client_Id of another identity", "10.0.0.1", config.ExceptionTokensNode, nil, "/metadata/identity/oauth2/token" + q + "&Client_Id=client-x", 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := exceptionFixture(t)
			f.server.exceptions.Tokens = tt.tokens
			if tt.paths != nil {
				f.server.allowedPaths = tt.paths
			}
			rec := f.do(t, tt.ip, tt.target, true)
			if rec.Code != tt.status {
				t.Fatalf("got %d %s; want %d", rec.Code, rec.Body, tt.status)
			}
			if n := f.imds.calls.Load(); n != 0 {
				t.Fatalf("IMDS was asked (%v)", f.imds.target.Load())
			}
		})
	}
}

// What IMDS gets from an exception pod limited to the node's identity is
// rebuilt from the variables NMI parsed and allowed, on the canonical token
// path: a variable NMI did not read (a name it drops, a pair Go's parser
// skips but another parser may split on ';') never reaches IMDS.
func TestExceptionTokenRequestIsRebuilt(t *testing.T) {
	tests := []struct {
		name     string
		tokens   config.ExceptionTokens
		target   string
		upstream string // path and raw query IMDS gets
		body     string
	}{
		{"variables NMI does not know are dropped", config.ExceptionTokensNode,
			"/MetaData/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&bypass_cache=true&x=1;client_id=client-a",
			"/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net", "tok-node-identity"},
		{"names folded and re-spelled", config.ExceptionTokensNode,
			"/metadata/identity/oauth2/token?API-Version=1&Resource=r&Client_ID=client-x",
			"/metadata/identity/oauth2/token?api-version=1&client_id=client-x&resource=r", "tok-client-x"},
		{"any: IMDS gets the pod's request", config.ExceptionTokensAny,
			"/metadata/identity/oauth2/token?api-version=1&resource=r&Client_Id=client-a&extra=1",
			"/metadata/identity/oauth2/token?api-version=1&resource=r&Client_Id=client-a&extra=1", "tok-client-a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := exceptionFixture(t)
			f.server.exceptions.Tokens = tt.tokens
			rec := f.do(t, "10.0.0.5", tt.target, true)
			if rec.Code != 200 || !strings.Contains(rec.Body.String(), tt.body) {
				t.Fatalf("got %d %s; want 200 with %s", rec.Code, rec.Body, tt.body)
			}
			if got, _ := f.imds.target.Load().(string); got != tt.upstream {
				t.Fatalf("IMDS got %s, want %s", got, tt.upstream)
			}
		})
	}
}
