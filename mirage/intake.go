package mirage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// maxIntentID leaves room for the derived command ids.
const maxIntentID = 96

// onIssue takes issues in up to cap(m.issues) at once: each waits on the store, and one
// slow intent must not hold the others.
func (m *Mirage) onIssue(msg *nats.Msg) {
	select {
	case m.issues <- struct{}{}:
	case <-m.stop:
		return
	}
	m.spawnHolding(m.issues, func() { m.handleIssue(msg) })
}

// handleIssue is issue intake: decode → validate → resolve targets → record → reply →
// dispatch. A bad issue gets an immediate rejection naming the reason.
func (m *Mirage) handleIssue(msg *nats.Msg) {
	if !m.awake() {
		// Read after this Mirage gave way to another (singleton.go, awake.go): that one
		// takes issues. No answer: the client says none came; nothing is run.
		return
	}
	var is bus.Issue
	reply := func(r *bus.IssueReply) {
		if data, err := bus.Encode(r); err == nil && msg.Reply != "" {
			_ = msg.Respond(data)
		}
	}
	reject := func(err error) {
		perr := bus.AsError(err)
		// The client reads the reason in its answer; the log says it at most once per
		// bus.RateLogEvery (with how many it stands for), so a flood does not flood it.
		level := slog.LevelDebug
		attrs := []any{"direction", "in", "message_type", bus.TypeIssue, "intent_id", is.IntentID, "trace_id", is.TraceID, "code", perr.Code, "err", perr.Message}
		if ok, n := m.issueRefusals.Allow(); ok {
			level = slog.LevelWarn
			attrs = append(attrs, "rejected_issues", n)
		}
		m.log.Log(context.Background(), level, "issue rejected", attrs...)
		reply(&bus.IssueReply{Header: bus.NewHeader(bus.TypeIssueReply, is.TraceID, m.cfg.Now()), IntentID: is.IntentID, Status: "rejected", Error: perr})
	}
	if err := bus.Decode(msg.Data, &is); err != nil {
		if subjects.ValidateTraceID(is.TraceID) != nil {
			is.TraceID = ""
		}
		if subjects.ValidateToken("intent_id", is.IntentID) != nil {
			is.IntentID = ""
		}
		reject(err)
		return
	}
	if is.IntentID == "" {
		is.IntentID = subjects.NewID(subjects.PrefixIntent)
	} else if len(is.IntentID) > maxIntentID {
		reject(bus.FieldError(bus.CodeSemantic, "intent_id", "is %d characters, at most %d are allowed", len(is.IntentID), maxIntentID))
		return
	}
	steps, err := m.plan(&is)
	if err != nil {
		if prior := m.followedAs(&is); prior != nil {
			// A re-sent issue of an intent being followed is accepted again even when
			// the fleet has changed since (a Ghost gone, a seed removed).
			m.log.Info("issue re-sent for a followed intent: accepted again", "intent_id", is.IntentID)
			reply(&bus.IssueReply{Header: bus.NewHeader(bus.TypeIssueReply, is.TraceID, m.cfg.Now()), IntentID: prior.IntentID, Status: "accepted", Targets: prior.Targets})
			return
		}
		reject(err)
		return
	}
	rec, units, record, adopted, err := m.accept(&is, steps)
	if err != nil {
		reject(err)
		return
	}
	accepted := &bus.IssueReply{Header: bus.NewHeader(bus.TypeIssueReply, is.TraceID, m.cfg.Now()), IntentID: rec.IntentID, Status: "accepted", Targets: rec.Targets}
	accepted.Unregistered, accepted.Offline, accepted.Stale = m.absent(rec.Targets)
	if record == nil {
		// The intent is recorded: answer now, then dispatch. A slow store (a stream
		// leader failing over) delays the commands, not the answer; a crash before they
		// are stored is repaired by the next Mirage's recovery.
		reply(accepted)
		if adopted != nil {
			// Taken up: its replay reads every event stored since it was created, which
			// may take longer than the client waits for the answer.
			units = m.rebuild(adopted)
		}
		m.send(rec, units)
		m.progress(rec.IntentID) // a taken-up intent may have ended already (rebuild)
		return
	}
	// A fresh intent: its commands go out first and its record right behind them, so
	// that no command waits for a stored write (the server handles a connection's
	// messages in order). The answer waits for the record.
	futures, perr := m.publish(rec, units)
	recording, err := m.js.PublishMsgAsync(record)
	if err == nil {
		err = m.awaitRecord(recording)
	}
	m.room.noted(err)
	if err == nil {
		m.recorded(rec.IntentID)
	} else {
		// The commands are out and the intent is followed: it goes on, its id stays
		// taken, and its record is stored in the background, so that a restart can take
		// it up.
		m.log.Warn("intent record not stored yet; retrying", "intent_id", rec.IntentID, "err", err)
		m.wg.Add(1)
		go m.recordLater(rec, record)
	}
	reply(accepted)
	m.sendPublished(rec, units, futures, perr)
}

