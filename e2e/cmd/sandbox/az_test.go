package main

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
)

func TestAzRequest(t *testing.T) {
	const ficPath = "/identities/rg/id/federated-credentials/fic"
	tests := []struct {
		name    string
		args    string
		want    adminRequest
		wantErr string
	}{
		{name: "identity show, short flags", args: "identity show -g rg -n id --query clientId -otsv",
			want: adminRequest{method: http.MethodGet, path: "/identities/rg/id"}},
		{name: "federated credential create with the default audience",
			args: "identity federated-credential create --name fic --identity-name id --resource-group rg --issuer https://10.200.0.1:6443 --subject system:serviceaccount:ns:sa",
			want: adminRequest{method: http.MethodPut, path: ficPath, body: map[string]any{
				"issuer": "https://10.200.0.1:6443", "subject": "system:serviceaccount:ns:sa", "audiences": []string{}}}},
		{name: "federated credential create with two audiences before other flags",
			args: "identity federated-credential create -n fic --audiences a b --identity-name id -g rg --issuer i --subject s",
			want: adminRequest{method: http.MethodPut, path: ficPath, body: map[string]any{"issuer": "i", "subject": "s", "audiences": []string{"a", "b"}}}},
		{name: "federated credential create without a subject", args: "identity federated-credential create -n fic --identity-name id -g rg --issuer i",
			wantErr: "--issuer and --subject are required"},
		{name: "federated credential delete, --yes a switch before -g", args: "identity federated-credential delete -n fic --identity-name id --yes -g rg",
			want: adminRequest{method: http.MethodDelete, path: ficPath}},
		{name: "federated credential delete without the identity", args: "identity federated-credential delete -n fic -g rg",
			wantErr: "--identity-name are required"},
		{name: "federated credential list", args: "identity federated-credential list --identity-name id -g rg",
			want: adminRequest{method: http.MethodGet, path: "/identities/rg/id/federated-credentials"}},
		{name: "vmss identity assign with two identities", args: "vmss identity assign -g rg -n pool --identities /a /b",
			want: adminRequest{method: http.MethodPost, path: "/vmss/rg/pool/identities", body: map[string][]string{"identities": {"/a", "/b"}}}},
		{name: "vmss identity show", args: "vmss identity show -g rg -n pool",
			want: adminRequest{method: http.MethodGet, path: "/vmss/rg/pool/identities"}},
		{name: "aks show with a dotted query", args: "aks show -g rg -n cluster --query oidcIssuerProfile.issuerUrl -o tsv",
			want: adminRequest{method: http.MethodGet, path: "/aks/rg/cluster"}},
		{name: "aks update enabling the OIDC issuer", args: "aks update -g rg -n cluster --enable-oidc-issuer",
			want: adminRequest{method: http.MethodGet, path: "/aks/rg/cluster"}},
		{name: "aks update anything else", args: "aks update -g rg -n cluster --enable-workload-identity",
			wantErr: "supports only --enable-oidc-issuer"},
		{name: "an unsupported command", args: "group create -n rg", wantErr: "not supported by the sandbox"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			flags, words := parseAzArgs(strings.Fields(tt.args))
			got, err := azRequest(strings.Join(words, " "), flags)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %+v, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got.method != tt.want.method || got.path != tt.want.path || !reflect.DeepEqual(got.body, tt.want.body) {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}
