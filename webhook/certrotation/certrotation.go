// Package certrotation lets the webhook be its own certificate authority,
// for clusters without cert-manager. It is a package of its own so that the
// webhook package, and its tests, do not depend on cert-controller.
package certrotation

import (
	"errors"
	"fmt"
	"time"

	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// Config makes the webhook its own certificate authority: cert-controller
// keeps a CA and a serving certificate in a Secret and renews them before
// they expire, and the injector adds the CA to the webhook configurations'
// caBundle. The Secret is mounted as the certificate directory; the server
// reloads the files when the kubelet updates them.
type Config struct {
	// Secret holds ca.crt, ca.key, tls.crt and tls.key.
	Secret types.NamespacedName
	// ServiceName is the webhook Service in Secret.Namespace the
	// certificate is issued for.
	ServiceName string
	// WebhookConfigurationName names both the Mutating and the
	// ValidatingWebhookConfiguration whose caBundle is injected.
	WebhookConfigurationName string
	// CertDir, CertName and KeyName are where the mounted Secret appears.
	CertDir, CertName, KeyName string
	// Overlap is how long the CAs trusted before the Secret's CA are kept
	// in the caBundle beside it (0: DefaultOverlap).
	Overlap time.Duration
}

// Add adds the rotator to mgr. Every replica runs it: the
// rotator tolerates concurrent writers (updates conflict and retry), and the
// webhook manager has no leader election.
func Add(mgr manager.Manager, c Config) error {
	if c.Secret.Namespace == "" || c.Secret.Name == "" || c.ServiceName == "" || c.WebhookConfigurationName == "" {
		return errors.New("certificate rotation needs the secret namespace and name, the service name and the webhook configuration name")
	}
	dns := fmt.Sprintf("%s.%s.svc", c.ServiceName, c.Secret.Namespace)
	err := rotator.AddRotator(mgr, &rotator.CertRotator{
		SecretKey:      c.Secret,
		CertDir:        c.CertDir,
		CertName:       c.CertName,
		KeyName:        c.KeyName,
		CAName:         "aad-pod-identity-webhook-ca",
		CAOrganization: "aad-pod-identity",
		DNSName:        dns,
		ExtraDNSNames:  []string{dns + ".cluster.local"},
		IsReady:        make(chan struct{}),
		// No Webhooks: cert-controller would replace the caBundle, and
		// pods still serving the previous certificate would fail until the
		// kubelet delivers the new one. The injector merges instead.
	})
	if err != nil {
		return fmt.Errorf("adding certificate rotator: %w", err)
	}
	return addInjector(mgr, c)
}
