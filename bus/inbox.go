package bus

// Inbox prefixes. Each Ghost has its own, so that no Ghost can read another's replies;
// Mirage has one no Ghost id can produce. The server's permissions (package natsd) allow
// each connection only its own.
const (
	mirageInbox = "_INBOX_MIRAGE"
	ghostInbox  = "_INBOX_GHOST"
)

// AllGhostInboxes matches the replies to every Ghost (Mirage answers their requests).
const AllGhostInboxes = ghostInbox + ".>"

// GhostInbox is the inbox prefix of a Ghost's connection.
func GhostInbox(ghostID string) string { return ghostInbox + "." + ghostID }

// MirageInbox is the inbox prefix of Mirage's connection.
func MirageInbox() string { return mirageInbox }

// GhostReplayConsumer is the name of the short-lived consumer a Ghost reads its missed
// commands through; its own permissions allow only this name and its own subject.
func GhostReplayConsumer(ghostID string) string { return "ghost_" + ghostID }
