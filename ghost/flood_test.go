package ghost_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// Announces and attach requests, which anyone may publish without auth, set off a
// registration: one each made a goroutine, a request to Mirage and a write of the
// registry per message (500 announces: hundreds of registrations in flight, and every
// Ghost of the fleet doing the same). One registration runs at a time; asked again
// meanwhile, it runs once more after; attach requests meanwhile get its outcome.
func TestAnnounceAndAttachFloodsRegisterOnceAtATime(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	logs := countingHandler{mu: &sync.Mutex{}, n: map[string]int{}}
	const id = "flooded"
	env.StartGhost(id, testenv.Seeds("seed.flow"), testenv.GhostLog(slog.New(logs)))
	base := logs.count("registered with Mirage")
	nc := env.Conn("flooder")
	for i := 0; i < 500; i++ {
		ann := bus.Announce{Header: bus.NewHeader(bus.TypeAnnounce, "", time.Now()), MirageID: "flooder"}
		data, err := bus.Encode(&ann)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(subjects.Announce, data); err != nil {
			t.Fatal(err)
		}
	}
	var answered atomic.Int32
	sub, err := nc.Subscribe("_INBOX.flood.>", func(*nats.Msg) { answered.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	for i := 0; i < 200; i++ {
		if err := nc.PublishRequest(subjects.AttachGhost(id), fmt.Sprintf("_INBOX.flood.%d", i), []byte(`{"ghost_id":"flooded"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "attach requests answered", func() bool { return answered.Load() > 0 })
	time.Sleep(2 * time.Second) // what is still in flight ends
	// One at a time, and one more for all that asked meanwhile: how many depends on how
	// long each takes against how fast the flood is read (11 seen on a loaded machine);
	// without the coalescing it is hundreds.
	if n := logs.count("registered with Mirage") - base; n < 1 || n > 25 {
		t.Errorf("%d registrations for 500 announces and 200 attach requests, want a few", n)
	}
	if n := logs.count("attached to Mirage on request"); n < 1 || n > 5 {
		t.Errorf("%d attach registrations for 200 attach requests, want a few", n)
	}
	// Still registered and serving.
	if r := env.Run(env.Client(), testenv.NewIssue(id, "seed.flow", "status", nil, 5*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("an intent after the floods: %s", r.Summary)
	}
}

// Malformed commands and duplicates, which anyone may publish on cmd.<id> without auth,
// are each answered (an error event, the terminal event again) but logged at most once
// per bus.RateLogEvery with a count, not a line each.
func TestRefusedAndDuplicateCommandsAreLoggedAtMostOncePerInterval(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{}) // the streams; the headless Ghost does not register
	logs := infoCounter{countingHandler{mu: &sync.Mutex{}, n: map[string]int{}}}
	const id = "flooded"
	env.StartGhost(id, testenv.Policy("headless"), testenv.Seeds("seed.flow"), testenv.GhostLog(slog.New(logs)))
	nc := env.Conn("flooder")
	command := func(commandID string, timeout any) []byte {
		data, err := json.Marshal(map[string]any{"type": "command", "v": 1, "message_id": subjects.NewID("msg"), "trace_id": subjects.NewTraceID(),
			"timestamp_ms": time.Now().UnixMilli(), "command_id": commandID, "intent_id": "int_flood", "ghost_id": id,
			"seed_selector": "seed.flow", "operation": "status", "args": map[string]string{},
			"deliver_by_ms": time.Now().Add(time.Minute).UnixMilli(), "timeout_ms": timeout})
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	const n = 100
	for i := 0; i < n; i++ {
		if err := nc.Publish(subjects.Command(id), command(fmt.Sprintf("cmd_bad_%d", i), "soon")); err != nil {
			t.Fatal(err)
		}
	}
	dup := command("cmd_dup", 5000)
	for i := 0; i < n; i++ {
		if err := nc.Publish(subjects.Command(id), dup); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	js := env.JetStream()
	testenv.Eventually(t, 20*time.Second, "an event for each refused command", func() bool {
		refused := 0
		for _, ev := range env.Events(js) {
			if ev.Error != nil && ev.Error.Code == bus.CodeDecode {
				refused++
			}
		}
		return refused == n
	})
	testenv.Eventually(t, 10*time.Second, "duplicates answered", func() bool {
		return logs.count("duplicate command: re-sending its terminal event") > 0
	})
	if got := logs.count("refused a malformed command"); got < 1 || got > 2 {
		t.Errorf("%q logged %d times for %d commands, want 1 (2 if an interval ended)", "refused a malformed command", got, n)
	}
	time.Sleep(500 * time.Millisecond)
	if got := logs.count("duplicate command: re-sending its terminal event"); got > 2 {
		t.Errorf("%q logged %d times for %d duplicates, want 1 (2 if an interval ended)", "duplicate command", got, n)
	}
}

// infoCounter counts the records at info level and above.
type infoCounter struct{ countingHandler }

func (h infoCounter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelInfo {
		return nil
	}
	return h.countingHandler.Handle(ctx, r)
}
func (h infoCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h infoCounter) WithGroup(string) slog.Handler      { return h }
