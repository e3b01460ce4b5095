package mail

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/smtp"
	"strings"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
)

// SMTPConfig configures an SMTPMailer.
type SMTPConfig struct {
	// Addr is the submission server, host:port (e.g. smtp.example.com:587).
	Addr string
	// From is the sender, an address with an optional name
	// ("Fleetplane <noreply@fleetplane.example.com>").
	From string
	// Username and Password authenticate with AUTH PLAIN when Username is
	// set; net/smtp sends them only over TLS (or to localhost).
	Username string
	Password string
	// Insecure lets mail go out without STARTTLS when the server does not
	// offer it (a relay on localhost, a development mail catcher). By
	// default such a server is refused.
	Insecure bool
	// TLSConfig is the STARTTLS client configuration (nil = system roots,
	// ServerName from Addr, TLS 1.2 or later).
	TLSConfig *tls.Config
	// Timeout bounds one mail, connection to QUIT (default 30 s).
	Timeout time.Duration
}

// DefaultSMTPTimeout is SMTPConfig.Timeout's default.
const DefaultSMTPTimeout = 30 * time.Second

// SMTPMailer sends each mail over a new SMTP connection, upgraded with
// STARTTLS. It never logs, and its errors carry neither the text nor the
// password.
type SMTPMailer struct {
	cfg  SMTPConfig
	host string
	from *mail.Address
}

var _ controlplane.Mailer = (*SMTPMailer)(nil)

// NewSMTPMailer checks cfg and returns a mailer.
func NewSMTPMailer(cfg SMTPConfig) (*SMTPMailer, error) {
	host, _, err := net.SplitHostPort(cfg.Addr)
	if err != nil || host == "" {
		return nil, fmt.Errorf("mail: SMTP address %q: want host:port", cfg.Addr)
	}
	from, err := mail.ParseAddress(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("mail: from address %q: %w", cfg.From, err)
	}
	if cfg.Password != "" && cfg.Username == "" {
		return nil, errors.New("mail: an SMTP password needs a username")
	}
	cfg.Timeout = cmp.Or(cfg.Timeout, DefaultSMTPTimeout)
	return &SMTPMailer{cfg: cfg, host: host, from: from}, nil
}

// Send delivers m to its one recipient.
func (s *SMTPMailer) Send(ctx context.Context, m controlplane.Mail) error {
	to, err := mail.ParseAddress(m.To)
	if err != nil {
		return fmt.Errorf("mail: recipient %q: %w", m.To, err)
	}
	msg, err := s.compose(to, m, time.Now())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	if err := s.deliver(ctx, to.Address, msg); err != nil {
		return fmt.Errorf("mail: sending %q to %s through %s: %w", m.Subject, to.Address, s.cfg.Addr, err)
	}
	return nil
}

func (s *SMTPMailer) deliver(ctx context.Context, to string, msg []byte) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	// The deadline bounds every exchange; cancelling ctx ends them at once.
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	c, err := smtp.NewClient(conn, s.host)
	if err != nil {
		return err
	}
	defer c.Close()
	if ok, _ := c.Extension("STARTTLS"); ok {
		tc := &tls.Config{ServerName: s.host, MinVersion: tls.VersionTLS12}
		if s.cfg.TLSConfig != nil {
			tc = s.cfg.TLSConfig.Clone()
			if tc.ServerName == "" {
				tc.ServerName = s.host
			}
		}
		if err := c.StartTLS(tc); err != nil {
			return fmt.Errorf("STARTTLS: %w", err)
		}
	} else if !s.cfg.Insecure {
		return errors.New("the server does not offer STARTTLS (set Insecure to send in the clear)")
	}
	if s.cfg.Username != "" {
		if err := c.Auth(smtp.PlainAuth("", s.cfg.Username, s.cfg.Password, s.host)); err != nil {
			return fmt.Errorf("authenticating as %s: %w", s.cfg.Username, err)
		}
	}
	if err := c.Mail(s.from.Address); err != nil {
		return err
	}
	if err := c.Rcpt(to); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// compose renders m as a plain-text, quoted-printable RFC 5322 message.
func (s *SMTPMailer) compose(to *mail.Address, m controlplane.Mail, now time.Time) ([]byte, error) {
	if strings.ContainsAny(m.Subject, "\r\n") {
		return nil, errors.New("mail: the subject contains a line break")
	}
	domain := s.from.Address[strings.LastIndexByte(s.from.Address, '@')+1:]
	var b bytes.Buffer
	header := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	header("From", s.from.String())
	header("To", to.String())
	header("Subject", mime.QEncoding.Encode("utf-8", m.Subject))
	header("Date", now.Format(time.RFC1123Z))
	header("Message-ID", "<"+rand.Text()+"@"+domain+">")
	header("MIME-Version", "1.0")
	header("Content-Type", "text/plain; charset=utf-8")
	header("Content-Transfer-Encoding", "quoted-printable")
	b.WriteString("\r\n")
	qp := quotedprintable.NewWriter(&b)
	if _, err := qp.Write([]byte(m.Text)); err != nil {
		return nil, err
	}
	if err := qp.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
