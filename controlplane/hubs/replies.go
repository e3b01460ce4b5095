package hubs

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/nats-io/jwt/v2"
)

// Reply shapes of nats-server v2.15.2, redeclared so the control plane does
// not link the server: ServerAPIClaimUpdateResponse (accounts.go) and
// ServerAPIResponse / Connz (events.go, monitor.go). Only the fields used.

type serverInfo struct {
	Name string `json:"name"`
	ID   string `json:"id"`
}

type claimUpdateResponse struct {
	Server *serverInfo `json:"server"`
	Data   *struct {
		Account string `json:"account"`
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"data"`
	Error *struct {
		Account     string `json:"account"`
		Code        int    `json:"code"`
		Description string `json:"description"`
	} `json:"error"`
}

type connzResponse struct {
	Server *serverInfo `json:"server"`
	Data   *struct {
		NumConns int `json:"num_connections"`
		Conns    []struct {
			Kind           string `json:"kind"`
			AuthorizedUser string `json:"authorized_user"`
		} `json:"connections"`
	} `json:"data"`
	Error *struct {
		Code        int    `json:"code"`
		Description string `json:"description"`
	} `json:"error"`
}

// serverName reads the name the server stamped on a system reply.
func serverName(data []byte) (string, error) {
	var r struct {
		Server *serverInfo `json:"server"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return "", fmt.Errorf("decode reply: %w", err)
	}
	if r.Server == nil || r.Server.Name == "" {
		return "", errors.New("reply has no server name")
	}
	return r.Server.Name, nil
}

// accountSubject checks that j is an account JWT and returns its account.
func accountSubject(j string) (string, error) {
	ac, err := jwt.DecodeAccountClaims(j)
	if err != nil {
		return "", fmt.Errorf("hubs: push: not an account JWT: %w", err)
	}
	return ac.Subject, nil
}

// claimUpdateResult interprets one node's answer to a push of account acc.
func claimUpdateResult(data []byte, acc string) (ok bool, message string) {
	var r claimUpdateResponse
	if err := json.Unmarshal(data, &r); err != nil {
		return false, "undecodable reply: " + err.Error()
	}
	switch {
	case r.Error != nil:
		return false, fmt.Sprintf("%d %s", r.Error.Code, r.Error.Description)
	case r.Data == nil:
		return false, "reply has neither data nor error"
	case r.Data.Code != http.StatusOK:
		return false, fmt.Sprintf("%d %s", r.Data.Code, r.Data.Message)
	case r.Data.Account != "" && r.Data.Account != acc:
		return false, fmt.Sprintf("reply is for account %s", r.Data.Account)
	}
	// "jwt updated" is also the answer when the node already holds a JWT
	// issued later (DirJWTStore.saveIfNewer keeps the newer one).
	return true, r.Data.Message
}

// connzRequest is a ConnzOptions filtered on one user of one account;
// state 0 is "open"; "auth" adds authorized_user so the count can be checked.
func connzRequest(accountPub, userPub string) ([]byte, error) {
	b, err := json.Marshal(map[string]any{"acc": accountPub, "user": userPub, "state": 0, "auth": true})
	if err != nil {
		return nil, fmt.Errorf("hubs: connz request: %w", err)
	}
	return b, nil
}

// connzCount counts userPub's connections in a CONNZ reply. The server has
// filtered on the user already; counting authorized_user again guards
// against a server that ignored the filter (which would otherwise report a
// whole account's connections as the user's).
func connzCount(data []byte, userPub string) (int, error) {
	var r connzResponse
	if err := json.Unmarshal(data, &r); err != nil {
		return 0, fmt.Errorf("undecodable reply: %w", err)
	}
	if r.Error != nil {
		return 0, fmt.Errorf("%d %s", r.Error.Code, r.Error.Description)
	}
	if r.Data == nil {
		return 0, errors.New("reply has neither data nor error")
	}
	n := 0
	for _, c := range r.Data.Conns {
		if c.AuthorizedUser == userPub {
			n++
		}
	}
	if n != r.Data.NumConns {
		return n, fmt.Errorf("server listed %d connections, %d of them the user's", r.Data.NumConns, n)
	}
	return n, nil
}
