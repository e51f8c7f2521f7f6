package ghost_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// storedEvent returns the event eventID as EDGE_EVT holds it.
func storedEvent(t *testing.T, env *testenv.Env, eventID string) (bus.Event, bool) {
	t.Helper()
	for _, ev := range env.Events(env.JetStream()) {
		if ev.EventID == eventID {
			return ev, true
		}
	}
	return bus.Event{}, false
}

// ackEvents stands in for Mirage's event.ack: every event published on evt.<id> is
// answered on ack.<id>, accepted.
func ackEvents(t *testing.T, env *testenv.Env, id string) {
	t.Helper()
	nc := env.Conn("mirage stand-in")
	sub, err := nc.Subscribe(subjects.Event(id), func(m *nats.Msg) {
		var ev bus.Event
		if bus.Decode(m.Data, &ev) != nil {
			return
		}
		ack := bus.EventAck{Header: bus.NewHeader(bus.TypeEventAck, ev.TraceID, time.Now()), EventID: ev.EventID, CommandID: ev.CommandID, GhostID: id, AckStatus: bus.AckAccepted}
		if data, err := bus.Encode(&ack); err == nil {
			_ = nc.Publish(subjects.Ack(id), data)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// A Ghost stopped during an execution interrupts it after the grace and stores its 1700
// event before Close returns, rather than at a next start that a decommissioned Ghost
// never has (Mirage would report the target timeout). An execution that finishes during
// the grace has its event.ack recorded: ack.<id> is still listened to.
func TestStopStoresTheEventsOfInterruptedExecutions(t *testing.T) {
	env := testenv.New(t)
	const id = "edge-stop"
	const grace = 1500 * time.Millisecond
	ackEvents(t, env, id)
	g := env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) { c.ShutdownGrace = grace }))
	short, _ := storeCommand(t, env, id, "sleep", map[string]string{"ms": "300"})
	long, _ := storeCommand(t, env, id, "sleep", map[string]string{"ms": "15000"})
	ctx := context.Background()
	testenv.Eventually(t, 5*time.Second, "both executions started", func() bool {
		_, e1 := g.Store().GetByCommandID(ctx, short)
		_, e2 := g.Store().GetByCommandID(ctx, long)
		return e1 == nil && e2 == nil
	})

	began := time.Now()
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > grace+5*time.Second {
		t.Fatalf("Close took %s, want about the grace (%s)", took, grace)
	}
	ev, ok := storedEvent(t, env, bus.EventID(id, long))
	if !ok {
		t.Fatal("the interrupted execution's event is not in EDGE_EVT after Close: it waits for a next start")
	}
	if ev.Outcome != bus.OutcomeError || ev.Error == nil || ev.Error.Code != bus.CodeInterrupted {
		t.Fatalf("interrupted execution's event %+v, want 1700", ev)
	}
	if ev, ok := storedEvent(t, env, bus.EventID(id, short)); !ok || ev.Outcome != bus.OutcomeSuccess {
		t.Fatalf("the execution finished during the grace: event %+v (stored %v), want success", ev, ok)
	}
	if e, err := g.Store().GetByCommandID(ctx, short); err != nil || !e.Acked {
		t.Fatalf("the execution finished during the grace is %+v (%v), want its event.ack recorded", e, err)
	}
}

// The flush after the grace is bounded: with EDGE_EVT refusing events, Close returns
// after the grace and the flush window, the interrupted execution recorded (its event is
// re-sent at the next start).
func TestStopWithEventsRefusedEndsAfterTheFlushWindow(t *testing.T) {
	env := testenv.New(t)
	ctx := context.Background()
	js := env.JetStream()
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	const id = "edge-flush"
	const grace, flush = 200 * time.Millisecond, 700 * time.Millisecond
	g := env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) { c.ShutdownGrace, c.ShutdownFlush = grace, flush }))
	long, _ := storeCommand(t, env, id, "sleep", map[string]string{"ms": "15000"})
	refuseEvents(t, js) // after storeCommand, which provisions the streams as they should be
	testenv.Eventually(t, 5*time.Second, "the execution started", func() bool {
		_, err := g.Store().GetByCommandID(ctx, long)
		return err == nil
	})
	began := time.Now()
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	if took < grace+flush-100*time.Millisecond || took > grace+flush+3*time.Second {
		t.Fatalf("Close took %s, want the grace and the flush window (%s)", took, grace+flush)
	}
	e, err := g.Store().GetByCommandID(ctx, long)
	if err != nil || e.State != ghost.StateFinished || e.Event == nil || e.Event.Error == nil || e.Event.Error.Code != bus.CodeInterrupted {
		t.Fatalf("interrupted execution recorded as %+v (%v), want finished with 1700", e, err)
	}
}

// refuseEvents makes EDGE_EVT refuse every event (each is larger than 64 bytes), as a
// store refusing writes does: a publish fails at once. bus.EnsureAssets restores it.
func refuseEvents(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	ctx := context.Background()
	stream, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.CachedInfo().Config
	cfg.MaxMsgSize = 64
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("make %s refuse events: %v", bus.StreamEvents, err)
	}
}
