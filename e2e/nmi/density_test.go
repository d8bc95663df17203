//go:build e2e

package nmi_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// TestNMINodeDensity is the load generator behind `make bench-nmi-density`,
// not a timed test: 250 pods on NMI's node (AKS's maximum), 50 identities,
// and every pod asks for a token at once with NMI's cache cold. It prints
// the burst's latency, the IMDS calls it cost and NMI's RSS for
// docs/performance.md; it fails only if a pod is not served.
func TestNMINodeDensity(t *testing.T) {
	if !loadGenerator(t, "AADPI_NMI_DENSITY", "bench-nmi-density") {
		return
	}
	const pods, identities = 250, 50
	n := setupNode(t)
	ctx := t.Context()
	// The pods share pod-a's namespace, each with an address of its own:
	// NMI tells callers apart by source address only.
	podNS, err := testns.Open(n.pods["pod-a"].netns)
	if err != nil {
		t.Fatal(err)
	}
	defer podNS.Close()
	ips := make([]net.IP, pods)
	err = podNS.Do(func(ns.NetNS) error {
		for i := range ips {
			ips[i] = net.IPv4(10, 200, 0, byte(3+i))
			if err := testns.AddAddr("eth0", &net.IPNet{IP: ips[i], Mask: net.CIDRMask(32, 32)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	clientIDs := densityObjects(ctx, t, n, ips, identities)

	// NMI knows every pod once each refuses a client ID it was not admitted
	// for (no IMDS call).
	framework.Eventually(t, time.Minute, "every pod in NMI's cache", func() error {
		for _, ip := range []net.IP{ips[0], ips[pods-1]} {
			if err := checkStatusFrom(podNS, ip, tokenURL+"&client_id=00000000-0000-0000-0000-000000000000", http.StatusForbidden, "not admitted"); err != nil {
				return err
			}
		}
		return nil
	})

	before := n.imdsCalls.Load()
	lat := make([]time.Duration, pods)
	errs := make([]error, pods)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clientFrom(podNS, ips[i])
			<-start
			t0 := time.Now()
			errs[i] = get200(c, tokenURL+"&client_id="+clientIDs[i%identities])
			lat[i] = time.Since(t0)
		}()
	}
	burst := time.Now()
	close(start)
	wg.Wait()
	wall := time.Since(burst)
	failed := 0
	for i, err := range errs {
		if err != nil {
			failed++
			t.Errorf("pod %d (%s): %v", i, ips[i], err)
		}
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[int(float64(len(lat)-1)*p)].Round(100 * time.Microsecond) }
	t.Logf("%d pods, %d identities, one request each at once (cold cache): %d failed; burst %v; p50 %v, p99 %v, max %v; IMDS token calls %d (one per identity and resource would be %d); NMI RSS %s",
		pods, identities, failed, wall.Round(time.Millisecond), pct(0.5), pct(0.99), lat[len(lat)-1].Round(100*time.Microsecond), n.imdsCalls.Load()-before, identities, rss(t, n.nmi.Process.Pid))
}

// densityObjects creates the identities (on the pool, each with its binding
// and its assignment record) and a running pod per address, admitted for
// identity i mod len; it returns the identities' client IDs.
func densityObjects(ctx context.Context, t *testing.T, n *node, ips []net.IP, identities int) []string {
	t.Helper()
	clientIDs := make([]string, identities)
	for k := range identities {
		name := fmt.Sprintf("dens-%d", k)
		id := n.state.CreateIdentity("sub", "rg", name)
		if err := n.state.SetUserAssigned(n.pool.ID, id.ResourceID, true); err != nil {
			t.Fatal(err)
		}
		objs := []client.Object{
			&aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
				Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: id.ResourceID, ClientID: id.ClientID}},
			&aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
				Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: name, Selector: name}},
		}
		for _, o := range objs {
			if err := n.client.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		recordAssigned(ctx, t, n.client, n.pool, name, id)
		clientIDs[k] = id.ClientID
	}
	for i, ip := range ips {
		k := i % identities
		name := fmt.Sprintf("dens-%d", k)
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("dense-%d", i),
				Labels:      map[string]string{aadv1.BindingLabel: name},
				Annotations: map[string]string{aadv1.AnnotationIdentities: "default/" + name, aadv1.AnnotationClientIDs: clientIDs[k]}},
			Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c", Image: "demo"}}},
		}
		if err := n.client.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}}}
		if err := n.client.Status().Update(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	return clientIDs
}

// clientFrom sends requests from src inside podNS.
func clientFrom(podNS ns.NetNS, src net.IP) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := podNS.Do(func(ns.NetNS) error {
			var err error
			conn, err = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: src}}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableKeepAlives: true, DialContext: dial}}
}

func get200(c *http.Client, url string) error {
	status, body, err := getWith(c, url)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("%d %s", status, body)
	}
	return nil
}

func checkStatusFrom(podNS ns.NetNS, src net.IP, url string, status int, contains string) error {
	got, body, err := getWith(clientFrom(podNS, src), url)
	if err != nil {
		return err
	}
	if got != status || !strings.Contains(string(body), contains) {
		return fmt.Errorf("from %s: %d %s, want %d containing %q", src, got, body, status, contains)
	}
	return nil
}
