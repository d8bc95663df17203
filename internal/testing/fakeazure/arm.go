package fakeazure

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/google/uuid"
	"github.com/gorilla/mux"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/testca"
)

// Identity type strings, as ARM spells them.
const (
	TypeNone                       = "None"
	TypeSystemAssigned             = "SystemAssigned"
	TypeUserAssigned               = "UserAssigned"
	TypeSystemAssignedUserAssigned = "SystemAssigned, UserAssigned"
)

// Fault is an error response the fake returns instead of serving a request.
type Fault struct {
	// Method is the HTTP method it applies to (GET or PATCH).
	Method string
	// Pool limits the fault to one pool's ARM ID; "" matches every pool.
	Pool string
	// Status is the HTTP status (429, 500, ...).
	Status int
	// RetryAfter is sent as the Retry-After header when set (seconds or an
	// HTTP date).
	RetryAfter string
}

// Write is one PATCH the fake received, for assertions.
type Write struct {
	Pool   string
	At     time.Time
	Status int
	// Body is the request's identity.userAssignedIdentities: resource ID to
	// true (add, `{}`) or false (remove, `null`).
	Body map[string]bool
	Type string
}

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

// SetWriteLatency sets how long each PATCH runs before it takes effect.
func (a *ARM) SetWriteLatency(d time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.writeLatency = d
}

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

// InjectFault makes the next matching request fail once.
func (a *ARM) InjectFault(f Fault) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.faults = append(a.faults, f)
}

// Busy simulates another client's write on the pool for d: writes meanwhile
// get 409, as ARM answers while an operation is in progress.
func (a *ARM) Busy(poolID string, d time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.busy[key(poolID)] = time.Now().Add(d)
}

// Calls returns the number of requests by kind: "GET <kind>", "PATCH <kind>",
// "GET operation".
func (a *ARM) Calls() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]int, len(a.calls))
	for k, v := range a.calls {
		out[k] = v
	}
	return out
}

// Writes returns the PATCH requests received, in order.
func (a *ARM) Writes() []Write {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.writes)
}

func (a *ARM) count(kind string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls[kind]++
}

// takeFault removes and returns the first fault matching the request.
func (a *ARM) takeFault(method, poolID string) (Fault, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, f := range a.faults {
		if f.Method == method && (f.Pool == "" || strings.EqualFold(f.Pool, poolID)) {
			a.faults = slices.Delete(a.faults, i, i+1)
			return f, true
		}
	}
	return Fault{}, false
}

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

