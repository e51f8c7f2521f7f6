package mirage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// onEvent is event ingest: decode → check identity → count once by event_id → ack the
// stream message → answer event.ack. A malformed event is terminated, never redelivered.
func (m *Mirage) onEvent(msg jetstream.Msg) {
	// The consumer's Closed channel may report it stopped before this callback returns;
	// what the event sets off (a next wave of commands, a report) must still be waited
	// for by Close.
	if !m.hold() {
		// Closed while the events consumer still hands over what it had (Close drains
		// it): handed back, for the next Mirage, rather than left to the ack wait.
		_ = msg.Nak()
		return
	}
	defer m.wg.Done()
	if !m.awake() {
		// Stood down (awake.go): handed back at once, for the Mirage that stays.
		_ = msg.Nak()
		return
	}
	var stored time.Time // when EDGE_EVT stored the event: it decides whether it is in time
	redelivered := false
	if md, err := msg.Metadata(); err == nil {
		stored, redelivered = md.Timestamp, md.NumDelivered > 1
		// Whatever becomes of the message, once this returns it is read (expiry.go).
		defer m.read.one(md.Sequence.Stream)
		if md.NumDelivered == 1 {
			m.noteDelivered(md.Sequence.Stream)
		}
	}
	var ev bus.Event
	subjectGhost, serr := subjects.GhostFrom(msg.Subject())
	if err := bus.Decode(msg.Data(), &ev); err != nil {
		perr := bus.AsError(err)
		m.refusedEvent(slog.LevelWarn, "refused a malformed event", "direction", "in", "message_type", bus.TypeEvent, "subject", msg.Subject(), "code", perr.Code, "err", perr.Message)
		_ = msg.Term()
		return
	}
	if serr != nil || subjectGhost != ev.GhostID {
		m.refusedEvent(slog.LevelWarn, "refused an event whose ghost_id is not its subject's", "direction", "in", "message_type", bus.TypeEvent, "subject", msg.Subject(), "ghost", ev.GhostID, "event_id", ev.EventID, "code", bus.CodeSecurity)
		_ = msg.Term()
		if serr == nil {
			m.sendAck(subjectGhost, &ev, bus.AckRejected, bus.CodeSecurity)
		}
		return
	}
	if err := m.verifyEvent(&ev, msg.Data(), msg.Headers()); err != nil {
		m.refusedEvent(slog.LevelWarn, "refused an event for security", "direction", "in", "message_type", bus.TypeEvent, "peer", ev.GhostID, "event_id", ev.EventID, "code", bus.CodeSecurity, "err", err)
		_ = msg.Term()
		m.sendAck(ev.GhostID, &ev, bus.AckRejected, bus.CodeSecurity)
		return
	}
	v, code, reason, done := m.ingest(&ev, stored)
	m.cfg.Metrics.event(v, redelivered)
	// The stream ack goes first (progress may wait on the store for a next wave of
	// commands, longer than the consumer's ack wait); the rollout moves, and a terminal
	// report is queued, before the event.ack, which is on no one's path.
	if err := msg.Ack(); err != nil {
		m.log.Debug("stream ack failed; the event will be redelivered and counted once", "event_id", ev.EventID, "err", err)
	}
	if done {
		m.progress(ev.IntentID)
	}
	switch {
	case v == verdictRejected && code == bus.CodeNoResponse:
		// A late or re-sent event of an intent that already ended, or one stored after
		// its intent's cutoff: expected after restarts and outages.
		m.refusedEvent(slog.LevelInfo, "event for an ended intent", "direction", "in", "message_type", bus.TypeEvent, "peer", ev.GhostID, "event_id", ev.EventID, "intent_id", ev.IntentID, "code", code, "reason", reason)
		m.sendAck(ev.GhostID, &ev, bus.AckRejected, code)
	case v == verdictRejected:
		m.refusedEvent(slog.LevelWarn, "event rejected", "direction", "in", "message_type", bus.TypeEvent, "peer", ev.GhostID, "event_id", ev.EventID, "command_id", ev.CommandID, "intent_id", ev.IntentID, "code", code, "reason", reason)
		m.sendAck(ev.GhostID, &ev, bus.AckRejected, code)
	default:
		if m.log.Enabled(context.Background(), slog.LevelDebug) { // the arguments cost an allocation each
			m.log.Debug("event ingested", "direction", "in", "message_type", bus.TypeEvent, "peer", ev.GhostID, "message_id", ev.MessageID, "trace_id", ev.TraceID, "event_id", ev.EventID, "command_id", ev.CommandID, "execution_id", ev.ExecutionID, "intent_id", ev.IntentID, "outcome", ev.Outcome, "duplicate", v == verdictDuplicate)
		}
		m.sendAck(ev.GhostID, &ev, bus.AckAccepted, 0)
	}
}

