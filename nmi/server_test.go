package nmi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// fakeIMDS answers tokens for the client IDs it knows and "Identity not
// found" for others; every other path echoes the path. Like IMDS, it reads
// the token path in any case and with a trailing slash, and query variable
// names in any case.
type fakeIMDS struct {
	known map[string]bool
	// mirIDs: a client ID listed here gets a JWT whose xms_mirid claim is
	// its resource ID, as IMDS issues them.
	mirIDs map[string]string
	calls  atomic.Int32
	header atomic.Value // last X-Forwarded-For seen
	target atomic.Value // last path and raw query seen
}

func (f *fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.calls.Add(1)
	f.header.Store(r.Header.Get("X-Forwarded-For"))
	f.target.Store(r.URL.Path + "?" + r.URL.RawQuery)
	if !strings.EqualFold(strings.TrimSuffix(r.URL.Path, "/"), "/metadata/identity/oauth2/token") {
		fmt.Fprintf(w, "upstream %s", r.URL.Path)
		return
	}
	var clientID string
	for k, vs := range r.URL.Query() {
		if strings.EqualFold(k, "client_id") && len(vs) > 0 {
			clientID = vs[0]
		}
	}
	if clientID == "" {
		clientID = "node-identity"
	} else if !f.known[clientID] {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"error":"invalid_request","error_description":"Identity not found"}`)
		return
	}
	exp := time.Now().Add(time.Hour).Unix()
	access := "tok-" + clientID
	if mirID, ok := f.mirIDs[clientID]; ok {
		claims, _ := json.Marshal(map[string]string{"appid": clientID, "xms_mirid": mirID})
		access = "eyJhbGciOiJub25lIn0." + base64.RawURLEncoding.EncodeToString(claims) + ".sig"
	}
	writeJSON(w, http.StatusOK, Token{AccessToken: access, ExpiresOn: strconv.FormatInt(exp, 10), ExpiresIn: "3600",
		Resource: r.URL.Query().Get("resource"), TokenType: "Bearer", ClientID: clientID})
}

type fixture struct {
	imds   *fakeIMDS
	server *Server
	client client.Client
}

func pod(name, ip string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name)},
		Spec:       corev1.PodSpec{NodeName: "node-0"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func binding(ns, name, selector, identity string) *aadv1.AzureIdentityBinding {
	return &aadv1.AzureIdentityBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: selector},
	}
}

// bindings binds each namespace/name identity to selector sel.
func bindings(ids ...string) []client.Object {
	var objs []client.Object
	for _, id := range ids {
		ns, name, _ := strings.Cut(id, "/")
		objs = append(objs, binding(ns, "bind-"+name, "sel", name))
	}
	return objs
}

// admitted labels the pod aadpodidbinding=sel and annotates it as the
// webhook does.
func admitted(ids ...string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Labels = map[string]string{aadv1.BindingLabel: "sel"}
		p.Annotations = map[string]string{aadv1.AnnotationIdentities: strings.Join(ids, ",")}
	}
}

// newClient is a fake of NMI's cache, with its indexes.
func newClient(t *testing.T, objs ...client.Object) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := aadv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	return fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).
		WithIndex(&corev1.Pod{}, podIPIndex, podIPs).
		WithIndex(&aadv1.AzureIdentityBinding{}, identity.BindingSelectorIndex, identity.IndexBindingSelector).
		Build()
}

// testPool is the fixture node's pool; recordsNS holds the assigner's records.
var testPool = nodepool.Pool{Subscription: "s", ResourceGroup: "g", Kind: nodepool.KindVMSS, Name: "pool"}

const recordsNS = "sys"

// assignedEntry is the assigner's entry for id, Assigned.
func assignedEntry(id *aadv1.AzureIdentity) aadv1.IdentityAssignment {
	return aadv1.IdentityAssignment{AzureIdentityRef: aadv1.IdentityReference{Namespace: id.Namespace, Name: id.Name},
		ClientID: id.Spec.ClientID, ResourceID: id.Spec.ResourceID, State: aadv1.StateAssigned, Pods: 1}
}

// poolRecord is the assigner's record of pool, holding entries (sorted, as
// the assigner keeps them).
func poolRecord(pool nodepool.Pool, entries ...aadv1.IdentityAssignment) *aadv1.AzureAssignedIdentity {
	rec := &aadv1.AzureAssignedIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: recordsNS, Name: identity.RecordName(pool)},
		Spec:       aadv1.AzureAssignedIdentitySpec{NodePool: pool.ID()},
		Status:     aadv1.AzureAssignedIdentityStatus{Identities: entries},
	}
	slices.SortFunc(rec.Status.Identities, func(a, b aadv1.IdentityAssignment) int {
		return aadv1.CompareRefs(a.AzureIdentityRef, b.AzureIdentityRef.Namespace, b.AzureIdentityRef.Name)
	})
	return rec
}

// newFixture serves objs. Unless objs hold AzureAssignedIdentities of their
// own, which are then all there is, the node's pool gets a record with an
// Assigned entry for every user-assigned AzureIdentity among objs, as the
// assigner leaves it.
func newFixture(t *testing.T, objs ...client.Object) *fixture {
	t.Helper()
	if !slices.ContainsFunc(objs, func(o client.Object) bool { _, ok := o.(*aadv1.AzureAssignedIdentity); return ok }) {
		var entries []aadv1.IdentityAssignment
		for _, o := range objs {
			if id, ok := o.(*aadv1.AzureIdentity); ok && id.Spec.Type == aadv1.UserAssignedMSI {
				entries = append(entries, assignedEntry(id))
			}
		}
		if len(entries) > 0 {
			objs = append(objs, poolRecord(testPool, entries...))
		}
	}
	c := newClient(t, objs...)
	f := &fixture{imds: &fakeIMDS{known: map[string]bool{"client-a": true, "client-b": true, "client-x": true}}, client: c}
	upstream := httptest.NewServer(f.imds)
	t.Cleanup(upstream.Close)
	u, _ := url.Parse(upstream.URL)
	f.server = &Server{
		reader:       c,
		resolver:     &identity.Resolver{Cache: c},
		imds:         &imdsClient{endpoint: u, http: upstream.Client(), notFoundRetry: wait.Backoff{Duration: time.Millisecond, Steps: 3}},
		passthrough:  newPassthrough(u, nil),
		allowedPaths: []string{"/metadata/instance", "/metadata/versions"},
		tokens:       newTokenCache(time.Minute, 0),
		misses:       newMissLimiter(0, 0),
		exceptions:   ExceptionPolicy{Namespaces: []string{"ns"}, Tokens: config.ExceptionTokensNode, NodeIdentityClientIDs: []string{"client-x"}},
		assignments:  &assignments{records: c, namespace: recordsNS, pool: &testPool, wait: 50 * time.Millisecond},
		log:          logr.Discard(),
	}
	return f
}

func (f *fixture) do(t *testing.T, remoteIP, target string, header bool) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "http://169.254.169.254"+target, nil)
	req.RemoteAddr = remoteIP + ":40000"
	if header {
		req.Header.Set("Metadata", "true")
	}
	rec := httptest.NewRecorder()
	f.server.Handler().ServeHTTP(rec, req)
	return rec
}

func TestServer(t *testing.T) {
	idA := azureIdentity("id-a", "client-a", "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a")
	idB := azureIdentity("id-b", "client-b", "")
	sp := azureIdentity("sp", "client-sp", "")
	sp.Spec.Type = aadv1.ServicePrincipal
	exception := &aadv1.AzurePodIdentityException{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "exc"},
		Spec:       aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "agent"}},
	}
	now := metav1.Now()
	objs := []client.Object{&idA, &idB, &sp, exception,
		pod("a", "10.0.0.1", admitted("ns/id-a", "ns/gone")),
		pod("ab", "10.0.0.2", admitted("ns/id-a", "ns/id-b")),
		pod("plain", "10.0.0.3"),
		pod("forged", "10.0.0.4", func(p *corev1.Pod) { p.Annotations = map[string]string{aadv1.AnnotationIdentities: "ns/id-a"} }),
		pod("agent", "10.0.0.5", func(p *corev1.Pod) { p.Labels = map[string]string{"app": "agent"} }),
		pod("dup1", "10.0.0.6", admitted("ns/id-a")),
		pod("dup2", "10.0.0.6", admitted("ns/id-b")),
		pod("done", "10.0.0.7", admitted("ns/id-a"), func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
		pod("old", "10.0.0.8", admitted("ns/id-a"), func(p *corev1.Pod) { p.DeletionTimestamp = &now; p.Finalizers = []string{"x"} }),
		pod("host", "10.0.0.9", admitted("ns/id-a"), func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		pod("sp", "10.0.0.10", admitted("ns/sp")),
		pod("new", "10.0.0.11", admitted("ns/id-a"), func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }),
		pod("relabelled", "10.0.0.12", admitted("ns/id-a"), func(p *corev1.Pod) { p.Labels[aadv1.BindingLabel] = "unbound" }),
	}
	objs = append(objs, bindings("ns/id-a", "ns/id-b", "ns/sp")...)
	const tok = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
	tests := []struct {
		name   string
		ip     string
		target string
		noHdr  bool
		status int
		want   string // substring of the body
	}{
		{"admitted pod gets its token", "10.0.0.1", tok, false, 200, `"access_token":"tok-client-a"`},
		{"metadata segment any case", "10.0.0.1", strings.Replace(tok, "metadata", "MetaData", 1), false, 200, `"client_id":"client-a"`},
		{"pending pod counts", "10.0.0.11", tok, false, 200, "tok-client-a"},
		{"selected by client_id", "10.0.0.2", tok + "&client_id=client-b", false, 200, "tok-client-b"},
		{"selected by mi_res_id", "10.0.0.2", tok + "&mi_res_id=" + url.QueryEscape(idA.Spec.ResourceID), false, 200, "tok-client-a"},
		{"several admitted, none named", "10.0.0.2", tok, false, 400, "Multiple user assigned identities"},
		{"other pod's client_id", "10.0.0.1", tok + "&client_id=client-b", false, 403, "not admitted for client_id client-b"},
		{"deleted identity", "10.0.0.1", tok + "&client_id=client-gone", false, 403, "not admitted"},
		{"admitted identity no binding names now", "10.0.0.12", tok, false, 403, `Pod ns/relabelled is no longer bound to AzureIdentity ns/id-a (client_id client-a): no AzureIdentityBinding with selector \"unbound\"`},
		{"unlabelled pod", "10.0.0.3", tok, false, 403, "no admitted AzureIdentity"},
		{"annotations without label are ignored", "10.0.0.4", tok, false, 403, "no admitted AzureIdentity"},
		{"unknown IP", "10.9.9.9", tok, false, 403, "No running pod on this node has IP 10.9.9.9"},
		{"two pods share the IP", "10.0.0.6", tok, false, 403, "Several running pods"},
		{"finished pod", "10.0.0.7", tok, false, 403, "No running pod"},
		{"terminating pod", "10.0.0.8", tok, false, 403, "No running pod"},
		{"host network pod", "10.0.0.9", tok, false, 403, "No running pod"},
		{"no metadata header", "10.0.0.1", tok, true, 400, "Required metadata header"},
		{"service principals disabled", "10.0.0.10", tok, false, 403, "nmi.enableServicePrincipals"},
		{"exception pod passes through", "10.0.0.5", tok, false, 200, "tok-node-identity"},
		{"exception pod other path", "10.0.0.5", "/metadata/scheduledevents", false, 200, "upstream /metadata/scheduledevents"},
		{"exception pod naming a pool identity", "10.0.0.5", tok + "&client_id=client-a", false, 403, "only the node's own identity"},
		{"exception pod naming it by resource ID", "10.0.0.5", tok + "&mi_res_id=" + url.QueryEscape(idA.Spec.ResourceID), false, 403, "only the node's own identity"},
		{"exception pod naming a node identity", "10.0.0.5", tok + "&client_id=client-x", false, 200, "tok-client-x"},
		{"exception pod outside the metadata", "10.0.0.5", "/other", false, 403, "not served to pods"},
		{"exception pod userData", "10.0.0.5", "/metadata/instance/compute/userData", false, 403, "not served to pods"},
		{"allowed path", "10.0.0.3", "/metadata/instance?api-version=2021-02-01", false, 200, "upstream /metadata/instance"},
		{"allowed sub-path", "10.9.9.9", "/metadata/instance/compute/vmId", false, 200, "upstream /metadata/instance/compute/vmId"},
		{"allowed prefix is not a path prefix", "10.0.0.1", "/metadata/instancex", false, 403, "not served to pods"},
		{"other path", "10.0.0.1", "/metadata/scheduledevents", false, 403, "not served to pods"},
		{"root", "10.0.0.1", "/", false, 403, "not served to pods"},
		{"userData is opt-in", "10.0.0.1", "/metadata/instance/compute/userData?api-version=2021-01-01", false, 403, "not served to pods"},
		{"userData in another case", "10.0.0.1", "/metadata/instance/compute/USERDATA", false, 403, "not served to pods"},
		{"backslash", "10.0.0.1", "/metadata/instance\\..\\..\\identity", false, 400, "not a metadata path"},
		{"escaped backslash", "10.0.0.1", "/metadata/instance%5C..%5Cidentity", false, 400, "not a metadata path"},
		{"double-escaped dots", "10.0.0.1", "/metadata/instance/%252e%252e/%252e%252e/identity", false, 400, "not a metadata path"},
		{"dot-dot-semicolon segment", "10.0.0.1", "/metadata/instance/..;/identity", false, 400, "not a metadata path"},
		{"dot-dot segment", "10.0.0.1", "/metadata/instance/../scheduledevents", false, 400, "not a metadata path"},
		{"empty segment", "10.0.0.1", "/metadata//instance", false, 400, "not a metadata path"},
		{"exception pod odd path", "10.0.0.5", "/metadata/%2e%2e/x", false, 400, "not a metadata path"},
	}
	f := newFixture(t, objs...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := f.do(t, tt.ip, tt.target, !tt.noHdr)
			if rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.want) {
				t.Fatalf("got %d %s; want %d containing %q", rec.Code, rec.Body, tt.status, tt.want)
			}
			if ct := rec.Header().Get("Content-Type"); rec.Code != 200 && !strings.HasPrefix(ct, "application/json") {
				t.Fatalf("error answer has Content-Type %q", ct)
			}
			if xff, _ := f.imds.header.Load().(string); xff != "" {
				t.Fatalf("IMDS saw X-Forwarded-For %q", xff)
			}
		})
	}
}

