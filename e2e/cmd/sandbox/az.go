package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
)

// az is the walkthrough's Azure CLI subset against the sandbox's fake Azure:
//
//	az identity create|show|delete -g RG -n NAME [--query FIELD] [-o tsv|json]
//	az identity federated-credential create -n NAME --identity-name ID -g RG --issuer URL --subject S [--audiences A ...]
//	az identity federated-credential delete -n NAME --identity-name ID -g RG [--yes]
//	az identity federated-credential list --identity-name ID -g RG
//	az vmss identity assign|remove -g RG -n NAME --identities ID ...
//	az vmss identity show -g RG -n NAME
//	az role assignment create --role ROLE --assignee ID --scope SCOPE [--query FIELD] [-o tsv|json]
//	az role assignment delete --id ID
//	az aks show -g RG -n NAME [--query oidcIssuerProfile.issuerUrl] [-o tsv|json]
//	az aks update -g RG -n NAME --enable-oidc-issuer
func az(dir string, args []string) error {
	flags, words := parseAzArgs(args)
	req, err := azRequest(strings.Join(words, " "), flags)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, sandbox.AdminSocket))
	}}}
	var rd io.Reader
	if req.body != nil {
		b, _ := json.Marshal(req.body)
		rd = bytes.NewReader(b)
	}
	httpReq, err := http.NewRequest(req.method, "http://sandbox"+req.path, rd)
	if err != nil {
		return err
	}
	resp, err := client.Do(httpReq)
	if err != nil {
		return fmt.Errorf("is the sandbox up (state dir %s)? %w", dir, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		var e struct{ Error string }
		_ = json.Unmarshal(out, &e)
		return errors.New(e.Error)
	}
	if len(out) == 0 {
		return nil
	}
	return printAz(out, flags["query"], flags["o"])
}

// adminRequest is one call to the sandbox's admin socket.
type adminRequest struct {
	method, path string
	body         any
}

const azSupported = "identity create|show|delete, identity federated-credential create|delete|list, vmss identity assign|remove|show, " +
	"role assignment create|delete, aks show|update"