// recordedAlready reads back the record of an intent whose Create failed (createErr): the
// key existed, or the store's answer was lost after it stored the record. It returns the
// record if it is this issue's, and whether the intent is still open (no terminal state);
// an error for the issue's refusal otherwise. A createErr that is a protocol error is the
// refusal of an issue not to be recorded (accept): it stands when no record exists.
func (m *Mirage) recordedAlready(is *bus.Issue, createErr error) (*IntentRecord, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stored, err := m.Intent(ctx, is.IntentID)
	var refusal *bus.Error
	switch {
	case errors.Is(err, ErrIntentNotFound) && errors.As(createErr, &refusal):
		return nil, false, refusal
	case errors.Is(err, ErrIntentNotFound) && noRoom(createErr):
		return nil, false, noRoomRefusal(createErr)
	case errors.Is(err, ErrIntentNotFound) && !errors.Is(createErr, jetstream.ErrKeyExists):
		return nil, false, bus.Errorf(bus.CodeInternal, "record intent: %v", createErr)
	case err != nil:
		return nil, false, bus.Errorf(bus.CodeInternal, "record intent: %v; reading it back: %v; whether it was recorded is unknown: send this issue again, with the same intent_id, to learn", createErr, err)
	case !sameIssue(&stored.Issue, is):
		return nil, false, bus.FieldError(bus.CodeSemantic, "intent_id", "intent %s exists already", is.IntentID)
	case bus.Terminal(stored.Phase), m.endingPhase(is.IntentID) != "":
		// Ended, its terminal report stored or on its way.
		return stored, false, nil
	}
	phase, err := m.reportPhase(ctx, is.IntentID)
	if err != nil {
		return nil, false, bus.Errorf(bus.CodeInternal, "intent %s is recorded; its state is unavailable: %v", is.IntentID, err)
	}
	return stored, !bus.Terminal(phase), nil
}

// takeUp follows an open intent that is recorded but not followed, as a restarted Mirage
// takes up the intents it finds open: one whose issue was refused when the store's answer
// to its record was lost (recordedAlready, when the issue is sent again), or one a Mirage
// that stood down had accepted (takeUpOnEvent, when one of its events comes). It ends the
// id's claim, which the caller holds: an issue sent again meanwhile is compared with the
// live intent, an event applied to it. The caller then calls rebuild. why says what
// brought the intent up, for the log.
func (m *Mirage) takeUp(rec *IntentRecord, why string) *liveIntent {
	li := newLiveIntent(*rec)
	li.adopting = true // counted events wait for the rebuild to move the rollout
	m.mu.Lock()
	m.release(rec.IntentID)
	m.live[rec.IntentID] = li
	tookUp := m.tookUp
	m.mu.Unlock()
	if tookUp != nil {
		tookUp(li)
	}
	m.log.Warn("intent recorded and open but not followed: taking it up", "intent_id", rec.IntentID, "why", why)
	return li
}

// rebuild ends takeUp: the events and sent commands stored since the intent was created
// are replayed, the rollout rebuilt, the deadline armed. It returns the units to dispatch
// now: none once Mirage is stopping (Close ends the replay; the next Mirage takes the
// intent up, as it is open and recorded).
func (m *Mirage) rebuild(li *liveIntent) []int {
	rec := &li.rec
	ctx, cancel := context.WithTimeout(m.running, 30*time.Second)
	defer cancel()
	// Units found neither way are dispatched again under their command ids: a Ghost that
	// ran one re-sends its terminal event instead of running it again.
	start := time.UnixMilli(rec.CreatedMS).Add(-time.Minute)
	// The sent commands first: the replay then knows which refusals are of their bytes.
	sentErr := m.replaySent(ctx, start, rec.IntentID)
	_, replayErr := m.replay(ctx, start, rec.IntentID)
	select {
	case <-m.stop:
		return nil
	default:
	}
	if replayErr != nil {
		m.log.Warn("replaying the events of a taken-up intent failed; its targets are asked again", "intent_id", rec.IntentID, "err", replayErr)
	}
	if sentErr != nil {
		m.log.Warn("reading the sent commands of a taken-up intent failed", "intent_id", rec.IntentID, "err", sentErr)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	li.adopting = false
	li.dirty = true
	li.resume()
	m.arm(li)
	units, _ := m.advance(li)
	return units
}

// followedAs returns the record of the live (or not yet recorded) intent is was sent for,
// if is is the same issue sent again; nil otherwise.
func (m *Mirage) followedAs(is *bus.Issue) *IntentRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec := m.unrecorded[is.IntentID]
	if li, ok := m.live[is.IntentID]; ok {
		rec = &li.rec
	}
	if rec == nil || !sameIssue(&rec.Issue, is) {
		return nil
	}
	cp := *rec
	return &cp
}

