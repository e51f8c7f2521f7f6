package ghost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Delivery: live commands arrive on a core subscription to cmd.<id>. Whatever the Ghost
// missed while it was stopped or disconnected stays in EDGE_CMD: the Ghost compares the
// last sequence stored on cmd.<id> (one direct get) with the position it replayed up to
// (kept in its execution store) and, when behind, reads the gap through a pull consumer
// of its own that lives only for that replay, which Mirage creates on its request
// (replayConsumer). No standing consumer exists per Ghost, so one server carries tens of
// thousands; the execution store makes every replay duplicate-safe.

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
			g.needFull.Store(true)
			g.resendUnacked(g.run)
			g.catchUp(g.run, true)
		case <-g.kick:
			g.catchUp(g.run, true)
		case <-tick.C:
			g.catchUp(g.run, false)
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

// lastCommand returns the stream sequence and bytes of the last command stored on
// cmd.<id>, by a direct get whose subject names the Ghost's own subject (so permissions
// can confine a Ghost to it). It returns 0 when there is none or no command stream yet.
func (g *Ghost) lastCommand(ctx context.Context) (uint64, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	subject := "$JS.API.DIRECT.GET." + bus.StreamCommands + "." + subjects.Command(g.cfg.ID)
	msg, err := g.nc.RequestWithContext(ctx, subject, nil)
	if errors.Is(err, nats.ErrNoResponders) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, err
	}
	if status := msg.Header.Get("Status"); status != "" {
		if status == "404" {
			return 0, nil, nil
		}
		return 0, nil, fmt.Errorf("direct get: status %s %s", status, msg.Header.Get("Description"))
	}
	seq, err := strconv.ParseUint(msg.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return 0, nil, fmt.Errorf("direct get: no sequence header")
	}
	return seq, msg.Data, nil
}

// catchUpLag is how many commands a busy Ghost's replay position may lag behind the last
// one on cmd.<id> before a periodic catch-up replays them rather than waiting for an idle
// moment: what a restart after a crash would read again.
const catchUpLag = 4096

// catchUp handles every command stored on cmd.<id> after the replay position, then moves
// the position once each has been handled. Without full, and when the Ghost stayed
// connected since the last full catch-up, a last command it already knows means it missed
// nothing: the position moves without a replay.
func (g *Ghost) catchUp(ctx context.Context, full bool) {
	g.catchMu.Lock()
	defer g.catchMu.Unlock()
	if !g.nc.IsConnected() {
		return
	}
	last, data, err := g.lastCommand(ctx)
	if err != nil {
		g.log.Warn("catch-up: command stream unavailable", "err", err)
		g.needFull.Store(true)
		return
	}
	seq, err := g.store.LastSeq(ctx)
	if err != nil {
		g.log.Error("execution store: reading the replay position failed", "err", err)
		return
	}
	if last > 0 && last < seq {
		// Sequences behind the position: EDGE_CMD was recreated (a new store, a rebuilt
		// cluster). (0 says nothing: no command of this Ghost, or no answer.) Its commands are read from the start; the execution store turns
		// the ones already handled into duplicates.
		g.log.Warn("EDGE_CMD ends before the replay position: the stream was recreated; replaying it from the start", "last_seq", last, "position", seq)
		if seq, err = g.resetPosition(ctx); err != nil {
			return
		}
		full = true
	}
	if last <= seq {
		g.needFull.Store(false)
		return
	}
	if !full && !g.needFull.Load() {
		if len(g.slots) > 0 {
			// Executions are running: an idempotent one keeps no durable record while it
			// runs, so the position must not pass it (a crash would leave its command
			// without a terminal event). Commands arrive, and take slots, in order, so
			// while none runs every command up to the last has been handled. A busy Ghost
			// moves the position at its next idle tick, or by a replay (which waits for
			// running executions) once it lags too far.
			if last-seq < catchUpLag {
				return
			}
		} else if id := bus.ProbeCommand(data).CommandID; id != "" {
			// Known and finished: its record is written, or queued ahead of the
			// position's. One still executing is replayed instead, which waits for it.
			if e, err := g.store.GetByCommandID(ctx, id); err == nil && e.State == StateFinished {
				if err := g.store.SetLastSeq(ctx, last); err != nil {
					g.log.Error("execution store: saving the replay position failed", "err", err)
				}
				return
			}
		}
	}
	n, reached, err := g.replay(ctx, seq, last)
	if errors.Is(err, errPositionGone) {
		// The command at the position is gone: the stream was recreated, or retention
		// removed it (and everything older). Either way, reading from the start is right.
		g.log.Warn("EDGE_CMD no longer holds the command at the replay position; replaying from the start", "position", seq)
		if seq, err = g.resetPosition(ctx); err != nil {
			return
		}
		n, reached, err = g.replay(ctx, seq, last)
	}
	if reached > seq {
		if err := g.store.SetLastSeq(ctx, reached); err != nil {
			g.log.Error("execution store: saving the replay position failed", "err", err)
		}
	}
	if err != nil {
		g.needFull.Store(true)
		g.log.Warn("catch-up interrupted; it resumes later", "after_seq", reached, "err", err)
		return
	}
	g.needFull.Store(false)
	g.log.Info("caught up on commands from EDGE_CMD", "commands", n, "last_seq", reached)
}

