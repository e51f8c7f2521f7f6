package mirage

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
	"github.com/edgectl/edgectl/subjects"
)

// syncBuffer is a log sink written by Mirage's goroutines and read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A flood of bad issues is answered one by one (each client reads its reason), but
// logged at warning level at most once per bus.RateLogEvery, with how many it stands for.
func TestRejectedIssuesAreWarnedAtMostOncePerInterval(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "mirage"})
	var logs syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := New(ctx, nc, Config{}, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	client := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "client"})
	for i := range 200 {
		reply, err := client.Request(subjects.Issue, []byte("not an issue"), 5*time.Second)
		if err != nil {
			t.Fatalf("issue %d: %v", i, err)
		}
		var r bus.IssueReply
		if err := bus.Decode(reply.Data, &r); err != nil || r.Status != "rejected" || r.Error == nil || r.Error.Code != bus.CodeFraming {
			t.Fatalf("issue %d answered %s (%v); want rejected 1100", i, reply.Data, err)
		}
	}
	if n := strings.Count(logs.String(), "issue rejected"); n != 1 {
		t.Fatalf("%d warnings for 200 rejected issues, want 1:\n%s", n, logs.String())
	}
}

// When Mirage stops with the store not answering, the reports left share the stop
// budget instead of waiting 5 s each: Close returns in bounded time, and the intents
// whose terminal report was not stored are reported by the next Mirage.
func TestReportsLeftAtStopShareTheStopBudget(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "mirage", Persistent: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := New(ctx, nc, Config{StopBudget: time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ns.Shutdown() // the store answers nothing from now on
	ns.WaitForShutdown()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range 4 {
		m.publishReport(&bus.Report{Header: bus.NewHeader(bus.TypeReport, "", time.Now()), IntentID: fmt.Sprintf("int_stop%d", i), Phase: bus.PhaseSatisfied, Results: []bus.TargetResult{}})
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("4 reports took %s to give up on after the stop budget; want them to share the 1 s budget", took)
	}
	if n := m.unstoredAtStop.Load(); n < 3 {
		t.Fatalf("%d reports counted as not stored at stop, want at least 3", n)
	}
}
