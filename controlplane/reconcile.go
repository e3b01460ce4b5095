package controlplane

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Reconciliation (DESIGN.md §4): the database is the truth about every
// tenant account; a reconciler compares the account JWTs the hub nodes hold
// with it and repairs drift, so that a node that was down (and missed
// pushes and revocations) catches up, and a revocation left pending by it
// becomes proven.
//
// The pushes after each change and their durable jobs already retry; the
// reconciler also catches what they cannot see: a node restored from an
// old disk, a job that gave up, and a node that came back and converged
// through the resolvers' own hash sync before any retry (its account is
// then fully pushed but not yet marked so).
//
// Each run pages through every account and asks the hubs, for a page at a
// time, which JWT each node's resolver holds (Hubs.AccountJWTs). An account
// is pushed (always the latest JWT, pushAccount) when a node that answered
// holds another JWT or none (drift), or when the database says it is
// behind (PushedVersion < Version) and every node answered. A behind
// account with nodes that do not answer is left alone: a push could not
// complete, and the run after the node's return repairs it. After a
// complete push, the tenant's pending revocations are proven again.

// ReconcileStore is what the reconciler and the health report read. Its
// methods are part of Store (through RegionStore). They serve operator
// tasks across tenants, like FindAccountsBehind.
type ReconcileStore interface {
	// FindAccounts lists the accounts of every tenant with a tenant ID
	// greater than after ("" = from the start), by tenant ID, at most
	// limit (1-1000).
	FindAccounts(ctx context.Context, after string, limit int) ([]*Account, error)
	// CountAccountsBehind counts accounts whose PushedVersion < Version.
	CountAccountsBehind(ctx context.Context) (int, error)
	// FindPendingRevocations lists a tenant's pending revocations, oldest
	// first.
	FindPendingRevocations(ctx context.Context, tenantID string) ([]*Revocation, error)
}

// HubJWTs is what the hub nodes' resolvers hold of some accounts.
//
// nats-server v2.15.2 answers an account lookup
// ($SYS.REQ.ACCOUNT.<acc>.CLAIMS.LOOKUP) from every full-resolver node
// with the bare JWT (empty when it has none) and without its server name,
// and no request names a single node's resolver directory, so Held is per
// account, one entry per answer, not per node: the reconciler needs only to
// know whether every node that answered holds the latest JWT; the push that
// repairs drift has per-node acknowledgements.
type HubJWTs struct {
	Expected  int                 // configured nodes
	Answering []string            // nodes that answered a ping just before the lookup
	Held      map[string][]string // account public key → one JWT per answer ("" = that node holds none)
}

// HubNodeStatus is one hub node as this process sees it.
type HubNodeStatus struct {
	Node  string `json:"node"`
	Up    bool   `json:"up"`
	Error string `json:"error,omitempty"`
}

// ReconcileAccountsJob is the periodic job that runs ReconcileAccounts
// (controlplane/jobs). It has no arguments.
type ReconcileAccountsJob struct{}

// Kind names the job for the queue.
func (ReconcileAccountsJob) Kind() string { return "reconcile_accounts" }

// ReconcileReport is the outcome of one reconciliation run.
type ReconcileReport struct {
	StartedAt time.Time
	Duration  time.Duration
	Nodes     int      // configured hub nodes
	Answering []string // nodes that answered (the last page's ping)
	Accounts  int      // accounts checked
	// Drifted counts accounts that a node that answered held without the
	// latest JWT (older, newer or none).
	Drifted int
	// Behind counts accounts the database had not marked as pushed to
	// every node (PushedVersion < Version) when the run read them.
	Behind int
	// Waiting counts behind accounts left alone because some node did not
	// answer (a push could not complete).
	Waiting int
	// Repaired counts accounts pushed to every node; Failed those whose
	// push did not complete.
	Repaired int
	Failed   int
	// RevocationsProven counts pending revocations proven after a repair.
	RevocationsProven int
	// Accounts that drifted, were behind or failed (at most
	// maxReconcileDetails).
	Details []AccountDrift
}

