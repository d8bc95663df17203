package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/google/uuid"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
)

// AdminSocket is the file name, in the sandbox directory, of the unix socket
// the `sandbox az` command talks to: the fake Azure's management plane for
// the user (identities, role assignments), reachable without any network
// configuration.
const AdminSocket = "admin.sock"

// AzIdentity is what `az identity show` prints (the fields the walkthrough
// queries).
type AzIdentity struct {
	ID            string `json:"id"`
	Name          string `json:"name"`
	ResourceGroup string `json:"resourceGroup"`
	ClientID      string `json:"clientId"`
	PrincipalID   string `json:"principalId"`
	TenantID      string `json:"tenantId"`
	Type          string `json:"type"`
}

// AzRoleAssignment is what `az role assignment create` prints.
type AzRoleAssignment struct {
	ID                 string `json:"id"`
	Name               string `json:"name"`
	PrincipalID        string `json:"principalId"`
	RoleDefinitionName string `json:"roleDefinitionName"`
	Scope              string `json:"scope"`
}

type admin struct {
	sb    *Sandbox
	mu    sync.Mutex
	roles map[string]AzRoleAssignment // by lower-cased ID
}

// serveAdmin listens on the admin socket until the sandbox stops.
func (s *Sandbox) serveAdmin() error {
	path := s.path(AdminSocket)
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	a := &admin{sb: s, roles: map[string]AzRoleAssignment{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /identities/{rg}/{name}", a.createIdentity)
	mux.HandleFunc("GET /identities/{rg}/{name}", a.showIdentity)
	mux.HandleFunc("DELETE /identities/{rg}/{name}", a.deleteIdentity)
	mux.HandleFunc("GET /identities/{rg}/{name}/federated-credentials", a.listFederatedCredentials)
	mux.HandleFunc("PUT /identities/{rg}/{name}/federated-credentials/{fic}", a.createFederatedCredential)
	mux.HandleFunc("DELETE /identities/{rg}/{name}/federated-credentials/{fic}", a.deleteFederatedCredential)
	mux.HandleFunc("GET /aks/{rg}/{name}", a.showCluster)
	mux.HandleFunc("GET /vmss/{rg}/{name}/identities", a.showVMSSIdentity)
	mux.HandleFunc("POST /vmss/{rg}/{name}/identities", a.vmssIdentities(true))
	mux.HandleFunc("DELETE /vmss/{rg}/{name}/identities", a.vmssIdentities(false))
	mux.HandleFunc("POST /roleassignments", a.createRole)
	mux.HandleFunc("DELETE /roleassignments", a.deleteRole)
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(l) }()
	s.closers = append(s.closers, func() { _ = srv.Close(); _ = os.Remove(path) })
	return nil
}

func (a *admin) identityID(r *http.Request) string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.ManagedIdentity/userAssignedIdentities/%s",
		SubscriptionID, r.PathValue("rg"), r.PathValue("name"))
}

func azIdentity(rg string, id fakeazure.Identity) AzIdentity {
	return AzIdentity{ID: id.ResourceID, Name: id.Name, ResourceGroup: rg, ClientID: id.ClientID,
		PrincipalID: id.PrincipalID, TenantID: id.TenantID, Type: "Microsoft.ManagedIdentity/userAssignedIdentities"}
}

func (a *admin) createIdentity(w http.ResponseWriter, r *http.Request) {
	id := a.sb.Azure.CreateIdentity(SubscriptionID, r.PathValue("rg"), r.PathValue("name"))
	reply(w, http.StatusOK, azIdentity(r.PathValue("rg"), id))
}

func (a *admin) showIdentity(w http.ResponseWriter, r *http.Request) {
	id, ok := a.sb.Azure.LookupIdentity(a.identityID(r))
	if !ok {
		identityNotFound(w, r)
		return
	}
	reply(w, http.StatusOK, azIdentity(r.PathValue("rg"), id))
}