// refusedEvent logs an event refused or rejected at level, each kind (msg) at most once
// per bus.RateLogEvery with how many it stands for, and at debug level otherwise: any
// Ghost may publish what it likes on its evt.<id>, and a flood of junk must not flood
// the log. The event.ack tells the Ghost each time.
func (m *Mirage) refusedEvent(level slog.Level, msg string, args ...any) {
	m.eventRefusalsMu.Lock()
	rl := m.eventRefusals[msg]
	if rl == nil {
		rl = &bus.RateLog{}
		m.eventRefusals[msg] = rl // a few fixed messages
	}
	m.eventRefusalsMu.Unlock()
	if ok, n := rl.Allow(); ok {
		m.log.Log(context.Background(), level, msg, append(args, "refused_since_last_warning", n)...)
		return
	}
	if m.log.Enabled(context.Background(), slog.LevelDebug) {
		m.log.Debug(msg, args...)
	}
}

// ingest applies an event, stored in EDGE_EVT at stored, to its intent. It returns the
// verdict, the ack code and reason of a rejection, and whether a result was counted (the
// rollout may move). An intent recorded and open but not followed here is taken up first
// (takeUpOnEvent).
func (m *Mirage) ingest(ev *bus.Event, stored time.Time) (verdict, bus.Code, string, bool) {
	if v, code, reason, ok := m.ingestLive(ev, stored); ok {
		return v, code, reason, v == verdictCounted
	}
	if ev.IntentID == "" {
		return verdictRejected, bus.CodeSemantic, "event names no intent", false
	}
	if phase := m.endingPhase(ev.IntentID); phase != "" {
		return verdictRejected, bus.CodeNoResponse, "intent " + ev.IntentID + " already ended " + phase, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rec, err := m.Intent(ctx, ev.IntentID)
	switch {
	case errors.Is(err, ErrIntentNotFound):
		return verdictRejected, bus.CodeSemantic, "unknown intent " + ev.IntentID, false
	case errors.Is(err, ErrBadIntentRecord):
		// Junk in place of the record: the reports still tell whether the intent ended;
		// an open one cannot be followed.
	case err != nil:
		return verdictRejected, bus.CodeInternal, "intent state unavailable", false
	case !bus.Terminal(rec.Phase):
		return m.takeUpOnEvent(ctx, rec, ev, stored)
	default:
		return verdictRejected, bus.CodeNoResponse, "intent " + ev.IntentID + " already ended " + rec.Phase, false
	}
	phase, err := m.reportPhase(ctx, ev.IntentID)
	switch {
	case err != nil:
		return verdictRejected, bus.CodeInternal, "intent state unavailable", false
	case bus.Terminal(phase):
		return verdictRejected, bus.CodeNoResponse, "intent " + ev.IntentID + " already ended " + phase, false
	}
	return verdictRejected, bus.CodeInternal, "intent state unavailable: its record is not valid", false
}

// ingestLive applies ev to its intent if Mirage follows it (ok). An event stored after
// its intent's cutoff is late (1900), whether or not the intent has ended yet: replay
// judges it the same way.
func (m *Mirage) ingestLive(ev *bus.Event, stored time.Time) (v verdict, code bus.Code, reason string, ok bool) {
	m.mu.Lock()
	freed := m.commandEnded(ev)
	li, ok := m.live[ev.IntentID]
	code = bus.CodeSemantic
	if ok && li.storedLate(ev, stored) {
		if i, in := li.index[ev.CommandID]; in {
			li.noteEnded(i, ev)
		}
		v, code, reason = verdictRejected, bus.CodeNoResponse, "stored after the intent's deadline (+"+resultGrace.String()+")"
	} else if ok {
		v, reason = li.apply(ev)
		if v == verdictRejected && li.timedOut(ev) {
			// Expired, its intent not finished yet: answered as it will be once it is.
			code, reason = bus.CodeNoResponse, "its target already ended timeout"
		}
	}
	m.mu.Unlock()
	if freed != nil {
		m.log.Info("lock freed: the timed-out command ended", "lock", freed.key, "intent_id", freed.intentID, "command_id", freed.commandID)
		m.wakeWaiters()
	}
	return v, code, reason, ok
}

// takeUpOnEvent takes up, on one of its events, an intent recorded (rec) and open by its
// record but not followed here: one a Mirage accepted and stopped following without
// ending it (stood down after it was resumed, say). The id is claimed as an issue sent
// again would claim it, and whether the intent ended is read under the claim; an open
// one is taken up (takeUp) and ev applied to it as to any followed intent, its rollout
// waiting for the rebuild, which runs in a goroutine of its own: it replays the intent's
// streams, and the events consumer, on whose callback this runs, must not wait for it.
// Events that follow find the intent live. The rebuild's replay reads ev again (EDGE_EVT
// stored it), a duplicate of the result counted here.
func (m *Mirage) takeUpOnEvent(ctx context.Context, rec *IntentRecord, ev *bus.Event, stored time.Time) (verdict, bus.Code, string, bool) {
	id := rec.IntentID
	prior, _, err := m.claimIntent(ctx, id)
	if err != nil {
		return verdictRejected, bus.CodeInternal, "intent state unavailable", false
	}
	if prior == nil { // claimed: not followed, no other issue or event taking it up
		phase := m.endingPhase(id)
		if phase == "" {
			phase, err = m.reportPhase(ctx, id)
		}
		switch {
		case err != nil:
			m.unclaim(id)
			return verdictRejected, bus.CodeInternal, "intent state unavailable", false
		case bus.Terminal(phase):
			m.unclaim(id)
			return verdictRejected, bus.CodeNoResponse, "intent " + id + " already ended " + phase, false
		}
		li := m.takeUp(rec, "one of its events came")
		// Not once Mirage stops: the next one takes the intent up (recorded, open).
		m.spawn(func() {
			units := m.rebuild(li)
			m.send(rec, units)
			m.progress(id) // it may have ended already (rebuild)
		})
	}
	if v, code, reason, ok := m.ingestLive(ev, stored); ok {
		return v, code, reason, v == verdictCounted
	}
	// Followed when claimed (prior), and ended since.
	if phase := m.endingPhase(id); phase != "" {
		return verdictRejected, bus.CodeNoResponse, "intent " + id + " already ended " + phase, false
	}
	return verdictRejected, bus.CodeInternal, "intent state unavailable", false
}

func (m *Mirage) sendAck(ghostID string, ev *bus.Event, status string, code bus.Code) {
	ack := bus.EventAck{
		Header:    bus.NewHeader(bus.TypeEventAck, ev.TraceID, m.cfg.Now()),
		EventID:   ev.EventID,
		CommandID: ev.CommandID,
		GhostID:   ghostID,
		AckStatus: status,
		AckCode:   code,
	}
	if subjects.ValidateTraceID(ack.TraceID) != nil {
		ack.TraceID = subjects.NewTraceID()
	}
	if data, err := bus.Encode(&ack); err == nil {
		_ = m.nc.Publish(subjects.Ack(ghostID), data)
	}
}

// Intent reads an intent's record from KV edge_intents.
func (m *Mirage) Intent(ctx context.Context, intentID string) (*IntentRecord, error) {
	return ReadIntent(ctx, m.js, intentID)
}

// ErrBadIntentRecord is returned for a record of edge_intents that is not a valid intent
// record: junk that does not decode, or decodes as something else (a JetStream API answer
// can be stored under any key: see ReadEnrollments), or names another intent.
var ErrBadIntentRecord = errors.New("not a valid intent record")

// ReadIntent reads an intent's record from KV edge_intents. It returns ErrIntentNotFound,
// ErrBadIntentRecord (wrapped, with the reason), or the store's error. The record is read
// as stored (kvLatest): one that reads as a status is junk, not the store's error. On a
// cluster, a none from a replica behind the stream's leader is asked of the leader again.
func ReadIntent(ctx context.Context, js jetstream.JetStream, intentID string) (*IntentRecord, error) {
	return readIntent(ctx, js, intentID, 0)
}

// readIntent is ReadIntent, its record not older than known (a sequence of the key's seen
// already, 0 if none: kvLatest).
func readIntent(ctx context.Context, js jetstream.JetStream, intentID string, known uint64) (*IntentRecord, error) {
	e, err := kvLatest(ctx, js.Conn(), bus.BucketIntents, intentID, known)
	switch {
	case err != nil:
		return nil, err
	case e == nil:
		return nil, ErrIntentNotFound
	}
	var rec IntentRecord
	if err := json.Unmarshal(e.data, &rec); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadIntentRecord, err)
	}
	if err := rec.check(intentID); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadIntentRecord, err)
	}
	if len(rec.Steps) == 0 { // a record written before intents had steps
		rec.Steps = []StepRecord{{Objective: rec.Issue.Objective, Targets: rec.Targets}}
	}
	return &rec, nil
}

