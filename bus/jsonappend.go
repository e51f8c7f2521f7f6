package bus

// Records that hold envelopes (Mirage's intent record, the Ghost's execution record) are
// written by the same encoder as the envelopes, without reflection: their own fields with
// the helpers below, the envelopes and values they embed with the Append function of
// their type. The output is what encoding/json writes with HTML escaping off: fields in
// the order written, map keys sorted, nil slices and maps as null.

// AppendKey appends an object's key: a comma first unless first is set, then "key":.
// The key is written as is: a plain ASCII name that needs no escape.
func AppendKey(dst []byte, first bool, key string) []byte { return appendKey(dst, first, key) }

// AppendString appends s as a JSON string.
func AppendString(dst []byte, s string) []byte { return appendString(dst, s) }

// AppendStrings appends ss as a JSON array of strings (null when nil).
func AppendStrings(dst []byte, ss []string) []byte { return appendArray(dst, ss, appendString) }

// AppendStringMap appends m as a JSON object, keys sorted (null when nil).
func AppendStringMap(dst []byte, m map[string]string) []byte { return appendStrMap(dst, m) }

// AppendCommand, AppendEvent, AppendIssue, AppendError, AppendObjective, AppendCounts,
// AppendReport and AppendTargetResult append their value's JSON, as Encode writes it.
func AppendCommand(dst []byte, m *Command) []byte     { return m.appendJSON(dst) }
func AppendEvent(dst []byte, m *Event) []byte         { return m.appendJSON(dst) }
func AppendIssue(dst []byte, m *Issue) []byte         { return m.appendJSON(dst) }
func AppendError(dst []byte, e *Error) []byte         { return e.appendJSON(dst) }
func AppendObjective(dst []byte, o *Objective) []byte { return appendObjective(dst, o) }
func AppendCounts(dst []byte, c *Counts) []byte       { return appendCounts(dst, c) }
func AppendReport(dst []byte, m *Report) []byte       { return m.appendJSON(dst) }
func AppendTargetResult(dst []byte, r *TargetResult) []byte {
	return appendTargetResult(dst, *r)
}
