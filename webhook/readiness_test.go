package webhook

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
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

// A webhook pod started before its certificate is issued waits unready, and
// becomes ready once the files appear.
func TestReadyOnlyOnceCertificatesAreLoaded(t *testing.T) {
	certDir := t.TempDir()
	probe := freeAddr(t)
	_, port, _ := net.SplitHostPort(freeAddr(t))
	opts := Options{CertDir: certDir, CertName: "tls.crt", KeyName: "tls.key", MetricsAddr: "0", ProbeAddr: probe}
	if _, err := fmt.Sscan(port, &opts.Port); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	mgr, err := NewManager(ctx, cfg, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	eventually(t, "probe endpoint serving", func() bool { return readyz(probe) != 0 })
	// Give the server a few certificate polls: it must stay unready.
	time.Sleep(2 * time.Second)
	if code := readyz(probe); code != http.StatusInternalServerError {
		t.Fatalf("/readyz without certificates = %d, want 500", code)
	}
	for _, name := range []string{"tls.crt", "tls.key"} {
		b, err := os.ReadFile(filepath.Join(testEnv.WebhookInstallOptions.LocalServingCertDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(certDir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "/readyz 200 after certificates appear", func() bool { return readyz(probe) == http.StatusOK })
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
