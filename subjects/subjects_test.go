package subjects

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateGhostID(t *testing.T) {
	tests := []struct {
		name    string
		id      string
		wantErr bool
		mention string // a word the message must contain, when wantErr
	}{
		{name: "local", id: "local"},
		{name: "dash", id: "edge-1"},
		{name: "mixed", id: "A_b-9"},
		{name: "digit first", id: "9lives"},
		{name: "64 chars", id: strings.Repeat("a", 64)},
		{name: "empty", id: "", wantErr: true, mention: "empty"},
		{name: "65 chars", id: strings.Repeat("a", 65), wantErr: true, mention: "at most 64"},
		{name: "dot", id: "edge.1", wantErr: true, mention: "dot"},
		{name: "leading dash", id: "-x", wantErr: true, mention: "start with a letter or digit"},
		{name: "leading underscore", id: "_x", wantErr: true, mention: "start with a letter or digit"},
		{name: "space", id: "a b", wantErr: true, mention: "allowed are"},
		{name: "non-ascii", id: "é", wantErr: true},
		{name: "non-ascii inside", id: "caf\u00e9", wantErr: true, mention: "allowed are"},
		{name: "wildcard star", id: "*", wantErr: true},
		{name: "wildcard gt", id: "a>", wantErr: true},
		{name: "slash", id: "a/b", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateGhostID(tt.id)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("ValidateGhostID(%q) = %v, want nil", tt.id, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ValidateGhostID(%q) = nil, want an error", tt.id)
			}
			if !errors.Is(err, ErrInvalidID) {
				t.Errorf("error %v does not wrap ErrInvalidID", err)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("error %q does not mention %q", err, tt.mention)
			}
		})
	}
}

func TestValidateSeedID(t *testing.T) {
	tests := []struct {
		id    string
		valid bool
	}{
		{"seed.flow", true},
		{"service.mongodb", true},
		{"seed_kv-2", true},
		{"a", true},
		{strings.Repeat("s", 64), true},
		{"", false},
		{strings.Repeat("s", 65), false},
		{"Seed.flow", false},
		{"seed flow", false},
		{"seed/flow", false},
		{"seed*", false},
		{"séed", false},
	}
	for _, tt := range tests {
		err := ValidateSeedID(tt.id)
		if (err == nil) != tt.valid {
			t.Errorf("ValidateSeedID(%q) = %v, want valid %v", tt.id, err, tt.valid)
		}
		if err != nil && !errors.Is(err, ErrInvalidID) {
			t.Errorf("ValidateSeedID(%q): %v does not wrap ErrInvalidID", tt.id, err)
		}
	}
}

func TestValidateOperation(t *testing.T) {
	tests := []struct {
		name  string
		valid bool
	}{
		{"status", true},
		{"disk_usage", true},
		{"v2.apply", true},
		{"re-run", true},
		{strings.Repeat("o", 64), true},
		{"", false},
		{strings.Repeat("o", 65), false},
		{"Status", false},
		{"STATUS", false},
		{"get key", false},
		{"op>", false},
	}
	for _, tt := range tests {
		err := ValidateOperation(tt.name)
		if (err == nil) != tt.valid {
			t.Errorf("ValidateOperation(%q) = %v, want valid %v", tt.name, err, tt.valid)
		}
	}
	if err := ValidateOperation("Status"); err == nil || !strings.Contains(err.Error(), "operation") {
		t.Errorf("ValidateOperation(Status) = %v, want an error naming the operation", err)
	}
}

func TestValidateToken(t *testing.T) {
	tests := []struct {
		s     string
		valid bool
	}{
		{"cmd_Xb3RkPq8vVnS2c1Tz9Ld0e", true},
		{"int_1", true},
		{"A-b_9", true},
		{strings.Repeat("t", 128), true},
		{"", false},
		{strings.Repeat("t", 129), false},
		{"cmd.1", false},
		{"cmd*", false},
		{"cmd>", false},
		{"cmd 1", false},
		{"cmd\n1", false},
		{"cmdé", false},
	}
	for _, tt := range tests {
		err := ValidateToken("command_id", tt.s)
		if (err == nil) != tt.valid {
			t.Errorf("ValidateToken(%q) = %v, want valid %v", tt.s, err, tt.valid)
		}
		if err != nil && !strings.Contains(err.Error(), "command_id") {
			t.Errorf("ValidateToken(%q) = %q, want the message to name command_id", tt.s, err)
		}
	}
}

func TestValidateTraceID(t *testing.T) {
	tests := []struct {
		name  string
		s     string
		valid bool
	}{
		{"w3c example", "4bf92f3577b34da6a3ce929d0e0e4736", true},
		{"one nonzero", "00000000000000000000000000000001", true},
		{"31 chars", "4bf92f3577b34da6a3ce929d0e0e473", false},
		{"33 chars", "4bf92f3577b34da6a3ce929d0e0e47360", false},
		{"empty", "", false},
		{"uppercase hex", "4BF92F3577B34DA6A3CE929D0E0E4736", false},
		{"non hex", "4bf92f3577b34da6a3ce929d0e0e473g", false},
		{"all zeros", strings.Repeat("0", 32), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateTraceID(tt.s)
			if (err == nil) != tt.valid {
				t.Fatalf("ValidateTraceID(%q) = %v, want valid %v", tt.s, err, tt.valid)
			}
			if err != nil && !errors.Is(err, ErrInvalidID) {
				t.Errorf("%v does not wrap ErrInvalidID", err)
			}
		})
	}
}

