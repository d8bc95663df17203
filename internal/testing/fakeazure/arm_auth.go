package fakeazure

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// VerifyTokens makes every request need a valid token from signer (the
// fake AAD's) for the ARM audience, as ARM checks; without it any bearer
// token is accepted (StaticCredential).
func (a *ARM) VerifyTokens(signer *Signer, audience string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.signer, a.audience = signer, audience
}

// Callers returns the app IDs of the verified tokens, one per request.
func (a *ARM) Callers() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.callers)
}

// authenticate checks the Authorization header; it reports an ARM error
// code and message when the request must be refused.
func (a *ARM) authenticate(r *http.Request) (code, msg string) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."
	}
	a.mu.Lock()
	signer, audience := a.signer, a.audience
	a.mu.Unlock()
	if signer == nil {
		return "", ""
	}
	c, err := signer.Parse(token)
	if err != nil {
		return "InvalidAuthenticationToken", "The access token is invalid: " + err.Error()
	}
	// ARM accepts its audience with or without the trailing slash.
	if !slices.ContainsFunc(c.Audience, func(aud string) bool { return strings.TrimSuffix(aud, "/") == strings.TrimSuffix(audience, "/") }) {
		return "InvalidAuthenticationToken", fmt.Sprintf("The access token has an invalid audience %v; want %s.", c.Audience, audience)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.callers = append(a.callers, c.AppID)
	return "", ""
}

// wellFormed checks what ARM checks first on every request: a bearer token
// and an api-version.
func (a *ARM) wellFormed(w http.ResponseWriter, r *http.Request) bool {
	if code, msg := a.authenticate(r); code != "" {
		armError(w, http.StatusUnauthorized, code, msg)
		return false
	}
	if r.URL.Query().Get("api-version") == "" {
		armError(w, http.StatusBadRequest, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
		return false
	}
	return true
}

// StaticCredential is an azcore.TokenCredential for in-process clients of
// the fake ARM, which only checks that a bearer token is present.
type StaticCredential struct{}

// GetToken returns a fixed token valid for an hour.
func (StaticCredential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: "fake-arm-token", ExpiresOn: time.Now().Add(time.Hour)}, nil
}
