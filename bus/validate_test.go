package bus_test

import (
	"strings"
	"testing"

	"github.com/edgectl/edgectl/bus"
)

// invalid is a golden with one value changed to something of the right JSON type but an
// invalid value.
type invalid struct {
	name, file string
	edit       func(t testing.TB, m map[string]any)
	code       bus.Code // 0: the edit leaves the envelope valid
	field      string
	mention    string
}

func set(path string, v any) func(testing.TB, map[string]any) {
	return func(t testing.TB, m map[string]any) { editPath(t, m, path, false, v) }
}

func del(paths ...string) func(testing.TB, map[string]any) {
	return func(t testing.TB, m map[string]any) {
		for _, p := range paths {
			editPath(t, m, p, true, nil)
		}
	}
}

var invalids = []invalid{
	// Header.
	{name: "trace_id uppercase", file: "command.json", edit: set("trace_id", "E5EEBBB539CD041E2F3BF7B9A5B15588"), code: bus.CodeSemantic, field: "trace_id"},
	{name: "trace_id all zeros", file: "command.json", edit: set("trace_id", strings.Repeat("0", 32)), code: bus.CodeSemantic, field: "trace_id", mention: "zero"},
	{name: "trace_id 31 chars", file: "command.json", edit: set("trace_id", strings.Repeat("a", 31)), code: bus.CodeSemantic, field: "trace_id"},
	{name: "message_id with a dot", file: "command.json", edit: set("message_id", "msg.1"), code: bus.CodeSemantic, field: "message_id"},
	{name: "timestamp_ms zero", file: "command.json", edit: set("timestamp_ms", 0), code: bus.CodeSemantic, field: "timestamp_ms"},
	{name: "timestamp_ms negative", file: "heartbeat.json", edit: set("timestamp_ms", -5), code: bus.CodeSemantic, field: "timestamp_ms"},
	{name: "null is missing", file: "command.json", edit: set("command_id", nil), code: bus.CodeSemantic, field: "command_id"},

	// Issue.
	{name: "issue with empty intent_id", file: "issue.json", edit: set("intent_id", "")},
	{name: "issue without intent_id", file: "issue.json", edit: del("intent_id")},
	{name: "issue without deliver_by_ms", file: "issue.json", edit: del("deliver_by_ms")},
	{name: "issue with empty args", file: "issue.json", edit: set("objective.args", map[string]any{})},
	{name: "issue intent_id with a dot", file: "issue.json", edit: set("intent_id", "int.1"), code: bus.CodeSemantic, field: "intent_id"},
	{name: "issue seed_selector uppercase", file: "issue.json", edit: set("objective.seed_selector", "Seed.flow"), code: bus.CodeSemantic, field: "objective.seed_selector"},
	{name: "issue operation uppercase", file: "issue.json", edit: set("objective.operation", "Echo"), code: bus.CodeSemantic, field: "objective.operation"},
	{name: "issue arg name invalid", file: "issue.json", edit: set("objective.args", map[string]any{"Bad-Name": "x"}), code: bus.CodeSemantic, field: "objective.args", mention: "Bad-Name"},
	{name: "issue timeout over 24h", file: "issue.json", edit: set("timeout_ms", bus.MaxTimeout+1), code: bus.CodeSemantic, field: "timeout_ms"},
	{name: "issue timeout 24h", file: "issue.json", edit: set("timeout_ms", bus.MaxTimeout)},
	{name: "issue timeout negative", file: "issue.json", edit: set("timeout_ms", -1), code: bus.CodeSemantic, field: "timeout_ms"},
	{name: "issue deliver_by_ms negative", file: "issue.json", edit: set("deliver_by_ms", -1), code: bus.CodeSemantic, field: "deliver_by_ms"},
	{name: "issue actor at the limit", file: "issue.json", edit: set("actor", strings.Repeat("a", bus.MaxActor))},
	{name: "issue actor too long", file: "issue.json", edit: set("actor", strings.Repeat("a", bus.MaxActor+1)), code: bus.CodeSemantic, field: "actor"},

	// Issue reply.
	{name: "reply status unknown", file: "issue_reply_accepted.json", edit: set("status", "maybe"), code: bus.CodeSemantic, field: "status"},
	{name: "accepted reply intent_id invalid", file: "issue_reply_accepted.json", edit: set("intent_id", "a b"), code: bus.CodeSemantic, field: "intent_id"},
	{name: "accepted reply without targets", file: "issue_reply_accepted.json", edit: del("targets")},

	// Command.
	{name: "command ghost_id with a dot", file: "command.json", edit: set("ghost_id", "a.b"), code: bus.CodeSemantic, field: "ghost_id", mention: "dot"},
	{name: "command ghost_id leading dash", file: "command.json", edit: set("ghost_id", "-x"), code: bus.CodeSemantic, field: "ghost_id"},
	{name: "command ghost_id 65 chars", file: "command.json", edit: set("ghost_id", strings.Repeat("g", 65)), code: bus.CodeSemantic, field: "ghost_id"},
	{name: "command ghost_id wildcard", file: "command.json", edit: set("ghost_id", "*"), code: bus.CodeSemantic, field: "ghost_id"},
	{name: "command_id with a dot", file: "command.json", edit: set("command_id", "cmd.1"), code: bus.CodeSemantic, field: "command_id"},
	{name: "command_id wildcard", file: "command.json", edit: set("command_id", ">"), code: bus.CodeSemantic, field: "command_id"},
	{name: "command seed_selector uppercase", file: "command.json", edit: set("seed_selector", "Seed.flow"), code: bus.CodeSemantic, field: "seed_selector"},
	{name: "command operation uppercase", file: "command.json", edit: set("operation", "Echo"), code: bus.CodeSemantic, field: "operation"},
	{name: "command arg name uppercase", file: "command.json", edit: set("args", map[string]any{"Message": "x"}), code: bus.CodeSemantic, field: "args"},
	{name: "command arg name empty", file: "command.json", edit: set("args", map[string]any{"": "x"}), code: bus.CodeSemantic, field: "args"},
	{name: "command with empty args", file: "command.json", edit: set("args", map[string]any{})},
	{name: "command timeout zero", file: "command.json", edit: set("timeout_ms", 0), code: bus.CodeSemantic, field: "timeout_ms"},
	{name: "command timeout over 24h", file: "command.json", edit: set("timeout_ms", bus.MaxTimeout+1), code: bus.CodeSemantic, field: "timeout_ms", mention: "24h"},
	{name: "command deliver_by_ms zero", file: "command.json", edit: set("deliver_by_ms", 0), code: bus.CodeSemantic, field: "deliver_by_ms"},

	// seed.execute and seed.result.
	{name: "seed.execute seed_id uppercase", file: "seed_execute.json", edit: set("seed_id", "Seed"), code: bus.CodeSemantic, field: "seed_id"},
	{name: "seed.result stdout too long", file: "seed_result.json", edit: set("stdout", strings.Repeat("a", bus.MaxOutput+1)), code: bus.CodeSemantic, field: "stdout"},
	{name: "seed.result stdout at the limit", file: "seed_result.json", edit: set("stdout", strings.Repeat("a", bus.MaxOutput))},

	// Event.
	{name: "event error without error object", file: "event_error.json", edit: del("error"), code: bus.CodeSemantic, field: "error"},
	{name: "event success with error object", file: "event_success.json",
		edit: set("error", map[string]any{"code": 1400, "class": "runtime", "message": "boom"}), code: bus.CodeSemantic, field: "error"},
	{name: "event success with null error", file: "event_success.json", edit: set("error", nil)},
	{name: "event outcome unknown", file: "event_success.json", edit: set("outcome", "maybe"), code: bus.CodeSemantic, field: "outcome"},
	{name: "event outcome timeout is not an event outcome", file: "event_success.json", edit: set("outcome", "timeout"), code: bus.CodeSemantic, field: "outcome"},
	{name: "event error with code 0", file: "event_error.json", edit: set("error.code", 0), code: bus.CodeSemantic, field: "error.code"},
	{name: "event error code outside the taxonomy", file: "event_error.json", edit: set("error.code", 99999), code: bus.CodeSemantic, field: "error.code"},
	{name: "event error class not its code's", file: "event_error.json", edit: set("error.class", "security"), code: bus.CodeSemantic, field: "error.class", mention: "runtime"},
	{name: "event error for a malformed command", file: "event_error.json", edit: del("intent_id", "seed_id", "operation")},
	{name: "event success empty intent_id", file: "event_success.json", edit: set("intent_id", ""), code: bus.CodeSemantic, field: "intent_id"},
	{name: "event error invalid intent_id", file: "event_error.json", edit: set("intent_id", "int.1"), code: bus.CodeSemantic, field: "intent_id"},
	{name: "event ghost_id with a dot", file: "event_success.json", edit: set("ghost_id", "edge.1"), code: bus.CodeSemantic, field: "ghost_id", mention: "dot"},
	{name: "event stdout too long", file: "event_success.json", edit: set("result.stdout", strings.Repeat("a", bus.MaxOutput+1)), code: bus.CodeSemantic, field: "result.stdout"},
	{name: "event stderr too long", file: "event_error.json", edit: set("result.stderr", strings.Repeat("a", bus.MaxOutput+1)), code: bus.CodeSemantic, field: "result.stderr"},

	// event.ack, register, register.ack, report.
	{name: "ack rejected", file: "event_ack.json", edit: func(t testing.TB, m map[string]any) {
		editPath(t, m, "ack_status", false, "rejected")
		editPath(t, m, "ack_code", false, 1300)
	}},
	{name: "ack status unknown", file: "event_ack.json", edit: set("ack_status", "ok"), code: bus.CodeSemantic, field: "ack_status"},
	{name: "register with no labels and no seeds", file: "register.json", edit: func(t testing.TB, m map[string]any) {
		editPath(t, m, "labels", false, map[string]any{})
		editPath(t, m, "seeds", false, []any{})
	}},
	{name: "register null labels", file: "register.json", edit: set("labels", nil), code: bus.CodeSemantic, field: "labels"},
	{name: "register seed id uppercase", file: "register.json", edit: set("seeds[1].id", "Seed.kv"), code: bus.CodeSemantic, field: "seeds[1].id"},
	{name: "register operation name uppercase", file: "register.json", edit: set("seeds[0].operations[0].name", "Status"), code: bus.CodeSemantic, field: "seeds[0].operations[0].name"},
	{name: "register seed declared twice", file: "register.json", edit: set("seeds[1].id", "seed.flow"), code: bus.CodeSemantic, field: "seeds[1].id", mention: "twice"},
	{name: "register operation declared twice", file: "register.json", edit: set("seeds[0].operations[1].name", "status"), code: bus.CodeSemantic, field: "seeds[0].operations[1].name", mention: "twice"},
	{name: "register param name not an argument name", file: "register.json", edit: set("seeds[0].operations[1].params[0].name", "X-Y"), code: bus.CodeSemantic, field: "seeds[0].operations[1].params[0].name"},
	{name: "register pattern that does not parse", file: "register.json", edit: set("seeds[0].operations[1].params[0].pattern", "(("), code: bus.CodeSemantic, field: "seeds[0].operations[1].params[0].pattern"},
	{name: "register pattern repeating too much", file: "register.json", edit: set("seeds[0].operations[1].params[0].pattern", "a{2000}"), code: bus.CodeSemantic, field: "seeds[0].operations[1].params[0].pattern"},
	{name: "register negative max_bytes", file: "register.json", edit: set("seeds[0].operations[1].params[0].max_bytes", -1), code: bus.CodeSemantic, field: "seeds[0].operations[1].params[0].max_bytes"},
	{name: "register min above max", file: "register.json", edit: func(t testing.TB, m map[string]any) {
		editPath(t, m, "seeds[0].operations[1].params[0].min", false, 10)
		editPath(t, m, "seeds[0].operations[1].params[0].max", false, 1)
	}, code: bus.CodeSemantic, field: "seeds[0].operations[1].params[0]", mention: "above"},
	{name: "register ghost_id with a dot", file: "register.json", edit: set("ghost_id", "edge.1"), code: bus.CodeSemantic, field: "ghost_id", mention: "dot"},
	{name: "register.ack rejected", file: "register_ack.json", edit: func(t testing.TB, m map[string]any) {
		editPath(t, m, "status", false, "rejected")
		editPath(t, m, "reason", false, "ghost id edge-1 is not in the fleet")
	}},
	{name: "register.ack status unknown", file: "register_ack.json", edit: set("status", "ok"), code: bus.CodeSemantic, field: "status"},
	{name: "heartbeat seq zero", file: "heartbeat.json", edit: set("seq", 0)},
	{name: "report phase unknown", file: "report.json", edit: set("phase", "done"), code: bus.CodeSemantic, field: "phase"},
	{name: "report with no results", file: "report.json", edit: set("results", []any{})},
	{name: "report null results", file: "report.json", edit: set("results", nil), code: bus.CodeSemantic, field: "results"},
}

func TestDecodeInvalidValues(t *testing.T) {
	for _, c := range invalids {
		t.Run(c.name, func(t *testing.T) {
			g := goldenOf(t, c.file)
			data := mutate(t, c.file, func(m map[string]any) { c.edit(t, m) })
			err := bus.Decode(data, g.new())
			if c.code == 0 {
				if err != nil {
					t.Fatalf("Decode: %v, want a valid envelope", err)
				}
				return
			}
			pe := expectError(t, err, c.code, c.field)
			if !strings.Contains(pe.Message, c.mention) {
				t.Errorf("message %q does not mention %q", pe.Message, c.mention)
			}
		})
	}
}
