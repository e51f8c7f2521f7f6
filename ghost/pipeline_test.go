package ghost

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

const testGhost = "ghost-under-test"

// fixture is a pipeline with a MemoryStore and one test seed per behaviour.
type fixture struct {
	p     *Pipeline
	store *MemoryStore
	seeds map[string]*testSeed
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	release := make(chan struct{})
	big := strings.Repeat("x", 100<<10)
	bigUTF8 := strings.Repeat("€", (100<<10)/3) // 3-byte runes: the cap falls inside one
	seeds := []*testSeed{
		{id: "t.ok"},
		{id: "t.fail", run: func(context.Context, *bus.SeedExecute) (bus.Result, error) {
			return bus.Result{Stderr: "disk on fire"}, errors.New("boom")
		}},
		{id: "t.exit", run: func(context.Context, *bus.SeedExecute) (bus.Result, error) {
			return bus.Result{ExitCode: 3, Stderr: "exit three"}, errors.New("exited 3")
		}},
		{id: "t.refuse", run: func(context.Context, *bus.SeedExecute) (bus.Result, error) {
			return bus.Result{}, bus.FieldError(bus.CodeSemantic, "args.key", "no such key")
		}},
		// Ignores ctx: only the test's cleanup (or a long sleep) ends it.
		{id: "t.stubborn", run: func(context.Context, *bus.SeedExecute) (bus.Result, error) {
			select {
			case <-release:
			case <-time.After(30 * time.Second):
			}
			return bus.Result{Stdout: "finally"}, nil
		}},
		// Honours ctx, slowly.
		{id: "t.slow", run: func(ctx context.Context, _ *bus.SeedExecute) (bus.Result, error) {
			select {
			case <-time.After(100 * time.Millisecond):
				return bus.Result{Stdout: "slow done"}, nil
			case <-ctx.Done():
				return bus.Result{}, ctx.Err()
			}
		}},
		{id: "t.panic", run: func(context.Context, *bus.SeedExecute) (bus.Result, error) {
			panic("seed bug")
		}},
		{id: "t.loud", run: func(context.Context, *bus.SeedExecute) (bus.Result, error) {
			return bus.Result{Stdout: big, Stderr: bigUTF8}, nil
		}},
	}
	f := &fixture{store: NewMemoryStore(), seeds: map[string]*testSeed{}}
	reg := NewRegistry()
	for _, s := range seeds {
		s.ops = []bus.OperationInfo{op("run", param("msg", false, `[a-z ]*`))}
		if err := reg.Add(s); err != nil {
			t.Fatalf("Add %s: %v", s.id, err)
		}
		f.seeds[s.id] = s
	}
	t.Cleanup(func() {
		close(release)
		deadline := time.Now().Add(5 * time.Second)
		for _, s := range seeds {
			for s.running.Load() > 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
		}
	})
	f.p = NewPipeline(testGhost, reg, f.store, nil, nil)
	return f
}

// command returns a valid command for the test Ghost.
func command(t *testing.T, seed, operation string) *bus.Command {
	t.Helper()
	now := time.Now()
	cmd := &bus.Command{
		Header:       bus.NewHeader(bus.TypeCommand, "", now),
		CommandID:    subjects.NewID(subjects.PrefixCommand),
		IntentID:     subjects.NewID(subjects.PrefixIntent),
		GhostID:      testGhost,
		SeedSelector: seed,
		Operation:    operation,
		Args:         map[string]string{},
		DeliverByMS:  now.Add(time.Minute).UnixMilli(),
		TimeoutMS:    5000,
	}
	if err := cmd.Validate(); err != nil {
		t.Fatalf("test command is invalid: %v", err)
	}
	return cmd
}

// checkEvent holds for every terminal event: valid, correlated, and its id derived.
func checkEvent(t *testing.T, cmd *bus.Command, ev *bus.Event) {
	t.Helper()
	if ev == nil {
		t.Fatal("no event")
	}
	if err := ev.Validate(); err != nil {
		t.Fatalf("event does not validate: %v\n%+v", err, ev)
	}
	if ev.CommandID != cmd.CommandID || ev.IntentID != cmd.IntentID || ev.TraceID != cmd.TraceID {
		t.Fatalf("event correlation command_id=%s intent_id=%s trace_id=%s, want %s %s %s",
			ev.CommandID, ev.IntentID, ev.TraceID, cmd.CommandID, cmd.IntentID, cmd.TraceID)
	}
	if want := bus.EventID(testGhost, cmd.CommandID); ev.EventID != want {
		t.Fatalf("event_id %s, want bus.EventID(ghost, command_id) = %s", ev.EventID, want)
	}
	if ev.GhostID != testGhost {
		t.Fatalf("event ghost_id %s, want %s", ev.GhostID, testGhost)
	}
	if ev.FinishedMS < ev.StartedMS {
		t.Fatalf("finished_ms %d before started_ms %d", ev.FinishedMS, ev.StartedMS)
	}
}

