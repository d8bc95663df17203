package fakeazure

import (
	"encoding/json"
	"net/http"
)

// writeJSON is the one response writer of ARM, IMDS and Azure AD.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}

// armError writes ARM's error shape.
func armError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": message}})
}

// oauthError writes the OAuth 2.0 error shape that Azure AD and IMDS's token
// endpoint share.
func oauthError(w http.ResponseWriter, status int, code, description string) {
	writeJSON(w, status, map[string]string{"error": code, "error_description": description})
}
