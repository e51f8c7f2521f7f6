package mirage

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
	"github.com/edgectl/edgectl/subjects"
)

// startTestMirage starts a Mirage on its own connection to ns, closed when the test ends.
func startTestMirage(t *testing.T, ns *natsd.Server) *Mirage {
	t.Helper()
	return startTestMirageWith(t, ns, Config{}, nil)
}

// warnLog is a logger of warnings and errors into logs.
func warnLog(logs *syncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// startTestMirageWith is startTestMirage with cfg and log.
func startTestMirageWith(t *testing.T, ns *natsd.Server, cfg Config, log *slog.Logger) *Mirage {
	t.Helper()
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "mirage"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := New(ctx, nc, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// shortRec is an intent record over one target whose deadline is timeout from now.
func shortRec(id, ghost string, timeout time.Duration) IntentRecord {
	now := time.Now()
	rec := adoptRec(id, ghost, now)
	rec.Issue.TimeoutMS = timeout.Milliseconds()
	rec.DeadlineMS = now.Add(timeout).UnixMilli()
	rec.DeliverByMS = rec.DeadlineMS
	return rec
}

// publishSuccess stores in EDGE_EVT the terminal success event of unit 0 of rec, from
// ghost, and returns when the stream stored it.
func publishSuccess(t *testing.T, js jetstream.JetStream, rec *IntentRecord, ghost string) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seq, err := publishSuccessTo(ctx, js, rec, ghost)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := stream.GetMsg(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	return raw.Time
}

// publishSuccessTo stores the event publishSuccess does and returns its stream sequence.
func publishSuccessTo(ctx context.Context, js jetstream.JetStream, rec *IntentRecord, ghost string) (uint64, error) {
	now := time.Now()
	cmd := CommandID(rec.IntentID, 0)
	ev := &bus.Event{Header: bus.NewHeader(bus.TypeEvent, rec.Issue.TraceID, now), EventID: bus.EventID(ghost, cmd),
		CommandID: cmd, IntentID: rec.IntentID, ExecutionID: subjects.NewID(subjects.PrefixExecution), GhostID: ghost,
		SeedID: "seed.flow", Operation: "status", Outcome: bus.OutcomeSuccess, Result: bus.Result{Status: "ok"},
		StartedMS: now.UnixMilli(), FinishedMS: now.UnixMilli()}
	data, err := bus.Encode(ev)
	if err != nil {
		return 0, err
	}
	ack, err := js.PublishMsg(ctx, bus.NewMsg(subjects.Event(ghost), data, ev.EventID, ev.TraceID))
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// waitTerminal returns the terminal report of an intent.
func waitTerminal(t *testing.T, ns *natsd.Server, intentID string) *bus.Report {
	t.Helper()
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "client"})
	c, err := NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := c.WaitTerminal(ctx, intentID)
	if err != nil {
		t.Fatalf("terminal report of %s: %v", intentID, err)
	}
	return r
}

// An event EDGE_EVT stored before the intent's deadline counts, however late Mirage's
// events consumer reads it: the deadline waits for the consumer to read what the stream
// held then (here it is stopped until a second past the cutoff).
func TestEventStoredInTimeButReadLateCounts(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	rec := shortRec("int_readlate", "g1", 1500*time.Millisecond)
	followWithLaggingConsumer(m, rec)
	stored := publishSuccess(t, m.js, &rec, "g1")
	cutoff := time.UnixMilli(rec.DeadlineMS).Add(resultGrace)
	if !stored.Before(cutoff) {
		t.Fatalf("the event was stored at %s, not before the cutoff %s", stored, cutoff)
	}
	// Resume well after the deadline timer fired.
	for time.Now().Before(cutoff.Add(1500 * time.Millisecond)) {
		time.Sleep(50 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resumeEventsAndExpectSatisfied(t, ctx, m, ns, rec.IntentID)
}

// An event stored after the intent's cutoff does not count, whether the Mirage that
// reads it followed the intent through its deadline or was started after it and
// recovers the intent from EDGE_EVT: both report timeout and answer the event 1900.
func TestLateEventSameVerdictLiveAndAfterRestart(t *testing.T) {
	for _, restart := range []bool{false, true} {
		name := "live"
		if restart {
			name = "restarted"
		}
		t.Run(name, func(t *testing.T) {
			ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
			rec := shortRec("int_late_"+name, "g1", 1500*time.Millisecond)
			data, err := json.Marshal(rec)
			if err != nil {
				t.Fatal(err)
			}
			m := startTestMirage(t, ns)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := m.intents.Create(ctx, rec.IntentID, data); err != nil {
				t.Fatal(err)
			}
			_ = m.Close()
			m = startTestMirage(t, ns) // follows the intent from its record, as a restart does
			if restart {
				_ = m.Close() // and is gone before the deadline
				if cutoff := time.UnixMilli(rec.DeadlineMS).Add(resultGrace); !time.Now().Before(cutoff) {
					t.Fatalf("Mirage stopped past the cutoff %s", cutoff)
				}
			}
			acks := make(chan bus.EventAck, 4)
			sub, err := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "g1"}).Subscribe(subjects.Ack("g1"), func(msg *nats.Msg) {
				var a bus.EventAck
				if bus.Decode(msg.Data, &a) == nil {
					acks <- a
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = sub.Unsubscribe() }()
			cutoff := time.UnixMilli(rec.DeadlineMS).Add(resultGrace)
			for time.Now().Before(cutoff.Add(100 * time.Millisecond)) {
				time.Sleep(20 * time.Millisecond)
			}
			if stored := publishSuccess(t, m.js, &rec, "g1"); !stored.After(cutoff) {
				t.Fatalf("the event was stored at %s, not after the cutoff %s", stored, cutoff)
			}
			if restart {
				startTestMirage(t, ns)
			}
			r := waitTerminal(t, ns, rec.IntentID)
			if r.Phase != bus.PhaseFailed || len(r.Results) != 1 || r.Results[0].Outcome != bus.OutcomeTimeout {
				t.Fatalf("terminal report %s %q %+v; want failed with the target timeout: its event was stored after the deadline", r.Phase, r.Summary, r.Results)
			}
			select {
			case a := <-acks:
				if a.AckStatus != bus.AckRejected || a.AckCode != bus.CodeNoResponse {
					t.Fatalf("event.ack %s %d, want rejected %d (late)", a.AckStatus, a.AckCode, bus.CodeNoResponse)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no event.ack for the late event")
			}
		})
	}
}

// When EDGE_EVT's info cannot be had at an intent's cutoff (the JetStream API answering
// 503 while a stream leader is elected, just when the consumer lags), the expiry asks
// again instead of timing the pending targets out at once: an event stored in time and
// read once the API answers again counts.
func TestExpiryAsksAgainWhenTheStreamsInfoFails(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "mirage"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Mirage asks EDGE_EVT's info through $EDGETEST.API, which the test relays to the
	// JetStream API, or answers 503 while failing is set.
	var failing atomic.Bool
	var failed atomic.Int32
	relay := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "relay"})
	sub, err := relay.Subscribe("$EDGETEST.API.>", func(msg *nats.Msg) {
		if failing.Load() {
			failed.Add(1)
			_ = msg.Respond([]byte(`{"type":"io.nats.jetstream.api.v1.stream_info_response","error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}`))
			return
		}
		resp, err := relay.Request("$JS.API."+strings.TrimPrefix(msg.Subject, "$EDGETEST.API."), msg.Data, 5*time.Second)
		if err == nil {
			_ = msg.Respond(resp.Data)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	m, err := New(ctx, nc, Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	relayed, err := jetstream.NewWithAPIPrefix(nc, "$EDGETEST.API")
	if err != nil {
		t.Fatal(err)
	}
	if m.evts, err = relayed.Stream(ctx, bus.StreamEvents); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	failing.Store(true)
	rec := shortRec("int_infofails", "g1", 1500*time.Millisecond)
	followWithLaggingConsumer(m, rec)
	if stored := publishSuccess(t, m.js, &rec, "g1"); !stored.Before(time.UnixMilli(rec.DeadlineMS).Add(resultGrace)) {
		t.Fatalf("the event was stored at %s, after the cutoff", stored)
	}
	// The cutoff passes; its expiry is refused twice, then the API answers again.
	for end := time.Now().Add(15 * time.Second); failed.Load() < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("EDGE_EVT's info asked %d times at the cutoff and refused; want it asked again", failed.Load())
		}
	}
	failing.Store(false)
	resumeEventsAndExpectSatisfied(t, ctx, m, ns, rec.IntentID)
}

// Between the expiry of an intent's targets and the end of the intent (finish), an event
// for a target that ended timeout is answered 1900, as it is once the intent has ended,
// not rejected as a semantic error (1300, with a warning).
func TestEventForATimedOutTargetOfAnOpenIntentIsAnswered1900(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	rec := adoptRec("int_expiredopen", "g1", time.Now())
	m.mu.Lock()
	li := newLiveIntent(rec)
	m.live[rec.IntentID] = li
	m.advance(li) // unit 0 dispatched
	li.expire()   // what expireAtCutoff does before progress finishes the intent
	m.mu.Unlock()
	acks, err := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "g1"}).SubscribeSync(subjects.Ack("g1"))
	if err != nil {
		t.Fatal(err)
	}
	publishSuccess(t, m.js, &rec, "g1")
	msg, err := acks.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no event.ack: %v", err)
	}
	var a bus.EventAck
	if err := bus.Decode(msg.Data, &a); err != nil {
		t.Fatal(err)
	}
	if a.AckStatus != bus.AckRejected || a.AckCode != bus.CodeNoResponse {
		t.Fatalf("event.ack %s %d, want rejected %d: its target ended timeout", a.AckStatus, a.AckCode, bus.CodeNoResponse)
	}
}

// A Mirage started after a crash has applied, in its replay, the events the crashed one
// read without acknowledging; the consumer delivers those again only after its 30 s ack
// wait. A recovered intent's cutoff soon after the start does not wait for them (10 s,
// then the warning that the consumer is not caught up).
func TestRecoveredIntentDoesNotWaitAtItsCutoffForEventsItsReplayRead(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	rec := shortRec("int_crashread", "g1", 3*time.Second)
	rec.Targets = []string{"g1", "g2"} // g2 never answers: the intent waits at its cutoff
	rec.Steps[0].Targets = rec.Targets
	data, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := startTestMirage(t, ns) // makes the durable consumer
	if _, err := a.intents.Create(ctx, rec.IntentID, data); err != nil {
		t.Fatal(err)
	}
	_ = a.Close()
	publishSuccess(t, a.js, &rec, "g1")
	// The Mirage that crashed had read it, and never acknowledged it.
	cons, err := a.js.Consumer(ctx, bus.StreamEvents, EventsConsumer)
	if err != nil {
		t.Fatal(err)
	}
	b, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	read := 0
	for range b.Messages() {
		read++
	}
	if read != 1 {
		t.Fatalf("the consumer delivered %d events, want the one stored", read)
	}
	var logs syncBuffer
	startTestMirageWith(t, ns, Config{}, warnLog(&logs))
	if cutoff := time.UnixMilli(rec.DeadlineMS).Add(resultGrace); !time.Now().Before(cutoff) {
		t.Fatalf("Mirage started past the cutoff %s", cutoff)
	}
	r := waitTerminal(t, ns, rec.IntentID)
	if r.Phase != bus.PhaseFailed || r.Counts.Success != 1 || r.Counts.Timeout != 1 {
		t.Fatalf("terminal report %s %q; want failed with g1 success (replayed) and g2 timeout", r.Phase, r.Summary)
	}
	if strings.Contains(logs.String(), "not caught up") {
		t.Fatalf("the cutoff waited for events the replay had applied:\n%s", logs.String())
	}
}

// A predecessor Mirage whose connection the server still holds (its host gone, the link
// not timed out yet) may have a pull open on the events consumer while the next one starts:
// the server delivers there messages stored after the new Mirage's recover read EDGE_EVT,
// and nobody processes them. Start must not count them as read: the consumer delivers them
// again after its ack wait, and an expiry waits for that. Here the test is the predecessor:
// its pull is open on the durable consumer, and while Start makes the consumer (the test
// relays Mirage's JetStream API and holds that request) the recovered intent's event is
// stored and delivered to the pull. Start took the consumer's last delivered sequence as
// read: the target ended timeout at the cutoff and the redelivery was answered 1900.
func TestStartDoesNotCountAsReadWhatAPredecessorIsDeliveredAfterRecover(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "mirage"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m, err := New(ctx, nc, Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.waits.catchUp = time.Second // past it, only the delivery to the predecessor holds the expiry
	rec := shortRec("int_predecessor", "g1", 4*time.Second)
	data, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.intents.Create(ctx, rec.IntentID, data); err != nil {
		t.Fatal(err)
	}
	// The predecessor's pull, open on the server.
	pnc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "predecessor"})
	pjs, err := jetstream.New(pnc)
	if err != nil {
		t.Fatal(err)
	}
	pcons, err := pjs.CreateOrUpdateConsumer(ctx, bus.StreamEvents, eventsConsumerConfig())
	if err != nil {
		t.Fatal(err)
	}
	pull, err := pcons.Fetch(1, jetstream.FetchMaxWait(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := pnc.Flush(); err != nil {
		t.Fatal(err)
	}
	// Mirage's JetStream API goes through $EDGETEST.API, relayed as is, but for the request
	// that makes the events consumer: before it, the event is stored and delivered to the
	// predecessor.
	pub, err := jetstream.New(natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "g1"}))
	if err != nil {
		t.Fatal(err)
	}
	type taken struct {
		msg jetstream.Msg
		seq uint64
		err error
	}
	took := make(chan taken, 1)
	relay := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "relay"})
	create := "CONSUMER.CREATE." + bus.StreamEvents + "." + EventsConsumer
	sub, err := relay.Subscribe("$EDGETEST.API.>", func(msg *nats.Msg) {
		api := strings.TrimPrefix(msg.Subject, "$EDGETEST.API.")
		if api == create || strings.HasPrefix(api, create+".") {
			var got taken
			if _, got.err = publishSuccessTo(ctx, pub, &rec, "g1"); got.err == nil {
				select {
				case got.msg = <-pull.Messages():
				case <-time.After(10 * time.Second):
				}
			}
			switch {
			case got.err != nil:
			case got.msg == nil:
				got.err = fmt.Errorf("the predecessor's pull got nothing: %v", pull.Error())
			default:
				md, err := got.msg.Metadata()
				if got.err = err; err == nil {
					got.seq = md.Sequence.Stream
				}
			}
			took <- got
		}
		_ = relay.PublishMsg(&nats.Msg{Subject: "$JS.API." + api, Reply: msg.Reply, Header: msg.Header, Data: msg.Data})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if m.js, err = jetstream.NewWithAPIPrefix(nc, "$EDGETEST.API"); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var lost taken
	select {
	case lost = <-took:
	default:
		t.Fatal("Start made the events consumer without the test's relay")
	}
	if lost.err != nil {
		t.Fatal(lost.err)
	}
	if got := m.read.seq.Load(); got >= lost.seq {
		t.Fatalf("read mark %d after Start; want it below %d, delivered to the predecessor only", got, lost.seq)
	}
	cutoff := time.UnixMilli(rec.DeadlineMS).Add(resultGrace)
	if !time.Now().Before(cutoff) {
		t.Fatalf("Mirage started past the cutoff %s", cutoff)
	}
	for time.Now().Before(cutoff.Add(storeSettle + 2*time.Second)) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := lost.msg.Nak(); err != nil { // the redelivery, sooner than the 30 s ack wait
		t.Fatal(err)
	}
	r := waitTerminal(t, ns, rec.IntentID)
	if r.Phase != bus.PhaseSatisfied || len(r.Results) != 1 || r.Results[0].Outcome != bus.OutcomeSuccess {
		t.Fatalf("terminal report %s %q %+v; want satisfied: the event was stored before the deadline, delivered to the predecessor only, then again", r.Phase, r.Summary, r.Results)
	}
}

// Many intents waiting at their cutoffs share one poll of the consumer's ack floor every
// 250 ms (one request, not one per intent, just when the server is behind), and its answer
// serves them all.
func TestReadMarkWaitersShareOneFloorPoll(t *testing.T) {
	r := newReadMark()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const waiters = 20
	var caughtUp atomic.Bool // once set, the ack floor is past every waited-for sequence
	var total atomic.Int32
	polls := make([]atomic.Int32, waiters)
	results := make(chan bool, waiters)
	for i := range waiters {
		go func() {
			ok, _ := r.wait(ctx, 100, func(context.Context) (uint64, uint64, error) {
				polls[i].Add(1)
				total.Add(1)
				if caughtUp.Load() {
					return 100, 100, nil
				}
				return 0, 0, nil
			})
			results <- ok
		}()
	}
	for total.Load() < 3 { // a few rounds of polls
		if ctx.Err() != nil {
			t.Fatal("the ack floor was never polled")
		}
		time.Sleep(10 * time.Millisecond)
	}
	caughtUp.Store(true)
	for range waiters {
		if !<-results {
			t.Fatal("a waiter gave up; want every one caught up by the floor")
		}
	}
	polled := 0
	for i := range polls {
		if polls[i].Load() > 0 {
			polled++
		}
	}
	if polled != 1 {
		t.Fatalf("%d of %d waiters polled the ack floor (%d polls); want one polling for all", polled, waiters, total.Load())
	}
}

// Event ingest wakes the waiters only once the mark reaches the lowest sequence one of
// them waits for, not at every event.
func TestReadMarkWakesWaitersOnlyAtTheirMark(t *testing.T) {
	r := newReadMark()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan bool, 1)
	go func() {
		ok, _ := r.wait(ctx, 100, func(context.Context) (uint64, uint64, error) { return 0, 0, nil })
		done <- ok
	}()
	// Once the waiter is in, events below its mark leave it asleep.
	for {
		r.mu.Lock()
		in := len(r.waited) > 0
		r.mu.Unlock()
		if in {
			break
		}
		time.Sleep(time.Millisecond)
	}
	r.mu.Lock()
	before := r.wake
	r.mu.Unlock()
	for seq := uint64(1); seq < 100; seq++ {
		r.advance(seq)
	}
	r.mu.Lock()
	same := r.wake == before
	r.mu.Unlock()
	if !same {
		t.Fatal("events below the waited-for sequence woke the waiter")
	}
	r.advance(100)
	if !<-done {
		t.Fatal("the waiter was not woken at its mark")
	}
}