func TestTokenFieldsAreStrings(t *testing.T) {
	f := newFixture(t, &[]aadv1.AzureIdentity{azureIdentity("id-a", "client-a", "")}[0], binding("ns", "bind-a", "sel", "id-a"), pod("a", "10.0.0.1", admitted("ns/id-a")))
	rec := f.do(t, "10.0.0.1", "/metadata/identity/oauth2/token?api-version=1&resource=r", true)
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"access_token", "refresh_token", "expires_in", "expires_on", "not_before", "resource", "token_type", "client_id"} {
		if _, ok := body[k].(string); !ok {
			t.Errorf("field %s = %#v, want a string", k, body[k])
		}
	}
}

func TestIdentityNotYetAssigned(t *testing.T) {
	id := azureIdentity("late", "client-late", "")
	f := newFixture(t, &id, binding("ns", "bind-late", "sel", "late"), pod("a", "10.0.0.1", admitted("ns/late")))
	rec := f.do(t, "10.0.0.1", "/metadata/identity/oauth2/token?api-version=1&resource=r", true)
	if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "azureassignedidentities") {
		t.Fatalf("got %d %s; want 404 pointing at azureassignedidentities", rec.Code, rec.Body)
	}
	if got := f.imds.calls.Load(); got != 3 {
		t.Fatalf("IMDS called %d times, want 3 (the retry steps)", got)
	}

	// Once IMDS knows the identity, the next request succeeds.
	f.imds.known["client-late"] = true
	if rec := f.do(t, "10.0.0.1", "/metadata/identity/oauth2/token?api-version=1&resource=r", true); rec.Code != http.StatusOK {
		t.Fatalf("got %d %s after assignment", rec.Code, rec.Body)
	}
}

