package mirage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// One Mirage per deployment. Open intents live in the memory of the Mirage that accepted
// them, and Mirages share the events consumer and the issue queue group: a second Mirage
// on the same NATS would take part of the first one's events and take their intents up
// (takeUpOnEvent) while the first goes on following them, and the first would report a
// timeout for the targets whose events the second read. So every Mirage answers on mirage.probe with what it is
// (bus.MirageInstance), and asks there:
//
//  1. at Start, before it loads anything or subscribes: with no Mirage on mirage.probe
//     the server answers "no responders" at once, the common start's only cost; a
//     running Mirage's answer refuses the start (AnotherMirageError); a subscriber that
//     does not answer (a process stopped by SIGSTOP or a frozen VM) is waited for at
//     most ProbeWait, then the start goes on;
//  2. then it subscribes to mirage.probe, probes again, and probes every ProbeEvery
//     for as long as it runs, the answers coming to one inbox of its own. Two Mirages
//     that both passed 1 learn of each other there, and both decide alike (started_ms,
//     then instance_id): of two starting, the one started later refuses to start; a
//     starting one refuses against a running one; of two running, the one started
//     earlier stands down. That one was not answering while the other started (stopped,
//     or cut off by a partition), and the other took up its open intents from the store
//     when it started: giving way to the newer one loses the least.
//
// A Mirage back from a stop or a cut probes again before it acts on an issue or event
// (awake.go). One that stands down takes no issue from then on, hands events back,
// publishes no report, stops as Close does and closes Done; Err says why ('up' exits 3
// with it). What it still accepted before it gave way is recorded and open; the Mirage
// that stays takes such an intent up when one of its events comes (takeUpOnEvent), or
// else when it starts again: docs/delivery.md, Limits.

// Defaults of Config.ProbeWait and Config.ProbeEvery.
const (
	DefaultProbeWait  = 500 * time.Millisecond
	DefaultProbeEvery = 5 * time.Second
)

// ErrAnotherMirage is matched (errors.Is) by an AnotherMirageError.
var ErrAnotherMirage = errors.New("another Mirage serves this deployment")

// AnotherMirageError is why a Mirage refused to start, or stood down: Other serves the
// same deployment.
type AnotherMirageError struct {
	Other     bus.MirageInstance
	StoodDown bool // it was running and gave way to Other, which started later
}

func (e *AnotherMirageError) Error() string {
	o := e.Other
	where := fmt.Sprintf("another Mirage serves this deployment: %s on host %s (pid %d, instance %s, started %s)",
		o.MirageID, o.Hostname, o.PID, o.InstanceID, time.UnixMilli(o.StartedMS).UTC().Format(time.RFC3339))
	if e.StoodDown {
		return where + ", after this one; this one stood down. Run one Mirage per deployment"
	}
	return where + "; run one Mirage per deployment: stop that one first"
}

// Is makes errors.Is(err, ErrAnotherMirage) hold.
func (e *AnotherMirageError) Is(target error) bool { return target == ErrAnotherMirage }

// deployClaim is a Mirage's side of the probe: its instance, its subscriptions, and
// whether it refused to start or stood down.
type deployClaim struct {
	errs bus.RateLog // the errors logged about other Mirages

	mu      sync.Mutex
	self    bus.MirageInstance // Phase is InstanceStarting until Start takes issues
	probes  *nats.Subscription // mirage.probe
	answers *nats.Subscription // the answers to this Mirage's probes
	clash   *AnotherMirageError
	down    bool
	done    chan struct{} // closed once it stood down and closed
	wake    wakeCheck     // gaps noticed, and the probe that follows one (awake.go)
}

func newDeployClaim(id string, now time.Time) *deployClaim {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return &deployClaim{
		self: bus.MirageInstance{MirageID: id, InstanceID: subjects.NewID(subjects.PrefixInstance), Hostname: host,
			PID: os.Getpid(), StartedMS: now.UnixMilli(), Phase: bus.InstanceStarting},
		done: make(chan struct{}),
	}
}

// Instance describes this Mirage as it answers on mirage.probe.
func (m *Mirage) Instance() bus.MirageInstance {
	m.claim.mu.Lock()
	defer m.claim.mu.Unlock()
	return m.claim.self
}

