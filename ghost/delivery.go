package ghost

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
)

// Delivery: live commands arrive on a core subscription to cmd.<id>. Whatever the Ghost
// missed while it was stopped or disconnected stays in EDGE_CMD: the Ghost compares the
// last sequence stored on cmd.<id> with the position it replayed up to (kept in its
// execution store) and, when behind, reads the gap (commandReader: through Mirage under
// auth, from EDGE_CMD itself otherwise). No standing consumer exists per Ghost, so one
// server carries tens of thousands; the execution store makes every replay
// duplicate-safe.

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
	// Each tick lands at a random point of 0.75-1.25 intervals, so that a fleet started
	// (or sent a fan-out) together does not ask for its replays in the same instant.
	tick := time.NewTimer(jitter(g.cfg.CatchUpInterval))
	defer tick.Stop()
	prune := time.NewTicker(5 * time.Minute)
	defer prune.Stop()
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	for {
		select {
		case <-g.stopping:
			return
		case <-connected:
			g.log.Info("reconnected: re-sending unacknowledged events, catching up on missed commands, registering again")
			g.needFull.Store(true)
			// A new store whose Ghost could not look at cmd.<id> before it subscribed (no
			// NATS at its start) looks now, before this Ghost registers or re-sends an event
			// (born.go).
			g.lookBeforeTrace(g.run)
			g.registerAgain("a reconnect")
			g.requestResend(false)
			g.catchUp(g.run, true)
			settle.Reset(g.cfg.SettleCatchUp)
		case <-g.kick:
			g.catchUp(g.run, true)
			if g.settleNext.Swap(false) { // at start; an announce finds the subscription in place
				settle.Reset(g.cfg.SettleCatchUp)
			}
		case <-settle.C:
			g.catchUp(g.run, false)
		case <-tick.C:
			g.catchUp(g.run, false)
			tick.Reset(jitter(g.cfg.CatchUpInterval))
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

// jitter returns a random duration of 0.75 to 1.25 times d.
func jitter(d time.Duration) time.Duration {
	return d*3/4 + rand.N(d/2+1)
}

// settleCatchUp is how long after the catch-up that follows a new subscription (at start,
// on a reconnect) the Ghost checks cmd.<id> once more. A command published just before
// its subscription took hold has no live copy for it, and EDGE_CMD stores it
// asynchronously (with fsync on every write, an fsync later), possibly only after the
// catch-up asked where cmd.<id> ends. Without this second look it would wait for the next
// periodic catch-up, up to a minute and more, longer than many an intent's timeout. The
// look is one direct get when nothing came since; short, so that a fleet started together
// has looked before the first fan-out sent to it.
const settleCatchUp = 100 * time.Millisecond

// catchUpLag is how many commands a busy Ghost's replay position may lag behind the last
// one on cmd.<id> before a periodic catch-up replays them rather than waiting for an idle
// moment: what a restart after a crash would read again.
const catchUpLag = 4096

// catchUp handles every command stored on cmd.<id> after the replay position, then moves
// the position once each has been handled. Without full (a tick), when the Ghost stayed
// connected since the last full catch-up, a Ghost with executions running scans instead
// (unless it lags catchUpLag commands behind), and a replay leaves alone the commands
// whose execution is finished and recorded.
func (g *Ghost) catchUp(ctx context.Context, full bool) {
	g.catchMu.Lock()
	defer g.catchMu.Unlock()
	if !g.nc.IsConnected() {
		return
	}
	// A reconnect since the last full catch-up may have dropped live commands; the
	// counter says so at once, where the status event that sets needFull may still be
	// queued behind this catch-up.
	reconnects := g.nc.Stats().Reconnects
	src := g.commands()
	var last uint64
	var err error
	if g.bornKnown.Load() {
		last, err = src.last(ctx)
	} else {
		// A new store whose Ghost could not look before it subscribed (no NATS; under auth,
		// no Mirage): it looks now, before any command it covers is handled (born.go).
		last, err = g.lookForBorn(ctx, src)
	}
	if err != nil {
		g.log.Warn("catch-up interrupted; it resumes later: where cmd.<id> ends is unknown", "err", err)
		g.needFull.Store(true)
		return
	}
	if g.nc.Stats().Reconnects != reconnects {
		full = true // reconnected while asking: commands around it may have been missed
	}
	if !g.bornKnown.Load() { // the store did not record born: it is learnt again next time
		g.needFull.Store(true)
		return
	}
	seq, posID, err := g.store.Position(ctx)
	if err != nil {
		g.log.Error("execution store: reading the replay position failed", "err", err)
		return
	}
	if last > 0 && last < seq {
		// Sequences behind the position: EDGE_CMD was recreated (a new store, a rebuilt
		// cluster). (0 says nothing: no command of this Ghost, or no answer.) Its commands
		// are read from the start, none of them predating the execution store once the
		// position had reached born, and the store turns the ones already handled into
		// duplicates. A cmd.<id> that ends before born alone says nothing: a replica
		// lagging behind the one that answered the look at it reads so, and a command
		// removed by hand makes it so (resetPosition).
		g.log.Warn("EDGE_CMD ends before the replay position: the stream was recreated; replaying it from the start", "last_seq", last, "position", seq, "born", g.born)
		if seq, err = g.resetPosition(ctx); err != nil {
			return
		}
		posID, full = "", true
	}
	if last <= seq {
		g.caughtUp(reconnects)
		return
	}
	if !full && !g.needFull.Load() && g.fullAt.Load() == reconnects && len(g.slots) > 0 && last-seq < catchUpLag {
		// Executions are running, and a replay would wait for them: an idempotent one
		// keeps no durable record while it runs, so the position must not pass it (a
		// crash would leave its command without a terminal event). A busy Ghost runs what
		// it never saw and leaves the position for its next idle tick (or a replay once
		// it lags too far).
		g.scan(ctx, src, max(seq, g.scannedTo), last)
		return
	}
	g.scannedTo = 0 // the replay reads from the position: what a scan ran is below it
	// No shortcut when the last command on cmd.<id> is one the Ghost knows: that says
	// nothing about the commands before it. Live delivery is core NATS, and in a cluster
	// a route that fails drops the messages in flight across it while the Ghost's own
	// connection, and its reconnect count, stay as they were. The replay reads what came
	// since the position and runs what was never seen; what ran is a duplicate (a full
	// catch-up re-sends its event unless acknowledged) or, on a tick, left alone.
	n, fresh, reached, abandoned, err := g.replay(ctx, src, position{seq, posID}, last, full)
	if errors.Is(err, errPositionGone) {
		// The command at the position is gone: the stream was recreated, or retention
		// removed it (and everything older). Either way, reading from the start is right.
		g.log.Warn("EDGE_CMD no longer holds the command at the replay position; replaying from the start", "position", seq)
		if seq, err = g.resetPosition(ctx); err != nil {
			return
		}
		n, fresh, reached, abandoned, err = g.replay(ctx, src, position{}, last, full)
	}
	if reached.seq > seq {
		if err := g.store.SetPosition(ctx, reached.seq, reached.commandID); errors.Is(err, errPositionHeld) {
			// A finished execution's record failed and its event is not stored yet: the
			// position stays before its command until it is (BoltStore.unsaved). The
			// commands given up on are not answered: the next replay reads them again.
			g.log.Warn("replay position not moved: a finished execution's record was not written; the position waits for its event to be stored", "position", seq, "reached", reached.seq, "err", err)
		} else if err != nil {
			// The commands given up on are not answered: the next replay reads them again.
			g.log.Error("execution store: saving the replay position failed", "err", err)
		} else {
			g.answerAbandoned(abandoned)
		}
	}
	if err != nil {
		g.needFull.Store(true)
		g.log.Warn("catch-up interrupted; it resumes later", "after_seq", reached.seq, "err", err)
		return
	}
	g.caughtUp(reconnects)
	clear(g.unrecorded) // every command up to the end was handled
	// A periodic replay that found only what ran already is routine; one that found a
	// command never seen is worth an operator's eye (a live copy was lost).
	level := slog.LevelDebug
	if full || fresh > 0 {
		level = slog.LevelInfo
	}
	g.log.Log(ctx, level, "caught up on commands from EDGE_CMD", "commands", n, "never_seen", fresh, "last_seq", reached.seq)
}

// scan reads cmd.<id> after the sequence after up to last and runs, without waiting for
// them, the commands this Ghost has never seen (no delivery of it in this process, no
// record in the execution store); the position stays. It is the busy Ghost's catch-up. It
// takes only free slots, so it never holds the delivery loop behind running executions
// (live commands waiting for a slot are in EDGE_CMD too and would look never seen): when
// none is free it stops, and the next tick goes on from there (scannedTo), so a command
// that leaves no record (a refusal for security) is not sent again on every tick.
func (g *Ghost) scan(ctx context.Context, src commandReader, after, last uint64) {
	if len(g.slots) == cap(g.slots) || after >= last {
		return
	}
	started := 0
	err := src.read(ctx, after+1, last, func(sseq uint64, data []byte, hdr nats.Header) error {
		if id := commandIDOf(data); id == "" || !g.pipeline.Known(ctx, id) {
			switch g.dispatchIn(data, hdr, g.originAt(sseq), nil, false, g.arrivedAt(id, g.cfg.Now())) {
			case dispatchStopping:
				return errStopping
			case dispatchNoSlot:
				return errNoSlot
			}
			started++
		}
		g.scannedTo = sseq
		return nil
	}, func() error { return nil })
	if started > 0 {
		g.log.Info("ran commands from EDGE_CMD that never arrived live", "commands", started, "scanned_to", g.scannedTo)
	}
	if err != nil && !errors.Is(err, errNoSlot) {
		g.log.Warn("catch-up of a busy Ghost interrupted; it resumes later", "after_seq", g.scannedTo, "err", err)
	}
}

// errNoSlot: every execution slot is taken; a scan stops there.
var errNoSlot = errors.New("no free execution slot")

// caughtUp records a catch-up that read everything up to the end of cmd.<id> as it was
// after the Ghost's reconnects-th reconnect: until the next one, a busy tick may scan
// instead of replaying.
func (g *Ghost) caughtUp(reconnects uint64) {
	g.needFull.Store(false)
	g.fullAt.Store(reconnects)
}

// commandIDOf is the command_id a stored command carries in its body: the id a position
// is saved with, whichever way it moved (Mirage and the direct get name the last command
// by its body too), and a message stored by hand without a Nats-Msg-Id has one as well.
func commandIDOf(data []byte) string { return bus.CommandIDOf(data) }

// position is a replay position: a stream sequence of EDGE_CMD and the command_id of the
// command there ("" when unknown).
type position struct {
	seq       uint64
	commandID string
}

// errPositionGone: EDGE_CMD no longer holds the command at the replay position.
var errPositionGone = errors.New("the command at the replay position is gone")

// resetPosition moves the replay position back to 0, and born with it once the position
// had reached born: every command in a recreated EDGE_CMD was sent after the execution
// store began. Before that born stays (ExecutionStore.ResetLastSeq): what looks like a
// recreated stream may be a lagging replica's view of the same one, whose commands up to
// born, not all handled yet, an earlier store may have run.
func (g *Ghost) resetPosition(ctx context.Context) (uint64, error) {
	if err := g.store.ResetLastSeq(ctx); err != nil {
		g.log.Error("execution store: resetting the replay position failed", "err", err)
		return 0, err
	}
	born, ok, err := g.store.Born(ctx)
	if err != nil {
		g.log.Error("execution store: reading where it began following cmd.<id> failed", "err", err)
		return 0, err
	}
	if born > 0 {
		g.log.Warn("replay position reset before it reached born: the commands on cmd.<id> up to born still predate the execution store", "born", born)
	}
	g.born = born
	g.bornKnown.Store(ok)
	return 0, nil
}

// errStopping: the Ghost is stopping; the position stays, a restart replays.
var errStopping = errors.New("ghost stopping")

// replay reads cmd.<id> from after the position up to last through src, handles each
// command, and returns how many it read, how many of those this Ghost had never seen, the
// position up to which every command has been handled, also when it fails, and the
// commands it gave up on before that position (unrecorded.go): after each answer (or
// fetch) it waits for that answer's commands (handled in slots) and moves that far, so
// that a failure that recurs at one answer does not undo the answers before it. It never
// moves past a command not yet handled, nor past one the store could not record, unless it
// gives up on that one.
func (g *Ghost) replay(ctx context.Context, src commandReader, from position, last uint64, full bool) (read, fresh int, _ position, abandoned []abandonedCommand, _ error) {
	start := max(from.seq, 1) // the position's own command first, to check it is there
	type handling struct {
		id     string
		data   []byte
		hdr    nats.Header
		done   chan error
		before position // the position just before this command
	}
	var handled []handling
	reached, readTo := from, from
	checked := false
	held := false // a command was found running: reached stays before it
	// settle waits for the commands dispatched so far and moves reached up to them,
	// unless one of them could not be recorded (and is not given up on): the position
	// stays before it. A command another delivery is running is not waited for (it may
	// run for hours, and the catch-up would hold the delivery loop as long): the
	// position stops before it for the rest of this replay, which reads and runs the
	// commands after it all the same; a later catch-up finds it ended.
	settle := func() error {
		var failed error
		var given []abandonedCommand
		var running *position
		for _, h := range handled {
			var err error
			select {
			case err = <-h.done:
			case <-g.stopping:
				return errStopping // the position stays: a restart replays them
			}
			switch {
			case errors.Is(err, errStillRunning):
				if running == nil {
					running = &h.before
				}
			case err == nil:
				g.recorded(h.id)
			case errors.Is(err, errNotRecorded) && (held || running != nil):
				// Behind a command found running the position stays before both: this one
				// is read again by a later catch-up, and the replay goes on, running the
				// commands after it. It is not given up on here (its 1500 would not be its
				// one terminal event: the position never passes it in this replay), only
				// counted.
				if h.id != "" && !storeWide(err) {
					g.giveUp(h.id)
				}
			case errors.Is(err, errNotRecorded) && h.id != "" && !storeWide(err):
				if u, ok := g.giveUp(h.id); ok {
					given = append(given, abandonedCommand{data: h.data, hdr: h.hdr, cause: err, unrecordedCommand: u})
					continue
				}
				fallthrough
			default:
				if failed == nil {
					failed = err
				}
			}
		}
		handled = handled[:0]
		if failed != nil {
			return failed
		}
		switch {
		case held:
		case running != nil:
			reached, held = *running, true
		default:
			reached = readTo
		}
		abandoned = append(abandoned, given...)
		return nil
	}
	err := src.read(ctx, start, last, func(sseq uint64, data []byte, hdr nats.Header) error {
		if from.seq > 0 && !checked {
			// The first command on cmd.<id> from the position on must be the one at it:
			// at its sequence, and, when the position knows it, under its command_id (a
			// recreated stream may hold another command at the same sequence).
			checked = true
			if sseq != from.seq || (from.commandID != "" && commandIDOf(data) != from.commandID) {
				return errPositionGone
			}
			return nil
		}
		id := commandIDOf(data)
		if !full && id != "" && g.pipeline.Finished(ctx, id) {
			// A periodic replay reads the commands of the last minute, nearly all run
			// live already: those finished are handled, their events were sent (a
			// reconnect's full catch-up re-sends what Mirage did not acknowledge).
			read++
			readTo = position{sseq, id}
			return nil
		}
		if id == "" || !g.pipeline.Known(ctx, id) {
			fresh++
		}
		done := make(chan error, 1)
		handled = append(handled, handling{id, data, hdr, done, readTo})
		if !g.dispatch(id, data, hdr, g.originAt(sseq), done) {
			return errStopping
		}
		read++
		readTo = position{sseq, commandIDOf(data)}
		return nil
	}, settle)
	if err == nil {
		err = settle()
	}
	return read, fresh, reached, abandoned, err
}

// dispatchResult says what dispatchIn did.
type dispatchResult int

const (
	dispatched dispatchResult = iota
	dispatchNoSlot
	dispatchStopping
)

// dispatch runs handle for replayed command id, read from EDGE_CMD (from), in an execution
// slot; done, when set, receives what it returned (nil, or errNotRecorded). It returns
// false when the Ghost is stopping.
func (g *Ghost) dispatch(id string, data []byte, hdr nats.Header, from origin, done chan<- error) bool {
	return g.dispatchIn(data, hdr, from, done, true, g.arrivedAt(id, g.cfg.Now())) == dispatched
}

// dispatchIn is dispatch, waiting for a slot when wait is set and taking only a free one
// otherwise. arrived is when the command reached the Ghost: what it waits from then on, for
// a slot among others, comes off its timeout.
func (g *Ghost) dispatchIn(data []byte, hdr nats.Header, from origin, done chan<- error, wait bool, arrived time.Time) dispatchResult {
	select {
	case g.slots <- struct{}{}:
	default:
		if !wait {
			return dispatchNoSlot
		}
		if ok, n := g.saturated.Allow(); ok {
			g.log.Warn("every execution slot is busy; commands wait for one to free", "max_concurrent", cap(g.slots), "waits_since_last_warning", n)
		}
		select {
		case g.slots <- struct{}{}:
		case <-g.stopping:
			return dispatchStopping
		}
	}
	if !g.track() {
		<-g.slots
		return dispatchStopping
	}
	go func() {
		defer g.wg.Done()
		defer func() { <-g.slots }()
		err := g.handle(data, hdr, from, arrived)
		if done != nil {
			done <- err // buffered
		}
	}()
	return dispatched
}

// resumeUnfinished ends the executions a crash left started (Pipeline.Resume). They are
// listed now, while commands are held, so that the list holds none that a command starts
// later; they are ended once the start probes settle, as commands are: a Ghost that stands
// down because another instance keeps its id has re-run and answered none of them (the
// other's events carry the same event_ids). Left started, the next start ends them.
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
			if !g.settle() { // idprobe.go
				return
			}
			if out := g.pipeline.Resume(g.run, e); out.Event != nil {
				g.emit(g.send, out.Event)
			}
		}()
	}
}

