package ghost

import (
	"context"
	"time"
)

// Born: where this Ghost's execution store began following cmd.<id>. A store knows the
// commands it handled, not those an earlier store of the same id handled (a state
// directory deleted, a second 'miragectl up' with a data directory of its own): a replay
// from position 0 would run those again. So a new store learns, at its Ghost's first look
// at cmd.<id>, the last sequence there (born), and a command read from EDGE_CMD at or
// before it predates the store: it runs only if its operation is idempotent, any other is
// answered 1700, outcome unknown (Pipeline.RunArrived). Sequences, not clocks: the Ghost's
// clock and the server's may differ. born is 0 (nothing predates) for a store made by an
// older version, and once EDGE_CMD is found recreated (resetPosition).

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
// subscribes to cmd.<id>: every command stored by then predates the store, and every one
// sent later reaches it live or at a sequence after born. When the look fails (no NATS
// yet; under auth, no Mirage yet), the first catch-up that finds where cmd.<id> ends
// learns it (learnBorn); a command sent between the subscription and that catch-up may
// then be found predating, its replayed copy answered 1700 if it is handled before the
// live one (it is never run twice).
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
	last, err := g.commands().last(lctx)
	if err != nil {
		g.log.Info("new execution store: where cmd.<id> ends is unknown yet; the first catch-up learns it", "err", err)
		return nil
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
