package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// TokenPath is IMDS's managed identity token endpoint, the one NMI answers
// for pods.
const TokenPath = "/metadata/identity/oauth2/token"

// imdsCredential asks IMDS for tokens. azidentity's ManagedIdentityCredential
// has the IMDS address built in; the demo must honour --metadata-endpoint so
// that it can be pointed at any NMI or test server.
type imdsCredential struct {
	endpoint string // scheme://host[:port] of IMDS
	clientID string // user-assigned identity; empty asks for the default one
	client   *http.Client
}

var _ azcore.TokenCredential = imdsCredential{}

// tokenResponse is IMDS's answer; expires_on is seconds since the epoch,
// sent as a string.
type tokenResponse struct {
	AccessToken string      `json:"access_token"`
	ExpiresOn   json.Number `json:"expires_on"`
}

// GetToken turns the ARM-style scope ("<resource>/.default") into IMDS's
// resource parameter.
func (c imdsCredential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	if len(opts.Scopes) != 1 {
		return azcore.AccessToken{}, fmt.Errorf("IMDS takes exactly one scope, got %d", len(opts.Scopes))
	}
	return c.token(ctx, strings.TrimSuffix(opts.Scopes[0], ".default"))
}

func (c imdsCredential) tokenURL(resource string) string {
	q := url.Values{"api-version": {"2018-02-01"}, "resource": {resource}}
	if c.clientID != "" {
		q.Set("client_id", c.clientID)
	}
	return c.endpoint + TokenPath + "?" + q.Encode()
}

func (c imdsCredential) token(ctx context.Context, resource string) (azcore.AccessToken, error) {
	body, err := get(ctx, c.client, c.tokenURL(resource))
	if err != nil {
		return azcore.AccessToken{}, err
	}
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		return azcore.AccessToken{}, fmt.Errorf("decoding token response: %w", err)
	}
	if tr.AccessToken == "" {
		return azcore.AccessToken{}, fmt.Errorf("token response has no access_token")
	}
	expires, err := strconv.ParseInt(tr.ExpiresOn.String(), 10, 64)
	if err != nil {
		return azcore.AccessToken{}, fmt.Errorf("token response expires_on %q: %w", tr.ExpiresOn, err)
	}
	return azcore.AccessToken{Token: tr.AccessToken, ExpiresOn: time.Unix(expires, 0)}, nil
}

// get sends an IMDS request (Metadata: true) and returns the body of a 200.
func get(ctx context.Context, client *http.Client, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("building request: %w", err)
	}
	req.Header.Set("Metadata", "true")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}
