package fakeazure

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

// ARM serves the ARM compute REST API for the identities of VMSS and VMs,
// over HTTPS from the test CA.
type ARM struct {
	State *State
	// URL is the endpoint, https://127.0.0.1:<port>/.
	URL string

	server *httptest.Server

	mu           sync.Mutex
	writeLatency time.Duration
	faults       []Fault
	calls        map[string]int
	writes       []Write
	busy         map[string]time.Time // pool key → end of the running write
	ops          map[string]*operation
	// With a signer set, bearer tokens must be ones the fake AAD issued
	// for audience; callers lists the app IDs they were issued to.
	signer   *Signer
	audience string
	callers  []string
}

type operation struct {
	start time.Time
	done  bool
}

// StartARM serves state on a loopback port until Close.
func StartARM(state *State, ca *testca.CA) (*ARM, error) {
	tlsCfg, err := ca.ServerTLSConfig("127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	return ServeARM(state, ln, tlsCfg), nil
}

// ServeARM serves state over TLS on ln until Close: for a listener opened
// elsewhere than on the loopback, such as inside a network namespace.
func ServeARM(state *State, ln net.Listener, tlsCfg *tls.Config) *ARM {
	a := &ARM{State: state, calls: map[string]int{}, busy: map[string]time.Time{}, ops: map[string]*operation{}}
	r := mux.NewRouter()
	pool := "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/{kind:virtualMachineScaleSets|virtualMachines}/{name}"
	r.HandleFunc("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/{kind:virtualMachineScaleSets|virtualMachines}", a.listPools).Methods(http.MethodGet)
	r.HandleFunc(pool, a.getPool).Methods(http.MethodGet)
	r.HandleFunc(pool, a.patchPool).Methods(http.MethodPatch)
	r.HandleFunc("/subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/operations/{op}", a.getOperation).Methods(http.MethodGet)
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		a.count("unknown")
		armError(w, http.StatusNotFound, "InvalidResourceType", fmt.Sprintf("The resource type could not be found for path %s.", req.URL.Path))
	})
	a.server = &httptest.Server{Listener: ln, Config: &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}, TLS: tlsCfg}
	a.server.StartTLS()
	a.URL = a.server.URL + "/"
	return a
}

// Close stops the server.
func (a *ARM) Close() { a.server.Close() }

// preamble checks what every pool request needs and applies faults; it
// reports whether the request may go on.
func (a *ARM) preamble(w http.ResponseWriter, r *http.Request) (string, bool) {
	v := mux.Vars(r)
	a.count(r.Method + " " + v["kind"])
	poolID := fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/%s/%s", v["sub"], v["rg"], v["kind"], v["name"])
	if !a.wellFormed(w, r) {
		return "", false
	}
	if f, ok := a.takeFault(r.Method, poolID); ok {
		if f.RetryAfter != "" {
			w.Header().Set("Retry-After", f.RetryAfter)
		}
		code := map[int]string{http.StatusTooManyRequests: "TooManyRequests", http.StatusConflict: "Conflict"}[f.Status]
		if code == "" {
			code = "InternalServerError"
		}
		a.recordWrite(r.Method, Write{Pool: poolID, Status: f.Status})
		armError(w, f.Status, code, "Injected fault.")
		return "", false
	}
	if _, ok := a.State.Pool(poolID); !ok {
		armError(w, http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("The Resource 'Microsoft.Compute/%s/%s' under resource group '%s' was not found.", v["kind"], v["name"], v["rg"]))
		return "", false
	}
	return poolID, true
}

func (a *ARM) getPool(w http.ResponseWriter, r *http.Request) {
	poolID, ok := a.preamble(w, r)
	if !ok {
		return
	}
	p, _ := a.State.Pool(poolID)
	writeJSON(w, http.StatusOK, a.resource(p, "Succeeded"))
}

// listPools lists a resource group's scale sets or VMs (one page), as the
// walkthrough's demo pod does with its token.
func (a *ARM) listPools(w http.ResponseWriter, r *http.Request) {
	v := mux.Vars(r)
	a.count("LIST " + v["kind"])
	if !a.wellFormed(w, r) {
		return
	}
	value := []map[string]any{}
	for _, p := range a.State.Pools(fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/%s/", v["sub"], v["rg"], v["kind"])) {
		value = append(value, a.resource(p, "Succeeded"))
	}
	writeJSON(w, http.StatusOK, map[string]any{"value": value})
}

func (a *ARM) getOperation(w http.ResponseWriter, r *http.Request) {
	a.count("GET operation")
	if code, msg := a.authenticate(r); code != "" {
		armError(w, http.StatusUnauthorized, code, msg)
		return
	}
	a.mu.Lock()
	op, ok := a.ops[mux.Vars(r)["op"]]
	var done bool
	if ok {
		done = op.done
	}
	a.mu.Unlock()
	if !ok {
		armError(w, http.StatusNotFound, "NotFound", "The operation was not found.")
		return
	}
	status := "InProgress"
	if done {
		status = "Succeeded"
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": mux.Vars(r)["op"], "status": status, "startTime": op.start.UTC().Format(time.RFC3339Nano)})
}

// resource renders a pool as ARM returns it.
func (a *ARM) resource(p Pool, provisioning string) map[string]any {
	res := map[string]any{
		"id":         p.ID,
		"name":       p.Name,
		"type":       "Microsoft.Compute/" + string(p.Kind),
		"location":   p.Location,
		"properties": map[string]any{"provisioningState": provisioning},
	}
	var types []string
	ident := map[string]any{}
	if p.SystemAssigned != "" {
		types = append(types, TypeSystemAssigned)
		ident["principalId"] = p.SystemAssigned
		ident["tenantId"] = a.State.TenantID
	}
	if len(p.UserAssigned) > 0 {
		types = append(types, TypeUserAssigned)
		ua := map[string]any{}
		for _, id := range p.UserAssigned {
			ua[id.ResourceID] = map[string]string{"principalId": id.PrincipalID, "clientId": id.ClientID}
		}
		ident["userAssignedIdentities"] = ua
	}
	if len(types) > 0 {
		ident["type"] = strings.Join(types, ", ")
		res["identity"] = ident
	}
	return res
}
