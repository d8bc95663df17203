package webhook

import (
	"context"
	"fmt"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// +kubebuilder:webhook:path=/validate-aadpodidentity-k8s-io-v1-azureidentitybinding,mutating=false,failurePolicy=fail,sideEffects=None,groups=aadpodidentity.k8s.io,resources=azureidentitybindings,verbs=create;update,versions=v1,name=vazureidentitybinding.aadpodidentity.k8s.io,admissionReviewVersions=v1,matchPolicy=Equivalent,timeoutSeconds=10
// +kubebuilder:webhook:path=/validate-aadpodidentity-k8s-io-v1-azureidentity,mutating=false,failurePolicy=fail,sideEffects=None,groups=aadpodidentity.k8s.io,resources=azureidentities,verbs=create;update,versions=v1,name=vazureidentity.aadpodidentity.k8s.io,admissionReviewVersions=v1,matchPolicy=Equivalent,timeoutSeconds=10

// CRValidator adds what the CRDs' CEL rules cannot know, as warnings: field
// rules are the apiserver's job, so this never denies a well-formed object.
type CRValidator struct {
	Reader  client.Reader
	Decoder admission.Decoder
}

func (v *CRValidator) handleBinding(ctx context.Context, req admission.Request) (admission.Response, string) {
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return admission.Allowed(""), reasonIgnored
	}
	var b aadv1.AzureIdentityBinding
	if err := v.decode(req, "AzureIdentityBinding", &b); err != nil {
		return admission.Errored(http.StatusBadRequest, err), reasonBadRequest
	}
	ns := b.Namespace
	if ns == "" {
		ns = req.Namespace
	}
	err := v.Reader.Get(ctx, client.ObjectKey{Namespace: ns, Name: b.Spec.AzureIdentity}, &aadv1.AzureIdentity{})
	switch {
	case apierrors.IsNotFound(err):
		return admission.Allowed("").WithWarnings(fmt.Sprintf(
			"spec.azureIdentity: AzureIdentity %s/%s does not exist yet; pods labelled %s=%s get no identity from this binding until it does",
			ns, b.Spec.AzureIdentity, aadv1.BindingLabel, b.Spec.Selector)), reasonWarned
	case err != nil:
		// A lookup failure must not block a valid object: the warning is advisory.
		return admission.Allowed(""), reasonLookupError
	}
	return admission.Allowed(""), reasonValid
}

func (v *CRValidator) handleIdentity(_ context.Context, req admission.Request) (admission.Response, string) {
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return admission.Allowed(""), reasonIgnored
	}
	var id aadv1.AzureIdentity
	if err := v.decode(req, "AzureIdentity", &id); err != nil {
		return admission.Errored(http.StatusBadRequest, err), reasonBadRequest
	}
	ns := id.Namespace
	if ns == "" {
		ns = req.Namespace
	}
	if ref := id.Spec.ClientPassword; id.Spec.Type != aadv1.UserAssignedMSI && ref != nil && ref.Namespace != "" && ref.Namespace != ns {
		return admission.Allowed("").WithWarnings(fmt.Sprintf(
			"spec.clientPassword.namespace: Secret %s/%s is outside the identity's namespace %s; NMI reads it only when started with --allow-cross-namespace-secrets",
			ref.Namespace, ref.Name, ns)), reasonWarned
	}
	return admission.Allowed(""), reasonValid
}

func (v *CRValidator) decode(req admission.Request, kind string, into client.Object) error {
	if req.Kind.Group != aadv1.GroupVersion.Group || req.Kind.Kind != kind {
		return fmt.Errorf("expected %s.%s, got %s", kind, aadv1.GroupVersion.Group, req.Kind.String())
	}
	if len(req.Object.Raw) == 0 {
		return fmt.Errorf("request has no object")
	}
	if err := v.Decoder.DecodeRaw(req.Object, into); err != nil {
		return fmt.Errorf("decoding %s: %w", kind, err)
	}
	return nil
}
