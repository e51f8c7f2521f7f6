package ghost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Mirage policies: how a Ghost relates to Mirage.
const (
	// PolicyHeadless serves commands without registering; attach brings it in later.
	PolicyHeadless = "headless"
	// PolicyAuto registers whenever a Mirage is present, and again when one announces.
	PolicyAuto = "auto"
	// PolicyRequired refuses to start unless a Mirage acknowledges registration.
	PolicyRequired = "required"
)

// Config is a Ghost's runtime configuration, validated by the caller.
type Config struct {
	ID      string
	Version string
	Labels  map[string]string
	Policy  string
	// HeartbeatInterval between heartbeats (default 5 s).
	HeartbeatInterval time.Duration
	// RegisterTimeout bounds the wait for register.ack (default 10 s: a Mirage taking in a
	// whole fleet at once answers in batches); with PolicyRequired it is also how long
	// the Ghost tries before it gives up.
	RegisterTimeout time.Duration
	// MaxConcurrent bounds executions running at once (default 64).
	MaxConcurrent int
	// ShutdownGrace is how long Close lets running executions finish (default 10 s).
	ShutdownGrace time.Duration
	// ShutdownFlush is how long Close, once the grace is over, lets the events of the
	// executions it interrupted (1700) and any still being published be stored before it
	// returns (default 5 s). What is not stored by then is re-sent at the next start.
	ShutdownFlush time.Duration
	// Identity is the Ghost's nkey: it signs events. Nil sends them unsigned.
	Identity *bus.Identity
	// TrustedMirageKeys are the public nkeys whose signatures the Ghost accepts on commands.
	// When set (auth mode), unsigned, untrusted, altered or stale commands are refused
	// with a security error (1800) and nothing runs.
	TrustedMirageKeys []string
	// CommandMaxAge is the freshness window of signed commands (default 25 h, the life of
	// EDGE_CMD): older ones are refused as stale. A replayed command within it is caught
	// by the execution store.
	CommandMaxAge time.Duration
	// Metrics, when set, records Prometheus metrics.
	Metrics *Metrics
	// CatchUpInterval is how often the Ghost checks EDGE_CMD for commands it missed,
	// besides at start, on reconnect and on a Mirage announce (default 60 s).
	CatchUpInterval time.Duration
	// SettleCatchUp is how long after the catch-up at start and on each reconnect the
	// Ghost looks at cmd.<id> once more (default 100 ms; see settleCatchUp).
	SettleCatchUp time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time

	// resendPatience, unrecordedPatience, probeWait and lateAnswerWait replace the
	// constants of those names when set (tests shorten or lengthen them).
	resendPatience     time.Duration
	unrecordedPatience time.Duration
	probeWait          time.Duration
	lateAnswerWait     time.Duration
}

// patience is how long a re-send tries one event (resendPatience).
func (c *Config) patience() time.Duration {
	if c.resendPatience > 0 {
		return c.resendPatience
	}
	return resendPatience
}

func (c *Config) defaults() {
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 5 * time.Second
	}
	if c.RegisterTimeout <= 0 {
		c.RegisterTimeout = 10 * time.Second
	}
	if c.MaxConcurrent <= 0 {
		c.MaxConcurrent = 64
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 10 * time.Second
	}
	if c.ShutdownFlush <= 0 {
		c.ShutdownFlush = 5 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.CommandMaxAge <= 0 {
		c.CommandMaxAge = bus.CommandRetention
	}
	if c.CatchUpInterval <= 0 {
		c.CatchUpInterval = time.Minute
	}
	if c.SettleCatchUp <= 0 {
		c.SettleCatchUp = settleCatchUp
	}
	if c.Policy == "" {
		c.Policy = PolicyAuto
	}
	if c.Labels == nil {
		c.Labels = map[string]string{}
	}
	if c.Version == "" {
		c.Version = "dev"
	}
}

