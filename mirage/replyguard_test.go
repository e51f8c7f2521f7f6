package mirage

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// Under auth a Ghost's request is answered only where the answer cannot be stored: on a
// reply subject of a request that crossed from the Ghosts' account (the fleet accounts),
// or on that Ghost's own inbox (Ghosts in Mirage's account, said once in the log).
func TestReplyGuardUnderAuth(t *testing.T) {
	var logs bytes.Buffer
	g := newReplyGuard(true, slog.New(slog.NewTextHandler(&logs, nil)))
	for _, tt := range []struct {
		ghost, reply string
		want         bool
	}{
		{"ghost-a", "_R_.Ab12Cd.Ef34", true},
		{"ghost-a", "_INBOX_GHOST.ghost-a.x1.1", true},
		{"ghost-a", "_INBOX_GHOST.ghost-b.x1.1", false},
		{"ghost-a", "_INBOX_GHOST.ghost-ab.x1", false},
		{"ghost-a", "$KV.edge_fleet.ghost-b", false},
		{"ghost-a", "cmd.ghost-b", false},
		{"ghost-a", "_R_", false},
		{"", "_R_.Ab12Cd.Ef34", false}, // not a valid id in the subject
	} {
		if got := g.allows(tt.ghost, "reg."+tt.ghost, tt.reply); got != tt.want {
			t.Errorf("allows(%q, reply %q) = %v, want %v", tt.ghost, tt.reply, got, tt.want)
		}
	}
	g.allows("ghost-a", "reg.ghost-a", "_INBOX_GHOST.ghost-a.x2.1")
	if n := strings.Count(logs.String(), "share Mirage's NATS account"); n != 1 {
		t.Errorf("the shared account was said %d times, want once:\n%s", n, logs.String())
	}

	open := newReplyGuard(false, slog.New(slog.NewTextHandler(&logs, nil)))
	if !open.allows("ghost-a", "reg.ghost-a", "$KV.edge_fleet.ghost-b") {
		t.Error("without auth every reply is answered (nothing is confined)")
	}
}
