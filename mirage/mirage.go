package mirage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Config is Mirage's runtime configuration.
type Config struct {
	// ID names this Mirage in announces and logs (default "mirage").
	ID string
	// Replicas of streams and KV buckets (1 embedded, 3 on a cluster).
	Replicas int
	// EventsMaxBytes caps EDGE_EVT (bus.AssetConfig: 0 the default, -1 no cap).
	EventsMaxBytes int64
	// ReportInterval coalesces in_progress reports (default 250 ms).
	ReportInterval time.Duration
	// PresenceFlush is how often heartbeat times are written to KV (default
	// DefaultPresenceFlush).
	PresenceFlush time.Duration
	// StopBudget bounds how long Close spends storing the reports left when it stops, the
	// commands not confirmed stored (lastDispatch), and writing presence (default 10 s): with the store not answering, each report would
	// wait 5 s, and the reports in flight 10 s for their acks. What is not stored by then
	// is not lost: an intent without its terminal report is taken up and reported by the
	// next Mirage.
	StopBudget time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Identity is Mirage's nkey: it signs every command. Nil sends them unsigned.
	Identity *bus.Identity
	// RequireSignedEvents refuses events not signed by the key enrolled for their ghost_id.
	RequireSignedEvents bool
	// Metrics, when set, records Prometheus metrics.
	Metrics *Metrics
	// OnFleetChange is called with the enrolled Ghosts (id → public key) after every
	// enrollment change, to apply them to the server Mirage embeds.
	OnFleetChange func(enrolled map[string]string) error
	// OperatorKey, when set, is recorded in edge_fleet at Start (RecordOperatorKey).
	OperatorKey string
	// EnrollAtStart enrolls these Ghosts (id → public key) at Start, before Mirage takes
	// issues: 'up --auth' enrolls its local Ghost so, and an issue to it made as soon as
	// Mirage answers is not refused as not enrolled.
	EnrollAtStart map[string]string
	// ProbeWait bounds the wait for an answer on mirage.probe at Start when something
	// listens there but does not answer (singleton.go); default DefaultProbeWait.
	ProbeWait time.Duration
	// ProbeEvery is how often a running Mirage asks mirage.probe whether another one
	// serves the deployment; default DefaultProbeEvery.
	ProbeEvery time.Duration
	// ServerClockEvery is how often a running Mirage asks the NATS server's clock again
	// (serverclock.go); default DefaultServerClockEvery.
	ServerClockEvery time.Duration
}