// A live command takes a free execution slot from the cmd.<id> subscription's callback.
// When none is free, or commands are queued already, it is queued with the time it arrived,
// and drainIntake, started for the while, dispatches the queue in order as slots free. A
// callback that waited for a slot itself would hold every later command in the
// subscription's own queue, where nothing notes when it came, and each of those would run
// its whole timeout from when it was taken, past Mirage's deadline for it. The queue has no
// bound, as the subscription's had none: a command is never dropped. Those queued when the
// Ghost stops are stored in EDGE_CMD, and the next start's catch-up reads them.

type arrival struct {
	data []byte
	hdr  nats.Header
	at   time.Time
	id   string // command_id, "" when unreadable
}

func (g *Ghost) onCommand(msg *nats.Msg) {
	now := g.cfg.Now()
	g.intakeMu.Lock()
	if len(g.intake) == 0 && !g.draining {
		g.intakeMu.Unlock()
		if g.dispatchIn(msg.Data, msg.Header, fromLive, nil, false, now) != dispatchNoSlot {
			return // running, or the Ghost is stopping
		}
		g.intakeMu.Lock()
	}
	a := arrival{msg.Data, msg.Header, now, commandIDOf(msg.Data)}
	g.intake = append(g.intake, a)
	if a.id != "" {
		if g.queuedAt == nil {
			g.queuedAt = map[string]time.Time{}
		}
		if _, ok := g.queuedAt[a.id]; !ok {
			g.queuedAt[a.id] = now
		}
	}
	start := !g.draining
	g.draining = true
	g.intakeMu.Unlock()
	if start {
		if !g.track() {
			g.dropIntake()
			return
		}
		go g.drainIntake()
	}
}