// azRequest maps an az command and its flags to the admin socket's API.
func azRequest(cmd string, flags map[string]string) (adminRequest, error) {
	words := strings.Fields(cmd)
	esc := url.PathEscape
	switch cmd {
	case "identity create", "identity show", "identity delete":
		if flags["g"] == "" || flags["n"] == "" {
			return adminRequest{}, fmt.Errorf("az %s: -g/--resource-group and -n/--name are required", cmd)
		}
		method := map[string]string{"create": http.MethodPost, "show": http.MethodGet, "delete": http.MethodDelete}[words[1]]
		return adminRequest{method: method, path: "/identities/" + esc(flags["g"]) + "/" + esc(flags["n"])}, nil
	case "identity federated-credential create", "identity federated-credential delete":
		if flags["g"] == "" || flags["n"] == "" || flags["identity-name"] == "" {
			return adminRequest{}, fmt.Errorf("az %s: -g/--resource-group, -n/--name and --identity-name are required", cmd)
		}
		path := "/identities/" + esc(flags["g"]) + "/" + esc(flags["identity-name"]) + "/federated-credentials/" + esc(flags["n"])
		if words[2] == "delete" {
			return adminRequest{method: http.MethodDelete, path: path}, nil
		}
		if flags["issuer"] == "" || flags["subject"] == "" {
			return adminRequest{}, fmt.Errorf("az %s: --issuer and --subject are required", cmd)
		}
		return adminRequest{method: http.MethodPut, path: path, body: map[string]any{
			"issuer": flags["issuer"], "subject": flags["subject"], "audiences": strings.Fields(flags["audiences"])}}, nil
	case "identity federated-credential list":
		if flags["g"] == "" || flags["identity-name"] == "" {
			return adminRequest{}, fmt.Errorf("az %s: -g/--resource-group and --identity-name are required", cmd)
		}
		return adminRequest{method: http.MethodGet, path: "/identities/" + esc(flags["g"]) + "/" + esc(flags["identity-name"]) + "/federated-credentials"}, nil
	case "vmss identity assign", "vmss identity remove":
		if flags["g"] == "" || flags["n"] == "" || flags["identities"] == "" {
			return adminRequest{}, fmt.Errorf("az %s: -g/--resource-group, -n/--name and --identities are required", cmd)
		}
		method := map[string]string{"assign": http.MethodPost, "remove": http.MethodDelete}[words[2]]
		return adminRequest{method: method, path: "/vmss/" + esc(flags["g"]) + "/" + esc(flags["n"]) + "/identities",
			body: map[string][]string{"identities": strings.Fields(flags["identities"])}}, nil
	case "vmss identity show":
		if flags["g"] == "" || flags["n"] == "" {
			return adminRequest{}, fmt.Errorf("az %s: -g/--resource-group and -n/--name are required", cmd)
		}
		return adminRequest{method: http.MethodGet, path: "/vmss/" + esc(flags["g"]) + "/" + esc(flags["n"]) + "/identities"}, nil
	case "role assignment create":
		return adminRequest{method: http.MethodPost, path: "/roleassignments",
			body: map[string]string{"role": flags["role"], "assignee": flags["assignee"], "scope": flags["scope"]}}, nil
	case "role assignment delete":
		return adminRequest{method: http.MethodDelete, path: "/roleassignments?id=" + url.QueryEscape(flags["id"])}, nil
	case "aks show", "aks update":
		if flags["g"] == "" || flags["n"] == "" {
			return adminRequest{}, fmt.Errorf("az %s: -g/--resource-group and -n/--name are required", cmd)
		}
		// The sandbox's issuer is always on: enabling it changes nothing.
		if _, ok := flags["enable-oidc-issuer"]; words[1] == "update" && !ok {
			return adminRequest{}, fmt.Errorf("az %s: the sandbox supports only --enable-oidc-issuer", cmd)
		}
		return adminRequest{method: http.MethodGet, path: "/aks/" + esc(flags["g"]) + "/" + esc(flags["n"])}, nil
	default:
		return adminRequest{}, fmt.Errorf("az %s: not supported by the sandbox (%s)", cmd, azSupported)
	}
}

// multiValued are the flags that take every following word, as az's
// space-separated lists do; their value keeps the words space-separated.
var multiValued = map[string]bool{"identities": true, "audiences": true}

// parseAzArgs splits az's flags (-g, --resource-group, -otsv, --query x,
// --audiences a b, --yes …) from its command words. A flag followed by
// another flag or nothing is a switch, with an empty value.
func parseAzArgs(args []string) (map[string]string, []string) {
	alias := map[string]string{"resource-group": "g", "name": "n", "output": "o"}
	flags := map[string]string{}
	var words []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			words = append(words, a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		val := ""
		if k, v, ok := strings.Cut(name, "="); ok {
			name, val = k, v
		} else if len(name) > 1 && !strings.HasPrefix(a, "--") {
			name, val = name[:1], name[1:] // -otsv
		} else {
			var vals []string
			for i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") && (len(vals) == 0 || multiValued[name]) {
				i++
				vals = append(vals, args[i])
			}
			val = strings.Join(vals, " ")
		}
		if full, ok := alias[name]; ok {
			name = full
		}
		flags[name] = val
	}
	return flags, words
}

// printAz prints the reply as JSON, or the field a dotted --query path
// names (oidcIssuerProfile.issuerUrl), bare with -o tsv.
func printAz(out []byte, query, format string) error {
	var v any
	if err := json.Unmarshal(out, &v); err != nil {
		return err
	}
	if query != "" {
		for _, field := range strings.Split(query, ".") {
			obj, ok := v.(map[string]any)
			if !ok {
				return fmt.Errorf("--query %s: the sandbox queries only fields of an object", query)
			}
			if v, ok = obj[field]; !ok {
				return fmt.Errorf("--query %s: no such field", query)
			}
		}
	}
	if query != "" && format == "tsv" {
		fmt.Println(v)
		return nil
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	fmt.Println(string(b))
	return nil
}
