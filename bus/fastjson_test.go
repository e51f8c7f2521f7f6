package bus

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"testing"
	"time"
)

// canonical is an envelope as edgectl writes it, with a constructor of its empty value.
// canonicalSamples returns command, event (error), event (success), event.ack, heartbeat,
// issue, issue.reply (accepted), issue.reply (rejected), in that order.
type canonical struct {
	data []byte
	zero func() any
}

func canonicalSamples(t testing.TB) []canonical {
	now := time.UnixMilli(1_760_000_000_123)
	cmd := &Command{Header: NewHeader(TypeCommand, "", now), CommandID: "cmd_int_x_0", IntentID: "int_x", GhostID: "edge-1",
		SeedSelector: "seed.flow", Operation: "echo", Args: map[string]string{"message": "héllo \"quoted\"\n\t\u2028 <tag> & \\"}, DeliverByMS: now.UnixMilli() + 60000, TimeoutMS: 30000}
	ev := &Event{Header: NewHeader(TypeEvent, cmd.TraceID, now), EventID: "evt_1", CommandID: cmd.CommandID, IntentID: cmd.IntentID,
		ExecutionID: "exe_1", GhostID: "edge-1", SeedID: "seed.flow", Operation: "echo", Outcome: OutcomeError,
		Result: Result{Status: "failed", ExitCode: -1, Stdout: "out", Stderr: "line1\nline2\x01", Truncated: true},
		Error:  &Error{Code: CodeRuntime, Class: "runtime", Message: "it broke", Field: "args.x"}, StartedMS: 1, FinishedMS: 2}
	ok := *ev
	ok.Outcome, ok.Error, ok.Result = OutcomeSuccess, nil, Result{Status: "ok", Stdout: "hello"}
	ack := &EventAck{Header: NewHeader(TypeEventAck, cmd.TraceID, now), EventID: "evt_1", CommandID: cmd.CommandID, GhostID: "edge-1", AckStatus: AckRejected, AckCode: CodeSecurity}
	hb := &Heartbeat{Header: NewHeader(TypeHeartbeat, "", now), GhostID: "edge-1", Seq: 42, Leaving: true}
	accepted := &IssueReply{Header: NewHeader(TypeIssueReply, "", now), IntentID: "int_x", Status: "accepted", Targets: []string{"edge-1", "local", "typo"}, Unregistered: []string{"typo"}, Offline: []string{"edge-1"}, Stale: []StaleTarget{{GhostID: "local", SilentMS: 22000}}}
	rejected := &IssueReply{Header: NewHeader(TypeIssueReply, "", now), Status: "rejected",
		Error: &Error{Code: CodeSemantic, Class: "semantic", Message: `operation "Echo" contains 'E'`, Field: "objective.operation"}}
	lo, hi := int64(-5), int64(1<<40)
	reg := &Register{Header: NewHeader(TypeRegister, "", now), GhostID: "edge-1", Version: "1.2.3", Labels: map[string]string{"site": "paris", "é": "<&>"},
		Seeds: []SeedInfo{
			{ID: "seed.flow", Name: "Flow", Description: "Deterministic \"operations\"", Operations: []OperationInfo{
				{Name: "status", Description: "ready?", Idempotent: true, Params: []ParamInfo{}},
				{Name: "echo", Params: []ParamInfo{{Name: "message", Pattern: "(?s).*", MaxBytes: 4096, Description: "text"}}},
				{Name: "count", Params: []ParamInfo{{Name: "n", Required: true, Pattern: "-?[0-9]+", Min: &lo, Max: &hi, NoLeadingDash: true}}},
			}},
			{ID: "node.tar", Version: "2", Operations: []OperationInfo{}},
		}}
	var out []canonical
	for _, c := range []struct {
		m    any
		zero func() any
	}{
		{cmd, func() any { return &Command{} }},
		{ev, func() any { return &Event{} }},
		{&ok, func() any { return &Event{} }},
		{ack, func() any { return &EventAck{} }},
		{hb, func() any { return &Heartbeat{} }},
		{sampleIssue(now), func() any { return &Issue{} }},
		{accepted, func() any { return &IssueReply{} }},
		{rejected, func() any { return &IssueReply{} }},
		{reg, func() any { return &Register{} }},
	} {
		data, err := Encode(c.m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, canonical{data, c.zero})
	}
	return out
}

