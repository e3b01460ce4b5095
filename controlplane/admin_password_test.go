package controlplane_test

import (
	"context"
	"testing"

	"github.com/fleetplane/fleetplane/controlplane"
)

func TestAdminSetPassword(t *testing.T) {
	t.Parallel()
	svc, _ := planService(t)
	ctx, _ := planTenant(t, svc, "Acme")
	bg := context.Background()
	old, err := svc.Login(bg, "acme@example.com", "correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.AdminSetPassword(bg, "ACME@example.com", "a new long password"); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Login(bg, "acme@example.com", "a new long password"); err != nil {
		t.Fatalf("login with the new password: %v", err)
	}
	_, err = svc.Login(bg, "acme@example.com", "correct horse battery")
	WantCode(t, err, controlplane.EUNAUTHORIZED)
	_, _, err = svc.SessionAuth(bg, old.Token)
	WantCode(t, err, controlplane.EUNAUTHORIZED) // sessions ended

	WantCode(t, svc.AdminSetPassword(bg, "nobody@example.com", "a new long password"), controlplane.ENOTFOUND)
	WantCode(t, svc.AdminSetPassword(bg, "acme@example.com", "short"), controlplane.EINVALID)
	WantCode(t, svc.AdminSetPassword(bg, "not an address", "a new long password"), controlplane.EINVALID)

	page, err := svc.AuditEvents(ctx, controlplane.AuditQuery{Action: "user.set_password", PageRequest: controlplane.PageRequest{Limit: 10}})
	if err != nil || len(page.Items) != 1 || page.Items[0].ActorType != "system" {
		t.Fatalf("audit: %+v, %v", page, err)
	}
}