// Ghost is the runtime of one Ghost: it serves cmd.<id> until Close.
type Ghost struct {
	cfg      Config
	nc       *nats.Conn
	js       jetstream.JetStream
	registry *Registry
	store    ExecutionStore
	pipeline *Pipeline
	mclock   mirageClock // the estimate of Mirage's clock (clock.go)
	// clockOffset is this Ghost's clock minus Mirage's, in ms, at the last registration.
	clockOffset atomic.Int64
	log         *slog.Logger
	// junk bounds the warnings about messages that are not envelopes for this Ghost at all
	// (no command_id, a malformed event.ack, announce or attach request), one bound per
	// subject so that a flood on one does not hide the others: with auth another Ghost can
	// have its event's publish ack delivered to this Ghost's subjects, and to every Ghost's
	// mirage.announce, as often as it publishes.
	junk [junkSubjects]bus.RateLog
	// saturated bounds the warnings that every execution slot is taken.
	saturated bus.RateLog
	// refused and duplicates bound the lines about malformed commands refused and
	// duplicate commands answered: without auth anyone may publish on cmd.<id>.
	refused, duplicates bus.RateLog
	// shortReads bounds the warnings that a catch-up could not read cmd.<id> past a stored
	// message (replay.go's readConsumer).
	shortReads bus.RateLog
	// regMu guards the registrations that an announce, a reconnect or an attach request
	// sets off (registerAgain, onAttach): one in flight at a time, whatever the number of
	// announces and attach requests (without auth anyone may send them). regAgain: one
	// more after it; attachWaiting: the attach requests its outcome answers (nil: no
	// attach registration in flight).
	regMu         sync.Mutex
	regRunning    bool
	regAgain      string
	attachWaiting []*nats.Msg
	// answers receives Mirage's answers to replay requests (answerSubscription).
	answersMu     sync.Mutex
	answers       *bus.Answers
	answersClosed bool // by Close: no new subscription

	// run is cancelled by Close after the grace period; every goroutine below watches it.
	run    context.Context
	cancel context.CancelFunc
	// send bounds the publishing of events (emit). It outlives run by the flush window:
	// the events of the executions that Close interrupts are stored before it returns,
	// not left for a next start that a decommissioned Ghost never has.
	send       context.Context
	cancelSend context.CancelFunc
	wg         sync.WaitGroup
	slots      chan struct{}
	// intake queues live commands that found no free slot (onCommand, delivery.go);
	// draining is set while drainIntake runs. queuedAt holds, by command_id, when each
	// queued command arrived, for a replayed copy of it (arrivedAt).
	intakeMu sync.Mutex
	intake   []arrival
	draining bool
	queuedAt map[string]time.Time
	// serving is cancelled when Close begins: background loops and re-sends end,
	// executions go on. stopping is its Done channel.
	serving     context.Context
	stopServing context.CancelFunc
	stopping    <-chan struct{}

	// catchMu makes catch-ups run one at a time.
	catchMu sync.Mutex
	// scannedTo is the stream sequence up to which busy ticks' scans have run what was
	// never seen (under catchMu; 0 once a replay reads from the position again).
	scannedTo uint64
	// unrecorded holds, by command_id, the commands replays found the execution store
	// could not record (under catchMu; unrecorded.go).
	unrecorded map[string]*unrecordedCommand
	// born is where the execution store began following cmd.<id>, bornKnown false until
	// it has learnt it (both written under catchMu; bornKnown may be read without it:
	// born.go).
	born      uint64
	bornKnown atomic.Bool
	// traceLeft is set once this Ghost may have left a trace of its own on the server: a
	// registration that may have reached a Mirage (its record in KV edge_ghosts) or an
	// event (on evt.<id>). A new store's look for a trace of an earlier Ghost, taken after
	// that, could find this Ghost's own (born.go).
	traceLeft atomic.Bool
	// replayAsked is when the last replay request to Mirage ended (under catchMu).
	replayAsked time.Time
	// replayWait is how long a replay answer may pause (zero: bus.ReplayAnswerWait).
	replayWait time.Duration
	// kick asks the delivery loop for a catch-up (reconnect, announce).
	kick chan struct{}
	// needFull is set when commands may have been missed (a disconnect, a failed catch-up).
	needFull atomic.Bool
	// settleNext asks the delivery loop to look at cmd.<id> again shortly after the next
	// catch-up (settleCatchUp): set when the subscription is new.
	settleNext atomic.Bool
	// fullAt is the connection's reconnect count when the last complete catch-up began:
	// a tick takes the fast path only while it is unchanged.
	fullAt atomic.Uint64
	// emitting holds the publishes in progress, by event_id (*emission).
	emitting sync.Map
	// answering holds the event_ids a duplicate command's answer is waiting on or
	// publishing (answer): one per event, so that the copies of a command that Mirage
	// re-sends while EDGE_EVT refuses its event do not each hold an execution slot.
	answering sync.Map
	// resendKick asks resendLoop for a pass over the unacknowledged events; resendStored
	// makes the next pass include those EDGE_EVT confirmed storing (a Mirage showed
	// itself).
	resendKick   chan struct{}
	resendStored atomic.Bool
	// resendRestore makes a pass store the events EDGE_EVT confirmed again under a
	// Nats-Msg-Id of their own (a Mirage announced events_lost: restore).
	resendRestore atomic.Bool
	// claim is this instance of the id, and its probe for others (idprobe.go).
	claim *idClaim
	// link follows the connection, so that a publish or request whose connection is lost
	// ends at once rather than waiting for an answer that cannot come (link.go). It is
	// followed from start until send ends, the last publishes with it.
	link *link

	mu   sync.Mutex
	subs []*nats.Subscription
	// ackSub (ack.<id>) stays until Close has published its last events, so that their
	// event.ack still marks them.
	ackSub     *nats.Subscription
	registered bool
	closed     bool
	// lastRejection is the reason of the last registration rejected since one was
	// accepted: a rejection repeated at every try is logged once (rejected).
	lastRejection string

	// hbMu orders heartbeats (beat): hbSeq is the last one's seq, hbLeft is set once the
	// leaving one is sent.
	hbMu   sync.Mutex
	hbSeq  uint64
	hbLeft bool
}