// recorded ends the reservation of a fresh intent's id once the store holds its record.
func (m *Mirage) recorded(intentID string) {
	m.mu.Lock()
	delete(m.unrecorded, intentID)
	m.mu.Unlock()
}

// recordLater stores a fresh intent's record, with backoff, until the store holds it or
// Mirage stops (after one last try). A wrong-last-sequence answer means a record exists:
// this one, stored by an attempt whose answer was lost, or another intent's (only
// possible with a second Mirage), which is logged as a conflict.
func (m *Mirage) recordLater(rec *IntentRecord, record *nats.Msg) {
	defer m.wg.Done()
	defer m.recorded(rec.IntentID)
	wait := 250 * time.Millisecond
	for last := false; ; {
		select {
		case <-m.stop:
			last = true
		case <-time.After(wait):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := m.js.PublishMsg(ctx, record)
		m.room.noted(err)
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			stored, rerr := m.Intent(ctx, rec.IntentID)
			switch {
			case rerr == nil && sameIssue(&stored.Issue, &rec.Issue):
				err = nil
			case rerr == nil:
				m.log.Error("intent id conflict: edge_intents holds another intent under this id (is a second Mirage running?)", "intent_id", rec.IntentID)
				cancel()
				return
			}
		}
		cancel()
		if err == nil {
			m.log.Info("intent record stored on retry", "intent_id", rec.IntentID)
			// Its record ages from now, maybe long after claimIntent added its id.
			m.mu.Lock()
			m.known.add(rec.IntentID, m.cfg.Now())
			m.mu.Unlock()
			return
		}
		if last {
			m.log.Error("intent record never stored; a restart will not take the intent up", "intent_id", rec.IntentID, "err", err)
			return
		}
		m.log.Warn("intent record not stored yet; retrying", "intent_id", rec.IntentID, "err", err)
		wait = min(wait*2, 5*time.Second)
	}
}

// awaitRecord waits for the store's answer to an intent record published with
// PublishMsgAsync.
func (m *Mirage) awaitRecord(f jetstream.PubAckFuture) error {
	t := time.NewTimer(recordAnswerWait)
	defer t.Stop()
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-t.C:
		return fmt.Errorf("no answer from the store within %s", recordAnswerWait)
	}
}

// freshRecord is the message that stores a fresh intent's record, under Create's
// condition: no entry for the key yet.
func freshRecord(intentID string, data []byte) *nats.Msg {
	record := nats.NewMsg("$KV." + bus.BucketIntents + "." + intentID)
	record.Data = data
	record.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	return record
}

// recordFirst stores a fresh intent's record before any of its commands leave, while the
// store refuses writes for want of room (storeroom.go). It reports whether the record is
// stored; the store's refusal for want of room is the issue's refusal (1501), nothing sent.
// Any other failure (no answer in time) leaves the record to intake's usual path, which
// sends it again under the same condition: a record stored meanwhile is found there
// (recordLater).
func (m *Mirage) recordFirst(ctx context.Context, intentID string, data []byte) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, recordFirstWait)
	defer cancel()
	_, err := m.js.PublishMsg(ctx, freshRecord(intentID, data))
	m.room.noted(err)
	switch {
	case err == nil:
		m.log.Info("the store takes writes again: intake sends a fresh intent's commands first again", "intent_id", intentID)
		return true, nil
	case noRoom(err):
		return false, noRoomRefusal(err)
	}
	return false, nil
}

// recordFirstWait bounds recordFirst's wait: a store refuses a write for want of room at
// once, and one that does not answer in time leaves the record to intake's usual path,
// whose own wait (recordAnswerWait) must still end before the client's IssueTimeout.
const recordFirstWait = 1500 * time.Millisecond

