package ghost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// ErrNoMirage is returned when no Mirage acknowledged registration.
var ErrNoMirage = errors.New("no Mirage acknowledged registration")

// ErrRegistrationRejected is returned when Mirage answered register.ack rejected (with
// auth: the id is not enrolled, or was revoked).
var ErrRegistrationRejected = errors.New("registration rejected by Mirage")

// register sends register on reg.<id> and waits for register.ack.
func (g *Ghost) register(ctx context.Context) error {
	if !g.nc.IsConnected() {
		return fmt.Errorf("%w: not connected to NATS (%s)", ErrNoMirage, g.nc.Status())
	}
	// A new store that has not learnt born yet looks at cmd.<id> first: once this Ghost is
	// registered, its own record in edge_ghosts reads as a trace of an earlier Ghost.
	g.lookBeforeTrace(ctx)
	reg := bus.Register{
		Header:  bus.NewHeader(bus.TypeRegister, "", g.cfg.Now()),
		GhostID: g.cfg.ID,
		Version: g.cfg.Version,
		Labels:  g.cfg.Labels,
		Seeds:   g.registry.Infos(),
	}
	data, err := bus.Encode(&reg)
	if err != nil {
		return err
	}
	conn := g.link.current()
	if conn == nil {
		return fmt.Errorf("%w: not connected to NATS (%s)", ErrNoMirage, g.nc.Status())
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.RegisterTimeout)
	defer cancel()
	// A register.ack cannot come over a connection lost meanwhile: stop waiting then, so
	// that a retry (registerRequired's next try, the reconnect's registerAgain) asks again
	// on the next one rather than after the register timeout.
	defer context.AfterFunc(conn, cancel)()
	sent := g.cfg.Now()
	reply, err := g.request(ctx, bus.NewMsg(subjects.Register(g.cfg.ID), data, "", reg.TraceID))
	received := g.cfg.Now()
	if !errors.Is(err, nats.ErrNoResponders) {
		// A Mirage may have it, and record this Ghost in edge_ghosts; with no responders
		// none did (born.go). A look at the trace taken while the request was out may find
		// this record and take it for an earlier Ghost's: 1700 where a command could have
		// run, never a command run that may have run before.
		g.traceLeft.Store(true)
	}
	if err != nil {
		if conn.Err() != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			return fmt.Errorf("%w: the connection was lost before register.ack (%v)", ErrNoMirage, err)
		}
		if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("%w: %v", ErrNoMirage, err)
		}
		return err
	}
	var ack bus.RegisterAck
	if err := bus.Decode(reply.Data, &ack); err != nil {
		return fmt.Errorf("malformed register.ack: %w", err)
	}
	if ack.Status != bus.RegisterAccepted {
		g.rejected(ack.Reason)
		return fmt.Errorf("%w: %s", ErrRegistrationRejected, ack.Reason)
	}
	g.learnMirageClock(ack.TimestampMS, sent, received)
	g.mu.Lock()
	g.registered = true
	g.lastRejection = ""
	g.mu.Unlock()
	g.requestResend(true) // a Mirage is there to count and acknowledge them
	g.log.Info("registered with Mirage", "direction", "out", "message_type", bus.TypeRegister, "seeds", len(reg.Seeds))
	return nil
}

// rejected notes a rejected registration: Mirage holds no record of this Ghost now (a
// revoked Ghost, still admitted by a server whose auth config is stale, is rejected so).
// Unless headless (which waits for the next attach) it stops its heartbeats, which Mirage
// would ignore, and asks again at each heartbeat tick (heartbeats): back within one once
// enrolled again, and never faster than that. The rejection is logged as a warning once
// for each reason, not at every try.
func (g *Ghost) rejected(reason string) {
	g.mu.Lock()
	if g.cfg.Policy != PolicyHeadless {
		g.registered = false
	}
	repeat := g.lastRejection == reason
	g.lastRejection = reason
	g.mu.Unlock()
	if !repeat {
		g.log.Warn("registration rejected by Mirage; not in its registry until accepted", "direction", "in", "message_type", bus.TypeRegisterAck, "policy", g.cfg.Policy, "reason", reason)
	}
}

// request sends msg and returns the first message of its answer. On a server that
// requires authentication it is received on the Ghost's own long-lived inbox
// (bus.Answers), whatever the connection's inbox prefix: Mirage answers a Ghost nowhere
// else there (its reply guard), and a subscription made at start is known across a
// cluster before the request is. Without authentication the connection's own request
// inbox serves, which its event publishes use as well.
func (g *Ghost) request(ctx context.Context, msg *nats.Msg) (*nats.Msg, error) {
	if !g.nc.AuthRequired() {
		return g.nc.RequestMsgWithContext(ctx, msg)
	}
	answers, err := g.answerSubscription()
	if err != nil {
		return nil, err
	}
	box := answers.Open(4)
	defer box.Close()
	msg.Reply = box.Inbox
	if err := g.nc.PublishMsg(msg); err != nil {
		return nil, err
	}
	return box.Next(ctx)
}

