package mirage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

// maxIntentID leaves room for the derived command ids.
const maxIntentID = 96

// onIssue is issue intake: decode → validate → resolve targets → record → dispatch → reply.
// A bad issue gets an immediate rejection naming the reason.
func (m *Mirage) onIssue(msg *nats.Msg) {
	var is bus.Issue
	reply := func(r *bus.IssueReply) {
		if data, err := bus.Encode(r); err == nil && msg.Reply != "" {
			_ = msg.Respond(data)
		}
	}
	reject := func(err error) {
		perr := bus.AsError(err)
		m.log.Warn("issue rejected", "direction", "in", "message_type", bus.TypeIssue, "intent_id", is.IntentID, "trace_id", is.TraceID, "code", perr.Code, "err", perr.Message)
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
	targets, err := m.resolve(is.TargetScope, is.Objective)
	if err != nil {
		reject(err)
		return
	}
	rec, err := m.accept(&is, targets)
	if err != nil {
		reject(err)
		return
	}
	reply(&bus.IssueReply{Header: bus.NewHeader(bus.TypeIssueReply, is.TraceID, m.cfg.Now()), IntentID: rec.IntentID, Status: "accepted", Targets: rec.Targets})
}

// accept records the intent, starts following it, and dispatches its commands.
func (m *Mirage) accept(is *bus.Issue, targets []string) (*IntentRecord, error) {
	now := m.cfg.Now()
	rec := &IntentRecord{
		IntentID:   is.IntentID,
		Issue:      *is,
		Targets:    targets,
		CreatedMS:  now.UnixMilli(),
		DeadlineMS: now.Add(time.Duration(is.TimeoutMS) * time.Millisecond).UnixMilli(),
		Phase:      bus.PhasePending,
	}
	rec.DeliverByMS = rec.DeadlineMS
	if is.DeliverByMS > 0 && is.DeliverByMS < rec.DeadlineMS {
		rec.DeliverByMS = is.DeliverByMS
	}
	data, err := jsonMarshal(rec)
	if err != nil {
		return nil, bus.Errorf(bus.CodeInternal, "encode intent: %v", err)
	}
	if len(data) > bus.MaxEnvelope {
		return nil, bus.Errorf(bus.CodeSemantic, "intent with %d targets is too large to record", len(targets))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := m.intents.Create(ctx, rec.IntentID, data); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return nil, bus.FieldError(bus.CodeSemantic, "intent_id", "intent %s exists already", rec.IntentID)
		}
		return nil, bus.Errorf(bus.CodeInternal, "record intent: %v", err)
	}
	li := newLiveIntent(*rec)
	m.mu.Lock()
	m.live[rec.IntentID] = li
	m.arm(li)
	pending := li.report(m.cfg.Now())
	m.mu.Unlock()
	// The first report is stored before the issue is answered, so that 'report ID' finds
	// the intent as soon as its id is known.
	m.publishReport(pending)
	m.log.Info("intent accepted", "direction", "in", "message_type", bus.TypeIssue, "intent_id", rec.IntentID, "trace_id", is.TraceID, "actor", is.Actor, "targets", len(targets), "seed", is.Objective.SeedSelector, "operation", is.Objective.Operation)
	if err := m.dispatch(ctx, rec, nil); err != nil {
		// The intent is recorded: dispatch is retried with the same command_ids until it
		// succeeds or the intent ends (and again at Mirage's next start).
		m.log.Warn("dispatch incomplete; retrying", "intent_id", rec.IntentID, "err", err)
		m.wg.Add(1)
		go m.redispatch(rec)
	}
	return rec, nil
}

// dispatch publishes one command per target into EDGE_CMD (Nats-Msg-Id = command_id), all
// in flight at once, and waits for every publish ack. only, when not nil, limits dispatch
// to those target indexes.
func (m *Mirage) dispatch(ctx context.Context, rec *IntentRecord, only []int) error {
	idx := only
	if idx == nil {
		idx = make([]int, len(rec.Targets))
		for i := range idx {
			idx[i] = i
		}
	}
	futures := make([]jetstream.PubAckFuture, 0, len(idx))
	now := m.cfg.Now()
	for _, i := range idx {
		g := rec.Targets[i]
		cmd := bus.Command{
			Header:       bus.NewHeader(bus.TypeCommand, rec.Issue.TraceID, now),
			CommandID:    CommandID(rec.IntentID, i),
			IntentID:     rec.IntentID,
			GhostID:      g,
			SeedSelector: rec.Issue.Objective.SeedSelector,
			Operation:    rec.Issue.Objective.Operation,
			Args:         rec.Issue.Objective.Args,
			DeliverByMS:  rec.DeliverByMS,
			TimeoutMS:    rec.Issue.TimeoutMS,
		}
		if cmd.Args == nil {
			cmd.Args = map[string]string{}
		}
		data, err := bus.Encode(&cmd)
		if err != nil {
			return err
		}
		msg := bus.NewMsg(subjects.Command(g), data, cmd.CommandID, cmd.TraceID)
		if m.cfg.Identity != nil {
			if err := bus.SignMsg(msg, m.cfg.Identity); err != nil {
				return fmt.Errorf("sign command %s: %w", cmd.CommandID, err)
			}
		}
		f, err := m.js.PublishMsgAsync(msg)
		if err != nil {
			return fmt.Errorf("publish command %s: %w", cmd.CommandID, err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("command %s not stored: %w", f.Msg().Header.Get(bus.HeaderMsgID), err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	m.log.Debug("commands stored", "direction", "out", "message_type", bus.TypeCommand, "intent_id", rec.IntentID, "count", len(futures))
	return nil
}

// redispatch re-sends the commands of targets still pending, with backoff, until they are
// stored, the intent ends, or Mirage stops. The same command_ids make it duplicate-safe.
func (m *Mirage) redispatch(rec *IntentRecord) {
	defer m.wg.Done()
	wait := 250 * time.Millisecond
	for {
		select {
		case <-m.stop:
			return
		case <-time.After(wait):
		}
		m.mu.Lock()
		li, ok := m.live[rec.IntentID]
		var only []int
		if ok {
			for i, r := range li.results {
				if r.Outcome == bus.OutcomePending {
					only = append(only, i)
				}
			}
		}
		m.mu.Unlock()
		if !ok || len(only) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := m.dispatch(ctx, rec, only)
		cancel()
		if err == nil {
			m.log.Info("dispatch completed on retry", "intent_id", rec.IntentID, "commands", len(only))
			return
		}
		m.log.Warn("dispatch retry failed", "intent_id", rec.IntentID, "err", err)
		wait = min(wait*2, 5*time.Second)
	}
}