func identityNotFound(w http.ResponseWriter, r *http.Request) {
	reply(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("(ResourceNotFound) identity %s not found in resource group %s", r.PathValue("name"), r.PathValue("rg"))})
}

func (a *admin) deleteIdentity(w http.ResponseWriter, r *http.Request) {
	a.sb.Azure.DeleteIdentity(a.identityID(r))
	w.WriteHeader(http.StatusNoContent)
}

// AzFederatedCredential is what `az identity federated-credential create`
// prints, and `list` prints a list of.
type AzFederatedCredential struct {
	ID            string   `json:"id"`
	Name          string   `json:"name"`
	ResourceGroup string   `json:"resourceGroup"`
	Issuer        string   `json:"issuer"`
	Subject       string   `json:"subject"`
	Audiences     []string `json:"audiences"`
	Type          string   `json:"type"`
}

func azFederatedCredential(rg string, fc fakeazure.FederatedCredential) AzFederatedCredential {
	return AzFederatedCredential{ID: fc.ID, Name: fc.Name, ResourceGroup: rg, Issuer: fc.Issuer, Subject: fc.Subject,
		Audiences: fc.Audiences, Type: "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials"}
}

func (a *admin) createFederatedCredential(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Issuer, Subject string
		Audiences       []string
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Issuer == "" || req.Subject == "" {
		reply(w, http.StatusBadRequest, map[string]string{"error": "a federated credential needs --issuer and --subject"})
		return
	}
	fc, err := a.sb.Azure.CreateFederatedCredential(a.identityID(r), r.PathValue("fic"), req.Issuer, req.Subject, req.Audiences...)
	switch {
	case errors.Is(err, fakeazure.ErrIdentityNotFound):
		identityNotFound(w, r)
	case errors.Is(err, fakeazure.ErrFederatedCredentialExists):
		reply(w, http.StatusConflict, map[string]string{"error": fmt.Sprintf("(Conflict) federated credential %s already exists on identity %s", r.PathValue("fic"), r.PathValue("name"))})
	case err != nil:
		reply(w, http.StatusBadRequest, map[string]string{"error": "(BadRequest) " + err.Error()})
	default:
		reply(w, http.StatusOK, azFederatedCredential(r.PathValue("rg"), fc))
	}
}

// deleteFederatedCredential succeeds for a credential that does not exist,
// as ARM's DELETE does.
func (a *admin) deleteFederatedCredential(w http.ResponseWriter, r *http.Request) {
	_ = a.sb.Azure.DeleteFederatedCredential(a.identityID(r), r.PathValue("fic"))
	w.WriteHeader(http.StatusNoContent)
}

func (a *admin) listFederatedCredentials(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.sb.Azure.LookupIdentity(a.identityID(r)); !ok {
		identityNotFound(w, r)
		return
	}
	out := []AzFederatedCredential{}
	for _, fc := range a.sb.Azure.FederatedCredentials(a.identityID(r)) {
		out = append(out, azFederatedCredential(r.PathValue("rg"), fc))
	}
	reply(w, http.StatusOK, out)
}

// AzCluster is the part of `az aks show` that federation needs: the
// cluster's OIDC issuer, always enabled in the sandbox.
type AzCluster struct {
	ID                string              `json:"id"`
	Name              string              `json:"name"`
	ResourceGroup     string              `json:"resourceGroup"`
	Location          string              `json:"location"`
	NodeResourceGroup string              `json:"nodeResourceGroup"`
	OIDCIssuerProfile AzOIDCIssuerProfile `json:"oidcIssuerProfile"`
}

// AzOIDCIssuerProfile is a cluster's oidcIssuerProfile.
type AzOIDCIssuerProfile struct {
	Enabled   bool   `json:"enabled"`
	IssuerURL string `json:"issuerUrl"`
}