// errPositionGone: EDGE_CMD no longer holds the command at the replay position.
var errPositionGone = errors.New("the command at the replay position is gone")

// resetPosition moves the replay position back to 0.
func (g *Ghost) resetPosition(ctx context.Context) (uint64, error) {
	if err := g.store.ResetLastSeq(ctx); err != nil {
		g.log.Error("execution store: resetting the replay position failed", "err", err)
		return 0, err
	}
	return 0, nil
}

// replay reads cmd.<id> from after seq up to last through the Ghost's own short-lived
// consumer, handles each command, and returns how many it read and the sequence up to
// which every command has been handled.
func (g *Ghost) replay(ctx context.Context, seq, last uint64) (int, uint64, error) {
	start := max(seq, 1) // the position's own command first, to check it is there
	// Removed however the replay ends, even when Mirage created the consumer but binding
	// to it failed: nothing is left behind.
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = g.js.DeleteConsumer(dctx, bus.StreamCommands, bus.GhostReplayConsumer(g.cfg.ID))
		cancel()
	}()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	cons, err := g.replayConsumer(cctx, start)
	cancel()
	if err != nil {
		return 0, seq, err
	}
	if err := checkReplayConsumer(cons.CachedInfo().Config, g.cfg.ID, start); err != nil {
		return 0, seq, err
	}
	var handled []chan struct{}
	reached := seq
	read, checked := 0, false
	pending := cons.CachedInfo().NumPending // commands on cmd.<id> from the start sequence, none fetched yet
	for pending > 0 && reached < last && ctx.Err() == nil {
		batch, err := cons.Fetch(int(min(pending, bus.ReplayBatch)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return read, seq, err
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			md, err := msg.Metadata()
			if err != nil {
				continue
			}
			if seq > 0 && read == 0 && !checked {
				// The first command on cmd.<id> from the position on must be the one at it.
				checked = true
				if md.Sequence.Stream != seq {
					return 0, seq, errPositionGone
				}
				pending--
				continue
			}
			done := make(chan struct{})
			handled = append(handled, done)
			if !g.dispatch(msg.Data(), msg.Headers(), true, done) {
				return read, seq, errors.New("ghost stopping")
			}
			read++
			pending--
			reached = md.Sequence.Stream
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
			return read, seq, err
		}
		if got == 0 {
			break
		}
	}
	for _, d := range handled {
		select {
		case <-d:
		case <-g.stopping:
			return read, seq, errors.New("ghost stopping") // the position stays: a restart replays them
		}
	}
	return read, reached, nil
}

// errNoMirageForReplay: under auth no Mirage answered the replay request, and the
// Ghost may not create its replay consumer itself.
var errNoMirageForReplay = errors.New("no Mirage answered on " + subjects.Replay + ".<id>, and under auth this Ghost may not create its replay consumer itself; the catch-up is retried later (on its timer, a reconnect, or when a Mirage announces itself)")

