package test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// A client waiting for a terminal report takes it as Mirage publishes it, without
// waiting for EDGE_REPORT to store it (an fsync with --sync always): here the stream
// refuses every copy (a wrong expected sequence), so only the live subscription can see
// the report. Junk and an in_progress report on the same subject are passed over.
func TestWaitTerminalTakesTheReportAsPublished(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	client := env.Client()
	pub := env.Conn("publisher")
	intentID := subjects.NewID(subjects.PrefixIntent)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	report := func(phase, state string) *nats.Msg {
		r := &bus.Report{Header: bus.NewHeader(bus.TypeReport, subjects.NewTraceID(), time.Now()), IntentID: intentID, Phase: phase, CompletionState: state,
			Summary: phase, Counts: bus.Counts{Targets: 1}, Results: []bus.TargetResult{}}
		data, err := bus.Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		msg := bus.NewReportMsg(r, data)
		msg.Header.Set(jetstream.ExpectedLastSeqHeader, "999999") // never stored
		return msg
	}
	junk := nats.NewMsg(subjects.Report(intentID))
	junk.Data = []byte(`{"phase":"satisfied"`)
	junk.Header.Set(jetstream.ExpectedLastSeqHeader, "999999")

	type waited struct {
		r   *bus.Report
		err error
	}
	done := make(chan waited, 1)
	go func() {
		r, err := client.WaitTerminal(ctx, intentID)
		done <- waited{r, err}
	}()
	// Until the waiter has its subscription, the copies are lost: send them again.
	var got waited
	for sent := false; !sent; {
		for _, m := range []*nats.Msg{junk, report(bus.PhaseInProgress, "open"), report(bus.PhaseSatisfied, "complete")} {
			if err := pub.PublishMsg(m); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case got = <-done:
			sent = true
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("no terminal report: the waiter reads only what EDGE_REPORT stores")
		}
	}
	if got.err != nil || got.r.Phase != bus.PhaseSatisfied || got.r.IntentID != intentID {
		t.Fatalf("WaitTerminal: %v %+v", got.err, got.r)
	}
	stream, err := env.JetStream().Stream(ctx, bus.StreamReports)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.GetLastMsgForSubject(ctx, subjects.Report(intentID)); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("EDGE_REPORT holds a report of the intent (err %v): the test proves nothing", err)
	}
}