// drainIntake dispatches the queued live commands in order, waiting for a slot for each,
// until the queue is empty.
func (g *Ghost) drainIntake() {
	defer g.wg.Done()
	for {
		g.intakeMu.Lock()
		if len(g.intake) == 0 {
			g.draining = false
			g.intakeMu.Unlock()
			return
		}
		a := g.intake[0]
		g.intake[0] = arrival{}
		g.intake = g.intake[1:]
		g.intakeMu.Unlock()
		res := g.dispatchIn(a.data, a.hdr, fromLive, nil, true, a.at)
		if res == dispatchStopping {
			g.dropIntake()
			return
		}
		// It holds a slot now: a copy coming later finds it running or recorded.
		g.intakeMu.Lock()
		if t, ok := g.queuedAt[a.id]; ok && t.Equal(a.at) {
			delete(g.queuedAt, a.id)
		}
		g.intakeMu.Unlock()
	}
}

// dropIntake empties the queue of a Ghost that stops.
func (g *Ghost) dropIntake() {
	g.intakeMu.Lock()
	g.intake, g.draining, g.queuedAt = nil, false, nil
	g.intakeMu.Unlock()
}

// arrivedAt is when command commandID reached the Ghost, for a copy of it read now from
// EDGE_CMD: when a live copy waits in the intake, the time that one arrived, so that the
// replayed copy, should it get a slot first, is not given the timeout again from now.
func (g *Ghost) arrivedAt(commandID string, now time.Time) time.Time {
	g.intakeMu.Lock()
	defer g.intakeMu.Unlock()
	if t, ok := g.queuedAt[commandID]; ok && commandID != "" && t.Before(now) {
		return t
	}
	return now
}
