//go:build integration

package charts

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

// grant is one permission a component must have: verbs on group/resource in
// every namespace (ns "*"), in the release namespace only (ns "release"),
// or cluster-scoped (ns ""), for every name or only for names.
type grant struct {
	group, resource string
	verbs           []string
	ns              string
	names           []string
}

var (
	read = []string{"get", "list", "watch"}
	crud = []string{"get", "list", "watch", "create", "update", "patch", "delete"}
	crds = []string{"azureidentities", "azureidentitybindings", "azureassignedidentities", "azurepodidentityexceptions"}
)

const aad = "aadpodidentity.k8s.io"

// expected lists what each component needs, per chart options.
func expected(release string, builtinCerts, servicePrincipals, taintRemoval, cleanup bool, mode string) map[string][]grant {
	g := map[string][]grant{
		"webhook": {
			{aad, "azureidentities", read, "*", nil},
			{aad, "azureidentitybindings", read, "*", nil},
			{"authentication.k8s.io", "tokenreviews", []string{"create"}, "", nil},
			{"authorization.k8s.io", "subjectaccessreviews", []string{"create"}, "", nil},
			// Adoption of pods created before the webhook (webhook.adoptPreexistingPods, on by default;
			// in managed mode the pod grant also watches unscheduled pods and lifts their gates).
			{"", "pods", []string{"list", "watch", "patch"}, "*", nil},
			{"admissionregistration.k8s.io", "mutatingwebhookconfigurations", []string{"get"}, "", []string{release}},
			{"events.k8s.io", "events", []string{"create", "patch"}, "*", nil},
			// Target pools at admission (standard mode).
			{"", "nodes", read, "", nil},
		},
		"assigner": {
			// Patch, not update: the trusted-pod-writes policy bounds what it changes.
			{"", "pods", []string{"get", "list", "watch", "patch"}, "*", nil},
			{"", "nodes", read, "", nil},
			{"events.k8s.io", "events", []string{"create", "patch"}, "*", nil},
			{aad, "azureidentities", read, "*", nil},
			{aad, "azureidentitybindings", read, "*", nil},
			// Its records live in the release namespace; 1.x's, anywhere, are only deleted.
			{aad, "azureassignedidentities", []string{"get", "list", "watch", "delete"}, "*", nil},
			{aad, "azureassignedidentities", []string{"create"}, "release", nil},
			{aad, "azureassignedidentities/status", []string{"patch"}, "release", nil},
			{"coordination.k8s.io", "leases", crud, "release", nil},
			// Its creation dates the installation: 1.x's records count only before it.
			{"admissionregistration.k8s.io", "mutatingwebhookconfigurations", []string{"get"}, "", []string{release}},
			{"authentication.k8s.io", "tokenreviews", []string{"create"}, "", nil},
			{"authorization.k8s.io", "subjectaccessreviews", []string{"create"}, "", nil},
		},
		"nmi": {
			{"", "pods", read, "*", nil},
			{aad, "azureidentities", read, "*", nil},
			{aad, "azureidentitybindings", read, "*", nil},
			{aad, "azurepodidentityexceptions", read, "*", nil},
			{aad, "azureassignedidentities", read, "release", nil},
			{"", "nodes", []string{"get"}, "", nil},
			{"authentication.k8s.io", "tokenreviews", []string{"create"}, "", nil},
			{"authorization.k8s.io", "subjectaccessreviews", []string{"create"}, "", nil},
		},
	}
	if builtinCerts {
		for _, r := range []string{"mutatingwebhookconfigurations", "validatingwebhookconfigurations"} {
			g["webhook"] = append(g["webhook"],
				grant{"admissionregistration.k8s.io", r, read, "", nil},
				grant{"admissionregistration.k8s.io", r, []string{"update", "patch"}, "", []string{release}})
		}
		g["webhook"] = append(g["webhook"],
			grant{"", "secrets", read, "release", nil},
			grant{"", "secrets", []string{"update", "patch"}, "release", []string{release + "-webhook-cert"}})
	}
	if servicePrincipals {
		g["nmi"] = append(g["nmi"], grant{"", "secrets", []string{"get"}, "*", nil})
	}
	if taintRemoval {
		g["nmi"] = append(g["nmi"], grant{"", "nodes", []string{"update"}, "", nil})
	}
	if mode != "standard" {
		// No assigner (the webhook lifts gates with its pod grant); NMI reads no records.
		delete(g, "assigner")
		g["webhook"] = slices.DeleteFunc(g["webhook"], func(x grant) bool { return x.resource == "nodes" })
		g["nmi"] = slices.DeleteFunc(g["nmi"], func(x grant) bool { return x.resource == "azureassignedidentities" })
	}
	switch mode {
	case "managed":
		// NMI tells pods about unassigned identities with events.
		g["nmi"] = append(g["nmi"], grant{"events.k8s.io", "events", []string{"create", "patch"}, "*", nil})
	case "federated":
		// Service-account tokens for Azure AD, bound to its node's pods (the nmi-token-request policy).
		g["nmi"] = append(g["nmi"], grant{"", "serviceaccounts/token", []string{"create"}, "*", nil})
	}
	// The CRD upgrade hook (crds.upgrade, on in every case here).
	g["crds"] = []grant{{"apiextensions.k8s.io", "customresourcedefinitions", []string{"get", "update"}, "", []string{
		"azureidentities.aadpodidentity.k8s.io", "azureidentitybindings.aadpodidentity.k8s.io",
		"azureassignedidentities.aadpodidentity.k8s.io", "azurepodidentityexceptions.aadpodidentity.k8s.io"}}}
	if cleanup {
		g["cleanup"] = []grant{
			{"apps", "daemonsets", read, "release", nil},
			{"apps", "daemonsets", []string{"delete"}, "release", []string{release + "-nmi"}},
		}
	}
	return g
}

