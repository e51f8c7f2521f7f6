package natsd

import (
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// GhostPermissions are what Ghost id may do, in account EDGE_GHOSTS (accounts.go): read
// its commands and acks, write its events, registration and heartbeats, ask Mirage for
// the commands it missed and for pushed seeds, and probe for (and answer) other live
// instances of its own id on probe.<id>, which stays inside EDGE_GHOSTS. Nothing else: no JetStream API call at
// all, and no allow_responses: nats-server lets a client answer any message it receives
// once, past its deny and allow lists, and a Ghost receives its own probes, whose reply
// subject it sets itself, so a response permission would let it publish once to any
// subject of EDGE_GHOSTS per probe (another Ghost's cmd.<id>, mirage.announce, or, through
// the stream imports, reg.<id> and hb.<id> of any Ghost). Its answers go instead where a
// Ghost's requests wait: probe answers to the prober's inbox, which is its own id's, and
// attach answers to the _R_ subject the service import gave Mirage's request. nats-server checks neither a new consumer's deliver_subject nor a request's reply
// subject against the requester's permissions, and JetStream answers there with its own
// rights, some answers with an empty body (a direct get that finds nothing, a pull
// request's status), which is a valid STREAM.DELETE or CONSUMER.DELETE. Mirage reads
// EDGE_CMD for the Ghost (mirage.replay.<id>) and seeds (mirage.seed.<id>) and answers on
// the Ghost's own inbox only; an event's publish ack goes back to the Ghosts' account.
func GhostPermissions(id string) *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			subjects.Event(id),
			subjects.Register(id),
			subjects.Heartbeat(id),
			subjects.ReplayFor(id),
			// Pushed seeds are read through Mirage, never through the JetStream API: the
			// server does not check a request's reply subject, and JetStream answers
			// there with the account's rights (an empty direct get answer is an empty
			// STREAM.DELETE request).
			subjects.SeedFor(id),
			// Its own id only: another Ghost can neither make it refuse to start (an
			// answer) nor learn of it (a probe).
			subjects.Probe(id),
			// Answers to probes of its own id, which wait on its own inbox.
			bus.GhostInbox(id) + ".>",
			// Answers to Mirage's attach requests, which cross the service import and
			// come with a reply subject the server made: _R_.<token>, good for one answer
			// while the request waits, and guessed by no other Ghost.
			serviceReplies,
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{
			subjects.Command(id),
			subjects.Ack(id),
			subjects.AttachGhost(id),
			subjects.Probe(id),
			subjects.Announce,
			bus.GhostInbox(id) + ".>",
		}},
	}
}

// serviceReplies are the reply subjects nats-server gives requests that cross a service
// import, in the exporting account.
const serviceReplies = "_R_.>"

// MiragePermissions are what Mirage needs: send commands, acks, reports and announces,
// manage its JetStream assets (and read EDGE_CMD for Ghosts' replays), and serve issue, fleet,
// registration, replay and seed read requests.
func MiragePermissions() *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			subjects.AllCommands,
			"ack.*",
			subjects.AllReports,
			subjects.Announce,
			subjects.MirageProbe,
			subjects.AttachGhost("*"),
			"$JS.API.>",
			"$KV." + bus.BucketGhosts + ".>",
			"$KV." + bus.BucketIntents + ".>",
			"$KV." + bus.BucketFleet + ".>",
			"$JS.ACK." + bus.StreamEvents + ".>",
			// Replies to operators' and Ghosts' requests; allow_responses alone does not
			// survive an authorization reload between request and reply.
			"_INBOX.>",
			bus.AllGhostInboxes,
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{
			subjects.Issue,
			subjects.MirageProbe,
			subjects.Attach,
			subjects.Fleet + ".>",
			subjects.AllReplays,
			subjects.AllSeeds,
			subjects.AllRegisters,
			subjects.AllHeartbeats,
			bus.MirageInbox() + ".>",
		}},
		// Replies to the requests Mirage serves (issue, register, fleet, replay, seed).
		Response: &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
	}
}
