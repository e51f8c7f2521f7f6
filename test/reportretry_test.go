package test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// watchAcks returns every event.ack to ghostID, watched on core NATS as the Ghost
// receives them, until the test ends.
func watchAcks(t *testing.T, env *testenv.Env, ghostID string) <-chan bus.EventAck {
	t.Helper()
	acks := make(chan bus.EventAck, 16)
	sub, err := env.Conn("watch acks").Subscribe(subjects.Ack(ghostID), func(msg *nats.Msg) {
		var ack bus.EventAck
		if bus.Decode(msg.Data, &ack) == nil {
			acks <- ack
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return acks
}

// A terminal report whose publish fails is retried until EDGE_REPORT stores it, and stored
// once. Meanwhile the intent has ended but has no terminal report, so a late event for it
// is answered "already ended" (rejected, 1900) from memory: the record in edge_intents
// still says accepted and EDGE_REPORT holds nothing, so without that memory Mirage could
// not tell the event is late.
func TestTerminalReportRetriedUntilStored(t *testing.T) {
	const ghostID = "edge-retry"
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	env.StartGhost(ghostID)
	client := env.Client()
	js := env.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	acks := watchAcks(t, env, ghostID)
	ackFor := func(what string, match func(bus.EventAck) bool) bus.EventAck {
		t.Helper()
		for {
			select {
			case ack := <-acks:
				if match(ack) {
					return ack
				}
			case <-ctx.Done():
				t.Fatalf("no event.ack for %s", what)
			}
		}
	}

	stream, original := pauseReports(t, ctx, js)

	is := testenv.NewIssue(ghostID, "seed.flow", "echo", map[string]string{"message": "hi"}, 10*time.Second)
	if _, err := client.Issue(ctx, is); err != nil {
		t.Fatalf("issue: %v", err)
	}
	// Mirage counts the event and ends the intent before it sends the event.ack, so an
	// accepted ack for the only command means the intent has ended in Mirage.
	cmdID := mirage.CommandID(is.IntentID, 0)
	if ack := ackFor("the Ghost's event", func(a bus.EventAck) bool { return a.CommandID == cmdID }); ack.AckStatus != bus.AckAccepted {
		t.Fatalf("the Ghost's event answered %+v, want accepted", ack)
	}
	storesNothing(t, stream)

	// A late event of the ended intent: a different event_id, since EDGE_EVT would drop a
	// re-send of the Ghost's own one as a duplicate before Mirage sees it.
	now := time.Now().UnixMilli()
	late := &bus.Event{Header: bus.NewHeader(bus.TypeEvent, is.TraceID, time.Now()), EventID: subjects.NewID(subjects.PrefixEvent),
		CommandID: cmdID, IntentID: is.IntentID, ExecutionID: subjects.NewID(subjects.PrefixExecution), GhostID: ghostID,
		SeedID: "seed.flow", Operation: "echo", Outcome: bus.OutcomeSuccess, Result: bus.Result{Status: "ok", Stdout: "hi"},
		StartedMS: now, FinishedMS: now}
	data, err := bus.Encode(late)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctx, bus.NewMsg(subjects.Event(ghostID), data, late.EventID, late.TraceID)); err != nil {
		t.Fatal(err)
	}
	if ack := ackFor("the late event", func(a bus.EventAck) bool { return a.EventID == late.EventID }); ack.AckStatus != bus.AckRejected || ack.AckCode != bus.CodeNoResponse {
		t.Fatalf("late event answered %s %d, want rejected %d (intent already ended)", ack.AckStatus, ack.AckCode, bus.CodeNoResponse)
	}

	// Keep the store refusing over a few retries (250 ms, then 500 ms, ...), so that the
	// report is stored by a retry after retries failed, not by the first one.
	time.Sleep(time.Second)
	storesNothing(t, stream)
	if _, err := js.UpdateStream(ctx, original); err != nil {
		t.Fatalf("restore %s: %v", bus.StreamReports, err)
	}
	if info, err := stream.Info(ctx); err != nil || !slices.Equal(info.Config.Subjects, original.Subjects) {
		t.Fatalf("%s not restored: %+v %v", bus.StreamReports, info, err)
	}
	// The backoff is at most 2 s apart at this point; allow for more.
	testenv.Eventually(t, 8*time.Second, "the terminal report stored by a retry", func() bool {
		return len(reportsOf(t, js, is.IntentID)) > 0
	})
	// Close waits for every report publish and retry in flight: nothing more is stored
	// after it, so the count below is final.
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	got := reportsOf(t, js, is.IntentID)
	if len(got) != 1 {
		t.Fatalf("%d reports stored for %s, want exactly one (the terminal one)", len(got), is.IntentID)
	}
	if r := got[0]; r.Phase != bus.PhaseSatisfied || r.Counts != (bus.Counts{Targets: 1, Success: 1}) {
		t.Fatalf("stored report %s %+v, want satisfied with one success", r.Phase, r.Counts)
	}
}

// withGhost starts a server, Mirage and Ghost ghostID, and returns them with a client,
// the JetStream context and a context that ends with the test (at most 20 s).
func withGhost(t *testing.T, ghostID string) (*testenv.Env, *mirage.Client, jetstream.JetStream, context.Context) {
	t.Helper()
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	env.StartGhost(ghostID)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return env, env.Client(), env.JetStream(), ctx
}

// pauseReports pauses EDGE_REPORT: with no stream on report.*, a publish there finds no
// responders and fails at once, as on a store without quorum. It returns the stream and
// its configuration, to restore it with UpdateStream.
func pauseReports(t *testing.T, ctx context.Context, js jetstream.JetStream) (jetstream.Stream, jetstream.StreamConfig) {
	t.Helper()
	stream, err := js.Stream(ctx, bus.StreamReports)
	if err != nil {
		t.Fatal(err)
	}
	original := stream.CachedInfo().Config
	paused := original
	paused.Subjects = []string{"edge-test.reports-paused"}
	if _, err := js.UpdateStream(ctx, paused); err != nil {
		t.Fatalf("pause %s: %v", bus.StreamReports, err)
	}
	return stream, original
}

// storesNothing checks that the paused EDGE_REPORT holds no message at all (a consumer
// cannot filter on report.* while the stream does not listen there).
func storesNothing(t *testing.T, stream jetstream.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Fatalf("%s stores %d messages while paused", bus.StreamReports, info.State.Msgs)
	}
}

// reportsOf returns every report stored in EDGE_REPORT for an intent, oldest first.
func reportsOf(t *testing.T, js jetstream.JetStream, intentID string) []bus.Report {
	t.Helper()
	cons, remaining := reportConsumer(t, js, intentID)
	var out []bus.Report
	for remaining > 0 {
		batch, err := cons.Fetch(int(min(remaining, 100)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			var r bus.Report
			if err := bus.Decode(msg.Data(), &r); err != nil {
				t.Fatalf("stored report does not decode: %v", err)
			}
			out = append(out, r)
		}
		if n == 0 {
			break
		}
		remaining -= uint64(n)
	}
	return out
}

// reportConsumer opens an ordered consumer on report.<intentID> and returns it with the
// number of messages stored there.
func reportConsumer(t *testing.T, js jetstream.JetStream, intentID string) (jetstream.Consumer, uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, bus.StreamReports, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects.Report(intentID)}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return cons, info.NumPending
}

// An in_progress report the store does not take is superseded: its intent is reported
// again, as it is then, once the store is back, though no result changed meanwhile.
// Without that, the stream kept the intent's earlier state (here none: pending) until
// its next result or its end.
func TestLostInProgressReportIsSuperseded(t *testing.T) {
	const ghostID = "edge-progress"
	env, client, js, ctx := withGhost(t, ghostID)
	acked := make(chan struct{}, 1)
	sub, err := env.Conn("watch acks").Subscribe(subjects.Ack(ghostID), func(*nats.Msg) {
		select {
		case acked <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	stream, original := pauseReports(t, ctx, js)
	// One target answers at once, the other (never started) not before the timeout.
	is := testenv.NewIssue(ghostID+",edge-absent", "seed.flow", "echo", map[string]string{"message": "hi"}, 30*time.Second)
	if _, err := client.Issue(ctx, is); err != nil {
		t.Fatalf("issue: %v", err)
	}
	select {
	case <-acked:
	case <-ctx.Done():
		t.Fatal("no event.ack for the Ghost's event")
	}
	time.Sleep(time.Second) // several report rounds, each refused
	storesNothing(t, stream)
	if _, err := js.UpdateStream(ctx, original); err != nil {
		t.Fatalf("restore %s: %v", bus.StreamReports, err)
	}
	testenv.Eventually(t, 5*time.Second, "an in_progress report with the result, stored", func() bool {
		for _, r := range reportsOf(t, js, is.IntentID) {
			if r.Phase == bus.PhaseInProgress && r.Counts.Success == 1 && r.Counts.Pending == 1 {
				return true
			}
		}
		return false
	})
}

// A report request the store cannot answer is not "no such intent": with edge_intents out
// of reach (here a user denied its stream info), LatestReport of an intent with no report
// fails with an unavailability, so that 'miragectl report' exits 3, not 2.
func TestLatestReportWithoutTheIntentsBucketIsUnavailable(t *testing.T) {
	operator, mir, reader := newIdentity(t), newIdentity(t), newIdentity(t)
	users := natsd.Users(operator.PublicKey(), mir.PublicKey(), nil)
	denied := *users[0] // the operator's account
	denied.Nkey = reader.PublicKey()
	denied.Permissions = &server.Permissions{Publish: &server.SubjectPermission{
		Allow: []string{">"}, Deny: []string{"$JS.API.STREAM.INFO.KV_" + bus.BucketIntents},
	}}
	env := testenv.New(t, testenv.Users(append(users, &denied)))
	env.StartMirageOn(env.ConnWith("mirage", mir.NATSOption(), nats.CustomInboxPrefix(bus.MirageInbox())), mirage.Config{Identity: mir})
	client, err := mirage.NewClient(env.ConnWith("reader", reader.NATSOption()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = client.LatestReport(ctx, subjects.NewID(subjects.PrefixIntent))
	if err == nil || errors.Is(err, mirage.ErrIntentNotFound) || !errors.Is(err, bus.ErrUnavailable) {
		t.Fatalf("LatestReport without access to %s: %v, want an unavailability, not 'no such intent'", bus.BucketIntents, err)
	}
}

// While the store keeps refusing an open intent's in_progress reports, Mirage asks it
// less and less often (250 ms doubling to 8 s), not every 250 ms round: an outage is not
// made worse by one publish per open intent four times a second. Here EDGE_REPORT is
// paused and a stand-in answers every report publish with a store error, counting them.
func TestRefusedReportsBackOff(t *testing.T) {
	const ghostID = "edge-backoff"
	env, client, js, ctx := withGhost(t, ghostID)
	pauseReports(t, ctx, js)
	is := testenv.NewIssue(ghostID+",edge-absent", "seed.flow", "echo", map[string]string{"message": "hi"}, 30*time.Second)
	var attempts atomic.Int64
	refuser, err := env.Conn("refusing store").Subscribe(subjects.Report(is.IntentID), func(msg *nats.Msg) {
		attempts.Add(1)
		_ = msg.Respond([]byte(`{"error":{"code":503,"err_code":10008,"description":"stream offline"}}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = refuser.Unsubscribe() }()
	if _, err := client.Issue(ctx, is); err != nil {
		t.Fatalf("issue: %v", err)
	}
	testenv.Eventually(t, 5*time.Second, "a refused report", func() bool { return attempts.Load() > 0 })
	time.Sleep(500 * time.Millisecond)
	before := attempts.Load()
	time.Sleep(4 * time.Second)
	if n := attempts.Load() - before; n > 5 {
		t.Fatalf("%d report publishes in 4 s with the store refusing each: not backing off (every 250 ms would be 16)", n)
	}
}
