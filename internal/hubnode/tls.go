package hubnode

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// TLSFiles names the PEM files of one TLS endpoint of a hub node.
type TLSFiles struct {
	CertFile string // certificate chain, leaf first
	KeyFile  string
	// CAFile verifies peers: the other nodes on routes and gateways, and
	// clients when Verify is set. "" = the system roots.
	CAFile string
	// Verify requires a certificate from the peer that CAFile verifies
	// (mutual TLS). Routes and gateways have no other authentication.
	Verify bool
}

// TLSConfig returns a TLS 1.3 configuration for f, usable on both sides of
// a connection (routes and gateways also dial out). The certificate and key
// are read again when their files change (checked at most once a second,
// on a handshake), so a renewed certificate serves new connections without
// a restart; a half-written renewal keeps the previous pair.
func (f TLSFiles) TLSConfig() (*tls.Config, error) {
	if f.CertFile == "" || f.KeyFile == "" {
		return nil, errors.New("hubnode: TLS needs cert_file and key_file")
	}
	r := &certReloader{certFile: f.CertFile, keyFile: f.KeyFile}
	if err := r.load(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Certificates is what nats-server shows in /varz (expiry);
		// the callbacks below take precedence and follow renewals.
		Certificates:         []tls.Certificate{*r.cert},
		GetCertificate:       func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.get(), nil },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return r.get(), nil },
	}
	if f.CAFile != "" {
		pool, err := LoadCertPool(f.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs, cfg.ClientCAs = pool, pool
	}
	if f.Verify {
		if f.CAFile == "" {
			return nil, errors.New("hubnode: TLS verify needs ca_file")
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// LoadCertPool reads a PEM bundle of CA certificates.
func LoadCertPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("hubnode: CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("hubnode: CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// VerifyChain checks that the certificate in certFile chains to a CA in
// caFile and is valid now: what a vehicle given caFile will check (except
// the host name, which depends on the URL it dials).
func VerifyChain(certFile, keyFile, caFile string) error {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("hubnode: %w", err)
	}
	pool, err := LoadCertPool(caFile)
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Errorf("hubnode: %w", err)
	}
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("hubnode: certificate %s does not verify against %s: %w", certFile, caFile, err)
	}
	return nil
}

// certReloader serves a certificate pair and reloads it when a file changes.
type certReloader struct {
	certFile, keyFile string

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     [2]fileStamp
	checkedAt time.Time
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func stampOf(path string) fileStamp {
	st, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{st.ModTime(), st.Size()}
}

func (r *certReloader) load() error {
	stamp := [2]fileStamp{stampOf(r.certFile), stampOf(r.keyFile)}
	pair, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("hubnode: TLS certificate %s / key %s: %w", r.certFile, r.keyFile, err)
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return fmt.Errorf("hubnode: TLS certificate %s: %w", r.certFile, err)
		}
	}
	r.cert, r.stamp = &pair, stamp
	return nil
}

func (r *certReloader) get() *tls.Certificate {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.checkedAt) >= time.Second {
		r.checkedAt = now
		if [2]fileStamp{stampOf(r.certFile), stampOf(r.keyFile)} != r.stamp {
			_ = r.load() // on error keep serving the previous pair; retried on a later handshake
		}
	}
	return r.cert
}
