package ghost

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

func TestStoreUnknownIDs(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.p.Run(ctx, command(t, "t.ok", "run")).Wait()
	if _, err := f.store.GetExecution(ctx, "exe_unknown"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetExecution(unknown) error %v, want ErrNotFound", err)
	}
	if _, err := f.store.GetByCommandID(ctx, "cmd_unknown"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetByCommandID(unknown) error %v, want ErrNotFound", err)
	}
	if _, err := f.store.GetByMessageID(ctx, "msg_unknown"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetByMessageID(unknown) error %v, want ErrNotFound", err)
	}
}

func TestEventIDStableAndDistinct(t *testing.T) {
	a := bus.EventID("g1", "cmd_1")
	if a != bus.EventID("g1", "cmd_1") {
		t.Fatal("EventID is not deterministic")
	}
	for _, other := range []string{bus.EventID("g2", "cmd_1"), bus.EventID("g1", "cmd_2"), bus.EventID("g1c", "md_1")} {
		if other == a {
			t.Fatalf("EventID collides: %s", a)
		}
	}
	if err := subjects.ValidateToken("event_id", a); err != nil || !strings.HasPrefix(a, subjects.PrefixEvent+"_") {
		t.Fatalf("EventID %q is not a prefixed token: %v", a, err)
	}
}

// The durable store writes "started" before a non-idempotent execution runs, so a crash
// leaves it Unfinished; an idempotent one is only written when it finishes (a crash lets
// it run again), and duplicates are caught before and after that.
func TestBoltStoreStartedRecords(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "executions.db")
	st, err := OpenBoltStore(path, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	idem := Execution{ExecutionID: "exe_1", CommandID: "cmd_1", Idempotent: true, StartedMS: 1}
	risky := Execution{ExecutionID: "exe_2", CommandID: "cmd_2", Idempotent: false, StartedMS: 1}
	for _, e := range []Execution{idem, risky} {
		if _, fresh, err := st.Begin(ctx, e); err != nil || !fresh {
			t.Fatalf("begin %s: fresh %v err %v", e.CommandID, fresh, err)
		}
		if again, fresh, err := st.Begin(ctx, e); err != nil || fresh || again.ExecutionID != e.ExecutionID {
			t.Fatalf("second begin of %s: %+v fresh %v err %v", e.CommandID, again, fresh, err)
		}
		if got, err := st.GetByCommandID(ctx, e.CommandID); err != nil || got.State != StateStarted {
			t.Fatalf("started %s: %+v %v", e.CommandID, got, err)
		}
	}
	// A crash: reopen without finishing.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err = OpenBoltStore(path, BoltOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	if _, err := st.GetByCommandID(ctx, "cmd_1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an idempotent execution survived a crash unfinished: %v", err)
	}
	unfinished, err := st.Unfinished(ctx)
	if err != nil || len(unfinished) != 1 || unfinished[0].CommandID != "cmd_2" {
		t.Fatalf("unfinished after a crash: %+v %v", unfinished, err)
	}
	// An idempotent execution that finishes is durable and a duplicate afterwards.
	if _, fresh, _ := st.Begin(ctx, idem); !fresh {
		t.Fatal("re-run after the crash was refused")
	}
	ev := &bus.Event{EventID: "evt_1", FinishedMS: 2}
	if err := st.Finish(ctx, "exe_1", ev); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err = OpenBoltStore(path, BoltOptions{}); err != nil {
		t.Fatal(err)
	}
	got, fresh, err := st.Begin(ctx, idem)
	if err != nil || fresh || got.State != StateFinished || got.Event == nil || got.Event.EventID != "evt_1" || !got.Idempotent {
		t.Fatalf("finished idempotent execution after restart: %+v fresh %v err %v", got, fresh, err)
	}
}

