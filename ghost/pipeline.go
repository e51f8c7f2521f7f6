package ghost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Pipeline turns one decoded command into exactly one terminal event:
// guards → execution store claim → seed.execute → seed.result → event. It is deterministic
// for a given command and store: a command_id seen before yields the event recorded then.
type Pipeline struct {
	ghostID  string
	registry *Registry
	store    ExecutionStore
	now      func() time.Time
	// mirageAt maps a moment of now's clock to Mirage's clock, on which deliver_by_ms is
	// set (clock.go); the identity until the Ghost has heard from a Mirage.
	mirageAt func(time.Time) time.Time
	log      *slog.Logger

	mu      sync.Mutex
	running map[string]chan struct{} // command_id → closed once its execution is recorded
	// givenUp holds the 1500 event of each command the Ghost gave up on that the store
	// could not record even as a refusal (Abandon), by command_id: every later delivery in
	// this process is a duplicate of it, never run.
	givenUp map[string]*bus.Event
}

// NewPipeline returns the pipeline of the Ghost ghostID.
func NewPipeline(ghostID string, registry *Registry, store ExecutionStore, now func() time.Time, log *slog.Logger) *Pipeline {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pipeline{ghostID: ghostID, registry: registry, store: store, now: now, log: log,
		mirageAt: func(t time.Time) time.Time { return t },
		running:  map[string]chan struct{}{}, givenUp: map[string]*bus.Event{}}
}

// Outcome of Pipeline.Run.
type Outcome struct {
	// Event is the terminal event to emit; nil when another delivery of the same command is
	// still executing (that one will emit).
	Event *bus.Event
	// Duplicate is true when the command_id had been seen: Event is the recorded one.
	Duplicate bool
	// Executed is true when a seed ran for this delivery.
	Executed bool
	// Took is how long the seed ran, on the monotonic clock (the event's finished_ms less
	// started_ms is on the wall clock, which a step of it during the run moves).
	Took time.Duration
	// Acked is true, on a duplicate, when Mirage already acknowledged the event.
	Acked bool
	// Stored, when set, is closed once the terminal event is recorded in the store.
	Stored <-chan struct{}
	// Running, on a duplicate without an event (its execution still runs in this process),
	// is closed once that execution's event is recorded.
	Running <-chan struct{}
	// Unrecorded is the execution store's error when it could not record the command:
	// nothing ran and there is no event (a terminal event under the stable event_id would
	// stand for the command whatever a later delivery does). A later delivery handles it.
	Unrecorded error
}

// Wait blocks until the outcome's event is recorded (a no-op for outcomes recorded before
// they were returned).
func (o Outcome) Wait() {
	if o.Stored != nil {
		<-o.Stored
	}
}

// Run decides and, when allowed, executes cmd. ctx bounds the execution (the Ghost's
// lifetime); the command's own timeout_ms is applied inside.
func (p *Pipeline) Run(ctx context.Context, cmd *bus.Command) Outcome {
	return p.RunArrived(ctx, cmd, time.Time{}, false)
}

