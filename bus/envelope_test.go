package bus_test

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
)

func TestGoldenRoundTrip(t *testing.T) {
	for _, g := range goldens {
		t.Run(g.file, func(t *testing.T) {
			data := readGolden(t, g.file)
			first := g.new()
			if err := bus.Decode(data, first); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if first.Validate() != nil {
				t.Fatalf("Validate after Decode: %v", first.Validate())
			}
			enc, err := bus.Encode(first)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			second := g.new()
			if err := bus.Decode(enc, second); err != nil {
				t.Fatalf("Decode of the encoding: %v\n%s", err, enc)
			}
			if !reflect.DeepEqual(first, second) {
				t.Errorf("round trip differs:\nfirst  %+v\nsecond %+v", first, second)
			}
			// The golden is exactly what the encoder writes: no field missing, none extra.
			if want, got := jsonMap(t, data), jsonMap(t, enc); !reflect.DeepEqual(want, got) {
				t.Errorf("encoding differs from the golden:\ngolden  %v\nencoded %v", want, got)
			}
		})
	}
}

// missing is a required field removed from a golden: Decode fails with code naming field.
type missing struct {
	path  string
	code  bus.Code
	field string // defaults to path
}

// headerMissing applies to every envelope.
var headerMissing = []missing{
	{path: "type", code: bus.CodeFraming},
	{path: "v", code: bus.CodeSemantic},
	{path: "message_id", code: bus.CodeSemantic},
	{path: "trace_id", code: bus.CodeSemantic},
	{path: "timestamp_ms", code: bus.CodeSemantic},
}

// requiredFields lists, per golden, the required fields whose absence Decode can see.
// Fields whose zero value is a valid value (exit_code, stdout, stderr, truncated, ack_code,
// reason, seq, counts.*) cannot be told missing from zero and are not listed.
var requiredFields = map[string][]missing{
	"issue.json": {
		{path: "actor"},
		{path: "target_scope"},
		{path: "objective", field: "objective.seed_selector"},
		{path: "objective.seed_selector"},
		{path: "objective.operation"},
		{path: "objective.args"},
		{path: "timeout_ms"},
	},
	"issue_reply_accepted.json": {{path: "intent_id"}, {path: "status"}},
	"issue_reply_rejected.json": {{path: "status"}, {path: "error"}},
	"command.json": {
		{path: "command_id"},
		{path: "intent_id"},
		{path: "ghost_id"},
		{path: "seed_selector"},
		{path: "operation"},
		{path: "args"},
		{path: "deliver_by_ms"},
		{path: "timeout_ms"},
	},
	"seed_execute.json": {
		{path: "execution_id"},
		{path: "command_id"},
		{path: "seed_id"},
		{path: "operation"},
		{path: "args"},
		{path: "timeout_ms"},
	},
	"seed_result.json": {{path: "execution_id"}, {path: "status"}},
	"event_success.json": {
		{path: "event_id"},
		{path: "command_id"},
		{path: "intent_id"},
		{path: "execution_id"},
		{path: "ghost_id"},
		{path: "seed_id"},
		{path: "operation"},
		{path: "outcome"},
		{path: "result", field: "result.status"},
		{path: "result.status"},
		{path: "started_ms"},
		{path: "finished_ms"},
	},
	"event_error.json": {
		{path: "event_id"},
		{path: "command_id"},
		{path: "execution_id"},
		{path: "ghost_id"},
		{path: "outcome"},
		{path: "error"},
		{path: "error.code"},
		{path: "error.class"},
		{path: "error.message"},
		{path: "started_ms"},
		{path: "finished_ms"},
	},
	"event_ack.json": {{path: "event_id"}, {path: "command_id"}, {path: "ghost_id"}, {path: "ack_status"}},
	"register.json": {
		{path: "ghost_id"},
		{path: "version"},
		{path: "labels"},
		{path: "seeds"},
		{path: "seeds[0].id"},
		{path: "seeds[0].operations[1].name"},
	},
	"register_ack.json": {{path: "ghost_id"}, {path: "status"}},
	"heartbeat.json":    {{path: "ghost_id"}},
	"announce.json":     {{path: "mirage_id"}},
	"probe.json":        {{path: "ghost_id"}, {path: "instance_id"}, {path: "started_ms"}, {path: "phase"}},
	"probe_answer.json": {{path: "ghost_id"}, {path: "instance_id"}, {path: "started_ms"}, {path: "phase"}},
	"report.json": {
		{path: "intent_id"},
		{path: "phase"},
		{path: "completion_state"},
		{path: "summary"},
		{path: "results"},
	},
}

