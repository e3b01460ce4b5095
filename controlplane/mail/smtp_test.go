package mail_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"io"
	"math/big"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	fpmail "github.com/fleetplane/fleetplane/controlplane/mail"
)

// fakeSMTP is a minimal submission server: EHLO, STARTTLS (when offered),
// AUTH PLAIN, MAIL, RCPT, DATA, QUIT.
type fakeSMTP struct {
	ln         net.Listener
	tls        *tls.Config
	offerTLS   bool
	user, pass string

	mu  sync.Mutex
	got []received
}

type received struct {
	from, to string
	data     []byte
	tls      bool
	authed   bool
}

func startFakeSMTP(tb testing.TB, offerTLS bool, user, pass string) (*fakeSMTP, *x509.CertPool) {
	tb.Helper()
	cert, pool := selfSigned(tb)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	f := &fakeSMTP{ln: ln, tls: &tls.Config{Certificates: []tls.Certificate{cert}}, offerTLS: offerTLS, user: user, pass: pass}
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); f.serve(c) }()
		}
	}()
	return f, pool
}

func (f *fakeSMTP) serve(conn net.Conn) {
	defer func() { conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	tp := textproto.NewConn(conn)
	var r received
	tp.PrintfLine("220 fake ESMTP")
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			tp.PrintfLine("250-fake")
			if f.offerTLS && !r.tls {
				tp.PrintfLine("250-STARTTLS")
			}
			if f.user != "" && (r.tls || !f.offerTLS) {
				tp.PrintfLine("250-AUTH PLAIN")
			}
			tp.PrintfLine("250 8BITMIME")
		case "STARTTLS":
			tp.PrintfLine("220 go ahead")
			tc := tls.Server(conn, f.tls)
			if tc.Handshake() != nil {
				return
			}
			conn, tp, r.tls = tc, textproto.NewConn(tc), true
		case "AUTH":
			b, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(arg, "PLAIN "))
			if string(b) == "\x00"+f.user+"\x00"+f.pass {
				r.authed = true
				tp.PrintfLine("235 ok")
			} else {
				tp.PrintfLine("535 authentication failed")
			}
		case "MAIL":
			if f.user != "" && !r.authed {
				tp.PrintfLine("530 authentication required")
				continue
			}
			r.from, _, _ = strings.Cut(strings.TrimPrefix(arg, "FROM:<"), ">")
			tp.PrintfLine("250 ok")
		case "RCPT":
			r.to, _, _ = strings.Cut(strings.TrimPrefix(arg, "TO:<"), ">")
			tp.PrintfLine("250 ok")
		case "DATA":
			tp.PrintfLine("354 go on")
			r.data, err = tp.ReadDotBytes()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.got = append(f.got, r)
			f.mu.Unlock()
			tp.PrintfLine("250 queued")
		case "QUIT":
			tp.PrintfLine("221 bye")
			return
		default:
			tp.PrintfLine("500 unknown")
		}
	}
}

func (f *fakeSMTP) received() []received {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]received(nil), f.got...)
}

func selfSigned(tb testing.TB) (tls.Certificate, *x509.CertPool) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake smtp"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

var testMail = controlplane.Mail{To: "Ops@Acme.example", Subject: "Reset your Fleetplane password — now",
	Text: "Choose a new password here:\n\nhttps://fp.example/reset?token=fpt_abc_def\n\n.a line starting with a dot\n" +
		strings.Repeat("long line ", 20) + "\n"}