// New builds a Ghost on an open connection. The Ghost owns neither nc nor store: the
// caller closes them after Close.
func New(nc *nats.Conn, cfg Config, registry *Registry, store ExecutionStore, log *slog.Logger) (*Ghost, error) {
	if err := subjects.ValidateGhostID(cfg.ID); err != nil {
		return nil, err
	}
	switch cfg.Policy {
	case "", PolicyHeadless, PolicyAuto, PolicyRequired:
	default:
		return nil, fmt.Errorf("ghost policy %q is not headless, auto or required", cfg.Policy)
	}
	cfg.defaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "ghost", "ghost_id", cfg.ID)
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	g := &Ghost{
		cfg: cfg, nc: nc, js: js, registry: registry, store: store, log: log,
		pipeline:   NewPipeline(cfg.ID, registry, store, cfg.Now, log),
		slots:      make(chan struct{}, cfg.MaxConcurrent),
		kick:       make(chan struct{}, 1),
		resendKick: make(chan struct{}, 1),
		claim:      newIDClaim(cfg.ID, cfg.Now()),
		link:       newLink(nc),
	}
	g.pipeline.mirageAt = g.mclock.now
	g.serving, g.stopServing = context.WithCancel(context.Background())
	g.stopping = g.serving.Done()
	g.run, g.cancel = context.WithCancel(context.Background())
	g.send, g.cancelSend = context.WithCancel(context.Background())
	return g, nil
}

// ID returns the Ghost's id.
func (g *Ghost) ID() string { return g.cfg.ID }

// Store returns the execution store, for queries (GetExecution, GetByCommandID).
func (g *Ghost) Store() ExecutionStore { return g.store }

// Registry returns the seeds the Ghost hosts.
func (g *Ghost) Registry() *Registry { return g.registry }

// Start subscribes to the Ghost's subjects and, per its policy, registers with Mirage.
// With PolicyRequired it registers first and returns an error when no Mirage
// acknowledges in time: it has then taken no command and run nothing. Before anything,
// it asks whether another live instance holds the id, and returns a *DuplicateIDError
// (ErrDuplicateID) if one does, also when it learns so while it registers (idprobe.go).
// A Start that fails leaves nothing running, not even the probe of its id, without
// waiting for Close (which stays safe to call); the Ghost is not started again.
func (g *Ghost) Start(ctx context.Context) error {
	if err := g.claimID(ctx); err != nil { // before anything can run a command
		return err // claimID undid what it began
	}
	if err := g.start(ctx); err != nil {
		return g.startFailed(err)
	}
	return nil
}

// startFailed closes a Ghost whose Start failed after claiming its id: its probe loop
// and subscriptions end with it, and it stops answering probe.<id> as the id's running
// instance. A Ghost that stood down meanwhile fails for that reason.
func (g *Ghost) startFailed(err error) error {
	_ = g.Close()
	if dup := g.Err(); dup != nil {
		<-g.claim.done // closed by standDown once its Close returned
		return dup
	}
	return err
}

// start is Start once the id is claimed.
func (g *Ghost) start(ctx context.Context) error {
	// A stand-down (idprobe.go) or a Close ends the wait for a registration at once.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(g.serving, cancel)
	defer stop()
	g.followLink()
	if g.nc.AuthRequired() || !g.nc.IsConnected() {
		// Made before the flush, so that a cluster knows it before the Ghost's first
		// request (its register, a replay): Mirage's answers come there (not yet
		// connected, the server's auth is not known: made all the same).
		if _, err := g.answerSubscription(); err != nil {
			return err
		}
	}
	if g.cfg.Policy == PolicyRequired {
		g.flush() // the answers subscription, before the requests below
	}
	// A new store learns where cmd.<id> ends before the subscription (what is stored
	// there by then may predate it), and whether the id shows a trace of an earlier Ghost
	// before this one registers: its own record is not such a trace (born.go).
	if err := g.loadBorn(ctx); err != nil {
		return fmt.Errorf("execution store: %w", err)
	}
	if g.cfg.Policy == PolicyRequired {
		// Before cmd.<id> is subscribed and anything is resumed, re-sent or replayed: a
		// Ghost that refuses to start must not have run a command first.
		if err := g.registerRequired(ctx); err != nil {
			return err
		}
	}
	if err := g.subscribe(); err != nil {
		return err
	}
	g.flush()
	g.resumeUnfinished(ctx)
	g.requestResend(false)
	g.settleNext.Store(true) // the subscription is new: look again after this catch-up
	g.requestCatchUp()
	if g.track() {
		go g.deliveryLoop()
	}
	if g.track() {
		go g.resendLoop()
	}

	switch g.cfg.Policy {
	case PolicyAuto:
		if err := g.register(ctx); err != nil && !errors.Is(err, ErrRegistrationRejected) { // a rejection is logged by register
			g.log.Info("no Mirage acknowledged registration; serving, and registering when one announces", "err", err)
		}
	case PolicyHeadless:
		g.log.Info("headless: serving commands without registering")
	}
	if g.track() {
		go g.heartbeats()
	}
	g.log.Info("ghost serving", "subject", subjects.Command(g.cfg.ID), "policy", g.cfg.Policy, "seeds", len(g.registry.Infos()))
	return nil
}

