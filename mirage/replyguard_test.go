package mirage

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// Under auth a Ghost's request is answered only on that Ghost's own inbox, the id taken
// from the subject; a refusal is logged at most once per bus.RateLogEvery.
func TestReplyGuardUnderAuth(t *testing.T) {
	var logs bytes.Buffer
	g := newReplyGuard(true, slog.New(slog.NewTextHandler(&logs, nil)))
	for _, tt := range []struct {
		ghost, reply string
		want         bool
	}{
		{"ghost-a", "_R_.Ab12Cd.Ef34", false}, // a service import's reply: not checkable
		{"ghost-a", "_INBOX_GHOST.ghost-a.x1.1", true},
		{"ghost-a", "_INBOX_GHOST.ghost-b.x1.1", false},
		{"ghost-a", "_INBOX_GHOST.ghost-ab.x1", false},
		{"ghost-a", "$KV.edge_fleet.ghost-b", false},
		{"ghost-a", "cmd.ghost-b", false},
		{"ghost-a", "_R_", false},
		{"", "_INBOX_GHOST..x1", false}, // not a valid id in the subject
	} {
		if got := g.allows(tt.ghost, "reg."+tt.ghost, tt.reply); got != tt.want {
			t.Errorf("allows(%q, reply %q) = %v, want %v", tt.ghost, tt.reply, got, tt.want)
		}
	}
	if n := strings.Count(logs.String(), "refused a Ghost's request"); n != 1 {
		t.Errorf("%d refusals logged, want one (then held back):\n%s", n, logs.String())
	}

	open := newReplyGuard(false, slog.New(slog.NewTextHandler(&logs, nil)))
	if !open.allows("ghost-a", "reg.ghost-a", "$KV.edge_fleet.ghost-b") {
		t.Error("without auth every reply is answered (nothing is confined)")
	}
}