func TestSMTPStartTLSAndAuth(t *testing.T) {
	t.Parallel()
	srv, roots := startFakeSMTP(t, true, "fleetplane", "s3cret-pass")
	m, err := fpmail.NewSMTPMailer(fpmail.SMTPConfig{Addr: srv.ln.Addr().String(), From: "Fleetplane <noreply@fp.example>",
		Username: "fleetplane", Password: "s3cret-pass", TLSConfig: &tls.Config{RootCAs: roots}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Send(context.Background(), testMail); err != nil {
		t.Fatalf("Send: %v", err)
	}
	got := srv.received()
	if len(got) != 1 || !got[0].tls || !got[0].authed || got[0].from != "noreply@fp.example" || got[0].to != "Ops@Acme.example" {
		t.Fatalf("received %+v", got)
	}
	msg, err := mail.ReadMessage(strings.NewReader(string(got[0].data)))
	if err != nil {
		t.Fatal(err)
	}
	subject, err := new(mimeDecoder).DecodeHeader(msg.Header.Get("Subject"))
	if err != nil || subject != testMail.Subject {
		t.Errorf("Subject = %q, %v", subject, err)
	}
	if msg.Header.Get("From") != `"Fleetplane" <noreply@fp.example>` || msg.Header.Get("Message-Id") == "" ||
		msg.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Errorf("headers: %v", msg.Header)
	}
	body, err := io.ReadAll(quotedprintable.NewReader(msg.Body))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.ReplaceAll(string(body), "\r\n", "\n"); got != testMail.Text {
		t.Errorf("body = %q\nwant %q", got, testMail.Text)
	}

	// A wrong password fails, and the error does not carry it.
	bad, _ := fpmail.NewSMTPMailer(fpmail.SMTPConfig{Addr: srv.ln.Addr().String(), From: "noreply@fp.example",
		Username: "fleetplane", Password: "wrong-pass-123", TLSConfig: &tls.Config{RootCAs: roots}})
	err = bad.Send(context.Background(), testMail)
	if err == nil || strings.Contains(err.Error(), "wrong-pass-123") || strings.Contains(err.Error(), "token") {
		t.Fatalf("Send with a wrong password = %v", err)
	}
}

func TestSMTPRefusesPlaintextUnlessInsecure(t *testing.T) {
	t.Parallel()
	srv, _ := startFakeSMTP(t, false, "", "")
	cfg := fpmail.SMTPConfig{Addr: srv.ln.Addr().String(), From: "noreply@fp.example"}
	m, err := fpmail.NewSMTPMailer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Send(context.Background(), testMail); err == nil || !strings.Contains(err.Error(), "STARTTLS") {
		t.Fatalf("Send without STARTTLS = %v", err)
	}
	if n := len(srv.received()); n != 0 {
		t.Fatalf("%d mails went out in the clear", n)
	}
	cfg.Insecure = true
	m, _ = fpmail.NewSMTPMailer(cfg)
	if err := m.Send(context.Background(), testMail); err != nil {
		t.Fatalf("Send (insecure allowed) = %v", err)
	}
	if got := srv.received(); len(got) != 1 || got[0].tls {
		t.Fatalf("received %+v", got)
	}
}

func TestSMTPRejects(t *testing.T) {
	t.Parallel()
	for _, cfg := range []fpmail.SMTPConfig{
		{Addr: "smtp.example.com", From: "a@b.example"},
		{Addr: "smtp.example.com:587", From: "not an address"},
		{Addr: "smtp.example.com:587", From: "a@b.example", Password: "x"},
	} {
		if _, err := fpmail.NewSMTPMailer(cfg); err == nil {
			t.Errorf("NewSMTPMailer(%+v) accepted", cfg)
		}
	}
	srv, roots := startFakeSMTP(t, true, "", "")
	m, _ := fpmail.NewSMTPMailer(fpmail.SMTPConfig{Addr: srv.ln.Addr().String(), From: "a@b.example", TLSConfig: &tls.Config{RootCAs: roots}})
	for _, bad := range []controlplane.Mail{
		{To: "x@y.example", Subject: "hi\r\nBcc: victim@z.example", Text: "x"},
		{To: "x@y.example\r\nBcc: victim@z.example", Subject: "hi", Text: "x"},
		{To: "", Subject: "hi", Text: "x"},
	} {
		if err := m.Send(context.Background(), bad); err == nil {
			t.Errorf("Send(%q, %q) accepted", bad.To, bad.Subject)
		}
	}
	if n := len(srv.received()); n != 0 {
		t.Fatalf("%d bad mails went out", n)
	}

	// A server that never answers: the context ends the attempt.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.Copy(io.Discard, bufio.NewReader(c))
			c.Close()
		}
	}()
	slow, _ := fpmail.NewSMTPMailer(fpmail.SMTPConfig{Addr: ln.Addr().String(), From: "a@b.example"})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := slow.Send(ctx, testMail); err == nil {
		t.Fatal("Send to a silent server succeeded")
	}
}

type mimeDecoder = mime.WordDecoder
