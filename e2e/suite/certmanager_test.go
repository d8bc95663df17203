//go:build e2e

package suite

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/e2e/sandbox"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// The chart's cert-manager objects (templates/certificates.yaml).
const (
	webhookName       = release + "-webhook"
	servingCert       = webhookName
	servingSecret     = webhookName + "-tls"
	caCert            = webhookName + "-ca"
	webhookConfigName = release
)

// TestCertManager: the chart's default install, cert-manager issuing the
// webhook's certificate and cainjector injecting its CA, proven on the
// real nodes with cert-manager built from its module.
func TestCertManager(t *testing.T) {
	started(t)
	runInstalled(t, []suiteCase{
		{"serving certificate chains to the Issuer's CA, caBundle injected by cainjector", testIssuedAndInjected},
		{"forced renewal while pods are admitted", testForcedRenewal},
		{"helm upgrade to the built-in certificates and back while pods are admitted", testSwitchCertificates},
		{"cert-manager down at install", testCertManagerDown},
	})
}

// testIssuedAndInjected: every webhook pod serves the Secret cert-manager
// issued, that certificate chains to the CA Issuer's CA for the Service's
// name, and both webhook configurations trust that CA, written by
// cainjector and by no one else.
func testIssuedAndInjected(t *testing.T) {
	c := cmClient(t)
	crt := readyCertificate(t, c, servingCert)
	if crt.Spec.IssuerRef.Name != caCert || crt.Spec.IssuerRef.Kind != cmapi.IssuerKind {
		t.Errorf("serving Certificate issued by %s %s, want the chart's CA Issuer %s", crt.Spec.IssuerRef.Kind, crt.Spec.IssuerRef.Name, caCert)
	}
	ca := secretData(t, c, caCert, "ca.crt")
	leaf := secretData(t, c, servingSecret, corev1.TLSCertKey)
	verifyChain(t, leaf, ca)
	for _, pod := range webhookPods(t, c) {
		if served := servedBy(t, pod); !bytes.Equal(served, firstDER(t, leaf)) {
			t.Errorf("webhook pod %s does not serve the issued certificate", pod.Name)
		}
	}
	// cainjector follows the CA Secret: after a switch it may take a moment.
	framework.Eventually(t, time.Minute, "both webhook configurations trust the Issuer's CA, injected by cainjector", func() error {
		for _, obj := range []client.Object{&admissionregistrationv1.MutatingWebhookConfiguration{}, &admissionregistrationv1.ValidatingWebhookConfiguration{}} {
			if err := c.Get(t.Context(), client.ObjectKey{Name: webhookConfigName}, obj); err != nil {
				return err
			}
			bundles, writers := caBundles(obj)
			for _, b := range bundles {
				// cainjector merges (its CAInjectorMerging feature): the CAs
				// injected before stay until they expire.
				if !slices.ContainsFunc(certificates(b), func(c *x509.Certificate) bool { return bytes.Equal(c.Raw, firstDER(t, ca)) }) {
					return fmt.Errorf("%T: a caBundle (%s) lacks the Issuer's CA (%s); caBundle writers %v", obj, subjects(b), subjects(ca), writers)
				}
			}
			if len(writers) != 1 || !strings.Contains(writers[0], "cainjector") {
				return fmt.Errorf("%T: caBundle written by %v, want cert-manager's cainjector alone", obj, writers)
			}
		}
		return nil
	})
}