func TestTokensAreCached(t *testing.T) {
	id := azureIdentity("id-a", "client-a", "")
	f := newFixture(t, &id, binding("ns", "bind-a", "sel", "id-a"), pod("a", "10.0.0.1", admitted("ns/id-a")), pod("b", "10.0.0.2", admitted("ns/id-a")))
	for _, ip := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.1"} {
		if rec := f.do(t, ip, "/metadata/identity/oauth2/token?api-version=1&resource=r", true); rec.Code != 200 {
			t.Fatalf("got %d %s", rec.Code, rec.Body)
		}
	}
	f.do(t, "10.0.0.1", "/metadata/identity/oauth2/token?api-version=1&resource=other", true)
	if got := f.imds.calls.Load(); got != 2 {
		t.Fatalf("IMDS called %d times, want 2 (one per resource)", got)
	}
}

func TestMetrics(t *testing.T) {
	id := azureIdentity("id-a", "client-a", "")
	f := newFixture(t, &id, binding("ns", "bind-a", "sel", "id-a"), pod("a", "10.0.0.1", admitted("ns/id-a")))
	refused := requestsTotal.WithLabelValues("403", "identity_not_admitted")
	ok := requestsTotal.WithLabelValues("200", "ok")
	hits, misses := tokenCacheTotal.WithLabelValues("hit"), tokenCacheTotal.WithLabelValues("miss")
	before := []float64{testutil.ToFloat64(refused), testutil.ToFloat64(ok), testutil.ToFloat64(hits), testutil.ToFloat64(misses)}
	const tok = "/metadata/identity/oauth2/token?api-version=1&resource=metrics"
	f.do(t, "10.0.0.1", tok+"&client_id=someone-else", true)
	f.do(t, "10.0.0.1", tok, true)
	f.do(t, "10.0.0.1", tok, true)
	after := []float64{testutil.ToFloat64(refused), testutil.ToFloat64(ok), testutil.ToFloat64(hits), testutil.ToFloat64(misses)}
	want := []float64{1, 2, 1, 1}
	for i := range want {
		if after[i]-before[i] != want[i] {
			t.Fatalf("metric %d grew by %v, want %v", i, after[i]-before[i], want[i])
		}
	}
}

