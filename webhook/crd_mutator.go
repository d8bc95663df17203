package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/compat"
)

// +kubebuilder:webhook:path=/mutate-aadpodidentity-k8s-io-v1-azureidentity,mutating=true,failurePolicy=fail,sideEffects=None,groups=aadpodidentity.k8s.io,resources=azureidentities,verbs=create;update,versions=v1,name=mazureidentity.aadpodidentity.k8s.io,admissionReviewVersions=v1,matchPolicy=Equivalent,timeoutSeconds=10
// +kubebuilder:webhook:path=/mutate-aadpodidentity-k8s-io-v1-azureidentitybinding,mutating=true,failurePolicy=fail,sideEffects=None,groups=aadpodidentity.k8s.io,resources=azureidentitybindings,verbs=create;update,versions=v1,name=mazureidentitybinding.aadpodidentity.k8s.io,admissionReviewVersions=v1,matchPolicy=Equivalent,timeoutSeconds=10

// SpellingMutator stores the 1.x spellings of a spec (ResourceID,
// ClientID, ...) under the canonical fields and removes them. The
// components read either, but printer columns and whatever else reads the
// stored object (admission policies, field selectors) know only
// spec.resourceID, spec.clientID and the like. Whoever applied them is told
// which to write.
type SpellingMutator[T client.Object] struct{}

var _ admitter[*aadv1.AzureIdentity] = SpellingMutator[*aadv1.AzureIdentity]{}

func (SpellingMutator[T]) Handles(op admissionv1.Operation) bool { return createOrUpdate(op) }

func (SpellingMutator[T]) Admit(_ context.Context, _ admission.Request, obj, _ T) outcome {
	spellings := compat.Spellings(obj)
	if len(spellings) == 0 {
		return allowed(reasonUnchanged)
	}
	// Decoding folded the spellings into the canonical fields: their
	// values are what is stored.
	raw, err := json.Marshal(obj)
	if err != nil {
		return badRequest(fmt.Errorf("encoding the object: %w", err))
	}
	var folded struct {
		Spec map[string]json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal(raw, &folded); err != nil {
		return badRequest(fmt.Errorf("decoding the spec: %w", err))
	}
	var ops []jsonpatch.JsonPatchOperation
	canonical := map[string]bool{}
	for _, s := range spellings {
		ops = append(ops, jsonpatch.NewOperation("remove", "/spec/"+s.Old, nil))
		canonical[s.Current] = true
	}
	// "add" replaces a member that is already there: the canonical value
	// wins when both are set, as in decoding.
	for _, f := range slices.Sorted(maps.Keys(canonical)) {
		ops = append(ops, jsonpatch.NewOperation("add", "/spec/"+f, folded.Spec[f]))
	}
	return outcome{reason: reasonLegacySpelling, warnings: spellingWarnings(spellings), patch: ops}
}

// spellingWarnings tells whoever applies a 1.x manifest where its
// spellings went, and which to write instead.
func spellingWarnings(spellings []compat.Spelling) []string {
	var out []string
	for _, s := range spellings {
		c := field.NewPath("spec", s.Current)
		out = append(out, fmt.Sprintf("%s is aad-pod-identity 1.x's spelling: it is stored as %s (dropped where that is set too); write %s",
			field.NewPath("spec", s.Old), c, c))
	}
	return out
}