func (a *ARM) recordWrite(method string, wr Write) {
	if method != http.MethodPatch {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	wr.At = time.Now()
	a.writes = append(a.writes, wr)
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

type patchBody struct {
	Identity *struct {
		Type                   *string                    `json:"type"`
		UserAssignedIdentities map[string]json.RawMessage `json:"userAssignedIdentities"`
	} `json:"identity"`
}

func (a *ARM) patchPool(w http.ResponseWriter, r *http.Request) {
	poolID, ok := a.preamble(w, r)
	if !ok {
		return
	}
	var body patchBody
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		a.recordWrite(r.Method, Write{Pool: poolID, Status: http.StatusBadRequest})
		armError(w, http.StatusBadRequest, "InvalidRequestContent", fmt.Sprintf("The request content was invalid and could not be deserialized: %v", err))
		return
	}
	wr := Write{Pool: poolID, Body: map[string]bool{}}
	if body.Identity != nil {
		for id, v := range body.Identity.UserAssignedIdentities {
			wr.Body[id] = string(v) != "null"
		}
		if body.Identity.Type != nil {
			wr.Type = *body.Identity.Type
		}
	}

	a.mu.Lock()
	if until, busy := a.busy[key(poolID)]; busy && time.Now().Before(until) {
		a.mu.Unlock()
		wr.Status = http.StatusConflict
		a.recordWrite(r.Method, wr)
		armError(w, http.StatusConflict, "OperationNotAllowed", fmt.Sprintf("Operation 'PATCH' is not allowed on '%s' since another operation is in progress.", poolID))
		return
	}
	latency := a.writeLatency
	a.mu.Unlock()

	status, code, msg := a.validate(poolID, wr)
	wr.Status = status
	a.recordWrite(r.Method, wr)
	if status != http.StatusOK {
		armError(w, status, code, msg)
		return
	}

	opID := uuid.NewString()
	op := &operation{start: time.Now()}
	a.mu.Lock()
	a.busy[key(poolID)] = time.Now().Add(latency)
	a.ops[opID] = op
	a.mu.Unlock()
	time.AfterFunc(latency, func() {
		// validate ran at request time, as in Azure; apply cannot fail now
		// except if the identity was deleted meanwhile, which ARM ignores too.
		a.apply(poolID, wr)
		a.mu.Lock()
		defer a.mu.Unlock()
		op.done = true
		delete(a.busy, key(poolID))
	})
	p, _ := a.State.Pool(poolID)
	w.Header().Set("Azure-AsyncOperation", fmt.Sprintf("%ssubscriptions/%s/providers/Microsoft.Compute/locations/%s/operations/%s?api-version=%s",
		a.URL, mux.Vars(r)["sub"], p.Location, opID, r.URL.Query().Get("api-version")))
	writeJSON(w, http.StatusOK, a.resource(p, "Updating"))
}

// normalizeType returns ARM's spelling of an identity type, or "".
func normalizeType(t string) string {
	compact := strings.ToLower(strings.ReplaceAll(t, " ", ""))
	for _, s := range []string{TypeNone, TypeSystemAssigned, TypeUserAssigned, TypeSystemAssignedUserAssigned} {
		if compact == strings.ToLower(strings.ReplaceAll(s, " ", "")) {
			return s
		}
	}
	return ""
}

// validate checks a PATCH as ARM does before it accepts the operation.
func (a *ARM) validate(poolID string, wr Write) (int, string, string) {
	if wr.Type == "" && len(wr.Body) == 0 {
		return http.StatusOK, "", ""
	}
	typ := normalizeType(wr.Type)
	if typ == "" {
		return http.StatusBadRequest, "InvalidParameter", fmt.Sprintf("The value '%s' of parameter 'identity.type' is invalid. Allowed values: None, SystemAssigned, UserAssigned, 'SystemAssigned, UserAssigned'.", wr.Type)
	}
	for id, add := range wr.Body {
		if !add {
			continue
		}
		if _, ok := a.State.LookupIdentity(id); !ok {
			return http.StatusBadRequest, "FailedIdentityOperation", fmt.Sprintf("Identity operation for resource '%s' failed with error 'Failed to perform resource identity operation. Status: 'BadRequest'. Response: '{\"error\":{\"code\":\"BadRequest\",\"message\":\"Resource '%s' was not found.\"}}'.'.", poolID, id)
		}
	}
	p, _ := a.State.Pool(poolID)
	after := mergeUserAssigned(p, wr)
	hasUser := strings.Contains(typ, TypeUserAssigned)
	if hasUser && len(after) == 0 {
		return http.StatusBadRequest, "InvalidParameter", "The identity type 'UserAssigned' requires at least one user-assigned identity in 'identity.userAssignedIdentities'."
	}
	if !hasUser && slices.Contains(mapsValues(wr.Body), true) {
		return http.StatusBadRequest, "InvalidParameter", fmt.Sprintf("'identity.userAssignedIdentities' cannot be set when the identity type is '%s'.", typ)
	}
	return http.StatusOK, "", ""
}

func mapsValues(m map[string]bool) []bool {
	out := make([]bool, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// mergeUserAssigned applies a PATCH's identity map to the pool's current
// user-assigned set (lower-cased IDs): {} adds, null removes.
func mergeUserAssigned(p Pool, wr Write) map[string]bool {
	out := map[string]bool{}
	for id := range p.UserAssigned {
		out[id] = true
	}
	for id, add := range wr.Body {
		if add {
			out[key(id)] = true
		} else {
			delete(out, key(id))
		}
	}
	return out
}

// apply makes the accepted PATCH take effect, with ARM's type semantics:
// a type without UserAssigned drops every user-assigned identity, a type
// without SystemAssigned drops the system-assigned one.
func (a *ARM) apply(poolID string, wr Write) {
	typ := normalizeType(wr.Type)
	if typ == "" {
		return
	}
	s := a.State
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[key(poolID)]
	if !ok {
		return
	}
	merged := mergeUserAssigned(p.copy(), wr)
	p.UserAssigned = map[string]Identity{}
	if strings.Contains(typ, TypeUserAssigned) {
		for id := range merged {
			if ident, ok := s.identities[id]; ok {
				p.UserAssigned[id] = ident
			}
		}
	}
	switch {
	case !strings.Contains(typ, TypeSystemAssigned):
		p.SystemAssigned = ""
	case p.SystemAssigned == "":
		p.SystemAssigned = uuid.NewString()
	}
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

func armError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": message}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// SetUserAssigned adds or removes a user-assigned identity on a pool out of
// band, as another tool or a person in the portal would.
func (s *State) SetUserAssigned(poolID, resourceID string, present bool) error {
	ident, ok := s.LookupIdentity(resourceID)
	if !ok && present {
		return fmt.Errorf("identity %s not found", resourceID)
	}
	return s.update(poolID, func(p *Pool) error {
		if present {
			p.UserAssigned[key(resourceID)] = ident
		} else {
			delete(p.UserAssigned, key(resourceID))
		}
		return nil
	})
}

// StaticCredential is an azcore.TokenCredential for in-process clients of
// the fake ARM, which only checks that a bearer token is present.
type StaticCredential struct{}

// GetToken returns a fixed token valid for an hour.
func (StaticCredential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: "fake-arm-token", ExpiresOn: time.Now().Add(time.Hour)}, nil
}
