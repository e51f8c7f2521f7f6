package bus

import (
	"slices"
	"strconv"
	"unicode/utf8"
)

// The envelopes sent on every execution, every issue and every registration, and reports,
// are written without reflection, byte for byte as encoding/json writes them with HTML
// escaping off (TestFastEncodeMatchesEncodingJSON and FuzzFastEncode check that): fields in
// declaration order, omitempty fields left out when empty, map keys sorted, the same
// string escapes.

// fastEncoder is implemented by the envelopes written without reflection.
type fastEncoder interface {
	appendJSON(dst []byte) []byte
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string, escaped as encoding/json escapes it when HTML
// escaping is off.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func appendKey(dst []byte, first bool, key string) []byte {
	if !first {
		dst = append(dst, ',')
	}
	dst = append(dst, '"')
	dst = append(dst, key...)
	return append(dst, '"', ':')
}

func appendStrField(dst []byte, key, v string) []byte {
	return appendString(appendKey(dst, false, key), v)
}

func appendIntField(dst []byte, key string, v int64) []byte {
	return strconv.AppendInt(appendKey(dst, false, key), v, 10)
}

// appendOptStr and appendOptInt write an omitempty field: nothing when it is empty.
func appendOptStr(dst []byte, key, v string) []byte {
	if v == "" {
		return dst
	}
	return appendStrField(dst, key, v)
}

func appendOptInt(dst []byte, key string, v int64) []byte {
	if v == 0 {
		return dst
	}
	return appendIntField(dst, key, v)
}

func appendBoolField(dst []byte, key string, v bool) []byte {
	return strconv.AppendBool(appendKey(dst, false, key), v)
}

func appendStrMap(dst []byte, m map[string]string) []byte {
	if m == nil {
		return append(dst, "null"...)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, k)
		dst = append(dst, ':')
		dst = appendString(dst, m[k])
	}
	return append(dst, '}')
}

// appendArray writes items as a JSON array, each by item; a nil slice is null, as
// encoding/json writes it.
func appendArray[T any](dst []byte, items []T, item func([]byte, T) []byte) []byte {
	if items == nil {
		return append(dst, "null"...)
	}
	dst = append(dst, '[')
	for i, v := range items {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = item(dst, v)
	}
	return append(dst, ']')
}

// appendHeader opens the object and writes the common fields. (A function, not a method:
// a method would be promoted to every envelope embedding Header.)
func appendHeader(dst []byte, h *Header) []byte {
	dst = append(dst, '{')
	dst = appendString(appendKey(dst, true, "type"), h.Type)
	dst = appendIntField(dst, "v", int64(h.V))
	dst = appendStrField(dst, "message_id", h.MessageID)
	dst = appendStrField(dst, "trace_id", h.TraceID)
	return appendIntField(dst, "timestamp_ms", h.TimestampMS)
}

func (m *Command) appendJSON(dst []byte) []byte {
	dst = appendHeader(dst, &m.Header)
	dst = appendStrField(dst, "command_id", m.CommandID)
	dst = appendStrField(dst, "intent_id", m.IntentID)
	dst = appendStrField(dst, "ghost_id", m.GhostID)
	dst = appendStrField(dst, "seed_selector", m.SeedSelector)
	dst = appendStrField(dst, "operation", m.Operation)
	dst = appendStrMap(appendKey(dst, false, "args"), m.Args)
	dst = appendIntField(dst, "deliver_by_ms", m.DeliverByMS)
	dst = appendIntField(dst, "timeout_ms", m.TimeoutMS)
	return append(dst, '}')
}

func (m *Issue) appendJSON(dst []byte) []byte {
	dst = appendHeader(dst, &m.Header)
	dst = appendStrField(dst, "intent_id", m.IntentID)
	dst = appendStrField(dst, "actor", m.Actor)
	dst = appendStrField(dst, "target_scope", m.TargetScope)
	dst = appendObjective(appendKey(dst, false, "objective"), &m.Objective)
	dst = appendIntField(dst, "timeout_ms", m.TimeoutMS)
	dst = appendOptInt(dst, "deliver_by_ms", m.DeliverByMS)
	dst = appendOptInt(dst, "deliver_within_ms", m.DeliverWithinMS)
	dst = appendOptStr(dst, "max_concurrency", m.MaxConcurrency)
	dst = appendOptStr(dst, "max_errors", m.MaxErrors)
	if len(m.Plan) > 0 {
		dst = appendArray(appendKey(dst, false, "plan"), m.Plan, appendPlanStep)
	}
	return append(dst, '}')
}