// check tells whether rec is a record Mirage wrote for intent key: it names key, and its
// steps cover its targets (newLiveIntent indexes targets by step).
func (rec *IntentRecord) check(key string) error {
	switch {
	case rec.IntentID != key:
		return errors.New("its intent_id is not its key")
	case rec.Issue.IntentID != key:
		return errors.New("its issue's intent_id is not its key")
	case len(rec.Targets) == 0:
		return errors.New("it has no targets")
	case rec.CreatedMS <= 0 || rec.DeadlineMS <= 0:
		return errors.New("it has no creation time or deadline")
	case rec.CreatedMS > maxRecordMS || rec.DeadlineMS < rec.CreatedMS || rec.DeadlineMS-rec.CreatedMS > bus.MaxTimeout:
		// Mirage writes deadline = creation + timeout_ms (at most 24 h). A creation time
		// past year 9999 is no start time JetStream can be asked for: recover's replay from
		// it failed, and Mirage's start with it.
		return fmt.Errorf("its creation time %d and deadline %d are not an intent's (the deadline is at most %d ms after the creation)", rec.CreatedMS, rec.DeadlineMS, bus.MaxTimeout)
	}
	for i, st := range rec.Steps {
		if st.First < 0 || st.First+len(st.Targets) > len(rec.Targets) {
			return fmt.Errorf("step %d is outside the targets", i)
		}
	}
	return nil
}