// RunArrived is Run for a command that reached the Ghost at arrived (zero: now). The time
// it has waited since (for the Ghost's id to be settled, for an execution slot) comes off
// its timeout: Mirage's deadline for the command runs from when it sent it, so a command
// that waited would otherwise run that much past it, and its event, however it ended,
// come too late to count.
//
// predates is set for a command read from EDGE_CMD at or before the store's born: an
// earlier store of this id may have run it. It runs only if its operation is idempotent;
// any other is answered 1700, "outcome unknown", and recorded so, never run.
func (p *Pipeline) RunArrived(ctx context.Context, cmd *bus.Command, arrived time.Time, predates bool) Outcome {
	if ev := p.givenUpOn(cmd.CommandID); ev != nil {
		return Outcome{Event: ev, Duplicate: true}
	}
	if prior, err := p.store.GetByCommandID(ctx, cmd.CommandID); err == nil {
		return Outcome{Event: prior.Event, Duplicate: true, Acked: prior.Acked, Running: p.runningOf(prior.Event, cmd.CommandID)}
	} else if !errors.Is(err, ErrNotFound) {
		return Outcome{Unrecorded: err}
	}
	now := p.now()
	if cmd.GhostID != p.ghostID {
		return p.refuse(ctx, cmd, bus.FieldError(bus.CodeSemantic, "ghost_id", "command is for ghost %q, this is ghost %q", cmd.GhostID, p.ghostID))
	}
	// A command that waited its whole timeout in the Ghost is refused as such (below), even
	// when its deliver_by_ms has passed meanwhile too, as it has whenever Mirage set it to
	// the intent's deadline: the wait, not the delivery, is why it does not run.
	timeout := time.Duration(cmd.TimeoutMS) * time.Millisecond
	waitedOut := !arrived.IsZero() && now.Sub(arrived) >= timeout
	// deliver_by_ms is a time on Mirage's clock: judged there, not on this Ghost's, which
	// may be minutes off it (clock.go).
	if mnow := p.mirageAt(now); mnow.UnixMilli() > cmd.DeliverByMS && !waitedOut {
		late := mnow.Sub(time.UnixMilli(cmd.DeliverByMS)).Round(time.Millisecond)
		if !arrived.IsZero() && p.mirageAt(arrived).UnixMilli() <= cmd.DeliverByMS {
			return p.refuse(ctx, cmd, bus.Errorf(bus.CodeExpired, "command reached the ghost in time but waited %s there to start, until %s after its deliver_by_ms; not executed", now.Sub(arrived).Round(time.Millisecond), late))
		}
		return p.refuse(ctx, cmd, bus.Errorf(bus.CodeExpired, "command reached the ghost %s after its deliver_by_ms; not executed", late))
	}
	seed, op, err := p.registry.Resolve(cmd.SeedSelector, cmd.Operation, cmd.Args)
	if err != nil {
		return p.refuse(ctx, cmd, bus.AsError(err))
	}
	if waitedOut {
		// It waited its whole timeout: not run, and recorded as a refusal, so that a
		// restart answers it the same way and never runs it.
		return p.refuse(ctx, cmd, bus.Errorf(bus.CodeExecTimeout, "the command waited %s to start, its whole timeout of %s; not run", now.Sub(arrived).Round(time.Millisecond), timeout))
	}
	if predates && !op.Idempotent {
		// Recorded as a refusal, so that every later delivery, after a restart too, gets
		// the same answer and never runs it.
		out := p.refuse(ctx, cmd, bus.Errorf(bus.CodeInterrupted, "this ghost's execution store began after the command was sent (a new or deleted state directory): it may have run already under an earlier store, and %s %s is not idempotent, so it was not run: its outcome is unknown", cmd.SeedSelector, cmd.Operation))
		if out.Event != nil && !out.Duplicate {
			p.log.Warn("command sent before this ghost's execution store began: not idempotent, so not run; answered 1700 (outcome unknown)", "command_id", cmd.CommandID, "intent_id", cmd.IntentID, "seed", cmd.SeedSelector, "operation", cmd.Operation)
		}
		return out
	}

	exec := p.newExecution(cmd, now)
	exec.Idempotent = op.Idempotent
	// The delivery that takes the command's running channel is the one that claims it in
	// the store; one arriving meanwhile is a duplicate that waits on that channel. Taken
	// before Begin, so that no duplicate sees the execution claimed but not yet running.
	release, held, given := p.claim(cmd.CommandID)
	if given != nil {
		return Outcome{Event: given, Duplicate: true}
	}
	if release == nil {
		return Outcome{Duplicate: true, Running: held}
	}
	claimed, fresh, err := p.store.Begin(ctx, exec)
	if err != nil {
		release()
		return Outcome{Unrecorded: err}
	}
	if !fresh {
		release()
		return Outcome{Event: claimed.Event, Duplicate: true}
	}
	ev, took := p.execute(ctx, seed, cmd, claimed, arrived)
	// The event may be sent while its record is written: if the Ghost dies in between,
	// the restart ends the execution again under the same stable event_id, which JetStream
	// and Mirage count once.
	stored := make(chan struct{})
	go func() {
		defer close(stored)
		p.finish(context.WithoutCancel(ctx), claimed.ExecutionID, ev)
		release()
	}()
	return Outcome{Event: ev, Executed: true, Took: took, Stored: stored}
}