// showCluster answers for any resource group and name: the sandbox is the
// one cluster.
func (a *admin) showCluster(w http.ResponseWriter, r *http.Request) {
	rg, name := r.PathValue("rg"), r.PathValue("name")
	reply(w, http.StatusOK, AzCluster{
		ID:   fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.ContainerService/managedClusters/%s", SubscriptionID, rg, name),
		Name: name, ResourceGroup: rg, Location: "westus2", NodeResourceGroup: NodeResourceGroup,
		OIDCIssuerProfile: AzOIDCIssuerProfile{Enabled: true, IssuerURL: a.sb.IssuerURL},
	})
}

// AzVMSSIdentity is what `az vmss identity assign` prints.
type AzVMSSIdentity struct {
	SystemAssignedIdentity string                       `json:"systemAssignedIdentity"`
	UserAssignedIdentities map[string]map[string]string `json:"userAssignedIdentities"`
}

// vmssIdentities assigns (or removes) user-assigned identities to a VMSS,
// as an admin does in managed mode with `az vmss identity assign`.
func (a *admin) vmssIdentities(assign bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Identities []string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Identities) == 0 {
			reply(w, http.StatusBadRequest, map[string]string{"error": "--identities needs at least one identity resource ID"})
			return
		}
		poolID := vmssID(r)
		for _, id := range req.Identities {
			if _, ok := a.sb.Azure.LookupIdentity(id); !ok && assign {
				reply(w, http.StatusNotFound, map[string]string{"error": "(FailedIdentityOperation) identity " + id + " not found"})
				return
			}
			if err := a.sb.Azure.SetUserAssigned(poolID, id, assign); err != nil {
				reply(w, http.StatusNotFound, map[string]string{"error": "(ResourceNotFound) " + err.Error()})
				return
			}
		}
		a.showVMSSIdentity(w, r)
	}
}

// showVMSSIdentity answers the VMSS's identities, as `az vmss identity show`.
func (a *admin) showVMSSIdentity(w http.ResponseWriter, r *http.Request) {
	pool, ok := a.sb.Azure.Pool(vmssID(r))
	if !ok {
		reply(w, http.StatusNotFound, map[string]string{"error": "(ResourceNotFound) virtual machine scale set " + r.PathValue("name") + " not found"})
		return
	}
	out := AzVMSSIdentity{SystemAssignedIdentity: pool.SystemAssigned, UserAssignedIdentities: map[string]map[string]string{}}
	for _, id := range pool.UserAssigned {
		out.UserAssignedIdentities[id.ResourceID] = map[string]string{"clientId": id.ClientID, "principalId": id.PrincipalID}
	}
	reply(w, http.StatusOK, out)
}

// vmssID is the ARM ID of the VMSS the request's path names.
func vmssID(r *http.Request) string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/virtualMachineScaleSets/%s", SubscriptionID, r.PathValue("rg"), r.PathValue("name"))
}

func (a *admin) createRole(w http.ResponseWriter, r *http.Request) {
	var req struct{ Role, Assignee, Scope string }
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Role == "" || req.Assignee == "" || !strings.HasPrefix(req.Scope, "/subscriptions/") {
		reply(w, http.StatusBadRequest, map[string]string{"error": "role assignment needs --role, --assignee and a /subscriptions/... --scope"})
		return
	}
	name := uuid.NewString()
	ra := AzRoleAssignment{ID: req.Scope + "/providers/Microsoft.Authorization/roleAssignments/" + name, Name: name,
		PrincipalID: req.Assignee, RoleDefinitionName: req.Role, Scope: req.Scope}
	a.mu.Lock()
	a.roles[strings.ToLower(ra.ID)] = ra
	a.mu.Unlock()
	reply(w, http.StatusOK, ra)
}

func (a *admin) deleteRole(w http.ResponseWriter, r *http.Request) {
	id := strings.ToLower(r.URL.Query().Get("id"))
	a.mu.Lock()
	_, ok := a.roles[id]
	delete(a.roles, id)
	a.mu.Unlock()
	if !ok {
		reply(w, http.StatusNotFound, map[string]string{"error": "(RoleAssignmentNotFound) no role assignment with id " + r.URL.Query().Get("id")})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