func (c *Config) defaults() {
	if c.ID == "" {
		c.ID = "mirage"
	}
	if c.ProbeWait <= 0 {
		c.ProbeWait = DefaultProbeWait
	}
	if c.ProbeEvery <= 0 {
		c.ProbeEvery = DefaultProbeEvery
	}
	if c.ServerClockEvery <= 0 {
		c.ServerClockEvery = DefaultServerClockEvery
	}
	if c.ReportInterval <= 0 {
		c.ReportInterval = 250 * time.Millisecond
	}
	if c.PresenceFlush <= 0 {
		c.PresenceFlush = DefaultPresenceFlush
	}
	if c.StopBudget <= 0 {
		c.StopBudget = 10 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// EventsConsumer is the durable consumer through which Mirage reads EDGE_EVT.
const EventsConsumer = "mirage"

// Mirage is the orchestration runtime.
type Mirage struct {
	cfg      Config
	nc       *nats.Conn
	js       jetstream.JetStream
	cmds     jetstream.Stream // EDGE_CMD
	evts     jetstream.Stream // EDGE_EVT, asked its last sequence at intents' cutoffs (expiry.go)
	intents  jetstream.KeyValue
	fleet    *Fleet
	enrolled *enrollments
	log      *slog.Logger

	stop chan struct{}
	wg   sync.WaitGroup
	// spawnMu and closing let spawn refuse work once Close waits on wg: a subscription
	// handler or timer already running when Close began must not add to wg meanwhile.
	spawnMu sync.Mutex
	closing bool
	subs    []*nats.Subscription
	// cc is the events consumer's delivery, started again by superviseEvents when it
	// stops while Mirage runs; ccStopped, set by Close, ends that. Both under ccMu.
	ccMu       sync.Mutex
	cc         jetstream.ConsumeContext
	ccStopped  bool
	sweep      chan struct{} // superviseEvents sweeps EDGE_EVT (unreadable.go)
	unreadable bus.RateLog   // the stored messages passed over or deleted

	// running is cancelled when stop is closed: JetStream calls of background work end
	// with it, so that Close does not wait for their timeouts.
	running     context.Context
	stopRunning context.CancelFunc

	// clock is cfg.Now's: asked again every cfg.ServerClockEvery (serverclock.go).
	clock *serverClock

	mu      sync.Mutex
	live    map[string]*liveIntent
	locks   locks
	lingers *lingers // locks kept for commands that may still run (linger.go)
	reports chan *bus.Report
	// stored holds the reports in flight, in the order they were published, for the one
	// goroutine that waits for their stream acks (storedWaiter); publisherDone is closed
	// when the publisher returns, after which nothing more is queued.
	stored        reportQueue
	publisherDone chan struct{}
	issues        chan struct{}            // slots of issues handled at once
	replays       chan struct{}            // slots of replay requests handled at once
	claimed       map[string]chan struct{} // fresh intent ids being accepted, closed when followed
	// unrecorded holds the fresh intents whose record the store has not confirmed: their
	// ids stay taken, in memory, until it does (claimIntent).
	unrecorded    map[string]*IntentRecord
	publisherGone bool          // the report publisher has returned (Close): store reports directly
	known         *knownIntents // the ids edge_intents may hold (freshIntent)
	// loss follows the events consumer's first deliveries for events EDGE_EVT removed
	// unread (evtloss.go).
	loss eventLoss
	// room says whether the store was last seen refusing writes for want of room
	// (storeroom.go): intake then stores a fresh intent's record first.
	room storeRoom
	// tookUp, set under mu by tests, is called by takeUp once the intent is live (mu
	// released) and before it is rebuilt.
	tookUp func(*liveIntent)

	// ending holds the intents that ended (intent → terminal phase) until their terminal
	// report is stored: a late event in between is told the intent ended (1900). Its own
	// lock, since reports are stored under m.mu when Mirage stops.
	endMu  sync.Mutex
	ending map[string]string

	// read is how far the events consumer has read EDGE_EVT; markAt and markSeq, under
	// markMu, the last answer of eventsMark; waits, how long an expiry waits for read
	// (expiry.go).
	read    *readMark
	markMu  sync.Mutex
	markAt  time.Time
	markSeq uint64
	waits   expiryWaits

	replayGate *ghostGate  // one replay request per Ghost at a time, bus.ReplayEvery apart
	guard      *replyGuard // where a Ghost's request may be answered
	// replayRefusals bounds the warnings about malformed replay requests.
	replayRefusals bus.RateLog

	seedGate      *ghostGate    // one seed read request per Ghost at a time, bus.SeedEvery after the last ended
	seedReads     chan struct{} // slots of seed reads served at once
	lostReports   bus.RateLog   // bounds the warnings about in_progress reports not stored
	attaches      chan struct{} // attach requests relayed at once
	seedRefusals  bus.RateLog   // bounds the warnings about malformed seed read requests
	issueRefusals bus.RateLog   // bounds the warnings about rejected issues
	// eventRefusals bound the log lines about refused and rejected events, one per kind.
	eventRefusalsMu sync.Mutex
	eventRefusals   map[string]*bus.RateLog
	// budget ends when Close has spent its StopBudget (budgetSpent, armed by Close):
	// every wait on the store for reports and presence ends with it. unstoredAtStop counts
	// the reports given up on at stop.
	budget         context.Context
	budgetSpent    context.CancelFunc
	unstoredAtStop atomic.Int64
	// claim is this Mirage's side of mirage.probe: one Mirage per deployment
	// (singleton.go).
	claim *deployClaim
	// closeOnce runs close once, however many callers (the user, a stand-down) ask;
	// startMu is held by Start from serve on: a stand-down's close waits for it.
	closeOnce sync.Once
	startMu   sync.Mutex
	// served, set by tests before Start, is called by Start once it serves, before it
	// subscribes.
	served func()
}

// New provisions the JetStream assets (idempotently) and returns a Mirage ready to Start.
// Mirage does not own nc: the caller closes it after Close.
func New(ctx context.Context, nc *nats.Conn, cfg Config, log *slog.Logger) (*Mirage, error) {
	cfg.defaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "mirage")
	// A fan-out to thousands of Ghosts keeps that many command publishes in flight. An
	// ack that never comes (lost in a leader change) fails its publish after a while
	// instead of holding one of those places until the next reconnect: every waiter gives
	// up sooner (at most 10 s) and publishes again.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1<<16), jetstream.WithPublishAsyncTimeout(30*time.Second))
	if err != nil {
		return nil, err
	}
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{Replicas: cfg.Replicas, EventsMaxBytes: cfg.EventsMaxBytes}); err != nil {
		return nil, err
	}
	// Ghosts are confined when the server requires authentication (they then make their
	// requests through Mirage: replay, seed reads), or when Mirage runs with auth's keys;
	// Mirage may log in by certificate or password and hold no signing key.
	confined := cfg.Identity != nil || cfg.RequireSignedEvents || nc.AuthRequired()
	if confined { // keep it so
		if err := bus.CheckGhostRequestsNotStored(ctx, js); err != nil {
			return nil, err
		}
	}
	cmds, err := js.Stream(ctx, bus.StreamCommands)
	if err != nil {
		return nil, err
	}
	evts, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		return nil, err
	}
	// Every time Mirage stamps is on the server's clock when its own is off it
	// (serverclock.go).
	clock := learnServerClock(ctx, evts, cfg.Now, log)
	cfg.Now = clock.now
	intents, err := js.KeyValue(ctx, bus.BucketIntents)
	if err != nil {
		return nil, err
	}
	// The bucket's own max age (an operator may have changed it): the known-ids filter
	// forgets ids as the bucket forgets their records (read again before each rotation:
	// refreshKnown).
	intentsStatus, err := intents.Status(ctx)
	if err != nil {
		return nil, err
	}
	ghosts, err := js.KeyValue(ctx, bus.BucketGhosts)
	if err != nil {
		return nil, err
	}
	fleetKV, err := js.KeyValue(ctx, bus.BucketFleet)
	if err != nil {
		return nil, err
	}
	stop := make(chan struct{})
	// Confined Ghosts have their per-Ghost permissions and inboxes
	// (natsd.GhostPermissions), so their requests are answered only there (replyGuard).
	guard := newReplyGuard(confined, log)
	m := &Mirage{
		cfg: cfg, nc: nc, js: js, cmds: cmds, evts: evts, intents: intents, log: log,
		clock:         clock,
		fleet:         newFleet(js, ghosts, stop, cfg.Now, guard, log),
		guard:         guard,
		replayGate:    newGhostGate(bus.ReplayEvery, false),
		enrolled:      newEnrollments(js, fleetKV),
		stop:          stop,
		live:          map[string]*liveIntent{},
		claimed:       map[string]chan struct{}{},
		unrecorded:    map[string]*IntentRecord{},
		ending:        map[string]string{},
		read:          newReadMark(),
		waits:         expiryWaits{catchUp: catchUpWait, lost: lostDeliveryWait},
		known:         newKnownIntents(knownPeriod(intentsStatus.TTL()), cfg.Now()),
		locks:         locks{},
		lingers:       newLingers(),
		reports:       make(chan *bus.Report, 4096),
		sweep:         make(chan struct{}, 1),
		eventRefusals: map[string]*bus.RateLog{},
		issues:        make(chan struct{}, 64),
		replays:       make(chan struct{}, 16),
		seedGate:      newGhostGate(bus.SeedEvery, true),
		seedReads:     make(chan struct{}, seedReadSlots),
		attaches:      make(chan struct{}, 16),
		claim:         newDeployClaim(cfg.ID, cfg.Now()),
	}
	if cfg.RequireSignedEvents {
		// Enrollment is enforced: only an enrolled id registers (onRegister).
		m.fleet.enrolled = func(id string) bool { _, ok := m.enrolled.key(id); return ok }
	}
	m.stored.ready = make(chan struct{}, 1)
	m.publisherDone = make(chan struct{})
	m.running, m.stopRunning = context.WithCancel(context.Background())
	m.budget, m.budgetSpent = context.WithCancel(context.Background())
	return m, nil
}

