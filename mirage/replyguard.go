package mirage

import (
	"log/slog"
	"strings"

	"github.com/edgectl/edgectl/bus"
)

// Answering a Ghost: nats-server does not check a request's reply subject against the
// requester's permissions, and Mirage may publish where a Ghost may not ($KV.edge_fleet.>,
// $KV.edge_ghosts.>, cmd.*). Answering a Ghost's request wherever it names would let the
// Ghost write into the enrollments, the registry or EDGE_CMD through Mirage, or send
// Mirage's answers (a seed read is up to 32 MiB) to other Ghosts. So, when permissions
// confine Ghosts (Mirage runs with auth), a Ghost's request (reg.<id>, mirage.replay.<id>,
// mirage.seed.<id>) is served only when its reply subject is on that Ghost's own inbox,
// the id taken from the subject. With the fleet's two accounts (natsd/accounts.go) the
// requests cross into Mirage's account with their reply subject kept, and the inboxes come
// back to the Ghosts' account, each readable by its Ghost only. Without auth no
// permissions exist: any client may publish anywhere itself, and requests are answered as
// they come.

// replyGuard decides whether a Ghost's request may be answered on its reply subject.
type replyGuard struct {
	confined bool // Ghosts have per-Ghost permissions and reply on bus.GhostInbox(id)
	log      *slog.Logger
	warned   bus.RateLog
}

func newReplyGuard(confined bool, log *slog.Logger) *replyGuard {
	return &replyGuard{confined: confined, log: log}
}

// allows reports whether the request of Ghost ghostID (the subject's token; "" when it is
// not a valid id) received on subject may be answered on reply. A refusal is logged at
// most once per bus.RateLogEvery; the request must then be neither answered nor served.
func (g *replyGuard) allows(ghostID, subject, reply string) bool {
	if !g.confined {
		return true
	}
	if ghostID != "" && strings.HasPrefix(reply, bus.GhostInbox(ghostID)+".") {
		return true
	}
	if ok, n := g.warned.Allow(); ok {
		g.log.Warn("refused a Ghost's request whose reply subject is not its inbox: not served, not answered",
			"direction", "in", "peer", ghostID, "subject", subject, "reply", reply, "refused_since_last_warning", n)
	}
	return false
}
