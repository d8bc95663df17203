package nmi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// apiError is an answer in IMDS's error shape, with a stable reason for
// metrics and logs.
type apiError struct {
	status int
	code   string // IMDS's "error" field
	reason string // metric label, snake_case
	desc   string // what a person can act on
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
// Errors that are not apiErrors are internal: their text is still returned,
// since it names the failing dependency.
func writeError(w http.ResponseWriter, err error) string {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = newError(http.StatusInternalServerError, "internal_error", "internal", "%v", err)
	}
	writeJSON(w, ae.status, map[string]string{"error": ae.code, "error_description": ae.desc})
	return ae.reason
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}
