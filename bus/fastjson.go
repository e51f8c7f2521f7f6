package bus

import (
	"encoding/json"
	"math"
	"strconv"
	"unicode/utf8"
)

// The envelopes that cross on every execution (command, event, event.ack, heartbeat), on
// every issue (issue, issue.reply) and on every registration (register) are read first by a decoder of the canonical form
// edgectl writes: one JSON object, keys in lower case without escapes, each known to the
// envelope, strings, integers, booleans, flat string maps, arrays of strings and the
// nested objects the envelope declares. Anything else (an
// unknown key, a null, a float, a syntax error, trailing data) makes it give up, and
// encoding/json decodes the envelope as before, with its errors. On what it accepts it
// yields exactly what encoding/json yields (FuzzFastDecode checks that); it does so
// without reflection, about five times faster.

// fastDecoder is implemented by the envelopes with a canonical-form decoder: fastField
// reads the value of one key, reporting whether it could.
type fastDecoder interface {
	fastField(s *scanner, key []byte) bool
}

// tryFast decodes data into m with the canonical-form decoder when m has one; done is
// false when it did not (m is then as it was, for encoding/json). A value holding a map
// or a pointer already is left to encoding/json, which would decode into them in place.
func tryFast(data []byte, m Envelope) (done bool, err error) {
	switch v := m.(type) {
	case *Command:
		if v.Args == nil {
			return decodeOrRestore(data, v)
		}
	case *Event:
		if v.Error == nil {
			return decodeOrRestore(data, v)
		}
	case *EventAck:
		return decodeOrRestore(data, v)
	case *Heartbeat:
		return decodeOrRestore(data, v)
	case *Issue:
		if v.Objective.Args == nil {
			return decodeOrRestore(data, v)
		}
	case *IssueReply:
		if v.Targets == nil && v.Error == nil {
			return decodeOrRestore(data, v)
		}
	case *Register:
		if v.Labels == nil && v.Seeds == nil {
			return decodeOrRestore(data, v)
		}
	}
	return false, nil
}

// decodeOrRestore decodes data into v and validates it, or leaves v as it was when the
// canonical-form decoder gives up.
func decodeOrRestore[T any, P interface {
	*T
	fastDecoder
	Envelope
}](data []byte, v P) (done bool, err error) {
	orig := *v
	if decodeFast(data, v) {
		return true, v.Validate()
	}
	*v = orig
	return false, nil
}

// scanner reads the canonical subset of JSON from data. Every method returns false when
// the input leaves that subset.
type scanner struct {
	data []byte
	i    int
}

// decodeFast decodes data into m when it is in canonical form; false means m may be
// partly filled and must be decoded again from scratch.
func decodeFast(data []byte, m fastDecoder) bool {
	s := &scanner{data: data}
	if !s.object(m) {
		return false
	}
	s.ws()
	return s.i == len(s.data)
}

func (s *scanner) ws() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// list reads the items of an array or an object, from open to close, calling item with
// the scanner on each.
func (s *scanner) list(open, close byte, item func() bool) bool {
	s.ws()
	if s.i >= len(s.data) || s.data[s.i] != open {
		return false
	}
	s.i++
	s.ws()
	if s.i < len(s.data) && s.data[s.i] == close {
		s.i++
		return true
	}
	for {
		s.ws()
		if !item() {
			return false
		}
		s.ws()
		if s.i >= len(s.data) {
			return false
		}
		switch s.data[s.i] {
		case ',':
			s.i++
		case close:
			s.i++
			return true
		default:
			return false
		}
	}
}

// colon reads the colon between a key and its value.
func (s *scanner) colon() bool {
	s.ws()
	if s.i >= len(s.data) || s.data[s.i] != ':' {
		return false
	}
	s.i++
	s.ws()
	return true
}

// object reads an object into m, calling m.fastField for each key with the scanner on its
// value.
func (s *scanner) object(m fastDecoder) bool {
	return s.list('{', '}', func() bool {
		key, ok := s.key()
		return ok && s.colon() && m.fastField(s, key)
	})
}

// key reads an object key: lower-case ASCII letters, digits and underscores only, so that
// it can only match a field exactly (encoding/json also matches keys case-insensitively).
func (s *scanner) key() ([]byte, bool) {
	if s.i >= len(s.data) || s.data[s.i] != '"' {
		return nil, false
	}
	start := s.i + 1
	for j := start; j < len(s.data); j++ {
		c := s.data[j]
		switch {
		case c == '"':
			s.i = j + 1
			return s.data[start:j], true
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
		default:
			return nil, false
		}
	}
	return nil, false
}

