package fakeazure

import (
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Claims are what a fake token says about who got it. XMSMirID is set for
// managed identities only (the ARM ID of the identity or the VM).
type Claims struct {
	AppID    string `json:"appid"`
	OID      string `json:"oid"`
	TID      string `json:"tid"`
	XMSMirID string `json:"xms_mirid,omitempty"`
	jwt.RegisteredClaims
}

// Signer signs the fake's access tokens with one RSA key.
type Signer struct {
	key *rsa.PrivateKey
}

// NewSigner makes a signer with a fresh key.
func NewSigner() (*Signer, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("generating token key: %w", err)
	}
	return &Signer{key: key}, nil
}

// TokenLifetime is how long issued tokens are valid.
const TokenLifetime = time.Hour

// Sign issues a token for audience (a resource) with the given claims.
func (s *Signer) Sign(c Claims, audience string) (token string, expires time.Time, err error) {
	now := time.Now()
	expires = now.Add(TokenLifetime).Truncate(time.Second)
	c.RegisteredClaims = jwt.RegisteredClaims{
		Issuer:    "https://sts.windows.net/" + c.TID + "/",
		Subject:   c.OID,
		Audience:  jwt.ClaimStrings{audience},
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(expires),
	}
	token, err = jwt.NewWithClaims(jwt.SigningMethodRS256, c).SignedString(s.key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("signing token: %w", err)
	}
	return token, expires, nil
}

// Parse verifies a token this signer issued and returns its claims, so that
// tests can assert who got what.
func (s *Signer) Parse(token string) (*Claims, error) {
	var c Claims
	_, err := jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return &s.key.PublicKey, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodRS256.Alg()}))
	if err != nil {
		return nil, fmt.Errorf("parsing token: %w", err)
	}
	return &c, nil
}
