package bus_test

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

func TestProbeCommand(t *testing.T) {
	full := bus.Probe{
		Type:      "command",
		CommandID: "cmd_M2mLZ9lsPZ78NnjLnXoOTw",
		IntentID:  "int_M2mLZ9lsPZ78NnjLnXoO9D",
		TraceID:   "e5eebbb539cd041e2f3bf7b9a5b15588",
		SeedID:    "seed.flow",
		Operation: "echo",
	}
	only := func(edit func(*bus.Probe)) bus.Probe {
		p := full
		edit(&p)
		return p
	}
	tests := []struct {
		name string
		data []byte
		want bus.Probe
	}{
		{"valid command", readGolden(t, "command.json"), full},
		{"missing ghost_id", without(t, "command.json", "ghost_id"), full},
		{"wrong-typed timeout_ms", with(t, "command.json", "timeout_ms", "10"), full},
		{"wrong-typed args", with(t, "command.json", "args", []any{"a"}), full},
		{"wrong version", with(t, "command.json", "v", 7), full},
		{"command_id with a dot", with(t, "command.json", "command_id", "cmd.1"),
			only(func(p *bus.Probe) { p.CommandID = "" })},
		{"command_id a number", with(t, "command.json", "command_id", 5),
			only(func(p *bus.Probe) { p.CommandID = "" })},
		{"command_id empty", with(t, "command.json", "command_id", ""),
			only(func(p *bus.Probe) { p.CommandID = "" })},
		{"command_id too long", with(t, "command.json", "command_id", strings.Repeat("c", 129)),
			only(func(p *bus.Probe) { p.CommandID = "" })},
		{"intent_id wildcard", with(t, "command.json", "intent_id", "*"),
			only(func(p *bus.Probe) { p.IntentID = "" })},
		{"trace_id uppercase", with(t, "command.json", "trace_id", "E5EEBBB539CD041E2F3BF7B9A5B15588"),
			only(func(p *bus.Probe) { p.TraceID = "" })},
		{"seed_selector uppercase", with(t, "command.json", "seed_selector", "Seed.flow"),
			only(func(p *bus.Probe) { p.SeedID = "" })},
		{"operation with a space", with(t, "command.json", "operation", "rm -rf"),
			only(func(p *bus.Probe) { p.Operation = "" })},
		{"only a command_id", []byte(`{"command_id":"cmd_1"}`), bus.Probe{CommandID: "cmd_1"}},
		{"not JSON", []byte("hello"), bus.Probe{}},
		{"truncated JSON", []byte(`{"command_id":"cmd_1"`), bus.Probe{}},
		{"JSON array", []byte(`[{"command_id":"cmd_1"}]`), bus.Probe{}},
		{"empty", nil, bus.Probe{}},
		{"null", []byte("null"), bus.Probe{}},
		// An oversize command is still probed, so that its refusal (1101) reaches its sender.
		{"over MaxEnvelope", append([]byte(`{"command_id":"cmd_1"}`), bytes.Repeat([]byte(" "), bus.MaxEnvelope)...), bus.Probe{CommandID: "cmd_1"}},
		{"far over MaxEnvelope", append([]byte(`{"command_id":"cmd_1"}`), bytes.Repeat([]byte(" "), 16*bus.MaxEnvelope)...), bus.Probe{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := bus.ProbeCommand(tt.data); got != tt.want {
				t.Errorf("ProbeCommand = %+v\nwant          %+v", got, tt.want)
			}
		})
	}
}

func TestCut(t *testing.T) {
	tests := []struct {
		s    string
		max  int
		want string
		cut  bool
	}{
		{"ééé", 3, "é", true},
		{"ééé", 4, "éé", true},
		{"ééé", 5, "éé", true},
		{"ééé", 6, "ééé", false},
		{"ééé", 100, "ééé", false},
		{"a€b", 2, "a", true},
		{"a€b", 4, "a€", true},
		{"😀x", 3, "", true},
		{"😀x", 4, "😀", true},
		{"abc", 0, "", true},
		{"", 0, "", false},
		{"abc", 2, "ab", true},
	}
	for _, tt := range tests {
		got, cut := bus.Cut(tt.s, tt.max)
		if got != tt.want || cut != tt.cut {
			t.Errorf("Cut(%q, %d) = %q, %v; want %q, %v", tt.s, tt.max, got, cut, tt.want, tt.cut)
		}
		if !utf8.ValidString(got) || len(got) > tt.max {
			t.Errorf("Cut(%q, %d) = %q is not valid UTF-8 within %d bytes", tt.s, tt.max, got, tt.max)
		}
	}
}