// A pod keeps an identity only while a binding still gives it to the pod:
// each change is made after a first token was served (and cached), as it
// would be while the pod runs.
func TestBindingChangesWhilePodRuns(t *testing.T) {
	const tok = "/metadata/identity/oauth2/token?api-version=1&resource=r"
	editBinding := func(edit func(*aadv1.AzureIdentityBindingSpec)) func(context.Context, client.Client) error {
		return func(ctx context.Context, c client.Client) error {
			var b aadv1.AzureIdentityBinding
			if err := c.Get(ctx, client.ObjectKey{Namespace: "ns", Name: "bind-a"}, &b); err != nil {
				return err
			}
			edit(&b.Spec)
			return c.Update(ctx, &b)
		}
	}
	tests := []struct {
		name   string
		change func(context.Context, client.Client) error
		query  string // appended to the token request
		status int
		want   string // substring of the body
	}{
		{"binding present", func(context.Context, client.Client) error { return nil }, "", 200, "tok-client-a"},
		{"binding deleted", func(ctx context.Context, c client.Client) error {
			return c.Delete(ctx, binding("ns", "bind-a", "sel", "id-a"))
		},
			"", 403, `Pod ns/a is no longer bound to AzureIdentity ns/id-a (client_id client-a)`},
		{"binding deleted, identity named", func(ctx context.Context, c client.Client) error {
			return c.Delete(ctx, binding("ns", "bind-a", "sel", "id-a"))
		},
			"&client_id=client-a", 403, "restore the binding"},
		{"binding selector changed", editBinding(func(s *aadv1.AzureIdentityBindingSpec) { s.Selector = "other" }),
			"", 403, `no AzureIdentityBinding with selector \"sel\" names it`},
		{"binding now names another identity", editBinding(func(s *aadv1.AzureIdentityBindingSpec) { s.AzureIdentity = "id-b" }),
			"", 403, "no longer bound to AzureIdentity ns/id-a"},
		{"binding added for another identity, named", func(ctx context.Context, c client.Client) error {
			return c.Create(ctx, binding("ns", "bind-b", "sel", "id-b"))
		},
			"&client_id=client-b", 403, "not admitted for client_id client-b; it may use: client-a"},
		{"binding added for another identity, none named", func(ctx context.Context, c client.Client) error {
			return c.Create(ctx, binding("ns", "bind-b", "sel", "id-b"))
		},
			"", 200, "tok-client-a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			idA, idB := azureIdentity("id-a", "client-a", ""), azureIdentity("id-b", "client-b", "")
			f := newFixture(t, &idA, &idB, binding("ns", "bind-a", "sel", "id-a"), pod("a", "10.0.0.1", admitted("ns/id-a")))
			if rec := f.do(t, "10.0.0.1", tok, true); rec.Code != http.StatusOK {
				t.Fatalf("before the change: got %d %s", rec.Code, rec.Body)
			}
			if err := tt.change(context.Background(), f.client); err != nil {
				t.Fatal(err)
			}
			rec := f.do(t, "10.0.0.1", tok+tt.query, true)
			if rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.want) {
				t.Fatalf("got %d %s; want %d containing %q", rec.Code, rec.Body, tt.status, tt.want)
			}
		})
	}
}