// maxRecordMS is the latest creation time a record may carry: the end of year 9999, the
// last a JetStream start time (RFC 3339) can say.
const maxRecordMS = 253402300799999

// recover follows again the intents that were open when Mirage stopped: it rebuilds their
// observed state by replaying EDGE_EVT from the oldest one's creation, re-dispatches the
// commands of targets still pending (same command_ids: JetStream and the Ghosts'
// execution stores make that safe), and re-arms their deadlines. It returns a sequence of
// EDGE_EVT up to which no intent followed now or later needs the events consumer to read:
// the last one the replay read, or one EDGE_EVT held before the open intents were listed,
// whichever is higher.
func (m *Mirage) recover(ctx context.Context) (uint64, error) {
	// Taken first: every event up to it is of an intent recorded by then, which the
	// listing finds (followed, replayed below), ended, or taken up later (its own replay).
	info, err := m.evts.Info(ctx)
	if err != nil {
		return 0, err
	}
	before := info.State.LastSeq
	keys, err := kvKeys(ctx, m.js, bus.BucketIntents, m.warnUnreadable)
	if err != nil {
		return 0, err
	}
	ended, err := endedIntents(ctx, m.js, m.warnUnreadable)
	if err != nil {
		return 0, err
	}
	var oldest int64
	followed := 0
	for _, k := range keys {
		key := k.key
		m.mu.Lock()
		m.known.add(key, m.cfg.Now())
		m.mu.Unlock()
		if _, done := ended[key]; done {
			continue
		}
		rec, err := m.readForRecovery(ctx, key, k.seq)
		if err != nil {
			return 0, err
		}
		if rec == nil || bus.Terminal(rec.Phase) {
			continue
		}
		li := newLiveIntent(*rec)
		m.mu.Lock()
		m.live[rec.IntentID] = li
		m.mu.Unlock()
		if followed == 0 || rec.CreatedMS < oldest {
			oldest = rec.CreatedMS
		}
		followed++
	}
	if followed == 0 {
		return before, nil
	}
	start := time.UnixMilli(oldest).Add(-time.Minute)
	// The sent commands first: the replay then knows which refusals are of their bytes.
	if err := m.replaySent(ctx, start, ""); err != nil {
		return 0, err
	}
	replayed, err := m.replay(ctx, start, "")
	if err != nil {
		return 0, err
	}
	// The open intents hold every event stored up to read (the replay read from start
	// through before at least; those stored earlier are older than any of them): none of
	// them is waited for at a cutoff, even those the Mirage before read without
	// acknowledging, which the consumer delivers again only after its ack wait (expiry.go).
	read := max(before, replayed)
	m.read.advance(read)
	m.mu.Lock()
	var ids []string
	for id, li := range m.live {
		li.dirty = true
		li.resume()
		ids = append(ids, id)
		m.arm(li)
	}
	// Locks live in memory only: the intents whose current step had begun (they held its
	// locks) take them first, the others queue in the order they were accepted.
	sort.Slice(ids, func(i, j int) bool {
		a, b := m.live[ids[i]], m.live[ids[j]]
		if sa, sb := a.startedStep(), b.startedStep(); sa != sb {
			return sa
		}
		if a.rec.CreatedMS != b.rec.CreatedMS {
			return a.rec.CreatedMS < b.rec.CreatedMS
		}
		return ids[i] < ids[j]
	})
	// Units that were in flight are dispatched again with the same command ids: the Ghosts'
	// stores turn a repeat into a re-sent event.
	type redo struct {
		rec   IntentRecord
		units []int
	}
	var work []redo
	for _, id := range ids {
		li := m.live[id]
		units, _ := m.advance(li)
		work = append(work, redo{li.rec, units})
	}
	m.mu.Unlock()
	for _, w := range work {
		m.send(&w.rec, w.units)
		m.progress(w.rec.IntentID)
	}
	m.log.Info("recovered open intents", "count", len(work))
	return read, nil
}

