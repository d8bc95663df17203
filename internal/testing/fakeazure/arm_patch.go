package fakeazure

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/mux"
)

// Identity type strings, as ARM spells them.
const (
	TypeNone                       = "None"
	TypeSystemAssigned             = "SystemAssigned"
	TypeUserAssigned               = "UserAssigned"
	TypeSystemAssignedUserAssigned = "SystemAssigned, UserAssigned"
)

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
		a.State.applyPatch(poolID, normalizeType(wr.Type), wr.Body)
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
	after := mergeUserAssigned(p.UserAssigned, wr.Body)
	hasUser := strings.Contains(typ, TypeUserAssigned)
	if hasUser && len(after) == 0 {
		return http.StatusBadRequest, "InvalidParameter", "The identity type 'UserAssigned' requires at least one user-assigned identity in 'identity.userAssignedIdentities'."
	}
	if !hasUser && slices.Contains(slices.Collect(maps.Values(wr.Body)), true) {
		return http.StatusBadRequest, "InvalidParameter", fmt.Sprintf("'identity.userAssignedIdentities' cannot be set when the identity type is '%s'.", typ)
	}
	return http.StatusOK, "", ""
}

// mergeUserAssigned applies a PATCH's identity map (resource ID to true for
// `{}`, add, or false for `null`, remove) to a pool's user-assigned set,
// keyed by lower-cased ID.
func mergeUserAssigned(current map[string]Identity, body map[string]bool) map[string]bool {
	out := map[string]bool{}
	for id := range current {
		out[id] = true
	}
	for id, add := range body {
		if add {
			out[key(id)] = true
		} else {
			delete(out, key(id))
		}
	}
	return out
}
