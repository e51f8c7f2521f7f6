package test

import (
	"context"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// An event with an empty body and a Status header, which any Ghost may publish on its
// evt.<id> (under auth too) and EDGE_EVT stores, reads to nats.go as a status of the
// server: it stopped Mirage's events consumer for good (every later intent ended
// timeout), held every timeout report back by the lost-delivery wait (36 s), and, in
// EDGE_EVT or EDGE_CMD when Mirage restarted, failed its start ("recover open intents:
// no responders"). Mirage deletes such events from EDGE_EVT and its reads pass over them.
func TestStoredMessagesThatReadAsAStatusDoNotStopMirage(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	env.StartGhost("local")
	rogue := env.Conn("rogue")
	js := env.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	publish := func(subject string) {
		t.Helper()
		for _, h := range testenv.StatusHeaders {
			if err := rogue.PublishMsg(&nats.Msg{Subject: subject, Header: h}); err != nil {
				t.Fatal(err)
			}
		}
		if err := rogue.Flush(); err != nil {
			t.Fatal(err)
		}
	}

	// Live: the events consumer goes on, and the junk is deleted from EDGE_EVT.
	publish(subjects.Event("local"))
	if r := env.Run(env.Client(), testenv.NewIssue("local", "seed.flow", "status", nil, 5*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("an intent after the junk events: %s", r.Summary)
	}
	evts, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the junk events deleted from EDGE_EVT", func() bool {
		info, err := evts.Info(ctx)
		return err == nil && info.State.Msgs == 1 // the intent's own event
	})
	// A timeout is reported without the lost-delivery wait.
	start := time.Now()
	is := testenv.NewIssue("nobody", "seed.flow", "status", nil, 2*time.Second)
	if _, r, err := env.Client().IssueAndWait(ctx, is); err != nil || r.Counts.Timeout != 1 {
		t.Fatalf("an intent to no Ghost: %v %+v", err, r)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("the timeout was reported after %s", d)
	}

	// A restart: junk in EDGE_EVT and EDGE_CMD after an open intent's creation.
	open := testenv.NewIssue("local", "seed.flow", "sleep", map[string]string{"ms": "2000"}, 20*time.Second)
	if _, err := env.Client().Issue(ctx, open); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	publish(subjects.Event("local"))
	publish(subjects.Command("nobody"))
	m2 := env.StartMirageOn(env.Conn("mirage again"), mirage.Config{}) // fails the test if it does not start
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if r, err := env.Client().WaitTerminal(wctx, open.IntentID); err != nil || r.Phase != bus.PhaseSatisfied {
		t.Fatalf("the open intent after the restart: %v %+v", err, r)
	}
	if r := env.Run(env.Client(), testenv.NewIssue("local", "seed.flow", "status", nil, 5*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("an intent after the restart: %s", r.Summary)
	}
	_ = m2
}

// publishStatusJunk publishes on subject, from conn, an empty message with each of the
// headers of testenv.StatusHeaders (all of them when which is empty, else those whose Status is
// in which), and flushes.
func publishStatusJunk(t *testing.T, conn *nats.Conn, subject string, which ...string) {
	t.Helper()
	for _, h := range testenv.StatusHeaders {
		if len(which) > 0 && !slices.Contains(which, h.Get("Status")) {
			continue
		}
		if err := conn.PublishMsg(&nats.Msg{Subject: subject, Header: h}); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
}

// recoveredCount records the count of Mirage's "recovered open intents" line.
type recoveredCount struct {
	slog.Handler
	n atomic.Int64
}

func (h *recoveredCount) Enabled(context.Context, slog.Level) bool { return true }

func (h *recoveredCount) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "recovered open intents" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "count" {
				h.n.Store(a.Value.Int64())
			}
			return true
		})
	}
	if !h.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h *recoveredCount) WithAttrs(as []slog.Attr) slog.Handler { return h }
func (h *recoveredCount) WithGroup(string) slog.Handler         { return h }