// readForRecovery reads the record of an intent for recovery. A record that is not valid
// (ReadIntent) cannot be followed: it is logged and skipped (nil); edge_intents keeps no
// history to fall back on. A store that does not answer
// is retried for a while, then fails the start, rather than leaving an open intent
// without a terminal report.
func (m *Mirage) readForRecovery(ctx context.Context, key string, listed uint64) (*IntentRecord, error) {
	wait := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		rec, err := readIntent(rctx, m.js, key, listed)
		cancel()
		switch {
		case err == nil:
			return rec, nil
		case errors.Is(err, ErrIntentNotFound):
			return nil, nil // deleted since it was listed
		case errors.Is(err, ErrBadIntentRecord):
			m.log.Warn("edge_intents: a key holds no valid intent record; the intent is not recovered", "intent_id", key, "code", bus.CodeInternal, "err", err)
			return nil, nil
		case attempt == 5 || ctx.Err() != nil:
			return nil, fmt.Errorf("read intent %s: %w", key, err)
		}
		m.log.Warn("intent record not readable yet; retrying", "intent_id", key, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// replaySent marks, in the live intents, the units whose command EDGE_CMD has stored
// since start: those were sent before the restart. Without a key only the headers are
// read: a stored command's Nats-Msg-Id is its command_id. With one (auth mode), the
// bodies too: a command signed by Mirage's own key is bytes it sent, and the event_id a
// Ghost's refusal of them would carry is noted as noteSent does, so that such a refusal,
// replayed or still to come, counts as the target's result as it did before the restart.
// Bytes under any other signature, or none, may be anyone's: their refusal stays a
// refusal of a forged copy (liveIntent.apply).
// only, when set, limits it to that intent (rebuild of a taken-up intent).
func (m *Mirage) replaySent(ctx context.Context, start time.Time, only string) error {
	m.mu.Lock()
	owner := map[string]*liveIntent{}
	for id, li := range m.live {
		if only != "" && id != only {
			continue
		}
		for id := range li.index {
			owner[id] = li
		}
	}
	m.mu.Unlock()
	return readStream(ctx, m.js, bus.StreamCommands, jetstream.OrderedConsumerConfig{
		InactiveThreshold: readerIdle,
		DeliverPolicy:     jetstream.DeliverByStartTimePolicy,
		OptStartTime:      &start,
		HeadersOnly:       m.cfg.Identity == nil,
	}, m.warnUnreadable, func(msg jetstream.Msg) {
		id := msg.Headers().Get(bus.HeaderMsgID)
		li, ok := owner[id]
		if !ok {
			return
		}
		u := li.index[id]
		refusal := m.ownRefusal(msg, id, li.rec.Targets[u])
		m.mu.Lock()
		defer m.mu.Unlock()
		if li.sent == nil {
			li.sent = make([]bool, len(li.results))
		}
		li.sent[u] = true
		if refusal != "" {
			li.noteSentRefusal(u, refusal)
		}
	})
}

// ownRefusal returns the event_id of ghostID's refusal for security of the stored command
// msg (Nats-Msg-Id commandID) if Mirage's own key signed its bytes for that command, as
// buildCommand does; "" otherwise, or without a key.
func (m *Mirage) ownRefusal(msg jetstream.Msg, commandID, ghostID string) string {
	if m.cfg.Identity == nil {
		return ""
	}
	own := m.cfg.Identity.PublicKey()
	data := msg.Data()
	if _, err := bus.VerifySignature(data, msg.Headers(), func(signer string) bool { return signer == own }); err != nil {
		return ""
	}
	// The Ghost derives the id from the command_id it reads in the bytes, not a header.
	if bus.ProbeCommand(data).CommandID != commandID {
		return ""
	}
	return bus.RefusalEventID(ghostID, commandID, data)
}

// replay applies every event stored since start to the live intents, except those
// stored after their intent's cutoff (late, as for onEvent: they only note that their
// command ended, noteEnded, as ingest does), and notes in each intent how far it read
// (replayedAt). It returns the stream sequence of the last event it read.
// only, when set, limits it to that intent (rebuild of a taken-up intent): the events of
// other live intents are theirs to count, through the consumer, which moves their rollouts.
func (m *Mirage) replay(ctx context.Context, start time.Time, only string) (uint64, error) {
	var last time.Time
	var lastSeq uint64
	err := readStream(ctx, m.js, bus.StreamEvents, jetstream.OrderedConsumerConfig{
		InactiveThreshold: readerIdle,
		DeliverPolicy:     jetstream.DeliverByStartTimePolicy,
		OptStartTime:      &start,
	}, m.warnUnreadable, func(msg jetstream.Msg) {
		var stored time.Time
		if md, err := msg.Metadata(); err == nil {
			stored, last, lastSeq = md.Timestamp, md.Timestamp, md.Sequence.Stream
		}
		var ev bus.Event
		if bus.Decode(msg.Data(), &ev) != nil || m.verifyEvent(&ev, msg.Data(), msg.Headers()) != nil {
			return
		}
		m.mu.Lock()
		if li, ok := m.live[ev.IntentID]; ok && (only == "" || ev.IntentID == only) {
			if g, err := subjects.GhostFrom(msg.Subject()); err == nil && g == ev.GhostID {
				if !li.storedLate(&ev, stored) {
					li.apply(&ev)
				} else if i, in := li.index[ev.CommandID]; in {
					li.noteEnded(i, &ev) // late, but its command has ended: no linger
				}
			}
		}
		m.mu.Unlock()
	})
	if err != nil {
		return 0, err
	}
	m.mu.Lock()
	for id, li := range m.live {
		if only == "" || id == only {
			li.replayedAt = last
		}
	}
	m.mu.Unlock()
	return lastSeq, nil
}
