package fakeazure

import (
	"net/http"
	"strconv"
	"strings"
)

// IMDS is the instance metadata service of one VM: it issues tokens only for
// identities assigned in State to the VM's pool, as Azure does.
type IMDS struct {
	State  *State
	Signer *Signer
	PoolID string
	VMName string
}

// ServeHTTP serves the token endpoint, /metadata/instance and
// /metadata/versions.
func (m *IMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Metadata"), "true") || r.Header.Get("X-Forwarded-For") != "" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "Required metadata header not specified")
		return
	}
	pool, ok := m.State.Pool(m.PoolID)
	if !ok {
		oauthError(w, http.StatusInternalServerError, "invalid_request", "VM pool "+m.PoolID+" does not exist")
		return
	}
	switch strings.ToLower(r.URL.Path) {
	case "/metadata/identity/oauth2/token":
		m.token(w, r, pool)
	case "/metadata/instance":
		writeJSON(w, http.StatusOK, map[string]any{"compute": map[string]string{
			"name": m.VMName, "location": pool.Location, "vmScaleSetName": vmssName(pool), "resourceId": pool.ID + instanceSuffix(pool, m.VMName),
		}})
	case "/metadata/versions":
		writeJSON(w, http.StatusOK, map[string]any{"apiVersions": []string{"2018-02-01", "2019-08-01", "2021-02-01"}})
	default:
		oauthError(w, http.StatusNotFound, "invalid_request", "Resource not found")
	}
}

func (m *IMDS) token(w http.ResponseWriter, r *http.Request, pool Pool) {
	q := r.URL.Query()
	resource := q.Get("resource")
	if resource == "" || q.Get("api-version") == "" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "Required query variable 'resource' or 'api-version' is missing")
		return
	}
	claims, ok := m.identity(pool, q.Get("client_id"), q.Get("msi_res_id")+q.Get("mi_res_id"))
	if !ok {
		oauthError(w, http.StatusBadRequest, "invalid_request", "Identity not found")
		return
	}
	if claims == nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request")
		return
	}
	claims.TID = m.State.TenantID
	tok, exp, err := m.Signer.Sign(*claims, resource)
	if err != nil {
		oauthError(w, http.StatusInternalServerError, "invalid_request", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{
		"access_token": tok, "refresh_token": "", "expires_in": strconv.Itoa(int(TokenLifetime.Seconds())),
		"expires_on": strconv.FormatInt(exp.Unix(), 10), "not_before": strconv.FormatInt(exp.Add(-TokenLifetime).Unix(), 10),
		"resource": resource, "token_type": "Bearer", "client_id": claims.AppID,
	})
}

// identity picks the identity a request names among the pool's; with none
// named, the system-assigned one or else the only user-assigned one. nil with
// ok means several could be meant.
func (m *IMDS) identity(pool Pool, clientID, resourceID string) (claims *Claims, ok bool) {
	for _, id := range pool.UserAssigned {
		if (clientID != "" && strings.EqualFold(clientID, id.ClientID)) || (resourceID != "" && strings.EqualFold(resourceID, id.ResourceID)) {
			return &Claims{AppID: id.ClientID, OID: id.PrincipalID, XMSMirID: id.ResourceID}, true
		}
	}
	switch {
	case clientID != "" || resourceID != "":
		return nil, false
	case pool.SystemAssigned != "":
		return &Claims{AppID: pool.SystemAssigned, OID: pool.SystemAssigned, XMSMirID: pool.ID}, true
	case len(pool.UserAssigned) == 1:
		for _, id := range pool.UserAssigned {
			return m.identity(pool, id.ClientID, "")
		}
	case len(pool.UserAssigned) > 1:
		return nil, true
	}
	return nil, false
}

func vmssName(p Pool) string {
	if p.Kind == KindVMSS {
		return p.Name
	}
	return ""
}

func instanceSuffix(p Pool, vm string) string {
	if p.Kind != KindVMSS {
		return ""
	}
	_, idx, _ := strings.Cut(vm, p.Name+"_")
	return "/virtualMachines/" + idx
}
