//go:build integration

package webhook

import (
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// The rendered config/webhook is what users apply: every webhook fails
// closed, and the pod webhooks only ever see labelled pods.
func TestWebhookConfigurations(t *testing.T) {
	mutating, validating, err := framework.WebhookConfigurations()
	if err != nil {
		t.Fatal(err)
	}
	type hook struct {
		name           string
		failure        *admissionregistrationv1.FailurePolicyType
		sideEffects    *admissionregistrationv1.SideEffectClass
		match          *admissionregistrationv1.MatchPolicyType
		timeout        *int32
		objectSelector *metav1.LabelSelector
		rules          []admissionregistrationv1.RuleWithOperations
	}
	var hooks []hook
	for _, c := range mutating {
		for _, w := range c.Webhooks {
			hooks = append(hooks, hook{w.Name, w.FailurePolicy, w.SideEffects, w.MatchPolicy, w.TimeoutSeconds, w.ObjectSelector, w.Rules})
		}
	}
	for _, c := range validating {
		for _, w := range c.Webhooks {
			hooks = append(hooks, hook{w.Name, w.FailurePolicy, w.SideEffects, w.MatchPolicy, w.TimeoutSeconds, w.ObjectSelector, w.Rules})
		}
	}
	if len(hooks) != 7 {
		t.Fatalf("got %d webhooks, want 7", len(hooks))
	}
	for _, h := range hooks {
		t.Run(h.name, func(t *testing.T) {
			wantPolicy := admissionregistrationv1.Fail
			if h.name == "vazurepodidentityexception.aadpodidentity.k8s.io" {
				wantPolicy = admissionregistrationv1.Ignore // it only warns
			}
			if h.failure == nil || *h.failure != wantPolicy {
				t.Errorf("failurePolicy is not %s", wantPolicy)
			}
			if h.sideEffects == nil || *h.sideEffects != admissionregistrationv1.SideEffectClassNone {
				t.Error("sideEffects is not None")
			}
			if h.match == nil || *h.match != admissionregistrationv1.Equivalent {
				t.Error("matchPolicy is not Equivalent")
			}
			if h.timeout == nil || *h.timeout != 10 {
				t.Error("timeoutSeconds is not 10")
			}
			if h.rules[0].Resources[0] != "pods" {
				return
			}
			want := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: aadv1.BindingLabel, Operator: metav1.LabelSelectorOpExists}}}
			if h.objectSelector == nil || h.objectSelector.String() != want.String() {
				t.Errorf("objectSelector = %v, want %v", h.objectSelector, want)
			}
		})
	}
}
