package mirage

import (
	"bytes"
	"context"
	"fmt"
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
	var logs syncBuffer
	startTestMirageWith(t, ns, Config{}, warnLog(&logs))
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

// A report whose stream ack never comes (EDGE_REPORT gone, a silent subscriber on its
// subjects) is waited for 2 s (reportAckWithin) while Mirage serves; once Mirage stops,
// that wait ends with the stop budget too, and so do the presence writes left (edge_ghosts
// silent the same way): Close returns within the budget and says what it left unstored.
func TestCloseStopsWaitingForTheStoreWithinTheStopBudget(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "mirage"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var logs syncBuffer
	m, err := New(ctx, nc, Config{StopBudget: time.Second}, warnLog(&logs))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			m.Close()
		}
	}()
	if err := m.js.DeleteStream(ctx, bus.StreamReports); err != nil {
		t.Fatal(err)
	}
	if err := m.js.DeleteKeyValue(ctx, bus.BucketGhosts); err != nil {
		t.Fatal(err)
	}
	snc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "silent"})
	silent, err := snc.SubscribeSync(subjects.Report("*"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snc.SubscribeSync("$KV." + bus.BucketGhosts + ".>"); err != nil {
		t.Fatal(err)
	}
	if err := snc.Flush(); err != nil {
		t.Fatal(err)
	}
	// Heartbeats of Ghosts in three presence shards, not written yet.
	m.fleet.mu.Lock()
	for i := 0; len(m.fleet.seen) < 3; i++ {
		id := fmt.Sprintf("g%d", i)
		m.fleet.ghosts[id] = &GhostRecord{GhostID: id, LastSeenMS: time.Now().UnixMilli()}
		m.fleet.seen[presenceShard(id)] = true
	}
	m.fleet.mu.Unlock()
	m.mu.Lock()
	m.enqueueReport(&bus.Report{Header: bus.NewHeader(bus.TypeReport, "", time.Now()), IntentID: "int_inflight", Phase: bus.PhaseSatisfied, Results: []bus.TargetResult{}})
	m.mu.Unlock()
	if _, err := silent.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("the report was never published: %v", err)
	}
	start := time.Now()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Close took %s waiting for the store; want it within the 1 s stop budget", took)
	}
	if n := m.unstoredAtStop.Load(); n != 1 {
		t.Fatalf("%d reports counted as not stored at stop, want 1", n)
	}
	if !strings.Contains(logs.String(), "reports not stored before Mirage stopped") {
		t.Fatalf("Close did not say what it left unstored:\n%s", logs.String())
	}
}