// Fleet returns the registry of Ghosts.
func (m *Mirage) Fleet() *Fleet { return m.fleet }

// Start makes sure no other Mirage serves the deployment (an *AnotherMirageError when one
// does: singleton.go), loads the fleet and the open intents, subscribes, starts reading
// events, and announces itself so that Ghosts register.
func (m *Mirage) Start(ctx context.Context) error {
	if err := m.claimDeployment(ctx); err != nil {
		return err
	}
	if err := m.fleet.load(ctx); err != nil {
		return fmt.Errorf("load fleet registry: %w", err)
	}
	if err := m.enrolled.load(ctx, m.log); err != nil {
		return fmt.Errorf("load enrollments: %w", err)
	}
	if m.cfg.Identity != nil {
		if err := m.enrolled.put(ctx, FleetKeyMirage, Enrollment{GhostID: FleetKeyMirage, PublicKey: m.cfg.Identity.PublicKey(), EnrolledMS: m.cfg.Now().UnixMilli()}); err != nil {
			return fmt.Errorf("record Mirage's key: %w", err)
		}
	}
	if m.cfg.OperatorKey != "" {
		if err := m.RecordOperatorKey(ctx, m.cfg.OperatorKey); err != nil {
			return fmt.Errorf("record the operator's key: %w", err)
		}
	}
	for id, pub := range m.cfg.EnrollAtStart {
		if err := m.enroll(ctx, id, pub); err != nil {
			return fmt.Errorf("enroll %s: %w", id, err)
		}
	}
	if err := m.fleetChanged(); err != nil {
		return err
	}
	m.wg.Add(2)
	go m.publisher() // recovery may finish intents: their reports need it
	go m.storedWaiter()
	recovered, err := m.recover(ctx)
	if err != nil {
		return fmt.Errorf("recover open intents: %w", err)
	}
	// From here a stand-down may be decided: its Close waits until Start returns.
	m.startMu.Lock()
	defer m.startMu.Unlock()
	if err := m.serve(); err != nil { // another Mirage found meanwhile
		return err
	}
	if m.served != nil {
		m.served()
	}
	for _, s := range []struct {
		subject string
		queue   string
		fn      nats.MsgHandler
	}{
		{subjects.Issue, "mirage", m.onIssue},
		{subjects.AllRegisters, "mirage", m.fleet.onRegister},
		{subjects.AllHeartbeats, "mirage", m.fleet.onHeartbeat},
		{subjects.Fleet + ".*", "mirage", m.onFleet},
		{subjects.Attach, "mirage", m.onAttach},
		{subjects.AllReplays, "mirage", m.onReplay},
		{subjects.AllSeeds, "mirage", m.onSeedRead},
	} {
		sub, err := m.nc.QueueSubscribe(s.subject, s.queue, s.fn)
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", s.subject, err)
		}
		// A fleet coming up at once (thousands of registers) must queue, not be dropped;
		// a flood (one party sending megabyte envelopes) must not take Mirage's memory:
		// beyond 256 MiB a subscription drops messages, which their senders retry.
		_ = sub.SetPendingLimits(1_000_000, 256<<20)
		m.subs = append(m.subs, sub)
	}
	cons, err := m.js.CreateOrUpdateConsumer(ctx, bus.StreamEvents, eventsConsumerConfig())
	if err != nil {
		return fmt.Errorf("events consumer: %w", err)
	}
	// What the consumer delivered to earlier Mirages up to what recover read is read:
	// acknowledged, it is not delivered again; delivered and not acknowledged (a Mirage that
	// crashed), it comes back only after the ack wait, and no intent this Mirage follows
	// waits for it: recover replayed what the open intents need of it, an intent taken up
	// later replays its own events, and a new intent has none there. Not past that: an
	// earlier Mirage whose connection the server still holds (its host gone, the link not
	// timed out) may have a pull open, into which the server delivers messages stored since,
	// which nobody reads (they may be events of the intents followed or accepted by now);
	// they come again after the ack wait, and an expiry waits for them.
	info := cons.CachedInfo()
	m.read.advance(max(info.AckFloor.Stream, min(info.Delivered.Stream, recovered)))
	m.loss.delivered.Store(info.Delivered.Stream)
	m.ccMu.Lock()
	m.cc, err = m.consumeEvents(cons)
	m.ccMu.Unlock()
	if err != nil {
		return fmt.Errorf("consume events: %w", err)
	}
	m.wg.Add(4)
	go m.superviseEvents(cons)
	go m.loop()
	go m.keepServerClock()
	go func() { defer m.wg.Done(); m.fleet.registrar() }()
	m.announce()
	m.log.Info("mirage serving", "subject", subjects.Issue, "ghosts", len(m.fleet.All()))
	return nil
}

