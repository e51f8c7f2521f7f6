package bus

import (
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/edgectl/edgectl/subjects"
)

// Inbox prefixes. Each Ghost has its own, so that no Ghost can read another's replies;
// Mirage has one no Ghost id can produce.
const (
	mirageInbox = "_INBOX_MIRAGE"
	ghostInbox  = "_INBOX_GHOST"
)

// GhostInbox is the inbox prefix of a Ghost's connection.
func GhostInbox(ghostID string) string { return ghostInbox + "." + ghostID }

// MirageInbox is the inbox prefix of Mirage's connection.
func MirageInbox() string { return mirageInbox }

// GhostReplayConsumer is the name of the short-lived consumer a Ghost reads its missed
// commands through; its own permissions allow only this name and its own subject.
func GhostReplayConsumer(ghostID string) string { return "ghost_" + ghostID }

// GhostPermissions are what Ghost id may do: read its commands and acks, write its events,
// registration and heartbeats, and replay its own commands from EDGE_CMD. Nothing else.
func GhostPermissions(id string) *server.Permissions {
	consumer := GhostReplayConsumer(id)
	api := "$JS.API."
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			subjects.Event(id),
			subjects.Register(id),
			subjects.Heartbeat(id),
			api + "DIRECT.GET." + StreamCommands + "." + subjects.Command(id),
			api + "CONSUMER.CREATE." + StreamCommands + "." + consumer + "." + subjects.Command(id),
			api + "CONSUMER.MSG.NEXT." + StreamCommands + "." + consumer,
			api + "CONSUMER.DELETE." + StreamCommands + "." + consumer,
			// Reading pushed seeds from the object store (read only: no publish to $O.).
			api + "STREAM.INFO.OBJ_" + BucketSeeds,
			api + "DIRECT.GET.OBJ_" + BucketSeeds + ".$O." + BucketSeeds + ".M.*",
			api + "CONSUMER.CREATE.OBJ_" + BucketSeeds + ".*.$O." + BucketSeeds + ".C.*",
			api + "CONSUMER.DELETE.OBJ_" + BucketSeeds + ".*",
			"$JS.FC.OBJ_" + BucketSeeds + ".>",
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{
			subjects.Command(id),
			subjects.Ack(id),
			subjects.AttachGhost(id),
			subjects.Announce,
			GhostInbox(id) + ".>",
		}},
		// Replies to the requests a Ghost serves (attach).
		Response: &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
	}
}

// MiragePermissions are what Mirage needs: send commands, acks, reports and announces,
// manage its JetStream assets, and serve issue, fleet and registration requests.
func MiragePermissions() *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			subjects.AllCommands,
			"ack.*",
			subjects.AllReports,
			subjects.Announce,
			subjects.AttachGhost("*"),
			"$JS.API.>",
			"$KV." + BucketGhosts + ".>",
			"$KV." + BucketIntents + ".>",
			"$KV." + BucketFleet + ".>",
			"$JS.ACK." + StreamEvents + ".>",
			// Replies to operators' and Ghosts' requests; allow_responses alone does not
			// survive an authorization reload between request and reply.
			"_INBOX.>",
			ghostInbox + ".>",
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{
			subjects.Issue,
			subjects.Attach,
			subjects.Fleet + ".>",
			subjects.AllRegisters,
			subjects.AllHeartbeats,
			mirageInbox + ".>",
		}},
		// Replies to the requests Mirage serves (issue, register, fleet).
		Response: &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
	}
}

// Users returns the nkey users of a fleet: the operator (full access: the administrator),
// Mirage, and each enrolled Ghost with its own permissions.
func Users(operator, mirage string, ghosts map[string]string) []*server.NkeyUser {
	users := []*server.NkeyUser{
		{Nkey: operator},
		{Nkey: mirage, Permissions: MiragePermissions()},
	}
	for id, pub := range ghosts {
		users = append(users, &server.NkeyUser{Nkey: pub, Permissions: GhostPermissions(id)})
	}
	return users
}
