package bus

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/edgectl/edgectl/subjects"
)

// Encode marshals an envelope. It refuses an envelope over MaxEnvelope (1101).
func Encode(m any) ([]byte, error) {
	data, err := json.Marshal(m)
	if err != nil {
		return nil, Errorf(CodeInternal, "encode: %v", err)
	}
	if len(data) > MaxEnvelope {
		return nil, Errorf(CodeTooLarge, "envelope is %d bytes, the limit is %d", len(data), MaxEnvelope)
	}
	return data, nil
}

// Decode reads an envelope of the expected kind from data and validates it. Errors are
// *Error with the taxonomy's code: 1101 too large, 1100 not JSON or wrong type, 1200 a
// field of the wrong type, 1300 a missing or invalid field. Unknown fields are ignored.
func Decode(data []byte, m Envelope) error {
	if len(data) > MaxEnvelope {
		return Errorf(CodeTooLarge, "envelope is %d bytes, the limit is %d", len(data), MaxEnvelope)
	}
	if !utf8.Valid(data) {
		return Errorf(CodeFraming, "envelope is not valid UTF-8")
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return Errorf(CodeFraming, "envelope is not a JSON object")
	}
	if err := json.Unmarshal(trimmed, m); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field := te.Field
			if field == "" {
				field = "(root)"
			}
			return FieldError(CodeDecode, field, "expected %s, got JSON %s", te.Type, te.Value)
		}
		return Errorf(CodeFraming, "envelope is not valid JSON: %v", err)
	}
	if err := m.Validate(); err != nil {
		return err
	}
	return nil
}

// Probe is what can be read from an envelope that may not decode: enough to address an
// error event to the right command.
type Probe struct {
	Type      string
	CommandID string
	IntentID  string
	TraceID   string
	SeedID    string
	Operation string
}

// ProbeCommand reads what it can from a possibly malformed command: each field is kept only
// if it is a string of a valid form, so nothing unchecked travels further.
func ProbeCommand(data []byte) Probe {
	var raw map[string]json.RawMessage
	// An oversize envelope is still probed (up to what a server would carry), so that its
	// refusal (1101) reaches the command's sender.
	if len(data) > 4*MaxEnvelope || json.Unmarshal(data, &raw) != nil {
		return Probe{}
	}
	str := func(k string) string {
		var s string
		if v, ok := raw[k]; ok && json.Unmarshal(v, &s) == nil {
			return s
		}
		return ""
	}
	p := Probe{Type: str("type")}
	if id := str("command_id"); subjects.ValidateToken("command_id", id) == nil {
		p.CommandID = id
	}
	if id := str("intent_id"); subjects.ValidateToken("intent_id", id) == nil {
		p.IntentID = id
	}
	if id := str("trace_id"); subjects.ValidateTraceID(id) == nil {
		p.TraceID = id
	}
	if id := str("seed_selector"); subjects.ValidateSeedID(id) == nil {
		p.SeedID = id
	}
	if op := str("operation"); subjects.ValidateOperation(op) == nil {
		p.Operation = op
	}
	return p
}

// Cut returns s cut to at most max bytes on a UTF-8 boundary, and whether it was cut.
func Cut(s string, max int) (string, bool) {
	if len(s) <= max {
		return s, false
	}
	s = s[:max]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s, true
}

// NormalizeResult caps stdout and stderr at MaxOutput each and sets Truncated.
func NormalizeResult(r Result) Result {
	var c1, c2 bool
	r.Stdout, c1 = Cut(strings.ToValidUTF8(r.Stdout, "\uFFFD"), MaxOutput)
	r.Stderr, c2 = Cut(strings.ToValidUTF8(r.Stderr, "\uFFFD"), MaxOutput)
	r.Truncated = r.Truncated || c1 || c2
	return r
}