// claim takes the running channel of commandID for this delivery and returns its release
// (the claim ends, the channel closes); when another delivery holds it, it returns nil
// and that delivery's channel; when the Ghost gave up on the command (givenUp), it returns
// nil and that 1500 event.
func (p *Pipeline) claim(commandID string) (release func(), held <-chan struct{}, given *bus.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ev := p.givenUp[commandID]; ev != nil {
		return nil, nil, ev
	}
	if other, busy := p.running[commandID]; busy {
		return nil, other, nil
	}
	running := make(chan struct{})
	p.running[commandID] = running
	return func() {
		p.mu.Lock()
		delete(p.running, commandID)
		p.mu.Unlock()
		close(running)
	}, nil, nil
}

// givenUpOn returns the 1500 event of commandID when the Ghost gave up on it and holds
// that event in memory only (Abandon), or nil.
func (p *Pipeline) givenUpOn(commandID string) *bus.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.givenUp[commandID]
}

// Known reports whether this Ghost has seen commandID: a delivery of it holds the command
// in this process, or the execution store has its record. A store error counts as unknown:
// Run, which the command then goes through, decides.
func (p *Pipeline) Known(ctx context.Context, commandID string) bool {
	running, _, found := p.seen(ctx, commandID)
	return running || found
}

// Finished reports whether commandID's execution is over and recorded: no delivery of it
// holds the command in this process, and the execution store has its finished record.
func (p *Pipeline) Finished(ctx context.Context, commandID string) bool {
	running, rec, found := p.seen(ctx, commandID)
	return !running && found && rec.State == StateFinished
}

// seen returns whether a delivery of commandID holds it in this process, and its record
// in the execution store (found false when there is none, or it could not be read); a
// command given up on that the store could not record counts as finished. The claim is
// looked at first: an execution is recorded before its claim ends.
func (p *Pipeline) seen(ctx context.Context, commandID string) (running bool, rec Execution, found bool) {
	p.mu.Lock()
	_, running = p.running[commandID]
	given := p.givenUp[commandID]
	p.mu.Unlock()
	if given != nil {
		return false, Execution{CommandID: commandID, State: StateFinished, Event: given}, true
	}
	if running {
		return true, Execution{}, false
	}
	rec, err := p.store.GetByCommandID(ctx, commandID)
	return false, rec, err == nil
}

// runningOf returns the channel of the execution of commandID still running in this
// process, when a duplicate found it without an event.
func (p *Pipeline) runningOf(ev *bus.Event, commandID string) <-chan struct{} {
	if ev != nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running[commandID]
}

// Refuse records and returns an error event for a command that will not execute. It is
// also how a malformed command whose command_id could be read gets its one event. When
// the store cannot record it, there is no event (Outcome.Unrecorded).
//
// A refusal claims the command as an execution does (p.running), so that it is never
// recorded beside another delivery's execution of the same command_id: both deliveries
// may have missed each other in the store (a live copy in time and a replayed one past
// its deliver_by_ms), and each would emit its own terminal event.
func (p *Pipeline) refuse(ctx context.Context, cmd *bus.Command, perr *bus.Error) Outcome {
	release, held, given := p.claim(cmd.CommandID)
	if given != nil {
		return Outcome{Event: given, Duplicate: true}
	}
	if release == nil {
		return Outcome{Duplicate: true, Running: held}
	}
	defer release()
	now := p.now()
	exec := p.newExecution(cmd, now)
	exec.Refusal = perr
	claimed, fresh, err := p.store.Begin(ctx, exec)
	if err != nil {
		// Not even a refusal is answered unrecorded: a later delivery may find the
		// command runnable (its seed installed meanwhile) and run it under the same
		// event_id.
		return Outcome{Unrecorded: err}
	}
	if !fresh {
		return Outcome{Event: claimed.Event, Duplicate: true}
	}
	ev := p.refusalEvent(cmd, exec.ExecutionID, now, now, perr)
	p.finish(ctx, exec.ExecutionID, ev)
	return Outcome{Event: ev}
}

