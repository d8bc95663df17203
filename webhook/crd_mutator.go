package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// +kubebuilder:webhook:path=/mutate-aadpodidentity-k8s-io-v1-azureidentity,mutating=true,failurePolicy=fail,sideEffects=None,groups=aadpodidentity.k8s.io,resources=azureidentities,verbs=create;update,versions=v1,name=mazureidentity.aadpodidentity.k8s.io,admissionReviewVersions=v1,matchPolicy=Equivalent,timeoutSeconds=10
// +kubebuilder:webhook:path=/mutate-aadpodidentity-k8s-io-v1-azureidentitybinding,mutating=true,failurePolicy=fail,sideEffects=None,groups=aadpodidentity.k8s.io,resources=azureidentitybindings,verbs=create;update,versions=v1,name=mazureidentitybinding.aadpodidentity.k8s.io,admissionReviewVersions=v1,matchPolicy=Equivalent,timeoutSeconds=10

// legacySpec is a spec that aad-pod-identity 1.x's manifests spell
// differently; decoding has already folded those spellings into the
// canonical fields.
type legacySpec interface {
	LegacyFields() []string
}

// SpellingMutator stores the 1.x spellings of a spec (ResourceID,
// ClientID, ...) under the canonical fields and removes them. The
// components read either, but printer columns and whatever else reads the
// stored object (admission policies, field selectors) know only
// spec.resourceID, spec.clientID and the like. Whoever applied them is told
// which to write.
type SpellingMutator[T client.Object] struct {
	Spec func(T) legacySpec
}

var _ admitter[*aadv1.AzureIdentity] = SpellingMutator[*aadv1.AzureIdentity]{}

func (SpellingMutator[T]) Handles(op admissionv1.Operation) bool { return createOrUpdate(op) }

func (m SpellingMutator[T]) Admit(_ context.Context, _ admission.Request, obj, _ T) outcome {
	spec := m.Spec(obj)
	legacy := spec.LegacyFields()
	if len(legacy) == 0 {
		return allowed(reasonUnchanged)
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		return badRequest(fmt.Errorf("encoding the spec: %w", err))
	}
	var folded map[string]json.RawMessage
	if err := json.Unmarshal(raw, &folded); err != nil {
		return badRequest(fmt.Errorf("decoding the spec: %w", err))
	}
	var ops []jsonpatch.JsonPatchOperation
	canonical := map[string]bool{}
	for _, f := range legacy {
		ops = append(ops, jsonpatch.NewOperation("remove", "/spec/"+f, nil))
		canonical[canonicalSpelling[f]] = true
	}
	// "add" replaces a member that is already there: the canonical value
	// wins when both are set, as in Fold.
	for _, f := range slices.Sorted(maps.Keys(canonical)) {
		ops = append(ops, jsonpatch.NewOperation("add", "/spec/"+f, folded[f]))
	}
	return outcome{reason: reasonLegacySpelling, warnings: legacyWarnings(legacy), patch: ops}
}