// Acknowledgements are written in batches without holding the caller; Close stores the
// ones still queued, so a clean restart re-sends nothing Mirage acknowledged.
func TestBoltStoreAcksSurviveClose(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "executions.db")
	st, err := OpenBoltStore(path, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		e := Execution{ExecutionID: fmt.Sprintf("exe_%d", i), CommandID: fmt.Sprintf("cmd_%d", i), Idempotent: i%2 == 0, StartedMS: 1}
		if _, fresh, err := st.Begin(ctx, e); err != nil || !fresh {
			t.Fatalf("begin %s: fresh %v err %v", e.CommandID, fresh, err)
		}
		if err := st.Finish(ctx, e.ExecutionID, &bus.Event{EventID: fmt.Sprintf("evt_%d", i), FinishedMS: 2}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 40 {
		if err := st.MarkAcked(ctx, fmt.Sprintf("cmd_%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := st.GetByCommandID(ctx, "cmd_3"); err != nil || !got.Acked {
		t.Fatalf("an acknowledged execution reads unacknowledged: %+v %v", got, err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err = OpenBoltStore(path, BoltOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	unacked, err := st.Unacked(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(unacked) != 10 {
		t.Fatalf("%d unacknowledged after restart, want the 10 never acknowledged", len(unacked))
	}
	for _, e := range unacked {
		var n int
		if _, err := fmt.Sscanf(e.CommandID, "cmd_%d", &n); err != nil || n < 40 {
			t.Fatalf("unacknowledged after restart: %s", e.CommandID)
		}
	}
}

// A durable Begin (a refusal, or a non-idempotent execution) of a command whose
// idempotent execution the store holds in memory, running or finished and not written
// yet, returns that execution instead of recording a second one.
func TestBoltStoreDurableBeginFindsTheExecutionInMemory(t *testing.T) {
	ctx := context.Background()
	st, err := OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	running := Execution{ExecutionID: "exe_run", CommandID: "cmd_1", Idempotent: true, StartedMS: 1}
	if _, fresh, err := st.Begin(ctx, running); err != nil || !fresh {
		t.Fatalf("begin: fresh %v err %v", fresh, err)
	}
	refusal := Execution{ExecutionID: "exe_refusal", CommandID: "cmd_1", StartedMS: 2}
	got, fresh, err := st.Begin(ctx, refusal)
	if err != nil || fresh || got.ExecutionID != running.ExecutionID || got.State != StateStarted {
		t.Fatalf("durable begin beside a running execution: %+v fresh %v err %v", got, fresh, err)
	}
	// Finished: in memory until the writer's next transaction, then on disk; either way
	// it is the command's execution.
	ev := &bus.Event{EventID: "evt_1", CommandID: "cmd_1", ExecutionID: running.ExecutionID, Outcome: bus.OutcomeSuccess, FinishedMS: 3}
	if err := st.Finish(ctx, running.ExecutionID, ev); err != nil {
		t.Fatal(err)
	}
	got, fresh, err = st.Begin(ctx, Execution{ExecutionID: "exe_refusal2", CommandID: "cmd_1", StartedMS: 4})
	if err != nil || fresh || got.ExecutionID != running.ExecutionID || got.Event == nil || got.Event.EventID != ev.EventID {
		t.Fatalf("durable begin after the execution finished: %+v fresh %v err %v", got, fresh, err)
	}
}

// The execution record is written without reflection, byte for byte as encoding/json
// writes it (HTML escaping off), and reads back the same.
func FuzzExecutionEncodesAsEncodingJSON(f *testing.F) {
	f.Add("exe_1", "q\"\\ <&> \u2028 \x01 é \xff", int64(3), true)
	f.Add("", "", int64(0), false)
	f.Fuzz(func(t *testing.T, id, text string, n int64, flag bool) {
		hdr := bus.Header{Type: text, V: 1, MessageID: id, TraceID: text, TimestampMS: n}
		e := &Execution{ExecutionID: id, CommandID: text, MessageID: id, IntentID: text, TraceID: id, SeedID: text, Operation: id,
			Idempotent: flag, State: text, StartedMS: n}
		if flag {
			e.Args = map[string]string{text: id, "k": text}
			e.FinishedMS, e.Acked = n, true
			e.Event = &bus.Event{Header: hdr, EventID: id, Outcome: text, Result: bus.Result{Stdout: text, ExitCode: int(n)},
				Error: &bus.Error{Code: bus.Code(n), Message: text}}
			e.Refusal = &bus.Error{Code: bus.CodeInternal, Class: text, Field: id}
		} else {
			e.Args = map[string]string{}
			e.Stored = true
			e.Command = &bus.Command{Header: hdr, CommandID: id, Args: map[string]string{"a": text}, TimeoutMS: n}
		}
		got := e.appendJSON(nil)
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(e); err != nil {
			t.Fatal(err)
		}
		want := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
		if !bytes.Equal(got, want) {
			t.Fatalf("\nappended      %q\nencoding/json %q", got, want)
		}
		var back, orig Execution
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(want, &orig); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, orig) {
			t.Fatalf("read back %+v, want %+v", back, orig)
		}
	})
}
