package ghost

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Duplicate ids. Two Ghost processes with one id (a copied config, 'ghostctl init --id'
// run twice) would both subscribe to cmd.<id> and both run every command. Every live
// instance therefore answers on probe.<id> with what it is (bus.Instance), and a Ghost
// asks there before it subscribes to cmd.<id> or runs anything:
//
//  1. probe, not yet subscribed itself: with nobody on probe.<id> the server answers "no
//     responders" at once, so the common start costs one round trip; an answer from a
//     running instance refuses the start (DuplicateIDError);
//  2. subscribe to probe.<id> and probe again: of two Ghosts that both passed 1
//     before either subscribed, at least one now receives the other's probe. A starting
//     Ghost that receives a probe answers it as starting and refuses, so a start that
//     collides with another refuses on at least one side, possibly both (never a
//     tie-break that could leave both up: an answer is not guaranteed to arrive in time).
//
// Subscribing first would make the server deliver the Ghost's own probe to itself, and
// "no responders" would never come: every start would wait out the probe.
//
// Once running, a Ghost answers every probe as running and logs an error (rate-limited);
// it stays up against a starting one, which refuses. After a reconnect it probes again
// (a partition may have let a second one start): two running instances then keep the
// one started first (started_ms, then instance_id, both sides decide alike) and the
// other stands down: it closes itself (Done, Err), and ghostctl exits 3. A late answer
// from a running instance to a Ghost's start probes means that one stayed up: the
// Ghost stands down too. So that a Ghost standing down has run nothing, a new Ghost
// holds the commands it receives (live and caught up), and the executions a crash left
// started, until the answers to its start probes are in: at most probeWait after Start,
// the only cost of the check once Start has returned. A stand-down while Start still
// runs (policy required: it registers) makes Start fail with the DuplicateIDError.
//
// No wait is long enough for every answer: a busy host or route may answer after it.
// Answers are therefore read for lateAnswerWait after a probe, the Ghost serving
// meanwhile: a running instance's answer that comes after the probe wait is decided as
// between two running instances (the one started later stands down, having run what it
// received in between, the one window left), where dropping it would have left both
// running every command until one reconnected.

// probeWait bounds the wait for answers to a probe that the server did not answer with
// "no responders" at once (another instance, or a 'nats sub' on the subject, is there).
const probeWait = 500 * time.Millisecond

func (g *Ghost) probeWait() time.Duration {
	if g.cfg.probeWait > 0 {
		return g.cfg.probeWait
	}
	return probeWait
}

func (g *Ghost) lateAnswerWait() time.Duration {
	if g.cfg.lateAnswerWait > 0 {
		return g.cfg.lateAnswerWait
	}
	return lateAnswerWait
}

// lateAnswerWait is how long after a probe its answers are still read, once the probe
// wait has ended and the Ghost serves.
const lateAnswerWait = time.Minute

// probeBacklog is how many probes and answers may wait for the Ghost to read them.
const probeBacklog = 256

// ErrDuplicateID is matched (errors.Is) by a DuplicateIDError.
var ErrDuplicateID = errors.New("another Ghost with this id is running")

// DuplicateIDError says that another live instance holds the Ghost's id, and which.
type DuplicateIDError struct {
	ID    string
	Other bus.Instance
}

func (e *DuplicateIDError) Error() string {
	state := "is already running"
	if e.Other.Phase == bus.InstanceStarting {
		state = "is starting at the same time"
	}
	return fmt.Sprintf("ghost id %s %s: instance %s on host %s, pid %d, since %s; two Ghosts with one id would both run every command",
		e.ID, state, e.Other.InstanceID, e.Other.Hostname, e.Other.PID, time.UnixMilli(e.Other.StartedMS).UTC().Format(time.RFC3339))
}

// Is makes errors.Is(err, ErrDuplicateID) true.
func (e *DuplicateIDError) Is(target error) bool { return target == ErrDuplicateID }

// idClaim is the Ghost's side of the probe: its instance, its subscription to
// probe.<id>, and whether it stood down.
type idClaim struct {
	errs bus.RateLog // the errors logged about other instances

	mu   sync.Mutex
	self bus.Instance       // Phase is InstanceStarting until claimID succeeds
	sub  *nats.Subscription // probe.<id>, while the Ghost holds the id
	// reply is where the answers to this instance's own latest probe come: its own probe,
	// delivered back to it on probe.<id>, is told apart without decoding it.
	reply string
	err   error // why it stood down
	down  bool
	done  chan struct{} // closed once it stood down and closed
	// settled is closed once the answers to the first probes are in: commands wait
	// for it (settle).
	settled    chan struct{}
	settleOnce sync.Once
}

// settle waits until the answers to the Ghost's first probes are in, and says whether
// it may run commands (false: it is stopping, perhaps standing down). Stopping wins when
// both are so: a late answer that makes the Ghost stand down may come just before the
// probe wait ends, and select picks at random among ready cases.
func (g *Ghost) settle() bool {
	select {
	case <-g.claim.settled:
	case <-g.stopping:
		return false
	}
	select {
	case <-g.stopping:
		return false
	default:
		return true
	}
}

func (c *idClaim) markSettled() { c.settleOnce.Do(func() { close(c.settled) }) }

func newIDClaim(id string, now time.Time) *idClaim {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return &idClaim{
		self: bus.Instance{GhostID: id, InstanceID: subjects.NewID(subjects.PrefixInstance), Hostname: host,
			PID: os.Getpid(), StartedMS: now.UnixMilli(), Phase: bus.InstanceStarting},
		done: make(chan struct{}), settled: make(chan struct{}),
	}
}

// instance returns this Ghost as its probes and answers describe it.
func (c *idClaim) instance() bus.Instance {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.self
}

func (c *idClaim) setRunning() {
	c.mu.Lock()
	c.self.Phase = bus.InstanceRunning
	c.mu.Unlock()
}

// Instance describes this Ghost as it answers probes on probe.<id>.
func (g *Ghost) Instance() bus.Instance { return g.claim.instance() }

// Done is closed when the Ghost stopped by itself: another instance holds its id and
// keeps it (Err says which). The Ghost is closed by then.
func (g *Ghost) Done() <-chan struct{} { return g.claim.done }

// Err is why the Ghost stopped by itself (a *DuplicateIDError), or nil.
func (g *Ghost) Err() error {
	g.claim.mu.Lock()
	defer g.claim.mu.Unlock()
	return g.claim.err
}

// probeAnswers is one probe's reply subject and what arrived on it: read until timer
// (the probe wait) fires, then, late ones, until late does (lateAnswerWait).
type probeAnswers struct {
	sub      *nats.Subscription
	ch       chan *nats.Msg
	starting bool // asked while starting: a running answerer stayed up
	timer    *time.Timer
	late     *time.Timer
}

func (g *Ghost) openAnswers(starting bool) (*probeAnswers, error) {
	a := &probeAnswers{ch: make(chan *nats.Msg, probeBacklog), starting: starting}
	// Within the Ghost's own inbox: the only replies its permissions let it read.
	sub, err := g.nc.ChanSubscribe(bus.GhostInbox(g.cfg.ID)+"."+nuid.Next(), a.ch)
	if err != nil {
		return nil, fmt.Errorf("subscribe for probe answers: %w", err)
	}
	a.sub = sub
	g.claim.mu.Lock()
	g.claim.reply = sub.Subject
	g.claim.mu.Unlock()
	return a, nil
}

func (a *probeAnswers) close() {
	if a == nil {
		return
	}
	_ = a.sub.Unsubscribe()
	if a.timer != nil {
		a.timer.Stop()
	}
	if a.late != nil {
		a.late.Stop()
	}
}

// claimID makes sure no other live instance holds the Ghost's id before it serves
// (Start calls it first). It returns a *DuplicateIDError when one does.
func (g *Ghost) claimID(ctx context.Context) error {
	c := g.claim
	connected := g.nc.StatusChanged(nats.CONNECTED)
	probes := make(chan *nats.Msg, probeBacklog)
	if !g.nc.IsConnected() {
		// Nothing can answer now: the probe goes out once connected, as after a reconnect.
		g.log.Warn("not connected: whether another Ghost holds this id is checked on connecting")
		c.setRunning()
		if err := g.subscribeProbes(probes); err != nil {
			g.nc.RemoveStatusListener(connected)
			return err
		}
		return g.startClaimLoop(probes, nil, connected)
	}
	answers, err := g.openAnswers(true)
	if err != nil {
		g.nc.RemoveStatusListener(connected)
		return err
	}
	fail := func(err error) error {
		answers.close()
		g.releaseID()
		g.nc.RemoveStatusListener(connected)
		return err
	}
	// 1. Probe before subscribing: "no responders" at once in the common case.
	if err := g.sendProbe(answers.sub.Subject); err != nil {
		return fail(err)
	}
	if err := g.firstAnswers(ctx, answers); err != nil {
		return fail(err)
	}
	// 2. Subscribe, probe again: a Ghost starting at the same moment finds this one, or
	// this one finds it (in what already arrived, or in the late answers and probes the
	// claim loop reads while commands are held). No flush of its own: Start flushes
	// once it has subscribed, and a flush per Ghost costs a fleet start a second.
	if err := g.subscribeProbes(probes); err != nil {
		return fail(err)
	}
	if err := g.sendProbe(answers.sub.Subject); err != nil {
		return fail(err)
	}
	var clash *DuplicateIDError
	for drained := false; !drained; {
		select {
		case m := <-probes:
			if other, ok := g.readProbe(m); ok {
				g.answerProbe(m, bus.InstanceStarting) // this one refuses
				if clash == nil {
					clash = &DuplicateIDError{ID: g.cfg.ID, Other: other}
				}
			}
		case m := <-answers.ch:
			if err := g.startAnswer(m); err != nil {
				return fail(err)
			}
		default:
			drained = true
		}
	}
	if clash != nil {
		return fail(clash)
	}
	c.setRunning()
	answers.timer = time.NewTimer(g.probeWait()) // late answers to the start probes
	return g.startClaimLoop(probes, answers, connected)
}

// firstAnswers waits for the answers to the probe sent before subscribing: "no
// responders", the probe wait, or a running instance's answer (an error).
func (g *Ghost) firstAnswers(ctx context.Context, answers *probeAnswers) error {
	t := time.NewTimer(g.probeWait())
	defer t.Stop()
	for {
		select {
		case m := <-answers.ch:
			if noResponders(m) {
				return nil
			}
			if err := g.startAnswer(m); err != nil {
				return err
			}
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// startAnswer handles an answer to a start probe that arrived while starting: a
// running instance refuses the start; a starting one refuses its own (it received this
// Ghost's probe while starting).
func (g *Ghost) startAnswer(m *nats.Msg) error {
	other, ok := g.readAnswer(m)
	if !ok {
		return nil
	}
	err := &DuplicateIDError{ID: g.cfg.ID, Other: other}
	if other.Phase == bus.InstanceRunning {
		return err
	}
	g.logClash("another instance of this ghost id started at the same time; it refuses to start", err)
	return nil
}

func (g *Ghost) subscribeProbes(probes chan *nats.Msg) error {
	sub, err := g.nc.ChanSubscribe(subjects.Probe(g.cfg.ID), probes)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", subjects.Probe(g.cfg.ID), err)
	}
	g.claim.mu.Lock()
	g.claim.sub = sub
	g.claim.mu.Unlock()
	return nil
}

func (g *Ghost) startClaimLoop(probes chan *nats.Msg, answers *probeAnswers, connected chan nats.Status) error {
	if !g.track() {
		answers.close()
		g.releaseID()
		g.nc.RemoveStatusListener(connected)
		return errStopping
	}
	go g.claimLoop(probes, answers, connected)
	return nil
}

// claimLoop answers probes while the Ghost runs, reads late answers, and probes again
// after every (re)connect.
func (g *Ghost) claimLoop(probes chan *nats.Msg, answers *probeAnswers, connected chan nats.Status) {
	defer g.wg.Done()
	defer g.nc.RemoveStatusListener(connected)
	defer func() { answers.close() }()
	for {
		var answerCh chan *nats.Msg
		var expired, ended <-chan time.Time
		if answers != nil {
			answerCh = answers.ch
			if answers.late == nil {
				expired = answers.timer.C
			} else {
				ended = answers.late.C
			}
		}
		select {
		case <-g.stopping:
			return
		case m := <-probes:
			other, ok := g.readProbe(m)
			if !ok {
				continue
			}
			if g.yields(other) {
				g.answerProbe(m, bus.InstanceStarting) // it does not wait for this one
				g.standDown(&DuplicateIDError{ID: g.cfg.ID, Other: other})
				continue
			}
			g.answerProbe(m, bus.InstanceRunning)
			g.runningClash(other, "another instance of this ghost id probed it")
		case m := <-answerCh:
			g.lateAnswer(answers, m)
		case <-expired:
			// An answer that came in time may be waiting beside the timer (select picks
			// either): it is read before the held commands may run.
			for drained := false; !drained; {
				select {
				case m := <-answers.ch:
					g.lateAnswer(answers, m)
				default:
					drained = true
				}
			}
			answers.late = time.NewTimer(g.lateAnswerWait())
			g.claim.markSettled()
		case <-ended:
			answers.close()
			answers = nil
		case <-connected:
			answers.close()
			if answers = g.probeAgain(); answers == nil {
				g.claim.markSettled() // nothing to wait for
			}
		}
	}
}

// lateAnswer acts on an answer to this Ghost's probe read once it serves.
func (g *Ghost) lateAnswer(answers *probeAnswers, m *nats.Msg) {
	other, ok := g.readAnswer(m)
	if !ok {
		return
	}
	if answers.starting && other.Phase == bus.InstanceRunning && answers.late == nil {
		// In the probe wait, this Ghost holding its commands: the other kept the id against
		// this start, and this one goes.
		g.standDown(&DuplicateIDError{ID: g.cfg.ID, Other: other})
		return
	}
	// After it, both may have served (two started together may each read the other's
	// answer late): the one started later goes, as both decide.
	g.runningClash(other, "another instance of this ghost id answered its probe")
}

// probeAgain asks, once connected again, whether another instance runs: a partition may
// have let one start. Its answers are read for probeWait, then, late ones, for
// lateAnswerWait.
func (g *Ghost) probeAgain() *probeAnswers {
	a, err := g.openAnswers(false)
	if err == nil {
		if err = g.sendProbe(a.sub.Subject); err != nil {
			a.close()
		}
	}
	if err != nil {
		g.log.Warn("probe for other instances of this ghost id after connecting failed", "err", err)
		return nil
	}
	a.timer = time.NewTimer(g.probeWait())
	return a
}

// yields says whether this Ghost, running but not settled (it may still learn that
// another kept the id against it), gives way to other, which is starting: the two
// started together, and the one started first keeps the id, as both decide. A settled
// Ghost never yields to a starting one.
func (g *Ghost) yields(other bus.Instance) bool {
	select {
	case <-g.claim.settled:
		return false
	default:
	}
	return other.Phase == bus.InstanceStarting && startedBefore(other, g.claim.instance())
}

// runningClash decides between this running Ghost and other. A starting one refuses by
// itself. Of two running ones the one started later stands down, as the other decides.
func (g *Ghost) runningClash(other bus.Instance, what string) {
	err := &DuplicateIDError{ID: g.cfg.ID, Other: other}
	if other.Phase == bus.InstanceStarting {
		g.logClash(what+" while starting; it refuses to start, this one keeps serving", err)
		return
	}
	if startedBefore(other, g.claim.instance()) {
		g.standDown(err)
		return
	}
	g.logClash(what+": both serve commands; the one started later stops, this one keeps serving", err)
}

// startedBefore orders two instances of one id: the earlier start, then the smaller
// instance_id.
func startedBefore(a, b bus.Instance) bool {
	if a.StartedMS != b.StartedMS {
		return a.StartedMS < b.StartedMS
	}
	return a.InstanceID < b.InstanceID
}

// standDown closes the Ghost because another running instance keeps its id.
func (g *Ghost) standDown(err *DuplicateIDError) {
	c := g.claim
	c.mu.Lock()
	if c.down {
		c.mu.Unlock()
		return
	}
	c.down, c.err = true, err
	c.mu.Unlock()
	g.log.Error("another Ghost keeps this id: this one stops taking commands and closes", "err", err,
		"other_instance", err.Other.InstanceID, "other_host", err.Other.Hostname, "other_pid", err.Other.PID)
	// Stopping now, not when the Close below gets to it: commands held until the start
	// probes settle (settle) must not run once the probe wait ends meanwhile.
	g.stopServing()
	// Close waits for the goroutine that calls this one.
	go func() {
		_ = g.Close()
		close(c.done)
	}()
}

func (g *Ghost) logClash(msg string, err *DuplicateIDError) {
	if ok, n := g.claim.errs.Allow(); ok {
		g.log.Error(msg, "err", err, "other_instance", err.Other.InstanceID, "other_host", err.Other.Hostname,
			"other_pid", err.Other.PID, "other_phase", err.Other.Phase, "since_last_error", n)
	}
}

// releaseID stops answering probes, and makes sure the server knows before Close
// returns: a Ghost started right after must not find this one.
func (g *Ghost) releaseID() {
	g.claim.mu.Lock()
	sub := g.claim.sub
	g.claim.sub = nil
	g.claim.mu.Unlock()
	if sub == nil {
		return
	}
	_ = sub.Unsubscribe()
	if g.nc.IsConnected() {
		_ = g.nc.FlushTimeout(time.Second)
	}
}

func (g *Ghost) sendProbe(reply string) error {
	p := bus.IDProbe{Header: bus.NewHeader(bus.TypeProbe, "", g.cfg.Now()), Instance: g.claim.instance()}
	data, err := bus.Encode(&p)
	if err != nil {
		return err
	}
	if err := g.nc.PublishMsg(&nats.Msg{Subject: subjects.Probe(g.cfg.ID), Reply: reply, Data: data}); err != nil {
		return fmt.Errorf("probe %s: %w", subjects.Probe(g.cfg.ID), err)
	}
	return nil
}

// answerProbe answers probe m with this instance in phase: InstanceStarting says that
// this one will not serve (it refuses to start, or gives way).
func (g *Ghost) answerProbe(m *nats.Msg, phase string) {
	if m.Reply == "" {
		return
	}
	self := g.claim.instance()
	self.Phase = phase
	a := bus.IDProbeAnswer{Header: bus.NewHeader(bus.TypeProbeAnswer, "", g.cfg.Now()), Instance: self}
	if data, err := bus.Encode(&a); err == nil {
		_ = m.Respond(data)
	}
}

// readProbe returns the instance that sent probe m, unless it is this one or m is no
// probe for this id.
func (g *Ghost) readProbe(m *nats.Msg) (bus.Instance, bool) {
	g.claim.mu.Lock()
	own := m.Reply != "" && m.Reply == g.claim.reply
	g.claim.mu.Unlock()
	if own {
		return bus.Instance{}, false
	}
	var p bus.IDProbe
	if err := bus.Decode(m.Data, &p); err != nil {
		g.log.Debug("refused a malformed probe", "direction", "in", "message_type", bus.TypeProbe, "err", err)
		return bus.Instance{}, false
	}
	return p.Instance, g.other(p.Instance)
}

// readAnswer returns the instance that sent answer m, unless it is this one or m is no
// answer for this id.
func (g *Ghost) readAnswer(m *nats.Msg) (bus.Instance, bool) {
	if noResponders(m) {
		return bus.Instance{}, false
	}
	var a bus.IDProbeAnswer
	if err := bus.Decode(m.Data, &a); err != nil {
		g.log.Debug("refused a malformed probe answer", "direction", "in", "message_type", bus.TypeProbeAnswer, "err", err)
		return bus.Instance{}, false
	}
	return a.Instance, g.other(a.Instance)
}

func (g *Ghost) other(i bus.Instance) bool {
	return i.GhostID == g.cfg.ID && i.InstanceID != g.claim.instance().InstanceID
}

func noResponders(m *nats.Msg) bool {
	return len(m.Data) == 0 && m.Header.Get("Status") == "503"
}
