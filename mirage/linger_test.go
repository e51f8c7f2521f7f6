package mirage

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
	"github.com/edgectl/edgectl/subjects"
)

// blockingRec is an intent of one blocking step, seed.flow sleep on ghost, with a minute
// to run: a lock lingering for it would be kept about two minutes.
func blockingRec(id, ghost string, now time.Time) IntentRecord {
	rec := adoptRec(id, ghost, now)
	rec.Issue.Objective.Operation = "sleep"
	rec.Issue.Objective.Args = map[string]string{"ms": "100"}
	rec.Steps = []StepRecord{{Objective: rec.Issue.Objective, Targets: []string{ghost}, Blocking: true}}
	return rec
}

// The deadline timer times a unit out (expire), lets go of m.mu, then moves the rollout,
// which frees the step's locks (progress → releaseLocks). A command's terminal event
// handled in between is too late to count, but it shows the command ended: its lock must
// not linger for an event that will never come again, holding the next blocking step on
// the same ghost::seed until deliver_by + timeout + 2 s.
func TestLockDoesNotLingerForACommandWhoseEventCameAtTheDeadline(t *testing.T) {
	for _, tc := range []struct {
		name string
		late bool
	}{
		{"stored by the cutoff", false},
		// The deadline moved to 1 s ago once the command left: EDGE_EVT stores the event
		// past the cutoff (1900, never counted), while the command's latest possible
		// end is a minute away.
		{"stored after the cutoff", true},
	} {
		late := tc.late
		t.Run(tc.name, func(t *testing.T) {
			ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
			m := startTestMirage(t, ns)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			now := time.Now()
			first := blockingRec("int_lingera", "g1", now)
			m.mu.Lock()
			li := newLiveIntent(first)
			m.live[first.IntentID] = li
			if units, _ := m.advance(li); len(units) != 1 || li.waiting != "" {
				m.mu.Unlock()
				t.Fatalf("first intent: units %v, waiting %q; want its one unit dispatched under the lock", units, li.waiting)
			}
			if late {
				li.rec.DeadlineMS = time.Now().Add(-time.Second).UnixMilli()
			}
			li.expire() // the deadline: the unit is timeout
			m.mu.Unlock()

			// The command's terminal event comes before the rollout moves.
			acks, err := m.nc.SubscribeSync(subjects.Ack("g1"))
			if err != nil {
				t.Fatal(err)
			}
			defer acks.Unsubscribe()
			cmd := CommandID(first.IntentID, 0)
			ev := &bus.Event{Header: bus.NewHeader(bus.TypeEvent, first.Issue.TraceID, now), EventID: bus.EventID("g1", cmd),
				CommandID: cmd, IntentID: first.IntentID, ExecutionID: subjects.NewID(subjects.PrefixExecution), GhostID: "g1",
				SeedID: "seed.flow", Operation: "sleep", Outcome: bus.OutcomeSuccess, Result: bus.Result{Status: "ok"},
				StartedMS: now.UnixMilli(), FinishedMS: time.Now().UnixMilli()}
			data, err := bus.Encode(ev)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.js.PublishMsg(ctx, bus.NewMsg(subjects.Event("g1"), data, ev.EventID, ev.TraceID)); err != nil {
				t.Fatal(err)
			}
			msg, err := acks.NextMsg(10 * time.Second)
			if err != nil {
				t.Fatalf("no event.ack for the event: %v", err)
			}
			var ack bus.EventAck
			if err := bus.Decode(msg.Data, &ack); err != nil || ack.EventID != ev.EventID {
				t.Fatalf("event.ack %s (%v), want one for %s", msg.Data, err, ev.EventID)
			}

			m.progress(first.IntentID) // what the deadline timer does next
			second := blockingRec("int_lingerb", "g1", time.Now())
			m.mu.Lock()
			defer m.mu.Unlock()
			if _, still := m.live[first.IntentID]; still {
				t.Fatal("the first intent did not end at its deadline")
			}
			li2 := newLiveIntent(second)
			m.live[second.IntentID] = li2
			if units, _ := m.advance(li2); len(units) != 1 || li2.waiting != "" {
				t.Fatalf("second intent: units %v, %q; want it to run: the first intent's command has ended", units, li2.waiting)
			}
		})
	}
}

// A blocking step's command ends after the cutoff: its event is stored late, and the
// Mirage that followed the intent read it, answered it (1900) and acked it on the durable
// consumer, then stopped before the intent's terminal report was stored. The next Mirage
// recovers the intent; its replay finds that late event (never delivered to it again):
// the timed-out unit's lock must not linger for a command known to have ended.
func TestLockDoesNotLingerAfterRestartForALateEventAlreadyAnswered(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	now := time.Now()
	rec := blockingRec("int_lingerr", "g1", now) // TimeoutMS 60 s: a linger lasts a minute
	rec.DeadlineMS = now.Add(1500 * time.Millisecond).UnixMilli()
	rec.DeliverByMS = rec.DeadlineMS
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
	// Its command was sent (EDGE_CMD holds it): the recovering Mirage follows it to its end.
	if _, err := a.js.PublishMsg(ctx, bus.NewMsg(subjects.Command("g1"), []byte(`{}`), CommandID(rec.IntentID, 0), rec.Issue.TraceID)); err != nil {
		t.Fatal(err)
	}
	_ = a.Close()
	cutoff := time.UnixMilli(rec.DeadlineMS).Add(resultGrace)
	for time.Now().Before(cutoff.Add(100 * time.Millisecond)) {
		time.Sleep(20 * time.Millisecond)
	}
	if stored := publishSuccess(t, a.js, &rec, "g1"); !stored.After(cutoff) {
		t.Fatalf("stored %s, not after the cutoff %s", stored, cutoff)
	}
	// The Mirage that followed the intent read the event and answered it (acked).
	cons, err := a.js.Consumer(ctx, bus.StreamEvents, EventsConsumer)
	if err != nil {
		t.Fatal(err)
	}
	b, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for msg := range b.Messages() {
		if err := msg.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	m := startTestMirage(t, ns)
	if r := waitTerminal(t, ns, rec.IntentID); r.Phase != bus.PhaseFailed {
		t.Fatalf("terminal report %s %q; want failed (timeout: its event was late)", r.Phase, r.Summary)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if h := m.lingers.byKey[lockKey("g1", "seed.flow")]; h != nil {
		t.Fatalf("lock %s lingers until %s for command %s, whose terminal event EDGE_EVT holds", h.key, h.until.Format(time.RFC3339), h.commandID)
	}
}