func TestDecodeMissingRequiredField(t *testing.T) {
	for _, g := range goldens {
		cases, ok := requiredFields[g.file]
		if !ok {
			t.Errorf("no required-field table for %s", g.file)
		}
		for _, c := range append(append([]missing{}, headerMissing...), cases...) {
			t.Run(g.file+"/"+c.path, func(t *testing.T) {
				code, field := c.code, c.field
				if code == 0 {
					code = bus.CodeSemantic
				}
				if field == "" {
					field = c.path
				}
				err := bus.Decode(without(t, g.file, c.path), g.new())
				pe := expectError(t, err, code, field)
				if !strings.Contains(pe.Message, field) {
					t.Errorf("message %q does not name %s", pe.Message, field)
				}
			})
		}
	}
}

// wrongType is a field given a JSON value of the wrong type: Decode fails with 1200.
type wrongType struct {
	file, path string
	value      any
	field      string // defaults to path
}

const ()

var wrongTypes = []wrongType{
	{file: "issue.json", path: "timeout_ms", value: "10"},
	{file: "issue.json", path: "timeout_ms", value: 1.5},
	{file: "issue.json", path: "timeout_ms", value: 1e30},
	{file: "issue.json", path: "deliver_by_ms", value: "soon"},
	{file: "issue.json", path: "actor", value: 5},
	{file: "issue.json", path: "objective", value: "x"},
	{file: "issue.json", path: "objective.args", value: []any{"a"}},
	{file: "issue.json", path: "objective.args.message", value: 1, field: "objective.args"},
	{file: "issue.json", path: "v", value: "1"},
	{file: "issue.json", path: "message_id", value: 5},
	{file: "issue.json", path: "trace_id", value: true},
	{file: "issue.json", path: "timestamp_ms", value: "now"},
	{file: "issue_reply_accepted.json", path: "targets", value: "edge-1"},
	{file: "issue_reply_rejected.json", path: "error.code", value: "1300"},
	{file: "command.json", path: "timeout_ms", value: "10"},
	{file: "command.json", path: "deliver_by_ms", value: 1.5},
	{file: "command.json", path: "ghost_id", value: 7},
	{file: "command.json", path: "args", value: []any{"a"}},
	{file: "command.json", path: "args.message", value: 1, field: "args"},
	{file: "seed_execute.json", path: "timeout_ms", value: "10"},
	{file: "seed_execute.json", path: "args.message", value: false, field: "args"},
	{file: "seed_result.json", path: "execution_id", value: 1},
	{file: "seed_result.json", path: "exit_code", value: "0"},
	{file: "seed_result.json", path: "truncated", value: "no"},
	{file: "event_success.json", path: "result", value: "ok"},
	{file: "event_success.json", path: "result.exit_code", value: "0"},
	{file: "event_success.json", path: "result.truncated", value: 0},
	{file: "event_success.json", path: "started_ms", value: "x"},
	{file: "event_success.json", path: "outcome", value: true},
	{file: "event_error.json", path: "error", value: "boom"},
	{file: "event_error.json", path: "error.code", value: "1400"},
	{file: "event_ack.json", path: "ack_code", value: "0"},
	{file: "event_ack.json", path: "ack_code", value: 1.5},
	{file: "register.json", path: "labels", value: []any{}},
	{file: "register.json", path: "labels.site", value: 1, field: "labels"},
	{file: "register.json", path: "seeds", value: map[string]any{}},
	{file: "register_ack.json", path: "status", value: 1},
	{file: "heartbeat.json", path: "seq", value: -1},
	{file: "heartbeat.json", path: "seq", value: "42"},
	{file: "announce.json", path: "mirage_id", value: true},
	{file: "report.json", path: "counts.success", value: "1"},
	{file: "report.json", path: "results", value: map[string]any{}},
	{file: "report.json", path: "phase", value: 2},
}

