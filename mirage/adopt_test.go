package mirage

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
	"github.com/edgectl/edgectl/subjects"
)

func adoptRec(id, ghost string, now time.Time) IntentRecord {
	is := bus.Issue{Header: bus.NewHeader(bus.TypeIssue, subjects.NewTraceID(), now), IntentID: id, Actor: "t", TargetScope: ghost,
		Objective: bus.Objective{SeedSelector: "seed.flow", Operation: "status", Args: map[string]string{}}, TimeoutMS: 60000}
	return IntentRecord{IntentID: id, Issue: is, Targets: []string{ghost},
		Steps:     []StepRecord{{Objective: is.Objective, Targets: []string{ghost}}},
		MaxErrors: -1, CreatedMS: now.UnixMilli(), DeadlineMS: now.Add(60 * time.Second).UnixMilli(),
		DeliverByMS: now.Add(60 * time.Second).UnixMilli(), Phase: bus.PhasePending}
}

// storeRecord stores rec in edge_intents as Mirage would have, without following it.
func storeRecord(ctx context.Context, t *testing.T, m *Mirage, rec IntentRecord) {
	t.Helper()
	data, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.intents.Create(ctx, rec.IntentID, data); err != nil {
		t.Fatal(err)
	}
}

// storeUnfollowed stores rec and marks its id known, as for an intent recorded (its
// store's answer lost) but not followed, whose issue is then sent again (resent, with a
// fresh header).
func storeUnfollowed(ctx context.Context, t *testing.T, m *Mirage, rec IntentRecord) (resent bus.Issue) {
	t.Helper()
	storeRecord(ctx, t, m, rec)
	m.mu.Lock()
	m.known.add(rec.IntentID, time.Now())
	m.mu.Unlock()
	resent = rec.Issue
	resent.Header = bus.NewHeader(bus.TypeIssue, rec.Issue.TraceID, time.Now())
	return resent
}

// A taken-up intent's replay (rebuild) applies another live intent's event without
// moving its rollout: that intent then never finishes before its deadline.
func TestAdoptReplaysOnlyItsOwnIntentsEvents(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	now := time.Now()
	recB := adoptRec("int_otherb", "g1", now)
	li := followWithLaggingConsumer(m, recB) // the live consumer lags for the moment
	cmd := CommandID(recB.IntentID, 0)
	ev := &bus.Event{Header: bus.NewHeader(bus.TypeEvent, recB.Issue.TraceID, now), EventID: bus.EventID("g1", cmd),
		CommandID: cmd, IntentID: recB.IntentID, ExecutionID: subjects.NewID(subjects.PrefixExecution), GhostID: "g1",
		SeedID: "seed.flow", Operation: "status", Outcome: bus.OutcomeSuccess, Result: bus.Result{Status: "ok"},
		StartedMS: now.UnixMilli(), FinishedMS: now.UnixMilli()}
	data, err := bus.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.js.PublishMsg(ctx, bus.NewMsg(subjects.Event("g1"), data, ev.EventID, ev.TraceID)); err != nil {
		t.Fatal(err)
	}
	recA := adoptRec("int_adopta", "g2", now)
	m.rebuild(m.takeUp(&recA, "test"))
	cons, err := m.js.Consumer(ctx, bus.StreamEvents, "mirage")
	if err != nil {
		t.Fatal(err)
	}
	if m.cc, err = cons.Consume(m.onEvent); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	m.mu.Lock()
	_, still := m.live[recB.IntentID]
	done := li.done()
	m.mu.Unlock()
	if still {
		t.Fatalf("intent B has all its results (done=%v) but is still live 3 s later: it ends only at its deadline", done)
	}
}

// An issue sent again for an intent recorded but not followed is answered as soon as
// Mirage takes the intent up, not after its replay (rebuild), which reads every event
// stored since the intent was created: on a large EDGE_EVT that outlasts the client's
// wait (IssueTimeout), and the client would give up on an intent that runs. Here the
// replay cannot go on while the test holds m.mu; the answer must come all the same.
func TestIssueSentAgainIsAnsweredBeforeItsIntentIsRebuilt(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Recorded (the store's answer to its Create was lost), refused, not followed.
	rec := adoptRec("int_adoptc", "g1", time.Now())
	is := storeUnfollowed(ctx, t, m, rec)

	client, err := NewClient(natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "client"}))
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		reply *bus.IssueReply
		err   error
	}
	answered := make(chan answer, 1)
	takenUp := make(chan *liveIntent, 1)
	m.mu.Lock()
	m.tookUp = func(li *liveIntent) {
		m.mu.Lock() // unlocked by the test once the issue is answered
		m.tookUp = nil
		takenUp <- li
	}
	m.mu.Unlock()
	go func() {
		r, err := client.Issue(ctx, &is)
		answered <- answer{r, err}
	}()
	// Hold m.mu from the moment the intent is taken up: its rebuild waits for it. (Read
	// from the test, the moment passes in the milliseconds a rebuild of nothing takes.)
	var li *liveIntent
	select {
	case li = <-takenUp:
	case <-time.After(IssueTimeout):
		t.Fatal("the intent was not taken up")
	}
	var a answer
	select {
	case a = <-answered:
	case <-time.After(IssueTimeout + time.Second):
	}
	m.mu.Unlock()
	if a.err != nil || a.reply == nil || a.reply.Status != "accepted" || a.reply.IntentID != rec.IntentID {
		t.Fatalf("issue sent again while its intent is rebuilt: %+v, %v; want it accepted at once", a.reply, a.err)
	}
	// The rebuild goes on after the answer: the intent is followed, its deadline armed.
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		m.mu.Lock()
		adopting := li.adopting
		m.mu.Unlock()
		if !adopting {
			break
		}
		if time.Now().After(end) {
			t.Fatal("the taken-up intent was never rebuilt")
		}
	}
}