// Done is closed once this Mirage stood down for another one started later (Err says
// which) and stopped.
func (m *Mirage) Done() <-chan struct{} { return m.claim.done }

// Err is why Done was closed: an *AnotherMirageError; nil while it serves.
func (m *Mirage) Err() error {
	m.claim.mu.Lock()
	defer m.claim.mu.Unlock()
	if !m.claim.down {
		return nil
	}
	return m.claim.clash
}

// claimDeployment is step 1 and the start of step 2: it returns an *AnotherMirageError
// when a running Mirage answers the first probe, and leaves the subscriptions for Close.
func (m *Mirage) claimDeployment(ctx context.Context) error {
	if err := m.firstProbe(ctx); err != nil {
		return err
	}
	c := m.claim
	answers, err := m.nc.Subscribe(m.nc.NewInbox(), m.onProbeAnswer)
	if err != nil {
		return fmt.Errorf("subscribe to probe answers: %w", err)
	}
	probes, err := m.nc.Subscribe(subjects.MirageProbe, m.onProbe)
	if err != nil {
		_ = answers.Unsubscribe()
		return fmt.Errorf("subscribe %s: %w", subjects.MirageProbe, err)
	}
	c.mu.Lock()
	c.answers, c.probes = answers, probes
	c.mu.Unlock()
	m.startPulse()
	m.wg.Add(1)
	go m.probeLoop()
	return nil
}

// firstProbe asks before this Mirage subscribes: "no responders" at once when no other
// Mirage is there.
func (m *Mirage) firstProbe(ctx context.Context) error {
	data, err := m.probeData()
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, m.cfg.ProbeWait)
	defer cancel()
	reply, err := m.nc.RequestWithContext(pctx, subjects.MirageProbe, data)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
		m.log.Warn("something listens on "+subjects.MirageProbe+" and did not answer (a stopped Mirage?); starting, and checking again while serving", "waited", m.cfg.ProbeWait)
		return nil
	case err != nil:
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Not allowed by an authorization written before the probe existed, or no
		// connection: the check is skipped, not the start.
		m.log.Warn("cannot ask whether another Mirage serves this deployment; starting", "subject", subjects.MirageProbe, "err", err)
		return nil
	}
	m.readAnswer(reply)
	return m.startErr()
}

func (m *Mirage) probeData() ([]byte, error) {
	data, _, err := m.encodeProbe()
	return data, err
}

// encodeProbe is this Mirage's probe, and its message_id.
func (m *Mirage) encodeProbe() ([]byte, string, error) {
	p := bus.MirageProbe{Header: bus.NewHeader(bus.TypeMirageProbe, "", m.cfg.Now()), MirageInstance: m.Instance()}
	data, err := bus.Encode(&p)
	return data, p.MessageID, err
}

// probeMsg is a probe whose answers come to this Mirage's answers inbox, and its
// message_id; false before claimDeployment subscribed it or after Close.
func (m *Mirage) probeMsg() (*nats.Msg, string, bool) {
	m.claim.mu.Lock()
	reply := ""
	if m.claim.answers != nil {
		reply = m.claim.answers.Subject
	}
	m.claim.mu.Unlock()
	data, id, err := m.encodeProbe()
	if err != nil || reply == "" {
		return nil, "", false
	}
	return &nats.Msg{Subject: subjects.MirageProbe, Reply: reply, Data: data}, id, true
}

// probeLoop probes at once, then every ProbeEvery, until Mirage stops.
func (m *Mirage) probeLoop() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.ProbeEvery)
	defer t.Stop()
	for {
		if msg, _, ok := m.probeMsg(); ok {
			_ = m.nc.PublishMsg(msg)
		}
		select {
		case <-t.C:
		case <-m.stop:
			return
		}
	}
}

// onProbe answers another Mirage's probe with this one, and decides the clash.
func (m *Mirage) onProbe(msg *nats.Msg) {
	var p bus.MirageProbe
	if err := bus.Decode(msg.Data, &p); err != nil {
		m.log.Debug("refused a malformed probe", "direction", "in", "message_type", bus.TypeMirageProbe, "err", err)
		return
	}
	self := m.Instance()
	if p.InstanceID == self.InstanceID {
		m.ownProbeBack(p.MessageID)
		return
	}
	if msg.Reply != "" {
		a := bus.MirageProbeAnswer{Header: bus.NewHeader(bus.TypeMirageProbeAnswer, "", m.cfg.Now()), MirageInstance: self}
		if data, err := bus.Encode(&a); err == nil {
			_ = msg.Respond(data)
		}
	}
	m.decide(p.MirageInstance)
}

