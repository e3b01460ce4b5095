package hubnode_test

import (
	"testing"
	"time"

	"github.com/fleetplane/fleetplane/internal/hubnode"
	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/fleetplane/fleetplane/internal/natstest"
)

func TestOptionsAreDeliberate(t *testing.T) {
	op := natstest.MustOperator(t)
	o, err := hubnode.Options(hubnode.Config{Name: "hub-1", Dir: t.TempDir(), Trust: op.HubTrust()})
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case o.SyncInterval != time.Second:
		t.Errorf("SyncInterval = %v: the 2-minute default can lose acknowledged writes", o.SyncInterval)
	case !o.LeafNode.IsolateLeafnodeInterest:
		t.Error("leaf interest not isolated")
	case o.PingInterval*time.Duration(o.MaxPingsOut) > 30*time.Second:
		t.Errorf("dead links noticed after %v, want ≤ 30 s", o.PingInterval*time.Duration(o.MaxPingsOut))
	case len(o.TrustedOperators) != 1 || o.SystemAccount != op.HubTrust().SystemAccountPublicKey || o.AccountResolver == nil:
		t.Error("not in operator mode with the full resolver")
	}
	if _, err := hubnode.Options(hubnode.Config{Name: "hub-1"}); err == nil {
		t.Error("no Dir accepted")
	}
}

func TestStartServesVehicles(t *testing.T) {
	op := natstest.MustOperator(t)
	s, err := hubnode.Start(hubnode.Config{Name: "hub-1", Dir: t.TempDir(), ClientHost: "127.0.0.1", ClientPort: -1,
		LeafHost: "127.0.0.1", LeafPort: -1, Trust: op.HubTrust()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	sys := natstest.ConnectSystem(t, s, op)
	tn := natstest.NewTenant(t, op, natstestSpec())
	tn.Push(t, sys)
	natstest.RunVehicleLeaf(t, s, tn.Vehicle(t, vehicleIdentity(), time.Now().Add(time.Hour)))
	natstest.WaitLeafCount(t, s, 1, 5*time.Second)
}

func natstestSpec() natsauth.AccountSpec {
	return natsauth.AccountSpec{Name: "acme", TenantID: "acme", Limits: natsauth.Unlimited()}
}

func vehicleIdentity() natsauth.VehicleIdentity {
	return natsauth.VehicleIdentity{TenantID: "acme", Fleet: "drones", Env: "prod", VehicleID: "V1"}
}