// testForcedRenewal: a renewal forced as `cmctl renew` does it (the
// Issuing condition) while labelled pods are admitted all along: a new
// Secret, served by the running webhook pods without a restart, and not
// one admission fails.
func testForcedRenewal(t *testing.T) {
	c := cmClient(t)
	before := secretData(t, c, servingSecret, corev1.TLSCertKey)
	restarts := webhookRestarts(t, c)
	admissions := admitContinuously(t, "e2e-renewal")

	crt := readyCertificate(t, c, servingCert)
	crt.Status.Conditions = append(crt.Status.Conditions, cmapi.CertificateCondition{
		Type: cmapi.CertificateConditionIssuing, Status: cmmeta.ConditionTrue, Reason: "ManuallyTriggered",
		Message: "Certificate re-issuance manually triggered", LastTransitionTime: ptr.To(metav1.Now()), ObservedGeneration: crt.Generation,
	})
	if err := c.Status().Update(t.Context(), crt); err != nil {
		t.Fatalf("triggering the renewal: %v", err)
	}
	var after []byte
	framework.Eventually(t, 2*time.Minute, "a new serving certificate in the Secret", func() error {
		after = secretData(t, c, servingSecret, corev1.TLSCertKey)
		if bytes.Equal(after, before) {
			return errors.New("the Secret still holds the old certificate")
		}
		return nil
	})
	framework.Eventually(t, 2*time.Minute, "every webhook pod serving the renewed certificate", func() error {
		for _, pod := range webhookPods(t, c) {
			if !bytes.Equal(servedBy(t, pod), firstDER(t, after)) {
				return fmt.Errorf("%s serves the old certificate", pod.Name)
			}
		}
		return nil
	})
	readyCertificate(t, c, servingCert)
	n, failed := admissions()
	t.Logf("%d admissions during the renewal", n)
	if len(failed) > 0 {
		t.Errorf("%d of %d admissions failed, first: %s", len(failed), n, failed[0])
	}
	if got := webhookRestarts(t, c); got != restarts {
		t.Errorf("webhook containers restarted %d times during the renewal", got-restarts)
	}
}

// testSwitchCertificates: helm upgrade from cert-manager's certificates to
// the built-in ones and back, labelled pods admitted throughout. Each switch
// converges (the webhook serves the new mode's certificate, the caBundle
// trusts its CA) without a failed admission: cainjector and the built-in
// injector both add the new CA beside the one the old pods still serve from.
func testSwitchCertificates(t *testing.T) {
	for _, certManager := range []bool{false, true} {
		admissions := admitContinuously(t, fmt.Sprintf("e2e-switch-%t", certManager))
		start := time.Now()
		if err := helmRelease("upgrade", "--set", fmt.Sprintf("certManager.enabled=%t", certManager)); err != nil {
			t.Fatal(err)
		}
		framework.Eventually(t, 3*time.Minute, "admissions succeed again", func() error {
			for range 10 {
				if why := admit(demoPod{Name: "e2e-switch-probe", Labels: map[string]string{aadv1.BindingLabel: fmt.Sprintf("e2e-switch-%t", certManager)}}.object()); why != "" {
					return errors.New(why)
				}
			}
			return nil
		})
		n, failed := admissions()
		t.Logf("certManager.enabled=%t: converged %s after helm upgrade started; %d of %d admissions failed meanwhile", certManager, time.Since(start).Round(time.Second), len(failed), n)
		if len(failed) > 0 {
			t.Errorf("certManager.enabled=%t: %d of %d admissions failed during the switch, first: %s", certManager, len(failed), n, failed[0])
		}
	}
	testIssuedAndInjected(t)
}

// testCertManagerDown: installed while cert-manager is down, the webhook
// stays unready and says why, labelled pods are refused with the reason,
// and all converges once cert-manager is back.
func testCertManagerDown(t *testing.T) {
	if err := helmUninstall(); err != nil {
		t.Fatal(err)
	}
	scaleCertManager(t, 0)
	t.Cleanup(func() { scaleCertManager(t, 1) })
	// Waiting for hooks only: the webhook cannot become ready.
	if err := helmRelease("install", "--wait=hookOnly"); err != nil {
		t.Fatal(err)
	}
	env.installed = true
	c := cmClient(t)
	framework.Eventually(t, time.Minute, "webhook pods running, unready", func() error {
		pods := webhookPods(t, c)
		if len(pods) == 0 {
			return errors.New("no webhook pod running yet")
		}
		for _, p := range pods {
			if podReady(p) {
				return fmt.Errorf("%s is ready without a certificate", p.Name)
			}
		}
		return nil
	})
	framework.Eventually(t, time.Minute, "the webhook's log says why it is unready", func() error {
		out, err := kubectlIn("-n", releaseNS, "logs", "deployment/"+webhookName, "--tail=50")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "waiting for the serving certificate") || !strings.Contains(out, "cert-manager") {
			return fmt.Errorf("it does not:\n%s", out)
		}
		return nil
	})
	labelled := demoPod{Name: "refused-no-cert", Labels: map[string]string{aadv1.BindingLabel: "anything"}}.object()
	_, err := env.client.CoreV1().Pods("default").Create(t.Context(), labelled, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err == nil || !strings.Contains(err.Error(), "failed calling webhook") {
		t.Errorf("labelled pod with no webhook ready: %v, want the API server's refusal naming the webhook", err)
	}

	back := time.Now()
	scaleCertManager(t, 1)
	framework.Eventually(t, 3*time.Minute, "webhook ready once cert-manager is back", func() error {
		for _, p := range webhookPods(t, c) {
			if !podReady(p) {
				return fmt.Errorf("%s not ready", p.Name)
			}
		}
		return nil
	})
	t.Logf("webhook ready %s after cert-manager came back", time.Since(back).Round(time.Second))
	if _, err := kubectlIn("-n", releaseNS, "rollout", "status", "deployment/"+webhookName, "--timeout=2m"); err != nil {
		t.Fatal(err)
	}
	testIssuedAndInjected(t)
	admissions := admitContinuously(t, "e2e-converged")
	time.Sleep(3 * time.Second)
	if n, failed := admissions(); len(failed) > 0 {
		t.Errorf("%d of %d admissions failed after convergence, first: %s", len(failed), n, failed[0])
	}
}

