package nmi

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
)

// apiError is an answer in IMDS's error shape, with a stable reason for
// metrics and logs.
type apiError struct {
	status int
	code   string // IMDS's "error" field
	reason string // metric label, snake_case
	desc   string // what a person can act on
	// retryAfter, when set, is sent as the Retry-After header.
	retryAfter time.Duration
}

func (e *apiError) Error() string { return e.reason + ": " + e.desc }

func newError(status int, code, reason, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, reason: reason, desc: fmt.Sprintf(format, args...)}
}

func badRequest(reason, format string, args ...any) *apiError {
	return newError(http.StatusBadRequest, "invalid_request", reason, format, args...)
}

func forbidden(reason, format string, args ...any) *apiError {
	return newError(http.StatusForbidden, "forbidden", reason, format, args...)
}

// writeError answers err as IMDS does and returns the reason recorded for it.
// Errors that are not apiErrors are internal: the caller learns only that,
// since their text may name other pods, namespaces or the cluster's
// internals; the request log on the node has it.
func writeError(w http.ResponseWriter, err error) string {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = newError(http.StatusInternalServerError, "internal_error", "internal", "NMI could not serve the request; its log on this node has the cause")
	}
	if ae.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(ae.retryAfter.Seconds()))))
	}
	writeJSON(w, ae.status, map[string]string{"error": ae.code, "error_description": ae.desc})
	return ae.reason
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}