// A binding outside the pod's namespace counts only with
// policy.allowCrossNamespace, as in the webhook.
func TestCrossNamespaceBinding(t *testing.T) {
	tests := []struct {
		crossNamespace bool
		status         int
		want           string
	}{
		{false, 403, "count only when policy.allowCrossNamespace is true"},
		{true, 200, "tok-client-x"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint("allow-cross-namespace=", tt.crossNamespace), func(t *testing.T) {
			id := azureIdentity("id-x", "client-x", "")
			id.Namespace = "other"
			f := newFixture(t, &id, binding("other", "bind-x", "sel", "id-x"), pod("a", "10.0.0.1", admitted("other/id-x")))
			f.server.resolver.AllowCrossNamespace = tt.crossNamespace
			rec := f.do(t, "10.0.0.1", "/metadata/identity/oauth2/token?api-version=1&resource=r", true)
			if rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.want) {
				t.Fatalf("got %d %s; want %d containing %q", rec.Code, rec.Body, tt.status, tt.want)
			}
		})
	}
}

// A container may call before its IP reaches NMI's cache: the request waits
// for the pod up to the caller wait, and is refused when none shows up.
func TestUnknownCallerWait(t *testing.T) {
	id := azureIdentity("id-a", "client-a", "")
	f := newFixture(t, &id, binding("ns", "bind-a", "sel", "id-a"))
	f.server.callerWait = 5 * time.Second
	go func() {
		time.Sleep(300 * time.Millisecond)
		if err := f.client.Create(context.Background(), pod("late", "10.0.0.7", admitted("ns/id-a"))); err != nil {
			t.Error(err)
		}
	}()
	if rec := f.do(t, "10.0.0.7", "/metadata/identity/oauth2/token?api-version=1&resource=r", true); rec.Code != http.StatusOK {
		t.Fatalf("pod whose IP arrived during the wait: got %d %s", rec.Code, rec.Body)
	}

	f.server.callerWait = 300 * time.Millisecond
	rec := f.do(t, "10.0.0.8", "/metadata/identity/oauth2/token?api-version=1&resource=r", true)
	if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "No running pod on this node has IP 10.0.0.8") {
		t.Fatalf("IP no pod has: got %d %s, want 403", rec.Code, rec.Body)
	}
}