// checkRecorded asserts the three store queries return the same finished execution.
func checkRecorded(t *testing.T, store *MemoryStore, cmd *bus.Command, ev *bus.Event) {
	t.Helper()
	ctx := context.Background()
	byExec, err := store.GetExecution(ctx, ev.ExecutionID)
	if err != nil {
		t.Fatalf("GetExecution(%s): %v", ev.ExecutionID, err)
	}
	byCmd, err := store.GetByCommandID(ctx, cmd.CommandID)
	if err != nil {
		t.Fatalf("GetByCommandID(%s): %v", cmd.CommandID, err)
	}
	byMsg, err := store.GetByMessageID(ctx, cmd.MessageID)
	if err != nil {
		t.Fatalf("GetByMessageID(%s): %v", cmd.MessageID, err)
	}
	if !reflect.DeepEqual(byExec, byCmd) || !reflect.DeepEqual(byExec, byMsg) {
		t.Fatalf("store queries disagree:\nby execution %+v\nby command   %+v\nby message   %+v", byExec, byCmd, byMsg)
	}
	if byExec.State != StateFinished || byExec.Event == nil || !reflect.DeepEqual(*byExec.Event, *ev) {
		t.Fatalf("recorded execution state %s event %+v, want finished with %+v", byExec.State, byExec.Event, ev)
	}
	if byExec.ExecutionID != ev.ExecutionID || byExec.CommandID != cmd.CommandID || byExec.TraceID != cmd.TraceID || byExec.IntentID != cmd.IntentID {
		t.Fatalf("recorded execution correlation %+v", byExec)
	}
}

