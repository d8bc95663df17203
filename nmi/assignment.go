package nmi

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/identity"
	"github.com/aad-pod-identity/aad-pod-identity/internal/nodepool"
)

// assignments vouches for user-assigned identities: NMI serves one only if
// the assigner recorded it on this node's pool, Assigned, with the client
// ID ARM reports for its resource. Otherwise an AzureIdentity could pair
// any client ID on the pool (the kubelet's, another team's) with a
// resource ID of its own.
type assignments struct {
	// records reads the AzureAssignedIdentities of namespace (cached: only
	// this node's pool's record when the pool was known at startup, see
	// recordCacheConfig).
	records   client.Reader
	namespace string
	// nodes reads this node live; its provider ID names the pool.
	nodes         client.Reader
	nodeName      string
	allowExternal bool
	// wait is how long a record the assigner is still writing is waited
	// for: the gate is lifted once it is Assigned, but NMI's cache may see
	// that a moment later than the pod starts.
	wait time.Duration
	// waits caps the requests waiting at once (nil: no cap).
	waits *waitLimit

	mu   sync.Mutex
	pool *nodepool.Pool // once read: a provider ID does not change
}

// check returns nil if the assigner vouches for id on this node's pool:
// only an entry of the pool's record does (identity.RecordName); the
// fields of an earlier single-identity record vouch for nothing.
func (a *assignments) check(ctx context.Context, id *aadv1.AzureIdentity) error {
	pool, err := a.nodePool(ctx)
	if err != nil {
		return err
	}
	key := client.ObjectKey{Namespace: a.namespace, Name: identity.RecordName(pool)}
	deadline := time.Now().Add(a.wait)
	turn := a.waits.turn()
	defer turn.done()
	for {
		var rec aadv1.AzureAssignedIdentity
		var entry *aadv1.IdentityAssignment // nil: not recorded yet
		// Read in place: a pool's record is about 300 KB for 1,000
		// identities, and a copy per request halved NMI's throughput.
		// Nothing here writes to it.
		if err := a.records.Get(ctx, key, &rec, noCopy); err == nil {
			entry = rec.Status.Find(id.Namespace, id.Name)
		} else if !apierrors.IsNotFound(err) {
			return fmt.Errorf("reading AzureAssignedIdentity %s: %w", key, err)
		}
		err := identity.CheckAssignment(entry, id, a.allowExternal)
		var ae *identity.AssignmentError
		if !errors.As(err, &ae) {
			return err
		}
		refused := forbidden(ae.Reason, "%s", ae.Message)
		if !ae.Pending || !time.Now().Before(deadline) {
			return refused
		}
		if err := turn.pause(ctx, refused); err != nil {
			return err
		}
	}
}

// noCopy reads a cached object without its deep copy; the result shares
// the cache's memory and must not be modified.
var noCopy = &client.GetOptions{UnsafeDisableDeepCopy: ptr.To(true)}

// nodePool reads this node's pool from its provider ID, once it has one (a
// cloud node manager may set it after the node registers).
func (a *assignments) nodePool(ctx context.Context) (nodepool.Pool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pool != nil {
		return *a.pool, nil
	}
	var node corev1.Node
	if err := a.nodes.Get(ctx, client.ObjectKey{Name: a.nodeName}, &node); err != nil {
		return nodepool.Pool{}, fmt.Errorf("reading node %s: %w", a.nodeName, err)
	}
	pool, err := nodepool.FromProviderID(node.Spec.ProviderID)
	if err != nil {
		return nodepool.Pool{}, forbidden("node_pool_unknown", "This node's pool is not known (node %s: %v), so no user-assigned identity is served on it", a.nodeName, err)
	}
	a.pool = &pool
	return pool, nil
}

// recordCacheConfig says how NMI caches the assigner's records in
// namespace. A record holds all of a pool's identities (about 300 KB for
// 1,000) and there is one per pool, so when node, read once before the
// cache starts, already names its pool (spec.providerID), only that pool's
// record is cached and the pool is returned, to be the one assignments
// reads (a provider ID does not change). Otherwise (the node could not be
// read: nodeErr; or has no provider ID yet) every record of the namespace
// is cached, and whole says why.
func recordCacheConfig(namespace string, node *corev1.Node, nodeErr error) (cfg cache.ByObject, pool *nodepool.Pool, whole error) {
	cfg = cache.ByObject{Namespaces: map[string]cache.Config{namespace: {}}}
	if nodeErr != nil {
		return cfg, nil, nodeErr
	}
	p, err := nodepool.FromProviderID(node.Spec.ProviderID)
	if err != nil {
		return cfg, nil, fmt.Errorf("node %s: %w", node.Name, err)
	}
	cfg.Field = fields.OneTermEqualSelector("metadata.name", identity.RecordName(p))
	return cfg, &p, nil
}
