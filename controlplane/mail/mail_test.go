package mail_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/controlplane"
	fpmail "github.com/fleetplane/fleetplane/controlplane/mail"
)

func TestLogMailerLogsTheLink(t *testing.T) {
	var buf bytes.Buffer
	m := fpmail.NewLogMailer(slog.New(slog.NewTextHandler(&buf, nil)))
	if err := m.Send(context.Background(), testMail); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"level=INFO", "Ops@Acme.example", "Reset your Fleetplane password", "reset?token=fpt_abc_def"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log %q lacks %q", buf.String(), want)
		}
	}
}

func TestCapture(t *testing.T) {
	c := fpmail.NewCapture()
	ctx := context.Background()
	if (c.Last("a@x.example") != controlplane.Mail{}) {
		t.Fatal("Last on an empty capture")
	}
	first := controlplane.Mail{To: "a@x.example", Subject: "Confirm your account", Text: "Go to\n\nhttps://fp.example/confirm?token=fpt_one\n"}
	_ = c.Send(ctx, first)
	got, err := c.WaitFor(ctx, "A@X.example", "Confirm")
	if err != nil || got != first {
		t.Fatalf("WaitFor = %+v, %v", got, err)
	}
	if tok := fpmail.Token(got, "/confirm"); tok != "fpt_one" {
		t.Errorf("Token = %q", tok)
	}
	if fpmail.Token(got, "/reset") != "" || fpmail.Link(got, "/confirm") != "https://fp.example/confirm?token=fpt_one" {
		t.Errorf("Link/Token of another page")
	}
	relative := controlplane.Mail{Text: "Here: /reset?token=fpt_rel\n"}
	if tok := fpmail.Token(relative, "/reset"); tok != "fpt_rel" {
		t.Errorf("Token(relative) = %q", tok)
	}

	// A mail is returned once: the next WaitFor waits for the next one.
	second := controlplane.Mail{To: "a@x.example", Subject: "Confirm your account", Text: "again"}
	go func() {
		time.Sleep(20 * time.Millisecond)
		_ = c.Send(ctx, controlplane.Mail{To: "b@x.example", Subject: "Confirm your account"})
		_ = c.Send(ctx, second)
	}()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if got, err := c.WaitFor(wctx, "a@x.example", "Confirm"); err != nil || got != second {
		t.Fatalf("second WaitFor = %+v, %v", got, err)
	}
	if c.Last("a@x.example") != second || len(c.Mails()) != 3 {
		t.Errorf("Last = %+v, %d mails", c.Last("a@x.example"), len(c.Mails()))
	}
	short, cancel2 := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel2()
	if _, err := c.WaitFor(short, "a@x.example", "Confirm"); err == nil {
		t.Fatal("WaitFor returned a mail twice")
	}
}
