package test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// validCommand returns a command for ghostID as a JSON map, to be broken by each case.
func validCommand(ghostID, commandID string) map[string]any {
	return map[string]any{
		"type": "command", "v": 1, "message_id": subjects.NewID("msg"), "trace_id": subjects.NewTraceID(),
		"timestamp_ms": time.Now().UnixMilli(), "command_id": commandID, "intent_id": "int_bad",
		"ghost_id": ghostID, "seed_selector": "seed.flow", "operation": "status", "args": map[string]string{},
		"deliver_by_ms": time.Now().Add(time.Minute).UnixMilli(), "timeout_ms": 5000,
	}
}

// Bad input published straight onto cmd.<id>: the Ghost keeps serving, an error event
// with the right code is emitted wherever a command_id can be read, and a valid intent
// afterwards works.
func TestBadCommandsAreRefusedAndGhostKeepsServing(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	g := env.StartGhost("victim")
	nc := env.Conn("attacker")

	cases := []struct {
		name   string
		data   func(id string) []byte
		code   bus.Code // expected error code; 0 means no event can be addressed
		field  string
		reason string
	}{
		{"not json", func(string) []byte { return []byte("hello, ghost") }, 0, "", ""},
		{"json array", func(string) []byte { return []byte(`[1,2,3]`) }, 0, "", ""},
		{"missing ghost_id", func(id string) []byte { m := validCommand("victim", id); delete(m, "ghost_id"); return enc(m) }, bus.CodeSemantic, "ghost_id", "missing"},
		{"missing timeout", func(id string) []byte { m := validCommand("victim", id); delete(m, "timeout_ms"); return enc(m) }, bus.CodeSemantic, "timeout_ms", ""},
		{"wrong type", func(id string) []byte { m := validCommand("victim", id); m["timeout_ms"] = "soon"; return enc(m) }, bus.CodeDecode, "timeout_ms", ""},
		{"wrong envelope type", func(id string) []byte { m := validCommand("victim", id); m["type"] = "event"; return enc(m) }, bus.CodeFraming, "type", ""},
		{"wrong ghost_id", func(id string) []byte { return enc(validCommand("someone-else", id)) }, bus.CodeSemantic, "ghost_id", "someone-else"},
		{"ghost_id with a dot", func(id string) []byte { return enc(validCommand("a.b", id)) }, bus.CodeSemantic, "ghost_id", "dot"},
		{"unknown seed", func(id string) []byte {
			m := validCommand("victim", id)
			m["seed_selector"] = "seed.nope"
			return enc(m)
		}, bus.CodeSemantic, "seed_selector", "unknown seed"},
		{"unknown operation", func(id string) []byte { m := validCommand("victim", id); m["operation"] = "explode"; return enc(m) }, bus.CodeSemantic, "operation", "explode"},
		{"bad args", func(id string) []byte {
			m := validCommand("victim", id)
			m["operation"], m["args"] = "sleep", map[string]string{"ms": "1; rm -rf /"}
			return enc(m)
		}, bus.CodeSemantic, "args.ms", "pattern"},
		{"undeclared arg", func(id string) []byte {
			m := validCommand("victim", id)
			m["args"] = map[string]string{"evil": "1"}
			return enc(m)
		}, bus.CodeSemantic, "args.evil", ""},
		{"expired", func(id string) []byte {
			m := validCommand("victim", id)
			m["deliver_by_ms"] = time.Now().Add(-time.Minute).UnixMilli()
			return enc(m)
		}, bus.CodeExpired, "", "deliver_by"},
		{"oversize", func(id string) []byte {
			m := validCommand("victim", id)
			m["padding"] = strings.Repeat("x", bus.MaxEnvelope)
			return enc(m)
		}, bus.CodeTooLarge, "", ""},
	}
	ctx := context.Background()
	want := map[string]int{} // command_id → case index
	for i, tc := range cases {
		id := "cmd_bad_" + strings.ReplaceAll(tc.name, " ", "_")
		if err := nc.Publish(subjects.Command("victim"), tc.data(id)); err != nil {
			t.Fatalf("%s: publish: %v", tc.name, err)
		}
		if tc.code != 0 {
			want[bus.EventID("victim", id)] = i
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	js := env.JetStream()
	missing := map[string]string{}
	for id, i := range want {
		missing[id] = cases[i].name
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("no event for: %v", missing)
		}
	})
	var events []bus.Event
	testenv.Eventually(t, 10*time.Second, "an error event per addressable bad command", func() bool {
		events = env.Events(js)
		if len(events) < len(want) {
			for _, ev := range events {
				delete(missing, ev.EventID)
			}
			return false
		}
		return true
	})
	if len(events) != len(want) {
		t.Fatalf("%d events stored, want %d", len(events), len(want))
	}
	for _, ev := range events {
		i, ok := want[ev.EventID]
		if !ok {
			t.Errorf("unexpected event %+v", ev)
			continue
		}
		tc := cases[i]
		if ev.Outcome != bus.OutcomeError || ev.Error == nil || ev.Error.Code != tc.code || ev.Error.Class != bus.ClassOf(tc.code) {
			t.Errorf("%s: event outcome %s error %+v, want code %d", tc.name, ev.Outcome, ev.Error, tc.code)
			continue
		}
		if tc.field != "" && ev.Error.Field != tc.field {
			t.Errorf("%s: error field %q, want %q (%s)", tc.name, ev.Error.Field, tc.field, ev.Error.Message)
		}
		if tc.reason != "" && !strings.Contains(ev.Error.Message, tc.reason) {
			t.Errorf("%s: error message %q does not mention %q", tc.name, ev.Error.Message, tc.reason)
		}
		if ev.GhostID != "victim" {
			t.Errorf("%s: event ghost_id %s", tc.name, ev.GhostID)
		}
		if exec, err := g.Store().GetByCommandID(ctx, ev.CommandID); err != nil || exec.Event == nil || exec.Event.EventID != ev.EventID {
			t.Errorf("%s: refusal not recorded in the execution store: %+v %v", tc.name, exec, err)
		}
	}
	// Still serving.
	rep := env.Run(env.Client(), testenv.NewIssue("victim", "seed.flow", "status", nil, 5*time.Second))
	if rep.Phase != bus.PhaseSatisfied {
		t.Fatalf("valid intent after bad input: %s", rep.Summary)
	}
}

