package mirage

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
	"github.com/edgectl/edgectl/subjects"
)

// An in_progress report that no stream answered (EDGE_REPORT electing a leader) is not
// re-sent by nats.go 250 ms later: that re-send could be stored after the intent's
// terminal report, published meanwhile, and a client's LatestReport (the last message of
// report.<intent_id>) would show the intent in_progress for ever, a 'report --watch'
// following from it wait for a report that came before. Seen in a chaos run on a 3-node
// cluster: in_progress stored after satisfied. Here the stream is away when the in_progress
// report leaves and back before nats.go's re-send, and the terminal report is published
// after it: the terminal report stays the last one.
func TestInProgressReportIsNotResentAfterTheTerminalOne(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	js, err := jetstream.New(natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "inspect"}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, bus.StreamReports)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const id = "int_reportorder"
	report := func(phase string) *bus.Report {
		return &bus.Report{Header: bus.NewHeader(bus.TypeReport, "", time.Now()), IntentID: id, Phase: phase,
			CompletionState: "open", Summary: phase, Results: []bus.TargetResult{}}
	}
	if err := js.DeleteStream(ctx, bus.StreamReports); err != nil {
		t.Fatal(err)
	}
	m.publishAsync(report(bus.PhaseInProgress)) // no stream: answered "no responders"
	time.Sleep(50 * time.Millisecond)
	if _, err := js.CreateStream(ctx, info.Config); err != nil {
		t.Fatal(err)
	}
	m.publishAsync(report(bus.PhaseSatisfied))
	time.Sleep(1500 * time.Millisecond) // past nats.go's two re-sends, 250 ms apart
	last, err := s.GetLastMsgForSubject(ctx, subjects.Report(id))
	if err != nil {
		t.Fatal(err)
	}
	if got := last.Header.Get(bus.HeaderPhase); got != bus.PhaseSatisfied {
		t.Fatalf("the last report of the intent is %s (seq %d), stored after its terminal report", got, last.Sequence)
	}
}

// A terminal report is final for the readers too: an in_progress report stored after it
// (an older Mirage's, published as the one that took over ended the intent) neither makes
// a client's LatestReport show the intent in_progress nor makes 'report --watch'
// (FollowReports) start after the terminal report and wait for one that came before.
func TestReadersTakeTheTerminalReportOverALaterOne(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	startTestMirage(t, ns)
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "client"})
	c, err := NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const id = "int_terminalfirst"
	for _, phase := range []string{bus.PhaseInProgress, bus.PhaseFailed, bus.PhaseInProgress} {
		r := &bus.Report{Header: bus.NewHeader(bus.TypeReport, "", time.Now()), IntentID: id, Phase: phase,
			CompletionState: "open", Summary: phase, Results: []bus.TargetResult{}}
		data, err := bus.Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.PublishMsg(ctx, bus.NewReportMsg(r, data)); err != nil {
			t.Fatal(err)
		}
	}
	r, err := c.LatestReport(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if r.Phase != bus.PhaseFailed {
		t.Fatalf("LatestReport: %s, want the terminal report stored before it (failed)", r.Phase)
	}
	fctx, stop := context.WithTimeout(ctx, 5*time.Second)
	defer stop()
	var first string
	if err := c.FollowReports(fctx, id, func(r *bus.Report) bool { first = r.Phase; return false }); err != nil {
		t.Fatalf("FollowReports: %v (first report seen: %q)", err, first)
	}
	if first != bus.PhaseFailed {
		t.Fatalf("FollowReports began with %q, want the terminal report (failed)", first)
	}
}