func TestPipelineCommands(t *testing.T) {
	tests := []struct {
		name     string
		seed     string
		op       string
		mutate   func(*bus.Command)
		code     bus.Code // 0: success
		field    string
		calls    int64 // executions of the seed
		executed bool
		check    func(t *testing.T, ev *bus.Event)
	}{
		{name: "success", seed: "t.ok", op: "run", calls: 1, executed: true, check: func(t *testing.T, ev *bus.Event) {
			if ev.Result.Status != "ok" || ev.Result.ExitCode != 0 || ev.Result.Stdout != "run done" || ev.Result.Truncated {
				t.Errorf("result %+v", ev.Result)
			}
		}},
		{name: "success with args", seed: "t.ok", op: "run", mutate: func(c *bus.Command) { c.Args = map[string]string{"msg": "hi there"} }, calls: 1, executed: true},
		{name: "unknown seed", seed: "t.nope", op: "run", code: bus.CodeSemantic, field: "seed_selector"},
		{name: "unknown operation", seed: "t.ok", op: "jump", code: bus.CodeSemantic, field: "operation"},
		{name: "args refused", seed: "t.ok", op: "run", mutate: func(c *bus.Command) { c.Args = map[string]string{"msg": "rm -rf /"} }, code: bus.CodeSemantic, field: "args.msg"},
		{name: "seed error", seed: "t.fail", op: "run", code: bus.CodeRuntime, calls: 1, executed: true, check: func(t *testing.T, ev *bus.Event) {
			if ev.Result.ExitCode == 0 || ev.Result.Stderr != "disk on fire" || ev.Result.Status != "failed" {
				t.Errorf("result %+v, want failed, non-zero exit code, stderr kept", ev.Result)
			}
			if !strings.Contains(ev.Error.Message, "boom") {
				t.Errorf("error message %q does not carry the seed's error", ev.Error.Message)
			}
		}},
		{name: "seed error keeps exit code", seed: "t.exit", op: "run", code: bus.CodeRuntime, calls: 1, executed: true, check: func(t *testing.T, ev *bus.Event) {
			if ev.Result.ExitCode != 3 || ev.Result.Stderr != "exit three" {
				t.Errorf("result %+v, want exit code 3 and stderr kept", ev.Result)
			}
		}},
		{name: "seed refusal keeps its code", seed: "t.refuse", op: "run", code: bus.CodeSemantic, field: "args.key", calls: 1, executed: true},
		{name: "panic", seed: "t.panic", op: "run", code: bus.CodeRuntime, calls: 1, executed: true, check: func(t *testing.T, ev *bus.Event) {
			if !strings.Contains(ev.Error.Message, "panic") || ev.Result.ExitCode == 0 {
				t.Errorf("error %+v result %+v, want a runtime error naming the panic", ev.Error, ev.Result)
			}
		}},
		{name: "output capped", seed: "t.loud", op: "run", calls: 1, executed: true, check: func(t *testing.T, ev *bus.Event) {
			if len(ev.Result.Stdout) != bus.MaxOutput || !ev.Result.Truncated {
				t.Errorf("stdout %d bytes truncated=%v, want %d and true", len(ev.Result.Stdout), ev.Result.Truncated, bus.MaxOutput)
			}
			if n := len(ev.Result.Stderr); n > bus.MaxOutput || n < bus.MaxOutput-3 || !utf8.ValidString(ev.Result.Stderr) {
				t.Errorf("stderr %d bytes (valid UTF-8: %v), want at most %d, cut on a rune boundary", n, utf8.ValidString(ev.Result.Stderr), bus.MaxOutput)
			}
		}},
		{name: "expired", seed: "t.ok", op: "run", mutate: func(c *bus.Command) { c.DeliverByMS = time.Now().Add(-time.Second).UnixMilli() }, code: bus.CodeExpired, check: func(t *testing.T, ev *bus.Event) {
			if ev.Error.Class != bus.ClassExpired {
				t.Errorf("class %s, want expired", ev.Error.Class)
			}
		}},
		{name: "wrong ghost_id", seed: "t.ok", op: "run", mutate: func(c *bus.Command) { c.GhostID = "someone-else" }, code: bus.CodeSemantic, field: "ghost_id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			cmd := command(t, tc.seed, tc.op)
			if tc.mutate != nil {
				tc.mutate(cmd)
			}
			out := f.p.Run(context.Background(), cmd)
			out.Wait()
			out.Wait()
			ev := out.Event
			checkEvent(t, cmd, ev)
			if out.Duplicate || out.Executed != tc.executed {
				t.Fatalf("outcome duplicate=%v executed=%v, want false %v", out.Duplicate, out.Executed, tc.executed)
			}
			if tc.code == 0 {
				if ev.Outcome != bus.OutcomeSuccess || ev.Error != nil {
					t.Fatalf("outcome %s error %+v, want success", ev.Outcome, ev.Error)
				}
			} else {
				if ev.Outcome != bus.OutcomeError || ev.Error == nil || ev.Error.Code != tc.code || ev.Error.Class != bus.ClassOf(tc.code) {
					t.Fatalf("outcome %s error %+v, want error %d %s", ev.Outcome, ev.Error, tc.code, bus.ClassOf(tc.code))
				}
				if ev.Error.Field != tc.field {
					t.Fatalf("error field %q, want %q (%s)", ev.Error.Field, tc.field, ev.Error.Message)
				}
			}
			if tc.check != nil {
				tc.check(t, ev)
			}
			if s, ok := f.seeds[tc.seed]; ok && s.calls.Load() != tc.calls {
				t.Fatalf("seed %s executed %d times, want %d", tc.seed, s.calls.Load(), tc.calls)
			}
			checkRecorded(t, f.store, cmd, ev)

			// The same command again, as JetStream redelivers it: a new message_id.
			again := *cmd
			again.Header = bus.NewHeader(bus.TypeCommand, cmd.TraceID, time.Now())
			dup := f.p.Run(context.Background(), &again)
			if !dup.Duplicate || dup.Executed || dup.Event == nil || !reflect.DeepEqual(*dup.Event, *ev) {
				t.Fatalf("second run: duplicate=%v executed=%v event %+v, want the identical recorded event", dup.Duplicate, dup.Executed, dup.Event)
			}
			if s, ok := f.seeds[tc.seed]; ok && s.calls.Load() != tc.calls {
				t.Fatalf("seed %s executed %d times after a duplicate, want %d", tc.seed, s.calls.Load(), tc.calls)
			}
		})
	}
}

// A seed that ignores its context is not waited for past the command's timeout.
func TestPipelineTimeoutWithSeedIgnoringContext(t *testing.T) {
	f := newFixture(t)
	cmd := command(t, "t.stubborn", "run")
	cmd.TimeoutMS = 200
	start := time.Now()
	out := f.p.Run(context.Background(), cmd)
	out.Wait()
	elapsed := time.Since(start)
	if limit := 200*time.Millisecond + time.Second; elapsed > limit {
		t.Fatalf("Run returned after %s, want within %s", elapsed, limit)
	}
	if elapsed < 150*time.Millisecond {
		t.Fatalf("Run returned after %s, before the 200ms timeout", elapsed)
	}
	checkEvent(t, cmd, out.Event)
	ev := out.Event
	if ev.Outcome != bus.OutcomeError || ev.Error.Code != bus.CodeExecTimeout || ev.Error.Class != bus.ClassRuntime {
		t.Fatalf("outcome %s error %+v, want 1401 runtime", ev.Outcome, ev.Error)
	}
	if ev.Result.Status != "timed_out" {
		t.Fatalf("result status %q, want timed_out", ev.Result.Status)
	}
	checkRecorded(t, f.store, cmd, ev)
}

