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
//	az role assignment create --role ROLE --assignee ID --scope SCOPE [--query FIELD] [-o tsv|json]
//	az role assignment delete --id ID
func az(dir string, args []string) error {
	flags, words := parseAzArgs(args)
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, sandbox.AdminSocket))
	}}}
	cmd := strings.Join(words, " ")
	var (
		method, path string
		body         any
	)
	switch cmd {
	case "identity create", "identity show", "identity delete":
		if flags["g"] == "" || flags["n"] == "" {
			return fmt.Errorf("az %s: -g/--resource-group and -n/--name are required", cmd)
		}
		method = map[string]string{"create": http.MethodPost, "show": http.MethodGet, "delete": http.MethodDelete}[words[1]]
		path = "/identities/" + url.PathEscape(flags["g"]) + "/" + url.PathEscape(flags["n"])
	case "vmss identity assign", "vmss identity remove":
		if flags["g"] == "" || flags["n"] == "" || flags["identities"] == "" {
			return fmt.Errorf("az %s: -g/--resource-group, -n/--name and --identities are required", cmd)
		}
		method = map[string]string{"assign": http.MethodPost, "remove": http.MethodDelete}[words[2]]
		path = "/vmss/" + url.PathEscape(flags["g"]) + "/" + url.PathEscape(flags["n"]) + "/identities"
		body = map[string][]string{"identities": strings.Fields(flags["identities"])}
	case "role assignment create":
		method, path = http.MethodPost, "/roleassignments"
		body = map[string]string{"role": flags["role"], "assignee": flags["assignee"], "scope": flags["scope"]}
	case "role assignment delete":
		method, path = http.MethodDelete, "/roleassignments?id="+url.QueryEscape(flags["id"])
	default:
		return fmt.Errorf("az %s: not supported by the sandbox (identity create|show|delete, vmss identity assign|remove, role assignment create|delete)", cmd)
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://sandbox"+path, rd)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
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

// parseAzArgs splits az's flags (-g, --resource-group, -otsv, --query x …)
// from its command words.
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
		} else if i+1 < len(args) {
			i++
			val = args[i]
		}
		if full, ok := alias[name]; ok {
			name = full
		}
		flags[name] = val
	}
	return flags, words
}

func printAz(out []byte, query, format string) error {
	var obj map[string]any
	if err := json.Unmarshal(out, &obj); err != nil {
		return err
	}
	if query != "" {
		v, ok := obj[query]
		if !ok {
			return fmt.Errorf("--query %s: no such field", query)
		}
		if format == "tsv" {
			fmt.Println(v)
			return nil
		}
		b, _ := json.MarshalIndent(v, "", "  ")
		fmt.Println(string(b))
		return nil
	}
	b, _ := json.MarshalIndent(obj, "", "  ")
	fmt.Println(string(b))
	return nil
}