func TestNormalizeResult(t *testing.T) {
	t.Run("long stdout", func(t *testing.T) {
		in := bus.Result{Status: "ok", ExitCode: 3, Stdout: strings.Repeat("a", 70<<10), Stderr: "warn"}
		got := bus.NormalizeResult(in)
		if len(got.Stdout) != bus.MaxOutput || got.Stdout != in.Stdout[:bus.MaxOutput] {
			t.Errorf("stdout is %d bytes, want the first %d", len(got.Stdout), bus.MaxOutput)
		}
		if !got.Truncated {
			t.Error("truncated is false")
		}
		if got.Stderr != "warn" || got.Status != "ok" || got.ExitCode != 3 {
			t.Errorf("other fields changed: %+v", got)
		}
	})
	t.Run("long multibyte stderr", func(t *testing.T) {
		got := bus.NormalizeResult(bus.Result{Stderr: strings.Repeat("€", 30000)})
		if len(got.Stderr) > bus.MaxOutput || !utf8.ValidString(got.Stderr) || !got.Truncated {
			t.Errorf("stderr is %d bytes, valid %v, truncated %v", len(got.Stderr), utf8.ValidString(got.Stderr), got.Truncated)
		}
		if len(got.Stderr) < bus.MaxOutput-2 {
			t.Errorf("stderr cut to %d bytes, more than a rune short of %d", len(got.Stderr), bus.MaxOutput)
		}
	})
	t.Run("at the limit", func(t *testing.T) {
		in := bus.Result{Stdout: strings.Repeat("a", bus.MaxOutput)}
		if got := bus.NormalizeResult(in); got != in {
			t.Errorf("NormalizeResult changed an output of exactly MaxOutput bytes: truncated %v", got.Truncated)
		}
	})
	t.Run("invalid UTF-8", func(t *testing.T) {
		got := bus.NormalizeResult(bus.Result{Stdout: "ok\xffgo", Stderr: "\xc3"})
		if got.Stdout != "ok\uFFFDgo" || got.Stderr != "\uFFFD" {
			t.Errorf("got stdout %q stderr %q, want invalid bytes replaced by U+FFFD", got.Stdout, got.Stderr)
		}
		if got.Truncated {
			t.Error("replacing invalid bytes set truncated")
		}
	})
	t.Run("truncated stays set", func(t *testing.T) {
		if got := bus.NormalizeResult(bus.Result{Stdout: "x", Truncated: true}); !got.Truncated {
			t.Error("truncated was cleared")
		}
	})
	t.Run("result fits an event", func(t *testing.T) {
		r := bus.NormalizeResult(bus.Result{Status: "ok", Stdout: strings.Repeat("\xff", 100<<10), Stderr: strings.Repeat("é", 100<<10)})
		ev := new(bus.Event)
		if err := bus.Decode(readGolden(t, "event_success.json"), ev); err != nil {
			t.Fatal(err)
		}
		ev.Result = r
		if err := ev.Validate(); err != nil {
			t.Errorf("an event with a normalized result does not validate: %v", err)
		}
		data, err := bus.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		if err := bus.Decode(data, new(bus.Event)); err != nil {
			t.Errorf("Decode: %v", err)
		}
	})
}

func TestEncode(t *testing.T) {
	t.Run("too large", func(t *testing.T) {
		c := new(bus.Command)
		if err := bus.Decode(readGolden(t, "command.json"), c); err != nil {
			t.Fatal(err)
		}
		c.Args = map[string]string{"blob": strings.Repeat("a", bus.MaxEnvelope)}
		data, err := bus.Encode(c)
		if data != nil {
			t.Errorf("Encode returned %d bytes with its error", len(data))
		}
		expectError(t, err, bus.CodeTooLarge, "")
	})
	t.Run("not encodable", func(t *testing.T) {
		_, err := bus.Encode(map[string]any{"f": func() {}})
		expectError(t, err, bus.CodeInternal, "")
	})
}

func TestNewHeader(t *testing.T) {
	now := time.UnixMilli(1767268800123)
	h := bus.NewHeader(bus.TypeHeartbeat, "", now)
	if h.Type != bus.TypeHeartbeat || h.V != bus.Version || h.TimestampMS != 1767268800123 {
		t.Errorf("NewHeader = %+v", h)
	}
	if !strings.HasPrefix(h.MessageID, subjects.PrefixMessage+"_") || subjects.ValidateToken("message_id", h.MessageID) != nil {
		t.Errorf("message_id %q is not a msg_ token", h.MessageID)
	}
	if err := subjects.ValidateTraceID(h.TraceID); err != nil {
		t.Errorf("a new trace: %v", err)
	}
	const trace = "e5eebbb539cd041e2f3bf7b9a5b15588"
	h2 := bus.NewHeader(bus.TypeHeartbeat, trace, now)
	if h2.TraceID != trace {
		t.Errorf("trace_id = %q, want the one given", h2.TraceID)
	}
	if h2.MessageID == h.MessageID {
		t.Error("two headers share a message_id")
	}
	hb := &bus.Heartbeat{Header: h, GhostID: "edge-1", Seq: 1}
	if err := hb.Validate(); err != nil {
		t.Errorf("a heartbeat built with NewHeader: %v", err)
	}
	if hb.Head() != &hb.Header {
		t.Error("Head does not return the embedded header")
	}
}

func TestTerminal(t *testing.T) {
	for phase, want := range map[string]bool{
		bus.PhasePending: false, bus.PhaseInProgress: false, bus.PhaseSatisfied: true, bus.PhaseFailed: true, "": false,
	} {
		if got := bus.Terminal(phase); got != want {
			t.Errorf("Terminal(%q) = %v, want %v", phase, got, want)
		}
	}
}

func TestSeedInfoOperation(t *testing.T) {
	r := new(bus.Register)
	if err := bus.Decode(readGolden(t, "register.json"), r); err != nil {
		t.Fatal(err)
	}
	op, ok := r.Seeds[0].Operation("sleep")
	if !ok || op.Name != "sleep" || len(op.Params) != 1 || !op.Params[0].Required {
		t.Errorf("Operation(sleep) = %+v, %v", op, ok)
	}
	if op, ok := r.Seeds[0].Operation("incr"); ok {
		t.Errorf("Operation(incr) on seed.flow = %+v, true", op)
	}
}
