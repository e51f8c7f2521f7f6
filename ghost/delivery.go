package ghost

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Delivery: live commands arrive on a core subscription to cmd.<id>; whatever the Ghost
// missed while it was stopped or disconnected is read back from EDGE_CMD by direct gets
// ("next message on cmd.<id> after sequence N"), from the last sequence it replayed, kept
// in its execution store. No JetStream consumer exists per Ghost, so a server carries
// tens of thousands of Ghosts; the execution store makes every replay duplicate-safe.

// requestCatchUp asks the delivery loop for a catch-up without blocking.
func (g *Ghost) requestCatchUp() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// deliveryLoop catches up on reconnect, on request and on a timer, and prunes the store.
func (g *Ghost) deliveryLoop() {
	defer g.wg.Done()
	connected := g.nc.StatusChanged(nats.CONNECTED)
	defer g.nc.RemoveStatusListener(connected)
	tick := time.NewTicker(g.cfg.CatchUpInterval)
	defer tick.Stop()
	prune := time.NewTicker(5 * time.Minute)
	defer prune.Stop()
	for {
		select {
		case <-g.stopping:
			return
		case <-connected:
			g.log.Info("reconnected: re-sending unacknowledged events and catching up on missed commands")
			g.resendUnacked(g.run)
			g.catchUp(g.run)
		case <-g.kick:
			g.catchUp(g.run)
		case <-tick.C:
			g.catchUp(g.run)
		case <-prune.C:
			if p, ok := g.store.(interface {
				Prune(context.Context) (int, error)
			}); ok {
				if n, err := p.Prune(g.run); err != nil {
					g.log.Warn("execution store: prune failed", "err", err)
				} else if n > 0 {
					g.log.Debug("execution store pruned", "records", n)
				}
			}
		}
	}
}

// catchUp handles every command stored on cmd.<id> after the last replayed sequence, then
// advances that sequence once each of them has been handled.
func (g *Ghost) catchUp(ctx context.Context) {
	g.catchMu.Lock()
	defer g.catchMu.Unlock()
	if !g.nc.IsConnected() {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	stream, err := g.js.Stream(sctx, bus.StreamCommands)
	cancel()
	if err != nil {
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			g.log.Warn("catch-up: command stream unavailable", "err", err)
		}
		return
	}
	seq, err := g.store.LastSeq(ctx)
	if err != nil {
		g.log.Error("execution store: reading the replay position failed", "err", err)
		return
	}
	subject := subjects.Command(g.cfg.ID)
	var handled []chan struct{}
	last := seq
	for ctx.Err() == nil {
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		raw, err := stream.GetMsg(gctx, last+1, jetstream.WithGetMsgSubject(subject))
		cancel()
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			g.log.Warn("catch-up interrupted; it resumes later", "after_seq", last, "err", err)
			break
		}
		last = raw.Sequence
		done := make(chan struct{})
		handled = append(handled, done)
		if !g.dispatch(raw.Data, raw.Header, true, done) {
			return
		}
	}
	for _, d := range handled {
		select {
		case <-d:
		case <-g.stopping:
			return // not all handled: the position stays, the next start replays them
		}
	}
	if last > seq {
		if err := g.store.SetLastSeq(ctx, last); err != nil {
			g.log.Error("execution store: saving the replay position failed", "err", err)
		}
		g.log.Info("caught up on commands from EDGE_CMD", "commands", len(handled), "last_seq", last)
	}
}

// dispatch runs handle in an execution slot; done is closed when it returns. It returns
// false when the Ghost is stopping.
func (g *Ghost) dispatch(data []byte, hdr nats.Header, replayed bool, done chan struct{}) bool {
	select {
	case g.slots <- struct{}{}:
	case <-g.stopping:
		return false
	}
	if !g.track() {
		<-g.slots
		return false
	}
	go func() {
		defer g.wg.Done()
		defer func() { <-g.slots }()
		if done != nil {
			defer close(done)
		}
		g.handle(data, hdr, replayed)
	}()
	return true
}

// resumeUnfinished ends the executions a crash left started (Pipeline.Resume).
func (g *Ghost) resumeUnfinished(ctx context.Context) {
	execs, err := g.store.Unfinished(ctx)
	if err != nil {
		g.log.Error("execution store: listing unfinished executions failed", "err", err)
		return
	}
	for _, e := range execs {
		if !g.track() {
			return
		}
		go func() {
			defer g.wg.Done()
			if out := g.pipeline.Resume(g.run, e); out.Event != nil {
				g.emit(out.Event)
			}
		}()
	}
}