// A terminal report published while EDGE_REPORT's leader is frozen (its server holds the
// subject's interest and answers nothing) is published again soon enough to reach the
// leader elected meanwhile: here the stream is deleted and a silent subscriber holds its
// subjects, as a frozen leader's server would, and the stream comes back (the new leader)
// as soon as the report is published. With a 10 s ack wait every such report was stored
// 10 s after its leader froze (on a 3-node cluster of real servers, the new leader
// elected at 3 to 5.6 s); now the ack is waited for 2 s (reportAckWithin), and the next
// try goes out at once.
func TestTerminalReportGivesUpOnASilentLeaderWithinTwoSeconds(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.js.DeleteStream(ctx, bus.StreamReports); err != nil {
		t.Fatal(err)
	}
	snc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "frozen leader"})
	silent, err := snc.SubscribeSync(subjects.Report("*"))
	if err != nil {
		t.Fatal(err)
	}
	if err := snc.Flush(); err != nil {
		t.Fatal(err)
	}
	const id = "int_frozenleader"
	m.mu.Lock()
	m.enqueueReport(&bus.Report{Header: bus.NewHeader(bus.TypeReport, "", time.Now()), IntentID: id, Phase: bus.PhaseSatisfied, Results: []bus.TargetResult{}})
	m.mu.Unlock()
	if _, err := silent.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("the report was never published: %v", err)
	}
	// The new leader takes the subjects.
	if err := bus.EnsureAssets(ctx, m.js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	elected := time.Now()
	for {
		s, err := m.js.Stream(ctx, bus.StreamReports)
		if err == nil {
			if _, err = s.GetLastMsgForSubject(ctx, subjects.Report(id)); err == nil {
				break
			}
		}
		if time.Since(elected) > 15*time.Second {
			t.Fatalf("the report not stored 15 s after the stream came back: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(elected)
	t.Logf("report stored %s after the stream came back", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Fatalf("report stored %s after the stream came back; want the unanswered publish given up after 2 s and sent again at once", took.Round(time.Millisecond))
	}
}

// A taken-up intent rebuilt while Mirage stops (Close waits for it) dispatches nothing:
// its commands would leave while Mirage is going, and the next Mirage takes the intent up.
func TestRebuildWhileStoppingDispatchesNothing(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	rec := adoptRec("int_rebuildstop", "g1", time.Now())
	li := m.takeUp(&rec, "test")
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if units := m.rebuild(li); len(units) != 0 {
		t.Fatalf("a rebuild while Mirage stops returned units %v to dispatch; want none", units)
	}
}

// Close does not wait for a rebuild's replay or a dispatch's store acks past the stop
// budget: with the store not answering, the replay would wait 30 s and the dispatch 5 s.
func TestCloseEndsRebuildAndDispatchWaitingOnTheStore(t *testing.T) {
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
	taken := adoptRec("int_closerebuild", "g1", time.Now())
	li := m.takeUp(&taken, "test")
	fresh := adoptRec("int_closesend", "g2", time.Now())
	ns.Shutdown() // the store answers nothing from now on
	ns.WaitForShutdown()
	// What handleIssue does for each (Close waits for it).
	started := make(chan struct{}, 2)
	m.spawn(func() { started <- struct{}{}; m.send(&taken, m.rebuild(li)) })
	m.spawn(func() { started <- struct{}{}; m.send(&fresh, []int{0}) })
	<-started
	<-started
	start := time.Now()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Fatalf("Close took %s; want it within about the 1 s stop budget", took)
	}
}

// An issue sent again after its deliver_by_ms, for an intent recorded under its id, is
// answered as that intent's (accepted again when it ended, taken up when it is open and
// not followed), not refused as a new intent with a deliver_by in the past; under an id
// with no record it is refused so.
func TestIssueSentAgainPastItsDeliverByIsAnsweredAsItsIntents(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	client, err := NewClient(natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "client"}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		id, phase string // phase of the stored record; "" stores none
		want      string
	}{
		{"int_latebyended", bus.PhaseSatisfied, "accepted"},
		{"int_latebyopen", bus.PhasePending, "accepted"},
		{"int_latebynone", "", "rejected"},
	} {
		t.Run(tc.id, func(t *testing.T) {
			rec := adoptRec(tc.id, "g1", time.Now().Add(-time.Minute))
			rec.Issue.DeliverByMS = time.Now().Add(-time.Second).UnixMilli()
			if tc.phase != "" {
				rec.Phase = tc.phase
				storeRecord(ctx, t, m, rec)
			}
			m.mu.Lock()
			m.known.add(rec.IntentID, time.Now()) // listed at start, or accepted before
			m.mu.Unlock()
			is := rec.Issue
			is.Header = bus.NewHeader(bus.TypeIssue, rec.Issue.TraceID, time.Now())
			r, err := client.Issue(ctx, &is)
			if tc.want == "rejected" {
				if perr := bus.AsError(err); err == nil || perr.Field != "deliver_by_ms" {
					t.Fatalf("answered %+v, %v; want the deliver_by_ms refusal", r, err)
				}
				return
			}
			if err != nil || r.Status != tc.want {
				t.Fatalf("answered %+v, %v; want %s", r, err, tc.want)
			}
		})
	}
}