// An issue sent again for an intent recorded without steps (a record written before
// intents had steps) and not followed is taken up, its commands built from the whole
// intent: no panic in the issue's goroutine, which would take Mirage down.
func TestTakeUpOfARecordWithoutSteps(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec := adoptRec("int_nosteps", "g1", time.Now())
	rec.Steps = nil
	is := storeUnfollowed(ctx, t, m, rec)
	issue, err := bus.Encode(&is)
	if err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("taking up a record without steps panicked: %v", r)
			}
		}()
		m.handleIssue(&nats.Msg{Subject: subjects.Issue, Data: issue}) // here, so that a panic is seen
	}()
	m.mu.Lock()
	_, followed := m.live[rec.IntentID]
	m.mu.Unlock()
	if !followed {
		t.Fatal("the intent was not taken up")
	}
	sent, err := m.cmds.GetLastMsgForSubject(ctx, subjects.Command("g1"))
	if err != nil || sent.Header.Get(bus.HeaderMsgID) != CommandID(rec.IntentID, 0) {
		t.Fatalf("the command of the intent taken up is not in EDGE_CMD: %v", err)
	}
}

// A record with no creation time (junk that decodes as a record) is not followed at
// start: followed, it would never be armed nor dispatched, and never end.
func TestRecordWithoutCreationTimeIsNotRecovered(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec := adoptRec("int_nocreated", "g1", time.Now())
	rec.CreatedMS = 0
	storeRecord(ctx, t, m, rec)
	if _, err := ReadIntent(ctx, m.js, rec.IntentID); !errors.Is(err, ErrBadIntentRecord) {
		t.Fatalf("ReadIntent of a record without created_ms: %v, want ErrBadIntentRecord", err)
	}
	_ = m.Close()
	again := startTestMirage(t, ns)
	again.mu.Lock()
	li, followed := again.live[rec.IntentID]
	again.mu.Unlock()
	if followed && li.timer == nil {
		t.Fatal("a record without created_ms is followed and never armed: it never ends")
	}
}