// resumeEventsAndExpectSatisfied starts m's events consumer (stopped by the test) and
// waits for intent id's terminal report, which must be satisfied: its event was stored
// before the deadline.
func resumeEventsAndExpectSatisfied(t *testing.T, ctx context.Context, m *Mirage, ns *natsd.Server, id string) {
	t.Helper()
	cons, err := m.js.Consumer(ctx, bus.StreamEvents, EventsConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if m.cc, err = cons.Consume(m.onEvent); err != nil {
		t.Fatal(err)
	}
	r := waitTerminal(t, ns, id)
	if r.Phase != bus.PhaseSatisfied || len(r.Results) != 1 || r.Results[0].Outcome != bus.OutcomeSuccess {
		t.Fatalf("terminal report %s %q %+v; want satisfied: the event was stored before the deadline", r.Phase, r.Summary, r.Results)
	}
}

// followWithLaggingConsumer makes rec a live intent of m with its deadline armed and unit 0
// dispatched, and stops m's events consumer: it reads nothing until the test resumes it.
func followWithLaggingConsumer(m *Mirage, rec IntentRecord) *liveIntent {
	m.mu.Lock()
	li := newLiveIntent(rec)
	m.live[rec.IntentID] = li
	m.arm(li)
	m.advance(li)
	m.mu.Unlock()
	stopEventsConsumer(m)
	return li
}

// stopEventsConsumer stops m's events consumer and its supervision (superviseEvents,
// which would start it again), as Close does: nothing is read until the test starts a
// delivery (m.cc) itself.
func stopEventsConsumer(m *Mirage) {
	m.ccMu.Lock()
	m.ccStopped = true
	cc := m.cc
	m.ccMu.Unlock()
	cc.Stop()
	<-cc.Closed()
}

// An event whose delivery to Mirage was lost on its way (across a reconnect, say; here the
// test takes it from the consumer itself and leaves it unacknowledged) while a later event
// reached Mirage is waited for at the cutoff: the consumer delivers it again after its ack
// wait (the test has it sooner, with a nak, once the catch-up wait, which it shortens, is
// over) and it counts. A read mark at the highest sequence read would not wait: the target
// would end timeout and the event be answered 1900.
func TestLostDeliveryIsWaitedForAtTheCutoff(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	m.waits.catchUp = 500 * time.Millisecond // past it, only the lost delivery holds the expiry
	acks, err := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "g1"}).SubscribeSync(subjects.Ack("g1"))
	if err != nil {
		t.Fatal(err)
	}
	rec := shortRec("int_lostdelivery", "g1", 2*time.Second)
	lost := followWithALostDelivery(t, m, ns, rec)
	cutoff := time.UnixMilli(rec.DeadlineMS).Add(resultGrace)
	for time.Now().Before(cutoff.Add(storeSettle + 1500*time.Millisecond)) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := lost.Nak(); err != nil {
		t.Fatal(err)
	}
	wantLostDeliveryCounted(t, ns, rec, acks)
}