// noRoomRefusal is the refusal of an issue the store has no room to record.
func noRoomRefusal(err error) *bus.Error {
	return bus.Errorf(bus.CodeBusy, "the JetStream store has no room left (%v): the intent was not recorded and nothing was sent; free space in the store (or give JetStream more: max_file_store) and issue again", err)
}

// recordAnswerWait bounds the wait for a fresh intent's record before the issue is
// answered: well under the client's IssueTimeout, so that a slow store (a stream leader
// failing over) delays the record (stored in the background, recordLater), not the
// answer. A client that got no answer would report no Mirage while the commands are out,
// and an operator issuing again would run them twice.
const recordAnswerWait = 3 * time.Second

// sameIssue reports whether two issues ask for the same thing (a client re-sending an
// issue whose answer it did not get).
func sameIssue(a, b *bus.Issue) bool {
	x, _ := json.Marshal([]any{a.Actor, a.TargetScope, a.Objective, a.Plan, a.MaxConcurrency, a.MaxErrors, a.TimeoutMS})
	y, _ := json.Marshal([]any{b.Actor, b.TargetScope, b.Objective, b.Plan, b.MaxConcurrency, b.MaxErrors, b.TimeoutMS})
	return string(x) == string(y)
}

// maxUnits bounds the commands one intent may carry (steps × targets).
const maxUnits = 100_000

// plan resolves the steps of an issue: its objective on its scope, or each step of its
// plan on the step's own scope (default: the issue's).
func (m *Mirage) plan(is *bus.Issue) ([]StepRecord, error) {
	if len(is.Plan) == 0 {
		targets, err := m.resolve(is.TargetScope, is.Objective)
		if err != nil {
			return nil, err
		}
		return []StepRecord{{Objective: is.Objective, Targets: targets}}, nil
	}
	steps := make([]StepRecord, 0, len(is.Plan))
	first := 0
	for i, ps := range is.Plan {
		scope := ps.TargetScope
		if scope == "" {
			scope = is.TargetScope
		}
		obj := bus.Objective{SeedSelector: ps.SeedSelector, Operation: ps.Operation, Args: ps.Args}
		targets, err := m.resolve(scope, obj)
		if err != nil {
			perr := bus.AsError(err)
			return nil, bus.FieldError(perr.Code, fmt.Sprintf("plan[%d]", i), "step %d%s: %s", i+1, stepName(StepRecord{Name: ps.Name}), perr.Message)
		}
		steps = append(steps, StepRecord{Name: ps.Name, Objective: obj, Targets: targets, Blocking: ps.Blocking, First: first})
		first += len(targets)
	}
	return steps, nil
}

