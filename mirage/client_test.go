package mirage

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
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