// subscribe subscribes to cmd.<id>, ack.<id>, mirage.announce and attach.<id>. When one
// fails, those made before it are removed: a failed Start leaves nothing subscribed.
func (g *Ghost) subscribe() error {
	var made []*nats.Subscription
	undo := func() {
		for _, s := range made {
			_ = s.Unsubscribe()
		}
	}
	for _, h := range []struct {
		subject string
		handler nats.MsgHandler
	}{
		{subjects.Command(g.cfg.ID), g.onCommand},
		{subjects.Ack(g.cfg.ID), g.onAck},
		{subjects.Announce, g.onAnnounce},
		{subjects.AttachGhost(g.cfg.ID), g.onAttach},
	} {
		s, err := g.nc.Subscribe(h.subject, h.handler)
		if err != nil {
			undo()
			return fmt.Errorf("subscribe %s: %w", h.subject, err)
		}
		made = append(made, s)
	}
	cmdSub, ackSub, annSub, attSub := made[0], made[1], made[2], made[3]
	// Commands queue here while every execution slot is busy; never drop them.
	_ = cmdSub.SetPendingLimits(-1, -1)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		undo()
		return errStopping
	}
	g.subs = append(g.subs, cmdSub, annSub, attSub)
	g.ackSub = ackSub
	return nil
}

// flush makes sure the server has the Ghost's subscriptions before its next request.
// Not connected (yet), there is nothing to wait for: nats.go sends them on connecting.
func (g *Ghost) flush() {
	if !g.nc.IsConnected() {
		return
	}
	if err := g.nc.FlushTimeout(5 * time.Second); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		g.log.Warn("flush after subscribing failed; continuing", "err", err)
	}
}

// Close stops intake, tells Mirage the Ghost is leaving (sayLeaving), lets running
// executions finish for the grace period, interrupts the rest (1700), lets their events
// be stored for the flush window, and stops every goroutine it started. It does not close
// the connection.
func (g *Ghost) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	subs, ackSub := g.subs, g.ackSub
	g.stopServing()
	g.mu.Unlock()
	for _, s := range subs {
		_ = s.Unsubscribe()
	}
	g.sayLeaving() // before the id is released: a successor registers after it
	g.releaseID()
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(g.cfg.ShutdownGrace):
		g.log.Warn("executions still running after the shutdown grace; interrupting them")
		g.cancel()
		select {
		case <-done:
		case <-time.After(g.cfg.ShutdownFlush):
			g.log.Warn("events still not stored after the shutdown flush; they are re-sent at next start", "flush", g.cfg.ShutdownFlush)
		}
	}
	g.answersMu.Lock()
	if g.answers != nil {
		_ = g.answers.Close()
		g.answers = nil
	}
	g.answersClosed = true
	g.answersMu.Unlock()
	g.cancel()
	g.cancelSend()
	<-done
	g.link.wait() // it ends with send
	if ackSub != nil {
		_ = ackSub.Unsubscribe()
	}
	return nil
}

// followLink starts following the connection (link), unless Close has begun: Close waits
// for it apart from the other goroutines, as it must outlive them (until send ends).
func (g *Ghost) followLink() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		g.link.follow(g.send.Done())
	}
}

// track registers a goroutine with Close; it refuses once Close has begun.
func (g *Ghost) track() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

