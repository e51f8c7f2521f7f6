package bus

import "github.com/nats-io/nats.go"

// Inbox prefixes. Each Ghost has its own, so that no Ghost can read another's replies;
// Mirage has one no Ghost id can produce. The server's permissions (package natsd) allow
// each connection only its own.
const (
	mirageInbox = "_INBOX_MIRAGE"
	ghostInbox  = "_INBOX_GHOST"
)

// GhostRequests is how a Ghost's connection waits for the replies nats.go waits for (the
// acknowledgement of each event it stores, its register without authentication, the
// JetStream API): on a reply subject subscribed for that one request, instead of one
// wildcard subscription for them all. A wildcard subscription costs the server, when it
// is made, a match against every subject its subscription cache holds, under the cache's
// write lock: ten thousand Ghosts starting at once (a fleet starting, a server
// restarting) made ten million such matches, and their registration took a quarter
// longer (docs/performance.md, "What made it faster"). The price: each such request
// subscribes and unsubscribes, which a cluster tells its other servers. The subject
// stays under the Ghost's inbox prefix. Requests that Mirage answers under
// authentication keep their one long-lived subscription (Answers: in a cluster a
// request must not overtake its reply subject's interest).
func GhostRequests() nats.Option { return nats.UseOldRequestStyle() }

// AllGhostInboxes matches the replies to every Ghost (Mirage answers their requests).
const AllGhostInboxes = ghostInbox + ".>"

// GhostInbox is the inbox prefix of a Ghost's connection.
func GhostInbox(ghostID string) string { return ghostInbox + "." + ghostID }

// MirageInbox is the inbox prefix of Mirage's connection.
func MirageInbox() string { return mirageInbox }

// GhostReplayConsumer is the name of the short-lived consumer a Ghost reads its missed
// commands through; its own permissions allow only this name and its own subject.
func GhostReplayConsumer(ghostID string) string { return "ghost_" + ghostID }