// accept records the intent and starts following it; it returns the units its rollout
// allows to start now. For a fresh intent id (freshIntent) the record is not stored yet:
// it is returned, for the caller to publish once the commands are out. A known id is
// recorded first, and a re-sent issue accepted again with no units; one whose intent is
// recorded, open and not followed is taken up (adopted), for the caller to rebuild.
func (m *Mirage) accept(is *bus.Issue, steps []StepRecord) (_ *IntentRecord, _ []int, record *nats.Msg, adopted *liveIntent, _ error) {
	now := m.cfg.Now()
	rec := &IntentRecord{
		IntentID:   is.IntentID,
		Issue:      *is,
		Steps:      steps,
		CreatedMS:  now.UnixMilli(),
		DeadlineMS: now.Add(time.Duration(is.TimeoutMS) * time.Millisecond).UnixMilli(),
		Phase:      bus.PhasePending,
	}
	widest := 0
	for _, st := range steps {
		rec.Targets = append(rec.Targets, st.Targets...)
		widest = max(widest, len(st.Targets))
	}
	if len(rec.Targets) > maxUnits {
		return nil, nil, nil, nil, bus.FieldError(bus.CodeSemantic, "target_scope", "%d commands in one intent; at most %d", len(rec.Targets), maxUnits)
	}
	var err error
	if rec.MaxConcurrency, err = bus.ParseLimit(is.MaxConcurrency, widest, 0); err != nil {
		return nil, nil, nil, nil, bus.FieldError(bus.CodeSemantic, "max_concurrency", "%v", err)
	}
	if is.MaxConcurrency != "" && rec.MaxConcurrency == 0 {
		rec.MaxConcurrency = 1 // "0%" of a small fleet still lets the rollout move
	}
	if rec.MaxErrors, err = bus.ParseLimit(is.MaxErrors, widest, -1); err != nil {
		return nil, nil, nil, nil, bus.FieldError(bus.CodeSemantic, "max_errors", "%v", err)
	}
	rec.DeliverByMS = rec.DeadlineMS
	switch {
	case is.DeliverWithinMS > 0:
		// A duration, counted on Mirage's clock: the sender's may be minutes off it. In
		// milliseconds: as a time.Duration, one over 292 years wrapped negative, and
		// every command of the intent was expired before it was sent.
		if is.DeliverWithinMS < rec.DeadlineMS-now.UnixMilli() {
			rec.DeliverByMS = now.UnixMilli() + is.DeliverWithinMS
		}
	case is.DeliverByMS > 0 && is.DeliverByMS < rec.DeadlineMS:
		rec.DeliverByMS = is.DeliverByMS
	}
	data := rec.appendJSON(make([]byte, 0, 1024+48*len(rec.Targets)))
	if len(data) > bus.MaxEnvelope {
		return nil, nil, nil, nil, bus.Errorf(bus.CodeSemantic, "the intent's record would be %d bytes (%d targets), over the %d limit of a stored message: too large to record", len(data), len(rec.Targets), bus.MaxEnvelope)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	prior, fresh, err := m.claimIntent(ctx, rec.IntentID)
	switch {
	case err != nil:
		return nil, nil, nil, nil, err
	case prior != nil:
		if sameIssue(&prior.Issue, is) {
			m.log.Info("issue re-sent for a followed intent: accepted again", "intent_id", rec.IntentID)
			return prior, nil, nil, nil, nil
		}
		return nil, nil, nil, nil, bus.FieldError(bus.CodeSemantic, "intent_id", "intent %s exists already", rec.IntentID)
	}
	// Refused for a new intent only: a re-sent issue of an accepted one is answered as
	// before, whatever the time.
	var late error
	recordedFirst := false
	if is.DeliverByMS > 0 && is.DeliverWithinMS == 0 && is.DeliverByMS <= now.UnixMilli() {
		late = bus.FieldError(bus.CodeSemantic, "deliver_by_ms", "%d is not in the future (Mirage's clock: %d); it is unix milliseconds", is.DeliverByMS, now.UnixMilli())
	}
	switch {
	case late != nil && fresh:
		m.unclaim(rec.IntentID)
		return nil, nil, nil, nil, late
	case late != nil:
		// A known id: nothing new is recorded; the issue is answered as its intent's if
		// one is recorded under the id, refused otherwise (recordedAlready).
		err = late
	case !fresh:
		_, err = m.intents.Create(ctx, rec.IntentID, data)
		m.room.noted(err)
	case m.room.refusing():
		// The store refused a write for want of room: the record first, and the issue
		// refused with nothing sent if the store refuses it too (storeroom.go).
		if recordedFirst, err = m.recordFirst(ctx, rec.IntentID, data); err != nil {
			m.unclaim(rec.IntentID)
			return nil, nil, nil, nil, err
		}
	}
	if fresh && !recordedFirst {
		record = freshRecord(rec.IntentID, data)
	} else if err != nil {
		stored, open, err := m.recordedAlready(is, err)
		if err != nil || !open {
			m.unclaim(rec.IntentID)
			if err != nil {
				return nil, nil, nil, nil, err
			}
			m.log.Info("issue re-sent for a recorded intent: accepted again", "intent_id", rec.IntentID)
			return stored, nil, nil, nil, nil
		}
		return stored, nil, nil, m.takeUp(stored, "its issue was sent again"), nil
	}
	li := newLiveIntent(*rec)
	m.mu.Lock()
	m.release(rec.IntentID)
	if record != nil {
		m.unrecorded[rec.IntentID] = rec
	}
	m.live[rec.IntentID] = li
	m.arm(li)
	units, _ := m.advance(li)
	li.dirty = li.waiting != "" // the first report comes with results, or says why it waits
	m.mu.Unlock()
	m.log.Info("intent accepted", "direction", "in", "peer", is.Actor, "message_type", bus.TypeIssue, "message_id", is.MessageID, "intent_id", rec.IntentID, "trace_id", is.TraceID, "actor", is.Actor, "targets", len(rec.Targets), "steps", len(steps), "seed", steps[0].Objective.SeedSelector, "operation", steps[0].Objective.Operation)
	return rec, units, record, nil, nil
}

// claimIntent waits until no other issue is being accepted under intentID and claims the
// id for this one; the claim ends when accept follows the intent or gives up (release).
// When the id belongs to a live intent, or to one whose record the store has not confirmed
// yet, it returns that intent's record instead and claims nothing: the issue is compared
// with it in memory. fresh says the id is new: not in
// edge_intents (known tells most new ids apart at once; for the others, about 1%, the
// store is read). Only for a fresh id may commands leave before the record is stored:
// the command ids derive from the intent id, and commands of a second issue under a
// recorded id must never leave.
func (m *Mirage) claimIntent(ctx context.Context, intentID string) (prior *IntentRecord, fresh bool, err error) {
	for {
		m.mu.Lock()
		if li, ok := m.live[intentID]; ok {
			rec := li.rec
			m.mu.Unlock()
			return &rec, false, nil
		}
		if rec, ok := m.unrecorded[intentID]; ok {
			m.mu.Unlock()
			return rec, false, nil
		}
		claim, claimed := m.claimed[intentID]
		if !claimed {
			break // m.mu held
		}
		m.mu.Unlock()
		select {
		case <-claim:
		case <-ctx.Done():
			return nil, false, bus.Errorf(bus.CodeInternal, "another issue under intent_id %s is still being accepted", intentID)
		}
	}
	now := m.cfg.Now()
	maybeRecorded := m.known.mayHave(intentID, now)
	m.claimed[intentID] = make(chan struct{})
	m.known.add(intentID, now)
	m.mu.Unlock()
	if !maybeRecorded {
		return nil, true, nil
	}
	// A direct get (jetstream's KV Get): on a cluster, any replica of edge_intents may
	// answer, one behind the leader too, which does not hold a record stored a moment
	// ago. Its none would let the commands of a second issue under a recorded id leave,
	// so the stream's leader confirms it; a record found needs no more (Create, which the
	// leader runs, refuses it anyway).
	_, err = m.intents.Get(ctx, intentID)
	if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, false, nil
	}
	sm, err := msgGet(ctx, m.nc, "KV_"+bus.BucketIntents, msgGetRequest{LastFor: "$KV." + bus.BucketIntents + "." + intentID})
	return nil, err == nil && (sm == nil || kvDeleted(sm.header)), nil
}

