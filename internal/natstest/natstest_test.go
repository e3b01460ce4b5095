package natstest_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
)

// selfSigned returns a server TLS config for 127.0.0.1 and a client config trusting it.
func selfSigned(t *testing.T) (srv, cli *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12},
		&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

func TestLeafOverTLS(t *testing.T) {
	t.Parallel()
	srvTLS, cliTLS := selfSigned(t)
	op := natstest.MustOperator(t)
	hub := natstest.RunOperatorServer(t, op, natstest.WithLeafTLS(srvTLS), natstest.WithJetStream(false))
	if u := natstest.LeafURL(t, hub); !strings.HasPrefix(u, "tls://127.0.0.1:") {
		t.Fatalf("LeafURL = %s", u)
	}
	sys := natstest.ConnectSystem(t, hub, op)
	tn := natstest.NewTenant(t, op, natsauth.AccountSpec{Name: "acme", TenantID: "acme", Limits: natsauth.Unlimited()})
	if d := tn.Push(t, sys); d <= 0 {
		t.Fatalf("push took %v", d)
	}
	v := tn.Vehicle(t, natsauth.VehicleIdentity{TenantID: "acme", Fleet: "f", Env: "prod", VehicleID: "V1"}, time.Time{})
	leaf := natstest.RunVehicleLeaf(t, hub, v, natstest.WithRemoteTLS(cliTLS))
	natstest.WaitLeafCount(t, hub, 1, 5*time.Second)
	natstest.WaitLeafCount(t, leaf, 1, time.Second)
}