// wantLostDeliveryCounted waits for rec's terminal report, which must be satisfied (the
// event was stored before the deadline, its delivery lost and made again), and for the
// event.ack on acks, which must accept it.
func wantLostDeliveryCounted(t *testing.T, ns *natsd.Server, rec IntentRecord, acks *nats.Subscription) {
	t.Helper()
	r := waitTerminal(t, ns, rec.IntentID)
	if r.Phase != bus.PhaseSatisfied || len(r.Results) != 1 || r.Results[0].Outcome != bus.OutcomeSuccess {
		t.Fatalf("terminal report %s %q %+v; want satisfied: the event was stored before the deadline, its delivery lost and made again", r.Phase, r.Summary, r.Results)
	}
	msg, err := acks.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no event.ack: %v", err)
	}
	var a bus.EventAck
	if err := bus.Decode(msg.Data, &a); err != nil {
		t.Fatal(err)
	}
	if a.AckStatus != bus.AckAccepted {
		t.Fatalf("event.ack %s %d, want accepted", a.AckStatus, a.AckCode)
	}
}

// takeTheDelivery follows rec with m's events consumer stopped, stores g1's success event
// for it, and takes that event's delivery from m's consumer, unacknowledged: the delivery
// Mirage never sees. It returns the message and the consumer.
func takeTheDelivery(t *testing.T, m *Mirage, rec IntentRecord) (jetstream.Msg, jetstream.Consumer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	followWithLaggingConsumer(m, rec)
	publishSuccess(t, m.js, &rec, "g1")
	cons, err := m.js.Consumer(ctx, bus.StreamEvents, EventsConsumer)
	if err != nil {
		t.Fatal(err)
	}
	b, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var lost jetstream.Msg
	for msg := range b.Messages() {
		lost = msg
	}
	if lost == nil {
		t.Fatal("the consumer delivered nothing; want the event stored")
	}
	return lost, cons
}