// eventsConsumerConfig is the configuration of the events consumer (EventsConsumer).
func eventsConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       EventsConsumer,
		Description:   "Mirage reads every event once, acking each after it is counted",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       eventsAckWait,
		MaxAckPending: 20000,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

// drainWait bounds how long Close waits for the events consumer to hand its buffered
// events to onEvent: a flush round trip with a connected server.
const drainWait = 2 * time.Second

// Close stops intake and background loops, writes pending presence, and publishes the
// reports that changed. It does not close the connection. It may be called more than
// once, and while a stand-down (singleton.go) stops Mirage: every call returns once
// Mirage has stopped.
func (m *Mirage) Close() error {
	m.closeOnce.Do(m.close)
	return nil
}

func (m *Mirage) close() {
	// A stand-down decided while Start still subscribes waits for it: what Start sets up
	// after serve is stopped here, not left behind.
	m.startMu.Lock()
	defer m.startMu.Unlock()
	for _, s := range m.subs {
		_ = s.Unsubscribe()
	}
	m.releaseClaim()
	// The unsubscribes reach the server now, not with the connection's next flush: until
	// then it still routes issues and registers to this Mirage (a queue group member),
	// where nobody reads them, instead of to another one (one that stays after this one
	// stood down, or the next one started).
	if m.nc.IsConnected() {
		_ = m.nc.FlushTimeout(time.Second)
	}
	m.ccMu.Lock()
	m.ccStopped = true
	cc := m.cc
	m.ccMu.Unlock()
	if cc != nil {
		// Drain, not Stop: the events the server already delivered into this Mirage's
		// buffer are handed to onEvent, which counts them or, stood down, hands them back
		// (nak) for the Mirage that stays. Stopped, they were dropped unseen and
		// redelivered only after the consumer's ack wait (30 s): every intent they
		// belonged to stalled that long across a take-over or a restart. Unconnected,
		// nothing could be acked or handed back: stopped at once.
		if m.nc.IsConnected() {
			cc.Drain()
		} else {
			cc.Stop()
		}
		select {
		case <-cc.Closed():
		case <-time.After(drainWait):
			// The server did not answer the drain's flush in time; onEvent, which runs
			// until the subscription closes, hands back whatever still comes (hold).
		}
	}
	spent := time.AfterFunc(m.cfg.StopBudget, m.budgetSpent)
	defer spent.Stop()
	defer m.budgetSpent() // nothing is stored after Close
	close(m.stop)
	m.stopRunning()
	m.spawnMu.Lock()
	m.closing = true
	m.spawnMu.Unlock()
	m.wg.Wait()
	m.stopLingers()
	m.mu.Lock()
	for _, li := range m.live {
		if li.timer != nil {
			li.timer.Stop()
		}
	}
	m.mu.Unlock()
	m.fleet.flush(m.budget)
	m.fleet.storeLeft(m.budget)
	m.publishDirty()
	if n := m.unstoredAtStop.Load(); n > 0 {
		m.log.Warn("reports not stored before Mirage stopped; the next Mirage reports their intents", "reports", n, "budget", m.cfg.StopBudget)
	}
}

