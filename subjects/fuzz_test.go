package subjects

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzValidateGhostID(f *testing.F) {
	for _, s := range []string{
		"local", "edge-1", "A_b-9", strings.Repeat("a", 64), strings.Repeat("a", 65),
		"", "edge.1", "-x", "_x", "a b", "é", "*", ">", "a.>", "cmd.x", "\x00", "\xff",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if err := ValidateGhostID(id); err != nil {
			if id != "" && len(id) <= 64 && strings.Contains(id, ".") && !strings.Contains(err.Error(), "dot") {
				t.Errorf("ValidateGhostID(%q) = %q: a dotted id must be refused by name", id, err)
			}
			return
		}
		if strings.Contains(id, ".") {
			t.Fatalf("valid ghost id %q contains a dot", id)
		}
		if len(id) < 1 || len(id) > 64 {
			t.Fatalf("valid ghost id %q has length %d", id, len(id))
		}
		if !utf8.ValidString(id) || strings.ContainsAny(id, "*> \t\r\n") {
			t.Fatalf("valid ghost id %q is not subject-token safe", id)
		}
		for _, build := range []func(string) string{Command, Event, Ack, Register, Heartbeat} {
			subject := build(id)
			if tokens := strings.Split(subject, "."); len(tokens) != 2 || tokens[1] != id {
				t.Fatalf("subject %q of ghost id %q is not exactly two tokens", subject, id)
			}
			got, err := GhostFrom(subject)
			if err != nil || got != id {
				t.Fatalf("GhostFrom(%q) = %q, %v; want %q", subject, got, err, id)
			}
		}
	})
}