// cmClient is a client for cert-manager's and Kubernetes' types.
func cmClient(t testing.TB) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(cmapi.AddToScheme(scheme))
	c, err := client.New(env.sb.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// readyCertificate waits for a Certificate of the release to be Ready.
func readyCertificate(t *testing.T, c client.Client, name string) *cmapi.Certificate {
	t.Helper()
	crt := &cmapi.Certificate{}
	framework.Eventually(t, 2*time.Minute, "Certificate "+name+" Ready", func() error {
		if err := c.Get(t.Context(), client.ObjectKey{Namespace: releaseNS, Name: name}, crt); err != nil {
			return err
		}
		for _, cond := range crt.Status.Conditions {
			if cond.Type == cmapi.CertificateConditionReady {
				if cond.Status == cmmeta.ConditionTrue && cond.ObservedGeneration == crt.Generation {
					return nil
				}
				return fmt.Errorf("Ready %s: %s", cond.Status, cond.Message)
			}
		}
		return errors.New("no Ready condition")
	})
	return crt
}

func secretData(t *testing.T, c client.Client, name, key string) []byte {
	t.Helper()
	s := &corev1.Secret{}
	if err := c.Get(t.Context(), client.ObjectKey{Namespace: releaseNS, Name: name}, s); err != nil {
		t.Fatal(err)
	}
	if len(s.Data[key]) == 0 {
		t.Fatalf("Secret %s has no %s", name, key)
	}
	return s.Data[key]
}

// verifyChain checks the leaf PEM chains to ca for the webhook Service's name.
func verifyChain(t *testing.T, leaf, ca []byte) {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		t.Fatal("the CA Secret's ca.crt holds no certificate")
	}
	cert, err := x509.ParseCertificate(firstDER(t, leaf))
	if err != nil {
		t.Fatal(err)
	}
	dns := webhookName + "." + releaseNS + ".svc"
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: dns}); err != nil {
		t.Errorf("the serving certificate does not chain to the Issuer's CA for %s: %v", dns, err)
	}
}

// certificates parses a PEM bundle.
func certificates(bundle []byte) []*x509.Certificate {
	var certs []*x509.Certificate
	for b, rest := pem.Decode(bundle); b != nil; b, rest = pem.Decode(rest) {
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			certs = append(certs, c)
		}
	}
	return certs
}

// subjects names the certificates of a PEM bundle, for messages.
func subjects(bundle []byte) string {
	var names []string
	for _, c := range certificates(bundle) {
		names = append(names, c.Subject.CommonName+" "+c.NotBefore.Format(time.TimeOnly))
	}
	return strings.Join(names, ", ")
}

func firstDER(t *testing.T, chain []byte) []byte {
	t.Helper()
	b, _ := pem.Decode(chain)
	if b == nil {
		t.Fatal("no PEM certificate")
	}
	return b.Bytes
}

// webhookPods lists the running webhook pods.
func webhookPods(t testing.TB, c client.Client) []corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	if err := c.List(t.Context(), &pods, client.InNamespace(releaseNS), client.MatchingLabels{"app.kubernetes.io/component": "webhook"}); err != nil {
		t.Fatal(err)
	}
	var running []corev1.Pod
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil && p.Status.PodIP != "" {
			running = append(running, p)
		}
	}
	return running
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func webhookRestarts(t *testing.T, c client.Client) int32 {
	t.Helper()
	var n int32
	for _, p := range webhookPods(t, c) {
		for _, s := range p.Status.ContainerStatuses {
			n += s.RestartCount
		}
	}
	return n
}