// handle is the command intake: decode → validate → pipeline → emit. arrived is when the
// command reached the Ghost: what it waits from then on comes off its timeout (the id
// claim settling, an execution slot; Pipeline.RunArrived). from says how: commands read
// back from EDGE_CMD have their duplicates re-sent only when Mirage has not acknowledged
// the event yet, and those that predate the execution store run only when idempotent
// (born.go). It returns errNotRecorded when the execution store could not record the
// command: nothing ran, no event was sent, and a replay must not move its position past
// it.
func (g *Ghost) handle(data []byte, hdr nats.Header, from origin, arrived time.Time) error {
	replayed := from != fromLive
	if !g.settle() { // no other instance of the id found it (idprobe.go)
		return errStopping
	}
	var cmd bus.Command
	var out Outcome
	var commandID string
	if perr := g.checkSignature(data, hdr); perr != nil {
		g.reject(data, hdr, perr)
		return nil
	}
	if err := bus.Decode(data, &cmd); err != nil {
		perr := bus.AsError(err)
		probe := bus.ProbeCommand(data)
		if probe.TraceID == "" {
			probe.TraceID = bus.TraceIDFrom(hdr)
		}
		if probe.CommandID == "" {
			g.warnJunk(junkCommand, "refused a command without a readable command_id; no event can be addressed", "direction", "in", "message_type", bus.TypeCommand, "code", perr.Code, "class", perr.Class, "err", perr.Message)
			return nil
		}
		if ok, n := g.refused.Allow(); ok {
			g.log.Warn("refused a malformed command", "direction", "in", "message_type", bus.TypeCommand, "command_id", probe.CommandID, "code", perr.Code, "err", perr.Message, "refused_since_last_warning", n)
		} else {
			g.log.Debug("refused a malformed command", "direction", "in", "message_type", bus.TypeCommand, "command_id", probe.CommandID, "code", perr.Code, "err", perr.Message)
		}
		commandID = probe.CommandID
		out = g.pipeline.Refuse(g.run, probe, perr)
	} else if perr := g.checkFreshness(&cmd); perr != nil {
		g.reject(data, hdr, perr)
		return nil
	} else {
		if g.log.Enabled(context.Background(), slog.LevelDebug) { // the arguments cost an allocation each
			g.log.Debug("command received", "direction", "in", "peer", "mirage", "message_type", bus.TypeCommand, "message_id", cmd.MessageID, "trace_id", cmd.TraceID, "intent_id", cmd.IntentID, "command_id", cmd.CommandID, "seed", cmd.SeedSelector, "operation", cmd.Operation, "replayed", replayed)
		}
		commandID = cmd.CommandID
		out = g.pipeline.RunArrived(g.run, &cmd, arrived, from == fromPreStream)
	}
	if replayed {
		g.cfg.Metrics.replay()
	}
	if out.Unrecorded != nil {
		// No event: a 1500 under the command's stable event_id would be its terminal
		// event even if a later delivery, the store back, runs it. EDGE_CMD keeps the
		// command, and a catch-up brings it back; Mirage reports a timeout if the store
		// never recovers, which is the truth.
		g.log.Error("execution store failed: the command is not run and not answered; a later delivery or catch-up handles it", "command_id", commandID, "replayed", replayed, "err", out.Unrecorded)
		return fmt.Errorf("%w: command %s: %w", errNotRecorded, commandID, out.Unrecorded)
	}
	if out.Event == nil {
		// Another delivery of the command is executing. A replayed copy says so at once
		// (errStillRunning), and the replay position stays before the command: it must
		// not pass one whose execution is not yet recorded (a crash then would lose it),
		// nor one that delivery could not record, and waiting here for an execution that
		// may last hours would hold the catch-up, and the delivery loop, as long.
		if replayed && out.Running != nil {
			return errStillRunning
		}
		return nil
	}
	g.cfg.Metrics.outcome(out)
	if out.Duplicate && replayed && out.Acked {
		return nil
	}
	if out.Duplicate {
		if ok, n := g.duplicates.Allow(); ok {
			g.log.Info("duplicate command: re-sending its terminal event", "command_id", out.Event.CommandID, "event_id", out.Event.EventID, "duplicates_since_last_line", n)
		} else {
			g.log.Debug("duplicate command: re-sending its terminal event", "command_id", out.Event.CommandID, "event_id", out.Event.EventID)
		}
		g.answer(g.send, out.Event)
		return nil
	}
	g.emit(g.send, out.Event)
	out.Wait()
	return nil
}

// errNotRecorded: the execution store could not record a command, which is left for a
// later delivery.
var errNotRecorded = errors.New("the execution store could not record the command")

// errStillRunning: a replayed command's execution, by another delivery, has not ended.
var errStillRunning = errors.New("the command is still running")

// emit publishes an event to JetStream (Nats-Msg-Id = event_id), retrying with backoff
// (250 ms, ×2, 5 s max, jitter; eventAckWait per attempt, counted in the backoff when
// it ran out) until it is stored or ctx ends (g.send: Close's flush window is over). Once
// EDGE_EVT confirms it, the execution is marked stored. While the connection is down it
// waits for it; an attempt whose connection is lost ends then (its publish ack cannot
// come) and the next goes out on reconnect.
//
// One event is published by one goroutine at a time: a re-send (a reconnect, a Mirage
// that shows itself) while an earlier publish of it is still retrying leaves it to that
// one, so a flapping link does not pile up goroutines and copies of every unacknowledged
// event. A duplicate command waits for that one instead (answer).
func (g *Ghost) emit(ctx context.Context, ev *bus.Event) {
	e := &emission{done: make(chan struct{})}
	if _, busy := g.emitting.LoadOrStore(ev.EventID, e); busy {
		return
	}
	g.publish(ctx, ev, e, ev.EventID)
}

// restore publishes ev again under the Nats-Msg-Id msgID, a copy's own (restoreID), as
// emit does, except when another publish of it is in progress: that one goes under the
// event_id, which the stream may drop as a duplicate of a copy it no longer holds, so
// restore waits for it to end and then publishes its own copy.
func (g *Ghost) restore(ctx context.Context, ev *bus.Event, msgID string) {
	for {
		e := &emission{done: make(chan struct{})}
		cur, busy := g.emitting.LoadOrStore(ev.EventID, e)
		if !busy {
			g.publish(ctx, ev, e, msgID)
			return
		}
		select {
		case <-cur.(*emission).done:
		case <-ctx.Done():
			return
		}
	}
}

// emission is one publish of an event in progress (Ghost.emitting).
type emission struct {
	done   chan struct{} // closed when the publish ends, stored or given up
	stored bool          // EDGE_EVT confirmed the event; set before done is closed
}