func (m *Mirage) announce() {
	ann := bus.Announce{Header: bus.NewHeader(bus.TypeAnnounce, "", m.cfg.Now()), MirageID: m.cfg.ID}
	if data, err := bus.Encode(&ann); err == nil {
		_ = m.nc.Publish(subjects.Announce, data)
	}
}

// loop publishes coalesced in_progress reports, flushes presence, stores the records of
// Ghosts that said they stop, and reads the intents bucket's max age again when the
// known-ids filter is due to rotate.
func (m *Mirage) loop() {
	defer m.wg.Done()
	reports := time.NewTicker(m.cfg.ReportInterval)
	defer reports.Stop()
	presence := time.NewTicker(m.cfg.PresenceFlush)
	defer presence.Stop()
	var knownRetry time.Time
	for {
		select {
		case <-m.stop:
			return
		case <-reports.C:
			m.publishDirty()
		case <-presence.C:
			m.fleet.flush(m.budget)
			m.fleet.storeLeft(m.budget) // the records a kick could not store
		case <-m.fleet.left:
			m.fleet.storeLeft(m.budget)
		case <-m.known.due:
			if time.Now().After(knownRetry) && !m.refreshKnown() {
				knownRetry = time.Now().Add(5 * time.Second) // asked again at the next issue after
			}
		}
	}
}

// refreshKnown reads edge_intents' max age again for the known-ids filter, which waits
// for it to rotate (an operator may have raised it). It reports whether it could.
func (m *Mirage) refreshKnown() bool {
	ctx, cancel := context.WithTimeout(m.running, 5*time.Second)
	defer cancel()
	st, err := m.intents.Status(ctx)
	if err != nil {
		m.log.Warn("edge_intents' max age not readable; the known intent ids are kept until it is", "err", err)
		return false
	}
	m.mu.Lock()
	m.known.setPeriod(knownPeriod(st.TTL()), m.cfg.Now())
	m.mu.Unlock()
	return true
}

func (m *Mirage) publishDirty() {
	if m.gaveWay() {
		// Another Mirage follows these intents (and takes up the ones only this one
		// followed): an in_progress report of this one's stored after its terminal one
		// would make an ended intent read open (reportPhase, endedIntents).
		return
	}
	now := m.cfg.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, li := range m.live {
		if li.dirty && !now.Before(li.quietUntil) {
			li.dirty = false
			m.enqueueReport(li.report(now))
		}
	}
}

// enqueueReport hands a report to the publisher. Called with m.mu held, so that the
// reports of one intent are queued, and stored, in the order they were made.
func (m *Mirage) enqueueReport(r *bus.Report) {
	if m.publisherGone {
		m.publishReport(r) // stopping: store it now
		return
	}
	select {
	case m.reports <- r:
	case <-m.stop:
		m.publishReport(r)
	}
}

// publisher stores queued reports in order, each in flight without waiting for the one
// before (a failed one is retried on its own). When Mirage stops it stores what is left.
func (m *Mirage) publisher() {
	defer m.wg.Done()
	defer close(m.publisherDone)
	for {
		select {
		case r := <-m.reports:
			m.publishAsync(r)
		case <-m.stop:
			// Under m.mu, which every enqueueReport holds: nothing is queued after the
			// last report is taken, and later ones are stored directly.
			m.mu.Lock()
			defer m.mu.Unlock()
			for {
				select {
				case r := <-m.reports:
					m.publishReport(r)
				default:
					m.publisherGone = true
					return
				}
			}
		}
	}
}