// A Ghost stopping during an execution yields an interrupted event, not a success or a hang.
func TestPipelineInterruptedByGhostStop(t *testing.T) {
	f := newFixture(t)
	cmd := command(t, "t.slow", "run")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	first := f.p.Run(ctx, cmd)
	first.Wait()
	ev := first.Event
	checkEvent(t, cmd, ev)
	if ev.Outcome != bus.OutcomeError || ev.Error.Code != bus.CodeInterrupted {
		t.Fatalf("outcome %s error %+v, want 1700 interrupted", ev.Outcome, ev.Error)
	}
}

// Twenty deliveries of one command at once: one execution, one event_id.
func TestPipelineConcurrentSameCommand(t *testing.T) {
	f := newFixture(t)
	cmd := command(t, "t.slow", "run")
	const n = 20
	outs := make([]Outcome, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := *cmd
			c.Header = bus.NewHeader(bus.TypeCommand, cmd.TraceID, time.Now())
			<-start
			outs[i] = f.p.Run(context.Background(), &c)
			outs[i].Wait()
		}()
	}
	close(start)
	wg.Wait()
	if calls := f.seeds["t.slow"].calls.Load(); calls != 1 {
		t.Fatalf("seed executed %d times, want 1", calls)
	}
	want := bus.EventID(testGhost, cmd.CommandID)
	executed, withoutEvent := 0, 0
	for i, out := range outs {
		if out.Event == nil {
			withoutEvent++
		}
		if out.Executed {
			executed++
			checkEvent(t, cmd, out.Event)
		}
		switch {
		case out.Event != nil && out.Event.EventID != want:
			t.Errorf("delivery %d: event_id %s, want %s", i, out.Event.EventID, want)
		case out.Event == nil && !out.Duplicate:
			// Only a delivery that found the execution still running may come back
			// without an event: the running one emits it.
			t.Errorf("delivery %d: no event and not a duplicate", i)
		case out.Event == nil && out.Running == nil:
			// A replayed delivery waits on it before the replay position moves on.
			t.Errorf("delivery %d: no event and nothing to wait for", i)
		case out.Event == nil:
			select {
			case <-out.Running:
			default:
				t.Errorf("delivery %d: the running execution is recorded, its channel still open", i)
			}
		}
	}
	if executed != 1 {
		t.Fatalf("%d deliveries executed, want 1", executed)
	}
	t.Logf("%d of %d deliveries found the execution running and came back without an event", withoutEvent, n)
	rec, err := f.store.GetByCommandID(context.Background(), cmd.CommandID)
	if err != nil || rec.Event == nil || rec.Event.EventID != want {
		t.Fatalf("recorded execution %+v %v", rec, err)
	}
}

func TestPipelineRefuseProbe(t *testing.T) {
	f := newFixture(t)
	probe := bus.Probe{
		Type:      bus.TypeCommand,
		CommandID: subjects.NewID(subjects.PrefixCommand),
		IntentID:  subjects.NewID(subjects.PrefixIntent),
		TraceID:   subjects.NewTraceID(),
		SeedID:    "t.ok",
		Operation: "run",
	}
	perr := bus.FieldError(bus.CodeDecode, "timeout_ms", "expected int64, got JSON string")
	out := f.p.Refuse(context.Background(), probe, perr)
	ev := out.Event
	cmd := &bus.Command{Header: bus.Header{TraceID: probe.TraceID}, CommandID: probe.CommandID, IntentID: probe.IntentID}
	checkEvent(t, cmd, ev)
	if ev.Outcome != bus.OutcomeError || ev.Error.Code != bus.CodeDecode || ev.Error.Field != "timeout_ms" {
		t.Fatalf("outcome %s error %+v, want the given 1200 error", ev.Outcome, ev.Error)
	}
	rec, err := f.store.GetByCommandID(context.Background(), probe.CommandID)
	if err != nil || rec.State != StateFinished || rec.Event == nil || !reflect.DeepEqual(*rec.Event, *ev) {
		t.Fatalf("refusal not recorded: %+v %v", rec, err)
	}
	// A well-formed delivery of the same command_id later gets the refusal, not an execution.
	valid := command(t, "t.ok", "run")
	valid.CommandID, valid.IntentID, valid.TraceID = probe.CommandID, probe.IntentID, probe.TraceID
	again := f.p.Run(context.Background(), valid)
	if !again.Duplicate || again.Event == nil || again.Event.EventID != ev.EventID || f.seeds["t.ok"].calls.Load() != 0 {
		t.Fatalf("run after refusal: %+v, seed calls %d", again, f.seeds["t.ok"].calls.Load())
	}
}