func enc(m map[string]any) []byte {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// Bad issues straight onto mirage.issue get an immediate coded rejection, and Mirage keeps
// serving.
func TestBadIssuesAreRefusedAndMirageKeepsServing(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	env.StartGhost("local")
	nc := env.Conn("user")
	good := func() map[string]any {
		b, _ := json.Marshal(testenv.NewIssue("local", "seed.flow", "status", nil, 5*time.Second))
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		return m
	}
	cases := []struct {
		name  string
		data  []byte
		code  bus.Code
		field string
	}{
		{"not json", []byte("run everything"), bus.CodeFraming, ""},
		{"empty", []byte{}, bus.CodeFraming, ""},
		{"missing actor", func() []byte { m := good(); delete(m, "actor"); return enc(m) }(), bus.CodeSemantic, "actor"},
		{"missing objective", func() []byte { m := good(); delete(m, "objective"); return enc(m) }(), bus.CodeSemantic, "objective.seed_selector"},
		{"wrong type", func() []byte { m := good(); m["timeout_ms"] = []int{1}; return enc(m) }(), bus.CodeDecode, "timeout_ms"},
		{"dot in target", func() []byte { m := good(); m["target_scope"] = "a.b"; return enc(m) }(), bus.CodeSemantic, "target_scope"},
		{"unknown seed", func() []byte {
			m := good()
			m["objective"] = map[string]any{"seed_selector": "seed.nope", "operation": "x", "args": map[string]string{}}
			return enc(m)
		}(), bus.CodeSemantic, "objective"},
		{"oversize", func() []byte { m := good(); m["padding"] = strings.Repeat("y", bus.MaxEnvelope); return enc(m) }(), bus.CodeTooLarge, ""},
	}
	for _, tc := range cases {
		msg, err := nc.Request(subjects.Issue, tc.data, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: no reply: %v", tc.name, err)
		}
		var reply bus.IssueReply
		if err := bus.Decode(msg.Data, &reply); err != nil {
			t.Fatalf("%s: reply does not decode: %v", tc.name, err)
		}
		if reply.Status != "rejected" || reply.Error == nil || reply.Error.Code != tc.code || reply.Error.Field != tc.field {
			t.Errorf("%s: reply %+v error %+v, want code %d field %q", tc.name, reply, reply.Error, tc.code, tc.field)
		}
	}
	var _ = nats.ErrTimeout
	rep := env.Run(env.Client(), testenv.NewIssue("local", "seed.flow", "status", nil, 5*time.Second))
	if rep.Phase != bus.PhaseSatisfied {
		t.Fatalf("valid intent after bad issues: %s", rep.Summary)
	}
}

// Malformed attach requests on mirage.attach, and a register on another Ghost's subject,
// are refused with a code: attach's answer carries an error object as an issue's does,
// register.ack's reason starts with the code.
func TestBadAttachAndRegisterRequestsAreRefusedWithACode(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	nc := env.Conn("operator")
	for _, tc := range []struct {
		body  string
		code  bus.Code
		field string
	}{
		{"attach edge-1", bus.CodeFraming, ""},
		{`[1]`, bus.CodeFraming, ""},
		{`{"ghost_id": 5}`, bus.CodeDecode, "ghost_id"},
		{`{"ghost_id": "a.b"}`, bus.CodeSemantic, "ghost_id"},
		{`{}`, bus.CodeSemantic, "ghost_id"},
	} {
		msg, err := nc.Request(subjects.Attach, []byte(tc.body), 5*time.Second)
		if err != nil {
			t.Fatalf("%s: no answer: %v", tc.body, err)
		}
		var reply struct {
			Status, Reason string
			Error          *bus.Error
		}
		if err := json.Unmarshal(msg.Data, &reply); err != nil {
			t.Fatalf("%s: answer %s: %v", tc.body, msg.Data, err)
		}
		if reply.Status != "rejected" || reply.Error == nil || reply.Error.Code != tc.code || reply.Error.Field != tc.field || reply.Reason == "" {
			t.Errorf("%s: answer %s, want rejected with code %d on %q", tc.body, msg.Data, tc.code, tc.field)
		}
	}
	reg := bus.Register{Header: bus.NewHeader(bus.TypeRegister, "", time.Now()), GhostID: "edge-2", Version: "1", Labels: map[string]string{}}
	data, err := bus.Encode(&reg)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request(subjects.Register("edge-1"), data, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ack bus.RegisterAck
	if err := bus.Decode(msg.Data, &ack); err != nil {
		t.Fatal(err)
	}
	if ack.Status != bus.RegisterRejected || !strings.HasPrefix(ack.Reason, "1300 ") {
		t.Errorf("register on another Ghost's subject: %+v, want rejected with a reason starting with its code", ack)
	}
}
