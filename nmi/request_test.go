package nmi

import (
	"errors"
	"net/http"
	"net/url"
	"testing"
)

func TestParseTokenRequest(t *testing.T) {
	const res = "https://management.azure.com/"
	tests := []struct {
		name     string
		metadata string
		query    string
		want     tokenRequest
		reason   string
	}{
		{"resource only", "true", "api-version=2018-02-01&resource=" + url.QueryEscape(res), tokenRequest{APIVersion: "2018-02-01", Resource: res}, ""},
		{"header any case", "True", "api-version=1&resource=r", tokenRequest{APIVersion: "1", Resource: "r"}, ""},
		{"client_id", "true", "api-version=1&resource=r&client_id=abc", tokenRequest{APIVersion: "1", Resource: "r", ClientID: "abc"}, ""},
		{"msi_res_id", "true", "api-version=1&resource=r&msi_res_id=/x", tokenRequest{APIVersion: "1", Resource: "r", ResourceID: "/x"}, ""},
		{"mi_res_id", "true", "api-version=1&resource=r&mi_res_id=/y", tokenRequest{APIVersion: "1", Resource: "r", ResourceID: "/y"}, ""},
		{"empty selector ignored", "true", "api-version=1&resource=r&client_id=", tokenRequest{APIVersion: "1", Resource: "r"}, ""},
		{"names in any case", "true", "API-Version=1&Resource=r&Client_Id=abc", tokenRequest{APIVersion: "1", Resource: "r", ClientID: "abc"}, ""},
		{"resource ID name in any case", "true", "api-version=1&resource=r&MI_RES_ID=/y", tokenRequest{APIVersion: "1", Resource: "r", ResourceID: "/y"}, ""},
		{"one name in two cases", "true", "api-version=1&resource=r&client_id=a&CLIENT_ID=b", tokenRequest{}, "repeated_query_variable"},
		{"two selectors, one in another case", "true", "api-version=1&resource=r&client_id=a&Msi_Res_Id=/b", tokenRequest{}, "several_selectors"},
		{"object_id in another case", "true", "api-version=1&resource=r&Object_ID=abc", tokenRequest{}, "unsupported_selector"},
		{"no header", "", "api-version=1&resource=r", tokenRequest{}, "missing_metadata_header"},
		{"header false", "false", "api-version=1&resource=r", tokenRequest{}, "missing_metadata_header"},
		{"no resource", "true", "api-version=1", tokenRequest{}, "missing_query_variable"},
		{"blank resource", "true", "api-version=1&resource=%20", tokenRequest{}, "missing_query_variable"},
		{"no api-version", "true", "resource=r", tokenRequest{}, "missing_query_variable"},
		{"two resources", "true", "api-version=1&resource=a&resource=b", tokenRequest{}, "repeated_query_variable"},
		{"two selectors", "true", "api-version=1&resource=r&client_id=a&mi_res_id=/b", tokenRequest{}, "several_selectors"},
		{"msi and mi", "true", "api-version=1&resource=r&msi_res_id=/a&mi_res_id=/b", tokenRequest{}, "several_selectors"},
		{"object_id is refused, not ignored", "true", "api-version=1&resource=r&object_id=abc", tokenRequest{}, "unsupported_selector"},
		{"empty object_id is refused too", "true", "api-version=1&resource=r&object_id=", tokenRequest{}, "unsupported_selector"},
		{"principal_id", "true", "api-version=1&resource=r&client_id=a&principal_id=b", tokenRequest{}, "unsupported_selector"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.metadata != "" {
				h.Set("Metadata", tt.metadata)
			}
			q, err := url.ParseQuery(tt.query)
			if err != nil {
				t.Fatal(err)
			}
			got, err := parseTokenRequest(h, q)
			if tt.reason == "" {
				if err != nil || got != tt.want {
					t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
				}
				return
			}
			var ae *apiError
			if !errors.As(err, &ae) || ae.reason != tt.reason || ae.status != http.StatusBadRequest {
				t.Fatalf("got %+v, %v; want 400 %s", got, err, tt.reason)
			}
		})
	}
}

// FuzzParseTokenRequest checks that any query and header either parse into a
// request with a resource and at most one selector, or give a 400 apiError.
func FuzzParseTokenRequest(f *testing.F) {
	f.Add("true", "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=x")
	f.Add("true", "resource=r&mi_res_id=%ZZ&&&=;")
	f.Add("TRUE", "api-version=1&resource=r&msi_res_id=a&msi_res_id=b")
	f.Fuzz(func(t *testing.T, metadata, rawQuery string) {
		q, _ := url.ParseQuery(rawQuery) // a partly bad query still yields values
		h := http.Header{"Metadata": {metadata}}
		req, err := parseTokenRequest(h, q)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != http.StatusBadRequest || ae.desc == "" {
				t.Fatalf("error %v is not a described 400", err)
			}
			return
		}
		if req.Resource == "" || (req.ClientID != "" && req.ResourceID != "") {
			t.Fatalf("accepted %+v from %q", req, rawQuery)
		}
	})
}