func (m *Mirage) publishAsync(r *bus.Report) {
	data, err := bus.Encode(r)
	if err != nil {
		m.log.Error("cannot encode report", "intent_id", r.IntentID, "err", err)
		return
	}
	var opts []jetstream.PublishOpt
	if !bus.Terminal(r.Phase) {
		// Not re-sent by nats.go when no stream answered (a leader election): its re-send,
		// 250 ms later and apart from the others, could be stored after the intent's
		// terminal report published meanwhile, and be taken for the intent's latest state
		// (LatestReport, endedIntents). A lost in_progress report is superseded instead
		// (retryReport).
		opts = append(opts, jetstream.WithRetryAttempts(0))
	}
	f, err := m.js.PublishMsgAsync(bus.NewReportMsg(r, data), opts...)
	if err != nil {
		// Retried apart: a terminal report is retried until stored, and the
		// publisher must go on with the others meanwhile.
		m.retryApart(r)
		return
	}
	m.stored.push(inFlightReport{r: r, f: f, giveUpAt: time.Now().Add(reportAckWithin)})
}

// reportAckWithin is how long a report's stream ack is waited for before it is published
// again (under the same message id: stored once whatever happened), and how long each try
// of publishReport waits. EDGE_REPORT answers within milliseconds; a leader that froze
// (a stopped VM, SIGSTOP) or died while its server's routes still stand keeps the
// subject's interest and answers nothing until the routes time out a minute later, while
// its replicas elect a new leader within seconds (nats-server's election timeout is 4 to
// 9 s). A try given up after 2 s reaches that leader at most about 2 s after the
// election; a 10 s wait had every terminal report stored 10 s after its leader froze
// (the new one elected at 3 to 5.6 s), and a client waiting for it waited that long. A
// slow answer costs a re-send of the same Nats-Msg-Id, which the stream drops.
const reportAckWithin = 2 * time.Second

type inFlightReport struct {
	r        *bus.Report
	f        jetstream.PubAckFuture
	giveUpAt time.Time
}

// reportQueue is an unbounded FIFO: the publisher never waits on the waiter, which may
// take m.mu (storeIsBack) while enqueueReport holds it waiting on the publisher.
type reportQueue struct {
	mu    sync.Mutex
	q     []inFlightReport
	ready chan struct{} // signalled when q becomes non-empty
}