// answer publishes the event of a duplicate command, as emit does, except when another
// publish of it is in progress: it waits for that one and, when it ends without EDGE_EVT
// confirming the event (a re-send gives an event up after resendPatience, and ends when
// the Ghost stops), publishes it itself. The duplicate is then answered as soon as the
// stream takes the event, not at a later re-send pass: for an event EDGE_EVT confirmed
// before, that pass would come only when a Mirage shows itself again.
//
// One duplicate at a time answers an event: another arriving meanwhile returns at once,
// its answer being the same event that one is getting stored, so that a command re-sent
// every few seconds while EDGE_EVT refuses writes holds one execution slot, not one per
// copy until every slot is taken.
func (g *Ghost) answer(ctx context.Context, ev *bus.Event) {
	if _, busy := g.answering.LoadOrStore(ev.EventID, struct{}{}); busy {
		return
	}
	defer g.answering.Delete(ev.EventID)
	for {
		e := &emission{done: make(chan struct{})}
		cur, busy := g.emitting.LoadOrStore(ev.EventID, e)
		if !busy {
			g.publish(ctx, ev, e, ev.EventID)
			return
		}
		other := cur.(*emission)
		select {
		case <-other.done:
			if other.stored {
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

// publish is emit's publish of ev, under the emission e it holds in emitting, with the
// Nats-Msg-Id msgID.
func (g *Ghost) publish(ctx context.Context, ev *bus.Event, e *emission, msgID string) {
	defer func() {
		g.emitting.CompareAndDelete(ev.EventID, e)
		close(e.done)
	}()
	data, err := bus.Encode(ev)
	if err != nil {
		g.log.Error("cannot encode event", "event_id", ev.EventID, "err", err)
		return
	}
	msg := bus.NewMsg(subjects.Event(g.cfg.ID), data, msgID, ev.TraceID)
	if g.cfg.Identity != nil {
		if err := bus.SignMsg(msg, g.cfg.Identity); err != nil {
			g.log.Error("cannot sign event", "event_id", ev.EventID, "err", err)
			return
		}
	}
	backoff := newBackoff()
	for attempt := 1; ; attempt++ {
		// While the connection is down, wait for it: an attempt made then would only sit
		// in nats.go's reconnect buffer.
		conn, err := g.link.await(ctx)
		if err != nil {
			g.publishGivenUp(ctx, ev)
			return
		}
		began := time.Now()
		actx, cancel := context.WithTimeout(ctx, eventAckWait)
		// An attempt whose connection is lost ends at once: its publish ack went with the
		// connection and cannot come, however long it waits.
		stop := context.AfterFunc(conn, cancel)
		g.traceLeft.Store(true) // EDGE_EVT may store it: a trace of this Ghost (born.go)
		_, err = g.js.PublishMsg(actx, msg)
		stop()
		cancel()
		if err == nil {
			e.stored = true
			g.cfg.Metrics.publishedEvent()
			g.markStored(ctx, ev)
			if g.log.Enabled(context.Background(), slog.LevelDebug) { // the arguments cost an allocation each
				g.log.Debug("event stored", "direction", "out", "peer", "mirage", "message_type", bus.TypeEvent, "message_id", ev.MessageID, "event_id", ev.EventID, "command_id", ev.CommandID, "execution_id", ev.ExecutionID, "intent_id", ev.IntentID, "trace_id", ev.TraceID, "outcome", ev.Outcome)
			}
			return
		}
		g.cfg.Metrics.retry()
		if conn.Err() != nil && ctx.Err() == nil {
			// The next attempt goes out as soon as a connection is back, under the same
			// Nats-Msg-Id: EDGE_EVT drops it if this one was stored after all. No backoff:
			// each such retry waits for a reconnect.
			g.log.Warn("event not stored yet: the connection was lost; retrying once reconnected", "event_id", ev.EventID, "attempt", attempt, "err", err)
			continue
		}
		wait := backoff.next()
		if took := time.Since(began); took >= eventAckWait {
			// An attempt that waited out its ack wait (a frozen stream leader that still
			// holds the subject's interest) has waited already: the next goes out at once,
			// to the leader elected meanwhile, and later ones after what is left of the
			// backoff. A refusal or no responders (a dead leader's routes are gone) comes
			// at once and waits the whole backoff, as before: a shorter one would reach
			// its long steps before the election ends.
			wait = max(0, wait-took)
		}
		g.log.Warn("event not stored yet; retrying", "event_id", ev.EventID, "attempt", attempt, "retry_in", wait, "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			g.publishGivenUp(ctx, ev)
			return
		}
	}
}

// eventAckWait bounds one attempt to store an event: EDGE_EVT answers within
// milliseconds, but a stream leader that froze (a stopped VM, SIGSTOP) or died while its
// server's routes still stand keeps the subject's interest and answers nothing, until
// the routes time out a minute later. Its replicas elect a new leader within seconds
// (nats-server's election timeout is 4 to 9 s); an attempt that gave up after 2 s is
// sent again to it, so the event waits at most about 2 s past the election, where
// 5 s attempts made it wait up to 5 s more (an event stored 10.8 s after the leader
// froze, its stream's new leader elected at 6.9 s). A slow answer costs a re-send of the
// same Nats-Msg-Id, which the stream drops.
const eventAckWait = 2 * time.Second

// publishGivenUp logs why publish left ev unstored when its ctx ended.
func (g *Ghost) publishGivenUp(ctx context.Context, ev *bus.Event) {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		g.log.Warn("event still not stored; it is re-sent later", "event_id", ev.EventID)
	} else {
		g.log.Warn("ghost stopping with an event not stored; it is re-sent at next start", "event_id", ev.EventID)
	}
}

// markStored records that EDGE_EVT stored ev. Only the stable event_id of a command marks
// its execution: a refusal for security has its own event_id and no record.
func (g *Ghost) markStored(ctx context.Context, ev *bus.Event) {
	if ev.EventID != bus.EventID(g.cfg.ID, ev.CommandID) {
		return
	}
	if err := g.store.MarkStored(context.WithoutCancel(ctx), ev.CommandID); err != nil && !errors.Is(err, ErrNotFound) {
		g.log.Error("execution store: marking an event stored failed", "command_id", ev.CommandID, "err", err)
	}
}

// Re-sending events Mirage has not acknowledged. EDGE_EVT's publish ack says an event is
// stored; from then on Mirage's durable consumer delivers it, to a Mirage started later
// too, and its event.ack only says Mirage counted it. So an event the stream never
// confirmed (the Ghost stopped, crashed or lost its link while publishing it) is re-sent
// at every start and reconnect, and one it confirmed only when a Mirage shows itself
// (acknowledges a registration, announces itself) without having acknowledged it: its
// event.ack was lost, or the stream lost the event (recreated, an fsync interval's loss,
// rotated out by its cap). A Ghost without a Mirage does not re-publish its stored events
// on every reconnect, where past the 15-minute duplicate window each copy would be
// stored again.

// Storing events again (restore). EDGE_EVT remembers an event's Nats-Msg-Id for its
// 15-minute duplicate window even once its byte cap or age limit removed the message: a
// re-send under the event_id then is acknowledged as a duplicate and stored nowhere. When
// Mirage announces that the stream removed events before it read them (events_lost), the
// next pass publishes each unacknowledged event EDGE_EVT confirmed under a Nats-Msg-Id of
// that pass (restoreID): stored again, read by Mirage, and counted once by its event_id
// (a copy of an event Mirage had read is a duplicate there). At most one such pass per
// restoreEvery: without authentication anyone may publish announces.
const restoreEvery = 5 * time.Second

// restoreID is the Nats-Msg-Id of eventID stored again by the pass begun at pass (unix
// milliseconds): the attempts of one pass are one message to the stream.
func restoreID(eventID, pass string) string { return eventID + ".r" + pass }

// resendWorkers bounds the events re-sent at once: a Ghost holding many unacknowledged
// events (the store keeps up to 200 000) sends them a few at a time, not in one burst.
const resendWorkers = 4

// resendPatience is how long a re-send tries one event before leaving it for the next
// pass, so that events EDGE_EVT keeps refusing do not hold the workers for good.
const resendPatience = 30 * time.Second

// requestResend asks resendLoop for a pass over the unacknowledged events, including
// those EDGE_EVT confirmed when stored is set, without blocking.
func (g *Ghost) requestResend(stored bool) {
	if stored {
		g.resendStored.Store(true)
	}
	select {
	case g.resendKick <- struct{}{}:
	default:
	}
}

// resendRetry is how soon after a pass that left events EDGE_EVT refused the next pass
// runs (each pass gives an event up to resendPatience); while passes keep leaving some,
// the wait doubles up to resendRetryMax: each pass reads every unacknowledged record of
// the store, and through a long outage of EDGE_EVT the live publishes keep trying anyway.
// A kick (a reconnect, a registration, an announce) runs a pass at once and starts over.
const (
	resendRetry    = 5 * time.Second
	resendRetryMax = 2 * time.Minute
)

// resendLoop runs one re-send pass at a time, as requestResend asks, and another
// resendRetry after a pass that left events EDGE_EVT has not confirmed (it refused
// them): a stream that takes writes again gets them without waiting for a reconnect.
func (g *Ghost) resendLoop() {
	defer g.wg.Done()
	var retry *time.Timer // made when a pass first leaves refused events
	var retryC <-chan time.Time
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	wait := resendRetry
	var lastRestore time.Time
	for {
		select {
		case <-g.stopping:
			return
		case <-g.resendKick:
			wait = resendRetry
		case <-retryC:
		}
		restore, restoreIn := false, time.Duration(0)
		if g.resendRestore.Load() {
			if restoreIn = time.Until(lastRestore.Add(restoreEvery)); restoreIn <= 0 {
				restore, lastRestore = true, time.Now()
				g.resendRestore.Store(false)
			}
		}
		left := g.resendUnacked(g.resendStored.Swap(false) || restore, restore)
		var next time.Duration
		switch {
		case left:
			next = wait
			wait = min(2*wait, resendRetryMax)
		default:
			wait = resendRetry
		}
		if restoreIn > 0 && (next == 0 || restoreIn < next) {
			next = restoreIn // a restore asked too soon after the last runs when it may
		}
		if next == 0 {
			continue
		}
		if retry == nil {
			retry = time.NewTimer(next)
			retryC = retry.C
		} else {
			retry.Reset(next)
		}
	}
}

// resendUnacked re-publishes the finished events Mirage has not acknowledged that
// EDGE_EVT never confirmed, and those it did when stored is set, resendWorkers at a time;
// with restore, those it confirmed go under a Nats-Msg-Id of this pass's own (restoreID).
// It ends early when the Ghost stops or the connection is lost (a reconnect asks again).
// It reports whether events EDGE_EVT never confirmed are left.
func (g *Ghost) resendUnacked(stored, restore bool) (left bool) {
	execs, err := g.store.Unacked(g.serving)
	if err != nil {
		g.log.Error("execution store: listing unacknowledged events failed", "err", err)
		return true
	}
	due := 0
	for _, e := range execs {
		if e.Event != nil && (!e.Stored || stored) {
			due++
		}
	}
	if due == 0 { // the usual case at a start or registration: no worker to start
		return false
	}
	type resend struct {
		ev    *bus.Event
		msgID string
	}
	queue := make(chan resend)
	var workers sync.WaitGroup
	for range min(resendWorkers, due) {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for r := range queue {
				ctx, cancel := context.WithTimeout(g.serving, g.cfg.patience())
				if r.msgID == r.ev.EventID {
					g.emit(ctx, r.ev)
				} else {
					g.restore(ctx, r.ev, r.msgID)
				}
				cancel()
			}
		}()
	}
	pass := strconv.FormatInt(time.Now().UnixMilli(), 10)
	restored := 0
	sent := 0
feed:
	for _, e := range execs {
		if e.Event == nil || (e.Stored && !stored) {
			continue
		}
		if !g.nc.IsConnected() {
			break
		}
		r := resend{ev: e.Event, msgID: e.Event.EventID}
		if restore && e.Stored {
			r.msgID = restoreID(e.Event.EventID, pass)
			restored++
		}
		select {
		case queue <- r:
			sent++
		case <-g.stopping:
			break feed
		}
	}
	close(queue)
	workers.Wait()
	if sent > 0 {
		g.log.Info("re-sent unacknowledged events", "events", sent, "unacknowledged", len(execs), "including_stored", stored, "stored_again", restored)
	}
	if sent == 0 {
		return false
	}
	after, err := g.store.Unacked(g.serving)
	if err != nil {
		return true
	}
	for _, e := range after {
		if e.Event != nil && !e.Stored {
			return true
		}
	}
	return false
}

func (g *Ghost) onAck(msg *nats.Msg) {
	var ack bus.EventAck
	if err := bus.Decode(msg.Data, &ack); err != nil {
		g.warnJunk(junkAck, "refused a malformed event.ack", "direction", "in", "message_type", bus.TypeEventAck, "err", err)
		return
	}
	if ack.GhostID != g.cfg.ID {
		g.warnJunk(junkAck, "event.ack for another ghost ignored", "message_type", bus.TypeEventAck, "ghost", ack.GhostID)
		return
	}
	if ack.EventID != bus.EventID(g.cfg.ID, ack.CommandID) {
		// The ack of an event the store does not hold under this command_id: a refusal
		// for security (its own event_id) must not mark the genuine command's event.
		g.log.Debug("event.ack for an unrecorded event", "direction", "in", "message_type", bus.TypeEventAck, "event_id", ack.EventID, "command_id", ack.CommandID, "ack_status", ack.AckStatus)
		return
	}
	if err := g.store.MarkAcked(g.send, ack.CommandID); err != nil && !errors.Is(err, ErrNotFound) {
		g.log.Error("execution store: marking an event acknowledged failed", "command_id", ack.CommandID, "err", err)
	}
	if g.log.Enabled(context.Background(), slog.LevelDebug) { // the arguments cost an allocation each
		g.log.Debug("event acknowledged", "direction", "in", "message_type", bus.TypeEventAck, "event_id", ack.EventID, "command_id", ack.CommandID, "ack_status", ack.AckStatus, "ack_code", ack.AckCode)
	}
}

// backoff is the seed's reliability contract: 250 ms initial, ×2, 5 s max, with jitter.
type backoff struct{ cur time.Duration }

func newBackoff() *backoff { return &backoff{cur: 250 * time.Millisecond} }

func (b *backoff) next() time.Duration {
	d := b.cur
	b.cur *= 2
	if b.cur > 5*time.Second {
		b.cur = 5 * time.Second
	}
	// Jitter: up to ±20%, so a fleet that lost its server does not come back in lockstep.
	j := time.Duration(time.Now().UnixNano() % int64(d/5+1))
	if time.Now().UnixNano()%2 == 0 {
		return d + j
	}
	return d - j
}

// The subjects whose refusals Ghost.junk bounds.
const (
	junkCommand = iota
	junkAck
	junkAnnounce
	junkAttach
	junkSubjects
)

// warnJunk logs a refused message on subject (junkCommand…) that is no envelope for this
// Ghost, at most once per bus.RateLogEvery with the count of those it stands for.
func (g *Ghost) warnJunk(subject int, msg string, args ...any) {
	if ok, n := g.junk[subject].Allow(); ok {
		g.log.Warn(msg, append(args, "refused_since_last_warning", n)...)
	}
}