func (m *Mirage) unclaim(intentID string) {
	m.mu.Lock()
	m.release(intentID)
	m.mu.Unlock()
}

// release ends the claim on a fresh intent id. Called with m.mu held.
func (m *Mirage) release(intentID string) {
	if claim, ok := m.claimed[intentID]; ok {
		close(claim)
		delete(m.claimed, intentID)
	}
}

// send dispatches units; on failure it keeps retrying in the background with the same
// command_ids until they are stored or the intent ends (and again at Mirage's next start).
func (m *Mirage) send(rec *IntentRecord, units []int) {
	if len(units) == 0 {
		return
	}
	// Bounded, so a stream without a leader does not hold intake: what is not stored by
	// then is re-sent in the background under the same command ids. Ended by Close, which
	// waits for it: the next Mirage dispatches again what was not confirmed.
	ctx, cancel := context.WithTimeout(m.running, 5*time.Second+time.Duration(len(units))*time.Millisecond)
	defer cancel()
	futures, err := m.publish(rec, units)
	m.complete(ctx, rec, units, futures, err)
}

// sendPublished is send for commands already published (futures, one per unit until
// publishErr stopped publish).
func (m *Mirage) sendPublished(rec *IntentRecord, units []int, futures []jetstream.PubAckFuture, publishErr error) {
	if len(units) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(m.running, 5*time.Second+time.Duration(len(units))*time.Millisecond)
	defer cancel()
	m.complete(ctx, rec, units, futures, publishErr)
}

// complete waits for the store's answers to published commands and re-sends, in the
// background, every one it did not confirm, so that each command ends up in EDGE_CMD
// even when its Ghost got it (and answered) while the store could not take it.
func (m *Mirage) complete(ctx context.Context, rec *IntentRecord, units []int, futures []jetstream.PubAckFuture, publishErr error) {
	unstored, err := m.await(ctx, rec, units, futures)
	if publishErr != nil {
		err = publishErr
	}
	select {
	case <-m.stop:
		m.lastDispatch(rec, unstored)
		return
	default:
	}
	if len(unstored) > 0 {
		m.log.Warn("dispatch incomplete; retrying", "intent_id", rec.IntentID, "commands", len(unstored), "err", err)
		m.wg.Add(1)
		go m.redispatch(rec, unstored)
	}
}

