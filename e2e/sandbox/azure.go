package sandbox

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/fakeazure"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// Ports of the fake ARM and AAD on APIServerIP in the control-plane namespace.
const (
	armPort = 443
	aadPort = 8444
)

// armHost is the public ARM's name; pods resolve it to the fake ARM (the
// cluster DNS on real nodes, podHosts on stand-ins), so programs with the default endpoint, like the walkthrough's
// demo pod, reach it unchanged.
const armHost = "management.azure.com"

// AzureCAFile is the file name, in the sandbox's pki directory, of the fake
// Azure's CA certificate; every container gets it as SSL_CERT_FILE.
const AzureCAFile = "azure-ca.crt"

// AzureEndpoints are the fake Azure's management plane and Azure AD, served
// in the control-plane namespace and reachable from every node and pod, and
// a service principal the cluster's components can authenticate as. The
// Azure AD exchanges service-account tokens of the sandbox's issuer
// (Sandbox.IssuerURL) that an identity's federated credentials accept.
type AzureEndpoints struct {
	ARM *fakeazure.ARM
	AAD *fakeazure.AAD
	// ARMEndpoint and AADAuthorityHost are the URLs (https://10.200.0.1:port/);
	// in pods, https://management.azure.com/ is the fake ARM too.
	ARMEndpoint, AADAuthorityHost string
	// CAFile is the PEM file of the CA both serve from.
	CAFile string
	// Principal is a service principal registered in the fake tenant.
	Principal fakeazure.ServicePrincipal
	// CloudConfig is the nodes' azure.json, as AKS writes it: it names the
	// cluster's kubelet identity, which the chart protects
	// (nodeIdentity.cloudConfig).
	CloudConfig string
	Kubelet     fakeazure.Identity
}

// ServeAzure serves the fake ARM and AAD on APIServerIP inside the
// control-plane namespace over HTTPS from a fresh CA, and makes every
// container started afterwards trust that CA through SSL_CERT_FILE (Go
// honours it), so the components need no extra CA flags.
func (s *Sandbox) ServeAzure() (*AzureEndpoints, error) {
	// The nodes' images were built to trust the CA of their NodeImages.
	ca := s.opts.NodeImages.CA
	e := &AzureEndpoints{CAFile: s.path("pki", AzureCAFile), AAD: fakeazure.NewAAD(s.Signer)}
	e.AAD.Federate(s.Azure, s.issuerClient())
	if err := ca.WritePEM(e.CAFile); err != nil {
		return nil, err
	}
	tlsCfg, err := ca.ServerTLSConfig(APIServerIP.String(), armHost)
	if err != nil {
		return nil, err
	}
	armLn, err := testns.Listen(s.cp, net.JoinHostPort(APIServerIP.String(), fmt.Sprint(armPort)))
	if err != nil {
		return nil, fmt.Errorf("fake ARM listener: %w", err)
	}
	e.ARM = fakeazure.ServeARM(s.Azure, armLn, tlsCfg)
	e.ARMEndpoint = e.ARM.URL
	s.addCloser(e.ARM.Close)

	aadLn, err := testns.Listen(s.cp, net.JoinHostPort(APIServerIP.String(), fmt.Sprint(aadPort)))
	if err != nil {
		return nil, fmt.Errorf("fake AAD listener: %w", err)
	}
	srv := &http.Server{Handler: e.AAD.Handler(), TLSConfig: tlsCfg, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.ServeTLS(aadLn, "", "") }()
	s.addCloser(func() { _ = srv.Close() })
	e.AADAuthorityHost = fmt.Sprintf("https://%s:%d/", APIServerIP, aadPort)

	e.Principal = e.AAD.CreateServicePrincipal(s.Azure.TenantID)
	e.Kubelet = s.Azure.CreateIdentity(SubscriptionID, NodeResourceGroup, "sandbox-agentpool")
	e.CloudConfig = s.path("azure.json")
	cloudConfig := fmt.Sprintf(`{"cloud":"AzurePublicCloud","tenantId":%q,"subscriptionId":%q,"resourceGroup":%q,"useManagedIdentityExtension":true,"userAssignedIdentityID":%q}`,
		s.Azure.TenantID, SubscriptionID, NodeResourceGroup, e.Kubelet.ClientID)
	if err := os.WriteFile(e.CloudConfig, []byte(cloudConfig), 0o600); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.hostAliases = map[string]string{armHost: APIServerIP.String()}
	s.mu.Unlock()
	return e, nil
}

func (s *Sandbox) addCloser(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closers = append(s.closers, f)
}
