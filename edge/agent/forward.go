package agent

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetplane/fleetplane/edge/forward"
)

// ForwarderDurable is the store-and-forward forwarder's durable consumer on
// the local stream.
const ForwarderDurable = "forwarder"

// StoreAndForward is the agent's forwarder (edge/forward, ADR 0009) on the
// local stream: pass it as Options.Forward.
func StoreAndForward(ctx context.Context, env ForwardEnv) error {
	js, err := jetstream.New(env.Local)
	if err != nil {
		return err
	}
	f, err := forward.New(forward.Config{
		Local: js, LocalStream: env.Stream, Durable: ForwarderDurable, Hub: env.Hub,
		IngestPrefix: env.IngestSubject, SubjectPrefix: env.SubjectPrefix, MsgIDPrefix: env.VehicleID,
		Logger: env.Logger,
	})
	if err != nil {
		return err
	}
	err = f.Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