func TestHandlerPanicAnswers500(t *testing.T) {
	s := &Server{log: logr.Discard()}
	h := s.instrument("token", func(http.ResponseWriter, *http.Request) (string, error) { panic("nil map") })
	before := testutil.ToFloat64(panicsTotal)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metadata/identity/oauth2/token", nil))
	if rec.Code != http.StatusInternalServerError || strings.Contains(rec.Body.String(), "nil map") {
		t.Fatalf("got %d %s, want 500 without the panic's text", rec.Code, rec.Body)
	}
	if got := testutil.ToFloat64(panicsTotal) - before; got != 1 {
		t.Errorf("panics counted: %v", got)
	}
}

func TestUncachedTokensAreLimitedPerPod(t *testing.T) {
	id := azureIdentity("id-a", "client-a", "")
	f := newFixture(t, &id, binding("ns", "bind-a", "sel", "id-a"), pod("a", "10.0.0.1", admitted("ns/id-a")), pod("b", "10.0.0.2", admitted("ns/id-a")))
	f.server.misses = newMissLimiter(1, 2)
	ask := func(ip, resource string) *httptest.ResponseRecorder {
		return f.do(t, ip, "/metadata/identity/oauth2/token?api-version=1&resource="+resource, true)
	}
	for i := range 2 {
		if rec := ask("10.0.0.1", fmt.Sprint("r", i)); rec.Code != http.StatusOK {
			t.Fatalf("request %d within the burst: %d %s", i, rec.Code, rec.Body)
		}
	}
	rec := ask("10.0.0.1", "r-more")
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("over the burst: %d %s (Retry-After %q), want 429 with Retry-After", rec.Code, rec.Body, rec.Header().Get("Retry-After"))
	}
	if rec := ask("10.0.0.1", "r0"); rec.Code != http.StatusOK {
		t.Errorf("cached token refused: %d %s", rec.Code, rec.Body)
	}
	if rec := ask("10.0.0.2", "r-more"); rec.Code != http.StatusOK {
		t.Errorf("another pod is limited too: %d %s", rec.Code, rec.Body)
	}
}

