package bus

import (
	"context"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/subjects"
)

// GhostRequestSubjects are what Ghosts publish into Mirage's account with their reply
// subject kept (natsd/accounts.go): registration, heartbeats, replay and seed read
// requests. Mirage answers them on the Ghost's own inbox only; a stream that stored them
// would publish its publish ack on whatever reply subject the Ghost named, with the rights
// of Mirage's account (a KV key, another Ghost's commands).
var GhostRequestSubjects = []string{subjects.AllRegisters, subjects.AllHeartbeats, subjects.AllReplays, subjects.AllSeeds}

// CheckGhostRequestsNotStored refuses an account in which a stream captures a subject of
// GhostRequestSubjects, naming the stream and what to do.
func CheckGhostRequestsNotStored(ctx context.Context, js jetstream.JetStream) error {
	lister := js.ListStreams(ctx)
	var found []string
	for info := range lister.Info() {
		for _, s := range info.Config.Subjects {
			for _, g := range GhostRequestSubjects {
				if subjectsOverlap(s, g) {
					found = append(found, fmt.Sprintf("stream %s stores %s (subject %s)", info.Config.Name, g, s))
				}
			}
		}
	}
	if err := lister.Err(); err != nil {
		return fmt.Errorf("listing streams: %w", err)
	}
	if len(found) > 0 {
		return fmt.Errorf("%s: Ghosts publish there with a reply subject of their choosing, and JetStream would store its publish ack wherever they name (another Ghost's enrollment or commands); remove those subjects from the stream (docs/security.md, \"Two accounts\")", strings.Join(found, "; "))
	}
	return nil
}

// subjectsOverlap reports whether some subject matches both a and b (NATS wildcards: *
// one token, > the rest).
func subjectsOverlap(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; ; i++ {
		if i == len(at) || i == len(bt) {
			return len(at) == len(bt)
		}
		x, y := at[i], bt[i]
		if x == ">" || y == ">" {
			return true
		}
		if x != "*" && y != "*" && x != y {
			return false
		}
	}
}