func (q *reportQueue) push(p inFlightReport) {
	q.mu.Lock()
	q.q = append(q.q, p)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take returns what is queued, emptying the queue; buf is reused.
func (q *reportQueue) take(buf []inFlightReport) []inFlightReport {
	q.mu.Lock()
	defer q.mu.Unlock()
	buf = append(buf[:0], q.q...)
	clear(q.q)
	q.q = q.q[:0]
	return buf
}

// storedWaiter follows the stream acks of the reports published asynchronously, in the
// order they were published (acks of one stream come back in that order), one goroutine
// for all of them. A report refused or not acked in time is published again apart. It
// returns once the publisher has and everything queued is settled.
func (m *Mirage) storedWaiter() {
	defer m.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var batch []inFlightReport
	for {
		batch = m.stored.take(batch)
		if len(batch) == 0 {
			select {
			case <-m.stored.ready:
				continue
			case <-m.publisherDone:
				if batch = m.stored.take(batch); len(batch) == 0 {
					return
				}
			}
		}
		for i := range batch {
			p := &batch[i]
			acked := m.reportAcked(p, timer)
			switch {
			case !acked && m.budget.Err() != nil:
				// Mirage stopped and spent its budget: not retried (publishReport).
				m.unstoredAtStop.Add(1)
			case acked:
				if m.log.Enabled(context.Background(), slog.LevelDebug) { // the arguments cost an allocation each
					m.log.Debug("report stored", "direction", "out", "message_type", bus.TypeReport, "intent_id", p.r.IntentID, "trace_id", p.r.TraceID, "message_id", p.r.MessageID, "phase", p.r.Phase)
				}
				m.reportStored(p.r)
				if !bus.Terminal(p.r.Phase) {
					m.storeIsBack(p.r.IntentID)
				}
			default:
				m.retryApart(p.r)
			}
			*p = inFlightReport{}
		}
	}
}

// reportAcked waits for p's stream ack until p.giveUpAt, or until Close has spent its
// stop budget. An answer already there counts even when the wait for an earlier report
// took p past its time.
func (m *Mirage) reportAcked(p *inFlightReport, timer *time.Timer) bool {
	select {
	case <-p.f.Ok():
		return true
	case <-p.f.Err():
		return false
	default:
	}
	timer.Reset(time.Until(p.giveUpAt))
	defer timer.Stop()
	select {
	case <-p.f.Ok():
		return true
	case <-p.f.Err():
		return false
	case <-timer.C:
		return false
	case <-m.budget.Done():
		return false
	}
}

// retryApart runs retryReport in a goroutine of its own: a terminal report is retried
// until stored, which must not hold up the others.
func (m *Mirage) retryApart(r *bus.Report) {
	m.wg.Add(1) // the caller holds a count of wg: Close is not past Wait
	go func() {
		defer m.wg.Done()
		m.retryReport(r)
	}()
}

// retryReport stores again a report whose publish failed. Only a terminal report is:
// retried on its own, an in_progress one could land after its intent's terminal report,
// which is the intent's terminal state. A lost in_progress report is superseded instead:
// its intent, if still open, is marked changed, so that the next round of publishDirty
// reports its state as it is then (without that, the stream would show stale counts
// until a result changed them).
func (m *Mirage) retryReport(r *bus.Report) {
	if !bus.Terminal(r.Phase) {
		m.mu.Lock()
		if li, ok := m.live[r.IntentID]; ok {
			// Superseded by a later round, backing off while the store keeps refusing:
			// 250 ms, 500 ms, … 8 s.
			li.dirty, li.lost = true, min(li.lost+1, 6)
			li.quietUntil = m.cfg.Now().Add(m.cfg.ReportInterval << (li.lost - 1))
		}
		m.mu.Unlock()
		if ok, n := m.lostReports.Allow(); ok {
			m.log.Warn("in_progress reports not stored; each intent's next report supersedes its lost one", "intent_id", r.IntentID, "reports", n)
		}
		return
	}
	m.publishReport(r) // same message id: stored once whatever happened
}

// publishReport stores a report in EDGE_REPORT. A terminal report, the intent's terminal
// state, is retried until the store takes it (a stream without quorum for minutes) or
// Mirage stops, which leaves one last try: the next Mirage recovers the intent and
// reports it. An in_progress report gets a few tries; the next one supersedes it.
func (m *Mirage) publishReport(r *bus.Report) {
	data, err := bus.Encode(r)
	if err != nil {
		m.log.Error("cannot encode report", "intent_id", r.IntentID, "err", err)
		return
	}
	msg := bus.NewReportMsg(r, data)
	terminal := bus.Terminal(r.Phase)
	b := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		if m.budget.Err() != nil {
			// Stopping: the reports left shared the stop budget, and it is spent.
			m.unstoredAtStop.Add(1)
			return
		}
		began := time.Now()
		ctx, cancel := context.WithTimeout(m.budget, reportAckWithin)
		_, err = m.js.PublishMsg(ctx, msg) // same message id: stored once whatever happened
		cancel()
		if err == nil {
			if m.log.Enabled(context.Background(), slog.LevelDebug) { // the arguments cost an allocation each
				m.log.Debug("report stored", "direction", "out", "message_type", bus.TypeReport, "intent_id", r.IntentID, "trace_id", r.TraceID, "message_id", r.MessageID, "phase", r.Phase)
			}
			m.reportStored(r)
			return
		}
		stopping := false
		select {
		case <-m.stop:
			stopping = true
		default:
		}
		if stopping || (!terminal && attempt >= 8) {
			if stopping {
				m.unstoredAtStop.Add(1)
			}
			m.log.Error("report not stored", "intent_id", r.IntentID, "phase", r.Phase, "err", err)
			return
		}
		if attempt == 8 || attempt%60 == 0 {
			m.log.Error("terminal report still not stored; retrying until it is", "intent_id", r.IntentID, "phase", r.Phase, "attempts", attempt, "err", err)
		}
		wait := b
		if took := time.Since(began); took >= reportAckWithin {
			// A try that waited out its ack (a frozen leader) has waited already: the
			// next goes out at once, to the leader elected meanwhile. A refusal or no
			// responders comes at once and waits the whole backoff.
			wait = max(0, wait-took)
		}
		select {
		case <-m.stop:
		case <-time.After(wait):
		}
		b = min(b*2, 5*time.Second)
	}
}

// storeIsBack ends the back-off of an open intent's reports once one is stored
// (retryReport). Called without m.mu held.
func (m *Mirage) storeIsBack(intentID string) {
	m.mu.Lock()
	if li, ok := m.live[intentID]; ok {
		li.lost, li.quietUntil = 0, time.Time{}
	}
	m.mu.Unlock()
}

// reportStored forgets an ended intent once its terminal report is stored.
func (m *Mirage) reportStored(r *bus.Report) {
	if !bus.Terminal(r.Phase) {
		return
	}
	m.endMu.Lock()
	delete(m.ending, r.IntentID)
	m.endMu.Unlock()
}