// onProbeAnswer reads an answer to one of this Mirage's probes.
func (m *Mirage) onProbeAnswer(msg *nats.Msg) { m.readAnswer(msg) }

func (m *Mirage) readAnswer(msg *nats.Msg) {
	if len(msg.Data) == 0 { // a status, such as "no responders"
		return
	}
	var a bus.MirageProbeAnswer
	if err := bus.Decode(msg.Data, &a); err != nil {
		m.log.Debug("refused a malformed probe answer", "direction", "in", "message_type", bus.TypeMirageProbeAnswer, "err", err)
		return
	}
	if a.InstanceID == m.Instance().InstanceID {
		return
	}
	m.decide(a.MirageInstance)
}

// decide settles a clash with other, as other decides it: a starting Mirage refuses to
// start against a running one or one started earlier; of two running, the one started
// earlier stands down.
func (m *Mirage) decide(other bus.MirageInstance) {
	c := m.claim
	c.mu.Lock()
	self := c.self
	if c.down {
		c.mu.Unlock()
		return
	}
	switch {
	case self.Phase == bus.InstanceStarting:
		if other.Phase == bus.InstanceRunning || other.StartedBefore(self) {
			if c.clash == nil {
				c.clash = &AnotherMirageError{Other: other}
			}
		}
		c.mu.Unlock()
		return
	case other.Phase == bus.InstanceStarting:
		c.mu.Unlock() // it refuses on reading this one's probe or answer
		if m.wasAway() {
			// Its probe waited here while this Mirage was stopped or cut off: it stopped
			// waiting for an answer and went on starting. Its next probes, as a running
			// Mirage started later, make this one stand down.
			m.log.Warn("another Mirage probed as it started while this one was not answering; it may serve now, and the probes decide which one stands down", "other_host", other.Hostname, "other_pid", other.PID, "other_instance", other.InstanceID)
			return
		}
		if ok, n := c.errs.Allow(); ok {
			m.log.Error("another Mirage tried to start on this deployment; it refuses", "other_host", other.Hostname, "other_pid", other.PID, "other_instance", other.InstanceID, "attempts", n)
		}
		return
	case other.StartedBefore(self):
		c.mu.Unlock() // the other one stands down
		if ok, n := c.errs.Allow(); ok {
			m.log.Error("another Mirage, started earlier, was serving this deployment; it stands down", "other_host", other.Hostname, "other_pid", other.PID, "other_instance", other.InstanceID, "clashes", n)
		}
		return
	}
	c.clash = &AnotherMirageError{Other: other, StoodDown: true}
	c.down = true
	c.mu.Unlock()
	m.log.Error("standing down: another Mirage started on this deployment after this one, while this one was not answering; run one Mirage per deployment", "other_host", other.Hostname, "other_pid", other.PID, "other_instance", other.InstanceID, "other_started_ms", other.StartedMS)
	go func() {
		_ = m.Close()
		close(c.done)
	}()
}

// gaveWay reports whether this Mirage refused to start or stood down for another one.
func (m *Mirage) gaveWay() bool {
	m.claim.mu.Lock()
	defer m.claim.mu.Unlock()
	return m.claim.clash != nil
}

// startErr is the clash that refuses the start, if one was found.
func (m *Mirage) startErr() error {
	m.claim.mu.Lock()
	defer m.claim.mu.Unlock()
	if m.claim.clash != nil {
		return m.claim.clash
	}
	return nil
}

// serve marks this Mirage running, unless a clash found meanwhile refuses its start.
func (m *Mirage) serve() error {
	c := m.claim
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.clash != nil {
		return c.clash
	}
	c.self.Phase = bus.InstanceRunning
	return nil
}

// releaseClaim unsubscribes from mirage.probe and the answers (Close).
func (m *Mirage) releaseClaim() {
	c := m.claim
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range []*nats.Subscription{c.probes, c.answers} {
		if s != nil {
			_ = s.Unsubscribe()
		}
	}
	c.probes, c.answers = nil, nil
}
