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

// A client's report watch is an ordered consumer the server removes soon after nobody
// pulls from it: a client that exits must not leave it behind for nats.go's default five
// minutes (thousands of consumers on EDGE_REPORT under a steady rate of issues).
func TestReportWatchConsumerDoesNotOutliveItsClient(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	startTestMirage(t, ns)
	c, err := NewClient(natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "client"}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	wctx, stopWatch := context.WithCancel(ctx)
	watching := make(chan error, 1)
	go func() {
		watching <- c.WatchReports(wctx, "int_nobodysintent", func(*bus.Report) bool { return true })
	}()
	js, err := jetstream.New(natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "inspect"}))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, bus.StreamReports)
	if err != nil {
		t.Fatal(err)
	}
	var seen int
	for seen == 0 {
		consumers := stream.ListConsumers(ctx)
		for info := range consumers.Info() {
			seen++
			if info.Config.InactiveThreshold <= 0 || info.Config.InactiveThreshold > readerIdle {
				t.Errorf("report watch consumer %s: inactive threshold %s, want at most %s", info.Name, info.Config.InactiveThreshold, readerIdle)
			}
		}
		if err := consumers.Err(); err != nil {
			t.Fatal(err)
		}
		if ctx.Err() != nil {
			t.Fatal("the report watch made no consumer on EDGE_REPORT")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopWatch()
	if err := <-watching; err != context.Canceled {
		t.Fatalf("WatchReports after its context ended: %v", err)
	}
}

// A report wait or watch deletes its consumer when it ends, rather than leave it to the
// server's inactive threshold (10 s): a client waiting on one intent after another would
// otherwise hold a consumer for each wait of the last 10 s, and past nats-server's 1 000
// consumers per stream every reader of EDGE_REPORT is refused (maximum consumers limit
// reached), the next wait and a Mirage starting among them.
func TestReportWaitsDeleteTheirConsumerWhenTheyEnd(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	startTestMirage(t, ns)
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "client"})
	c, err := NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js, err := jetstream.New(natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "inspect"}))
	if err != nil {
		t.Fatal(err)
	}
	const ended, open = "int_endedintent", "int_openintent"
	data, err := bus.Encode(&bus.Report{Header: bus.NewHeader(bus.TypeReport, "", time.Now()), IntentID: ended, Phase: bus.PhaseSatisfied,
		CompletionState: "complete", Summary: "done", Results: []bus.TargetResult{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, subjects.Report(ended), data); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if r, err := c.WaitTerminal(ctx, ended); err != nil || r.Phase != bus.PhaseSatisfied {
			t.Fatalf("WaitTerminal: %+v, %v", r, err)
		}
	}
	wctx, stopWatch := context.WithTimeout(ctx, 500*time.Millisecond)
	defer stopWatch()
	if err := c.WatchReports(wctx, open, func(*bus.Report) bool { return true }); err != context.DeadlineExceeded {
		t.Fatalf("WatchReports after its context ended: %v", err)
	}
	stream, err := js.Stream(ctx, bus.StreamReports)
	if err != nil {
		t.Fatal(err)
	}
	left := func() (names []string) {
		for info := range stream.ListConsumers(ctx).Info() {
			if f := info.Config.FilterSubject; f == subjects.Report(ended) || f == subjects.Report(open) {
				names = append(names, info.Name+" on "+f)
			}
		}
		return names
	}
	deadline := time.Now().Add(3 * time.Second) // well inside readerIdle
	for len(left()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("consumers left 3 s after their waits ended: %v", left())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
