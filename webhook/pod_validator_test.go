package webhook

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

func TestProtectedChanges(t *testing.T) {
	base := labelled("demo")
	base.Annotations = map[string]string{aadv1.AnnotationIdentities: "default/demo", "other": "x"}
	base.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: aadv1.SchedulingGate}}
	tests := []struct {
		name   string
		modify func(*corev1.Pod)
		want   []string
	}{
		{"nothing", func(*corev1.Pod) {}, nil},
		{"unrelated annotation", func(p *corev1.Pod) { p.Annotations["other"] = "y" }, nil},
		{"label value", func(p *corev1.Pod) { p.Labels[aadv1.BindingLabel] = "admin" }, []string{"label aadpodidbinding"}},
		{"label removed", func(p *corev1.Pod) { delete(p.Labels, aadv1.BindingLabel) }, []string{"label aadpodidbinding"}},
		{"annotation value", func(p *corev1.Pod) { p.Annotations[aadv1.AnnotationIdentities] = "kube-system/x" },
			[]string{"annotation " + aadv1.AnnotationIdentities}},
		{"annotation added empty", func(p *corev1.Pod) { p.Annotations[aadv1.AnnotationAssignment] = "" },
			[]string{"annotation " + aadv1.AnnotationAssignment}},
		{"gate removed", func(p *corev1.Pod) { p.Spec.SchedulingGates = nil }, []string{"scheduling gate " + aadv1.SchedulingGate}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := base.DeepCopy()
			tt.modify(pod)
			if diff := cmp.Diff(tt.want, protectedChanges(base, pod)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestPodValidatorHandle(t *testing.T) {
	id := azureIdentity("default", "demo", aadv1.UserAssignedMSI, "c-demo")
	b := binding("default", "demo-binding", "demo", "demo")
	const assigner = "system:serviceaccount:aad:aad-pod-identity-assigner"
	v := &PodValidator{Resolver: newResolver(t, &id, &b), Decoder: admission.NewDecoder(identity.Scheme()), Trusted: sets.New(assigner)}

	admitted := labelled("demo")
	admitted.Annotations = map[string]string{aadv1.AnnotationIdentities: "default/demo", aadv1.AnnotationClientIDs: "c-demo"}
	forged := admitted.DeepCopy()
	forged.Annotations[aadv1.AnnotationIdentities] = "kube-system/admin"
	assigned := admitted.DeepCopy()
	assigned.Annotations[aadv1.AnnotationAssignment] = aadv1.AssignmentAssigned
	relabelled := admitted.DeepCopy()
	relabelled.Labels[aadv1.BindingLabel] = "admin"

	tests := []struct {
		name        string
		req         admission.Request
		wantAllowed bool
		wantReason  string
		wantMessage string
	}{
		{"create with resolved annotations", podRequest(t, admissionv1.Create, admitted, nil, "alice"), true, reasonValid, ""},
		{"create with forged annotations", podRequest(t, admissionv1.Create, forged, nil, "alice"), false, reasonAnnotationMismatch, "do not match"},
		{"create without annotations", podRequest(t, admissionv1.Create, labelled("demo"), nil, "alice"), false, reasonAnnotationMismatch, "do not match"},
		{"update by trusted assigner", podRequest(t, admissionv1.Update, assigned, admitted, assigner), true, reasonTrusted, ""},
		{"annotation update by user", podRequest(t, admissionv1.Update, assigned, admitted, "alice"), false, reasonUntrustedChange, "alice may not change annotation " + aadv1.AnnotationAssignment},
		{"label update by user", podRequest(t, admissionv1.Update, relabelled, admitted, "alice"), false, reasonUntrustedChange, "label aadpodidbinding"},
		{"unrelated update by user", podRequest(t, admissionv1.Update, admitted, admitted, "alice"), true, reasonUnchanged, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, reason := v.handle(context.Background(), tt.req)
			if resp.Allowed != tt.wantAllowed || reason != tt.wantReason {
				t.Fatalf("allowed=%v reason=%s, want %v %s (%+v)", resp.Allowed, reason, tt.wantAllowed, tt.wantReason, resp.Result)
			}
			if tt.wantMessage != "" && !strings.Contains(resp.Result.Message, tt.wantMessage) {
				t.Errorf("message %q does not contain %q", resp.Result.Message, tt.wantMessage)
			}
		})
	}
}
