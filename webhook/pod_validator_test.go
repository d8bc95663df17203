package webhook

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/objects"
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
		{"label value", func(p *corev1.Pod) { p.Labels[aadv1.BindingLabel] = "admin" }, []string{"metadata.labels[aadpodidbinding]"}},
		{"label removed", func(p *corev1.Pod) { delete(p.Labels, aadv1.BindingLabel) }, []string{"metadata.labels[aadpodidbinding]"}},
		{"annotation value", func(p *corev1.Pod) { p.Annotations[aadv1.AnnotationIdentities] = "kube-system/x" },
			[]string{"metadata.annotations[" + aadv1.AnnotationIdentities + "]"}},
		{"annotation added empty", func(p *corev1.Pod) { p.Annotations[aadv1.AnnotationAssignment] = "" },
			[]string{"metadata.annotations[" + aadv1.AnnotationAssignment + "]"}},
		{"gate removed", func(p *corev1.Pod) { p.Spec.SchedulingGates = nil }, []string{"spec.schedulingGates[" + aadv1.SchedulingGate + "]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := base.DeepCopy()
			tt.modify(pod)
			var got []string
			for _, p := range protectedChanges(base, pod) {
				got = append(got, p.String())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestPodValidatorHandle(t *testing.T) {
	id := objects.AzureIdentity("default", "demo", aadv1.UserAssignedMSI, "c-demo")
	b := objects.Binding("default", "demo-binding", "demo", "demo")
	const assigner = "system:serviceaccount:aad:aad-pod-identity-assigner"
	v := podFrontEnd("validate-pod", admission.NewDecoder(identity.Scheme()), &PodValidator{Resolver: newResolver(t, &id, &b), Trusted: sets.New(assigner)})

	admitted := labelled("demo")
	admitted.Annotations = map[string]string{aadv1.AnnotationIdentities: "default/demo", aadv1.AnnotationClientIDs: "c-demo"}
	forged := admitted.DeepCopy()
	forged.Annotations[aadv1.AnnotationIdentities] = "kube-system/admin"
	assigned := admitted.DeepCopy()
	assigned.Annotations[aadv1.AnnotationAssignment] = aadv1.AssignmentAssigned
	targeted := admitted.DeepCopy()
	targeted.Annotations[aadv1.AnnotationNodePools] = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/a"
	targeted.Annotations[aadv1.AnnotationAssignment] = aadv1.AssignmentPending
	assignedWithPools := targeted.DeepCopy()
	assignedWithPools.Annotations[aadv1.AnnotationAssignment] = aadv1.AssignmentAssigned
	relabelled := admitted.DeepCopy()
	relabelled.Labels[aadv1.BindingLabel] = "admin"
	ready := assignedWithPools.DeepCopy()
	ready.Annotations[aadv1.AnnotationIdentitiesReadyAt] = "2026-12-07T12:00:00Z"

	ann := func(k string) string { return "metadata.annotations[" + k + "]" }
	tests := []struct {
		name        string
		req         admission.Request
		wantAllowed bool
		wantReason  string
		// wantCauses are the denial's field errors, as "type field".
		wantCauses []string
	}{
		{"create with resolved annotations", podRequest(t, admissionv1.Create, admitted, nil, "alice"), true, reasonValid, nil},
		{"create with forged annotations", podRequest(t, admissionv1.Create, forged, nil, "alice"), false, reasonAnnotationMismatch,
			[]string{"FieldValueInvalid " + ann(aadv1.AnnotationIdentities)}},
		{"create without annotations", podRequest(t, admissionv1.Create, labelled("demo"), nil, "alice"), false, reasonAnnotationMismatch,
			[]string{"FieldValueRequired " + ann(aadv1.AnnotationClientIDs), "FieldValueRequired " + ann(aadv1.AnnotationIdentities)}},
		{"create with an assignment annotation", podRequest(t, admissionv1.Create, assigned, nil, "alice"), false, reasonAnnotationMismatch,
			[]string{"FieldValueForbidden " + ann(aadv1.AnnotationAssignment)}},
		{"create with the mutator's target pools, Pending", podRequest(t, admissionv1.Create, targeted, nil, "alice"), true, reasonValid, nil},
		{"create with target pools, Assigned", podRequest(t, admissionv1.Create, assignedWithPools, nil, "alice"), false, reasonAnnotationMismatch,
			[]string{"FieldValueForbidden " + ann(aadv1.AnnotationAssignment), "FieldValueForbidden " + ann(aadv1.AnnotationNodePools)}},
		{"update by trusted assigner", podRequest(t, admissionv1.Update, assigned, admitted, assigner), true, reasonTrusted, nil},
		{"readiness dated by the assigner", podRequest(t, admissionv1.Update, ready, targeted, assigner), true, reasonTrusted, nil},
		{"readiness dated by user", podRequest(t, admissionv1.Update, ready, assignedWithPools, "alice"), false, reasonUntrustedChange,
			[]string{"FieldValueForbidden " + ann(aadv1.AnnotationIdentitiesReadyAt)}},
		{"create with a readiness date", podRequest(t, admissionv1.Create, ready, nil, "alice"), false, reasonAnnotationMismatch,
			[]string{"FieldValueForbidden " + ann(aadv1.AnnotationAssignment), "FieldValueForbidden " + ann(aadv1.AnnotationIdentitiesReadyAt), "FieldValueForbidden " + ann(aadv1.AnnotationNodePools)}},
		{"annotation update by user", podRequest(t, admissionv1.Update, assigned, admitted, "alice"), false, reasonUntrustedChange,
			[]string{"FieldValueForbidden " + ann(aadv1.AnnotationAssignment)}},
		{"label update by user", podRequest(t, admissionv1.Update, relabelled, admitted, "alice"), false, reasonUntrustedChange,
			[]string{"FieldValueForbidden metadata.labels[aadpodidbinding]"}},
		{"unrelated update by user", podRequest(t, admissionv1.Update, admitted, admitted, "alice"), true, reasonUnchanged, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, reason := v.decide(context.Background(), tt.req)
			if resp.Allowed != tt.wantAllowed || reason != tt.wantReason {
				t.Fatalf("allowed=%v reason=%s, want %v %s (%+v)", resp.Allowed, reason, tt.wantAllowed, tt.wantReason, resp.Result)
			}
			if tt.wantAllowed {
				return
			}
			if resp.Result.Code != http.StatusForbidden || resp.Result.Details == nil {
				t.Fatalf("denial %+v: want 403 with details", resp.Result)
			}
			var causes []string
			for _, c := range resp.Result.Details.Causes {
				causes = append(causes, string(c.Type)+" "+c.Field)
				if !strings.Contains(resp.Result.Message, c.Field) {
					t.Errorf("message %q does not name field %s", resp.Result.Message, c.Field)
				}
			}
			if diff := cmp.Diff(tt.wantCauses, causes); diff != "" {
				t.Errorf("causes (-want +got):\n%s", diff)
			}
		})
	}
}