// A refusal whose message quotes a huge hostile value is cut, so its event can still be
// encoded and sent.
func TestPipelineRefusalOfHugeInputStaysSendable(t *testing.T) {
	f := newFixture(t)
	probe := bus.Probe{Type: bus.TypeCommand, CommandID: subjects.NewID(subjects.PrefixCommand), IntentID: subjects.NewID(subjects.PrefixIntent), TraceID: subjects.NewTraceID()}
	perr := bus.FieldError(bus.CodeSemantic, "args", "name %q is not allowed", strings.Repeat("\u00ad", 400_000))
	out := f.p.Refuse(context.Background(), probe, perr)
	data, err := bus.Encode(out.Event)
	if err != nil {
		t.Fatalf("refusal event of %d-byte message does not encode: %v", len(perr.Message), err)
	}
	if len(out.Event.Error.Message) > 5000 || !utf8.ValidString(out.Event.Error.Message) || out.Event.Error.Code != bus.CodeSemantic {
		t.Fatalf("error %d bytes, code %d; event %d bytes", len(out.Event.Error.Message), out.Event.Error.Code, len(data))
	}
}

// pausingStore holds the first Begin after the execution is claimed, until released: the
// moment in which another delivery of the command finds it claimed but not yet running.
type pausingStore struct {
	*MemoryStore
	once    sync.Once
	claimed chan struct{}
	release chan struct{}
}

func (s *pausingStore) Begin(ctx context.Context, e Execution) (Execution, bool, error) {
	got, fresh, err := s.MemoryStore.Begin(ctx, e)
	first := false
	s.once.Do(func() { first = true })
	if first {
		close(s.claimed)
		<-s.release
	}
	return got, fresh, err
}

// A delivery arriving while another has claimed the command in the store but not yet
// started it is a duplicate that gets the running execution's channel, closed only when
// the execution is recorded: a replayed delivery waits on it before the replay position
// moves past the command.
func TestPipelineDuplicateDuringBeginGetsTheRunningChannel(t *testing.T) {
	f := newFixture(t)
	st := &pausingStore{MemoryStore: f.store, claimed: make(chan struct{}), release: make(chan struct{})}
	p := NewPipeline(testGhost, f.p.registry, st, nil, nil)
	cmd := command(t, "t.ok", "run")
	first := make(chan Outcome, 1)
	go func() {
		out := p.Run(context.Background(), cmd)
		out.Wait()
		first <- out
	}()
	select {
	case <-st.claimed:
	case <-time.After(5 * time.Second):
		t.Fatal("the first delivery did not claim the command")
	}
	dup := *cmd
	out := p.Run(context.Background(), &dup)
	if !out.Duplicate || out.Event != nil || out.Running == nil {
		t.Fatalf("delivery during the first one's Begin: duplicate=%v event=%v running=%v, want a duplicate with the running channel", out.Duplicate, out.Event != nil, out.Running != nil)
	}
	select {
	case <-out.Running:
		t.Fatal("the running channel is closed before the execution ran")
	default:
	}
	close(st.release)
	var o1 Outcome
	select {
	case o1 = <-first:
	case <-time.After(5 * time.Second):
		t.Fatal("the first delivery did not finish")
	}
	if !o1.Executed || o1.Event == nil {
		t.Fatalf("first delivery: %+v", o1)
	}
	select {
	case <-out.Running:
	case <-time.After(5 * time.Second):
		t.Fatal("the running channel is still open after the execution was recorded")
	}
	if calls := f.seeds["t.ok"].calls.Load(); calls != 1 {
		t.Fatalf("seed executed %d times, want 1", calls)
	}
}

// meetingStore holds the first two GetByCommandID calls until both have been made: two
// deliveries of one command that each miss the other in the store.
type meetingStore struct {
	ExecutionStore
	arrived atomic.Int32
	met     chan struct{}
}

func (s *meetingStore) GetByCommandID(ctx context.Context, id string) (Execution, error) {
	got, err := s.ExecutionStore.GetByCommandID(ctx, id)
	switch s.arrived.Add(1) {
	case 1:
		select {
		case <-s.met:
		case <-time.After(5 * time.Second):
		}
	case 2:
		close(s.met)
	}
	return got, err
}

