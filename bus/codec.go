package bus

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/edgectl/edgectl/subjects"
)

// Encode marshals an envelope. It refuses an envelope over MaxEnvelope (1101).
func Encode(m any) ([]byte, error) {
	// No HTML escaping: <, > and & stay one byte. Re-encoding can still grow an envelope:
	// U+2028 and U+2029 are always escaped (3 bytes in, 6 out), as are control characters
	// sent raw, so one just under the limit may come out over it (1101, with its size).
	if fe, ok := m.(fastEncoder); ok {
		data := fe.appendJSON(make([]byte, 0, 512))
		if len(data) > MaxEnvelope {
			return nil, Errorf(CodeTooLarge, "envelope is %d bytes, the limit is %d", len(data), MaxEnvelope)
		}
		return data, nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		return nil, Errorf(CodeInternal, "encode: %v", err)
	}
	data := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
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
	trimmed := bytes.Trim(data, jsonSpace) // JSON's whitespace only: \v or U+00A0 is not JSON
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return Errorf(CodeFraming, "envelope is not a JSON object")
	}
	if done, err := tryFast(trimmed, m); done {
		return err
	}
	if hasUpperKey(trimmed) {
		if err := checkKeyCase(trimmed, reflect.TypeOf(m)); err != nil {
			return err
		}
	}
	if err := decodeRequest(trimmed, m, "envelope"); err != nil {
		return err
	}
	if err := m.Validate(); err != nil {
		return err
	}
	return nil
}

// jsonSpace is the whitespace JSON allows around a value.
const jsonSpace = " \t\r\n"

// decodeRequest unmarshals data into v with the taxonomy's codes: a field of the wrong
// type is 1200 naming the field, anything else not decodable 1100 (what names v).
func decodeRequest(data []byte, v any, what string) error {
	err := json.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field := jsonPath(te.Field)
		if field == "" {
			field = "(root)"
		}
		return FieldError(CodeDecode, field, "expected %s, got JSON %s", te.Type, te.Value)
	}
	return Errorf(CodeFraming, "%s is not valid JSON: %v", what, err)
}

// jsonPath drops the Go names of embedded structs (Header, Result) from a decode error's
// field path: JSON names are snake_case, Go names start with a capital.
func jsonPath(field string) string {
	var keep []string
	for _, p := range strings.Split(field, ".") {
		if p != "" && !unicode.IsUpper(rune(p[0])) {
			keep = append(keep, p)
		}
	}
	return strings.Join(keep, ".")
}

// hasUpperKey reports whether any object key in data may contain an upper-case letter: a
// quoted token followed by a colon. It may say yes for a string value that looks like a
// key (the full check then decides), never no for a real key; envelopes, whose keys are
// snake_case, pass in one scan without decoding.
func hasUpperKey(data []byte) bool {
	for i := 0; i < len(data); i++ {
		if data[i] != ':' {
			continue
		}
		j := i - 1
		for j >= 0 && (data[j] == ' ' || data[j] == '\t' || data[j] == '\n' || data[j] == '\r') {
			j--
		}
		if j < 0 || data[j] != '"' {
			continue
		}
		for k := j - 1; k >= 0 && data[k] != '"'; k-- {
			if (data[k] >= 'A' && data[k] <= 'Z') || data[k] == '\\' || data[k] >= 0x80 {
				return true // upper case, or an escape or non-ASCII that may decode to it
			}
		}
	}
	return false
}

// checkKeyCase refuses a key that is not one of the envelope's field names but matches one
// when case is ignored ("GHOST_ID"): encoding/json would take it for the field, so a
// signature or a probe reading exact keys could be told one thing and execution another.
func checkKeyCase(data []byte, t reflect.Type) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		// The objects of an array (a plan's steps, a register's seeds) are checked too.
		var items []json.RawMessage
		if json.Unmarshal(data, &items) != nil {
			return nil // not an array: Unmarshal reports it
		}
		for _, item := range items {
			if err := checkKeyCase(item, t.Elem()); err != nil {
				return err
			}
		}
		return nil
	case reflect.Struct:
	default:
		return nil
	}
	var raw map[string]json.RawMessage
	if json.Unmarshal(data, &raw) != nil {
		return nil // not an object: Unmarshal reports it
	}
	fields := jsonFields(t)
	for k, v := range raw {
		if ft, exact := fields[k]; exact {
			if err := checkKeyCase(v, ft); err != nil {
				return err
			}
			continue
		}
		for name := range fields {
			if strings.EqualFold(k, name) {
				return FieldError(CodeFraming, name, "key %q differs from the field name only in case; keys are snake_case", k)
			}
		}
	}
	return nil
}

// fieldCache holds jsonFields per type: envelopes are decoded on every hop.
var fieldCache sync.Map // reflect.Type → map[string]reflect.Type

// jsonFields maps the JSON names of a struct's fields (embedded structs flattened) to
// their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := buildFields(t)
	fieldCache.Store(t, m)
	return m
}

func buildFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("json"), ",")[0]
		if f.Anonymous && name == "" {
			for k, v := range buildFields(f.Type) {
				out[k] = v
			}
			continue
		}
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		out[name] = f.Type
	}
	return out
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

// CommandIDOf is ProbeCommand(data).CommandID, read by the canonical-form decoder when data
// is in that form, as every command Mirage sends is: a Ghost reads the id of each command it
// receives before it decodes and checks it, and ProbeCommand (encoding/json into a map)
// costs several times more.
func CommandIDOf(data []byte) string {
	var c Command
	if len(data) <= MaxEnvelope && decodeFast(bytes.Trim(data, jsonSpace), &c) {
		if subjects.ValidateToken("command_id", c.CommandID) != nil {
			return ""
		}
		return c.CommandID
	}
	return ProbeCommand(data).CommandID
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
	for max > 0 && !utf8.RuneStart(s[max]) {
		max--
	}
	return s[:max], true
}

// NormalizeResult caps stdout and stderr at MaxOutput each and sets Truncated.
func NormalizeResult(r Result) Result {
	var c1, c2 bool
	r.Stdout, c1 = Cut(strings.ToValidUTF8(r.Stdout, "\uFFFD"), MaxOutput)
	r.Stderr, c2 = Cut(strings.ToValidUTF8(r.Stderr, "\uFFFD"), MaxOutput)
	r.Truncated = r.Truncated || c1 || c2
	return r
}
