package webhook

import (
	"context"
	"fmt"
	"net/http"
	"strconv"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// admitter is one admission check on objects of type T. The front end
// (frontEnd) decodes the request, so an admitter only decides.
type admitter[T client.Object] interface {
	// Handles tells which operations the admitter looks at; others are
	// allowed without decoding.
	Handles(op admissionv1.Operation) bool
	// Admit decides on obj; old is set on updates only.
	Admit(ctx context.Context, req admission.Request, obj, old T) outcome
}

// outcome is an admission decision and the reason it is counted under.
type outcome struct {
	reason   string
	warnings []string
	// denied, when not empty, refuses the request; each error names its field.
	denied field.ErrorList
	// patch mutates the object (mutating webhooks only).
	patch []jsonpatch.JsonPatchOperation
	// err fails the request with code: a malformed request (400) or a
	// lookup that failed (500).
	err  error
	code int32
}

func allowed(reason string, warnings ...string) outcome {
	return outcome{reason: reason, warnings: warnings}
}

func denied(reason string, errs field.ErrorList) outcome {
	return outcome{reason: reason, denied: errs}
}

func badRequest(err error) outcome {
	return outcome{reason: reasonBadRequest, err: err, code: http.StatusBadRequest}
}

func lookupFailed(err error) outcome {
	return outcome{reason: reasonLookupError, err: err, code: http.StatusInternalServerError}
}

// frontEnd is the one path every admission request takes: kind check,
// decoding, the admitter's decision, its response and the outcome metric.
type frontEnd[T client.Object] struct {
	name     string // the metric's webhook label
	kind     schema.GroupKind
	decoder  admission.Decoder
	newObj   func() T
	admitter admitter[T]
	// wellFormed refuses, as a bad request, objects the apiserver would
	// refuse anyway, so that admitters may rely on their shape.
	wellFormed func(T) error
}

var _ admission.Handler = &frontEnd[client.Object]{}

func (f *frontEnd[T]) Handle(ctx context.Context, req admission.Request) admission.Response {
	resp, reason := f.decide(ctx, req)
	admissionOutcomes.WithLabelValues(f.name, strconv.FormatBool(resp.Allowed), reason).Inc()
	return resp
}

// decide returns the response and the reason it is counted under.
func (f *frontEnd[T]) decide(ctx context.Context, req admission.Request) (admission.Response, string) {
	if !f.admitter.Handles(req.Operation) {
		return admission.Allowed(""), reasonIgnored
	}
	obj, old, err := f.decode(req)
	if err != nil {
		return f.respond(ctx, req, badRequest(err)), reasonBadRequest
	}
	out := f.admitter.Admit(ctx, req, obj, old)
	return f.respond(ctx, req, out), out.reason
}

func (f *frontEnd[T]) decode(req admission.Request) (obj, old T, err error) {
	if req.Kind.Kind != f.kind.Kind || req.Kind.Group != f.kind.Group {
		return obj, old, fmt.Errorf("expected a %s, got %s", f.kind.String(), req.Kind.String())
	}
	if len(req.Object.Raw) == 0 {
		return obj, old, fmt.Errorf("request has no object")
	}
	obj = f.newObj()
	if err := f.decoder.DecodeRaw(req.Object, obj); err != nil {
		return obj, old, fmt.Errorf("decoding %s: %w", f.kind.Kind, err)
	}
	// A create request carries the namespace outside the object.
	if obj.GetNamespace() == "" {
		obj.SetNamespace(req.Namespace)
	}
	if f.wellFormed != nil {
		if err := f.wellFormed(obj); err != nil {
			return obj, old, err
		}
	}
	if req.Operation == admissionv1.Update {
		if len(req.OldObject.Raw) == 0 {
			return obj, old, fmt.Errorf("update request has no old object")
		}
		old = f.newObj()
		if err := f.decoder.DecodeRaw(req.OldObject, old); err != nil {
			return obj, old, fmt.Errorf("decoding old %s: %w", f.kind.Kind, err)
		}
	}
	return obj, old, nil
}

func (f *frontEnd[T]) respond(ctx context.Context, req admission.Request, out outcome) admission.Response {
	switch {
	case out.err != nil:
		if out.code >= http.StatusInternalServerError {
			log.FromContext(ctx).Error(out.err, "admission failed", "webhook", f.name, "namespace", req.Namespace, "name", req.Name)
		}
		return admission.Errored(out.code, out.err)
	case len(out.denied) > 0:
		resource := schema.GroupResource{Group: req.Resource.Group, Resource: req.Resource.Resource}
		return deniedResponse(resource, req.Name, out.denied).WithWarnings(out.warnings...)
	case out.patch != nil:
		return admission.Patched("", out.patch...).WithWarnings(out.warnings...)
	}
	return admission.Allowed("").WithWarnings(out.warnings...)
}

// deniedResponse is a 403 whose message lists every error with its field
// path, and whose details carry them as causes, as the apiserver's own
// validation does.
func deniedResponse(resource schema.GroupResource, name string, errs field.ErrorList) admission.Response {
	status := apierrors.NewForbidden(resource, name, errs.ToAggregate()).ErrStatus
	for _, e := range errs {
		status.Details.Causes = append(status.Details.Causes, metav1.StatusCause{
			Type: metav1.CauseType(e.Type), Message: e.ErrorBody(), Field: e.Field,
		})
	}
	return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: false, Result: &status}}
}