// servedBy returns the certificate a webhook pod presents, read over TLS
// from its node's network namespace.
func servedBy(t *testing.T, pod corev1.Pod) []byte {
	t.Helper()
	var n *sandbox.Node
	for _, node := range env.sb.Nodes() {
		if node.Name == pod.Spec.NodeName {
			n = node
		}
	}
	if n == nil {
		t.Fatalf("webhook pod %s on unknown node %q", pod.Name, pod.Spec.NodeName)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	raw, err := testns.Dial(ctx, nodeNetNS(t, n), "tcp", net.JoinHostPort(pod.Status.PodIP, "9443"))
	if err != nil {
		t.Fatalf("dialling webhook pod %s: %v", pod.Name, err)
	}
	// The chain is verified against the CA separately; here only what is served.
	conn := tls.Client(raw, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec
	defer conn.Close()
	if err := conn.HandshakeContext(ctx); err != nil {
		t.Fatalf("TLS to webhook pod %s: %v", pod.Name, err)
	}
	return conn.ConnectionState().PeerCertificates[0].Raw
}

// caBundles returns a webhook configuration's caBundles and the field
// managers that own any of them.
func caBundles(obj client.Object) (bundles [][]byte, writers []string) {
	switch o := obj.(type) {
	case *admissionregistrationv1.MutatingWebhookConfiguration:
		for _, w := range o.Webhooks {
			bundles = append(bundles, w.ClientConfig.CABundle)
		}
	case *admissionregistrationv1.ValidatingWebhookConfiguration:
		for _, w := range o.Webhooks {
			bundles = append(bundles, w.ClientConfig.CABundle)
		}
	}
	for _, mf := range obj.GetManagedFields() {
		if mf.FieldsV1 != nil && strings.Contains(mf.FieldsV1.GetRawString(), `"f:caBundle"`) {
			writers = append(writers, mf.Manager)
		}
	}
	return bundles, writers
}

// admitContinuously creates (dry-run: admitted, never stored) a pod
// labelled for a bound identity every 100 ms until the returned function is
// called, which returns how many were tried and why any failed: an error,
// or a pod the webhook did not annotate.
func admitContinuously(t *testing.T, name string) func() (int, []string) {
	t.Helper()
	userIdentity(t, name, name)
	pod := demoPod{Name: name, Labels: map[string]string{aadv1.BindingLabel: name}}.object()
	var (
		n      atomic.Int64
		mu     sync.Mutex
		failed []string
		wg     sync.WaitGroup
	)
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for tick := time.NewTicker(100 * time.Millisecond); ; {
			select {
			case <-stop:
				tick.Stop()
				return
			case <-tick.C:
			}
			n.Add(1)
			why := admit(pod)
			if why != "" {
				mu.Lock()
				failed = append(failed, time.Now().Format(time.TimeOnly)+" "+why)
				mu.Unlock()
			}
		}
	}()
	var once sync.Once
	done := func() (int, []string) {
		once.Do(func() { close(stop); wg.Wait() })
		mu.Lock()
		defer mu.Unlock()
		return int(n.Load()), failed
	}
	t.Cleanup(func() { done() })
	return done
}

// admit creates a labelled pod in dry-run and says why it was not admitted
// for its identity ("" when it was).
func admit(pod *corev1.Pod) string {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	got, err := env.client.CoreV1().Pods(pod.Namespace).Create(ctx, pod.DeepCopy(), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	switch {
	case err != nil:
		return err.Error()
	case got.Annotations[aadv1.AnnotationIdentities] == "":
		return "admitted without the identity annotation"
	}
	return ""
}

// scaleCertManager scales cert-manager's controller and cainjector.
func scaleCertManager(t *testing.T, replicas int) {
	t.Helper()
	for _, d := range []string{"cert-manager", "cert-manager-cainjector"} {
		kubectl(t, "-n", sandbox.CertManagerNamespace, "scale", "deployment/"+d, fmt.Sprintf("--replicas=%d", replicas))
		if replicas > 0 {
			kubectl(t, "-n", sandbox.CertManagerNamespace, "rollout", "status", "deployment/"+d, "--timeout=2m")
		}
	}
}