// A taken-up intent's rebuild counts a Ghost's refusal for security of the command Mirage
// signed and sent before (its bytes stored in EDGE_CMD) as the target's result, as the
// Mirage that sent it would have: the command is not sent again.
func TestRebuildCountsTheRefusalOfItsOwnSignedCommand(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	key, err := bus.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	m := startTestMirageWith(t, ns, Config{Identity: key}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	now := time.Now()
	rec := adoptRec("int_refusedown", "g1", now)
	storeRecord(ctx, t, m, rec)
	// Sent before the record's answer was lost; the Ghost refused those very bytes.
	msg, refusalID, err := m.buildCommand(&rec, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	cmd := CommandID(rec.IntentID, 0)
	ev := &bus.Event{Header: bus.NewHeader(bus.TypeEvent, rec.Issue.TraceID, now), EventID: refusalID,
		CommandID: cmd, IntentID: rec.IntentID, ExecutionID: subjects.NewID(subjects.PrefixExecution), GhostID: "g1",
		SeedID: "seed.flow", Operation: "status", Outcome: bus.OutcomeError, Result: bus.Result{Status: "refused", ExitCode: -1},
		Error: bus.Errorf(bus.CodeSecurity, "signer %s is not trusted", key.PublicKey()), StartedMS: now.UnixMilli(), FinishedMS: now.UnixMilli()}
	data, err := bus.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.js.PublishMsg(ctx, bus.NewMsg(subjects.Event("g1"), data, ev.EventID, ev.TraceID)); err != nil {
		t.Fatal(err)
	}
	li := m.takeUp(&rec, "test")
	units := m.rebuild(li)
	m.mu.Lock()
	r := li.results[0]
	m.mu.Unlock()
	if len(units) != 0 || r.Outcome != bus.OutcomeError || r.Error == nil || r.Error.Code != bus.CodeSecurity || r.EventID != refusalID {
		t.Fatalf("rebuilt: units to send %v, result %+v; want the refusal of its own bytes counted and nothing sent", units, r)
	}
}

// unfollowedOf stores a record of an intent over ghosts, one unit each, as a Mirage that
// stood down would have left it: recorded, open, followed by no one. It returns the record
// and counts m's take-ups.
func unfollowedOf(ctx context.Context, t *testing.T, m *Mirage, id string, ghosts ...string) (IntentRecord, *atomic.Int32) {
	t.Helper()
	rec := adoptRec(id, ghosts[0], time.Now())
	rec.Targets = ghosts
	rec.Steps[0].Targets = ghosts
	storeRecord(ctx, t, m, rec)
	var takeUps atomic.Int32
	m.mu.Lock()
	m.tookUp = func(*liveIntent) { takeUps.Add(1) }
	m.mu.Unlock()
	return rec, &takeUps
}

// publishResult stores in EDGE_EVT, without waiting for the store's answer, the success
// event of unit u of rec from its target.
func publishResult(t *testing.T, m *Mirage, rec *IntentRecord, u int) *bus.Event {
	t.Helper()
	now := time.Now()
	g, cmd := rec.Targets[u], CommandID(rec.IntentID, u)
	ev := &bus.Event{Header: bus.NewHeader(bus.TypeEvent, rec.Issue.TraceID, now), EventID: bus.EventID(g, cmd),
		CommandID: cmd, IntentID: rec.IntentID, ExecutionID: subjects.NewID(subjects.PrefixExecution), GhostID: g,
		SeedID: "seed.flow", Operation: "status", Outcome: bus.OutcomeSuccess, Result: bus.Result{Status: "ok"},
		StartedMS: now.UnixMilli(), FinishedMS: now.UnixMilli()}
	data, err := bus.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.js.PublishMsgAsync(bus.NewMsg(subjects.Event(g), data, ev.EventID, ev.TraceID)); err != nil {
		t.Fatal(err)
	}
	return ev
}

// ackOf waits on acks for the event.ack of ev.
func ackOf(t *testing.T, acks chan *nats.Msg, ev *bus.Event) bus.EventAck {
	t.Helper()
	for end := time.After(10 * time.Second); ; {
		select {
		case msg := <-acks:
			var a bus.EventAck
			if err := bus.Decode(msg.Data, &a); err != nil {
				t.Fatal(err)
			}
			if a.EventID == ev.EventID {
				return a
			}
		case <-end:
			t.Fatalf("no event.ack for %s", ev.EventID)
		}
	}
}

// ackWatch subscribes to the event.acks of every Ghost.
func ackWatch(t *testing.T, ns *natsd.Server) chan *nats.Msg {
	t.Helper()
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "acks"})
	acks := make(chan *nats.Msg, 64)
	if _, err := nc.ChanSubscribe(subjects.Ack("*"), acks); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return acks
}

// Events of an intent recorded and open but followed by no one (a Mirage that stood down
// accepted it), stored together, take it up once: each is counted and answered accepted,
// and the intent ends satisfied. They were refused 1500 before.
func TestEventsOfAnUnfollowedIntentTakeItUpOnce(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	acks := ackWatch(t, ns)
	rec, takeUps := unfollowedOf(ctx, t, m, "int_strayevents", "g1", "g2", "g3")
	var evs []*bus.Event
	for u := range rec.Targets {
		evs = append(evs, publishResult(t, m, &rec, u))
	}
	for _, ev := range evs {
		if a := ackOf(t, acks, ev); a.AckStatus != bus.AckAccepted {
			t.Fatalf("event of %s: event.ack %s %d; want accepted", ev.GhostID, a.AckStatus, a.AckCode)
		}
	}
	if r := waitTerminal(t, ns, rec.IntentID); r.Phase != bus.PhaseSatisfied || r.Counts.Success != 3 {
		t.Fatalf("terminal report %s %q; want satisfied 3/3", r.Phase, r.Summary)
	}
	if n := takeUps.Load(); n != 1 {
		t.Fatalf("the intent was taken up %d times; want once", n)
	}
}

// An event of an unfollowed intent whose id is claimed (an issue sent again being accepted
// under it) waits for the claim: the issue's take-up is the only one, and the event is
// counted in it.
func TestEventOfAnUnfollowedIntentWaitsForTheIssuesClaim(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	acks := ackWatch(t, ns)
	rec, takeUps := unfollowedOf(ctx, t, m, "int_claimedevent", "g1")
	// accept's part of the issue path: the id claimed, the record found open.
	if prior, _, err := m.claimIntent(ctx, rec.IntentID); err != nil || prior != nil {
		t.Fatalf("claim: %v, %v", prior, err)
	}
	ev := publishResult(t, m, &rec, 0)
	select {
	case msg := <-acks:
		t.Fatalf("the event was answered while the id is claimed: %s", msg.Data)
	case <-time.After(500 * time.Millisecond):
	}
	li := m.takeUp(&rec, "test") // ends the claim
	m.send(&rec, m.rebuild(li))
	m.progress(rec.IntentID)
	if a := ackOf(t, acks, ev); a.AckStatus != bus.AckAccepted {
		t.Fatalf("event.ack %s %d; want accepted", a.AckStatus, a.AckCode)
	}
	if r := waitTerminal(t, ns, rec.IntentID); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("terminal report %s %q; want satisfied", r.Phase, r.Summary)
	}
	if n := takeUps.Load(); n != 1 {
		t.Fatalf("the intent was taken up %d times; want once (the issue's)", n)
	}
}
