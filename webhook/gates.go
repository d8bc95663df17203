package webhook

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
)

// Modes: who puts user-assigned identities on the node pools.
const (
	// ModeStandard: the assigner, which lifts the scheduling gate the
	// webhook sets once a pod's identities are in place.
	ModeStandard = "standard"
	// ModeManaged: the cluster's admins, as with the AKS pod-identity
	// add-on. Nothing would lift a gate, so pods are not gated, and the
	// webhook lifts the gates of pods admitted while the release ran in
	// standard mode.
	ModeManaged = "managed"
)

// gateReleaser lifts our scheduling gate from every pod that has it, every
// period: in managed mode no assigner will.
type gateReleaser struct {
	// reader reads live: only unscheduled pods are listed, on the
	// apiserver, rather than caching every pod of the cluster.
	reader client.Reader
	client client.Client
	period time.Duration
	log    logr.Logger
}

func (g *gateReleaser) Start(ctx context.Context) error {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := g.releaseAll(ctx); err != nil {
			g.log.Error(err, "lifting scheduling gates")
		}
	}, g.period)
	return nil
}

// NeedLeaderElection: every replica may lift gates; the optimistic lock
// makes a second lift of the same pod a conflict, which is skipped.
func (g *gateReleaser) NeedLeaderElection() bool { return false }

func (g *gateReleaser) releaseAll(ctx context.Context) error {
	var pods corev1.PodList
	if err := g.reader.List(ctx, &pods, client.MatchingFields{"spec.nodeName": ""}); err != nil {
		return fmt.Errorf("listing unscheduled pods: %w", err)
	}
	var errs []error
	for i := range pods.Items {
		pod := &pods.Items[i]
		if !identity.HasGate(pod) {
			continue
		}
		orig := pod.DeepCopy()
		identity.RemoveGate(pod)
		err := g.client.Patch(ctx, pod, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
		switch {
		case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
		case err != nil:
			errs = append(errs, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err))
		default:
			gatesLifted.Inc()
			g.log.Info("scheduling gate lifted: managed mode has no assigner", "pod", client.ObjectKeyFromObject(pod))
		}
	}
	return errors.Join(errs...)
}
