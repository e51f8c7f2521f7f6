package mirage

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Replay consumers: a Ghost under auth may not create consumers, so it asks on
// mirage.replay.<ghost_id> for the one it reads its missed commands through. The subject
// token is the Ghost (the server lets only that Ghost publish there); the body only says
// where to start.

// onReplay serves mirage.replay.*. It never blocks the subscription: a request whose
// reply subject is not the Ghost's inbox (replyGuard) is dropped, one over its Ghost's
// bound (replayGate) is answered busy at once, without a JetStream call or a log line;
// the others wait for one of a bounded number of slots, so that a fleet catching up after
// an outage is not answered one consumer creation at a time, and are dropped when they
// waited longer than the Ghost waits for the answer.
func (m *Mirage) onReplay(msg *nats.Msg) {
	arrived := time.Now()
	id, idErr := subjects.GhostFromReplay(msg.Subject)
	if !m.guard.allows(id, msg.Subject, msg.Reply) {
		return
	}
	req, err := bus.DecodeReplayRequest(msg.Data)
	if idErr != nil {
		err = bus.FieldError(bus.CodeSemantic, "subject", "%s", subjects.Reason(idErr))
	}
	if err != nil {
		// Refused before the gate (no JetStream call to bound); logged at a bounded rate.
		perr := bus.AsError(err)
		if ok, n := m.replayRefusals.allow(); ok {
			m.log.Warn("replay request rejected", "direction", "in", "subject", msg.Subject, "code", perr.Code, "err", perr.Message, "rejected_since_last_warning", n)
		}
		m.answerReplay(msg, bus.ReplayReply{Status: "rejected", Error: perr})
		return
	}
	if !m.replayGate.enter(id, arrived) {
		m.answerReplay(msg, bus.ReplayReply{Status: "rejected", Error: bus.Errorf(bus.CodeBusy,
			"a replay request of %s is being served or was served less than %s ago: retry later", id, replayEvery)})
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer m.replayGate.leave(id)
		select {
		case m.replays <- struct{}{}:
		case <-m.stop:
			return
		}
		defer func() { <-m.replays }()
		if time.Since(arrived) > replayMaxWait {
			return // the Ghost stopped waiting: a consumer now could only race its next request
		}
		reply := bus.ReplayReply{Status: "accepted"}
		n, err := m.createReplay(id, req.StartSeq)
		if err != nil {
			perr := bus.AsError(err)
			reply = bus.ReplayReply{Status: "rejected", Error: perr}
			m.log.Warn("replay request rejected", "direction", "in", "subject", msg.Subject, "code", perr.Code, "err", perr.Message)
		} else {
			reply.NumPending = n
		}
		m.answerReplay(msg, reply)
	}()
}

func (m *Mirage) answerReplay(msg *nats.Msg, reply bus.ReplayReply) {
	if data, err := json.Marshal(reply); err == nil && msg.Reply != "" {
		_ = msg.Respond(data)
	}
}

// createReplay (re)creates the replay consumer of Ghost id from sequence start, and
// returns how many commands it holds.
func (m *Mirage) createReplay(id string, start uint64) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A leftover of an interrupted replay: its start is not this one's.
	if err := m.js.DeleteConsumer(ctx, bus.StreamCommands, bus.GhostReplayConsumer(id)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, bus.Errorf(bus.CodeInternal, "remove the old replay consumer of %s: %v", id, err)
	}
	cons, err := m.js.CreateConsumer(ctx, bus.StreamCommands, bus.GhostReplayConsumerConfig(id, start))
	if err != nil {
		return 0, bus.Errorf(bus.CodeInternal, "create the replay consumer of %s: %v", id, err)
	}
	n := cons.CachedInfo().NumPending
	m.log.Debug("replay consumer created", "peer", id, "start_seq", start, "pending", n)
	return n, nil
}

// Bounds on replay requests, per Ghost: one served at a time and one consumer creation
// per replayEvery, so that a Ghost flooding mirage.replay.<id> costs Mirage a busy answer
// per request, not JetStream calls, and other Ghosts' requests are not held up.
const (
	replayEvery = time.Second
	// replayMaxWait is how long a Ghost waits for the answer (its request timeout): a
	// request that waited longer for a slot is dropped.
	replayMaxWait = 10 * time.Second
	// replayGateMax bounds the Ghosts the gate remembers; beyond it (after pruning) a
	// request is answered busy.
	replayGateMax = 100_000
)

// replayGate admits a Ghost's replay request when none of its is being served and its
// last was admitted at least replayEvery ago.
type replayGate struct {
	mu     sync.Mutex
	ghosts map[string]*replayTurn
	pruned time.Time
}

type replayTurn struct {
	admitted time.Time
	serving  bool
}

func newReplayGate() *replayGate { return &replayGate{ghosts: map[string]*replayTurn{}} }

// enter admits a request of Ghost id at now, or refuses it; an admitted request is
// followed by leave.
func (g *replayGate) enter(id string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.Sub(g.pruned) >= time.Minute || (len(g.ghosts) >= replayGateMax && now.Sub(g.pruned) >= replayEvery) {
		g.prune(now)
	}
	t, ok := g.ghosts[id]
	switch {
	case ok && (t.serving || now.Sub(t.admitted) < replayEvery):
		return false
	case !ok && len(g.ghosts) >= replayGateMax:
		return false
	case !ok:
		t = &replayTurn{}
		g.ghosts[id] = t
	}
	t.admitted, t.serving = now, true
	return true
}

// leave ends the admitted request of Ghost id.
func (g *replayGate) leave(id string) {
	g.mu.Lock()
	if t, ok := g.ghosts[id]; ok {
		t.serving = false
	}
	g.mu.Unlock()
}

// prune forgets the Ghosts whose turn no longer bounds anything.
func (g *replayGate) prune(now time.Time) {
	g.pruned = now
	for id, t := range g.ghosts {
		if !t.serving && now.Sub(t.admitted) >= replayEvery {
			delete(g.ghosts, id)
		}
	}
}