// registerRequired retries registration until the register timeout, then gives up. Each
// try waits a third of it (at least a second): a register.ack lost on the way (the
// answer to a first request can beat the interest in its inbox across a cluster) is
// asked for again, not waited for until the Ghost gives up. Mirage answers a
// registration's earlier requests with its outcome, so a slow ack still arrives.
func (g *Ghost) registerRequired(ctx context.Context) error {
	deadline := time.Now().Add(g.cfg.RegisterTimeout)
	try := max(g.cfg.RegisterTimeout/3, time.Second)
	var last error
	for time.Now().Before(deadline) {
		end := time.Now().Add(try)
		if end.After(deadline) {
			end = deadline
		}
		tctx, cancel := context.WithDeadline(ctx, end)
		last = g.register(tctx)
		cancel()
		if last == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !errors.Is(last, ErrNoMirage) {
			return last
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("policy is required and %w within %s: is Mirage running and reachable? (%v)", ErrNoMirage, g.cfg.RegisterTimeout, last)
}

// Registered reports whether a Mirage acknowledged this Ghost's registration.
func (g *Ghost) Registered() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.registered
}

// Reregister sends register again now (after the seed list changed, or on attach).
func (g *Ghost) Reregister(ctx context.Context) error { return g.register(ctx) }

// onAnnounce registers again when a Mirage comes up, unless the Ghost is headless.
func (g *Ghost) onAnnounce(msg *nats.Msg) {
	var ann bus.Announce
	if err := bus.Decode(msg.Data, &ann); err != nil {
		g.warnJunk(junkAnnounce, "refused a malformed announce", "direction", "in", "message_type", bus.TypeAnnounce, "err", err)
		return
	}
	g.requestCatchUp() // a Mirage that comes up may have re-dispatched commands
	if ann.EventsLost {
		// EDGE_EVT removed events Mirage had not read: those stored go again under ids
		// of their own (restore).
		g.resendRestore.Store(true)
	}
	g.requestResend(true) // and is there to acknowledge what it has not
	g.registerAgain("a Mirage announce")
}

// registerAgain registers in the background, unless the Ghost is headless and was never
// attached: after a Mirage announce (a new Mirage may not know it), and after a reconnect
// (Mirage may have dropped it meanwhile: revoked, then enrolled again). One registration
// runs at a time: asked again meanwhile, it runs once more when that one ends (the one
// in flight may have been sent before what asked), however often it was asked. A flood
// of announces, which anyone may publish without auth, made a registration each: a
// goroutine, a request to Mirage and a write of the registry per announce.
func (g *Ghost) registerAgain(after string) {
	if g.cfg.Policy == PolicyHeadless && !g.Registered() {
		return
	}
	g.regMu.Lock()
	if g.regRunning {
		g.regAgain = after
		g.regMu.Unlock()
		return
	}
	g.regRunning = true
	g.regMu.Unlock()
	if !g.track() {
		g.regMu.Lock()
		g.regRunning, g.regAgain = false, ""
		g.regMu.Unlock()
		return
	}
	go func() {
		defer g.wg.Done()
		for {
			// Under the serving context: a registration waiting for an answer (under auth an
			// absent Mirage gives none until the register timeout) ends when Close begins.
			if err := g.register(g.serving); err != nil && g.serving.Err() == nil {
				level := slog.LevelWarn
				if errors.Is(err, ErrNoMirage) || errors.Is(err, ErrRegistrationRejected) {
					// No Mirage yet (a server restarting before Mirage resubscribes): its
					// announce will ask again. A rejection is logged by register.
					level = slog.LevelDebug
				}
				g.log.Log(context.Background(), level, "registration after "+after+" failed", "err", err)
			}
			g.regMu.Lock()
			if g.regAgain == "" || g.serving.Err() != nil {
				g.regRunning, g.regAgain = false, ""
				g.regMu.Unlock()
				return
			}
			after, g.regAgain = g.regAgain, ""
			g.regMu.Unlock()
		}
	}()
}

// heartbeats publishes hb.<id> every HeartbeatInterval while registered.
func (g *Ghost) heartbeats() {
	defer g.wg.Done()
	t := time.NewTicker(g.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-g.stopping:
			return
		case <-t.C:
		}
		if !g.nc.IsConnected() {
			continue
		}
		if !g.Registered() {
			// auto keeps trying until a Mirage acknowledges, as does required once started
			// (a registration rejected since: rejected); headless waits for attach.
			if g.cfg.Policy != PolicyHeadless {
				if err := g.register(g.serving); err != nil {
					g.log.Debug("registration retry failed", "err", err)
				}
			}
			continue
		}
		if err := g.beat(false); err != nil {
			g.log.Debug("heartbeat not sent", "err", err)
		}
	}
}