func TestExceptionPolicy(t *testing.T) {
	const tok = "/metadata/identity/oauth2/token?api-version=1&resource=r&client_id=client-a"
	exception := &aadv1.AzurePodIdentityException{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "agents"},
		Spec:       aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "agent"}},
	}
	agent := pod("agent", "10.0.0.5", func(p *corev1.Pod) { p.Labels = map[string]string{"app": "agent"} })
	tests := []struct {
		name   string
		policy ExceptionPolicy
		target string
		status int
		want   string
	}{
		{"exceptions outside the listed namespaces do not count", ExceptionPolicy{Namespaces: []string{"kube-system"}, Tokens: config.ExceptionTokensAny}, tok, 403, "no admitted AzureIdentity"},
		{"every namespace", ExceptionPolicy{Namespaces: []string{"*"}, Tokens: config.ExceptionTokensAny}, tok, 200, "tok-client-a"},
		{"any: IMDS unchanged", ExceptionPolicy{Namespaces: []string{"ns"}, Tokens: config.ExceptionTokensAny}, "/other", 200, "upstream /other"},
		{"none: no token", ExceptionPolicy{Namespaces: []string{"ns"}, Tokens: config.ExceptionTokensNone}, "/metadata/identity/oauth2/token?api-version=1&resource=r", 403, "no tokens"},
		{"none: instance metadata", ExceptionPolicy{Namespaces: []string{"ns"}, Tokens: config.ExceptionTokensNone}, "/metadata/scheduledevents", 200, "upstream /metadata/scheduledevents"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, exception, agent)
			f.server.exceptions = tt.policy
			rec := f.do(t, "10.0.0.5", tt.target, true)
			if rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.want) {
				t.Fatalf("got %d %s; want %d containing %q", rec.Code, rec.Body, tt.status, tt.want)
			}
		})
	}
}

