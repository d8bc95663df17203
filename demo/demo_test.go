package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
)

const (
	sub        = "00000000-0000-0000-0000-000000000001"
	rg         = "MC_rg_cluster_westus2"
	userClient = "91ff0ee7-35fc-46d0-9cd0-51a7ea9ec7f2"
)

// fakeIMDS answers like IMDS (or NMI): instance metadata and tokens whose
// value names the identity, so ARM can check which token it got.
type fakeIMDS struct {
	knownClientIDs map[string]bool
}

func (f fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Metadata") != "true" {
		http.Error(w, "Required metadata header not specified", http.StatusBadRequest)
		return
	}
	switch r.URL.Path {
	case "/metadata/instance":
		fmt.Fprint(w, `{"compute":{"name":"aks-nodepool1-0","resourceGroupName":"`+rg+`"}}`)
	case TokenPath:
		q := r.URL.Query()
		id := q.Get("client_id")
		if q.Get("resource") != ManagementResource || (id != "" && !f.knownClientIDs[id]) {
			http.Error(w, `{"error":"invalid_request"}`, http.StatusBadRequest)
			return
		}
		if id == "" {
			id = "default"
		}
		_ = json.NewEncoder(w).Encode(map[string]string{
			"access_token": "token-" + id,
			"expires_on":   fmt.Sprint(time.Now().Add(time.Hour).Unix()),
		})
	default:
		http.NotFound(w, r)
	}
}

// fakeARM lists one scale set for the default identity's token.
type fakeARM struct{ status int }

func (f fakeARM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	want := "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Compute/virtualMachineScaleSets"
	switch {
	case r.URL.Path != want:
		http.Error(w, `{"error":{"code":"NotFound","message":"`+r.URL.Path+`"}}`, http.StatusNotFound)
	case r.Header.Get("Authorization") != "Bearer token-default":
		http.Error(w, `{"error":{"code":"AuthorizationFailed","message":"wrong token"}}`, http.StatusForbidden)
	case f.status != 0:
		http.Error(w, `{"error":{"code":"AuthorizationFailed","message":"no role"}}`, f.status)
	default:
		fmt.Fprint(w, `{"value":[{"name":"aks-nodepool1-vmss","location":"westus2"}]}`)
	}
}

func TestOnceLogsEachStep(t *testing.T) {
	tests := []struct {
		name      string
		imds      http.Handler
		arm       fakeARM
		wantLines []string
		wantErr   []string
	}{{
		name: "all steps succeed",
		imds: fakeIMDS{knownClientIDs: map[string]bool{userClient: true}},
		wantLines: []string{
			`"msg"="queried instance metadata"`,
			`"msg"="successfully listed VMSS instances from ARM via AAD Pod Identity" "resourceGroup"="` + rg + `" "vmss"=["aks-nodepool1-vmss"]`,
			`"msg"="successfully acquired a service principal token"`,
			`"msg"="successfully acquired a service principal token using a user-assigned identity"`,
		},
	}, {
		name: "unknown user-assigned identity fails only the last step",
		imds: fakeIMDS{},
		wantLines: []string{
			`"msg"="queried instance metadata"`,
			`"msg"="successfully listed VMSS instances`,
			`"msg"="successfully acquired a service principal token"`,
			`"msg"="failed to acquire a service principal token using a user-assigned identity" "error"=`,
		},
		wantErr: []string{"400 Bad Request"},
	}, {
		name: "ARM refusal is logged with its code",
		imds: fakeIMDS{knownClientIDs: map[string]bool{userClient: true}},
		arm:  fakeARM{status: http.StatusForbidden},
		wantLines: []string{
			`"msg"="queried instance metadata"`,
			`"msg"="failed to list VMSS instances from ARM via AAD Pod Identity" "error"=`,
			`"msg"="successfully acquired a service principal token"`,
			`"msg"="successfully acquired a service principal token using a user-assigned identity"`,
		},
		wantErr: []string{"AuthorizationFailed"},
	}, {
		name: "IMDS down fails every step",
		imds: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
		}),
		wantLines: []string{
			`"msg"="failed to query instance metadata"`,
			`"msg"="failed to list VMSS instances`,
			`"msg"="failed to acquire a service principal token"`,
			`"msg"="failed to acquire a service principal token using a user-assigned identity"`,
		},
		wantErr: []string{"503 Service Unavailable"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			imds := httptest.NewServer(tc.imds)
			defer imds.Close()
			// azcore refuses to send bearer tokens over plain HTTP, so ARM is TLS.
			arm := httptest.NewTLSServer(tc.arm)
			defer arm.Close()
			d, err := New(Config{
				SubscriptionID: sub, ResourceGroup: rg, IdentityClientID: userClient, Period: time.Minute,
				MetadataEndpoint: imds.URL, ARMEndpoint: arm.URL, HTTPClient: arm.Client(),
			})
			if err != nil {
				t.Fatal(err)
			}
			var lines []string
			log := funcr.New(func(prefix, args string) { lines = append(lines, args) }, funcr.Options{})
			err = d.Once(logr.NewContext(context.Background(), log))

			if len(lines) != len(tc.wantLines) {
				t.Fatalf("got %d log lines, want %d:\n%s", len(lines), len(tc.wantLines), strings.Join(lines, "\n"))
			}
			for i, want := range tc.wantLines {
				if !strings.Contains(lines[i], want) {
					t.Errorf("line %d = %s\nwant it to contain %s", i, lines[i], want)
				}
			}
			if len(tc.wantErr) == 0 && err != nil {
				t.Errorf("Once() = %v, want nil", err)
			}
			for _, want := range tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("Once() = %v, want an error containing %q", err, want)
				}
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	good := Config{SubscriptionID: sub, ResourceGroup: rg, IdentityClientID: userClient, Period: time.Second,
		MetadataEndpoint: "http://169.254.169.254", ARMEndpoint: ManagementResource}
	tests := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"missing subscription", func(c *Config) { c.SubscriptionID = "" }, "--subscription-id is required"},
		{"missing resource group", func(c *Config) { c.ResourceGroup = " " }, "--resource-group is required"},
		{"missing client ID", func(c *Config) { c.IdentityClientID = "" }, "--identity-client-id is required"},
		{"zero period", func(c *Config) { c.Period = 0 }, "--period must be positive"},
	}
	if _, err := New(good); err != nil {
		t.Fatalf("New(good) = %v", err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.modify(&cfg)
			if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// The first round must not wait a whole period: with the default 100 s a
// freshly started pod would show nothing for that long.
func TestRunChecksAtOnce(t *testing.T) {
	imds := httptest.NewServer(http.NotFoundHandler())
	defer imds.Close()
	d, err := New(Config{SubscriptionID: sub, ResourceGroup: rg, IdentityClientID: userClient, Period: time.Hour,
		MetadataEndpoint: imds.URL, ARMEndpoint: ManagementResource})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lines := make(chan string, 10)
	log := funcr.New(func(_, args string) { lines <- args }, funcr.Options{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Run(logr.NewContext(ctx, log))
	}()
	if got := <-lines; !strings.Contains(got, "instance metadata") {
		t.Errorf("first line = %s, want the instance metadata check", got)
	}
	cancel()
	<-done
}
