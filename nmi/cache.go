package nmi

import (
	"context"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
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

func (t Token) expiry() time.Time {
	s, err := strconv.ParseInt(t.ExpiresOn, 10, 64)
	if err != nil {
		return time.Time{} // unparseable: never cached
	}
	return time.Unix(s, 0)
}

// tokenCache keeps tokens per (identity, resource) until refreshMargin before
// they expire, and collapses concurrent misses into one fetch.
type tokenCache struct {
	mu            sync.Mutex
	tokens        map[string]Token
	group         singleflight.Group
	refreshMargin time.Duration
	now           func() time.Time
}

func newTokenCache(refreshMargin time.Duration) *tokenCache {
	return &tokenCache{tokens: map[string]Token{}, refreshMargin: refreshMargin, now: time.Now}
}

// get returns the cached token for key or fetches one; hit tells which.
// The fetch runs detached from the caller's cancellation because other
// callers may be waiting on it.
func (c *tokenCache) get(ctx context.Context, key string, fetch func(context.Context) (Token, error)) (tok Token, hit bool, err error) {
	if tok, ok := c.lookup(key); ok {
		return tok, true, nil
	}
	ch := c.group.DoChan(key, func() (any, error) {
		if tok, ok := c.lookup(key); ok {
			return tok, nil
		}
		tok, err := fetch(context.WithoutCancel(ctx))
		if err != nil {
			return Token{}, err
		}
		c.mu.Lock()
		c.tokens[key] = tok
		c.mu.Unlock()
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

func (c *tokenCache) lookup(key string) (Token, bool) {
	c.mu.Lock()
	tok, ok := c.tokens[key]
	c.mu.Unlock()
	if !ok || !c.now().Add(c.refreshMargin).Before(tok.expiry()) {
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