// A lost delivery of the newest message in EDGE_EVT is waited for too: nothing later is read
// to show the hole, but the consumer's info, which the expiry polls, says the message was
// delivered while Mirage had not read it. Here the test takes the intent's event from the
// consumer (the delivery returned, unacknowledged) and nothing is stored after it; once the
// catch-up wait (shortened) is over it naks it, and the redelivery counts. Without the
// poll's note the expiry gave up at the catch-up wait: the target ended timeout and the
// redelivery was answered 1900.
func TestLostDeliveryOfTheLastMessageIsWaitedFor(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	m.waits.catchUp = time.Second // past it, only the lost delivery holds the expiry
	acks, err := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "g1"}).SubscribeSync(subjects.Ack("g1"))
	if err != nil {
		t.Fatal(err)
	}
	rec := shortRec("int_losttail", "g1", 2*time.Second)
	lost, cons := takeTheDelivery(t, m, rec)
	if m.cc, err = cons.Consume(m.onEvent); err != nil {
		t.Fatal(err)
	}
	cutoff := time.UnixMilli(rec.DeadlineMS).Add(resultGrace)
	if !time.Now().Before(cutoff) {
		t.Fatalf("the delivery was lost past the cutoff %s", cutoff)
	}
	for time.Now().Before(cutoff.Add(storeSettle + 2*time.Second)) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := lost.Nak(); err != nil { // the redelivery, sooner than the 30 s ack wait
		t.Fatal(err)
	}
	wantLostDeliveryCounted(t, ns, rec, acks)
}

