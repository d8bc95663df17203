//go:build integration

package webhook

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	certutil "k8s.io/client-go/util/cert"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func readyz(addr string) int {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// A webhook pod started before its certificate is issued waits unready,
// becomes ready once the files appear, and follows their rotation.
func TestReadyOnlyOnceCertificatesAreLoaded(t *testing.T) {
	certDir := t.TempDir()
	probe := freeAddr(t)
	_, port, _ := net.SplitHostPort(freeAddr(t))
	opts := Options{CertDir: certDir, CertName: "tls.crt", KeyName: "tls.key", MetricsAddr: "0", ProbeAddr: probe}
	if _, err := fmt.Sscan(port, &opts.Port); err != nil {
		t.Fatal(err)
	}

	_, cancel, done := runManager(t, opts)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})

	framework.Eventually(t, 30*time.Second, "probe endpoint serving", func() error {
		if readyz(probe) == 0 {
			return errors.New("no answer")
		}
		return nil
	})
	// Give the server a few certificate polls: it must stay unready.
	time.Sleep(2 * time.Second)
	if code := readyz(probe); code != http.StatusInternalServerError {
		t.Fatalf("/readyz without certificates = %d, want 500", code)
	}
	// And says why: the check names the missing file and who should write it.
	resp, err := http.Get("http://" + probe + "/readyz/webhook")
	if err != nil {
		t.Fatal(err)
	}
	why, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(why), filepath.Join(certDir, "tls.crt")) || !strings.Contains(string(why), "cert-manager") {
		t.Errorf("/readyz/webhook without certificates says %q, want the file and cert-manager named", why)
	}
	first := writeCert(t, certDir, "first.example")
	framework.Eventually(t, 30*time.Second, "/readyz 200 after certificates appear", func() error {
		if code := readyz(probe); code != http.StatusOK {
			return fmt.Errorf("/readyz %d", code)
		}
		return nil
	})

	// Rotation, as cert-manager does it: the files change in place and the
	// server presents the new certificate without a restart.
	serving := "127.0.0.1:" + port
	if got := servedCert(t, serving); !bytes.Equal(got, first) {
		t.Fatal("server does not present the certificate from --cert-dir")
	}
	second := writeCert(t, certDir, "second.example")
	framework.Eventually(t, 30*time.Second, "rotated certificate served", func() error {
		if !bytes.Equal(servedCert(t, serving), second) {
			return errors.New("the first certificate is still served")
		}
		return nil
	})
}

// On shutdown the webhook drains: for webhook.shutdownDrain it still answers,
// each answer closing its connection, and is unready; then it stops.
func TestShutdownDrains(t *testing.T) {
	certDir := t.TempDir()
	writeCert(t, certDir, "drain.example")
	probe := freeAddr(t)
	_, port, _ := net.SplitHostPort(freeAddr(t))
	opts := Options{CertDir: certDir, CertName: "tls.crt", KeyName: "tls.key", MetricsAddr: "0", ProbeAddr: probe, ShutdownDrain: 3 * time.Second}
	if _, err := fmt.Sscan(port, &opts.Port); err != nil {
		t.Fatal(err)
	}
	_, cancel, done := runManager(t, opts)
	defer cancel()
	serving := "https://127.0.0.1:" + port + MutatePodPath
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the test checks the connection, not the certificate
	// post sends a review and says whether the answer closed its connection.
	post := func() (closed bool, err error) {
		resp, err := client.Post(serving, "application/json", strings.NewReader("{}"))
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Close, nil
	}
	framework.Eventually(t, 30*time.Second, "webhook ready", func() error {
		if code := readyz(probe); code != http.StatusOK {
			return fmt.Errorf("/readyz %d", code)
		}
		return nil
	})
	if closed, err := post(); err != nil || closed {
		t.Fatalf("before the shutdown: %v, connection closed %t; want an answer on a kept connection", err, closed)
	}

	cancel()
	stopped := time.Now()
	framework.Eventually(t, 2*time.Second, "unready while draining", func() error {
		if code := readyz(probe); code != http.StatusInternalServerError {
			return fmt.Errorf("/readyz %d", code)
		}
		return nil
	})
	if closed, err := post(); err != nil || !closed {
		t.Fatalf("while draining: %v, connection closed %t; want an answer that closes its connection", err, closed)
	}
	if err := <-done; err != nil {
		t.Fatalf("manager: %v", err)
	}
	if took := time.Since(stopped); took < 2*time.Second {
		t.Errorf("the manager stopped %s after its context ended, before the 3 s drain", took)
	}
	if _, err := post(); err == nil {
		t.Error("the webhook still answers after the drain")
	}
}

// writeCert writes a fresh self-signed serving certificate and returns its DER.
func writeCert(t *testing.T, dir, host string) []byte {
	t.Helper()
	certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKey(host, []net.IP{net.ParseIP("127.0.0.1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Key first: the watcher reloads on the certificate's change.
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	certs, err := certutil.ParseCertsPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0].Raw
}

func servedCert(t *testing.T, addr string) []byte {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // the test compares the presented certificate itself
	if err != nil {
		return nil
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Raw
}
