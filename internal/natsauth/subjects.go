package natsauth

import (
	"fmt"
	"strings"
)

// Subject layout of a tenant account (DESIGN.md §3). Tenants are separate
// NATS accounts, so subjects carry no tenant prefix.
const (
	// SubjectRoot is the first token of every telemetry/command subject.
	SubjectRoot = "fleet"
	// IngestRoot is the first token of the hub ingest subjects: the agent's
	// forwarder (DESIGN §3 option (b)) republishes each locally stored
	// message fleet.<env>.veh.<vid>.<rest> as ingest.<env>.<vid>.<rest> and
	// waits for the hub stream's PubAck. A separate root keeps the hub
	// stream from also capturing the live fleet.> traffic (no double
	// capture), and lets the vehicle write into the hub stream only under
	// its own <env>.<vid>.
	IngestRoot = "ingest"
	// IngestStreamSubjects is the subject filter of the hub ingest stream.
	IngestStreamSubjects = IngestRoot + ".>"
	// HistoryStream is the name of the hub ingest stream, a tenant's
	// history (the "TWIN" stream of controlplane/twin) in every region.
	// ServiceScope names it: the service user's JetStream permissions
	// cover this stream only.
	HistoryStream = "TWIN"
	// vehicleInboxRoot is the reply-inbox namespace of vehicles: a sub-tree
	// of the standard "_INBOX." whose second token ("veh") can never equal a
	// nats.go inbox token (a 22-character NUID), so no vehicle ID produces
	// another client's inbox.
	vehicleInboxRoot = "_INBOX.veh"
	// serviceInboxRoot is the reply-inbox namespace of service users
	// (ServiceInboxPrefix), apart from the vehicles' for the same reason.
	serviceInboxRoot = "_INBOX.svc"
	// replyToken is the category of command replies:
	// fleet.<env>.veh.<vid>.rpl.<requester...>. See CommandReplies.
	replyToken = "rpl"
)

// Category is a part of a vehicle's subject tree.
type Category string

// Categories of fleet.<env>.veh.<vid>.<category>.<kind>.
const (
	CategoryState    Category = "state"
	CategoryEvents   Category = "evt"
	CategoryCommands Category = "cmd"
	CategoryAgent    Category = "agent"
)

func (c Category) valid() bool {
	switch c {
	case CategoryState, CategoryEvents, CategoryCommands, CategoryAgent:
		return true
	}
	return false
}

// VehicleSubjectPrefix is fleet.<env>.veh.<vid> (no trailing dot).
func VehicleSubjectPrefix(env, vehicleID string) string {
	return SubjectRoot + "." + env + ".veh." + vehicleID
}

// IngestSubject is the hub ingest prefix for one vehicle, ingest.<env>.<vid>
// (no trailing dot). The forwarder publishes IngestSubject(env, vid) + "." +
// <the rest of the local subject after fleet.<env>.veh.<vid>.>, e.g.
// ingest.prod.Drone-7.state.position, with Nats-Msg-Id <vid>-<local seq>; the
// vehicle's user may publish to IngestSubject(env, vid)+".>" only.
func IngestSubject(env, vehicleID string) string {
	return IngestRoot + "." + env + "." + vehicleID
}

// Ingest subject transform for the hub ingest stream: it stores
// ingest.<env>.<vid>.<rest> as fleet.<env>.veh.<vid>.<rest>, so hub history
// is queried with the same subjects as live traffic.
const (
	IngestTransformSource      = IngestRoot + ".*.*.>"
	IngestTransformDestination = SubjectRoot + ".{{wildcard(1)}}.veh.{{wildcard(2)}}.>"
)

// IngestSubjectFor maps a vehicle's own subject fleet.<env>.veh.<vid>.<rest>
// to the ingest subject the forwarder publishes it on,
// ingest.<env>.<vid>.<rest>.
func IngestSubjectFor(subject string) (string, error) {
	toks := strings.SplitN(subject, ".", 5)
	if len(toks) != 5 || toks[0] != SubjectRoot || toks[2] != "veh" || !validSubject(subject) || strings.ContainsAny(subject, "*>") {
		return "", fmt.Errorf("natsauth: %q is not a literal subject fleet.<env>.veh.<vid>.<rest>", subject)
	}
	if err := ValidateEnv(toks[1]); err != nil {
		return "", err
	}
	if err := ValidateVehicleID(toks[3]); err != nil {
		return "", err
	}
	return IngestSubject(toks[1], toks[3]) + "." + toks[4], nil
}

// VehicleInboxPrefix is the reply-inbox prefix the agent must set on its
// local connection (nats.CustomInboxPrefix) so PubAcks and other replies from
// the hub reach it: a vehicle may subscribe to its own inbox only, never to
// "_INBOX.>", which would show it every other client's replies.
func VehicleInboxPrefix(vehicleID string) string { return vehicleInboxRoot + "." + vehicleID }

// CommandReplies: a vehicle answers a command by publishing to the request's
// reply subject, and over a leaf link that only works when the reply subject
// is one the vehicle may publish to. allow_responses does not cross a leaf
// link (nats-server issue #2949, still so in v2.15.2: the hub propagates to
// the leaf only interest the leaf may publish to, so the spoke drops the
// reply), and a standing publish permission on _INBOX.> would let a
// compromised vehicle inject replies into every inbox of its tenant, the
// control plane's JetStream API replies included (nats.go response tokens
// come from math/rand). So requesters put the reply subject in the vehicle's
// own tree, under fleet.<env>.veh.<vid>.rpl., where only that vehicle can
// publish:
//
//   - the control plane: ServiceReplyPrefix(env, vid) + "." + <token>;
//   - a grant holder: GrantReplyPrefix(env, vid, grant) + "." + <token>
//     (e.g. nats.CustomInboxPrefix(GrantReplyPrefix(...)) or
//     nats req --inbox-prefix ...).
//
// A request with a plain _INBOX reply reaches the vehicle but its reply is
// dropped at the leaf.
const CommandReplies = replyToken

// ServiceReplyPrefix is the reply prefix for the control plane's commands to
// one vehicle: fleet.<env>.veh.<vid>.rpl.svc.
func ServiceReplyPrefix(env, vehicleID string) string {
	return VehicleSubjectPrefix(env, vehicleID) + "." + replyToken + ".svc"
}

// GrantReplyPrefix is the reply prefix for a grant's commands to one vehicle:
// fleet.<env>.veh.<vid>.rpl.grant.<grant>. The grant may subscribe below it
// and nowhere else in the reply space.
func GrantReplyPrefix(env, vehicleID, grantName string) string {
	return VehicleSubjectPrefix(env, vehicleID) + "." + replyToken + ".grant." + grantName
}

// ValidateVehicleID checks a vehicle ID: 1-64 characters of [A-Za-z0-9_-].
// Case is significant (subjects are case-sensitive).
func ValidateVehicleID(vid string) error {
	if !vehicleIDRe.MatchString(vid) {
		return fmt.Errorf("natsauth: invalid vehicle ID %q: want 1-64 characters of [A-Za-z0-9_-]", vid)
	}
	return nil
}

// ValidateEnv checks an environment: 1-32 characters of [a-z0-9_-], starting
// and ending with a letter or digit. Lower case is required because the
// environment reaches the vehicle's permissions through a (lower-cased) tag.
func ValidateEnv(env string) error {
	if !envRe.MatchString(env) {
		return fmt.Errorf("natsauth: invalid environment %q: want 1-32 lower-case characters of [a-z0-9_-], starting and ending with a letter or digit", env)
	}
	return nil
}
