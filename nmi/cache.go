package nmi

import (
	"cmp"
	"context"
	"crypto/sha256"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/lru"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/config"
)

// Token is IMDS's token answer; IMDS sends every field as a string.
type Token struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	ExpiresIn    string `json:"expires_in"`
	ExpiresOn    string `json:"expires_on"`
	NotBefore    string `json:"not_before"`
	Resource     string `json:"resource"`
	TokenType    string `json:"token_type"`
	ClientID     string `json:"client_id"`
}

// tokenKey names id's token for resource by everything that decides what
// the upstream issues: the type, client and resource ID, a service
// principal's tenant, authority and auxiliary tenants, and its Secret's name
// and resourceVersion (secret nil: none). An AzureIdentity edited in any of
// them, or whose Secret was rotated, never gets a token cached for its old
// self.
func tokenKey(id *aadv1.AzureIdentity, secret *corev1.Secret, resource string) string {
	var secretVersion string
	if secret != nil {
		secretVersion = secret.Namespace + "/" + secret.Name + "@" + secret.ResourceVersion
	}
	spec := id.Spec
	// Quoted, so that no field's text can pass for a field boundary.
	return fmt.Sprintf("%q", []string{id.Namespace + "/" + id.Name, strconv.Itoa(int(spec.Type)), aadv1.IDKey(spec.ClientID), aadv1.IDKey(spec.ResourceID),
		spec.TenantID, spec.ADEndpoint, fmt.Sprintf("%q", spec.AuxiliaryTenantIDs), secretVersion, resource})
}

// cacheKey is what the cache holds a token under: the SHA-256 of its
// tokenKey, 32 bytes instead of the key's few hundred (identity and
// resource IDs, twice quoted for a federated pod), which would otherwise be
// an eighth of a cached token's heap. Keys stay distinct as long as SHA-256
// is collision-resistant, so no token is served for another key.
type cacheKey [sha256.Size]byte

func hashKey(key string) cacheKey { return sha256.Sum256([]byte(key)) }

func (t Token) expiry() time.Time {
	s, err := strconv.ParseInt(t.ExpiresOn, 10, 64)
	if err != nil {
		return time.Time{} // unparseable: never cached
	}
	return time.Unix(s, 0)
}

// tokenCache keeps tokens per (identity, resource) until refreshMargin before
// they expire, at most size of them (the least recently used go first), and
// collapses concurrent misses into one fetch. Tokens live about a day, so
// without the bound a few pods asking for ever new resources would grow NMI
// without limit; an expired token stays until it is asked for again or
// pushed out, and no sweep holds the lock over the whole cache.
type tokenCache struct {
	tokens        *lru.Cache
	group         singleflight.Group
	refreshMargin time.Duration
	now           func() time.Time
}

// fetchDeadline bounds one fetch: callers wait on it, so a hung upstream
// must hold neither them nor the key's singleflight slot for long.
const fetchDeadline = time.Minute

func newTokenCache(refreshMargin time.Duration, size int) *tokenCache {
	return &tokenCache{
		tokens: lru.NewWithEvictionFunc(cmp.Or(size, config.DefaultTokenCacheSize), func(_ lru.Key, v any) {
			if !v.(*cachedToken).removed.Load() {
				tokenCacheEvictions.Inc()
			}
		}),
		refreshMargin: refreshMargin,
		now:           time.Now,
	}
}

// get returns the cached token for key or, once admit lets the miss
// through, fetches one; hit tells which. The fetch runs detached from the
// caller's cancellation because other callers may be waiting on it, and a
// panic in it is an error, never a crash.
func (c *tokenCache) get(ctx context.Context, key string, admit func() error, fetch func(context.Context) (Token, error)) (tok Token, hit bool, err error) {
	if tok, ok := c.lookup(key); ok {
		return tok, true, nil
	}
	if err := admit(); err != nil {
		return Token{}, false, err
	}
	ch := c.group.DoChan(key, func() (v any, err error) {
		defer func() {
			if p := recover(); p != nil {
				panicsTotal.Inc()
				err = fmt.Errorf("token fetch panicked: %v", p)
			}
		}()
		if tok, ok := c.lookup(key); ok {
			return tok, nil
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchDeadline)
		defer cancel()
		tok, err := fetch(fctx)
		if err != nil {
			return Token{}, err
		}
		c.store(key, tok)
		return tok, nil
	})
	select {
	case <-ctx.Done():
		return Token{}, false, ctx.Err()
	case res := <-ch:
		if res.Err != nil {
			return Token{}, false, res.Err
		}
		return c.fresh(res.Val.(Token)), false, nil
	}
}

// cachedToken is a cache entry; removed tells the eviction count a token
// dropped on purpose (remove) from one pushed out.
type cachedToken struct {
	tok     Token
	removed atomic.Bool
}

func (c *tokenCache) store(key string, tok Token) {
	c.tokens.Add(hashKey(key), &cachedToken{tok: tok})
	tokenCacheEntries.Set(float64(c.tokens.Len()))
}

// remove drops key's token, if cached.
func (c *tokenCache) remove(key cacheKey) {
	if v, ok := c.tokens.Get(key); ok {
		v.(*cachedToken).removed.Store(true)
		c.tokens.Remove(key)
		tokenCacheEntries.Set(float64(c.tokens.Len()))
	}
}

func (c *tokenCache) lookup(key string) (Token, bool) {
	v, ok := c.tokens.Get(hashKey(key))
	if !ok {
		return Token{}, false
	}
	tok := v.(*cachedToken).tok
	if !c.now().Add(c.refreshMargin).Before(tok.expiry()) {
		return Token{}, false
	}
	return c.fresh(tok), true
}

// fresh recomputes expires_in for the moment the token is served.
func (c *tokenCache) fresh(tok Token) Token {
	if exp := tok.expiry(); !exp.IsZero() {
		tok.ExpiresIn = strconv.FormatInt(int64(exp.Sub(c.now()).Seconds()), 10)
	}
	return tok
}