// The wait for a lost delivery is bounded: when the consumer does not deliver it again in
// time (here the bound is shortened below its ack wait), the pending target ends timeout
// with the warning that the consumer was not caught up.
func TestExpiryDoesNotWaitForeverForALostDelivery(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	var logs syncBuffer
	m := startTestMirageWith(t, ns, Config{}, warnLog(&logs))
	m.waits = expiryWaits{catchUp: 500 * time.Millisecond, lost: 4 * time.Second}
	rec := shortRec("int_lostforgood", "g1", 2*time.Second)
	followWithALostDelivery(t, m, ns, rec)
	r := waitTerminal(t, ns, rec.IntentID)
	cutoff := time.UnixMilli(rec.DeadlineMS).Add(resultGrace)
	if late := time.Since(cutoff); late > 10*time.Second {
		t.Fatalf("the intent ended %s past its cutoff; want within the 4 s bound", late)
	}
	if r.Phase != bus.PhaseFailed || len(r.Results) != 1 || r.Results[0].Outcome != bus.OutcomeTimeout {
		t.Fatalf("terminal report %s %q %+v; want failed with the target timeout", r.Phase, r.Summary, r.Results)
	}
	if !strings.Contains(logs.String(), "not caught up") {
		t.Fatalf("no warning that the consumer was not caught up:\n%s", logs.String())
	}
}