// str reads a string value. One without escapes is copied as is, one whose escapes are
// all of one character (\" \\ \/ \b \f \n \r \t) is unescaped here, and one with \u
// escapes is handed to encoding/json, which knows every surrogate rule.
func (s *scanner) str() (string, bool) {
	if s.i >= len(s.data) || s.data[s.i] != '"' {
		return "", false
	}
	start := s.i + 1
	escaped, wide := false, false
	for j := start; j < len(s.data); j++ {
		c := s.data[j]
		switch {
		case c == '\\':
			escaped = true
			j++ // the escaped byte cannot end the string
		case c >= utf8.RuneSelf:
			wide = true
		case c == '"':
			if wide && !utf8.Valid(s.data[start:j]) {
				return "", false // encoding/json would replace the invalid bytes
			}
			s.i = j + 1
			if !escaped {
				return string(s.data[start:j]), true
			}
			if v, ok := unescape(s.data[start:j]); ok {
				return v, true
			}
			var v string
			if json.Unmarshal(s.data[start-1:j+1], &v) != nil {
				return "", false
			}
			return v, true
		case c < 0x20:
			return "", false // a raw control character: not JSON
		}
	}
	return "", false
}

// unescape reads the inside of a JSON string whose escapes are of one character each;
// false when it has another (\u, or one JSON does not know).
func unescape(in []byte) (string, bool) {
	out := make([]byte, 0, len(in))
	for i := 0; i < len(in); i++ {
		c := in[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		switch in[i] {
		case '"', '\\', '/':
			out = append(out, in[i])
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		default:
			return "", false
		}
	}
	return string(out), true
}

// int reads an integer literal: -?(0|[1-9][0-9]*), at most 18 digits, not followed by a
// fraction or an exponent.
func (s *scanner) int() (int64, bool) {
	start := s.i
	j := s.i
	if j < len(s.data) && s.data[j] == '-' {
		j++
	}
	digits := j
	for j < len(s.data) && s.data[j] >= '0' && s.data[j] <= '9' {
		j++
	}
	n := j - digits
	if n == 0 || n > 18 || (n > 1 && s.data[digits] == '0') {
		return 0, false
	}
	if j < len(s.data) {
		switch s.data[j] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	v, err := strconv.ParseInt(string(s.data[start:j]), 10, 64)
	if err != nil {
		return 0, false
	}
	s.i = j
	return v, true
}

func (s *scanner) boolean() (bool, bool) {
	switch {
	case hasPrefixAt(s.data, s.i, "true"):
		s.i += 4
		return true, true
	case hasPrefixAt(s.data, s.i, "false"):
		s.i += 5
		return false, true
	}
	return false, false
}

func hasPrefixAt(data []byte, i int, lit string) bool {
	return len(data)-i >= len(lit) && string(data[i:i+len(lit)]) == lit
}

// strMap reads an object of strings into m (allocated when nil), as encoding/json does:
// a repeated key keeps its last value. Its keys may be any string.
func (s *scanner) strMap(m *map[string]string) bool {
	if *m == nil {
		*m = map[string]string{}
	}
	return s.list('{', '}', func() bool {
		k, ok := s.str()
		if !ok || !s.colon() {
			return false
		}
		v, ok := s.str()
		(*m)[k] = v
		return ok
	})
}

// strSlice reads an array of strings into p as encoding/json does: the slice is refilled
// from its start, and [] gives an empty slice, not nil.
func (s *scanner) strSlice(p *[]string) bool {
	out := (*p)[:0]
	if out == nil {
		out = []string{}
	}
	ok := s.list('[', ']', func() bool {
		v, ok := s.str()
		out = append(out, v)
		return ok
	})
	*p = out
	return ok
}

// objSlice reads an array of objects into p, each by its fastField; [] gives an empty
// slice, not nil. A second array for the same key is left to encoding/json, which decodes
// it into the elements already there, field by field.
func objSlice[T any, P interface {
	*T
	fastDecoder
}](s *scanner, p *[]T) bool {
	if *p != nil {
		return false
	}
	out := []T{}
	ok := s.list('[', ']', func() bool {
		var v T
		ok := s.object(P(&v))
		out = append(out, v)
		return ok
	})
	*p = out
	return ok
}

func (s *scanner) setBool(p *bool) bool {
	v, ok := s.boolean()
	*p = v
	return ok
}

// setInt64Ptr reads an integer into *p, allocated when nil.
func (s *scanner) setInt64Ptr(p **int64) bool {
	if *p == nil {
		*p = new(int64)
	}
	return s.setInt64(*p)
}

func (s *scanner) setStr(p *string) bool {
	v, ok := s.str()
	*p = v
	return ok
}

func (s *scanner) setInt64(p *int64) bool {
	v, ok := s.int()
	*p = v
	return ok
}

func (s *scanner) setInt(p *int) bool {
	v, ok := s.int()
	*p = int(v)
	return ok && v >= math.MinInt && v <= math.MaxInt // 32-bit builds: out of range is encoding/json's error
}

func (s *scanner) setCode(p *Code) bool {
	var v int
	ok := s.setInt(&v)
	*p = Code(v)
	return ok
}

// header reads a common field; handled is false when key is not one.
func (h *Header) field(s *scanner, key []byte) (handled, ok bool) {
	switch string(key) {
	case "type":
		return true, s.setStr(&h.Type)
	case "v":
		return true, s.setInt(&h.V)
	case "message_id":
		return true, s.setStr(&h.MessageID)
	case "trace_id":
		return true, s.setStr(&h.TraceID)
	case "timestamp_ms":
		return true, s.setInt64(&h.TimestampMS)
	}
	return false, false
}

func (m *Command) fastField(s *scanner, key []byte) bool {
	if handled, ok := m.Header.field(s, key); handled {
		return ok
	}
	switch string(key) {
	case "command_id":
		return s.setStr(&m.CommandID)
	case "intent_id":
		return s.setStr(&m.IntentID)
	case "ghost_id":
		return s.setStr(&m.GhostID)
	case "seed_selector":
		return s.setStr(&m.SeedSelector)
	case "operation":
		return s.setStr(&m.Operation)
	case "args":
		return s.strMap(&m.Args)
	case "deliver_by_ms":
		return s.setInt64(&m.DeliverByMS)
	case "timeout_ms":
		return s.setInt64(&m.TimeoutMS)
	}
	return false
}

func (r *Result) fastField(s *scanner, key []byte) bool {
	switch string(key) {
	case "status":
		return s.setStr(&r.Status)
	case "exit_code":
		return s.setInt(&r.ExitCode)
	case "stdout":
		return s.setStr(&r.Stdout)
	case "stderr":
		return s.setStr(&r.Stderr)
	case "truncated":
		v, ok := s.boolean()
		r.Truncated = v
		return ok
	}
	return false
}

func (e *Error) fastField(s *scanner, key []byte) bool {
	switch string(key) {
	case "code":
		return s.setCode(&e.Code)
	case "class":
		return s.setStr(&e.Class)
	case "message":
		return s.setStr(&e.Message)
	case "field":
		return s.setStr(&e.Field)
	}
	return false
}

func (m *Event) fastField(s *scanner, key []byte) bool {
	if handled, ok := m.Header.field(s, key); handled {
		return ok
	}
	switch string(key) {
	case "event_id":
		return s.setStr(&m.EventID)
	case "command_id":
		return s.setStr(&m.CommandID)
	case "intent_id":
		return s.setStr(&m.IntentID)
	case "execution_id":
		return s.setStr(&m.ExecutionID)
	case "ghost_id":
		return s.setStr(&m.GhostID)
	case "seed_id":
		return s.setStr(&m.SeedID)
	case "operation":
		return s.setStr(&m.Operation)
	case "outcome":
		return s.setStr(&m.Outcome)
	case "result":
		return s.object(&m.Result)
	case "error":
		if m.Error == nil {
			m.Error = &Error{}
		}
		return s.object(m.Error)
	case "started_ms":
		return s.setInt64(&m.StartedMS)
	case "finished_ms":
		return s.setInt64(&m.FinishedMS)
	}
	return false
}

func (m *EventAck) fastField(s *scanner, key []byte) bool {
	if handled, ok := m.Header.field(s, key); handled {
		return ok
	}
	switch string(key) {
	case "event_id":
		return s.setStr(&m.EventID)
	case "command_id":
		return s.setStr(&m.CommandID)
	case "ghost_id":
		return s.setStr(&m.GhostID)
	case "ack_status":
		return s.setStr(&m.AckStatus)
	case "ack_code":
		return s.setCode(&m.AckCode)
	}
	return false
}

func (m *Heartbeat) fastField(s *scanner, key []byte) bool {
	if handled, ok := m.Header.field(s, key); handled {
		return ok
	}
	switch string(key) {
	case "ghost_id":
		return s.setStr(&m.GhostID)
	case "seq":
		if s.i < len(s.data) && s.data[s.i] == '-' {
			return false // even -0: encoding/json refuses a sign for an unsigned field
		}
		v, ok := s.int()
		m.Seq = uint64(v)
		return ok
	case "leaving":
		return s.setBool(&m.Leaving)
	}
	return false
}

func (m *Issue) fastField(s *scanner, key []byte) bool {
	if handled, ok := m.Header.field(s, key); handled {
		return ok
	}
	switch string(key) {
	case "intent_id":
		return s.setStr(&m.IntentID)
	case "actor":
		return s.setStr(&m.Actor)
	case "target_scope":
		return s.setStr(&m.TargetScope)
	case "objective":
		return s.object(&m.Objective)
	case "timeout_ms":
		return s.setInt64(&m.TimeoutMS)
	case "deliver_by_ms":
		return s.setInt64(&m.DeliverByMS)
	case "deliver_within_ms":
		return s.setInt64(&m.DeliverWithinMS)
	case "max_concurrency":
		return s.setStr(&m.MaxConcurrency)
	case "max_errors":
		return s.setStr(&m.MaxErrors)
	}
	return false // plan too: rare, and encoding/json fills reused steps in place
}

func (o *Objective) fastField(s *scanner, key []byte) bool {
	switch string(key) {
	case "seed_selector":
		return s.setStr(&o.SeedSelector)
	case "operation":
		return s.setStr(&o.Operation)
	case "args":
		return s.strMap(&o.Args)
	}
	return false
}

func (m *IssueReply) fastField(s *scanner, key []byte) bool {
	if handled, ok := m.Header.field(s, key); handled {
		return ok
	}
	switch string(key) {
	case "intent_id":
		return s.setStr(&m.IntentID)
	case "status":
		return s.setStr(&m.Status)
	case "targets":
		return s.strSlice(&m.Targets)
	case "error":
		if m.Error == nil {
			m.Error = &Error{}
		}
		return s.object(m.Error)
	case "unregistered":
		return s.strSlice(&m.Unregistered)
	case "offline":
		return s.strSlice(&m.Offline)
	case "stale":
		return objSlice(s, &m.Stale)
	}
	return false
}

func (m *StaleTarget) fastField(s *scanner, key []byte) bool {
	switch string(key) {
	case "ghost_id":
		return s.setStr(&m.GhostID)
	case "silent_ms":
		return s.setInt64(&m.SilentMS)
	}
	return false
}

func (m *Register) fastField(s *scanner, key []byte) bool {
	if handled, ok := m.Header.field(s, key); handled {
		return ok
	}
	switch string(key) {
	case "ghost_id":
		return s.setStr(&m.GhostID)
	case "version":
		return s.setStr(&m.Version)
	case "labels":
		return s.strMap(&m.Labels)
	case "seeds":
		return objSlice(s, &m.Seeds)
	}
	return false
}

func (m *SeedInfo) fastField(s *scanner, key []byte) bool {
	switch string(key) {
	case "id":
		return s.setStr(&m.ID)
	case "name":
		return s.setStr(&m.Name)
	case "description":
		return s.setStr(&m.Description)
	case "version":
		return s.setStr(&m.Version)
	case "operations":
		return objSlice(s, &m.Operations)
	}
	return false
}

func (m *OperationInfo) fastField(s *scanner, key []byte) bool {
	switch string(key) {
	case "name":
		return s.setStr(&m.Name)
	case "description":
		return s.setStr(&m.Description)
	case "idempotent":
		return s.setBool(&m.Idempotent)
	case "params":
		return objSlice(s, &m.Params)
	}
	return false
}

func (m *ParamInfo) fastField(s *scanner, key []byte) bool {
	switch string(key) {
	case "name":
		return s.setStr(&m.Name)
	case "required":
		return s.setBool(&m.Required)
	case "pattern":
		return s.setStr(&m.Pattern)
	case "max_bytes":
		return s.setInt(&m.MaxBytes)
	case "min":
		return s.setInt64Ptr(&m.Min)
	case "max":
		return s.setInt64Ptr(&m.Max)
	case "description":
		return s.setStr(&m.Description)
	case "no_leading_dash":
		return s.setBool(&m.NoLeadingDash)
	}
	return false
}