// Two deliveries of one idempotent command that miss each other in the store, one in
// time and one past its deliver_by_ms (a live copy and a late replayed one), end with one
// terminal event between them: the refusal is never recorded beside the execution, in
// whichever order they reach the pipeline.
func TestPipelineRefusalAndExecutionOfOneCommandGiveOneEvent(t *testing.T) {
	f := newFixture(t)
	for round := range 20 {
		bolt, err := OpenBoltStore(filepath.Join(t.TempDir(), fmt.Sprintf("executions-%d.db", round)), BoltOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st := &meetingStore{ExecutionStore: bolt, met: make(chan struct{})}
		// The first reading of the clock is in time, every later one past the deadline.
		t0 := time.Now()
		var reads atomic.Int32
		clock := func() time.Time {
			if reads.Add(1) == 1 {
				return t0
			}
			return t0.Add(2 * time.Minute)
		}
		p := NewPipeline(testGhost, f.p.registry, st, clock, nil)
		cmd := command(t, "t.slow", "run")
		outs := make(chan Outcome, 2)
		for range 2 {
			dup := *cmd
			go func() {
				out := p.Run(context.Background(), &dup)
				out.Wait()
				outs <- out
			}()
		}
		var events []*bus.Event
		for range 2 {
			select {
			case out := <-outs:
				if out.Event != nil {
					events = append(events, out.Event)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a delivery did not end")
			}
		}
		if len(events) == 0 {
			t.Fatal("no terminal event from either delivery")
		}
		for _, ev := range events[1:] {
			if ev.EventID != events[0].EventID || ev.Outcome != events[0].Outcome || ev.ExecutionID != events[0].ExecutionID {
				t.Fatalf("round %d: two terminal events for one command: %s %s (%s) and %s %s (%s)", round,
					events[0].Outcome, events[0].ExecutionID, events[0].Result.Status, ev.Outcome, ev.ExecutionID, ev.Result.Status)
			}
		}
		if err := bolt.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// A refusal whose record was written but whose event was not (the Ghost died between the
// two) ends at the next start as the same refusal: nothing ran, so not as interrupted
// with an unknown outcome.
func TestResumedRefusalEndsRefused(t *testing.T) {
	f := newFixture(t)
	cmd := command(t, "t.ok", "run")
	perr := bus.Errorf(bus.CodeExpired, "command reached the ghost after its deliver_by_ms; not executed")
	exec := f.p.newExecution(cmd, time.Now())
	exec.Refusal = perr
	if _, fresh, err := f.store.Begin(context.Background(), exec); err != nil || !fresh {
		t.Fatalf("begin: %v %v", fresh, err)
	}
	unfinished, err := f.store.Unfinished(context.Background())
	if err != nil || len(unfinished) != 1 {
		t.Fatalf("unfinished: %v %v", unfinished, err)
	}
	out := f.p.Resume(context.Background(), unfinished[0])
	checkEvent(t, cmd, out.Event)
	if out.Event.Error == nil || out.Event.Error.Code != bus.CodeExpired || out.Event.Result.Status != "refused" || out.Executed {
		t.Fatalf("resumed refusal: %+v", out.Event)
	}
	if calls := f.seeds["t.ok"].calls.Load(); calls != 0 {
		t.Fatalf("the seed ran %d times for a refused command", calls)
	}
}

// A resumed idempotent execution runs for what is left of its timeout since it first
// started (Mirage's deadline and the command's lock count from then); one whose timeout ran
// out while the Ghost was down is not run again: 1401.
func TestResumedExecutionGetsWhatIsLeftOfItsTimeout(t *testing.T) {
	for _, tc := range []struct {
		name string
		age  time.Duration // since it first started; the command's timeout is 5 s
		runs bool
	}{
		{"time left", time.Second, true},
		{"timeout ran out", 10 * time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t)
			cmd := command(t, "t.ok", "run")
			exec := f.p.newExecution(cmd, time.Now().Add(-tc.age))
			exec.Idempotent = true
			if _, fresh, err := f.store.Begin(ctx, exec); err != nil || !fresh {
				t.Fatalf("begin: %v %v", fresh, err)
			}
			unfinished, err := f.store.Unfinished(ctx)
			if err != nil || len(unfinished) != 1 {
				t.Fatalf("unfinished: %v %v", unfinished, err)
			}
			out := f.p.Resume(ctx, unfinished[0])
			checkEvent(t, cmd, out.Event)
			calls := f.seeds["t.ok"].calls.Load()
			switch {
			case tc.runs && (out.Event.Outcome != bus.OutcomeSuccess || calls != 1 || !out.Executed):
				t.Fatalf("resumed with time left: %+v (%d calls), want it run", out.Event, calls)
			case !tc.runs && (out.Event.Error == nil || out.Event.Error.Code != bus.CodeExecTimeout || out.Event.Result.Status != "timed_out" ||
				!strings.Contains(out.Event.Error.Message, "not run again") || calls != 0):
				t.Fatalf("resumed past its timeout: %+v (%+v, %d calls), want a 1401 and no run", out.Event, out.Event.Error, calls)
			}
		})
	}
}

// failingStore fails Begin, and GetByCommandID when failReads is set too, as a full or
// failing disk does.
type failingStore struct {
	*MemoryStore
	fail, failReads atomic.Bool
}

var errDiskFull = errors.New("write executions.db: no space left on device")

func (s *failingStore) Begin(ctx context.Context, e Execution) (Execution, bool, error) {
	if s.fail.Load() {
		return Execution{}, false, errDiskFull
	}
	return s.MemoryStore.Begin(ctx, e)
}

func (s *failingStore) GetByCommandID(ctx context.Context, id string) (Execution, error) {
	if s.failReads.Load() {
		return Execution{}, errDiskFull
	}
	return s.MemoryStore.GetByCommandID(ctx, id)
}

// A command the execution store cannot record gets no event: a 1500 under its stable
// event_id would be its terminal event even after a later delivery, the store back, runs
// it (the report would say "not run" of an operation that ran). Nothing runs, nothing is
// recorded, and the next delivery is handled as the first.
func TestPipelineStoreFailureSendsNoEvent(t *testing.T) {
	for _, tc := range []struct {
		name      string
		seed      string
		failReads bool
		want      string // the outcome once the store is back
	}{
		{"begin fails", "t.ok", false, bus.OutcomeSuccess},
		{"begin fails for a refusal", "t.unknown", false, bus.OutcomeError},
		{"reads fail too", "t.ok", true, bus.OutcomeSuccess},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			st := &failingStore{MemoryStore: f.store}
			p := NewPipeline(testGhost, f.p.registry, st, nil, nil)
			cmd := command(t, "t.ok", "run")
			cmd.SeedSelector = tc.seed
			st.fail.Store(true)
			st.failReads.Store(tc.failReads)
			out := p.Run(context.Background(), cmd)
			out.Wait()
			if out.Event != nil || out.Executed || !errors.Is(out.Unrecorded, errDiskFull) {
				t.Fatalf("with the store failing: event %+v, executed %v, unrecorded %v; want no event, nothing run, the store's error", out.Event, out.Executed, out.Unrecorded)
			}
			if _, err := f.store.GetByCommandID(context.Background(), cmd.CommandID); !errors.Is(err, ErrNotFound) {
				t.Fatalf("the command is recorded (%v) though the store failed", err)
			}
			if p.Known(context.Background(), cmd.CommandID) {
				t.Fatal("the command counts as seen: a catch-up would pass it by")
			}
			st.fail.Store(false)
			st.failReads.Store(false)
			again := *cmd
			out = p.Run(context.Background(), &again)
			out.Wait()
			checkEvent(t, cmd, out.Event)
			if out.Duplicate || out.Event.Outcome != tc.want {
				t.Fatalf("once the store is back: outcome %s duplicate %v, want %s, handled as the first delivery", out.Event.Outcome, out.Duplicate, tc.want)
			}
			checkRecorded(t, f.store, cmd, out.Event)
		})
	}
}

