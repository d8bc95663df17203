package webhook

import (
	"context"
	"fmt"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// +kubebuilder:webhook:path=/validate-v1-pod,mutating=false,failurePolicy=fail,sideEffects=None,groups="",resources=pods,verbs=create;update,versions=v1,name=vpod.aadpodidentity.k8s.io,admissionReviewVersions=v1,matchPolicy=Equivalent,timeoutSeconds=10

// PodValidator guards what NMI trusts: the identity annotations must be what
// the label resolves to when the pod is created, and afterwards only the
// project's own service accounts may change them, the label or the gate.
type PodValidator struct {
	Resolver *identity.Resolver
	// Trusted holds the usernames (system:serviceaccount:<ns>:<name>) allowed
	// to change protected fields after creation.
	Trusted sets.Set[string]
}

var _ admitter[*corev1.Pod] = &PodValidator{}

func (v *PodValidator) Handles(op admissionv1.Operation) bool {
	return op == admissionv1.Create || op == admissionv1.Update
}

func (v *PodValidator) Admit(ctx context.Context, req admission.Request, pod, old *corev1.Pod) outcome {
	if req.Operation == admissionv1.Create {
		return v.admitCreate(ctx, pod)
	}
	return v.admitUpdate(req.UserInfo.Username, old, pod)
}

func (v *PodValidator) admitCreate(ctx context.Context, pod *corev1.Pod) outcome {
	res, err := resolve(ctx, v.Resolver, pod)
	if err != nil {
		return lookupFailed(err)
	}
	want := res.Annotations()
	// The mutator's target pools are advice to the assigner, which
	// recomputes them; NMI reads neither annotation.
	if pools, ok := pod.Annotations[aadv1.AnnotationNodePools]; ok && pod.Annotations[aadv1.AnnotationAssignment] == aadv1.AssignmentPending {
		want[aadv1.AnnotationNodePools], want[aadv1.AnnotationAssignment] = pools, aadv1.AssignmentPending
	}
	if errs := annotationMismatch(pod, want); len(errs) > 0 {
		return denied(reasonAnnotationMismatch, errs)
	}
	return allowed(reasonValid)
}

// annotationMismatch names every annotation of ours that differs from what
// the label resolves to.
func annotationMismatch(pod *corev1.Pod, want map[string]string) field.ErrorList {
	got := protectedAnnotations(pod)
	selector := pod.Labels[aadv1.BindingLabel]
	var errs field.ErrorList
	for _, k := range sets.List(sets.KeySet(got).Union(sets.KeySet(want))) {
		path := annotationsPath.Key(k)
		w, inWant := want[k]
		g, inGot := got[k]
		switch {
		case !inWant:
			errs = append(errs, field.Forbidden(path, "set only by aad-pod-identity after admission"))
		case !inGot:
			errs = append(errs, field.Required(path, fmt.Sprintf("label %s=%q resolves to %q: another mutating webhook removed it (retry)", aadv1.BindingLabel, selector, w)))
		case g != w:
			errs = append(errs, field.Invalid(path, g, fmt.Sprintf("label %s=%q resolves to %q: another mutating webhook changed it, or a binding changed during admission (retry)", aadv1.BindingLabel, selector, w)))
		}
	}
	return errs
}

func (v *PodValidator) admitUpdate(user string, old, pod *corev1.Pod) outcome {
	changed := protectedChanges(old, pod)
	if len(changed) == 0 {
		return allowed(reasonUnchanged)
	}
	if v.Trusted.Has(user) {
		return allowed(reasonTrusted)
	}
	detail := fmt.Sprintf("%s may not change it after the pod is created: only the aad-pod-identity service accounts (%s) may; delete and recreate the pod instead",
		user, strings.Join(sets.List(v.Trusted), ", "))
	errs := make(field.ErrorList, 0, len(changed))
	for _, p := range changed {
		errs = append(errs, field.Forbidden(p, detail))
	}
	return denied(reasonUntrustedChange, errs)
}

var (
	annotationsPath  = field.NewPath("metadata", "annotations")
	bindingLabelPath = field.NewPath("metadata", "labels").Key(aadv1.BindingLabel)
	gatePath         = field.NewPath("spec", "schedulingGates").Key(aadv1.SchedulingGate)
)

// protectedAnnotations returns the pod's annotations that are ours.
func protectedAnnotations(pod *corev1.Pod) map[string]string {
	out := map[string]string{}
	for k, val := range pod.Annotations {
		if strings.HasPrefix(k, aadv1.AnnotationPrefix) {
			out[k] = val
		}
	}
	return out
}

// protectedChanges returns the fields NMI or the assigner rely on that
// differ between old and new: the label, our annotations and our gate.
func protectedChanges(old, pod *corev1.Pod) []*field.Path {
	var changed []*field.Path
	oldLabel, oldHas := old.Labels[aadv1.BindingLabel]
	newLabel, newHas := pod.Labels[aadv1.BindingLabel]
	if oldHas != newHas || oldLabel != newLabel {
		changed = append(changed, bindingLabelPath)
	}
	oldAnn, newAnn := protectedAnnotations(old), protectedAnnotations(pod)
	for _, k := range sets.List(sets.KeySet(oldAnn).Union(sets.KeySet(newAnn))) {
		if oldAnn[k] != newAnn[k] || hasKey(oldAnn, k) != hasKey(newAnn, k) {
			changed = append(changed, annotationsPath.Key(k))
		}
	}
	if identity.HasGate(old) != identity.HasGate(pod) {
		changed = append(changed, gatePath)
	}
	return changed
}

func hasKey(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}
