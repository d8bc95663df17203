package webhook

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"sigs.k8s.io/controller-runtime/pkg/log"
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
	Decoder  admission.Decoder
	// Trusted holds the usernames (system:serviceaccount:<ns>:<name>) allowed
	// to change protected fields after creation.
	Trusted sets.Set[string]
}

func (v *PodValidator) handle(ctx context.Context, req admission.Request) (admission.Response, string) {
	switch req.Operation {
	case admissionv1.Create:
		return v.validateCreate(ctx, req)
	case admissionv1.Update:
		return v.validateUpdate(req)
	default:
		return admission.Allowed(""), reasonIgnored
	}
}

func (v *PodValidator) validateCreate(ctx context.Context, req admission.Request) (admission.Response, string) {
	pod, err := decodePod(v.Decoder, req)
	if err != nil {
		return admission.Errored(http.StatusBadRequest, err), reasonBadRequest
	}
	selector := pod.Labels[aadv1.BindingLabel]
	res, err := v.Resolver.Resolve(ctx, pod.Namespace, selector)
	if err != nil {
		log.FromContext(ctx).Error(err, "resolving identities", "namespace", pod.Namespace, "selector", selector)
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("resolving aadpodidbinding %q: %w", selector, err)), reasonLookupError
	}
	want := res.Annotations()
	got := protectedAnnotations(pod)
	if !maps.Equal(want, got) {
		return admission.Denied(fmt.Sprintf("aadpodidentity.k8s.io annotations %v do not match what label %s=%q resolves to %v: "+
			"another mutating webhook changed them, or a binding changed during admission (retry)", got, aadv1.BindingLabel, selector, want)), reasonAnnotationMismatch
	}
	return admission.Allowed(""), reasonValid
}

func (v *PodValidator) validateUpdate(req admission.Request) (admission.Response, string) {
	if len(req.OldObject.Raw) == 0 {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("update request has no old object")), reasonBadRequest
	}
	pod, err := decodePod(v.Decoder, req)
	if err != nil {
		return admission.Errored(http.StatusBadRequest, err), reasonBadRequest
	}
	old := &corev1.Pod{}
	if err := v.Decoder.DecodeRaw(req.OldObject, old); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decoding old pod: %w", err)), reasonBadRequest
	}
	changed := protectedChanges(old, pod)
	if len(changed) == 0 {
		return admission.Allowed(""), reasonUnchanged
	}
	if v.Trusted.Has(req.UserInfo.Username) {
		return admission.Allowed(""), reasonTrusted
	}
	return admission.Denied(fmt.Sprintf("%s may not change %s after the pod is created: only the aad-pod-identity service accounts (%s) may; delete and recreate the pod instead",
		req.UserInfo.Username, strings.Join(changed, ", "), strings.Join(sets.List(v.Trusted), ", "))), reasonUntrustedChange
}

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

// protectedChanges names what NMI or the assigner rely on that differs
// between old and new: the label, our annotations and our gate.
func protectedChanges(old, pod *corev1.Pod) []string {
	var changed []string
	oldLabel, oldHas := old.Labels[aadv1.BindingLabel]
	newLabel, newHas := pod.Labels[aadv1.BindingLabel]
	if oldHas != newHas || oldLabel != newLabel {
		changed = append(changed, "label "+aadv1.BindingLabel)
	}
	oldAnn, newAnn := protectedAnnotations(old), protectedAnnotations(pod)
	keys := sets.KeySet(oldAnn).Union(sets.KeySet(newAnn))
	for _, k := range sets.List(keys) {
		if oldAnn[k] != newAnn[k] || hasKey(oldAnn, k) != hasKey(newAnn, k) {
			changed = append(changed, "annotation "+k)
		}
	}
	if identity.HasGate(old) != identity.HasGate(pod) {
		changed = append(changed, "scheduling gate "+aadv1.SchedulingGate)
	}
	return slices.Clip(changed)
}

func hasKey(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}