// lastDispatch gives the commands of units not confirmed stored when Mirage stops one
// last try within the stop budget (the same command_ids: stored once whatever happened).
// The next Mirage dispatches again only the commands of intents still open: a command its
// Ghost got live and answered while the store could not take it, its intent ended
// meanwhile, would otherwise never be in EDGE_CMD (seen in a chaos run on a 3-node
// cluster, Mirage restarted 2 s after such an intent ended).
func (m *Mirage) lastDispatch(rec *IntentRecord, units []int) {
	if len(units) == 0 || m.cfg.Now().UnixMilli() > rec.DeliverByMS {
		return
	}
	ctx, cancel := context.WithTimeout(m.budget, 5*time.Second)
	defer cancel()
	unstored, err := m.dispatch(ctx, rec, units)
	if len(unstored) > 0 {
		m.log.Warn("Mirage stopping: commands not stored; the next Mirage dispatches them again if their intent is open", "intent_id", rec.IntentID, "commands", len(unstored), "err", err)
	}
}

// step returns the step unit u belongs to (the whole intent for a record written before
// intents had steps).
func (rec *IntentRecord) step(u int) StepRecord {
	for i := len(rec.Steps) - 1; i >= 0; i-- {
		if u >= rec.Steps[i].First {
			return rec.Steps[i]
		}
	}
	if len(rec.Steps) == 0 {
		return StepRecord{Objective: rec.Issue.Objective, Targets: rec.Targets}
	}
	return rec.Steps[0]
}

// dispatch publishes the commands of the given units into EDGE_CMD (Nats-Msg-Id =
// command_id), all in flight at once, and waits for every publish ack.
func (m *Mirage) dispatch(ctx context.Context, rec *IntentRecord, units []int) (unstored []int, err error) {
	futures, perr := m.publish(rec, units)
	unstored, err = m.await(ctx, rec, units, futures)
	if perr != nil {
		err = perr
	}
	return unstored, err
}

// publishChunk is how many commands publish builds before sending them: a large fan-out's
// first commands leave while the rest are built, rather than after all of them are.
const publishChunk = 256

// publish sends the commands of units into EDGE_CMD without waiting for the store. It
// returns one future per unit, in order, until an error stopped it.
func (m *Mirage) publish(rec *IntentRecord, units []int) ([]jetstream.PubAckFuture, error) {
	futures := make([]jetstream.PubAckFuture, 0, len(units))
	msgs := make([]*nats.Msg, 0, min(len(units), publishChunk))
	refusals := make([]string, 0, cap(msgs))
	for len(units) > 0 {
		chunk := units[:min(len(units), publishChunk)]
		units = units[len(chunk):]
		msgs, refusals = msgs[:0], refusals[:0]
		now := m.cfg.Now()
		var buildErr error
		for _, i := range chunk {
			msg, refusal, err := m.buildCommand(rec, i, now)
			if err != nil {
				buildErr = err
				break
			}
			msgs = append(msgs, msg)
			refusals = append(refusals, refusal)
		}
		// Before the commands leave: a Ghost may answer before publish returns.
		m.noteSent(rec.IntentID, chunk[:len(msgs)], refusals)
		for _, msg := range msgs {
			f, err := m.js.PublishMsgAsync(msg)
			if err != nil {
				return futures, fmt.Errorf("publish command %s: %w", msg.Header.Get(bus.HeaderMsgID), err)
			}
			futures = append(futures, f)
		}
		if buildErr != nil {
			return futures, buildErr
		}
	}
	return futures, nil
}

// buildCommand returns the message of unit i's command as sent at now, and the event_id
// a Ghost's refusal of these very bytes would carry (noteSent).
func (m *Mirage) buildCommand(rec *IntentRecord, i int, now time.Time) (*nats.Msg, string, error) {
	g := rec.Targets[i]
	obj := rec.step(i).Objective
	cmd := bus.Command{
		Header:       bus.NewHeader(bus.TypeCommand, rec.Issue.TraceID, now),
		CommandID:    CommandID(rec.IntentID, i),
		IntentID:     rec.IntentID,
		GhostID:      g,
		SeedSelector: obj.SeedSelector,
		Operation:    obj.Operation,
		Args:         obj.Args,
		DeliverByMS:  rec.DeliverByMS,
		TimeoutMS:    commandTimeout(rec, now),
	}
	if cmd.Args == nil {
		cmd.Args = map[string]string{}
	}
	data, err := bus.Encode(&cmd)
	if err != nil {
		return nil, "", err
	}
	msg := bus.NewMsg(subjects.Command(g), data, cmd.CommandID, cmd.TraceID)
	if m.cfg.Identity != nil {
		if err := bus.SignMsg(msg, m.cfg.Identity); err != nil {
			return nil, "", fmt.Errorf("sign command %s: %w", cmd.CommandID, err)
		}
	}
	return msg, bus.RefusalEventID(g, cmd.CommandID, data), nil
}