// beat publishes the next heartbeat; leaving marks the last one, after which none is
// sent (a beat racing Close's must not show the Ghost online again).
func (g *Ghost) beat(leaving bool) error {
	g.hbMu.Lock()
	defer g.hbMu.Unlock()
	if g.hbLeft {
		return nil
	}
	g.hbLeft = leaving
	g.hbSeq++
	hb := bus.Heartbeat{Header: bus.NewHeader(bus.TypeHeartbeat, "", g.cfg.Now()), GhostID: g.cfg.ID, Seq: g.hbSeq, Leaving: leaving}
	data, err := bus.Encode(&hb)
	if err != nil {
		return err
	}
	return g.nc.Publish(subjects.Heartbeat(g.cfg.ID), data)
}

// leaveWait bounds how long Close waits for the server to take the leaving heartbeat.
const leaveWait = 500 * time.Millisecond

// sayLeaving tells Mirage, on Close, that this Ghost stops taking commands: a heartbeat
// with leaving set, which Mirage takes as offline at once rather than after its offline
// threshold of silence. It is sent as intake stops, not after the drain: from then on a
// command waits in EDGE_CMD as for any offline Ghost, and a successor of the id (which
// may start once the probes are no longer answered) must not be marked offline by it.
// Best effort and bounded (leaveWait): not registered, not connected, or standing down
// for another instance of the id (which is running), nothing is sent. Commands are not
// affected: Mirage dispatches to an offline Ghost as to any other, and its commands wait.
func (g *Ghost) sayLeaving() {
	if g.Err() != nil || !g.Registered() || !g.nc.IsConnected() {
		return
	}
	if err := g.beat(true); err != nil {
		g.log.Debug("leaving heartbeat not sent", "err", err)
		return
	}
	if err := g.nc.FlushTimeout(leaveWait); err != nil {
		g.log.Debug("leaving heartbeat not confirmed by the server", "err", err)
	}
}

// AttachReply answers an attach request.
type AttachReply struct {
	GhostID string `json:"ghost_id"`
	Status  string `json:"status"` // accepted | rejected
	Reason  string `json:"reason,omitempty"`
}

// onAttach registers the Ghost now, whatever its policy: an operator brings a headless
// Ghost into the registry ('miragectl attach'). From then on it heartbeats and registers
// again when a Mirage announces, as an auto Ghost does.
func (g *Ghost) onAttach(msg *nats.Msg) {
	if reason := g.checkAttach(msg); reason != "" {
		// Not answered: a refused request may be anything that reached the subject (with
		// auth, another Ghost can have its event's publish ack delivered here).
		g.warnJunk(junkAttach, "refused an attach request", "direction", "in", "subject", msg.Subject, "reason", reason)
		return
	}
	// One attach registration at a time: the requests that come while it runs are
	// answered with its outcome (a few; the others time out at Mirage, which says so),
	// not each with a registration of its own.
	g.regMu.Lock()
	if g.attachWaiting != nil {
		if len(g.attachWaiting) < maxAttachWaiting {
			g.attachWaiting = append(g.attachWaiting, msg)
		}
		g.regMu.Unlock()
		return
	}
	g.attachWaiting = []*nats.Msg{msg}
	g.regMu.Unlock()
	if !g.track() {
		g.regMu.Lock()
		g.attachWaiting = nil
		g.regMu.Unlock()
		return
	}
	go func() {
		defer g.wg.Done()
		reply := AttachReply{GhostID: g.cfg.ID, Status: "accepted"}
		ctx, cancel := context.WithTimeout(g.serving, bus.AttachAnswerWithin)
		defer cancel()
		if err := g.register(ctx); err != nil {
			reply.Status, reply.Reason = "rejected", err.Error()
		} else {
			g.log.Info("attached to Mirage on request")
		}
		g.regMu.Lock()
		waiting := g.attachWaiting
		g.attachWaiting = nil
		g.regMu.Unlock()
		data, err := json.Marshal(reply)
		if err != nil {
			return
		}
		for _, m := range waiting {
			if m.Reply != "" {
				_ = m.Respond(data)
			}
		}
	}()
}

// maxAttachWaiting bounds the attach requests one attach registration answers.
const maxAttachWaiting = 16

// checkAttach returns why an attach request is refused, or "" to act on it: it must be
// Mirage's request naming this Ghost ({"ghost_id": …}), signed by a trusted Mirage key
// when the Ghost requires signed commands.
func (g *Ghost) checkAttach(msg *nats.Msg) string {
	if perr := g.checkSignature(msg.Data, msg.Header); perr != nil {
		return perr.Error()
	}
	var req struct {
		GhostID string `json:"ghost_id"`
	}
	if err := json.Unmarshal(msg.Data, &req); err != nil {
		return "not an attach request: " + err.Error()
	}
	if req.GhostID != g.cfg.ID {
		return fmt.Sprintf("it names ghost %q", req.GhostID)
	}
	return ""
}