// allows says whether the grants permit the request.
func allows(grants []grant, releaseNS string, a authorizationv1.ResourceAttributes) bool {
	res := a.Resource
	if a.Subresource != "" {
		res += "/" + a.Subresource
	}
	for _, g := range grants {
		nsOK := g.ns == "*" || g.ns == "" || (g.ns == "release" && a.Namespace == releaseNS)
		nameOK := len(g.names) == 0 || slices.Contains(g.names, a.Name)
		if g.group == a.Group && g.resource == res && slices.Contains(g.verbs, a.Verb) && nsOK && nameOK {
			return true
		}
	}
	return false
}

// universe is every request the table checks: each verb on the resources a
// pod identity component could plausibly be given, in the release namespace
// and another one.
func universe(releaseNS string) []authorizationv1.ResourceAttributes {
	verbs := []string{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
	type res struct{ group, resource, sub string }
	namespaced := []res{
		{"", "pods", ""}, {"", "secrets", ""}, {"", "configmaps", ""}, {"", "events", ""}, {"", "serviceaccounts", ""}, {"", "serviceaccounts", "token"},
		{"events.k8s.io", "events", ""}, {"coordination.k8s.io", "leases", ""}, {"apps", "daemonsets", ""}, {"apps", "deployments", ""},
		{aad, "azureassignedidentities", "status"}, {"rbac.authorization.k8s.io", "roles", ""},
	}
	for _, r := range crds {
		namespaced = append(namespaced, res{aad, r, ""})
	}
	cluster := []res{
		{"", "nodes", ""}, {"", "namespaces", ""}, {"rbac.authorization.k8s.io", "clusterroles", ""},
		{"admissionregistration.k8s.io", "mutatingwebhookconfigurations", ""}, {"admissionregistration.k8s.io", "validatingwebhookconfigurations", ""},
		{"apiextensions.k8s.io", "customresourcedefinitions", ""},
	}
	var all []authorizationv1.ResourceAttributes
	for _, v := range verbs {
		for _, r := range namespaced {
			for _, ns := range []string{releaseNS, "aadpi-chart-other"} {
				all = append(all, authorizationv1.ResourceAttributes{Verb: v, Group: r.group, Resource: r.resource, Subresource: r.sub, Namespace: ns})
			}
		}
		for _, r := range cluster {
			all = append(all, authorizationv1.ResourceAttributes{Verb: v, Group: r.group, Resource: r.resource, Subresource: r.sub})
		}
	}
	return all
}

func can(ctx context.Context, t *testing.T, ns, sa string, a authorizationv1.ResourceAttributes) bool {
	t.Helper()
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:               fmt.Sprintf("system:serviceaccount:%s:%s", ns, sa),
		Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
		ResourceAttributes: &a,
	}}
	if err := k8s.Create(ctx, sar); err != nil {
		t.Fatalf("SubjectAccessReview: %v", err)
	}
	return sar.Status.Allowed
}

