package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const header = "apiVersion: config.aadpodidentity.k8s.io/v1alpha1\nkind: Configuration\n"

func load(t *testing.T, body string) (*Configuration, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return Load(path, "release-ns")
}

func TestLoadDefaults(t *testing.T) {
	for name, body := range map[string]string{"no file": "", "empty file": header} {
		t.Run(name, func(t *testing.T) {
			var c *Configuration
			var err error
			if body == "" {
				c, err = Load("", "release-ns")
			} else {
				c, err = load(t, body)
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Policy.Mode != ModeStandard || c.Policy.Exceptions.Tokens != ExceptionTokensNode || c.NMI.UnknownCallerWait.Duration != 5*time.Second ||
				*c.NMI.MaxConnectionsPerIP != 64 || c.Webhook.TrustedServiceAccounts[0] != "release-ns/aad-pod-identity-webhook" || !*c.Assigner.LeaderElect {
				t.Errorf("defaults not applied: %+v", c)
			}
		})
	}
}

func TestLoadWithoutNamespace(t *testing.T) {
	c, err := Load("", "")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Webhook.TrustedServiceAccounts[0]; got != "default/aad-pod-identity-webhook" {
		t.Errorf("trusted service account %q", got)
	}
}

func TestLoadKeepsExplicitZeroes(t *testing.T) {
	c, err := load(t, header+"nmi:\n  maxConnectionsPerIP: 0\n  uncachedTokenRate: 0\nassigner:\n  leaderElect: false\n")
	if err != nil {
		t.Fatal(err)
	}
	if *c.NMI.MaxConnectionsPerIP != 0 || *c.NMI.UncachedTokenRate != 0 || *c.Assigner.LeaderElect {
		t.Errorf("an explicit 0 or false was replaced by the default: %d, %v, %v", *c.NMI.MaxConnectionsPerIP, *c.NMI.UncachedTokenRate, *c.Assigner.LeaderElect)
	}
}

func TestLoadRefuses(t *testing.T) {
	for _, tt := range []struct {
		name, body string
		want       []string // in the error
	}{
		{"unknown field", header + "policy:\n  mdoe: managed\n", []string{`unknown field "policy.mdoe"`}},
		{"another apiVersion", "apiVersion: v1\nkind: Configuration\n", []string{`apiVersion "v1"`, APIVersion}},
		{"no apiVersion", "policy: {}\n", []string{`apiVersion ""`}},
		{"not YAML", header + "policy: [\n", []string{"decoding"}},
		{"unknown mode", header + "policy:\n  mode: addon\n", []string{"policy.mode", `"addon"`, "standard"}},
		{"mode federated without a tenant", header + "policy:\n  mode: federated\n", []string{"policy.federation.tenantID", "az account show"}},
		{"federation with a tenant that is no GUID", header + "policy:\n  federation:\n    enabled: true\n    tenantID: contoso.onmicrosoft.com\n", []string{"policy.federation.tenantID", "contoso"}},
		{"bad scope", header + "policy:\n  identityScopes:\n    team-a: [/subscription/x]\n", []string{"policy.identityScopes[team-a][0]"}},
		{"bad exception tokens", header + "policy:\n  exceptions:\n    tokens: all\n", []string{"policy.exceptions.tokens"}},
		{"bad node selection", header + "policy:\n  nmiNodeSelection:\n    affinity:\n      nodeAffinity:\n        requiredDuringSchedulingIgnoredDuringExecution:\n          nodeSelectorTerms:\n          - matchExpressions:\n            - {key: a, operator: Bogus}\n",
			[]string{"policy.nmiNodeSelection"}},
		{"bad service account", header + "webhook:\n  trustedServiceAccounts: [webhook]\n", []string{"webhook.trustedServiceAccounts[0]", "namespace/name"}},
		{"poll below azcore's minimum", header + "assigner:\n  armPollInterval: 500ms\n", []string{"assigner.armPollInterval", "1s"}},
		{"negative wait", header + "nmi:\n  unknownCallerWait: -1s\n", []string{"nmi.unknownCallerWait"}},
		{"unknown backend", header + "nmi:\n  iptablesBackend: ebpf\n", []string{"nmi.iptablesBackend"}},
		{"relative path", header + "nmi:\n  allowedMetadataPaths: [metadata]\n", []string{"nmi.allowedMetadataPaths[0]"}},
		{"every error at once", header + "policy:\n  mode: x1\nnmi:\n  iptablesBackend: y1\n", []string{"policy.mode", "nmi.iptablesBackend"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.body)
			if err == nil {
				t.Fatal("loaded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestScopeEntries(t *testing.T) {
	p := Policy{IdentityScopes: map[string][]string{"b": {"/subscriptions/2"}, "a": {"/subscriptions/1", "/subscriptions/3"}}}
	if got := strings.Join(p.ScopeEntries(), ","); got != "a=/subscriptions/1,a=/subscriptions/3,b=/subscriptions/2" {
		t.Errorf("got %s", got)
	}
}

func TestModeFederatedEnablesFederation(t *testing.T) {
	c, err := load(t, header+"policy:\n  mode: federated\n  federation:\n    tenantID: 72f988bf-86f1-41af-91ab-2d7cd011db47\n")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Policy.Federation.Enabled {
		t.Error("mode federated left policy.federation.enabled false")
	}
}