// replayConsumer returns the Ghost's replay consumer on cmd.<id> from sequence start.
//
// The Ghost asks Mirage to create it (mirage.replay.<id>) and binds to it: under auth a
// Ghost may not create consumers (nats-server does not check a consumer's deliver
// subject against its creator's permissions). When no Mirage is there at all (no
// responders), it depends on the server: one without authentication enforces no
// permissions (a headless Ghost, possibly with no Mirage ever), so the Ghost creates
// the same consumer itself; one that requires authentication gives Ghosts no consumer
// creation, so trying would only be refused, and the catch-up waits for a Mirage. The
// server says which in its INFO (auth_required), so the Ghost's config cannot get it
// wrong, and asking first means a Mirage, when there is one, is used in both modes.
func (g *Ghost) replayConsumer(ctx context.Context, start uint64) (jetstream.Consumer, error) {
	name := bus.GhostReplayConsumer(g.cfg.ID)
	body, err := json.Marshal(bus.ReplayRequest{StartSeq: start})
	if err != nil {
		return nil, err
	}
	msg, err := g.nc.RequestWithContext(ctx, subjects.ReplayFor(g.cfg.ID), body)
	for busy := 0; err == nil && busy < maxBusyRetries && replyIsBusy(msg.Data); busy++ {
		// Mirage serves one replay request per Ghost per second: the one just before
		// (a replay restarted from 0) may be that one.
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("Mirage was busy with this Ghost's replay requests: %w", ctx.Err())
		case <-time.After(busyRetryAfter):
		}
		msg, err = g.nc.RequestWithContext(ctx, subjects.ReplayFor(g.cfg.ID), body)
	}
	switch {
	case errors.Is(err, nats.ErrNoResponders) && g.nc.AuthRequired():
		return nil, errNoMirageForReplay
	case errors.Is(err, nats.ErrNoResponders):
		_ = g.js.DeleteConsumer(ctx, bus.StreamCommands, name) // a leftover from a crash
		return g.js.CreateConsumer(ctx, bus.StreamCommands, bus.GhostReplayConsumerConfig(g.cfg.ID, start))
	case err != nil:
		return nil, fmt.Errorf("asking Mirage for the replay consumer on %s: %w", subjects.ReplayFor(g.cfg.ID), err)
	}
	var reply bus.ReplayReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return nil, fmt.Errorf("malformed answer from Mirage on %s: %w", subjects.ReplayFor(g.cfg.ID), err)
	}
	if reply.Status != "accepted" {
		if reply.Error != nil {
			return nil, fmt.Errorf("Mirage refused the replay consumer: %w", reply.Error)
		}
		return nil, fmt.Errorf("Mirage refused the replay consumer (status %q)", reply.Status)
	}
	return g.js.Consumer(ctx, bus.StreamCommands, name)
}

// A replay request answered busy (1501) is asked again after busyRetryAfter, a few times
// within the request's own timeout.
const (
	busyRetryAfter = 1100 * time.Millisecond
	maxBusyRetries = 3
)

func replyIsBusy(data []byte) bool {
	var reply bus.ReplayReply
	return json.Unmarshal(data, &reply) == nil && reply.Error != nil && reply.Error.Code == bus.CodeBusy
}

// checkReplayConsumer checks that the consumer bound to is the one asked for: from start,
// on cmd.<id>, pull. Another (a request of this Ghost that Mirage served late, recreating
// it from an older start) is a plain, retryable error, never errPositionGone: its first
// command is not the position's, and taking that for a gone position would reset the
// position and replay everything.
func checkReplayConsumer(cfg jetstream.ConsumerConfig, id string, start uint64) error {
	if cfg.OptStartSeq != start || cfg.FilterSubject != subjects.Command(id) || cfg.DeliverSubject != "" {
		return fmt.Errorf("the replay consumer is not the one asked for (start %d on %s, pull): start %d on %q, deliver subject %q; the catch-up is retried",
			start, subjects.Command(id), cfg.OptStartSeq, cfg.FilterSubject, cfg.DeliverSubject)
	}
	return nil
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
