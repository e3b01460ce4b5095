package hubs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Account statistics for metering (controlplane.HubStatsSource).
//
// $SYS.REQ.ACCOUNT.PING.STATZ is answered by every server it reaches
// (events.go: a plain system subscription) with AccountStatz (monitor.go):
// the accounts it holds in memory, each with running totals since the
// account was loaded on that server. It goes out like a push, once per
// cluster (gather), and replies are attributed by server name.
//
// Options: {"include_unused": true}. Without it a server lists only the
// accounts with a connection open on it right now, and a server with none
// does not answer at all: the traffic of a vehicle that disconnected
// before the sample would wait for its next connection, and gather would
// wait out its timeout for the silent nodes. With it every node answers
// and lists every account it has loaded; accounts with no traffic from
// connections are left out here.
//
// What counts (client.go, route.go, gateway.go): an account's totals
// include what crossed routes and gateways, so a message from a vehicle on
// hub-2 to a subscriber on hub-1 would be counted on both nodes. Only
// traffic with the account's own connections on the node is kept:
//
//   - MsgsIn/BytesIn = received − received over routes − over gateways:
//     what the account's clients and leaf links (vehicles) published
//     into the node;
//   - MsgsOut/BytesOut = sent − sent over routes − over gateways: what the
//     node delivered to the account's clients and leaf links, and to its
//     internal subscribers (a JetStream stream capturing a message counts
//     as one delivery).
//
// Summed over the nodes, a message published once and received by one
// subscriber counts one in and one out wherever the two are connected.
// The system account (the one the control plane's system user belongs
// to) and names that are no account public key ($G) are skipped.

const accountStatzSubject = "$SYS.REQ.ACCOUNT.PING.STATZ"

var _ controlplane.HubStatsSource = (*Hubs)(nil)

type msgBytes struct {
	Msgs  int64 `json:"msgs"`
	Bytes int64 `json:"bytes"`
}

// dataStats is DataStats (events.go).
type dataStats struct {
	msgBytes
	Gateways *msgBytes `json:"gateways"`
	Routes   *msgBytes `json:"routes"`
}

// own is the traffic with the account's own connections: the total less
// what crossed routes and gateways.
func (d dataStats) own() (msgs, bytes int64) {
	msgs, bytes = d.Msgs, d.Bytes
	for _, x := range []*msgBytes{d.Routes, d.Gateways} {
		if x != nil {
			msgs -= x.Msgs
			bytes -= x.Bytes
		}
	}
	return max(msgs, 0), max(bytes, 0)
}

type accountStatzResponse struct {
	Server *serverInfo `json:"server"`
	Data   *struct {
		ServerID string `json:"server_id"`
		Accounts []struct {
			Account  string    `json:"acc"`
			Sent     dataStats `json:"sent"`
			Received dataStats `json:"received"`
		} `json:"account_statz"`
	} `json:"data"`
	Error *struct {
		Code        int    `json:"code"`
		Description string `json:"description"`
	} `json:"error"`
}

// systemAccount remembers the account of the system users Hubs connects
// with, to leave it out of the statistics.
type systemAccount struct{ v atomic.Value }

func (s *systemAccount) note(userJWT string) {
	uc, err := jwt.DecodeUserClaims(userJWT)
	if err != nil {
		return
	}
	acc := uc.IssuerAccount
	if acc == "" {
		acc = uc.Issuer
	}
	if nkeys.IsValidPublicAccountKey(acc) {
		s.v.Store(acc)
	}
}

func (s *systemAccount) get() string {
	v, _ := s.v.Load().(string)
	return v
}

// AccountStats reads every node's account statistics with one request per
// reachable cluster and returns, per node and account with traffic, the
// running totals of the account's own connections (see above). Nodes that
// did not answer within Timeout are missing from Answered. It fails only
// when no node is connected.
func (h *Hubs) AccountStats(ctx context.Context) (*controlplane.HubStats, error) {
	replies, err := h.gather(ctx, accountStatzSubject, []byte(`{"include_unused":true}`))
	if err != nil {
		return nil, fmt.Errorf("hubs: account statistics: %w", err)
	}
	sys := h.sysAccount.get()
	out := &controlplane.HubStats{Expected: len(h.nodes)}
	for _, n := range h.nodes {
		data, ok := replies[n.Name]
		if !ok {
			continue
		}
		accs, err := parseAccountStatz(data, n.Name, sys)
		if err != nil {
			h.log.Warn("hub node sent unusable account statistics", "node", n.Name, "err", err)
			continue
		}
		out.Answered = append(out.Answered, n.Name)
		out.Accounts = append(out.Accounts, accs...)
	}
	return out, nil
}

// parseAccountStatz reads node's STATZ reply, leaving out the system
// account, non-account names and accounts without traffic.
func parseAccountStatz(data []byte, node, sys string) ([]controlplane.AccountTraffic, error) {
	var r accountStatzResponse
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("undecodable reply: %w", err)
	}
	switch {
	case r.Error != nil:
		return nil, fmt.Errorf("%d %s", r.Error.Code, r.Error.Description)
	case r.Data == nil || r.Server == nil:
		return nil, errors.New("reply has no data")
	}
	serverID := r.Data.ServerID
	if serverID == "" {
		serverID = r.Server.ID
	}
	if serverID == "" {
		return nil, errors.New("reply has no server ID")
	}
	var out []controlplane.AccountTraffic
	for _, a := range r.Data.Accounts {
		if a.Account == sys || !nkeys.IsValidPublicAccountKey(a.Account) {
			continue
		}
		t := controlplane.AccountTraffic{Node: node, ServerID: serverID, Account: a.Account}
		t.MsgsIn, t.BytesIn = a.Received.own()
		t.MsgsOut, t.BytesOut = a.Sent.own()
		if t.MsgsIn == 0 && t.MsgsOut == 0 && t.BytesIn == 0 && t.BytesOut == 0 {
			continue
		}
		out = append(out, t)
	}
	return out, nil
}