// Abandon refuses with perr (a 1500) a command the execution store never recorded, which
// the Ghost gives up on (unrecorded.go), and returns its terminal event: it is never run,
// whatever delivers it later. The refusal is claimed and recorded as any other, without
// the command's args (a record smaller than the one the store failed), so that every later
// delivery, after a restart too, is a duplicate of it. When the store cannot record even
// that, the event is kept in memory (givenUp), claimed before the claim is released: every
// later delivery in this process is a duplicate of it.
//
// While another delivery of the command holds it in this process (a live copy), Abandon
// waits for that one to release it: the copy may run the command, or fail in the store as
// the replays did and leave it for a later catch-up, which will not come, the replay
// position being past it. Only the store's record tells which.
//
// It returns nil when the command has an answer already, which stands: the store holds its
// execution (a copy got through), or the Ghost gave up on it before (two copies in
// EDGE_CMD). It returns ctx's error, and no event, when ctx ends while a copy still holds
// the command: that copy's outcome is the command's.
func (p *Pipeline) Abandon(ctx context.Context, cmd *bus.Command, perr *bus.Error) (*bus.Event, error) {
	release, held, given := p.claim(cmd.CommandID)
	for release == nil {
		if given != nil {
			return nil, nil
		}
		select {
		case <-held:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		release, held, given = p.claim(cmd.CommandID)
	}
	defer release()
	now := p.now()
	exec := p.newExecution(cmd, now)
	exec.Args, exec.Command, exec.Refusal = nil, nil, perr
	_, fresh, err := p.store.Begin(ctx, exec)
	if err == nil && !fresh {
		return nil, nil
	}
	ev := p.refusalEvent(cmd, exec.ExecutionID, now, now, perr)
	if err != nil {
		p.log.Error("execution store: the refusal of a command given up on is not recorded either; it is answered from memory until the Ghost stops", "command_id", cmd.CommandID, "err", err)
		p.mu.Lock()
		p.givenUp[cmd.CommandID] = ev
		p.mu.Unlock()
		return ev, nil
	}
	p.finish(ctx, exec.ExecutionID, ev)
	return ev, nil
}

// Refuse is the entry for commands that failed decoding: only what ProbeCommand read is
// known of them.
func (p *Pipeline) Refuse(ctx context.Context, probe bus.Probe, perr *bus.Error) Outcome {
	cmd := &bus.Command{
		Header:       bus.Header{TraceID: probe.TraceID},
		CommandID:    probe.CommandID,
		IntentID:     probe.IntentID,
		GhostID:      p.ghostID,
		SeedSelector: probe.SeedID,
		Operation:    probe.Operation,
	}
	if ev := p.givenUpOn(cmd.CommandID); ev != nil {
		return Outcome{Event: ev, Duplicate: true}
	}
	if prior, err := p.store.GetByCommandID(ctx, cmd.CommandID); err == nil {
		return Outcome{Event: prior.Event, Duplicate: true}
	}
	return p.refuse(ctx, cmd, perr)
}

func (p *Pipeline) newExecution(cmd *bus.Command, now time.Time) Execution {
	return Execution{
		ExecutionID: subjects.NewID(subjects.PrefixExecution),
		CommandID:   cmd.CommandID,
		MessageID:   cmd.MessageID,
		IntentID:    cmd.IntentID,
		TraceID:     cmd.TraceID,
		SeedID:      cmd.SeedSelector,
		Operation:   cmd.Operation,
		Args:        cmd.Args,
		StartedMS:   now.UnixMilli(),
		Command:     cmd,
	}
}

// Resume ends an execution found started, not finished, after a restart: the Ghost
// stopped between recording "started" and recording the event. An operation declared
// idempotent runs again; any other is not re-run and ends as interrupted (1700), so the
// operator sees an unknown outcome instead of a silent duplicate.
func (p *Pipeline) Resume(ctx context.Context, exec Execution) Outcome {
	cmd := exec.Command
	if cmd == nil {
		cmd = &bus.Command{Header: bus.Header{TraceID: exec.TraceID}, CommandID: exec.CommandID, IntentID: exec.IntentID, SeedSelector: exec.SeedID, Operation: exec.Operation}
	}
	if exec.Refusal != nil {
		// A refusal whose event was not recorded: nothing ran; it ends with the same
		// refusal.
		ev := p.refusalEvent(cmd, exec.ExecutionID, time.UnixMilli(exec.StartedMS), p.now(), exec.Refusal)
		p.finish(ctx, exec.ExecutionID, ev)
		return Outcome{Event: ev}
	}
	if exec.Idempotent && exec.Command != nil {
		if seed, _, err := p.registry.Resolve(cmd.SeedSelector, cmd.Operation, cmd.Args); err == nil {
			// It runs for what is left of its timeout since it first started: Mirage's
			// deadline, and how long it keeps the command's lock (linger), count from then.
			started := time.UnixMilli(exec.StartedMS)
			if timeout := time.Duration(cmd.TimeoutMS) * time.Millisecond; p.now().Sub(started) >= timeout {
				perr := bus.Errorf(bus.CodeExecTimeout, "the ghost stopped during %s %s and its timeout of %s ran out before it could run it again; not run again", cmd.SeedSelector, cmd.Operation, timeout)
				ev := p.event(cmd, exec.ExecutionID, started, p.now(), bus.Result{Status: "timed_out", ExitCode: -1}, perr)
				p.finish(ctx, exec.ExecutionID, ev)
				return Outcome{Event: ev}
			}
			p.log.Info("resuming an interrupted idempotent execution", "command_id", cmd.CommandID, "execution_id", exec.ExecutionID, "seed", cmd.SeedSelector, "operation", cmd.Operation)
			ev, took := p.execute(ctx, seed, cmd, exec, started)
			p.finish(ctx, exec.ExecutionID, ev)
			return Outcome{Event: ev, Executed: true, Took: took}
		}
	}
	now := p.now()
	perr := bus.Errorf(bus.CodeInterrupted, "the ghost stopped during %s %s, which is not idempotent, so it was not run again: its outcome is unknown", cmd.SeedSelector, cmd.Operation)
	if exec.Idempotent {
		perr = bus.Errorf(bus.CodeInterrupted, "the ghost stopped during %s %s and can no longer run it: its outcome is unknown", cmd.SeedSelector, cmd.Operation)
	}
	p.log.Warn("interrupted execution ends with an unknown outcome", "command_id", cmd.CommandID, "execution_id", exec.ExecutionID)
	ev := p.event(cmd, exec.ExecutionID, time.UnixMilli(exec.StartedMS), now, bus.Result{Status: "interrupted", ExitCode: -1}, perr)
	p.finish(ctx, exec.ExecutionID, ev)
	return Outcome{Event: ev}
}

// refusalEvent is the terminal event of a refused command: not run, exit code -1. One not
// run because it may have run already (1700) is "interrupted", as the other 1700s.
func (p *Pipeline) refusalEvent(cmd *bus.Command, executionID string, started, finished time.Time, perr *bus.Error) *bus.Event {
	status := "refused"
	if perr.Code == bus.CodeInterrupted {
		status = "interrupted"
	}
	return p.event(cmd, executionID, started, finished, bus.Result{Status: status, ExitCode: -1}, perr)
}

func (p *Pipeline) finish(ctx context.Context, executionID string, ev *bus.Event) {
	if err := p.store.Finish(ctx, executionID, ev); err != nil {
		p.log.Error("execution store: recording the terminal event failed", "component", "ghost", "command_id", ev.CommandID, "execution_id", executionID, "err", err)
	}
}

// execute runs the seed under the command's timeout, less what it waited since it arrived
// (zero: nothing), and normalizes its seed.result; it returns the event and how long the
// seed ran (monotonic).
func (p *Pipeline) execute(ctx context.Context, seed Seed, cmd *bus.Command, exec Execution, arrived time.Time) (*bus.Event, time.Duration) {
	started := time.UnixMilli(exec.StartedMS)
	timeout := time.Duration(cmd.TimeoutMS) * time.Millisecond
	var waited time.Duration
	if !arrived.IsZero() {
		waited = max(p.now().Sub(arrived), 0)
	}
	left := max(timeout-waited, time.Millisecond) // RunArrived refused one with nothing left
	req := &bus.SeedExecute{
		Header:      bus.NewHeader(bus.TypeSeedExecute, cmd.TraceID, started),
		ExecutionID: exec.ExecutionID,
		CommandID:   cmd.CommandID,
		SeedID:      cmd.SeedSelector,
		Operation:   cmd.Operation,
		Args:        cmd.Args,
		TimeoutMS:   left.Milliseconds(),
	}
	began := time.Now() // the run's duration: monotonic, whatever p.now's wall clock does
	res, err := callSeed(ctx, seed, req, left)
	res = bus.NormalizeResult(res)
	took := time.Since(began)
	finished := p.now()
	if finished.Before(started) {
		// The clock was stepped back during the run: an event never ends before it began.
		finished = started
	}
	var perr *bus.Error
	switch {
	case err == nil:
		if res.Status == "" {
			res.Status = "ok"
		}
	case errors.Is(err, errExecTimeout):
		perr = bus.Errorf(bus.CodeExecTimeout, "execution exceeded its timeout of %s", timeout)
		if waited >= 10*time.Millisecond {
			perr.Message += fmt.Sprintf(" (%s of it spent waiting to start)", waited.Round(time.Millisecond))
		}
		res.Status, res.ExitCode = "timed_out", -1
	case ctx.Err() != nil:
		perr = bus.Errorf(bus.CodeInterrupted, "the ghost stopped during the execution; its outcome is unknown")
		res.Status, res.ExitCode = "interrupted", -1
	default:
		perr = bus.AsError(err)
		if perr.Code == bus.CodeInternal {
			perr = bus.Errorf(bus.CodeRuntime, "%s %s failed: %v", cmd.SeedSelector, cmd.Operation, err)
		}
		if res.Status == "" || res.Status == "ok" {
			res.Status = "failed"
		}
		if res.ExitCode == 0 {
			res.ExitCode = 1
		}
	}
	return p.event(cmd, exec.ExecutionID, started, finished, res, perr), took
}

var errExecTimeout = errors.New("execution timeout")

// callSeed runs seed.Execute bounded by timeout. A seed that ignores its context is not
// waited for past the deadline: its late answer is dropped.
func callSeed(ctx context.Context, seed Seed, req *bus.SeedExecute, timeout time.Duration) (res bus.Result, err error) {
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, errExecTimeout)
	defer cancel()
	type answer struct {
		res bus.Result
		err error
	}
	done := make(chan answer, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- answer{bus.Result{Status: "failed", ExitCode: 1}, fmt.Errorf("seed panicked: %v", r)}
			}
		}()
		r, e := seed.Execute(ctx, req)
		done <- answer{r, e}
	}()
	select {
	case a := <-done:
		if a.err != nil && errors.Is(context.Cause(ctx), errExecTimeout) {
			return a.res, errExecTimeout
		}
		return a.res, a.err
	case <-ctx.Done():
		if errors.Is(context.Cause(ctx), errExecTimeout) {
			return bus.Result{}, errExecTimeout
		}
		return bus.Result{}, ctx.Err()
	}
}

