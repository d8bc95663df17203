package webhook

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// +kubebuilder:webhook:path=/mutate-v1-pod,mutating=true,failurePolicy=fail,sideEffects=None,groups="",resources=pods,verbs=create,versions=v1,name=mpod.aadpodidentity.k8s.io,admissionReviewVersions=v1,matchPolicy=Equivalent,timeoutSeconds=10

// PodMutator records on a new pod the identities its label resolves to and,
// when a user-assigned identity must first reach the node pools, holds the
// pod with a scheduling gate.
type PodMutator struct {
	Resolver *identity.Resolver
	Decoder  admission.Decoder
}

func (m *PodMutator) handle(ctx context.Context, req admission.Request) (admission.Response, string) {
	if req.Operation != admissionv1.Create {
		return admission.Allowed("only pod creation is mutated"), reasonIgnored
	}
	pod, err := decodePod(m.Decoder, req)
	if err != nil {
		return admission.Errored(http.StatusBadRequest, err), reasonBadRequest
	}
	selector := pod.Labels[aadv1.BindingLabel]
	res, err := m.Resolver.Resolve(ctx, pod.Namespace, selector)
	if err != nil {
		log.FromContext(ctx).Error(err, "resolving identities", "namespace", pod.Namespace, "selector", selector)
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("resolving aadpodidbinding %q: %w", selector, err)), reasonLookupError
	}

	// Explicit operations rather than a diff of the re-encoded pod: admission
	// latency is dominated by JSON work, and the diff doubles it.
	resp := admission.Patched("", resolutionPatch(pod, res)...)
	if warnings := resolutionWarnings(pod.Namespace, selector, res); len(warnings) > 0 {
		return resp.WithWarnings(warnings...), reasonNoBinding
	}
	return resp, reasonResolved
}

// resolutionPatch writes the resolution onto the pod: creator-supplied
// annotations of ours are replaced, and the gate is added only where the
// apiserver allows it (a pod with spec.nodeName is already bound).
func resolutionPatch(pod *corev1.Pod, res identity.Resolution) []jsonpatch.JsonPatchOperation {
	var ops []jsonpatch.JsonPatchOperation
	if pod.Annotations == nil {
		ops = append(ops, jsonpatch.NewOperation("add", "/metadata/annotations", map[string]string{}))
	}
	for _, k := range slices.Sorted(maps.Keys(pod.Annotations)) {
		if strings.HasPrefix(k, aadv1.AnnotationPrefix) {
			ops = append(ops, jsonpatch.NewOperation("remove", "/metadata/annotations/"+escapePointer(k), nil))
		}
	}
	ann := res.Annotations()
	for _, k := range slices.Sorted(maps.Keys(ann)) {
		ops = append(ops, jsonpatch.NewOperation("add", "/metadata/annotations/"+escapePointer(k), ann[k]))
	}
	if res.NeedsAssignment() && pod.Spec.NodeName == "" && !identity.HasGate(pod) {
		gate := corev1.PodSchedulingGate{Name: aadv1.SchedulingGate}
		if len(pod.Spec.SchedulingGates) == 0 {
			ops = append(ops, jsonpatch.NewOperation("add", "/spec/schedulingGates", []corev1.PodSchedulingGate{gate}))
		} else {
			ops = append(ops, jsonpatch.NewOperation("add", "/spec/schedulingGates/-", gate))
		}
	}
	return ops
}

// escapePointer escapes a map key for a JSON pointer (RFC 6901).
func escapePointer(key string) string {
	return strings.ReplaceAll(strings.ReplaceAll(key, "~", "~0"), "/", "~1")
}

// resolutionWarnings tells the creator, through kubectl, why the pod got no
// identity.
func resolutionWarnings(namespace, selector string, res identity.Resolution) []string {
	var w []string
	for _, b := range res.Dangling {
		w = append(w, fmt.Sprintf("AzureIdentityBinding %s names an AzureIdentity that does not exist", b))
	}
	if len(res.Identities) == 0 {
		w = append(w, fmt.Sprintf("label %s=%q matches no AzureIdentityBinding in namespace %s: the pod gets no identity until one is created", aadv1.BindingLabel, selector, namespace))
	}
	return w
}

// decodePod decodes the pod of a request and fills in its namespace, which a
// create request carries outside the object.
func decodePod(d admission.Decoder, req admission.Request) (*corev1.Pod, error) {
	if req.Kind.Kind != "Pod" || req.Kind.Group != "" {
		return nil, fmt.Errorf("expected a Pod, got %s", req.Kind.String())
	}
	if len(req.Object.Raw) == 0 {
		return nil, fmt.Errorf("request has no object")
	}
	pod := &corev1.Pod{}
	if err := d.DecodeRaw(req.Object, pod); err != nil {
		return nil, fmt.Errorf("decoding pod: %w", err)
	}
	// The apiserver refuses such pods anyway; refusing them here also means
	// the patch always finds the metadata and spec it writes into.
	if pod.Name == "" && pod.GenerateName == "" {
		return nil, fmt.Errorf("pod has neither metadata.name nor metadata.generateName")
	}
	if len(pod.Spec.Containers) == 0 {
		return nil, fmt.Errorf("pod has no spec.containers")
	}
	if pod.Namespace == "" {
		pod.Namespace = req.Namespace
	}
	return pod, nil
}
