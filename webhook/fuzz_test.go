package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/objects"
)

// FuzzAdmission feeds arbitrary bodies to the mutating webhook's HTTP
// handler: decoding and resolution must never panic, every answer must be an
// AdmissionReview, and an allowed pod must carry exactly the identities its
// label resolves to, whatever annotations it arrived with.
func FuzzAdmission(f *testing.F) {
	pod := labelled("demo")
	pod.Annotations = map[string]string{aadv1.AnnotationIdentities: "kube-system/admin"}
	seed := func(op admissionv1.Operation, raw []byte) []byte {
		review := admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{UID: "u", Operation: op, Namespace: "default",
				Kind:   metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
				Object: runtime.RawExtension{Raw: raw}},
		}
		b, _ := json.Marshal(review)
		return b
	}
	podJSON, _ := json.Marshal(pod)
	f.Add(seed(admissionv1.Create, podJSON))
	f.Add(seed(admissionv1.Update, podJSON))
	f.Add(seed(admissionv1.Create, []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"namespace":"other","labels":{"aadpodidbinding":"demo"}}}`)))
	f.Add(seed(admissionv1.Create, []byte(`{"metadata":{"labels":{"aadpodidbinding":""},"annotations":null},"spec":{"nodeName":"n"}}`)))
	f.Add(seed(admissionv1.Create, []byte(`[]`)))
	f.Add([]byte(`{"request":null}`))
	f.Add([]byte(`{`))
	f.Add([]byte{})

	id := objects.AzureIdentity("default", "demo", aadv1.UserAssignedMSI, "c-demo")
	b := objects.Binding("default", "demo-binding", "demo", "demo")
	resolver := newResolver(f, &id, &b)
	mutator := podFrontEnd("fuzz", admission.NewDecoder(identity.Scheme()), &PodMutator{Resolver: resolver, Gate: true})
	// No panic recovery here: a panic must fail the fuzzer.
	handler := &admission.Webhook{Handler: mutator}

	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, MutatePodPath, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		handler.ServeHTTP(rec, req)

		var out admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil {
			t.Fatalf("answer is not an AdmissionReview (status %d): %q", rec.Code, rec.Body.String())
		}
		if !out.Response.Allowed || len(out.Response.Patch) == 0 {
			return
		}
		var in admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &in); err != nil || in.Request == nil {
			t.Fatalf("allowed a request that does not decode: %v", err)
		}
		patch, err := jsonpatch.DecodePatch(out.Response.Patch)
		if err != nil {
			t.Fatalf("invalid patch: %v", err)
		}
		patched, err := patch.Apply(in.Request.Object.Raw)
		if err != nil {
			t.Fatalf("patch does not apply: %v", err)
		}
		var got corev1.Pod
		if err := json.Unmarshal(patched, &got); err != nil {
			t.Fatalf("patched pod does not decode: %v", err)
		}
		ns := got.Namespace
		if ns == "" {
			ns = in.Request.Namespace
		}
		want, err := resolver.Resolve(context.Background(), ns, got.Labels[aadv1.BindingLabel])
		if err != nil {
			t.Fatal(err)
		}
		if g, w := got.Annotations[aadv1.AnnotationIdentities], want.Annotations()[aadv1.AnnotationIdentities]; g != w {
			t.Fatalf("identities annotation %q, want %q", g, w)
		}
	})
}
