// Package mail sends the control plane's e-mails (the portal's
// confirmation, reset and invitation links): LogMailer for development
// (it logs every mail, link included), SMTPMailer for production
// (net/smtp with STARTTLS) and Capture for tests. Each implements
// controlplane.Mailer.
//
// It may import controlplane and the standard library; the domain does
// not import it, and only cmd/ wires a sender into the Service.
package mail

import (
	"context"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"sync"

	"github.com/fleetplane/fleetplane/controlplane"
)

// LogMailer is the development sender: it sends nothing and logs each
// mail whole (recipient, subject and text, so the link in it) at info.
type LogMailer struct{ logger *slog.Logger }

var _ controlplane.Mailer = (*LogMailer)(nil)

// NewLogMailer returns a LogMailer logging to logger (nil = slog.Default()).
func NewLogMailer(logger *slog.Logger) *LogMailer {
	if logger == nil {
		logger = slog.Default()
	}
	return &LogMailer{logger: logger}
}

// Send logs m.
func (l *LogMailer) Send(ctx context.Context, m controlplane.Mail) error {
	l.logger.InfoContext(ctx, "mail (not sent: log mailer)", "to", m.To, "subject", m.Subject, "text", m.Text)
	return nil
}

// Capture records the mails sent through it, for tests (and the
// browser test, which follows the links in them).
type Capture struct {
	mu      sync.Mutex
	mails   []controlplane.Mail
	taken   []bool        // by WaitFor
	changed chan struct{} // closed and replaced at each mail
}

var _ controlplane.Mailer = (*Capture)(nil)

// NewCapture returns an empty Capture.
func NewCapture() *Capture { return &Capture{changed: make(chan struct{})} }

// Send records m.
func (c *Capture) Send(_ context.Context, m controlplane.Mail) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mails = append(c.mails, m)
	c.taken = append(c.taken, false)
	close(c.changed)
	c.changed = make(chan struct{})
	return nil
}

// Mails returns every mail recorded so far, oldest first.
func (c *Capture) Mails() []controlplane.Mail {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]controlplane.Mail(nil), c.mails...)
}

// Last returns the newest mail to the address (compared without regard
// to case), or the zero Mail when there is none.
func (c *Capture) Last(to string) controlplane.Mail {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.mails) - 1; i >= 0; i-- {
		if strings.EqualFold(c.mails[i].To, to) {
			return c.mails[i]
		}
	}
	return controlplane.Mail{}
}

// WaitFor returns the oldest mail to the address (without regard to
// case) whose subject contains subjectContains and that no WaitFor has
// returned yet, waiting for it until ctx ends. Each mail is returned once,
// so a flow that mails the same kind twice waits for the second in turn.
func (c *Capture) WaitFor(ctx context.Context, to, subjectContains string) (controlplane.Mail, error) {
	for {
		c.mu.Lock()
		for i, m := range c.mails {
			if !c.taken[i] && strings.EqualFold(m.To, to) && strings.Contains(m.Subject, subjectContains) {
				c.taken[i] = true
				c.mu.Unlock()
				return m, nil
			}
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return controlplane.Mail{}, context.Cause(ctx)
		}
	}
}

var linkRe = regexp.MustCompile(`https?://\S+|/[a-z-]+\?\S+`)

// Link returns the first link in m's text to the portal page at path
// (e.g. "/confirm"), or "".
func Link(m controlplane.Mail, path string) string {
	for _, l := range linkRe.FindAllString(m.Text, -1) {
		if u, err := url.Parse(l); err == nil && u.Path == path {
			return l
		}
	}
	return ""
}

// Token returns the token query parameter of the first link in m's text
// to the page at path, or "".
func Token(m controlplane.Mail, path string) string {
	u, err := url.Parse(Link(m, path))
	if err != nil {
		return ""
	}
	return u.Query().Get("token")
}
