package twin

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleetplane/fleetplane/controlplane"
)

// Reads use JetStream direct get ($JS.API.DIRECT.GET.<stream>): a request
// with a batch or multi_last is answered by one replica with a message per
// result and an end-of-batch status, so a history page or the latest state
// is one round trip and no consumer is created.

// directGetRequest is the server's JSApiMsgGetRequest (the fields used).
type directGetRequest struct {
	Seq       uint64     `json:"seq,omitempty"`
	NextFor   string     `json:"next_by_subj,omitempty"`
	Batch     int        `json:"batch,omitempty"`
	MaxBytes  int        `json:"max_bytes,omitempty"`
	StartTime *time.Time `json:"start_time,omitempty"`
	MultiLast []string   `json:"multi_last,omitempty"`
	UpToTime  *time.Time `json:"up_to_time,omitempty"`
}

// Direct get headers and statuses (nats-server stream.go).
const (
	hdrStatus     = "Status"
	hdrDesc       = "Description"
	hdrSubject    = "Nats-Subject"
	hdrSequence   = "Nats-Sequence"
	hdrTimeStamp  = "Nats-Time-Stamp"
	hdrNumPending = "Nats-Num-Pending"
	statusEOB     = "204"
	statusNone    = "404"
	statusTooMany = "413"
	// maxBatchBytes bounds one direct get's reply (the server's default is
	// its max_pending, 64 MiB): a page stops early and continues with the
	// next request.
	maxBatchBytes = 8 << 20
	// maxMultiLast is the server's limit of results of a multi-last get.
	maxMultiLast = 1024
)

// batch is the outcome of one direct get.
type batch struct {
	msgs    []*controlplane.TwinMessage
	pending uint64 // matching messages after the last one (EOB)
}

// directGet sends one batch or multi-last direct get and collects the
// replies until the end-of-batch status.
func (tw *Twin) directGet(ctx context.Context, c *conn, t controlplane.TelemetryTarget, req directGetRequest) (*batch, error) {
	ctx, cancel := tw.withTimeout(ctx)
	defer cancel()
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	inbox := c.nc.NewInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, unavailable(t, "direct get", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	// The batch arrives as fast as the server sends it; nats.go's default
	// pending limits (512k messages, 64 MiB) hold a whole page.
	if err := c.nc.PublishRequest("$JS.API.DIRECT.GET."+t.Stream, inbox, body); err != nil {
		return nil, unavailable(t, "direct get", err)
	}
	out := &batch{}
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			if errors.Is(err, nats.ErrNoResponders) {
				return nil, controlplane.Errorf(controlplane.ENOTFOUND, "no stream %q in region %q", t.Stream, t.Region.Name)
			}
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				return nil, controlplane.Errorf(controlplane.EUNAVAILABLE,
					"the history stream in region %q did not answer a read in time (%d messages received)", t.Region.Name, len(out.msgs))
			}
			return nil, unavailable(t, "direct get", err)
		}
		switch status := m.Header.Get(hdrStatus); status {
		case "":
			tm, err := twinMessage(m)
			if err != nil {
				return nil, err
			}
			out.msgs = append(out.msgs, tm)
		case statusEOB:
			out.pending, _ = strconv.ParseUint(m.Header.Get(hdrNumPending), 10, 64)
			return out, nil
		case statusNone:
			return out, nil // nothing matches (or nothing after start)
		case statusTooMany:
			return nil, controlplane.Errorf(controlplane.EINVALID, "more than %d subjects match; ask for fewer", maxMultiLast)
		default:
			return nil, controlplane.Errorf(controlplane.EUNAVAILABLE, "the history stream in region %q answered %s %s",
				t.Region.Name, status, m.Header.Get(hdrDesc))
		}
	}
}

// twinMessage decodes one direct get reply.
func twinMessage(m *nats.Msg) (*controlplane.TwinMessage, error) {
	seq, err := strconv.ParseUint(m.Header.Get(hdrSequence), 10, 64)
	if err != nil {
		return nil, errors.New("twin: direct get reply without a sequence")
	}
	ts, err := time.Parse(time.RFC3339Nano, m.Header.Get(hdrTimeStamp))
	if err != nil {
		return nil, errors.New("twin: direct get reply without a time stamp")
	}
	return &controlplane.TwinMessage{Subject: m.Header.Get(hdrSubject), Sequence: seq, StoredAt: ts.UTC(), Data: m.Data,
		MsgID: m.Header.Get("Nats-Msg-Id")}, nil
}

// LastMessages returns the last message of each subject matching q, in
// stream order (one multi-last direct get).
func (tw *Twin) LastMessages(ctx context.Context, t controlplane.TelemetryTarget, q controlplane.LastQuery) ([]*controlplane.TwinMessage, error) {
	if len(q.Subjects) == 0 {
		return nil, nil
	}
	c, release, err := tw.acquire(ctx, t)
	if err != nil {
		return nil, err
	}
	defer release()
	req := directGetRequest{MultiLast: q.Subjects, MaxBytes: maxBatchBytes}
	if q.UpTo != nil {
		u := q.UpTo.UTC()
		req.UpToTime = &u
	}
	var out []*controlplane.TwinMessage
	for {
		b, err := tw.directGet(ctx, c, t, req)
		if err != nil {
			return nil, err
		}
		out = append(out, b.msgs...)
		if b.pending == 0 || len(b.msgs) == 0 {
			return out, nil
		}
		// The reply stopped at max bytes: continue after the last one.
		req.Seq = b.msgs[len(b.msgs)-1].Sequence + 1
	}
}

// ReadMessages returns a page of stored messages in stream order (one
// batch direct get with next_by_subj, a message more than asked for to
// know whether there is a next page).
func (tw *Twin) ReadMessages(ctx context.Context, t controlplane.TelemetryTarget, q controlplane.ReadQuery) (*controlplane.ReadResult, error) {
	if q.Limit < 1 || q.Subject == "" {
		return nil, controlplane.Errorf(controlplane.EINVALID, "a read needs a subject and a limit")
	}
	c, release, err := tw.acquire(ctx, t)
	if err != nil {
		return nil, err
	}
	defer release()
	req := directGetRequest{NextFor: q.Subject, Batch: q.Limit + 1, MaxBytes: maxBatchBytes}
	switch {
	case q.StartSeq > 0:
		req.Seq = q.StartSeq
	case q.StartTime != nil:
		st := q.StartTime.UTC()
		req.StartTime = &st
	default:
		req.Seq = 1
	}
	b, err := tw.directGet(ctx, c, t, req)
	if err != nil {
		return nil, err
	}
	res := &controlplane.ReadResult{Messages: make([]*controlplane.TwinMessage, 0, min(len(b.msgs), q.Limit))}
	for i, m := range b.msgs {
		if q.Until != nil && !m.StoredAt.Before(*q.Until) {
			return res, nil
		}
		if i == q.Limit {
			res.NextSeq = m.Sequence
			return res, nil
		}
		res.Messages = append(res.Messages, m)
	}
	if b.pending > 0 && len(b.msgs) > 0 {
		// Stopped at max bytes before the limit.
		res.NextSeq = b.msgs[len(b.msgs)-1].Sequence + 1
	}
	return res, nil
}
