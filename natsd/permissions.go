package natsd

import (
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// GhostPermissions are what Ghost id may do: read its commands and acks, write its events,
// registration and heartbeats, replay its own commands from EDGE_CMD, and read pushed
// seeds through Mirage. Nothing else, and no consumer creation at all: nats-server does not check a new
// consumer's deliver_subject against its creator's permissions, so a Ghost that could
// create one could have it deliver anywhere. Its replay consumer is created by Mirage on
// request (mirage.replay.<id>); it reads seeds through Mirage (mirage.seed.<id>).
func GhostPermissions(id string) *server.Permissions {
	consumer := bus.GhostReplayConsumer(id)
	api := "$JS.API."
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			subjects.Event(id),
			subjects.Register(id),
			subjects.Heartbeat(id),
			subjects.ReplayFor(id),
			api + "DIRECT.GET." + bus.StreamCommands + "." + subjects.Command(id),
			// Binding to, reading and removing the replay consumer Mirage created.
			api + "CONSUMER.INFO." + bus.StreamCommands + "." + consumer,
			api + "CONSUMER.MSG.NEXT." + bus.StreamCommands + "." + consumer,
			api + "CONSUMER.DELETE." + bus.StreamCommands + "." + consumer,
			// Pushed seeds are read through Mirage, never through the JetStream API: the
			// server does not check a request's reply subject, and JetStream answers
			// there with the account's rights (an empty direct get answer is an empty
			// STREAM.DELETE request).
			subjects.SeedFor(id),
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{
			subjects.Command(id),
			subjects.Ack(id),
			subjects.AttachGhost(id),
			subjects.Announce,
			bus.GhostInbox(id) + ".>",
		}},
		// Replies to the requests a Ghost serves (attach).
		Response: &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
	}
}

// MiragePermissions are what Mirage needs: send commands, acks, reports and announces,
// manage its JetStream assets (and the Ghosts' replay consumers), and serve issue, fleet,
// registration, replay and seed read requests.
func MiragePermissions() *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			subjects.AllCommands,
			"ack.*",
			subjects.AllReports,
			subjects.Announce,
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
