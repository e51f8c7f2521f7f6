package test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// levelCounter counts the log records at info level and above, by message.
type levelCounter struct {
	mu *sync.Mutex
	n  map[string]int
}

func (h levelCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h levelCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelInfo {
		h.mu.Lock()
		h.n[r.Message]++
		h.mu.Unlock()
	}
	return nil
}
func (h levelCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h levelCounter) WithGroup(string) slog.Handler      { return h }

func (h levelCounter) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[msg]
}

// A Ghost may publish what it likes on its evt.<id>, under auth too: a flood of junk
// events (not JSON, for intents that do not exist, under another ghost_id, for an ended
// intent) is refused event by event, each answered with its event.ack where one can be
// addressed, but logged at most once per bus.RateLogEvery per kind, with a count. It
// was one warning per event: the Ghost chose the size of Mirage's log.
func TestJunkEventsAreLoggedAtMostOncePerInterval(t *testing.T) {
	env := testenv.New(t)
	logs := levelCounter{mu: &sync.Mutex{}, n: map[string]int{}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m, err := mirage.New(ctx, env.Conn("mirage"), mirage.Config{}, slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	env.StartGhost("local")
	ended := testenv.NewIssue("local", "seed.flow", "status", nil, 5*time.Second)
	if r := env.Run(env.Client(), ended); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("first intent: %s", r.Summary)
	}
	rogue := env.Conn("rogue")
	const n = 200
	event := func(intentID, commandID, ghostID string) []byte {
		now := time.Now().UnixMilli()
		ev := bus.Event{Header: bus.NewHeader(bus.TypeEvent, "", time.Now()), EventID: bus.EventID(ghostID, commandID), CommandID: commandID,
			IntentID: intentID, ExecutionID: subjects.NewID("exe"), GhostID: ghostID, SeedID: "seed.flow", Operation: "status",
			Outcome: bus.OutcomeSuccess, Result: bus.Result{Status: "ok"}, StartedMS: now, FinishedMS: now}
		data, err := bus.Encode(&ev)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	for i := 0; i < n; i++ {
		for _, data := range [][]byte{
			[]byte("junk"),
			event(subjects.NewID(subjects.PrefixIntent), subjects.NewID(subjects.PrefixCommand), "local"),
			event(subjects.NewID(subjects.PrefixIntent), subjects.NewID(subjects.PrefixCommand), "someone-else"),
			event(ended.IntentID, subjects.NewID(subjects.PrefixCommand), "local"),
		} {
			if err := rogue.Publish(subjects.Event("local"), data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := rogue.Flush(); err != nil {
		t.Fatal(err)
	}
	js := env.JetStream()
	testenv.Eventually(t, 30*time.Second, "every junk event read", func() bool {
		cons, err := js.Consumer(ctx, bus.StreamEvents, mirage.EventsConsumer)
		if err != nil {
			return false
		}
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	for _, msg := range []string{"refused a malformed event", "event rejected", "refused an event whose ghost_id is not its subject's", "event for an ended intent"} {
		if got := logs.count(msg); got < 1 || got > 2 {
			t.Errorf("%q logged %d times for %d events, want 1 (2 if an interval ended)", msg, got, n)
		}
	}
	if r := env.Run(env.Client(), testenv.NewIssue("local", "seed.flow", "status", nil, 5*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("an intent after the junk: %s", r.Summary)
	}
}
