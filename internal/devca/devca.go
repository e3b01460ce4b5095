// Package devca is a development certificate authority: it creates a CA
// and certificates for hub nodes under a directory once (keys 0600) and
// reuses them on later runs, so `fleetplane dev` serves its leafnode
// listener over TLS (tls://127.0.0.1:7422) and hands vehicles a stable CA
// bundle at enrollment. It is not for production: the CA key sits beside
// the certificates, unprotected but for its file mode.
//
// It imports the standard library only.
package devca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// File names inside the directory.
const (
	CAFile    = "ca.pem"
	CAKeyFile = "ca-key.pem"
)

// Validity of what the CA issues, and when a certificate is renewed.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	certValidity = 2 * 365 * 24 * time.Hour
	renewBefore  = 30 * 24 * time.Hour
)

// LocalHosts are the names a dev hub on loopback is reached by.
var LocalHosts = []string{"127.0.0.1", "::1", "localhost"}

// CA is a loaded development CA.
type CA struct {
	dir  string
	cert *x509.Certificate
	pem  []byte
	key  crypto.Signer
}

// Cert is an issued certificate's files.
type Cert struct {
	CertFile string
	KeyFile  string
}

// Open loads the CA in dir, creating dir and the CA when they do not exist
// or the CA is unusable (unreadable, expiring within 30 days).
func Open(dir string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devca: %w", err)
	}
	ca := &CA{dir: dir}
	if err := ca.load(); err == nil {
		return ca, nil
	}
	if err := ca.create(); err != nil {
		return nil, err
	}
	return ca, nil
}

// CAFile is the path of the CA certificate (the bundle vehicles trust).
func (ca *CA) CAFile() string { return filepath.Join(ca.dir, CAFile) }

// Bundle is the CA certificate in PEM.
func (ca *CA) Bundle() string { return string(ca.pem) }

// Certificate is the CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Issue returns name's certificate for hosts (IP addresses or DNS names),
// valid for both server and client authentication (routes dial out too):
// <dir>/<name>.pem and <name>-key.pem, reused when this CA signed them,
// they cover exactly hosts and they are valid for 30 more days; issued
// afresh otherwise.
func (ca *CA) Issue(name string, hosts []string) (Cert, error) {
	if name == "" || filepath.Base(name) != name || name == "ca" {
		return Cert{}, fmt.Errorf("devca: bad certificate name %q", name)
	}
	if len(hosts) == 0 {
		return Cert{}, errors.New("devca: a certificate needs at least one host")
	}
	c := Cert{CertFile: filepath.Join(ca.dir, name+".pem"), KeyFile: filepath.Join(ca.dir, name+"-key.pem")}
	if ca.reusable(c, hosts) {
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Cert{}, fmt.Errorf("devca: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{"Fleetplane development"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := ca.sign(tmpl, key.Public(), certValidity)
	if err != nil {
		return Cert{}, err
	}
	if err := writeKey(c.KeyFile, key); err != nil {
		return Cert{}, err
	}
	if err := writeAtomic(c.CertFile, pemBlock("CERTIFICATE", der), 0o644); err != nil {
		return Cert{}, err
	}
	return c, nil
}

func (ca *CA) load() error {
	certPEM, err := os.ReadFile(filepath.Join(ca.dir, CAFile))
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(filepath.Join(ca.dir, CAKeyFile))
	if err != nil {
		return err
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return err
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return errors.New("devca: CA key is not PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return err
	}
	signer, ok := k.(crypto.Signer)
	if !ok || !publicKeysEqual(signer.Public(), cert.PublicKey) {
		return errors.New("devca: CA key does not match the certificate")
	}
	if !cert.IsCA || time.Until(cert.NotAfter) < renewBefore {
		return errors.New("devca: CA certificate unusable or expiring")
	}
	ca.cert, ca.pem, ca.key = cert, certPEM, signer
	return nil
}

func (ca *CA) create() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("devca: %w", err)
	}
	serial, err := randSerial()
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Fleetplane development CA", Organization: []string{"Fleetplane development"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("devca: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("devca: %w", err)
	}
	// Key first: a certificate without its key would be reloaded as unusable.
	if err := writeKey(filepath.Join(ca.dir, CAKeyFile), key); err != nil {
		return err
	}
	certPEM := pemBlock("CERTIFICATE", der)
	if err := writeAtomic(filepath.Join(ca.dir, CAFile), certPEM, 0o644); err != nil {
		return err
	}
	ca.cert, ca.pem, ca.key = cert, certPEM, key
	return nil
}

func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey, validity time.Duration) ([]byte, error) {
	serial, err := randSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(validity)
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("devca: %w", err)
	}
	return der, nil
}

// reusable reports whether c's files hold a key pair this CA signed for
// exactly hosts, valid for at least renewBefore.
func (ca *CA) reusable(c Cert, hosts []string) bool {
	certPEM, err := os.ReadFile(c.CertFile)
	if err != nil {
		return false
	}
	keyPEM, err := os.ReadFile(c.KeyFile)
	if err != nil {
		return false
	}
	cert, err := parseCert(certPEM)
	if err != nil || time.Until(cert.NotAfter) < renewBefore {
		return false
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return false
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if s, ok := k.(crypto.Signer); err != nil || !ok || !publicKeysEqual(s.Public(), cert.PublicKey) {
		return false
	}
	if cert.CheckSignatureFrom(ca.cert) != nil {
		return false
	}
	var have []string
	for _, ip := range cert.IPAddresses {
		have = append(have, ip.String())
	}
	have = append(have, cert.DNSNames...)
	var want []string
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			h = ip.String()
		}
		want = append(want, h)
	}
	slices.Sort(have)
	slices.Sort(want)
	return slices.Equal(have, slices.Compact(want))
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("devca: not a PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

func randSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("devca: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("devca: %w", err)
	}
	return writeAtomic(path, pemBlock("PRIVATE KEY", der), 0o600)
}

// writeAtomic writes through a temporary file and a rename, so a reader
// (or a second dev run) never sees half a file.
func writeAtomic(path string, b []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("devca: %w", err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("devca: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("devca: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("devca: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("devca: %w", err)
	}
	return nil
}