func TestDecodeWrongFieldType(t *testing.T) {
	for _, c := range wrongTypes {
		t.Run(fmt.Sprintf("%s/%s=%v", c.file, c.path, c.value), func(t *testing.T) {
			field := c.field
			if field == "" {
				field = c.path
			}
			g := goldenOf(t, c.file)
			expectError(t, bus.Decode(with(t, c.file, c.path, c.value), g.new()), bus.CodeDecode, field)
		})
	}
}

func TestDecodeFraming(t *testing.T) {
	cmd := readGolden(t, "command.json")
	badUTF8 := bytes.Replace(cmd, []byte(`"edge-1"`), []byte("\"edge-\xff\""), 1)
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"blank", []byte(" \n\t")},
		{"not JSON", []byte("hello")},
		{"JSON array", []byte(`[{"type":"command"}]`)},
		{"empty array", []byte(`[]`)},
		{"JSON string", []byte(`"command"`)},
		{"JSON number", []byte(`1`)},
		{"JSON null", []byte(`null`)},
		{"truncated object", cmd[:len(cmd)/2]},
		{"trailing garbage", append(append([]byte{}, cmd...), 'x')},
		{"two objects", append(append([]byte{}, cmd...), cmd...)},
		{"invalid UTF-8", badUTF8},
		{"invalid UTF-8 outside strings", append([]byte{0xff}, cmd...)},
		{"NUL", []byte{0}},
		// Whitespace that is not JSON's around an object: Go's TrimSpace would take it.
		{"vertical tab first", append([]byte("\v"), cmd...)},
		{"form feed last", append(append([]byte{}, cmd...), '\f')},
		{"no-break space first", append([]byte("\u00a0"), cmd...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			expectError(t, bus.Decode(tt.data, new(bus.Command)), bus.CodeFraming, "")
		})
	}
}

func TestDecodeSize(t *testing.T) {
	cmd := bytes.TrimSpace(readGolden(t, "command.json"))
	pad := func(n int) []byte {
		return append(append([]byte{}, cmd...), bytes.Repeat([]byte(" "), n-len(cmd))...)
	}
	if err := bus.Decode(pad(bus.MaxEnvelope), new(bus.Command)); err != nil {
		t.Errorf("an envelope of exactly MaxEnvelope bytes: %v", err)
	}
	expectError(t, bus.Decode(pad(bus.MaxEnvelope+1), new(bus.Command)), bus.CodeTooLarge, "")
	// Size is checked before anything else.
	expectError(t, bus.Decode(bytes.Repeat([]byte("x"), bus.MaxEnvelope+1), new(bus.Command)), bus.CodeTooLarge, "")

	// A large argument inside the envelope counts too.
	big := with(t, "command.json", "args.message", strings.Repeat("a", bus.MaxEnvelope))
	expectError(t, bus.Decode(big, new(bus.Command)), bus.CodeTooLarge, "")
}

func TestDecodeIgnoresUnknownFields(t *testing.T) {
	for _, g := range goldens {
		t.Run(g.file, func(t *testing.T) {
			data := mutate(t, g.file, func(m map[string]any) {
				m["x_unknown"] = "secret"
				m["x_nested"] = map[string]any{"a": []any{1, "two", nil}}
				if obj, ok := m["objective"].(map[string]any); ok {
					obj["x_unknown"] = "secret"
				}
				if res, ok := m["result"].(map[string]any); ok {
					res["x_unknown"] = "secret"
				}
			})
			got, plain := g.new(), g.new()
			if err := bus.Decode(data, got); err != nil {
				t.Fatalf("Decode with unknown fields: %v", err)
			}
			if err := bus.Decode(readGolden(t, g.file), plain); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, plain) {
				t.Errorf("unknown fields changed the envelope:\n%+v\n%+v", got, plain)
			}
			enc, err := bus.Encode(got)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(enc, []byte("x_unknown")) || bytes.Contains(enc, []byte("secret")) || bytes.Contains(enc, []byte("x_nested")) {
				t.Errorf("unknown fields retained: %s", enc)
			}
		})
	}
}