// AccountDrift is what the reconciler found and did for one account.
type AccountDrift struct {
	TenantID   string
	AccountKey string
	Version    int64 // the database's
	// Answers by kind: the latest JWT, an older or newer one, none.
	Latest, Older, Newer, Missing int
	// Unanswered is configured nodes minus answers.
	Unanswered int
	Behind     bool
	Pushed     bool      // a push was attempted
	Nodes      []NodeAck // the push's acknowledgements
	Error      string
}

// Reconciler tuning.
const (
	reconcilePage       = 500 // accounts per lookup
	reconcileWorkers    = 8   // concurrent repairs
	maxReconcileDetails = 100
)

// ReconcileAccounts compares every account's JWT on the hub nodes with the
// database and pushes the latest JWT where a node lacks it (see the top of
// this file). It returns the report so far with an error when the database
// or every hub node could not be asked; repairs that fail are counted, not
// returned. Without hubs configured it does nothing.
func (s *Service) ReconcileAccounts(ctx context.Context) (*ReconcileReport, error) {
	start := time.Now()
	rep := &ReconcileReport{StartedAt: s.now()}
	defer func() { rep.Duration = time.Since(start) }()
	// Downgrade graces that ended get their plan's limits first (plan.go),
	// so that this run already checks the new versions.
	if s.cfg.Issuer != nil {
		if n, err := s.ApplyPlanGraceExpiry(ctx); err != nil {
			s.logger.WarnContext(ctx, "ending plan graces failed; the next run retries", "err", err)
		} else if n > 0 {
			s.logger.InfoContext(ctx, "plan graces ended", "tenants", n)
		}
	}
	if s.cfg.Hubs == nil {
		return rep, nil
	}
	rep.Nodes = len(s.cfg.Hubs.NodeHealth())
	after := ""
	for {
		page, err := s.store.FindAccounts(ctx, after, reconcilePage)
		if err != nil {
			return rep, err
		}
		if len(page) == 0 {
			break
		}
		after = page[len(page)-1].TenantID
		if err := s.reconcilePage(ctx, page, rep); err != nil {
			return rep, err
		}
		if len(page) < reconcilePage {
			break
		}
	}
	level := s.logger.DebugContext
	if rep.Drifted+rep.Repaired+rep.Failed+rep.Waiting > 0 {
		level = s.logger.InfoContext
	}
	level(ctx, "accounts reconciled", "accounts", rep.Accounts, "nodes", rep.Nodes, "answering", len(rep.Answering),
		"drifted", rep.Drifted, "behind", rep.Behind, "waiting", rep.Waiting, "repaired", rep.Repaired,
		"failed", rep.Failed, "revocations_proven", rep.RevocationsProven, "took", time.Since(start))
	return rep, nil
}