// The IP of a pod that ended may be taken by a newer pod before this node's
// cache shows either change: the newer pod must not be served as the old one.
// Only a newer pod whose sandbox may exist counts, and only for a while: a
// pod the kubelet has not started, or one stuck before its sandbox, must not
// keep its neighbours from their tokens.
func TestIPMayBeReused(t *testing.T) {
	const tok = "/metadata/identity/oauth2/token?api-version=1&resource=r"
	id := azureIdentity("id-a", "client-a", "")
	tests := []struct {
		name   string
		newer  *corev1.Pod
		status int
		want   string
	}{
		{"newer pod whose sandbox is being made: refused", pod("newer", "", created(3*time.Second), sandbox(corev1.ConditionFalse, 2*time.Second)), 403, "may hold this address"},
		{"newer pod whose sandbox exists, IP not reported: refused", pod("newer", "", created(3*time.Second), sandbox(corev1.ConditionTrue, time.Second)), 403, "may hold this address"},
		{"newer pod on a kubelet without the condition, started: refused", pod("newer", "", created(3*time.Second), unstarted, func(p *corev1.Pod) { p.Status.StartTime = new(metav1.NewTime(time.Now().Add(-2 * time.Second))) }), 403, "may hold this address"},
		{"newer pod the kubelet has not started (no sandbox): served", pod("pending", "", created(2*time.Second), unstarted), 200, "tok-client-a"},
		{"newer pod stuck before its sandbox for longer than the window: served", pod("stuck", "", created(2*ipReuseWindow), sandbox(corev1.ConditionFalse, 2*ipReuseWindow-time.Second)), 200, "tok-client-a"},
		{"newer pod with its own IP: served", pod("newer", "10.0.0.21", created(2*time.Second)), 200, "tok-client-a"},
		{"older pod without an IP: served", pod("older", "", created(20*time.Minute), sandbox(corev1.ConditionFalse, time.Second)), 200, "tok-client-a"},
		{"host-network pod: served", pod("hostnet", "", created(2*time.Second), sandbox(corev1.ConditionFalse, time.Second), func(p *corev1.Pod) { p.Spec.HostNetwork = true }), 200, "tok-client-a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			owner := pod("owner", "10.0.0.20", admitted("ns/id-a"), created(10*time.Minute))
			f := newFixture(t, &id, binding("ns", "bind-a", "sel", "id-a"), owner, tt.newer)
			rec := f.do(t, "10.0.0.20", tok, true)
			if rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.want) {
				t.Fatalf("got %d %s; want %d containing %q", rec.Code, rec.Body, tt.status, tt.want)
			}
		})
	}
}

// created sets the pod's creation time, ago.
func created(ago time.Duration) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(time.Now().Add(-ago)) }
}

// unstarted leaves the pod Pending, as the scheduler leaves it: no IP, no
// status from the kubelet.
func unstarted(p *corev1.Pod) { p.Status = corev1.PodStatus{Phase: corev1.PodPending} }

// sandbox leaves the pod Pending without an IP, with the kubelet's
// PodReadyToStartContainers condition set to status since ago.
func sandbox(status corev1.ConditionStatus, ago time.Duration) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		unstarted(p)
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReadyToStartContainers, Status: status, LastTransitionTime: metav1.NewTime(time.Now().Add(-ago))}}
	}
}

// An AzureIdentity naming one of the cluster's own identities is never
// served, even to a pod admitted for it.
func TestProtectedIdentityNeverServed(t *testing.T) {
	id := azureIdentity("kubelet", "client-a", "")
	f := newFixture(t, &id, binding("ns", "bind", "sel", "kubelet"), pod("a", "10.0.0.1", admitted("ns/kubelet")))
	f.server.protected = identity.NewProtected([]string{"CLIENT-A"})
	rec := f.do(t, "10.0.0.1", "/metadata/identity/oauth2/token?api-version=1&resource=r", true)
	if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "cluster's own identities") {
		t.Fatalf("got %d %s, want 403 protected_identity", rec.Code, rec.Body)
	}
	if n := f.imds.calls.Load(); n != 0 {
		t.Errorf("IMDS asked %d times", n)
	}
}

// An AzureIdentity naming a user-assigned identity outside the admin's
// scopes for its namespace is never served, even to a pod admitted for it
// (one created before the scopes were set, say).
func TestOutOfScopeIdentityNeverServed(t *testing.T) {
	id := azureIdentity("elsewhere", "client-a", "/subscriptions/s/resourceGroups/other-team/providers/Microsoft.ManagedIdentity/userAssignedIdentities/x")
	f := newFixture(t, &id, binding("ns", "bind", "sel", "elsewhere"), pod("a", "10.0.0.1", admitted("ns/elsewhere")))
	scopes, err := identity.ParseScopes([]string{"ns=/subscriptions/s/resourceGroups/ns-identities"})
	if err != nil {
		t.Fatal(err)
	}
	f.server.scopes = scopes
	rec := f.do(t, "10.0.0.1", "/metadata/identity/oauth2/token?api-version=1&resource=r", true)
	if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "only user-assigned identities under") {
		t.Fatalf("got %d %s, want 403 identity_out_of_scope", rec.Code, rec.Body)
	}
	if n := f.imds.calls.Load(); n != 0 {
		t.Errorf("IMDS asked %d times", n)
	}
}