// endingPhase is the terminal phase of an intent that ended and whose terminal report is
// not stored yet ("" for any other).
func (m *Mirage) endingPhase(intentID string) string {
	m.endMu.Lock()
	defer m.endMu.Unlock()
	return m.ending[intentID]
}

// finish ends an intent: its terminal report is published. The terminal report is the
// intent's terminal state; its record in edge_intents stays as accepted, which saves
// every intent a stored write (an fsync with --sync always). Called without m.mu held.
func (m *Mirage) finish(intentID string) {
	m.mu.Lock()
	li, ok := m.live[intentID]
	if !ok || !li.done() {
		m.mu.Unlock()
		return
	}
	delete(m.live, intentID)
	if li.timer != nil {
		li.timer.Stop()
	}
	released := m.releaseLocks(li)
	now := m.cfg.Now()
	rep := li.report(now)
	outcomes := make([]string, len(li.results))
	for i, r := range li.results {
		outcomes[i] = r.Outcome
	}
	traceID := li.rec.Issue.TraceID
	m.endMu.Lock()
	m.ending[intentID] = rep.Phase
	m.endMu.Unlock()
	m.enqueueReport(rep)
	m.mu.Unlock()
	m.cfg.Metrics.intentFinished(rep.Phase, outcomes)
	m.log.Info("intent finished", "intent_id", intentID, "trace_id", traceID, "phase", rep.Phase, "summary", rep.Summary)
	if released {
		m.wakeWaiters()
	}
}

// progress moves an intent's rollout after its results changed: it dispatches what may
// start, finishes the intent when it is complete, and lets waiting intents go on when
// locks were released. Called without m.mu held.
func (m *Mirage) progress(intentID string) {
	m.mu.Lock()
	li, ok := m.live[intentID]
	if !ok || li.adopting {
		m.mu.Unlock()
		return
	}
	units, released := m.advance(li)
	rec, done := li.rec, li.done()
	m.mu.Unlock()
	// A next wave is sent in a goroutine of its own: send waits for the store's acks
	// (seconds when it is slow), and progress runs on the events consumer, whose later
	// events must not wait behind it past their intents' deadlines. Refused once Mirage
	// stops: the next Mirage dispatches those units (they have no result).
	if len(units) > 0 {
		m.spawn(func() { m.send(&rec, units) })
	}
	if done {
		m.finish(intentID)
	}
	if released {
		m.wakeWaiters()
	}
}

// wakeWaiters retries the intents waiting for a lock.
func (m *Mirage) wakeWaiters() {
	m.mu.Lock()
	var waiting []string
	for id, li := range m.live {
		if li.waiting != "" {
			waiting = append(waiting, id)
		}
	}
	m.mu.Unlock()
	for _, id := range waiting {
		m.progress(id)
	}
}

// arm sets the deadline timer of a live intent: at its cutoff (plus storeSettle, for
// the stream's state to hold what was stamped by then), expireAtCutoff. Called with m.mu
// held.
func (m *Mirage) arm(li *liveIntent) {
	wait := li.cutoff().Add(storeSettle).Sub(m.cfg.Now())
	id := li.rec.IntentID
	li.timer = time.AfterFunc(max(wait, 0), func() {
		// Not once Mirage stops: the next Mirage re-arms it from the intent record.
		m.spawn(func() { m.expireAtCutoff(id) })
	})
}

// spawnHolding runs f through spawn holding one of slots, which the caller took: the slot
// is given back when f returns, or at once when Mirage is stopping and f does not run.
func (m *Mirage) spawnHolding(slots chan struct{}, f func()) {
	if !m.spawn(func() {
		defer func() { <-slots }()
		f()
	}) {
		<-slots
	}
}

// spawn runs f in a goroutine that Close waits for, and reports whether it did: once
// Mirage is stopping it runs nothing. Subscription handlers and timers, which Close does
// not wait for, start their work through it.
// hold counts the caller, a callback of a goroutine Mirage does not own (the events
// consumer's), in wg for as long as it runs: Close then waits for it. It is false once
// Close has begun waiting; the caller must then drop its work (unacked, an event is
// delivered again to the next Mirage). A true hold is ended with m.wg.Done.
func (m *Mirage) hold() bool {
	m.spawnMu.Lock()
	defer m.spawnMu.Unlock()
	if m.closing {
		return false
	}
	m.wg.Add(1)
	return true
}

func (m *Mirage) spawn(f func()) bool {
	m.spawnMu.Lock()
	defer m.spawnMu.Unlock()
	if m.closing {
		return false
	}
	select {
	case <-m.stop:
		return false
	default:
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		f()
	}()
	return true
}

// ErrIntentNotFound is returned for an unknown intent_id.
var ErrIntentNotFound = errors.New("intent not found")