func appendObjective(dst []byte, o *Objective) []byte {
	dst = append(dst, '{')
	dst = appendString(appendKey(dst, true, "seed_selector"), o.SeedSelector)
	dst = appendStrField(dst, "operation", o.Operation)
	dst = appendStrMap(appendKey(dst, false, "args"), o.Args)
	return append(dst, '}')
}

// appendPlanStep is a function, not a method: a PlanStep is not an envelope to Encode.
func appendPlanStep(dst []byte, p PlanStep) []byte {
	dst = append(dst, '{')
	if p.Name != "" {
		dst = appendString(appendKey(dst, true, "name"), p.Name)
	}
	dst = appendString(appendKey(dst, p.Name == "", "seed_selector"), p.SeedSelector)
	dst = appendStrField(dst, "operation", p.Operation)
	dst = appendStrMap(appendKey(dst, false, "args"), p.Args)
	dst = appendOptStr(dst, "target_scope", p.TargetScope)
	if p.Blocking {
		dst = appendBoolField(dst, "blocking", true)
	}
	return append(dst, '}')
}

func (m *IssueReply) appendJSON(dst []byte) []byte {
	dst = appendHeader(dst, &m.Header)
	dst = appendOptStr(dst, "intent_id", m.IntentID)
	dst = appendStrField(dst, "status", m.Status)
	if len(m.Targets) > 0 {
		dst = appendArray(appendKey(dst, false, "targets"), m.Targets, appendString)
	}
	if m.Error != nil {
		dst = m.Error.appendJSON(appendKey(dst, false, "error"))
	}
	if len(m.Unregistered) > 0 {
		dst = appendArray(appendKey(dst, false, "unregistered"), m.Unregistered, appendString)
	}
	if len(m.Offline) > 0 {
		dst = appendArray(appendKey(dst, false, "offline"), m.Offline, appendString)
	}
	if len(m.Stale) > 0 {
		dst = appendArray(appendKey(dst, false, "stale"), m.Stale, appendStaleTarget)
	}
	return append(dst, '}')
}

func appendStaleTarget(dst []byte, t StaleTarget) []byte {
	dst = append(dst, '{')
	dst = appendString(appendKey(dst, true, "ghost_id"), t.GhostID)
	dst = appendIntField(dst, "silent_ms", t.SilentMS)
	return append(dst, '}')
}

func (e *Error) appendJSON(dst []byte) []byte {
	dst = append(dst, '{')
	dst = strconv.AppendInt(appendKey(dst, true, "code"), int64(e.Code), 10)
	dst = appendStrField(dst, "class", e.Class)
	dst = appendStrField(dst, "message", e.Message)
	dst = appendOptStr(dst, "field", e.Field)
	return append(dst, '}')
}

func (m *Event) appendJSON(dst []byte) []byte {
	dst = appendHeader(dst, &m.Header)
	dst = appendStrField(dst, "event_id", m.EventID)
	dst = appendStrField(dst, "command_id", m.CommandID)
	dst = appendStrField(dst, "intent_id", m.IntentID)
	dst = appendStrField(dst, "execution_id", m.ExecutionID)
	dst = appendStrField(dst, "ghost_id", m.GhostID)
	dst = appendStrField(dst, "seed_id", m.SeedID)
	dst = appendStrField(dst, "operation", m.Operation)
	dst = appendStrField(dst, "outcome", m.Outcome)
	dst = append(appendKey(dst, false, "result"), '{')
	dst = appendString(appendKey(dst, true, "status"), m.Result.Status)
	dst = appendIntField(dst, "exit_code", int64(m.Result.ExitCode))
	dst = appendStrField(dst, "stdout", m.Result.Stdout)
	dst = appendStrField(dst, "stderr", m.Result.Stderr)
	dst = appendBoolField(dst, "truncated", m.Result.Truncated)
	dst = append(dst, '}')
	if m.Error != nil {
		dst = m.Error.appendJSON(appendKey(dst, false, "error"))
	}
	dst = appendIntField(dst, "started_ms", m.StartedMS)
	dst = appendIntField(dst, "finished_ms", m.FinishedMS)
	return append(dst, '}')
}

func (m *EventAck) appendJSON(dst []byte) []byte {
	dst = appendHeader(dst, &m.Header)
	dst = appendStrField(dst, "event_id", m.EventID)
	dst = appendStrField(dst, "command_id", m.CommandID)
	dst = appendStrField(dst, "ghost_id", m.GhostID)
	dst = appendStrField(dst, "ack_status", m.AckStatus)
	dst = appendIntField(dst, "ack_code", int64(m.AckCode))
	return append(dst, '}')
}

