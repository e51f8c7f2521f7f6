package ghost

import (
	"context"
	"fmt"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Born: where this Ghost's execution store began following cmd.<id>. A store knows the
// commands it handled, not those an earlier store of the same id handled (a state
// directory deleted, a second 'miragectl up' with a data directory of its own): a replay
// from position 0 would run those again. So a new store learns, at its Ghost's first look
// at cmd.<id>, the last sequence there (born), and a command read from EDGE_CMD at or
// before it predates the store: it runs only if its operation is idempotent, any other is
// answered 1700, outcome unknown (Pipeline.RunArrived). Sequences, not clocks: the Ghost's
// clock and the server's may differ. born is 0 (nothing predates) for a store made by an
// older version, once EDGE_CMD is found recreated (resetPosition), and for a new store
// whose id shows no trace of an earlier Ghost when it looks (a new machine, whose commands
// waited in EDGE_CMD for it to start: no earlier Ghost can have run them).
//
// The look is taken before the Ghost leaves a trace of its own, at the first moment it
// can: before it subscribes, or, when it cannot then (no NATS yet; under auth, no Mirage
// answering replays yet), before it first registers (register) or re-sends events on a
// connect (deliveryLoop), or at the first catch-up that reaches cmd.<id>, whichever comes
// first. A Ghost that has left a trace by then (traceLeft: a registration a Mirage may have
// received, an event, such as that of a live command run in the instant between a connect
// and the look) does not look for one: its own cannot be told from an earlier Ghost's, and
// born is where cmd.<id> ends.

// origin is how a command reached the Ghost.
type origin uint8

const (
	fromLive      origin = iota // the cmd.<id> subscription: sent after this store began
	fromStream                  // read from EDGE_CMD after born
	fromPreStream               // read from EDGE_CMD at or before born: it predates the store
)

// originAt is the origin of a command read from EDGE_CMD at sequence seq. Under catchMu.
func (g *Ghost) originAt(seq uint64) origin {
	if seq <= g.born {
		return fromPreStream
	}
	return fromStream
}

// bornWait bounds a new store's look at cmd.<id> taken before the Ghost subscribes,
// registers or re-sends events on a connect.
const bornWait = 5 * time.Second

// lookPoll is how often lookBeforeTrace checks again whether a catch-up holding catchMu
// has learnt born.
const lookPoll = 10 * time.Millisecond

// loadBorn reads born from the store and, for a new store, learns it before the Ghost
// subscribes to cmd.<id> and before it registers or sends an event (lookForBorn). Every
// command sent later reaches the Ghost live or at a sequence after born. When the look
// fails (no NATS yet; under auth, no Mirage yet), it is taken again later, still before
// this Ghost leaves a trace of its own when it can (lookBeforeTrace, catchUp).
func (g *Ghost) loadBorn(ctx context.Context) error {
	g.catchMu.Lock()
	defer g.catchMu.Unlock()
	born, ok, err := g.store.Born(ctx)
	if err != nil {
		return err
	}
	g.born = born
	g.bornKnown.Store(ok)
	if ok {
		return nil
	}
	if !g.nc.IsConnected() {
		g.log.Info("new execution store: where cmd.<id> ends is unknown yet (not connected); it is looked at on connecting, before this Ghost registers")
		return nil
	}
	lctx, cancel := context.WithTimeout(ctx, bornWait)
	defer cancel()
	if _, err := g.lookForBorn(lctx, g.commands()); err != nil {
		g.log.Info("new execution store: where cmd.<id> ends is unknown yet; it is looked at again before this Ghost registers, and at the next catch-up", "err", err)
	}
	return nil
}

// lookBeforeTrace takes a new store's look at cmd.<id> (lookForBorn) when born is not
// known yet and this Ghost has left no trace of its own: before it registers, and on a
// connect before it registers again and re-sends events. A catch-up holding catchMu is
// either taking the look itself (born unknown, it does nothing else) or has just learnt
// born and may go on replaying for as long as the commands it runs last: it is not
// waited for, only watched until born is known. A look that fails is left to the next
// one; the caller goes on (a Ghost that cannot look still registers).
func (g *Ghost) lookBeforeTrace(ctx context.Context) {
	for !g.bornKnown.Load() && !g.traceLeft.Load() {
		if g.catchMu.TryLock() {
			if !g.bornKnown.Load() && g.nc.IsConnected() {
				lctx, cancel := context.WithTimeout(ctx, bornWait)
				if _, err := g.lookForBorn(lctx, g.commands()); err != nil {
					g.log.Info("new execution store: where cmd.<id> ends is unknown yet; it is looked at again at the next catch-up", "err", err)
				}
				cancel()
			}
			g.catchMu.Unlock()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(lookPoll):
		}
	}
}

// lookForBorn learns born for a new store and returns where cmd.<id> ends. While this
// Ghost has left no trace of its own (traceLeft), the look also reads whether the id
// shows a trace of an earlier Ghost (commandReader.beginning: a record in KV edge_ghosts,
// an event on evt.<id> in EDGE_EVT). With a trace, or when the trace could not be read,
// born is where cmd.<id> ends: every command stored by then predates the store. Without
// one, born is 0: the commands stored by then were sent to an id no Ghost ran yet (Mirage
// queues commands for an id enrolled or named before its machine starts), and run. A
// trace this Ghost leaves while the look is taken can only make it find one. Once this
// Ghost has left a trace, it does not look: born is where cmd.<id> ends, and a command
// waiting for a new machine is answered 1700; a command sent between the subscription
// and this look may be found predating, its replayed copy answered 1700 if it is handled
// before the live one (it is never run twice). Under catchMu.
func (g *Ghost) lookForBorn(ctx context.Context, src commandReader) (uint64, error) {
	if g.traceLeft.Load() {
		last, err := src.last(ctx)
		if err != nil {
			return 0, err
		}
		if last > 0 {
			g.log.Info("new execution store: this Ghost registered or sent an event before it could look for a trace of an earlier Ghost, and its own cannot be told from one; every command stored on cmd.<id> by now is taken for one an earlier Ghost of this id may have run", "last_seq", last)
		}
		g.learnBorn(ctx, last)
		return last, nil
	}
	last, traced, err := src.beginning(ctx)
	if err != nil {
		return 0, err
	}
	born := last
	if last > 0 && !traced {
		g.log.Info("new execution store on an id with no trace of an earlier Ghost (no registry record, no event): the commands waiting on cmd.<id> were sent for this Ghost, and run", "last_seq", last)
		born = 0
	}
	g.learnBorn(ctx, born)
	return last, nil
}

// learnBorn records last as born in a store that has not learnt it, and reports whether
// born is known. Under catchMu.
func (g *Ghost) learnBorn(ctx context.Context, last uint64) bool {
	if g.bornKnown.Load() {
		return true
	}
	if err := g.store.SetBorn(ctx, last); err != nil {
		g.log.Error("execution store: recording where it began following cmd.<id> failed", "err", err)
		return false
	}
	g.born = last
	g.bornKnown.Store(true)
	if last > 0 {
		g.log.Info("new execution store: the commands on cmd.<id> up to born were sent before it began; those still open and not idempotent are answered 1700 (outcome unknown), not run", "born", last)
	}
	return true
}

// kvOperation is the header of a KV delete marker (DEL, PURGE).
const kvOperation = "KV-Operation"

func (r mirageReader) beginning(ctx context.Context) (uint64, bool, error) {
	reply, err := r.g.askReplay(ctx, bus.ReplayRequest{StartSeq: 1, History: true}, nil)
	if err != nil {
		return 0, false, err
	}
	if reply.Traced == nil { // a Mirage of an older version: it did not look
		if reply.LastSeq > 0 {
			r.g.log.Info("new execution store: Mirage did not say whether this id shows a trace of an earlier Ghost (an older version); taken as one", "last_seq", reply.LastSeq)
		}
		return reply.LastSeq, true, nil
	}
	return reply.LastSeq, *reply.Traced, nil
}

func (r streamReader) beginning(ctx context.Context) (uint64, bool, error) {
	last, err := r.last(ctx)
	if err != nil || last == 0 {
		return last, false, err // nothing on cmd.<id>: nothing can predate the store
	}
	return last, r.traced(ctx), nil
}

// traced reads the trace of an earlier Ghost of this id itself, one direct get each: its
// registry record (the last message on $KV.edge_ghosts.<id>; a delete marker, left by a
// revocation, is none) and its last event on evt.<id>. A read that fails counts as a
// trace.
func (r streamReader) traced(ctx context.Context) bool {
	id := r.g.cfg.ID
	for _, look := range []struct {
		what, stream, subject string
	}{
		{"registry record", "KV_" + bus.BucketGhosts, "$KV." + bus.BucketGhosts + "." + id},
		{"last event", bus.StreamEvents, subjects.Event(id)},
	} {
		found, err := r.stored(ctx, look.stream, look.subject)
		if err != nil {
			r.g.log.Warn("new execution store: this id's "+look.what+" could not be read; taken as a trace of an earlier Ghost (the commands waiting on cmd.<id> may have run under it)", "subject", look.subject, "err", err)
			return true
		}
		if found {
			return true
		}
	}
	return false
}

// stored reports whether stream holds a message on subject (a KV delete marker is none),
// by a direct get of the last one. A stream that does not exist is an error: it is made
// with EDGE_CMD, which holds commands for this id.
func (r streamReader) stored(ctx context.Context, stream, subject string) (bool, error) {
	msg, err := r.g.directGet(ctx, "$JS.API.DIRECT.GET."+stream+"."+subject, nil)
	switch {
	case err != nil:
		return false, err
	case noStream(msg):
		return false, fmt.Errorf("direct get on %s: no stream %s", subject, stream)
	case unreadable(msg):
		return true, nil // a message whose headers nats.go could not read
	}
	if err := directGetStatus(msg); err != nil {
		return false, err
	}
	if directGetSeq(msg) == "" {
		// 404. On a cluster any replica may answer a direct get, one behind the stream's
		// leader too, which lacks a record or event stored a moment ago: the leader says
		// whether there is none (the commands waiting would otherwise run again).
		seq, h, err := r.lastStored(ctx, stream, subject)
		if err != nil || seq == 0 {
			return false, err
		}
		msg.Header = h
	}
	switch msg.Header.Get(kvOperation) {
	case "DEL", "PURGE":
		return false, nil
	}
	return true, nil
}