// followWithALostDelivery makes rec a live intent of m whose event (of unit 0, from g1) is
// stored in EDGE_EVT and delivered by m's events consumer, but not to Mirage: the test
// takes it (the delivery returned, unacknowledged) while m's consumer is stopped. Then an
// intent of its own gets an event from g2, which Mirage reads once its consumer resumes.
func followWithALostDelivery(t *testing.T, m *Mirage, ns *natsd.Server, rec IntentRecord) jetstream.Msg {
	t.Helper()
	lost, cons := takeTheDelivery(t, m, rec)
	later := shortRec(rec.IntentID+"_later", "g2", time.Minute)
	m.mu.Lock()
	li := newLiveIntent(later)
	m.live[later.IntentID] = li
	m.arm(li)
	m.advance(li)
	m.mu.Unlock()
	publishSuccess(t, m.js, &later, "g2")
	var err error
	if m.cc, err = cons.Consume(m.onEvent); err != nil {
		t.Fatal(err)
	}
	if r := waitTerminal(t, ns, later.IntentID); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("terminal report of the later intent %s %q; want satisfied", r.Phase, r.Summary)
	}
	if cutoff := time.UnixMilli(rec.DeadlineMS).Add(resultGrace); !time.Now().Before(cutoff) {
		t.Fatalf("Mirage read the later event past the cutoff %s", cutoff)
	}
	return lost
}

