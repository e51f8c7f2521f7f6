package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
)

// rawFlow is the contract's message flow for one single-target intent with no edgectl
// code in it: what an intent costs NATS alone. On edgectl's own assets (bus.EnsureAssets),
// with envelopes of the sizes an intent sends, prepared beforehand:
//
//	client  --issue (request)------------> "mirage"
//	"mirage" -- command   -> EDGE_CMD, cmd.<ghost> --> "ghost" (core subscription)
//	"mirage" -- record    -> KV edge_intents (waits for its ack), then the answer
//	"ghost"  -- event     -> EDGE_EVT (waits for its ack)
//	"mirage" <- event through the durable consumer (explicit ack)
//	"mirage" -- event.ack -> ack.<ghost> (core), report -> EDGE_REPORT
//	client  <- report through one ordered consumer on report.*
//
// Nothing is decoded or validated, nothing waits in a goroutine (publish acks are read by
// subscriptions), ids ride in a header. It is the ceiling of e2e: an intent cannot cost
// less than its messages.
func (e *runEnv) rawFlow(ctx context.Context) (Rate, error) {
	srv, stop, err := e.startServer(false)
	if err != nil {
		return Rate{}, err
	}
	defer stop()
	conns := map[string]*nats.Conn{}
	for _, name := range []string{"flow mirage", "flow ghost", "flow client"} {
		nc, err := connect(ctx, srv, name)
		if err != nil {
			return Rate{}, err
		}
		defer nc.Close()
		conns[name] = nc
	}
	mc, gc, cc := conns["flow mirage"], conns["flow ghost"], conns["flow client"]
	mjs, err := jetstream.New(mc, jetstream.WithPublishAsyncMaxPending(1<<16))
	if err != nil {
		return Rate{}, err
	}
	if err := bus.EnsureAssets(ctx, mjs, bus.AssetConfig{}); err != nil {
		return Rate{}, err
	}
	pl, err := newFlowPayloads()
	if err != nil {
		return Rate{}, err
	}
	const idHeader = "Edge-Bench-Intent"
	ghostID := e2eGhost

	// Every stored write is a core publish with a reply subject, and its publish ack is
	// read by a subscription: no goroutine and no waiting anywhere, the least work the
	// flow's messages allow.
	minbox, ginbox := nats.NewInbox(), nats.NewInbox()
	var answersMu sync.Mutex
	answers := map[string]string{} // intent id → the issue's reply subject
	// "mirage": an issue stores its command and record; the record's ack sends the answer.
	issues, err := mc.Subscribe(subjects.Issue, func(msg *nats.Msg) {
		id := msg.Header.Get(idHeader)
		answersMu.Lock()
		answers[id] = msg.Reply
		answersMu.Unlock()
		cmd := nats.NewMsg(subjects.Command(ghostID))
		cmd.Data, cmd.Reply = e.pl.cmd, minbox+".c"
		cmd.Header.Set(bus.HeaderMsgID, "c"+id)
		cmd.Header.Set(bus.HeaderTraceparent, rawTraceparent)
		cmd.Header.Set(idHeader, id)
		rec := nats.NewMsg("$KV." + bus.BucketIntents + "." + id)
		rec.Data, rec.Reply = pl.record, minbox+".r."+id
		rec.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
		_ = mc.PublishMsg(cmd)
		_ = mc.PublishMsg(rec)
	})
	if err != nil {
		return Rate{}, err
	}
	defer issues.Unsubscribe() //nolint:errcheck
	mAcks, err := mc.Subscribe(minbox+".>", func(msg *nats.Msg) {
		id, ok := strings.CutPrefix(msg.Subject, minbox+".r.")
		if !ok {
			return // a command's or a report's publish ack
		}
		answersMu.Lock()
		reply := answers[id]
		delete(answers, id)
		answersMu.Unlock()
		_ = mc.Publish(reply, pl.answer)
	})
	if err != nil {
		return Rate{}, err
	}
	defer mAcks.Unsubscribe() //nolint:errcheck

	// "ghost": each command publishes its event; the ack comes back to its inbox.
	cmds, err := gc.Subscribe(subjects.Command(ghostID), func(msg *nats.Msg) {
		ev := nats.NewMsg(subjects.Event(ghostID))
		ev.Data, ev.Reply = e.pl.evt, ginbox
		ev.Header.Set(bus.HeaderMsgID, "e"+msg.Header.Get(idHeader))
		ev.Header.Set(bus.HeaderTraceparent, rawTraceparent)
		ev.Header.Set(idHeader, msg.Header.Get(idHeader))
		_ = gc.PublishMsg(ev)
	})
	if err != nil {
		return Rate{}, err
	}
	defer cmds.Unsubscribe() //nolint:errcheck
	gAcks, err := gc.Subscribe(ginbox, func(*nats.Msg) {})
	if err != nil {
		return Rate{}, err
	}
	defer gAcks.Unsubscribe() //nolint:errcheck
	acks, err := gc.Subscribe(subjects.Ack(ghostID), func(*nats.Msg) {})
	if err != nil {
		return Rate{}, err
	}
	defer acks.Unsubscribe() //nolint:errcheck

	// "mirage": events through a durable consumer, then event.ack and the report.
	cons, err := mjs.CreateOrUpdateConsumer(ctx, bus.StreamEvents, jetstream.ConsumerConfig{Durable: "flow", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 20000, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return Rate{}, err
	}
	evc, err := cons.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		id := m.Headers().Get(idHeader)
		_ = mc.Publish(subjects.Ack(ghostID), pl.eventAck)
		rep := nats.NewMsg(subjects.Report(id))
		rep.Data, rep.Reply = pl.report, minbox+".p"
		rep.Header.Set(bus.HeaderMsgID, "r"+id)
		rep.Header.Set(bus.HeaderTraceparent, rawTraceparent)
		rep.Header.Set(bus.HeaderPhase, bus.PhaseSatisfied)
		_ = mc.PublishMsg(rep)
	}, jetstream.PullMaxMessages(1000))
	if err != nil {
		return Rate{}, err
	}
	defer evc.Stop()

	// The client: one ordered consumer on report.* tells each waiter.
	cjs, err := jetstream.New(cc)
	if err != nil {
		return Rate{}, err
	}
	var mu sync.Mutex
	waits := map[string]chan struct{}{}
	rcons, err := cjs.OrderedConsumer(ctx, bus.StreamReports, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects.AllReports}, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return Rate{}, err
	}
	rcc, err := rcons.Consume(func(m jetstream.Msg) {
		id := m.Subject()[len(subjects.Report("")):]
		mu.Lock()
		ch, ok := waits[id]
		delete(waits, id)
		mu.Unlock()
		if ok {
			close(ch)
		}
	})
	if err != nil {
		return Rate{}, err
	}
	defer rcc.Stop()

	var seq atomic.Int64
	one := func() error {
		id := fmt.Sprintf("int_flow%d", seq.Add(1))
		ch := make(chan struct{})
		mu.Lock()
		waits[id] = ch
		mu.Unlock()
		req := nats.NewMsg(subjects.Issue)
		req.Data = pl.issue
		req.Header.Set(idHeader, id)
		if _, err := cc.RequestMsg(req, 10*time.Second); err != nil {
			return fmt.Errorf("issue %s: %w", id, err)
		}
		select {
		case <-ch:
			return nil
		case <-time.After(time.Minute):
			return fmt.Errorf("intent %s: no report after 1m", id)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return e.intentRates(ctx, one)
}

// flowPayloads are the bodies of rawFlow's messages other than the command and event:
// encoded as edgectl encodes them for a bench intent, before anything is timed.
type flowPayloads struct {
	issue, answer, record, eventAck, report []byte
}

func newFlowPayloads() (flowPayloads, error) {
	is := newIssue(e2eGhost)
	var p flowPayloads
	var err error
	if p.issue, err = bus.Encode(is); err != nil {
		return p, err
	}
	if p.answer, err = bus.Encode(&bus.IssueReply{Header: bus.NewHeader(bus.TypeIssueReply, is.TraceID, time.Now()), IntentID: is.IntentID, Status: "accepted", Targets: []string{e2eGhost}}); err != nil {
		return p, err
	}
	cmdID := mirage.CommandID(is.IntentID, 0)
	if p.eventAck, err = bus.Encode(&bus.EventAck{Header: bus.NewHeader(bus.TypeEventAck, is.TraceID, time.Now()), EventID: "evt_" + cmdID, CommandID: cmdID, GhostID: e2eGhost, AckStatus: bus.AckAccepted}); err != nil {
		return p, err
	}
	now := time.Now()
	rec := mirage.IntentRecord{IntentID: is.IntentID, Issue: *is, Targets: []string{e2eGhost},
		Steps:     []mirage.StepRecord{{Objective: is.Objective, Targets: []string{e2eGhost}}},
		MaxErrors: -1, CreatedMS: now.UnixMilli(), DeadlineMS: now.Add(intentTimeout).UnixMilli(),
		DeliverByMS: now.Add(intentTimeout).UnixMilli(), Phase: bus.PhasePending}
	if p.record, err = json.Marshal(&rec); err != nil {
		return p, err
	}
	rep := bus.Report{Header: bus.NewHeader(bus.TypeReport, is.TraceID, now), IntentID: is.IntentID, Phase: bus.PhaseSatisfied,
		CompletionState: "complete", Summary: "satisfied: 1/1 succeeded", Counts: bus.Counts{Targets: 1, Success: 1},
		Results: []bus.TargetResult{{GhostID: e2eGhost, CommandID: cmdID, ExecutionID: subjects.NewID(subjects.PrefixExecution),
			EventID: "evt_" + cmdID, Outcome: bus.OutcomeSuccess, Stdout: benchMessage}}}
	if p.report, err = bus.Encode(&rep); err != nil {
		return p, err
	}
	return p, nil
}
