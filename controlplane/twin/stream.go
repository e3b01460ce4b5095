package twin

import (
	"context"
	"errors"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetplane/fleetplane/controlplane"
	"github.com/fleetplane/fleetplane/internal/natsauth"
)

// errReplicasNotSupported is the server's "replicas > 1 not supported in
// non-clustered mode" (JSStreamReplicasNotSupportedErr).
const errReplicasNotSupported jetstream.ErrorCode = 10074

// streamConfig is the history stream for spec at a replica count. What is
// not in the spec is fixed by design (docs/twin.md):
//
//   - subjects ingest.>, stored as fleet.<env>.veh.<vid>.> by the subject
//     transform, so history and direct gets use the live subjects;
//   - file storage, limits retention, the oldest messages discarded at
//     MaxAge or max bytes;
//   - direct get on (every replica answers; reads are eventually
//     consistent by a few milliseconds);
//   - no deletes, purges, rollups or per-message TTLs: a vehicle (or a
//     grant) cannot erase history through headers or the API.
func streamConfig(spec controlplane.StreamSpec, replicas int) jetstream.StreamConfig {
	maxBytes := int64(-1)
	if spec.StorageBudget >= 0 {
		maxBytes = max(spec.StorageBudget/int64(replicas), 1)
	}
	return jetstream.StreamConfig{
		Name:        spec.Name,
		Description: "Fleetplane digital-twin history: vehicles forward ingest.<env>.<vid>.<rest>, stored as fleet.<env>.veh.<vid>.<rest>",
		Subjects:    []string{natsauth.IngestStreamSubjects},
		SubjectTransform: &jetstream.SubjectTransformConfig{
			Source: natsauth.IngestTransformSource, Destination: natsauth.IngestTransformDestination,
		},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		MaxAge:      spec.MaxAge,
		MaxBytes:    maxBytes,
		MaxMsgs:     -1,
		Duplicates:  spec.Duplicates,
		AllowDirect: true,
		DenyDelete:  true,
		DenyPurge:   true,
		AllowMsgTTL: false,
		AllowRollup: false,
	}
}

// differs reports whether the managed fields of cur differ from want.
func differs(cur, want jetstream.StreamConfig) bool {
	ct, wt := cur.SubjectTransform, want.SubjectTransform
	return !slices.Equal(cur.Subjects, want.Subjects) ||
		(ct == nil) != (wt == nil) || (ct != nil && (ct.Source != wt.Source || ct.Destination != wt.Destination)) ||
		cur.Retention != want.Retention || cur.Discard != want.Discard || cur.Storage != want.Storage ||
		cur.Replicas != want.Replicas || cur.MaxAge != want.MaxAge || cur.MaxBytes != want.MaxBytes ||
		cur.Duplicates != want.Duplicates || cur.AllowDirect != want.AllowDirect ||
		cur.DenyDelete != want.DenyDelete || cur.DenyPurge != want.DenyPurge ||
		cur.AllowMsgTTL != want.AllowMsgTTL || cur.AllowRollup != want.AllowRollup || cur.Sealed
}

// EnsureStream creates the tenant's history stream in the target region or
// updates its configuration to spec; it changes nothing when they agree.
// Replicas are capped by the server: a region that is not clustered gets 1.
func (tw *Twin) EnsureStream(ctx context.Context, t controlplane.TelemetryTarget, spec controlplane.StreamSpec) (*controlplane.AppliedStream, error) {
	if spec.Name == "" || spec.Replicas < 1 {
		return nil, controlplane.Errorf(controlplane.EINVALID, "stream spec needs a name and at least one replica")
	}
	c, release, err := tw.acquire(ctx, t)
	if err != nil {
		return nil, err
	}
	defer release()
	ctx, cancel := tw.withTimeout(ctx)
	defer cancel()

	replicas := spec.Replicas
	out := &controlplane.AppliedStream{Name: spec.Name}
	s, err := c.js.Stream(ctx, spec.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = c.js.CreateStream(ctx, streamConfig(spec, replicas))
		if isCode(err, errReplicasNotSupported) && replicas > 1 {
			replicas = 1
			_, err = c.js.CreateStream(ctx, streamConfig(spec, replicas))
		}
		switch {
		case errors.Is(err, jetstream.ErrStreamNameAlreadyInUse):
			// Another control plane replica created it meanwhile (with
			// another configuration): update it below.
			s, err = c.js.Stream(ctx, spec.Name)
		case err != nil:
			return nil, unavailable(t, "creating the history stream", err)
		default:
			out.Created = true
		}
	}
	switch {
	case out.Created:
	case err != nil:
		return nil, unavailable(t, "reading the history stream", err)
	default:
		cur := s.CachedInfo().Config
		want := streamConfig(spec, replicas)
		if !differs(cur, want) {
			break
		}
		_, err = c.js.UpdateStream(ctx, want)
		if isCode(err, errReplicasNotSupported) && replicas > 1 {
			replicas = 1
			if want = streamConfig(spec, replicas); !differs(cur, want) {
				break
			}
			_, err = c.js.UpdateStream(ctx, want)
		}
		if err != nil {
			return nil, unavailable(t, "updating the history stream", err)
		}
		out.Updated = true
	}
	cfg := streamConfig(spec, replicas)
	out.Replicas, out.MaxAge, out.MaxBytes, out.Duplicates = replicas, cfg.MaxAge, cfg.MaxBytes, cfg.Duplicates
	return out, nil
}

func isCode(err error, code jetstream.ErrorCode) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == code
}