func (s *Service) reconcilePage(ctx context.Context, page []*Account, rep *ReconcileReport) error {
	pubs := make([]string, len(page))
	for i, a := range page {
		pubs[i] = a.PublicKey
	}
	held, err := s.cfg.Hubs.AccountJWTs(ctx, pubs)
	if err != nil {
		return Errorf(EUNAVAILABLE, "asking the hubs for account JWTs: %v", err)
	}
	rep.Nodes, rep.Answering = held.Expected, held.Answering
	rep.Accounts += len(page)

	var repairs []*AccountDrift
	for _, a := range page {
		d := compareHeld(a, held.Held[a.PublicKey], held.Expected)
		drift := d.Older+d.Newer+d.Missing > 0
		if drift {
			rep.Drifted++
		}
		if d.Behind {
			rep.Behind++
		}
		switch {
		case drift || (d.Behind && d.Unanswered == 0):
			repairs = append(repairs, d)
		case d.Behind:
			rep.Waiting++
			rep.addDetail(d)
		}
	}

	var mu sync.Mutex
	work := make(chan *AccountDrift)
	var wg sync.WaitGroup
	for range min(reconcileWorkers, len(repairs)) {
		wg.Go(func() {
			for d := range work {
				proven := s.repairAccount(ctx, d)
				mu.Lock()
				if d.Error == "" {
					rep.Repaired++
				} else {
					rep.Failed++
				}
				rep.RevocationsProven += proven
				rep.addDetail(d)
				mu.Unlock()
			}
		})
	}
	for _, d := range repairs {
		select {
		case work <- d:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	return ctx.Err()
}

// compareHeld sorts a node's answers for account a against the database.
func compareHeld(a *Account, answers []string, expected int) *AccountDrift {
	d := &AccountDrift{TenantID: a.TenantID, AccountKey: a.PublicKey, Version: a.Version,
		Behind: a.PushedVersion < a.Version, Unanswered: max(0, expected-len(answers))}
	want := jwtIssuedAt(a.JWT)
	for _, j := range answers {
		switch {
		case j == a.JWT:
			d.Latest++
		case j == "":
			d.Missing++
		case jwtIssuedAt(j) > want:
			d.Newer++
		default:
			d.Older++
		}
	}
	return d
}

// repairAccount pushes d's account's latest JWT and, when every node
// acknowledged it, proves the tenant's pending revocations. It returns how
// many became proven.
func (s *Service) repairAccount(ctx context.Context, d *AccountDrift) int {
	d.Pushed = true
	push, a, err := s.pushAccount(ctx, d.TenantID, true)
	if push != nil {
		d.Nodes = push.Nodes
	}
	if err != nil {
		d.Error = ErrorMessage(err)
		s.logger.WarnContext(ctx, "reconcile: account push incomplete", "tenant", d.TenantID, "err", err)
		return 0
	}
	d.Version = a.Version
	revs, err := s.store.FindPendingRevocations(ctx, d.TenantID)
	if err != nil {
		d.Error = "finding pending revocations: " + ErrorMessage(err)
		return 0
	}
	proven := 0
	for _, r := range revs {
		if r.AccountVersion > a.Version {
			continue // a newer change than the one pushed; its own push proves it
		}
		if _, err := s.completeRevocation(ctx, r); err != nil {
			d.Error = fmt.Sprintf("revocation %d: %s", r.ID, ErrorMessage(err))
			continue
		}
		proven++
	}
	return proven
}

func (r *ReconcileReport) addDetail(d *AccountDrift) {
	if len(r.Details) < maxReconcileDetails {
		r.Details = append(r.Details, *d)
	}
}

// jwtIssuedAt reads a JWT's iat claim without verifying it (the servers
// verified it when they stored it); 0 when it cannot be read.
func jwtIssuedAt(j string) int64 {
	parts := strings.Split(j, ".")
	if len(parts) != 3 {
		return 0
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return 0
	}
	var c struct {
		IssuedAt int64 `json:"iat"`
	}
	if json.Unmarshal(b, &c) != nil {
		return 0
	}
	return c.IssuedAt
}

// AccountsBehind counts accounts that not every hub node has acknowledged
// at their latest version.
func (s *Service) AccountsBehind(ctx context.Context) (int, error) {
	n, err := s.store.CountAccountsBehind(ctx)
	if err != nil {
		return 0, Errorf(EUNAVAILABLE, "database unavailable")
	}
	return n, nil
}

// Health is the control plane's view of its dependencies, for /readyz: the
// database answers (or Health fails), each hub node's connection, and the
// accounts not yet acknowledged by every node.
type Health struct {
	HubNodes       []HubNodeStatus // in configuration order; nil without hubs
	AccountsBehind int
}

// Degraded reports whether a hub node is down or an account is behind: the
// API still serves (pushes report per node and are retried), but an
// operator should look.
func (h *Health) Degraded() bool {
	return h.AccountsBehind > 0 || slices.ContainsFunc(h.HubNodes, func(n HubNodeStatus) bool { return !n.Up })
}

// Health reports the database (EUNAVAILABLE when it does not answer: the
// only reason to take this replica out of the load balancer), every hub
// node's connection and the account backlog. One hub node down is not a
// failure: pushes report it per node and retry.
func (s *Service) Health(ctx context.Context) (*Health, error) {
	// The count is the database round trip that Ready's ping would be.
	n, err := s.AccountsBehind(ctx)
	if err != nil {
		return nil, err
	}
	h := &Health{AccountsBehind: n}
	if s.cfg.Hubs != nil {
		h.HubNodes = s.cfg.Hubs.NodeHealth()
	}
	return h, nil
}
