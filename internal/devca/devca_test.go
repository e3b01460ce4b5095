package devca_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/fleetplane/fleetplane/internal/devca"
)

func TestOpenCreatesOnceAndReuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := devca.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.Issue("server", devca.LocalHosts)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(dir, devca.CAKeyFile), c.KeyFile} {
		st, err := os.Stat(f)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", f, st.Mode().Perm(), err)
		}
	}
	certBefore, _ := os.ReadFile(c.CertFile)

	again, err := devca.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.Bundle() != ca.Bundle() {
		t.Error("second Open made a new CA")
	}
	c2, err := again.Issue("server", []string{"localhost", "127.0.0.1", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	if certAfter, _ := os.ReadFile(c2.CertFile); string(certAfter) != string(certBefore) {
		t.Error("same hosts in another order re-issued the certificate")
	}
	// Other hosts: a new certificate.
	c3, err := again.Issue("server", []string{"hub-1", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if certAfter, _ := os.ReadFile(c3.CertFile); string(certAfter) == string(certBefore) {
		t.Error("new hosts did not re-issue the certificate")
	}
}

func TestBrokenCAIsReplaced(t *testing.T) {
	dir := t.TempDir()
	ca, err := devca.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, devca.CAKeyFile), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca2, err := devca.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ca2.Bundle() == ca.Bundle() {
		t.Error("a CA whose key is unreadable was kept")
	}
}

// TestHandshake: a TLS 1.3 server with the issued certificate is trusted by
// a client holding only the bundle, by IP and by name.
func TestHandshake(t *testing.T) {
	ca, err := devca.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.Issue("server", devca.LocalHosts)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.(*tls.Conn).Handshake()
			conn.Close()
		}
	}()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(ca.Bundle())) {
		t.Fatal("bundle is not PEM")
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	for _, name := range []string{"127.0.0.1", "localhost"} {
		conn, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", port), &tls.Config{RootCAs: roots, ServerName: name})
		if err != nil {
			t.Fatalf("dial as %s: %v", name, err)
		}
		if v := conn.ConnectionState().Version; v != tls.VersionTLS13 {
			t.Errorf("TLS version %x", v)
		}
		conn.Close()
	}
	if _, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "example.com"}); err == nil {
		t.Error("a name the certificate does not cover was accepted")
	}
}