func TestNewID(t *testing.T) {
	for _, prefix := range []string{PrefixIntent, PrefixCommand, PrefixExecution, PrefixEvent, PrefixMessage} {
		id := NewID(prefix)
		if !strings.HasPrefix(id, prefix+"_") {
			t.Errorf("NewID(%q) = %q, want prefix %q", prefix, id, prefix+"_")
		}
		if err := ValidateToken("id", id); err != nil {
			t.Errorf("NewID(%q) = %q is not a valid token: %v", prefix, id, err)
		}
	}
	const n = 10000
	seen := make(map[string]bool, n)
	for i := 0; i < n; i++ {
		id := NewID(PrefixCommand)
		if seen[id] {
			t.Fatalf("NewID repeated %q after %d ids", id, i)
		}
		seen[id] = true
	}
}

func TestNewTraceID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		id := NewTraceID()
		if err := ValidateTraceID(id); err != nil {
			t.Fatalf("NewTraceID() = %q: %v", id, err)
		}
		if seen[id] {
			t.Fatalf("NewTraceID repeated %q", id)
		}
		seen[id] = true
	}
}

func TestNewSpanID(t *testing.T) {
	id := NewSpanID()
	if len(id) != 16 || strings.Trim(id, "0123456789abcdef") != "" {
		t.Errorf("NewSpanID() = %q, want 16 lowercase hex characters", id)
	}
}

func TestBuilders(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{Command("x"), "cmd.x"},
		{Event("edge-1"), "evt.edge-1"},
		{Ack("edge-1"), "ack.edge-1"},
		{Register("edge-1"), "reg.edge-1"},
		{Heartbeat("edge-1"), "hb.edge-1"},
		{Report("int_abc"), "report.int_abc"},
		{AttachGhost("edge-1"), "attach.edge-1"},
		{Probe("edge-1"), "probe.edge-1"},
		{AllCommands, "cmd.*"},
		{AllEvents, "evt.*"},
		{AllRegisters, "reg.*"},
		{AllHeartbeats, "hb.*"},
		{AllReports, "report.*"},
		{Issue, "mirage.issue"},
		{Announce, "mirage.announce"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestGhostFrom(t *testing.T) {
	ok := []struct{ subject, want string }{
		{Command("edge-1"), "edge-1"},
		{Event("edge-1"), "edge-1"},
		{Ack("local"), "local"},
		{Register("A_b-9"), "A_b-9"},
		{Heartbeat("n1"), "n1"},
		{Probe("edge-1"), "edge-1"},
	}
	for _, tt := range ok {
		got, err := GhostFrom(tt.subject)
		if err != nil || got != tt.want {
			t.Errorf("GhostFrom(%q) = %q, %v; want %q, nil", tt.subject, got, err, tt.want)
		}
	}
	bad := []struct {
		name, subject string
	}{
		{"report prefix", "report.int_1"},
		{"mirage prefix", "mirage.issue"},
		{"ghost control", "ghost.edge-1.control"},
		{"unknown prefix", "foo.edge-1"},
		{"no token", "cmd"},
		{"empty token", "cmd."},
		{"empty", ""},
		{"extra token", "evt.edge.1"},
		{"invalid id", "evt.-x"},
		{"wildcard", "evt.*"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			got, err := GhostFrom(tt.subject)
			if err == nil {
				t.Fatalf("GhostFrom(%q) = %q, nil; want an error", tt.subject, got)
			}
			if got != "" {
				t.Errorf("GhostFrom(%q) returned id %q with its error", tt.subject, got)
			}
			if !strings.Contains(err.Error(), tt.subject) {
				t.Errorf("error %q does not name the subject %q", err, tt.subject)
			}
		})
	}
}

func TestGhostFromReplay(t *testing.T) {
	if got, err := GhostFromReplay(ReplayFor("edge-1")); err != nil || got != "edge-1" {
		t.Errorf("GhostFromReplay(%q) = %q, %v; want edge-1, nil", ReplayFor("edge-1"), got, err)
	}
	for _, subject := range []string{"mirage.replay", "mirage.replay.", "mirage.replay.-x", "mirage.replay.*", "mirage.replay.a.b", "cmd.edge-1", "mirage.issue", ""} {
		if got, err := GhostFromReplay(subject); err == nil {
			t.Errorf("GhostFromReplay(%q) = %q, nil; want an error", subject, got)
		}
	}
}

func TestGhostFromSeed(t *testing.T) {
	if got, err := GhostFromSeed(SeedFor("edge-1")); err != nil || got != "edge-1" {
		t.Errorf("GhostFromSeed(%q) = %q, %v; want edge-1, nil", SeedFor("edge-1"), got, err)
	}
	for _, subject := range []string{"mirage.seed", "mirage.seed.", "mirage.seed.-x", "mirage.seed.*", "mirage.seed.a.b", "mirage.replay.edge-1", "cmd.edge-1", ""} {
		if got, err := GhostFromSeed(subject); err == nil {
			t.Errorf("GhostFromSeed(%q) = %q, nil; want an error", subject, got)
		}
	}
}