// The read mark moves over what was read without a gap only: a hole holds it until it is
// filled (the lost message read) or the consumer's ack floor passes it (a sequence the
// stream does not hold), and holes past maxReadRuns count as read.
func TestReadMarkHoldsAtAHole(t *testing.T) {
	r := newReadMark()
	step := func(what string, f func(), want uint64) {
		t.Helper()
		f()
		if got := r.seq.Load(); got != want {
			t.Fatalf("%s: mark %d, want %d (runs %+v)", what, got, want, r.runs)
		}
	}
	step("in order", func() { r.one(1) }, 1)
	step("past a hole at 2", func() { r.one(3); r.one(4) }, 1)
	if _, hole := r.holeBelow(4); !hole {
		t.Fatal("no hole below 4; want the one at 2")
	}
	if _, hole := r.holeBelow(1); hole {
		t.Fatal("a hole below 1; want none")
	}
	step("the hole filled", func() { r.one(2) }, 4)
	step("the ack floor passes a hole the stream does not hold", func() { r.one(6); r.advance(5) }, 6)
	step("holes at 7 and 9, then 9 filled", func() { r.one(8); r.one(10); r.one(9) }, 6)
	if len(r.runs) != 1 {
		t.Fatalf("runs %+v, want 8-10 as one", r.runs)
	}
	step("7 filled", func() { r.one(7) }, 10)
	step("a redelivery below the mark", func() { r.one(5) }, 10)
	step("a hole in the middle of a hole", func() { r.one(20); r.one(15); r.one(14); r.one(16) }, 10)
	step("the ack floor inside a run", func() { r.advance(15) }, 16)
	step("a hole below everything read", func() { r.advance(20) }, 20)
	step("more holes than kept", func() {
		for i := range uint64(maxReadRuns + 1) {
			r.one(22 + 2*i)
		}
	}, 22)
	if len(r.runs) != maxReadRuns {
		t.Fatalf("%d runs kept, want %d", len(r.runs), maxReadRuns)
	}
}