func (p *Pipeline) event(cmd *bus.Command, executionID string, started, finished time.Time, res bus.Result, perr *bus.Error) *bus.Event {
	ev := &bus.Event{
		Header:      bus.NewHeader(bus.TypeEvent, cmd.TraceID, finished),
		EventID:     bus.EventID(p.ghostID, cmd.CommandID),
		CommandID:   cmd.CommandID,
		IntentID:    cmd.IntentID,
		ExecutionID: executionID,
		GhostID:     p.ghostID,
		SeedID:      cmd.SeedSelector,
		Operation:   cmd.Operation,
		Outcome:     bus.OutcomeSuccess,
		Result:      res,
		StartedMS:   started.UnixMilli(),
		FinishedMS:  finished.UnixMilli(),
	}
	if perr != nil {
		ev.Outcome = bus.OutcomeError
		ev.Error = perr
		if msg, cut := bus.Cut(perr.Message, maxErrorMessage); cut {
			// A message quoting hostile input could take the event past 1 MiB, and
			// an event that cannot be encoded is never sent.
			capped := *perr
			capped.Message = msg + " …(cut)"
			ev.Error = &capped
		}
	}
	return ev
}

// maxErrorMessage caps the error message of an event, in bytes.
const maxErrorMessage = 4096

// Reject builds the error event of a command refused for security (1800): unsigned,
// untrusted, altered or stale. Nothing is recorded, so a forgery cannot claim the
// command_id of a genuine command, and its event_id is derived from the bytes received,
// so it cannot shadow the genuine command's event either.
func (p *Pipeline) Reject(probe bus.Probe, data []byte, perr *bus.Error) *bus.Event {
	cmd := &bus.Command{
		Header:       bus.Header{TraceID: probe.TraceID},
		CommandID:    probe.CommandID,
		IntentID:     probe.IntentID,
		SeedSelector: probe.SeedID,
		Operation:    probe.Operation,
	}
	if cmd.TraceID == "" {
		cmd.TraceID = subjects.NewTraceID()
	}
	now := p.now()
	ev := p.refusalEvent(cmd, subjects.NewID(subjects.PrefixExecution), now, now, perr)
	ev.EventID = bus.RefusalEventID(p.ghostID, probe.CommandID, data)
	return ev
}
