package bus_test

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// malformed are seed inputs every decoder must refuse without panicking.
var malformed = [][]byte{
	nil,
	[]byte(""),
	[]byte("null"),
	[]byte("[]"),
	[]byte("{"),
	[]byte("{}"),
	[]byte(`{"type":"command"}`),
	[]byte(`{"type":"command","v":"1"}`),
	[]byte(`{"type":"event","outcome":"error","error":null}`),
	[]byte(`{"type":"issue","objective":[]}`),
	[]byte(`{"type":"command","args":{"a":1}}`),
	[]byte(`{"type":"command","timeout_ms":1e400}`),
	[]byte("{\"type\":\"command\",\"ghost_id\":\"\xff\"}"),
	[]byte(`{"type":"command","ghost_id":"\ud800"}`),
	[]byte(`{"TYPE":"command","Ghost_ID":"a.b"}`),
	[]byte(`{"result":{"stdout":1}}`),
	[]byte(`{"seeds":[{"operations":[{"params":[{}]}]}]}`),
}

// fuzzDecode checks that Decode never panics, and that what it accepts validates, encodes
// and decodes again to the same envelope.
func fuzzDecode(f *testing.F, newEnvelope func() bus.Envelope, seeds ...string) {
	for _, file := range seeds {
		data := readGolden(f, file)
		f.Add(data)
		f.Add(bytes.ReplaceAll(data, []byte("\n"), nil))
		f.Add(data[:len(data)/2])
	}
	for _, g := range goldens {
		f.Add(readGolden(f, g.file))
	}
	for _, m := range malformed {
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := newEnvelope()
		if err := bus.Decode(data, m); err != nil {
			if bus.AsError(err).Class == bus.ClassInternal {
				t.Fatalf("Decode returned an internal error: %v", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("Decode accepted an envelope that does not validate: %v", err)
		}
		enc, err := bus.Encode(m)
		if err != nil {
			t.Fatalf("Encode of a decoded envelope: %v", err)
		}
		again := newEnvelope()
		if err := bus.Decode(enc, again); err != nil {
			t.Fatalf("Decode of the encoding: %v\n%s", err, enc)
		}
		if !reflect.DeepEqual(m, again) {
			t.Fatalf("round trip differs:\n%+v\n%+v", m, again)
		}
	})
}

func FuzzDecodeCommand(f *testing.F) {
	fuzzDecode(f, func() bus.Envelope { return new(bus.Command) }, "command.json")
}

func FuzzDecodeIssue(f *testing.F) {
	fuzzDecode(f, func() bus.Envelope { return new(bus.Issue) }, "issue.json")
}

func FuzzDecodeEvent(f *testing.F) {
	fuzzDecode(f, func() bus.Envelope { return new(bus.Event) }, "event_success.json", "event_error.json")
}

// FuzzProbeCommand checks that ProbeCommand never panics and keeps only valid values.
func FuzzProbeCommand(f *testing.F) {
	f.Add(readGolden(f, "command.json"))
	for _, m := range malformed {
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := bus.ProbeCommand(data)
		if p.CommandID != "" && subjects.ValidateToken("command_id", p.CommandID) != nil {
			t.Fatalf("invalid command_id %q kept", p.CommandID)
		}
		if p.IntentID != "" && subjects.ValidateToken("intent_id", p.IntentID) != nil {
			t.Fatalf("invalid intent_id %q kept", p.IntentID)
		}
		if p.TraceID != "" && subjects.ValidateTraceID(p.TraceID) != nil {
			t.Fatalf("invalid trace_id %q kept", p.TraceID)
		}
		if p.SeedID != "" && subjects.ValidateSeedID(p.SeedID) != nil {
			t.Fatalf("invalid seed id %q kept", p.SeedID)
		}
		if p.Operation != "" && subjects.ValidateOperation(p.Operation) != nil {
			t.Fatalf("invalid operation %q kept", p.Operation)
		}
	})
}

// CommandIDOf reads the same command_id as ProbeCommand, whatever the bytes.
func FuzzCommandIDOf(f *testing.F) {
	f.Add(readGolden(f, "command.json"))
	for _, m := range malformed {
		f.Add(m)
	}
	f.Add([]byte(`{"command_id":"cmd_a","command_id":"cmd_b"}`))
	f.Add([]byte(`{"Command_ID":"cmd_a"}`))
	f.Add([]byte(`{"command_id":"cmd_a","COMMAND_ID":"cmd_b"}`))
	f.Add([]byte(` {"command_id":"cmd_\u0061"} `))
	f.Add([]byte(`{"command_id":"cmd a"}`))
	f.Add([]byte(`{"command_id":7}`))
	f.Add([]byte(`{"command_id":"cmd_a","args":{"k":1}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, want := bus.CommandIDOf(data), bus.ProbeCommand(data).CommandID; got != want {
			t.Fatalf("CommandIDOf(%q) = %q, ProbeCommand reads %q", data, got, want)
		}
	})
}