func TestDecodeWrongEnvelopeType(t *testing.T) {
	for _, g := range goldens {
		t.Run(g.file, func(t *testing.T) {
			for _, v := range []any{"", "commandx", "Command", "task"} {
				expectError(t, bus.Decode(with(t, g.file, "type", v), g.new()), bus.CodeFraming, "type")
			}
			// Every other kind of envelope refuses this one by its type.
			want := jsonMap(t, readGolden(t, g.file))["type"]
			for _, other := range goldens {
				if jsonMap(t, readGolden(t, other.file))["type"] == want {
					continue
				}
				expectError(t, bus.Decode(readGolden(t, g.file), other.new()), bus.CodeFraming, "type")
			}
		})
	}
}

func TestDecodeVersion(t *testing.T) {
	for _, g := range goldens {
		for _, v := range []int{0, 2, -1, 100} {
			t.Run(fmt.Sprintf("%s/v=%d", g.file, v), func(t *testing.T) {
				pe := expectError(t, bus.Decode(with(t, g.file, "v", v), g.new()), bus.CodeSemantic, "v")
				if !strings.Contains(pe.Message, strconv.Itoa(v)) {
					t.Errorf("message %q does not say which version was sent", pe.Message)
				}
			})
		}
	}
}

// A case-variant key hidden behind \u escapes is refused too.
func TestDecodeRefusesEscapedCaseVariantKeys(t *testing.T) {
	data := []byte(strings.Replace(string(readGolden(t, "command.json")), `"ghost_id"`, `"\u0047HOST_ID"`, 1))
	expectError(t, bus.Decode(data, new(bus.Command)), bus.CodeFraming, "ghost_id")
}

// Keys inside the objects of an array are held to their field names too: a plan step's
// "OPERATION" beside "operation" would decode as one thing for execution and read as
// another for anything reading exact keys.
func TestDecodeRefusesCaseVariantKeysInsideArrays(t *testing.T) {
	is := `{"type":"issue","v":1,"message_id":"msg_1","trace_id":"0123456789abcdef0123456789abcdef","timestamp_ms":1,` +
		`"intent_id":"int_1","actor":"t","target_scope":"edge-1","objective":{"seed_selector":"","operation":"","args":{}},"timeout_ms":1000,` +
		`"plan":[{"seed_selector":"seed.flow","operation":"echo","OPERATION":"delete","args":{}}]}`
	expectError(t, bus.Decode([]byte(is), new(bus.Issue)), bus.CodeFraming, "operation")
}

// An error quoting what it refuses is cut, so that the refusal of an envelope near the
// size limit (a type of 300,000 line separators, each escaped six-fold) still fits in an
// answer: here the issue answer a client waits for.
func TestRefusalOfAHugeValueFitsInItsAnswer(t *testing.T) {
	data := []byte(`{"type":"` + strings.Repeat("\u2028", 300_000) + `"}`)
	err := bus.Decode(data, new(bus.Issue))
	var perr *bus.Error
	if !errors.As(err, &perr) || perr.Code != bus.CodeFraming {
		t.Fatalf("Decode: %v, want 1100", err)
	}
	if len(perr.Message) > bus.MaxErrorMessage {
		t.Fatalf("the error message is %d bytes, over %d", len(perr.Message), bus.MaxErrorMessage)
	}
	answer := &bus.IssueReply{Header: bus.NewHeader(bus.TypeIssueReply, "", time.Now()), Status: "rejected", Error: perr}
	if _, err := bus.Encode(answer); err != nil {
		t.Fatalf("the answer refusing it does not encode: %v", err)
	}
}