// noteSent records, for the units published, the event_id a Ghost's refusal for security
// of these very bytes would carry: such a refusal is genuine (the Ghost refused what
// Mirage sent, a trust list or clock gone wrong) and settles the unit at once, where a
// refusal of anything else under its command_id (a forged copy) does not (apply).
func (m *Mirage) noteSent(intentID string, units []int, refusals []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	li, ok := m.live[intentID]
	if !ok {
		return
	}
	for k, id := range refusals {
		li.noteSentRefusal(units[k], id)
	}
}

// commandTimeout is the timeout_ms of a command sent at now: the intent's timeout, cut to
// what is left of the intent's deadline, so that a unit of a later wave cannot run past
// it (Mirage would report it timeout and let a blocking step's lock go while it still
// runs). At least 1 ms: a command sent at the deadline times out at once.
func commandTimeout(rec *IntentRecord, now time.Time) int64 {
	left := rec.DeadlineMS - now.UnixMilli()
	return max(1, min(rec.Issue.TimeoutMS, left))
}

// await waits for the store's answer to the publishes of units (futures[i] is units[i]'s;
// units past the futures were never published) and returns the units not confirmed
// stored, with the first error.
func (m *Mirage) await(ctx context.Context, rec *IntentRecord, units []int, futures []jetstream.PubAckFuture) (unstored []int, first error) {
	stored, refused := 0, false
	defer func() {
		switch {
		case refused:
			m.room.noted(first)
		case stored > 0:
			m.room.noted(nil)
		}
	}()
	for i, f := range futures {
		var err error
		select {
		case <-f.Ok():
			stored++
			continue
		case err = <-f.Err():
			refused = refused || noRoom(err)
			err = fmt.Errorf("command %s not stored: %w", f.Msg().Header.Get(bus.HeaderMsgID), err)
		case <-ctx.Done():
			err = ctx.Err()
		}
		unstored = append(unstored, units[i])
		if first == nil {
			first = err
		}
	}
	unstored = append(unstored, units[len(futures):]...)
	m.noteUnstored(rec.IntentID, units, unstored, first)
	m.cfg.Metrics.dispatch(stored)
	if len(unstored) == 0 {
		if m.log.Enabled(context.Background(), slog.LevelDebug) { // the arguments cost an allocation each
			m.log.Debug("commands stored", "direction", "out", "message_type", bus.TypeCommand, "intent_id", rec.IntentID, "count", len(futures))
		}
	}
	return unstored, first
}

// noteUnstored records, on the live intent, which of units have their command not
// confirmed stored (unstored, with why) and forgets the others (expire).
func (m *Mirage) noteUnstored(intentID string, units, unstored []int, why error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	li, ok := m.live[intentID]
	if !ok || (len(li.unstored) == 0 && len(unstored) == 0) {
		return
	}
	for _, u := range units {
		delete(li.unstored, u)
	}
	if len(unstored) == 0 {
		return
	}
	if li.unstored == nil {
		li.unstored = map[int]string{}
	}
	reason := "no answer from the store"
	if why != nil {
		reason, _ = bus.Cut(why.Error(), 512)
	}
	for _, u := range unstored {
		li.unstored[u] = reason
	}
}

// redispatch re-sends the commands of units, with backoff, until they are stored, their
// deliver_by passes, or Mirage stops. The same command_ids make it duplicate-safe: a
// Ghost that got a command already answers it again from its execution store.
func (m *Mirage) redispatch(rec *IntentRecord, units []int) {
	defer m.wg.Done()
	wait := 250 * time.Millisecond
	for len(units) > 0 {
		select {
		case <-m.stop:
			m.lastDispatch(rec, units)
			return
		case <-time.After(wait):
		}
		if m.cfg.Now().UnixMilli() > rec.DeliverByMS {
			m.log.Warn("commands never stored before their deliver_by; their targets time out unless they answered", "intent_id", rec.IntentID, "commands", len(units))
			return
		}
		ctx, cancel := context.WithTimeout(m.running, 10*time.Second)
		unstored, err := m.dispatch(ctx, rec, units)
		cancel()
		if len(unstored) == 0 {
			m.log.Info("dispatch completed on retry", "intent_id", rec.IntentID, "commands", len(units))
			return
		}
		m.log.Warn("dispatch retry failed", "intent_id", rec.IntentID, "commands", len(unstored), "err", err)
		units = unstored
		wait = min(wait*2, 5*time.Second)
	}
}
