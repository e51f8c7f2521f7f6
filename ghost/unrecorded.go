package ghost

import (
	"errors"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
)

// Commands the execution store never records. A command the store cannot record is left
// for a later catch-up (handle returns errNotRecorded), and the replay position stays
// before it: a store that recovers (a disk freed) then runs it. A store that keeps failing
// one command (a damaged record under its command_id) would hold the position there for
// good, every catch-up reading it and stopping at it. So a replay gives up on a command the
// store has failed at least maxUnrecordedAttempts times over unrecordedPatience: the
// position moves past it and, once the store has saved that position (it records writes,
// so the failure is likely this command's), the command is refused with a 1500 and never
// read again. The refusal claims the command as any refusal does, so it is the command's
// one terminal event whatever delivers it later: a copy that got through meanwhile keeps its
// own event and gets no 1500. A copy still being handled then is waited for: its record
// says whether it got through or the store failed it too, which leaves the command to the
// 1500 (no replay reads it again). A store that fails every write cannot save the position:
// nothing is given up, and the commands run once it recovers, as before; nor is a command
// whose failure is the whole store's (storeWide: a full disk), whatever the position.

// A replay gives up on a command the store could not record after this many replays of it
// over at least unrecordedPatience (about five catch-ups at the default interval).
const (
	maxUnrecordedAttempts = 3
	unrecordedPatience    = 5 * time.Minute
)

// unrecordedCommand is how long the execution store has failed one command's replays.
type unrecordedCommand struct {
	first    time.Time
	attempts int
}

// abandonedCommand is a command a replay gave up on, answered once the position is saved
// past it.
type abandonedCommand struct {
	data  []byte
	hdr   nats.Header
	cause error
	unrecordedCommand
}

// storeWide reports whether a store's failure is one of the whole store (a full disk, a
// quota, an I/O error), not of one command's record: such a command is never given up on.
// A small write (the replay position) may still find free pages in a full store where a
// large record cannot, so that the position being saved proves nothing then.
func storeWide(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EIO)
}

// giveUp counts a replay of commandID that the store could not record and reports whether
// the Ghost now gives up on it. Under catchMu.
func (g *Ghost) giveUp(commandID string) (unrecordedCommand, bool) {
	if g.unrecorded == nil {
		g.unrecorded = map[string]*unrecordedCommand{}
	}
	now := g.cfg.Now()
	u := g.unrecorded[commandID]
	if u == nil {
		u = &unrecordedCommand{first: now}
		g.unrecorded[commandID] = u
	}
	u.attempts++
	patience := unrecordedPatience
	if g.cfg.unrecordedPatience > 0 {
		patience = g.cfg.unrecordedPatience
	}
	return *u, u.attempts >= maxUnrecordedAttempts && now.Sub(u.first) >= patience
}

// recorded forgets the failures of commandID, which the store recorded. Under catchMu.
func (g *Ghost) recorded(commandID string) { delete(g.unrecorded, commandID) }

// answerAbandoned refuses with a 1500 each command a replay gave up on, the replay position
// being saved past them, and sends its event (abandon). Each is answered beside the delivery
// loop, since it may wait for a copy of the command handled meanwhile. Under catchMu.
func (g *Ghost) answerAbandoned(abandoned []abandonedCommand) {
	for _, a := range abandoned {
		cmd := g.commandOf(a.data, a.hdr)
		delete(g.unrecorded, cmd.CommandID)
		perr := bus.Errorf(bus.CodeInternal, "the ghost gave up on the command after %d attempts over %s: %v; it was not run and will not be",
			a.attempts, g.cfg.Now().Sub(a.first).Round(time.Second), a.cause)
		if !g.track() {
			// Stopping: answered here, before the delivery loop ends, within Close's flush
			// window (which also ends the wait for a copy), as the later ones are; what is
			// not stored by then is re-sent at the next start when its refusal was recorded.
			g.abandon(cmd, perr, a)
			continue
		}
		go func() {
			defer g.wg.Done()
			g.abandon(cmd, perr, a)
		}()
	}
}

// abandon answers cmd, given up on, with perr and sends its event (Pipeline.Abandon):
// recorded when the store takes the small refusal record (re-sent then as any event, and
// every later delivery is a duplicate of it), held in memory otherwise. A command that has
// an answer by then (a copy of it ran meanwhile) gets no other. A copy still holding the
// command is waited for until Close's flush window ends (g.send): by then the Ghost has
// interrupted its executions, so that copy is stuck in the store, and the command is left
// to it.
func (g *Ghost) abandon(cmd *bus.Command, perr *bus.Error, a abandonedCommand) {
	ev, err := g.pipeline.Abandon(g.send, cmd, perr)
	switch {
	case err != nil:
		g.log.Error("ghost stopped while a copy of a command given up on still held it: not answered; the command has whatever answer that copy gives it", "command_id", cmd.CommandID, "attempts", a.attempts, "since", a.first)
		return
	case ev == nil:
		g.log.Info("gave up on a command the execution store could not record, but it has its terminal event already (a copy of it got through meanwhile); the replay position is past it", "command_id", cmd.CommandID, "attempts", a.attempts, "since", a.first)
		return
	}
	g.log.Error("execution store never recorded the command: giving up on it; answered 1500, the replay position is past it", "command_id", cmd.CommandID, "event_id", ev.EventID, "attempts", a.attempts, "since", a.first, "err", a.cause)
	g.cfg.Metrics.outcome(Outcome{Event: ev})
	g.emit(g.send, ev)
}

// commandOf is the command in data as far as it can be read: decoded, or what
// bus.ProbeCommand finds in a malformed one.
func (g *Ghost) commandOf(data []byte, hdr nats.Header) *bus.Command {
	var cmd bus.Command
	if err := bus.Decode(data, &cmd); err == nil {
		return &cmd
	}
	probe := bus.ProbeCommand(data)
	if probe.TraceID == "" {
		probe.TraceID = bus.TraceIDFrom(hdr)
	}
	return &bus.Command{Header: bus.Header{TraceID: probe.TraceID}, CommandID: probe.CommandID, IntentID: probe.IntentID,
		GhostID: g.cfg.ID, SeedSelector: probe.SeedID, Operation: probe.Operation}
}
