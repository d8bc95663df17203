package certrotation

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

func TestAddRejectsMissingNames(t *testing.T) {
	if err := Add(nil, Config{}); err == nil {
		t.Fatal("AddCertRotation with no names succeeded")
	}
}

// testCA returns a self-signed CA certificate in PEM that expires at notAfter.
func testCA(t testing.TB, name string, notAfter time.Time) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: notAfter.Add(-24 * time.Hour), NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func join(pems ...[]byte) []byte { return bytes.Join(pems, nil) }

func TestMergeBundle(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	year := now.AddDate(1, 0, 0)
	own, previous, other := testCA(t, "own", year), testCA(t, "previous", year), testCA(t, "other", year)
	expiredCA := testCA(t, "expired", now.Add(-time.Minute))
	garbage := []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
	for _, tc := range []struct {
		name      string
		current   []byte
		ca        []byte
		keepUntil time.Time
		want      []byte
		wantAdded bool
	}{
		{name: "empty bundle", current: nil, ca: own, keepUntil: now.Add(time.Minute), want: own, wantAdded: true},
		{name: "the previous CA is kept beside the new one", current: previous, ca: own, keepUntil: now.Add(time.Minute),
			want: join(own, previous), wantAdded: true},
		{name: "already trusted, within the overlap", current: join(own, previous, other), ca: own, keepUntil: now.Add(time.Minute),
			want: join(own, previous, other)},
		{name: "already trusted, not first (cainjector's order)", current: join(previous, own), ca: own, keepUntil: now.Add(time.Minute),
			want: join(own, previous)},
		{name: "overlap over: only the CA", current: join(own, previous), ca: own, keepUntil: now, want: own},
		{name: "expired and duplicate CAs dropped", current: join(previous, expiredCA, previous), ca: own, keepUntil: now.Add(time.Minute),
			want: join(own, previous), wantAdded: true},
		{name: "blocks that are not certificates dropped", current: join(garbage, previous), ca: own, keepUntil: now.Add(time.Minute),
			want: join(own, previous), wantAdded: true},
		{name: "a Secret CA that is no certificate changes nothing", current: previous, ca: garbage, keepUntil: now.Add(time.Minute),
			want: previous},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, added := mergeBundle(tc.current, tc.ca, tc.keepUntil, now)
			if !bytes.Equal(got, tc.want) || added != tc.wantAdded {
				t.Errorf("mergeBundle = %d bytes, added %t; want %d bytes, added %t", len(got), added, len(tc.want), tc.wantAdded)
			}
		})
	}
}
