package nmi

import (
	"net/http"
	"net/url"
	"strings"
)

// tokenRequest is a parsed IMDS token request.
type tokenRequest struct {
	APIVersion string
	Resource   string
	// At most one of ClientID and ResourceID is set.
	ClientID   string
	ResourceID string // msi_res_id or mi_res_id
}

// parseTokenRequest validates a token request the way IMDS does: the
// Metadata header, api-version and resource are required, and at most one
// identity selector may be given. Variable names count in any case, as
// IMDS reads them: Client_Id names an identity to IMDS, so it does to NMI.
func parseTokenRequest(h http.Header, q url.Values) (tokenRequest, error) {
	if !strings.EqualFold(h.Get("Metadata"), "true") {
		return tokenRequest{}, badRequest("missing_metadata_header", "Required metadata header not specified: send the header 'Metadata: true'")
	}
	q = foldNames(q)
	var req tokenRequest
	var err error
	if req.APIVersion, err = single(q, "api-version", true); err != nil {
		return tokenRequest{}, err
	}
	if req.Resource, err = single(q, "resource", true); err != nil {
		return tokenRequest{}, err
	}
	// IMDS also selects by object ID; an AzureIdentity does not record one,
	// so NMI refuses the selector rather than ignore it and serve another
	// identity than the one asked for.
	for _, unsupported := range []string{"object_id", "principal_id"} {
		if _, ok := q[unsupported]; ok {
			return tokenRequest{}, badRequest("unsupported_selector", "NMI cannot select an identity by %s; name it by client_id or mi_res_id", unsupported)
		}
	}
	if req.ClientID, err = single(q, "client_id", false); err != nil {
		return tokenRequest{}, err
	}
	msi, err := single(q, "msi_res_id", false)
	if err != nil {
		return tokenRequest{}, err
	}
	mi, err := single(q, "mi_res_id", false)
	if err != nil {
		return tokenRequest{}, err
	}
	named := 0
	for _, v := range []string{req.ClientID, msi, mi} {
		if v != "" {
			named++
			req.ResourceID = v
		}
	}
	if named > 1 {
		return tokenRequest{}, badRequest("several_selectors", "Only one of client_id, msi_res_id and mi_res_id may be given")
	}
	if req.ClientID != "" {
		req.ResourceID = ""
	}
	return req, nil
}

// foldNames merges the variables whose names differ only in case, under
// the lower-case name: two spellings of one name are a repeated variable.
func foldNames(q url.Values) url.Values {
	out := make(url.Values, len(q))
	for k, vs := range q {
		k = strings.ToLower(k)
		out[k] = append(out[k], vs...)
	}
	return out
}

// single returns the one value of a query variable; repeated or (when
// required) missing variables are errors.
func single(q url.Values, name string, required bool) (string, error) {
	vs := q[name]
	switch {
	case len(vs) > 1:
		return "", badRequest("repeated_query_variable", "Query variable '%s' is given %d times; give it once", name, len(vs))
	case len(vs) == 1 && strings.TrimSpace(vs[0]) != "":
		return strings.TrimSpace(vs[0]), nil
	case required:
		return "", badRequest("missing_query_variable", "Required query variable '%s' is missing", name)
	}
	return "", nil
}
