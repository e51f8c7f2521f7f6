package bus

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func canonicalSamples(t testing.TB) [][]byte {
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
	hb := &Heartbeat{Header: NewHeader(TypeHeartbeat, "", now), GhostID: "edge-1", Seq: 42}
	var out [][]byte
	for _, m := range []any{cmd, ev, &ok, ack, hb} {
		data, err := Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, data)
	}
	return out
}

// The canonical-form decoder takes what edgectl writes (so the fast path is the one
// used) and yields exactly what encoding/json yields.
func TestFastDecodeTakesCanonicalEnvelopes(t *testing.T) {
	decoders := []func() fastDecoder{
		func() fastDecoder { return &Command{} }, func() fastDecoder { return &Event{} },
		func() fastDecoder { return &Event{} }, func() fastDecoder { return &EventAck{} },
		func() fastDecoder { return &Heartbeat{} },
	}
	for i, data := range canonicalSamples(t) {
		m := decoders[i]()
		if !decodeFast(data, m) {
			t.Fatalf("%T: canonical envelope not taken by the fast decoder: %s", m, data)
		}
		want := decoders[i]()
		if err := json.Unmarshal(data, want); err != nil {
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
	for _, data := range canonicalSamples(f) {
		f.Add(data)
	}
	f.Add([]byte(`{"type":"command","args":{"a":"1","a":"2"},"timeout_ms":-0}`))
	f.Add([]byte(`{"type":"event","error":{"code":1},"error":{"class":"x"},"result":{"exit_code":01}}`))
	f.Add([]byte(`{"seq":18446744073709551615,"v":1e3}`))
	f.Add([]byte(`{"type":"heartbeat","seq":-0}`))
	f.Add([]byte(`{"v":4294967297,"ack_code":-2147483649}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, mk := range []func() fastDecoder{
			func() fastDecoder { return &Command{} }, func() fastDecoder { return &Event{} },
			func() fastDecoder { return &EventAck{} }, func() fastDecoder { return &Heartbeat{} },
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

func BenchmarkDecodeEvent(b *testing.B) {
	data := canonicalSamples(b)[1]
	b.Run("fast", func(b *testing.B) {
		for b.Loop() {
			var ev Event
			if err := Decode(data, &ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			var ev Event
			if err := json.Unmarshal(data, &ev); err != nil {
				b.Fatal(err)
			}
			if err := ev.Validate(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

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
	samples := canonicalSamples(t)
	decoders := []any{&Command{}, &Event{}, &Event{}, &EventAck{}, &Heartbeat{}}
	for i, data := range samples {
		m := decoders[i]
		if err := json.Unmarshal(data, m); err != nil {
			t.Fatal(err)
		}
		if _, ok := m.(fastEncoder); !ok {
			t.Fatalf("%T has no fast encoder", m)
		}
		if want := encodeReflect(t, m); !bytes.Equal(data, want) {
			t.Fatalf("%T:\nfast          %s\nencoding/json %s", m, data, want)
		}
	}
	var nilArgs Command
	if got, want := nilArgs.appendJSON(nil), encodeReflect(t, &nilArgs); !bytes.Equal(got, want) {
		t.Fatalf("zero command:\nfast          %s\nencoding/json %s", got, want)
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
		for _, m := range []fastEncoder{ev, cmd, ack, &Heartbeat{Header: ev.Header, GhostID: b, Seq: uint64(n)}} {
			if got, want := m.appendJSON(nil), encodeReflect(t, m); !bytes.Equal(got, want) {
				t.Fatalf("%T:\nfast          %q\nencoding/json %q", m, got, want)
			}
		}
	})
}

func BenchmarkEncodeEvent(b *testing.B) {
	var ev Event
	if err := json.Unmarshal(canonicalSamples(b)[1], &ev); err != nil {
		b.Fatal(err)
	}
	b.Run("fast", func(b *testing.B) {
		for b.Loop() {
			if _, err := Encode(&ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			encodeReflect(b, &ev)
		}
	})
}
