package webhook

import (
	"context"
	"fmt"
	"slices"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// +kubebuilder:webhook:path=/validate-aadpodidentity-k8s-io-v1-azureidentitybinding,mutating=false,failurePolicy=fail,sideEffects=None,groups=aadpodidentity.k8s.io,resources=azureidentitybindings,verbs=create;update,versions=v1,name=vazureidentitybinding.aadpodidentity.k8s.io,admissionReviewVersions=v1,matchPolicy=Equivalent,timeoutSeconds=10
// The exception webhook only warns: failurePolicy Ignore, so that an exception created together
// with the webhook (the chart's own) is not refused while it starts.
// +kubebuilder:webhook:path=/validate-aadpodidentity-k8s-io-v1-azurepodidentityexception,mutating=false,failurePolicy=ignore,sideEffects=None,groups=aadpodidentity.k8s.io,resources=azurepodidentityexceptions,verbs=create;update,versions=v1,name=vazurepodidentityexception.aadpodidentity.k8s.io,admissionReviewVersions=v1,matchPolicy=Equivalent,timeoutSeconds=10
// +kubebuilder:webhook:path=/validate-aadpodidentity-k8s-io-v1-azureidentity,mutating=false,failurePolicy=fail,sideEffects=None,groups=aadpodidentity.k8s.io,resources=azureidentities,verbs=create;update,versions=v1,name=vazureidentity.aadpodidentity.k8s.io,admissionReviewVersions=v1,matchPolicy=Equivalent,timeoutSeconds=10

// The CR validators add what the CRDs' CEL rules cannot know, as warnings:
// field rules are the apiserver's job, so they never deny a well-formed
// object.

// BindingValidator warns about a binding whose AzureIdentity does not exist.
type BindingValidator struct {
	Reader client.Reader
}

var _ admitter[*aadv1.AzureIdentityBinding] = &BindingValidator{}

func (v *BindingValidator) Handles(op admissionv1.Operation) bool { return createOrUpdate(op) }

func (v *BindingValidator) Admit(ctx context.Context, _ admission.Request, b, _ *aadv1.AzureIdentityBinding) outcome {
	err := v.Reader.Get(ctx, client.ObjectKey{Namespace: b.Namespace, Name: b.Spec.AzureIdentity}, &aadv1.AzureIdentity{})
	switch {
	case apierrors.IsNotFound(err):
		return allowed(reasonWarned, fmt.Sprintf(
			"%s: AzureIdentity %s/%s does not exist yet; pods labelled %s=%s get no identity from this binding until it does",
			field.NewPath("spec", "azureIdentity"), b.Namespace, b.Spec.AzureIdentity, aadv1.BindingLabel, b.Spec.Selector))
	case err != nil:
		// A lookup failure must not block a valid object: the warning is advisory.
		return allowed(reasonLookupError)
	}
	return allowed(reasonValid)
}

func validOrWarned(warnings []string) outcome {
	if len(warnings) > 0 {
		return allowed(reasonWarned, warnings...)
	}
	return allowed(reasonValid)
}

// IdentityValidator refuses AzureIdentities whose client or resource ID is
// not ASCII or names one of the cluster's own identities or a user-assigned identity outside the admin's scopes for
// their namespace, and warns about a service principal's Secret that NMI
// will not read.
type IdentityValidator struct {
	Protected identity.Protected
	Scopes    identity.Scopes
	// AllFederated and Federation are policy mode federated and
	// policy.federation.enabled.
	AllFederated, Federation bool
}

var _ admitter[*aadv1.AzureIdentity] = IdentityValidator{}

func (IdentityValidator) Handles(op admissionv1.Operation) bool { return createOrUpdate(op) }

func (v IdentityValidator) Admit(_ context.Context, _ admission.Request, id, _ *aadv1.AzureIdentity) outcome {
	// As the CRD does: IDs compare ignoring ASCII case only, so a Unicode
	// look-alike (ſ for s) is another ID to the protected list and scopes,
	// and must not reach whatever compares it otherwise (Azure).
	var nonASCII field.ErrorList
	for _, f := range []struct{ name, value string }{{"clientID", id.Spec.ClientID}, {"resourceID", id.Spec.ResourceID}} {
		if !aadv1.IsASCII(f.value) {
			nonASCII = append(nonASCII, field.Invalid(field.NewPath("spec", f.name), f.value, "must be ASCII, as client and resource IDs are"))
		}
	}
	if len(nonASCII) > 0 {
		return denied(reasonNonASCIIID, nonASCII)
	}
	if f := v.Protected.Named(id); f != "" {
		return denied(reasonProtectedIdentity, field.ErrorList{field.Forbidden(field.NewPath("spec", f),
			"names one of the cluster's own identities (the kubelet's, the assigner's or an immutable one), which no AzureIdentity may give to pods")})
	}
	if err := v.Scopes.Check(id); err != nil {
		return denied(reasonIdentityOutOfScope, field.ErrorList{field.Forbidden(field.NewPath("spec", "resourceID"), err.Error())})
	}
	var warnings []string
	if ref := id.Spec.ClientPassword; id.Spec.Type != aadv1.UserAssignedMSI && ref != nil && ref.Namespace != "" && ref.Namespace != id.Namespace {
		warnings = append(warnings, fmt.Sprintf(
			"%s: Secret %s/%s is outside the identity's namespace %s; NMI reads it only with nmi.allowCrossNamespaceSecrets: true",
			field.NewPath("spec", "clientPassword", "namespace"), ref.Namespace, ref.Name, id.Namespace))
	}
	return validOrWarned(append(warnings, v.federationWarnings(id)...))
}

// federationWarnings tells what the federated annotation does to id.
func (v IdentityValidator) federationWarnings(id *aadv1.AzureIdentity) []string {
	path := field.NewPath("metadata", "annotations").Key(aadv1.AnnotationFederated)
	value, annotated := id.Annotations[aadv1.AnnotationFederated]
	switch {
	case annotated && value != "true" && value != "false":
		return []string{fmt.Sprintf("%s: %q is neither \"true\" nor \"false\"; read as false", path, value)}
	case annotated && value == "true" && id.Spec.Type != aadv1.UserAssignedMSI:
		return []string{fmt.Sprintf("%s: only user-assigned identities (type 0) are federated; ignored for type %d", path, id.Spec.Type)}
	case !identity.Federated(id, v.AllFederated):
		return nil
	case !v.Federation:
		return []string{fmt.Sprintf("%s: NMI serves no federated identity until the chart's policy.federation.enabled is true", path)}
	}
	return []string{fmt.Sprintf("AzureIdentity %s/%s is federated: a pod gets its token only if client ID %s has a federated credential for the cluster's issuer, subject system:serviceaccount:%s:<the pod's service account> and audience %s",
		id.Namespace, id.Name, id.Spec.ClientID, id.Namespace, identity.FederatedAudience)}
}

// ExceptionValidator tells whoever creates an AzurePodIdentityException what
// it grants, or that NMI ignores it in this namespace. It never denies: the
// namespace list is NMI's to enforce, and an exception that does nothing
// harms nobody.
type ExceptionValidator struct {
	// Namespaces whose exceptions NMI honours ("*": all) and Tokens what
	// they grant, as NMI's policy.exceptions.namespaces and policy.exceptions.tokens.
	Namespaces []string
	Tokens     config.ExceptionTokens
}

var _ admitter[*aadv1.AzurePodIdentityException] = ExceptionValidator{}

func (ExceptionValidator) Handles(op admissionv1.Operation) bool { return createOrUpdate(op) }

func (v ExceptionValidator) Admit(_ context.Context, _ admission.Request, e, _ *aadv1.AzurePodIdentityException) outcome {
	if !slices.Contains(v.Namespaces, "*") && !slices.Contains(v.Namespaces, e.Namespace) {
		return allowed(reasonWarned, fmt.Sprintf(
			"AzurePodIdentityException %s/%s has no effect: NMI honours exceptions only in namespaces %s (chart value nmi.exceptions.namespaces)",
			e.Namespace, e.Name, strings.Join(v.Namespaces, ", ")))
	}
	return allowed(reasonWarned, fmt.Sprintf(
		"AzurePodIdentityException %s/%s: pods in %s with any of the labels %v bypass aadpodidbinding and get %s",
		e.Namespace, e.Name, e.Namespace, e.Spec.PodLabels, exceptionGrant(v.Tokens)))
}

// exceptionGrant says in words what policy.exceptions.tokens gives.
func exceptionGrant(tokens config.ExceptionTokens) string {
	switch tokens {
	case config.ExceptionTokensAny:
		return "the instance metadata service unchanged: tokens for every identity on their node's pool, other teams' and the kubelet's included"
	case config.ExceptionTokensNone:
		return "the node's instance metadata, and no tokens"
	}
	return "the node's instance metadata and tokens for the node's own identity (requests naming no identity, or the kubelet identity)"
}

func createOrUpdate(op admissionv1.Operation) bool {
	return op == admissionv1.Create || op == admissionv1.Update
}

// crFrontEnd serves an admitter of one of this project's kinds.
func crFrontEnd[T client.Object](name, kind string, decoder admission.Decoder, newObj func() T, a admitter[T]) *frontEnd[T] {
	return &frontEnd[T]{name: name, kind: aadv1.GroupVersion.WithKind(kind).GroupKind(), decoder: decoder, newObj: newObj, admitter: a}
}
