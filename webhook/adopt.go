package webhook

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// Event reasons of the adoption, on pods.
const (
	EventAdopted     = "IdentityAdopted"
	EventNotAdmitted = "IdentityNotAdmitted"
)

// adopter gives the labelled pods that were running before this release's
// webhook existed (aad-pod-identity 1.x's workloads, or pods created while
// the chart was uninstalled) the admission they could not have had, once:
// at start, every live labelled pod without our annotations created before
// the MutatingWebhookConfiguration is resolved and annotated as the webhook
// would have done, with an event. The set is bounded: every later labelled
// pod went through the webhook (failurePolicy Fail), so a younger pod
// without annotations was let through by a failurePolicy of Ignore and is
// left unadmitted, with a warning event; NMI never serves it.
type adopter struct {
	// reader reads live: labelled pods are listed once per start, rather
	// than cached for the life of the process.
	reader   client.Reader
	client   client.Client
	resolver *identity.Resolver
	recorder events.EventRecorder
	// configuration names the MutatingWebhookConfiguration whose creation
	// bounds the adoption.
	configuration string
	// period is the first retry's delay.
	period time.Duration
	log    logr.Logger
}

// Start retries a pass until one completes, backing off from period to
// 30 s: the webhook must be serving for the pod updates, which it
// validates, to go through, and it starts serving about when this starts.
func (a *adopter) Start(ctx context.Context) error {
	backoff := wait.Backoff{Duration: a.period, Factor: 2, Steps: math.MaxInt32, Cap: 30 * time.Second}
	_ = wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		if err := a.adoptAll(ctx); err != nil {
			a.log.Error(err, "adopting pods created before the webhook; retrying")
			return false, nil
		}
		return true, nil
	})
	return nil
}

// NeedLeaderElection: every replica runs one pass; the optimistic lock
// makes a second adoption of the same pod a conflict, and the retry then
// finds it annotated.
func (a *adopter) NeedLeaderElection() bool { return false }

func (a *adopter) adoptAll(ctx context.Context) error {
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := a.reader.Get(ctx, client.ObjectKey{Name: a.configuration}, &mwc); err != nil {
		return fmt.Errorf("reading MutatingWebhookConfiguration %s, which dates the webhook: %w", a.configuration, err)
	}
	labelled, err := labels.NewRequirement(aadv1.BindingLabel, selection.Exists, nil)
	if err != nil {
		return err
	}
	var pods corev1.PodList
	if err := a.reader.List(ctx, &pods, client.MatchingLabelsSelector{Selector: labels.NewSelector().Add(*labelled)}); err != nil {
		return fmt.Errorf("listing labelled pods: %w", err)
	}
	var errs []error
	adopted := 0
	for i := range pods.Items {
		pod := &pods.Items[i]
		if _, admitted := pod.Annotations[aadv1.AnnotationIdentities]; admitted || !identity.Live(pod) {
			continue
		}
		if !pod.CreationTimestamp.Before(&mwc.CreationTimestamp) {
			a.recorder.Eventf(pod, nil, corev1.EventTypeWarning, EventNotAdmitted, "Admit",
				"created after the webhook was installed (%s) without passing through it (webhook failurePolicy Ignore?): it gets no identity; delete and recreate it",
				mwc.CreationTimestamp.UTC().Format(time.RFC3339))
			continue
		}
		if err := a.adopt(ctx, pod); err != nil {
			errs = append(errs, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err))
			continue
		}
		adopted++
	}
	a.log.Info("adoption pass done", "adopted", adopted, "labelledPods", len(pods.Items), "webhookSince", mwc.CreationTimestamp.UTC())
	return errors.Join(errs...)
}

// adopt records the label's resolution on a pod created before the
// webhook. It gets no gate: it may already run, and the assigner treats it
// like any admitted pod from then on.
func (a *adopter) adopt(ctx context.Context, pod *corev1.Pod) error {
	res, err := resolve(ctx, a.resolver, pod)
	if err != nil {
		return err
	}
	orig := pod.DeepCopy()
	for k, v := range res.Annotations() {
		metav1.SetMetaDataAnnotation(&pod.ObjectMeta, k, v)
	}
	if err := a.client.Patch(ctx, pod, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("annotating: %w", err)
	}
	podsAdopted.Inc()
	ids := pod.Annotations[aadv1.AnnotationIdentities]
	a.recorder.Eventf(pod, nil, corev1.EventTypeNormal, EventAdopted, "Admit",
		"created before aad-pod-identity's webhook: admitted now for identities %q (label %s=%q)", ids, aadv1.BindingLabel, pod.Labels[aadv1.BindingLabel])
	a.log.Info("pod created before the webhook adopted", "pod", client.ObjectKeyFromObject(pod), "identities", ids)
	return nil
}