// A command the Ghost gives up on (Abandon, a 1500 "not run and will not be") has that one
// terminal event: a later delivery, the store back, gets it as a duplicate and runs
// nothing, whether the store recorded the refusal or could not (held in memory). A command
// that has an answer already (a copy of it ran) gets no 1500 at all; one a copy holds is
// answered once that copy ends, as the copy left it: the 1500 only when the store failed
// the copy too.
func TestPipelineAbandonGivesTheCommandOneTerminalEvent(t *testing.T) {
	perr := bus.Errorf(bus.CodeInternal, "the ghost gave up on the command; it was not run and will not be")
	for _, tc := range []struct {
		name    string
		before  func(f *fixture, p *Pipeline, cmd *bus.Command) (undo func())
		storeUp bool // the store records the refusal
		answer  bool // Abandon answers with the 1500
	}{
		{"the store records the refusal", nil, true, true},
		{"the store fails the refusal too", nil, false, true},
		{"a copy ran before", func(_ *fixture, p *Pipeline, cmd *bus.Command) func() {
			c := *cmd
			p.Run(context.Background(), &c).Wait()
			return func() {}
		}, true, false},
		{"a copy is running and gets through", copyHolding(true), true, false},
		{"a copy is running and the store fails it", copyHolding(false), true, true},
		{"a copy is running, the store fails it and the refusal", copyHolding(false), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t)
			st := &failingStore{MemoryStore: f.store}
			p := NewPipeline(testGhost, f.p.registry, st, nil, nil)
			cmd := command(t, "t.ok", "run")
			if tc.before != nil {
				defer tc.before(f, p, cmd)()
			}
			st.fail.Store(!tc.storeUp)
			ev, err := p.Abandon(ctx, cmd, perr)
			st.fail.Store(false)
			if err != nil {
				t.Fatalf("Abandon: %v", err)
			}
			if !tc.answer {
				if ev != nil {
					t.Fatalf("abandoned a command that has an answer already: %+v", ev)
				}
				return
			}
			checkEvent(t, cmd, ev)
			if ev.Error == nil || ev.Error.Code != bus.CodeInternal || ev.Result.Status != "refused" {
				t.Fatalf("event %+v, want a 1500 refusal", ev)
			}
			rec, err := f.store.GetByCommandID(ctx, cmd.CommandID)
			switch {
			case tc.storeUp && (err != nil || rec.Event == nil || rec.Event.EventID != ev.EventID || rec.Refusal == nil || rec.Args != nil):
				t.Fatalf("recorded %+v (%v), want the refusal, finished, without the args", rec, err)
			case !tc.storeUp && !errors.Is(err, ErrNotFound):
				t.Fatalf("recorded %+v (%v) though the store failed", rec, err)
			}
			if !p.Known(ctx, cmd.CommandID) || !p.Finished(ctx, cmd.CommandID) {
				t.Fatal("the command given up on counts as not seen or not finished: a catch-up would handle it again")
			}
			again := *cmd
			out := p.Run(ctx, &again)
			out.Wait()
			if out.Executed || !out.Duplicate || out.Event == nil || out.Event.ExecutionID != ev.ExecutionID {
				t.Fatalf("a later delivery: executed %v duplicate %v event %+v; want a duplicate of the 1500", out.Executed, out.Duplicate, out.Event)
			}
			out = p.Refuse(ctx, bus.Probe{CommandID: cmd.CommandID}, bus.Errorf(bus.CodeFraming, "malformed"))
			if !out.Duplicate || out.Event == nil || out.Event.ExecutionID != ev.ExecutionID {
				t.Fatalf("a later malformed copy: duplicate %v event %+v; want a duplicate of the 1500", out.Duplicate, out.Event)
			}
			if calls := f.seeds["t.ok"].calls.Load(); calls != 0 {
				t.Fatalf("the seed ran %d times for a command answered 'not run'", calls)
			}
		})
	}
}

