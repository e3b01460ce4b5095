// Package enroll is the agent's side of the control plane's vehicle API:
// POST /v1/enroll, and the renewal handshake POST /v1/agent/nonce +
// POST /v1/agent/renew (proof of possession of the vehicle's nkey). It also
// writes the secrets an enrollment produces (seed, creds, CA bundle) with
// the right modes, atomically.
//
// It may import internal/natsauth and nkeys; it never imports the control
// plane (edge code talks to it over HTTP only).
package enroll

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nkeys"
)

// Credentials is the control plane's VehicleCredentials answer (openapi.yaml).
type Credentials struct {
	Vehicle         Vehicle   `json:"vehicle"`
	JWT             string    `json:"jwt,omitempty"`
	ExpiresAt       time.Time `json:"expires_at"`
	RenewAfter      time.Time `json:"renew_after"`
	Account         string    `json:"account"`
	Region          string    `json:"region"`
	LeafURLs        []string  `json:"leaf_urls"`
	CABundle        *string   `json:"ca_bundle"`
	SubjectPrefix   string    `json:"subject_prefix"`
	IngestSubject   string    `json:"ingest_subject"`
	InboxPrefix     string    `json:"inbox_prefix"`
	JetStreamDomain string    `json:"jetstream_domain"`
}

// Vehicle is the part of the control plane's Vehicle the agent keeps.
type Vehicle struct {
	VehicleID string `json:"vehicle_id"`
	Fleet     string `json:"fleet"`
	Name      string `json:"name,omitempty"`
}

// Validate checks that an answer carries what the agent needs to run.
func (c *Credentials) Validate() error {
	switch {
	case c.JWT == "":
		return errors.New("answer without a jwt")
	case c.Vehicle.VehicleID == "":
		return errors.New("answer without a vehicle_id")
	case len(c.LeafURLs) == 0:
		return errors.New("answer without leaf_urls")
	case c.SubjectPrefix == "" || c.IngestSubject == "" || c.InboxPrefix == "" || c.JetStreamDomain == "":
		return errors.New("answer without subject_prefix, ingest_subject, inbox_prefix or jetstream_domain")
	case c.ExpiresAt.IsZero():
		return errors.New("answer without expires_at")
	}
	return nil
}

// Request is the body of POST /v1/enroll.
type Request struct {
	Token        string `json:"token"`
	PublicKey    string `json:"public_key"`
	VehicleID    string `json:"vehicle_id,omitempty"`
	Hostname     string `json:"hostname,omitempty"`
	Arch         string `json:"arch,omitempty"`
	AgentVersion string `json:"agent_version,omitempty"`
}

// Problem is an RFC 9457 answer of the control plane.
type Problem struct {
	Status    int    `json:"status"`
	Title     string `json:"title"`
	Detail    string `json:"detail"`
	Code      string `json:"code"`
	RequestID string `json:"request_id"`
	// RetryAfter is the Retry-After header of a 429, if any.
	RetryAfter time.Duration `json:"-"`
}

func (p *Problem) Error() string {
	msg := p.Detail
	if msg == "" {
		msg = p.Title
	}
	if msg == "" {
		msg = http.StatusText(p.Status)
	}
	return fmt.Sprintf("control plane answered %d: %s", p.Status, msg)
}

// ErrUnreachable wraps every failure to get an HTTP answer at all.
var ErrUnreachable = errors.New("control plane unreachable")

// Client calls the control plane's vehicle endpoints.
type Client struct {
	// Server is the control plane's base URL (https://cp.example.com).
	Server string
	// HTTP is the client to use; nil = one with a 30 s timeout.
	HTTP *http.Client
	// UserAgent is sent with every request.
	UserAgent string
}

// Enroll sends the enrollment request. A rejected token comes back as a
// *Problem with Status 401; no answer at all wraps ErrUnreachable.
func (c *Client) Enroll(ctx context.Context, req Request) (*Credentials, error) {
	var cr Credentials
	// The key is the idempotency key: a retry whose first answer was lost
	// gets the same credentials instead of spending the token again.
	if err := c.post(ctx, "/v1/enroll", req.PublicKey, req, &cr); err != nil {
		return nil, err
	}
	if err := cr.Validate(); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	return &cr, nil
}

// Renew proves possession of kp (signs a fresh nonce) and returns a new JWT
// for the same key.
func (c *Client) Renew(ctx context.Context, kp nkeys.KeyPair) (*Credentials, error) {
	body, err := c.proof(ctx, kp)
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	var cr Credentials
	if err := c.post(ctx, "/v1/agent/renew", "", body, &cr); err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	if err := cr.Validate(); err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	return &cr, nil
}

// proof gets a nonce and signs it with kp: the body of the agent's
// authenticated calls (renew, ingest position).
func (c *Client) proof(ctx context.Context, kp nkeys.KeyPair) (map[string]string, error) {
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, err
	}
	var nonce struct {
		Nonce     string    `json:"nonce"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := c.post(ctx, "/v1/agent/nonce", "", map[string]string{"public_key": pub}, &nonce); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	sig, err := kp.Sign([]byte(nonce.Nonce))
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return map[string]string{"public_key": pub, "nonce": nonce.Nonce, "signature": base64.RawURLEncoding.EncodeToString(sig)}, nil
}

// IngestPosition asks the control plane for the Nats-Msg-Id of this
// vehicle's last message in hub history ("" when nothing is stored): the
// forwarder's resume point after a long outage (ADR 0009).
func (c *Client) IngestPosition(ctx context.Context, kp nkeys.KeyPair) (string, error) {
	body, err := c.proof(ctx, kp)
	if err != nil {
		return "", fmt.Errorf("ingest position: %w", err)
	}
	var out struct {
		LastMsgID *string `json:"last_msg_id"`
	}
	if err := c.post(ctx, "/v1/agent/ingest-position", "", body, &out); err != nil {
		return "", fmt.Errorf("ingest position: %w", err)
	}
	if out.LastMsgID == nil {
		return "", nil
	}
	return *out.LastMsgID, nil
}

func (c *Client) post(ctx context.Context, path, idemKey string, in, out any) error {
	u, err := url.Parse(strings.TrimRight(c.Server, "/") + path)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("bad server URL %q: want http(s)://host[:port]", c.Server)
	}
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, application/problem+json")
	if c.UserAgent != "" {
		req.Header.Set("User-Agent", c.UserAgent)
	}
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %s: %s", ErrUnreachable, u.Host, shortNetErr(err))
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%w: %s: reading the answer: %v", ErrUnreachable, u.Host, err)
	}
	if resp.StatusCode >= 300 {
		p := &Problem{Status: resp.StatusCode}
		if json.Unmarshal(body, p) != nil || p.Status == 0 {
			p = &Problem{Status: resp.StatusCode, Detail: firstLine(string(body))}
		}
		if s := resp.Header.Get("Retry-After"); s != "" {
			var sec int
			if _, err := fmt.Sscanf(s, "%d", &sec); err == nil {
				p.RetryAfter = time.Duration(sec) * time.Second
			}
		}
		return p
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%s answered %d with something that is not the expected JSON (is --server the control plane?): %v", u.Host, resp.StatusCode, err)
	}
	return nil
}

// shortNetErr keeps the useful tail of a transport error ("connection
// refused", "no such host", a TLS verification failure).
func shortNetErr(err error) string {
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return "no such host " + dnsErr.Name
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}