// Each component's service account, bound by the rendered RBAC in a real
// apiserver, can do exactly what expected lists: every request of the
// universe is allowed if and only if a grant permits it, and name-restricted
// grants hold for their names only.
func TestRBACIsLeastPrivilege(t *testing.T) {
	tests := []struct {
		name, values, mode                                   string
		set                                                  []string
		builtinCerts, servicePrincipals, taintRemoval, clean bool
	}{
		{name: "default", values: "default", mode: "standard", clean: true},
		{name: "managed", values: "default", set: []string{"policy.mode=managed"}, mode: "managed", clean: true},
		{name: "federated", values: "default", set: []string{"policy.mode=federated", "policy.federation.tenantID=" + testTenant}, mode: "federated", clean: true},
		{name: "all-features", values: "builtin-certs", mode: "standard", builtinCerts: true, servicePrincipals: true, taintRemoval: true, clean: true},
		{name: "no-cleanup", values: "custom-issuer", mode: "standard", servicePrincipals: true},
	}
	ctx := context.Background()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ns, release := "aadpi-chart-rbac-"+tc.name, "rbac-"+tc.name
			createNamespace(t, ns)
			manifest, err := render(release, ns, valuesFile(tc.values), append([]string{"fullnameOverride=" + release}, tc.set...)...)
			if err != nil {
				t.Fatal(err)
			}
			objs, err := objects(manifest)
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range objs {
				switch o.GetKind() {
				case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
					if err := k8s.Create(ctx, o); err != nil {
						t.Fatalf("creating %s %s: %v", o.GetKind(), o.GetName(), err)
					}
					t.Cleanup(func() { _ = k8s.Delete(ctx, o) })
				}
			}
			want := expected(release, tc.builtinCerts, tc.servicePrincipals, tc.taintRemoval, tc.clean, tc.mode)
			// The authorizer's informers see new bindings a moment later.
			err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
				return can(ctx, t, ns, release+"-nmi", authorizationv1.ResourceAttributes{Verb: "list", Resource: "pods", Namespace: ns}), nil
			})
			if err != nil {
				t.Fatalf("NMI never got its pod access: %v", err)
			}
			for _, component := range []string{"webhook", "assigner", "nmi", "cleanup", "crds"} {
				sa := release + "-" + component
				for _, a := range universe(ns) {
					if got, w := can(ctx, t, ns, sa, a), allows(want[component], ns, a); got != w {
						t.Errorf("%s %s %s/%s in %q: allowed=%v, want %v", component, a.Verb, a.Group, a.Resource+"/"+a.Subresource, a.Namespace, got, w)
					}
				}
				for _, g := range want[component] {
					if len(g.names) == 0 {
						continue
					}
					gns := map[string]string{"": "", "release": ns}[g.ns]
					for _, name := range append(slices.Clone(g.names), "aadpi-chart-someone-else") {
						a := authorizationv1.ResourceAttributes{Verb: g.verbs[0], Group: g.group, Resource: g.resource, Namespace: gns, Name: name}
						// Another grant may cover every name (with built-in certificates the webhook reads all configurations).
						if got, w := can(ctx, t, ns, sa, a), allows(want[component], ns, a); got != w {
							t.Errorf("%s %s %s %q: allowed=%v, want %v", component, a.Verb, a.Resource, name, got, w)
						}
					}
				}
			}
		})
	}
}

// The chart grants everything the code's kubebuilder RBAC markers ask for
// (config/rbac, generated by `make manifests`), in one mode or another: a
// permission added to a component's code but not to the chart fails here,
// since the table above only checks the chart against itself. A
// ClusterRole's rules must hold in every namespace, a Role's (namespace
// system, the release's) in the release namespace.
func TestChartGrantsWhatTheCodeNeeds(t *testing.T) {
	const releaseNS = "kube-system"
	modes := []map[string][]grant{}
	for _, mode := range []string{"standard", "managed", "federated"} {
		modes = append(modes, expected("aad-pod-identity", true, true, true, true, mode))
	}
	for _, component := range []string{"webhook", "assigner", "nmi"} {
		raw, err := os.ReadFile(filepath.Join(framework.RepoRoot(), "config", "rbac", component, "role.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(strings.TrimPrefix(string(raw), "---\n"), "\n---\n") {
			var role struct {
				Kind  string              `json:"kind"`
				Rules []rbacv1.PolicyRule `json:"rules"`
			}
			if err := yaml.Unmarshal([]byte(doc), &role); err != nil {
				t.Fatalf("config/rbac/%s/role.yaml: %v", component, err)
			}
			namespaces := map[string][]string{"ClusterRole": {releaseNS, "aadpi-chart-other"}, "Role": {releaseNS}}[role.Kind]
			if namespaces == nil {
				t.Fatalf("config/rbac/%s/role.yaml: unexpected %q", component, role.Kind)
			}
			for _, rule := range role.Rules {
				for _, group := range rule.APIGroups {
					for _, res := range rule.Resources {
						resource, sub, _ := strings.Cut(res, "/")
						for _, verb := range rule.Verbs {
							for _, ns := range namespaces {
								a := authorizationv1.ResourceAttributes{Verb: verb, Group: group, Resource: resource, Subresource: sub, Namespace: ns}
								// Markers cannot name an object; the code reads only the release's own.
								named := a
								named.Name = "aad-pod-identity"
								if !slices.ContainsFunc(modes, func(g map[string][]grant) bool {
									return allows(g[component], releaseNS, a) || allows(g[component], releaseNS, named)
								}) {
									t.Errorf("%s: the code needs %s %s/%s in namespace %s, the chart does not grant it", component, verb, group, res, ns)
								}
							}
						}
					}
				}
			}
		}
	}
}