func (m *Heartbeat) appendJSON(dst []byte) []byte {
	dst = appendHeader(dst, &m.Header)
	dst = appendStrField(dst, "ghost_id", m.GhostID)
	dst = strconv.AppendUint(appendKey(dst, false, "seq"), m.Seq, 10)
	if m.Leaving {
		dst = appendBoolField(dst, "leaving", true)
	}
	return append(dst, '}')
}

func (m *Report) appendJSON(dst []byte) []byte {
	dst = appendHeader(dst, &m.Header)
	dst = appendStrField(dst, "intent_id", m.IntentID)
	dst = appendStrField(dst, "phase", m.Phase)
	dst = appendStrField(dst, "completion_state", m.CompletionState)
	dst = appendStrField(dst, "summary", m.Summary)
	dst = appendCounts(appendKey(dst, false, "counts"), &m.Counts)
	dst = appendArray(appendKey(dst, false, "results"), m.Results, appendTargetResult)
	dst = appendOptInt(dst, "results_omitted", int64(m.ResultsOmitted))
	return append(dst, '}')
}

func appendCounts(dst []byte, c *Counts) []byte {
	dst = append(dst, '{')
	dst = strconv.AppendInt(appendKey(dst, true, "targets"), int64(c.Targets), 10)
	dst = appendIntField(dst, "success", int64(c.Success))
	dst = appendIntField(dst, "error", int64(c.Error))
	dst = appendIntField(dst, "timeout", int64(c.Timeout))
	dst = appendIntField(dst, "pending", int64(c.Pending))
	dst = appendOptInt(dst, "expired", int64(c.Expired))
	dst = appendOptInt(dst, "skipped", int64(c.Skipped))
	return append(dst, '}')
}

func appendTargetResult(dst []byte, r TargetResult) []byte {
	dst = append(dst, '{')
	if r.Step != 0 {
		dst = strconv.AppendInt(appendKey(dst, true, "step"), int64(r.Step), 10)
	}
	dst = appendString(appendKey(dst, r.Step == 0, "ghost_id"), r.GhostID)
	dst = appendStrField(dst, "command_id", r.CommandID)
	dst = appendStrField(dst, "execution_id", r.ExecutionID)
	dst = appendStrField(dst, "event_id", r.EventID)
	dst = appendStrField(dst, "outcome", r.Outcome)
	dst = appendIntField(dst, "exit_code", int64(r.ExitCode))
	dst = appendStrField(dst, "stdout", r.Stdout)
	dst = appendStrField(dst, "stderr", r.Stderr)
	if r.Truncated {
		dst = appendBoolField(dst, "truncated", true)
	}
	if r.Error != nil {
		dst = r.Error.appendJSON(appendKey(dst, false, "error"))
	}
	return append(dst, '}')
}

func (m *Register) appendJSON(dst []byte) []byte {
	dst = appendHeader(dst, &m.Header)
	dst = appendStrField(dst, "ghost_id", m.GhostID)
	dst = appendStrField(dst, "version", m.Version)
	dst = appendStrMap(appendKey(dst, false, "labels"), m.Labels)
	dst = appendArray(appendKey(dst, false, "seeds"), m.Seeds, appendSeedInfo)
	return append(dst, '}')
}

func appendSeedInfo(dst []byte, si SeedInfo) []byte {
	dst = appendString(appendKey(append(dst, '{'), true, "id"), si.ID)
	dst = appendStrField(dst, "name", si.Name)
	dst = appendStrField(dst, "description", si.Description)
	dst = appendOptStr(dst, "version", si.Version)
	dst = appendArray(appendKey(dst, false, "operations"), si.Operations, appendOperationInfo)
	return append(dst, '}')
}

func appendOperationInfo(dst []byte, op OperationInfo) []byte {
	dst = appendString(appendKey(append(dst, '{'), true, "name"), op.Name)
	dst = appendStrField(dst, "description", op.Description)
	dst = appendBoolField(dst, "idempotent", op.Idempotent)
	dst = appendArray(appendKey(dst, false, "params"), op.Params, appendParamInfo)
	return append(dst, '}')
}

func appendParamInfo(dst []byte, p ParamInfo) []byte {
	dst = appendString(appendKey(append(dst, '{'), true, "name"), p.Name)
	dst = appendBoolField(dst, "required", p.Required)
	dst = appendStrField(dst, "pattern", p.Pattern)
	dst = appendOptInt(dst, "max_bytes", int64(p.MaxBytes))
	if p.Min != nil {
		dst = appendIntField(dst, "min", *p.Min)
	}
	if p.Max != nil {
		dst = appendIntField(dst, "max", *p.Max)
	}
	dst = appendOptStr(dst, "description", p.Description)
	if p.NoLeadingDash {
		dst = appendBoolField(dst, "no_leading_dash", true)
	}
	return append(dst, '}')
}