// Messages that read as a status stored where Mirage's start reads: on report.<intent_id>
// (after an ended intent's terminal report, on an open intent's subject, on subjects of
// no intent, before the terminal report of an intent that ended after them), and on keys
// of KV edge_ghosts, edge_fleet and edge_intents. Mirage starts, recovers the open intent
// and only it, and the open intent ends. Before, such a message failed the start ('load
// fleet registry', 'load enrollments', 'recover open intents': nats: Bad Request, consumer
// deleted, no responders), held it until its context ended (a Status 100 in a KV bucket),
// or ended the reading of the reports early (404, 408), the intents ended after it taken
// for open.
func TestStoredMessagesThatReadAsAStatusDoNotFailMirageStart(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	env.StartGhost("local")
	rogue := env.Conn("rogue")
	client := env.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	status := func() *bus.Issue { return testenv.NewIssue("local", "seed.flow", "status", nil, 10*time.Second) }

	ended := status()
	if r := env.Run(client, ended); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("an intent before the junk: %s", r.Summary)
	}
	open := testenv.NewIssue("local", "seed.flow", "sleep", map[string]string{"ms": "2000"}, 30*time.Second)
	if _, err := client.Issue(ctx, open); err != nil {
		t.Fatal(err)
	}
	publishStatusJunk(t, rogue, subjects.Report(ended.IntentID))
	for _, h := range testenv.StatusHeaders {
		key := "junk" + h.Get("Status")
		publishStatusJunk(t, rogue, subjects.Report("int_"+key), h.Get("Status"))
		publishStatusJunk(t, rogue, "$KV."+bus.BucketGhosts+"."+key, h.Get("Status"))
		publishStatusJunk(t, rogue, "$KV."+bus.BucketFleet+"."+key, h.Get("Status"))
		publishStatusJunk(t, rogue, "$KV."+bus.BucketIntents+".int_"+key, h.Get("Status"))
	}
	later := status() // ended, its terminal report after the junk
	if r := env.Run(client, later); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("an intent after the junk: %s", r.Summary)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	publishStatusJunk(t, rogue, subjects.Report(open.IntentID))

	counted := &recoveredCount{Handler: env.Log.Handler()}
	sctx, scancel := context.WithTimeout(ctx, 60*time.Second)
	defer scancel()
	m2, err := mirage.New(sctx, env.Conn("mirage again"), mirage.Config{}, slog.New(counted))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m2.Close() })
	if err := m2.Start(sctx); err != nil {
		t.Fatalf("Mirage's start with the junk stored: %v", err)
	}
	if n := counted.n.Load(); n != 1 {
		t.Errorf("%d intents recovered, want 1 (the open one; the ended ones are ended)", n)
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if r, err := client.WaitTerminal(wctx, open.IntentID); err != nil || r.Phase != bus.PhaseSatisfied {
		t.Fatalf("the open intent after the restart: %v %+v", err, r)
	}
	for _, is := range []*bus.Issue{ended, later} {
		if r, err := client.LatestReport(ctx, is.IntentID); err != nil || r.Phase != bus.PhaseSatisfied {
			t.Fatalf("the latest report of an ended intent: %v %+v", err, r)
		}
	}
	if r := env.Run(client, status()); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("an intent after the restart: %s", r.Summary)
	}
}