// sampleIssue is an issue as the bench sends it, with the optional fields set.
func sampleIssue(now time.Time) *Issue {
	return &Issue{Header: NewHeader(TypeIssue, "", now), IntentID: "int_x", Actor: "alice@ops", TargetScope: "labels:site=paris",
		Objective: Objective{SeedSelector: "seed.flow", Operation: "echo", Args: map[string]string{"message": "hello", "b": "é\u00e9"}},
		TimeoutMS: 30000, DeliverByMS: now.UnixMilli() + 60000, MaxConcurrency: "10%", MaxErrors: "2"}
}

// The canonical-form decoder takes what edgectl writes (so the fast path is the one
// used) and yields exactly what encoding/json yields.
func TestFastDecodeTakesCanonicalEnvelopes(t *testing.T) {
	for _, c := range canonicalSamples(t) {
		m, ok := c.zero().(fastDecoder)
		if !ok {
			t.Fatalf("%T has no fast decoder", c.zero())
		}
		if !decodeFast(c.data, m) {
			t.Fatalf("%T: canonical envelope not taken by the fast decoder: %s", m, c.data)
		}
		want := c.zero()
		if err := json.Unmarshal(c.data, want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(m, want) {
			t.Fatalf("%T: fast %+v, encoding/json %+v", m, m, want)
		}
	}
}

// Whatever the fast decoder accepts, encoding/json decodes to the same value; what it
// refuses goes to encoding/json.
func FuzzFastDecode(f *testing.F) {
	for _, c := range canonicalSamples(f) {
		f.Add(c.data)
	}
	f.Add([]byte(`{"type":"command","args":{"a":"1","a":"2"},"timeout_ms":-0}`))
	f.Add([]byte(`{"type":"event","error":{"code":1},"error":{"class":"x"},"result":{"exit_code":01}}`))
	f.Add([]byte(`{"seq":18446744073709551615,"v":1e3}`))
	f.Add([]byte(`{"type":"heartbeat","seq":-0}`))
	f.Add([]byte(`{"v":4294967297,"ack_code":-2147483649}`))
	f.Add([]byte(`{"objective":{"args":{"a":"1"},"args":{"b":"2"}},"objective":{"operation":"x","args":{}},"max_errors":"1"}`))
	f.Add([]byte(`{"type":"issue","plan":[{"seed_selector":"s","args":{}}],"objective":null}`))
	f.Add([]byte(`{"type":"issue","deliver_within_ms":5000,"deliver_by_ms":1,"deliver_within_ms":-0}`))
	f.Add([]byte(`{"type":"issue.reply","targets":["a","b","c"],"targets":["d"],"error":{"code":1},"error":{"field":"f"}}`))
	f.Add([]byte(`{"targets":[ ],"targets":[null],"status":"\u00e9"}`))
	f.Add([]byte(`{"seeds":[{"id":"a","operations":[{"params":[{"min":1,"min":2,"max":-0}]}]}],"labels":{"a":"1"},"labels":{"b":"2"}}`))
	f.Add([]byte(`{"seeds":[{"id":"a"}],"seeds":[{"name":"b"}],"ghost_id":"g"}`))
	f.Add([]byte(`{"seeds":[{"operations":[],"operations":[{"name":"x","idempotent":true}]}]}`))
	f.Add([]byte(`{"ghost_id":"a\"b\\c\/d\n\t\r\b\f","version":"\u00e9\n","labels":{"\"":"\\"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, mk := range []func() fastDecoder{
			func() fastDecoder { return &Command{} }, func() fastDecoder { return &Event{} },
			func() fastDecoder { return &EventAck{} }, func() fastDecoder { return &Heartbeat{} },
			func() fastDecoder { return &Issue{} }, func() fastDecoder { return &IssueReply{} },
			func() fastDecoder { return &Register{} },
		} {
			fast := mk()
			if !decodeFast(data, fast) {
				continue
			}
			slow := mk()
			if err := json.Unmarshal(data, slow); err != nil {
				t.Fatalf("%T: fast decoder took %q, encoding/json refuses it: %v", fast, data, err)
			}
			if !reflect.DeepEqual(fast, slow) {
				t.Fatalf("%T: %q decodes to %+v, encoding/json to %+v", fast, data, fast, slow)
			}
		}
	})
}

// benchDecode compares Decode, fast on data, with encoding/json and Validate.
func benchDecode[T any, P interface {
	*T
	Envelope
}](b *testing.B, data []byte) {
	b.Run("fast", func(b *testing.B) {
		for b.Loop() {
			if err := Decode(data, P(new(T))); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			m := P(new(T))
			if err := json.Unmarshal(data, m); err != nil {
				b.Fatal(err)
			}
			if err := m.Validate(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkDecodeEvent(b *testing.B) { benchDecode[Event](b, canonicalSamples(b)[1].data) }

func BenchmarkDecodeIssue(b *testing.B) { benchDecode[Issue](b, canonicalSamples(b)[5].data) }

func BenchmarkDecodeIssueReply(b *testing.B) { benchDecode[IssueReply](b, canonicalSamples(b)[6].data) }

// encodeReflect is Encode without the fast encoders.
func encodeReflect(t testing.TB, m any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

func TestFastEncodeMatchesEncodingJSON(t *testing.T) {
	for _, c := range canonicalSamples(t) {
		m := c.zero()
		if err := json.Unmarshal(c.data, m); err != nil {
			t.Fatal(err)
		}
		if _, ok := m.(fastEncoder); !ok {
			t.Fatalf("%T has no fast encoder", m)
		}
		if want := encodeReflect(t, m); !bytes.Equal(c.data, want) {
			t.Fatalf("%T:\nfast          %s\nencoding/json %s", m, c.data, want)
		}
	}
	// Empty and omitempty fields, and a plan, which no canonical sample has.
	plan := sampleIssue(time.UnixMilli(1))
	plan.Plan = []PlanStep{
		{SeedSelector: "seed.a", Operation: "x", Args: map[string]string{"z": "1", "a": "\u2029\x7f", "é": ""}, Blocking: true},
		{Name: "second <&>", SeedSelector: "seed.b", Operation: "y", TargetScope: "ghost:edge-1"},
	}
	report := &Report{Header: NewHeader(TypeReport, "", time.UnixMilli(1)), IntentID: "int_x", Phase: PhaseFailed,
		CompletionState: "complete", Summary: "2 targets: 1 success, 1 error ✓",
		Counts: Counts{Targets: 2, Success: 1, Error: 1, Expired: 3, Skipped: 4},
		Results: []TargetResult{
			{GhostID: "edge-1", Outcome: OutcomeSuccess, Stdout: "message=héllo\n"},
			{Step: 2, GhostID: "local", Outcome: OutcomeError, ExitCode: -1, Stderr: "\x00\ufffd<", Truncated: true, Error: &Error{Code: CodeSemantic}},
		}, ResultsOmitted: 7}
	for _, m := range []fastEncoder{&Command{}, &Issue{}, &IssueReply{}, &IssueReply{Targets: []string{}, Error: &Error{}}, &Register{},
		&Register{Labels: map[string]string{}, Seeds: []SeedInfo{{}, {Operations: []OperationInfo{{}, {Params: []ParamInfo{{}}}}}}},
		&IssueReply{Targets: []string{"", "\"\u00e9\n"}, Unregistered: []string{"\u00e9"}, Offline: []string{}, Stale: []StaleTarget{}}, plan, report, &Report{}, &Report{Results: []TargetResult{}}} {
		if got, want := m.appendJSON(nil), encodeReflect(t, m); !bytes.Equal(got, want) {
			t.Fatalf("%T:\nfast          %s\nencoding/json %s", m, got, want)
		}
	}
}

// Any strings and numbers encode as encoding/json encodes them.
func FuzzFastEncode(f *testing.F) {
	f.Add("plain", "héllo\n\t\"q\" \\ <&> \u2028\u2029 \x00\x1f\x7f", int64(-1), true)
	f.Add("\xff\xfe", "\xed\xa0\x80", int64(1<<62), false)
	f.Fuzz(func(t *testing.T, a, b string, n int64, flag bool) {
		ev := &Event{Header: Header{Type: a, V: int(n), MessageID: b, TraceID: a, TimestampMS: n}, EventID: b, Outcome: a,
			Result: Result{Status: b, ExitCode: int(n), Stdout: a + b, Stderr: b, Truncated: flag}, StartedMS: n}
		if flag {
			ev.Error = &Error{Code: Code(n), Class: a, Message: b, Field: a}
		}
		cmd := &Command{Header: ev.Header, CommandID: a, Args: map[string]string{a: b, b: a, "k": a + b}, TimeoutMS: n}
		ack := &EventAck{Header: ev.Header, EventID: a, AckStatus: b, AckCode: Code(n)}
		is := &Issue{Header: ev.Header, IntentID: a, Actor: b, Objective: Objective{Operation: a, Args: cmd.Args}, DeliverByMS: n, DeliverWithinMS: n / 3, MaxErrors: b}
		if flag {
			is.Plan = []PlanStep{{Name: a, Args: cmd.Args, TargetScope: b, Blocking: n%2 == 0}}
		}
		reply := &IssueReply{Header: ev.Header, IntentID: b, Status: a, Targets: []string{a, b}[:uint64(n)%3], Error: ev.Error}
		report := &Report{Header: ev.Header, Phase: a, Summary: b, Counts: Counts{Targets: int(n), Skipped: int(n)},
			Results: []TargetResult{{Step: int(n), GhostID: a, Stdout: b, Truncated: flag, Error: ev.Error}}, ResultsOmitted: int(n)}
		reg := &Register{Header: ev.Header, GhostID: a, Version: b, Labels: cmd.Args, Seeds: []SeedInfo{{ID: a, Name: b, Description: a + b, Version: b,
			Operations: []OperationInfo{{Name: b, Description: a, Idempotent: flag, Params: []ParamInfo{{Name: a, Required: flag, Pattern: b, MaxBytes: int(n), Description: a, NoLeadingDash: !flag}}}}}}}
		if flag {
			reg.Seeds[0].Operations[0].Params[0].Min, reg.Seeds[0].Operations[0].Params[0].Max = &n, &n
		}
		for _, m := range []fastEncoder{ev, cmd, ack, &Heartbeat{Header: ev.Header, GhostID: b, Seq: uint64(n)}, is, reply, report, reg} {
			if got, want := m.appendJSON(nil), encodeReflect(t, m); !bytes.Equal(got, want) {
				t.Fatalf("%T:\nfast          %q\nencoding/json %q", m, got, want)
			}
		}
	})
}

// benchEncode compares Encode, fast, with encoding/json on what data decodes to in m.
func benchEncode(b *testing.B, data []byte, m any) {
	if err := json.Unmarshal(data, m); err != nil {
		b.Fatal(err)
	}
	b.Run("fast", func(b *testing.B) {
		for b.Loop() {
			if _, err := Encode(m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			encodeReflect(b, m)
		}
	})
}

func BenchmarkEncodeEvent(b *testing.B) { benchEncode(b, canonicalSamples(b)[1].data, &Event{}) }

func BenchmarkEncodeIssue(b *testing.B) { benchEncode(b, canonicalSamples(b)[5].data, &Issue{}) }

func BenchmarkEncodeReport(b *testing.B) {
	data, err := os.ReadFile("testdata/report.json")
	if err != nil {
		b.Fatal(err)
	}
	benchEncode(b, data, &Report{})
}

// The helpers records are written with encode their values as encoding/json does.
func TestAppendHelpersMatchEncodingJSON(t *testing.T) {
	odd := "q\"\\ <&> \u2028 \x01 é \xff"
	for _, c := range []struct {
		v   any
		got []byte
	}{
		{[]string(nil), AppendStrings(nil, nil)},
		{[]string{}, AppendStrings(nil, []string{})},
		{[]string{"a", odd}, AppendStrings(nil, []string{"a", odd})},
		{map[string]string(nil), AppendStringMap(nil, nil)},
		{map[string]string{odd: "1", "a": odd}, AppendStringMap(nil, map[string]string{odd: "1", "a": odd})},
		{&Objective{}, AppendObjective(nil, &Objective{})},
		{&Objective{SeedSelector: odd, Operation: "x", Args: map[string]string{"b": odd, "a": ""}}, AppendObjective(nil, &Objective{SeedSelector: odd, Operation: "x", Args: map[string]string{"b": odd, "a": ""}})},
		{&Counts{}, AppendCounts(nil, &Counts{})},
		{&Counts{Targets: 3, Success: 1, Error: 1, Timeout: 1, Pending: -1, Expired: 2, Skipped: 9}, AppendCounts(nil, &Counts{Targets: 3, Success: 1, Error: 1, Timeout: 1, Pending: -1, Expired: 2, Skipped: 9})},
		{&Error{Code: CodeInternal, Message: odd}, AppendError(nil, &Error{Code: CodeInternal, Message: odd})},
	} {
		if want := encodeReflect(t, c.v); !bytes.Equal(c.got, want) {
			t.Errorf("%T:\nappended      %s\nencoding/json %s", c.v, c.got, want)
		}
	}
	obj := AppendString(AppendKey([]byte("{"), true, "a"), "1")
	if got := string(append(AppendString(AppendKey(obj, false, "b"), "x"), '}')); got != `{"a":"1","b":"x"}` {
		t.Errorf("keys: %s", got)
	}
}
