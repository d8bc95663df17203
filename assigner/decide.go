package assigner

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// poolPolicy is what the options say about changing a pool.
type poolPolicy struct {
	grace     time.Duration // how long an unneeded owned identity stays
	drift     time.Duration // the longest a pool goes unchecked
	immutable map[string]bool
}

// isImmutable reports whether the identity must never be removed; keys are
// lower-cased client and resource IDs.
func (p poolPolicy) isImmutable(clientID, resourceID string) bool {
	return p.immutable[aadv1.IDKey(clientID)] || p.immutable[aadv1.IDKey(resourceID)]
}

// plan is one round's changes to a pool and its entries.
type plan struct {
	add    []*aadv1.IdentityAssignment // to put on the pool
	remove []*aadv1.IdentityAssignment // owned, past their grace period
	// markUnneeded start their grace period at unneededSince; clearUnneeded
	// are wanted again.
	markUnneeded, clearUnneeded []*aadv1.IdentityAssignment
	unneededSince               time.Time
	// drop are entries past their grace period whose identity we leave on
	// the pool, or that is gone from it already.
	drop []*aadv1.IdentityAssignment
	// repair are entries of edited AzureIdentities that still name the
	// same resource: they take the new client ID in place, which ARM's
	// answer then confirms or refuses.
	repair       []*aadv1.IdentityAssignment
	requeueAfter time.Duration
}

// decide plans a round for a pool read from ARM, every wanted identity
// recorded. Wanted identities missing from the pool are added, except
// Failed ones between retries; entries no pod wants start their grace
// period, and once it is over their identity is removed if it is ours to
// remove (not external, immutable or preexisting on the pool) and no other
// entry still needs it.
//
// An entry whose AzureIdentity was edited (stale) is re-paired: in place
// when the resource is the same, otherwise its old resource is released at
// once, as if past its grace period (NMI serves the old pairing to no
// one), and the entry dropped; the next round records and assigns the new
// resource.
func decide(s *poolState, pol poolPolicy, now time.Time, retryFailed bool) plan {
	p := plan{unneededSince: now, requeueAfter: pol.drift}
	stillWanted := map[string]bool{}
	for _, w := range s.wanted {
		stillWanted[aadv1.IDKey(w.identity.Spec.ResourceID)] = true
	}
	for key, rec := range s.entries {
		switch w := s.wanted[key]; {
		case s.stale(key) && aadv1.SameID(rec.ResourceID, w.identity.Spec.ResourceID):
			p.repair = append(p.repair, rec)
			if !s.actual.Has(rec.ResourceID) {
				p.add = append(p.add, rec)
			}
			continue
		case s.stale(key):
			// Its entry goes this round; the next records the new resource.
			p.requeueAfter = min(p.requeueAfter, time.Millisecond)
		case w != nil:
			if rec.UnneededSince != nil {
				p.clearUnneeded = append(p.clearUnneeded, rec)
			}
			if !s.actual.Has(rec.ResourceID) && (rec.State != aadv1.StateFailed || retryFailed) {
				p.add = append(p.add, rec)
			}
			continue
		default:
			since := now
			if rec.UnneededSince != nil {
				since = rec.UnneededSince.Time
			} else {
				p.markUnneeded = append(p.markUnneeded, rec)
			}
			if left := since.Add(pol.grace).Sub(now); left > 0 {
				p.requeueAfter = min(p.requeueAfter, left)
				continue
			}
		}
		if !rec.External && !pol.isImmutable(rec.ClientID, rec.ResourceID) && !s.preexisting(rec.ResourceID) &&
			s.actual.Has(rec.ResourceID) && !stillWanted[aadv1.IDKey(rec.ResourceID)] {
			p.remove = append(p.remove, rec)
			continue
		}
		p.drop = append(p.drop, rec)
	}
	oldestFirst(p.add, s.wanted)
	return p
}

// oldestFirst orders additions by the oldest pod that wants each (then by
// name, for a stable order): a pool takes one request per round, so the
// pods waiting longest get their identities first on every pool.
func oldestFirst(add []*aadv1.IdentityAssignment, wanted map[types.NamespacedName]*wantedIdentity) {
	oldest := func(e *aadv1.IdentityAssignment) time.Time {
		if w := wanted[entryKey(e)]; w != nil {
			return w.oldest
		}
		return time.Time{}
	}
	slices.SortStableFunc(add, func(a, b *aadv1.IdentityAssignment) int {
		return cmp.Or(oldest(a).Compare(oldest(b)), strings.Compare(entryKey(a).String(), entryKey(b).String()))
	})
}