// storeReport stores a valid report of intentID in phase on its subject, as Mirage does.
func storeReport(t *testing.T, js jetstream.JetStream, intentID, phase string) {
	t.Helper()
	r := &bus.Report{Header: bus.NewHeader(bus.TypeReport, "", time.Now()), IntentID: intentID, Phase: phase,
		CompletionState: "complete", Summary: phase, Results: []bus.TargetResult{}}
	data, err := bus.Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg(subjects.Report(intentID))
	msg.Data = data
	msg.Header.Set(bus.HeaderPhase, phase)
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// Messages that read as a status on report.<intent_id>, before and after an intent's
// terminal report, stored or arriving while a client follows: the client's readers pass
// over them as over other junk. Before, LatestReport failed (nats: Bad Request, no
// responders...) or found no report at all (404), and a watch (WaitTerminal, 'miragectl
// report --wait', FollowReports) never got past them: nats.go's ordered consumer made its
// consumer again at the junk, a thousand times a second, until the watch's context ended.
func TestReportReadersPassOverStoredMessagesThatReadAsAStatus(t *testing.T) {
	env := testenv.New(t)
	js := env.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	rogue := env.Conn("rogue")
	client := env.Client()
	var created atomic.Int64
	adv, err := rogue.Subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED."+bus.StreamReports+".>", func(*nats.Msg) { created.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = adv.Unsubscribe() }()

	// Stored: a report, the junk, the terminal report, the junk again.
	const stored = "int_storedjunk"
	storeReport(t, js, stored, bus.PhaseInProgress)
	publishStatusJunk(t, rogue, subjects.Report(stored))
	storeReport(t, js, stored, bus.PhaseSatisfied)
	publishStatusJunk(t, rogue, subjects.Report(stored))
	if r, err := client.LatestReport(ctx, stored); err != nil || r.Phase != bus.PhaseSatisfied {
		t.Fatalf("LatestReport: %v %+v", err, r)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if r, err := client.WaitTerminal(wctx, stored); err != nil || r.Phase != bus.PhaseSatisfied {
		t.Fatalf("WaitTerminal: %v %+v", err, r)
	}
	var phases []string
	err = client.FollowReports(wctx, stored, func(r *bus.Report) bool { phases = append(phases, r.Phase); return false })
	if err != nil || !slices.Equal(phases, []string{bus.PhaseSatisfied}) {
		t.Fatalf("FollowReports: %v %v", err, phases)
	}

	// Live: the junk, then the terminal report, while WatchReports and FollowReports wait.
	const live = "int_livejunk"
	storeReport(t, js, live, bus.PhaseInProgress)
	type seen struct {
		phases []string
		err    error
	}
	watches := map[string]func(context.Context, string, func(*bus.Report) bool) error{
		"WatchReports": client.WatchReports, "FollowReports": client.FollowReports,
	}
	results := make(chan seen, len(watches))
	lctx, lcancel := context.WithTimeout(ctx, 15*time.Second)
	defer lcancel()
	for _, watch := range watches {
		go func() {
			var s seen
			s.err = watch(lctx, live, func(r *bus.Report) bool {
				s.phases = append(s.phases, r.Phase)
				return !bus.Terminal(r.Phase)
			})
			results <- s
		}()
	}
	time.Sleep(500 * time.Millisecond) // the watches are waiting
	before := created.Load()
	publishStatusJunk(t, rogue, subjects.Report(live))
	storeReport(t, js, live, bus.PhaseSatisfied)
	for range watches {
		s := <-results
		if s.err != nil || len(s.phases) == 0 || s.phases[len(s.phases)-1] != bus.PhaseSatisfied {
			t.Fatalf("a watch of an intent whose reports came after the junk: %v %v", s.err, s.phases)
		}
	}
	// A consumer made again for each junk message at most, not over and over.
	if n := created.Load() - before; n > int64(2*len(testenv.StatusHeaders)) {
		t.Errorf("%d consumers made on %s for two watches past %d junk messages", n, bus.StreamReports, len(testenv.StatusHeaders))
	}
}

// Under auth a Ghost catches up through Mirage, which reads cmd.<id> by direct get:
// messages that read as a status stored there (by the operator, or Mirage: the only ones
// who may publish there under auth), among the commands the Ghost missed and last, are
// sent on as the junk they are, and the Ghost's replay passes them. Before, jetstream's get
// took them for the server's answer: Mirage refused every replay request past one ('read
// the commands of ...: nats: Bad Request'), or found no command at all (404 last), and the
// commands after it were never caught up.
func TestAuthCatchUpThroughMiragePassesOverStatusJunk(t *testing.T) {
	f := newAuthFleet(t, "ghost-j")
	st := ghost.NewMemoryStore()
	stop := f.startAuthGhost("ghost-j", st)
	testenv.Eventually(t, 5*time.Second, "ghost-j registered", func() bool { _, ok := f.m.Fleet().Get("ghost-j"); return ok })
	stop()
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 2 {
		is := testenv.NewIssue("ghost-j", "seed.kv", "incr", map[string]string{"key": "missed"}, 30*time.Second)
		issueNoWait(t, f.client, is)
		waitLastCommand(t, js, "ghost-j", mirage.CommandID(is.IntentID, 0))
		ids = append(ids, is.IntentID)
		if i == 0 {
			publishStatusJunk(t, f.op, subjects.Command("ghost-j"))
		}
	}
	publishStatusJunk(t, f.op, subjects.Command("ghost-j"))
	f.startAuthGhost("ghost-j", st)
	for _, id := range ids {
		if r := waitReport(t, f.client, id, 20*time.Second); r.Phase != bus.PhaseSatisfied {
			t.Fatalf("intent %s after the restart: %s %+v", id, r.Summary, r.Results)
		}
	}
	if v, _ := f.kv["ghost-j"].Value("missed"); v != "2" {
		t.Fatalf("counter %q after two missed incr, want 2", v)
	}
}
