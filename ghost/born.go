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

// bornWait bounds the look at cmd.<id> a new store's Ghost takes before it subscribes.
const bornWait = 5 * time.Second

// loadBorn reads born from the store and, for a new store, learns it before the Ghost
// subscribes to cmd.<id> and before it registers or sends an event: where cmd.<id> ends,
// and whether the id shows a trace of an earlier Ghost (commandReader.beginning: a record
// in KV edge_ghosts, an event on evt.<id> in EDGE_EVT). With a trace, or when the trace
// could not be read, born is where cmd.<id> ends: every command stored by then predates
// the store. Without one, born is 0: the commands stored by then were sent to an id no
// Ghost ran yet (Mirage queues commands for an id enrolled or named before its machine
// starts), and run. Every command sent later reaches the Ghost live or at a sequence after
// born. The trace is read only here, before this Ghost has left one of its own.
// When the look fails (no NATS yet; under auth, no Mirage yet), the first catch-up that
// finds where cmd.<id> ends learns it as born (learnBorn), trace or not: by then this
// Ghost may have registered, and its own record cannot be told from an earlier Ghost's. A
// command waiting for a new machine is then answered 1700, and a command sent between the
// subscription and that catch-up may be found predating, its replayed copy answered 1700
// if it is handled before the live one (it is never run twice).
func (g *Ghost) loadBorn(ctx context.Context) error {
	g.catchMu.Lock()
	defer g.catchMu.Unlock()
	born, ok, err := g.store.Born(ctx)
	if err != nil {
		return err
	}
	g.born, g.bornKnown = born, ok
	if ok || !g.nc.IsConnected() {
		return nil
	}
	lctx, cancel := context.WithTimeout(ctx, bornWait)
	defer cancel()
	last, traced, err := g.commands().beginning(lctx)
	if err != nil {
		g.log.Info("new execution store: where cmd.<id> ends is unknown yet; the first catch-up learns it, and takes every command stored by then for one an earlier Ghost of this id may have run", "err", err)
		return nil
	}
	if last > 0 && !traced {
		g.log.Info("new execution store on an id with no trace of an earlier Ghost (no registry record, no event): the commands waiting on cmd.<id> were sent for this Ghost, and run", "last_seq", last)
		last = 0
	}
	g.learnBorn(ctx, last)
	return nil
}

// learnBorn records last as born in a store that has not learnt it, and reports whether
// born is known. Under catchMu.
func (g *Ghost) learnBorn(ctx context.Context, last uint64) bool {
	if g.bornKnown {
		return true
	}
	if err := g.store.SetBorn(ctx, last); err != nil {
		g.log.Error("execution store: recording where it began following cmd.<id> failed", "err", err)
		return false
	}
	g.born, g.bornKnown = last, true
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
		return false, nil // 404: none
	}
	switch msg.Header.Get(kvOperation) {
	case "DEL", "PURGE":
		return false, nil
	}
	return true, nil
}
