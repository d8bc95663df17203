package webhook

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// +kubebuilder:webhook:path=/mutate-v1-pod,mutating=true,failurePolicy=fail,sideEffects=None,groups="",resources=pods,verbs=create,versions=v1,name=mpod.aadpodidentity.k8s.io,admissionReviewVersions=v1,matchPolicy=Equivalent,timeoutSeconds=10

// PodMutator records on a new pod the identities its label resolves to and,
// when a user-assigned identity must first reach the node pools (Gate:
// standard mode, where the assigner puts it there), holds the pod with a
// scheduling gate.
type PodMutator struct {
	Resolver *identity.Resolver
	Gate     bool
	// Nodes, when set, gives a gated pod its target pools and assignment
	// Pending at admission, as the assigner would: it then needs no pod
	// write before its gate is lifted. A failed lookup leaves that to the
	// assigner.
	Nodes client.Reader
	// NMI is where NMI runs: only those nodes' pools are targets.
	NMI nodepool.Coverage
}

var _ admitter[*corev1.Pod] = &PodMutator{}

// Handles only creation: afterwards PodValidator guards what was recorded.
func (m *PodMutator) Handles(op admissionv1.Operation) bool { return op == admissionv1.Create }

func (m *PodMutator) Admit(ctx context.Context, _ admission.Request, pod, _ *corev1.Pod) outcome {
	res, err := resolve(ctx, m.Resolver, pod)
	if err != nil {
		return lookupFailed(err)
	}
	pools, err := m.targets(ctx, pod, res)
	if errors.Is(err, nodepool.ErrNotCovered) {
		return denied(reasonNotCovered, field.ErrorList{field.Forbidden(field.NewPath("spec"), err.Error())})
	}
	// Explicit operations rather than a diff of the re-encoded pod: admission
	// latency is dominated by JSON work, and the diff doubles it.
	out := outcome{reason: reasonResolved, patch: resolutionPatch(pod, res, m.Gate, pools)}
	if out.warnings = resolutionWarnings(pod.Namespace, pod.Labels[aadv1.BindingLabel], res); len(out.warnings) > 0 {
		out.reason = reasonNoBinding
	}
	return out
}

// targets returns the pools a pod that will be gated may run on; none when
// it will not be gated or they cannot be told now. The error is
// nodepool.ErrNotCovered when the pod can only run where NMI does not:
// refused, since its identities could go nowhere.
func (m *PodMutator) targets(ctx context.Context, pod *corev1.Pod, res identity.Resolution) ([]nodepool.Pool, error) {
	if !m.Gate || m.Nodes == nil || !res.NeedsAssignment() || pod.Spec.NodeName != "" {
		return nil, nil
	}
	var nodes corev1.NodeList
	if err := m.Nodes.List(ctx, &nodes); err != nil {
		log.FromContext(ctx).V(1).Info("target pools left to the assigner", "error", err.Error())
		return nil, nil
	}
	pools, err := nodepool.Targets(pod, nodes.Items, m.NMI)
	if errors.Is(err, nodepool.ErrNotCovered) {
		return nil, err
	}
	// Other errors (no pool yet) are the assigner's to report, with an event.
	return pools, nil
}

// resolutionPatch writes the resolution onto the pod: creator-supplied
// annotations of ours are replaced, and, with gate, the gate is added only
// where the apiserver allows it (a pod with spec.nodeName is already bound),
// with the target pools when known.
func resolutionPatch(pod *corev1.Pod, res identity.Resolution, gate bool, pools []nodepool.Pool) []jsonpatch.JsonPatchOperation {
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
	gated := gate && res.NeedsAssignment() && pod.Spec.NodeName == ""
	if gated && len(pools) > 0 {
		ann[aadv1.AnnotationNodePools] = nodepool.JoinIDs(pools)
		ann[aadv1.AnnotationAssignment] = aadv1.AssignmentPending
	}
	for _, k := range slices.Sorted(maps.Keys(ann)) {
		ops = append(ops, jsonpatch.NewOperation("add", "/metadata/annotations/"+escapePointer(k), ann[k]))
	}
	if gated && !identity.HasGate(pod) {
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

// resolve resolves the pod's binding label.
func resolve(ctx context.Context, r *identity.Resolver, pod *corev1.Pod) (identity.Resolution, error) {
	selector := pod.Labels[aadv1.BindingLabel]
	res, err := r.Resolve(ctx, pod.Namespace, selector)
	if err != nil {
		return res, fmt.Errorf("resolving %s=%q in namespace %s: %w", aadv1.BindingLabel, selector, pod.Namespace, err)
	}
	return res, nil
}

// podFrontEnd serves an admitter of pods.
func podFrontEnd(name string, decoder admission.Decoder, a admitter[*corev1.Pod]) *frontEnd[*corev1.Pod] {
	return &frontEnd[*corev1.Pod]{
		name: name, kind: corev1.SchemeGroupVersion.WithKind("Pod").GroupKind(), decoder: decoder,
		newObj: func() *corev1.Pod { return &corev1.Pod{} }, admitter: a, wellFormed: wellFormedPod,
	}
}

// wellFormedPod refuses pods the apiserver refuses anyway, so that a patch
// always finds the metadata and spec it writes into.
func wellFormedPod(pod *corev1.Pod) error {
	if pod.Name == "" && pod.GenerateName == "" {
		return fmt.Errorf("pod has neither metadata.name nor metadata.generateName")
	}
	if len(pod.Spec.Containers) == 0 {
		return fmt.Errorf("pod has no spec.containers")
	}
	return nil
}