// A message the consumer delivered that Mirage has not read, with nothing read past it, is
// a hole too once the floor poll shows it delivered (the consumer's last delivered
// sequence at or past it): holeBelow reports it, seen at that poll, for as long as a
// waiter holds the sequence; a delivered sequence below the waited one shows none.
func TestReadMarkSeesAHoleAtTheLastDelivery(t *testing.T) {
	r := newReadMark()
	r.one(1)
	poll := func(seq, delivered uint64) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*floorEvery)
		defer cancel()
		if ok, _ := r.wait(ctx, seq, func(context.Context) (uint64, uint64, error) { return 1, delivered, nil }); ok {
			t.Fatalf("the mark reached %d; want it held at 1", seq)
		}
	}
	r.enter(3) // as readThrough does, across its rounds
	poll(3, 2)
	if _, hole := r.holeBelow(3); hole {
		t.Fatal("a hole below 3 with the consumer's delivery at 2; want none seen yet")
	}
	before := time.Now()
	poll(3, 3)
	seen, hole := r.holeBelow(3)
	if !hole || seen.Before(before) || seen.After(time.Now()) {
		t.Fatalf("holeBelow(3) = %s, %v; want the hole seen at a poll after %s", seen, hole, before)
	}
	poll(3, 4)
	if again, _ := r.holeBelow(3); !again.Equal(seen) {
		t.Fatalf("the hole below 3 seen at %s, then %s; want the first poll that showed it kept", seen, again)
	}
	r.advance(3)
	if _, hole := r.holeBelow(3); hole {
		t.Fatal("a hole below 3 once the mark reached it")
	}
	r.leave(3)
	if len(r.waited) != 0 {
		t.Fatalf("waited %v once every waiter left; want nothing kept", r.waited)
	}
}