// copyHolding is a copy of the command given up on that holds it (its delivery claimed it)
// when Abandon is called and releases it a moment later: its execution recorded when ran is
// set (it got through), nothing recorded otherwise (the store failed it too).
func copyHolding(ran bool) func(f *fixture, p *Pipeline, cmd *bus.Command) (undo func()) {
	return func(f *fixture, p *Pipeline, cmd *bus.Command) func() {
		release, _, _ := p.claim(cmd.CommandID)
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer release()
			time.Sleep(50 * time.Millisecond) // Abandon is waiting by then
			if !ran {
				return
			}
			now := time.Now()
			exec := p.newExecution(cmd, now)
			if _, _, err := f.store.Begin(context.Background(), exec); err != nil {
				panic(err)
			}
			ev := p.event(cmd, exec.ExecutionID, now, now, bus.Result{Status: "ok"}, nil)
			if err := f.store.Finish(context.Background(), exec.ExecutionID, ev); err != nil {
				panic(err)
			}
		}()
		return func() { <-done }
	}
}

// Abandon waits for a copy holding the command only as long as its context lasts (the Ghost
// stopping): it then answers nothing and records nothing, the command being the copy's.
func TestPipelineAbandonStopsWaitingWithItsContext(t *testing.T) {
	f := newFixture(t)
	cmd := command(t, "t.ok", "run")
	release, _, _ := f.p.claim(cmd.CommandID)
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	ev, err := f.p.Abandon(ctx, cmd, bus.Errorf(bus.CodeInternal, "given up"))
	if ev != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Abandon with a copy holding the command past its context: event %+v, err %v; want none and the context's error", ev, err)
	}
	if _, err := f.store.GetByCommandID(context.Background(), cmd.CommandID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("recorded the command (%v) while a copy held it", err)
	}
}
