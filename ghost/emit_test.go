package ghost_test

import (
	"bufio"
	"bytes"
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// attemptsWithin is the most publish attempts one emit retry loop can make in window:
// a loop that starts as the window opens, every backoff wait at its shortest (250 ms,
// doubling, less the 20% jitter).
func attemptsWithin(window time.Duration) int {
	n, at, wait := 1, time.Duration(0), 250*time.Millisecond
	for {
		at += wait * 4 / 5
		if at > window {
			return n
		}
		n++
		wait = min(2*wait, 5*time.Second)
	}
}

// duplicateCommands reads the Ghost's duplicate-command counter from its metrics.
func duplicateCommands(t *testing.T, m *ghost.Metrics) int {
	t.Helper()
	var b bytes.Buffer
	if _, err := m.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(&b)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "edgectl_ghost_duplicate_commands_total "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("duplicate counter %q: %v", v, err)
			}
			return int(n)
		}
	}
	t.Fatal("metrics have no edgectl_ghost_duplicate_commands_total")
	return 0
}

// An event is published by one goroutine at a time: duplicates of its command arriving
// while its publish keeps failing leave the retrying to the publisher already at it, so
// the attempts follow one backoff schedule instead of one per duplicate. Once the store
// takes events again the event is stored once and the Ghost goes on serving.
func TestOneEventPublisherPerEventID(t *testing.T) {
	env := testenv.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js := env.JetStream()
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	const id = "edge-e"
	metrics := ghost.NewMetrics()
	// No catch-up during the test (not the one shortly after start either): every
	// delivery of the command is one the test made.
	g := env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) {
			c.Metrics = metrics
			c.SettleCatchUp = time.Hour
		}))

	now := time.Now()
	cmd := bus.Command{Header: bus.NewHeader(bus.TypeCommand, "", now), CommandID: subjects.NewID(subjects.PrefixCommand),
		IntentID: subjects.NewID(subjects.PrefixIntent), GhostID: id, SeedSelector: "seed.flow", Operation: "echo",
		Args: map[string]string{"message": "once"}, DeliverByMS: now.Add(time.Minute).UnixMilli(), TimeoutMS: 5000}
	data, err := bus.Encode(&cmd)
	if err != nil {
		t.Fatal(err)
	}
	// Every publish attempt of the event on evt.<id>, seen by a core subscription. Its
	// interest in the subject is why EDGE_EVT is made to refuse events by a maximum
	// message size rather than by taking evt.* out of its subjects: with a subscriber
	// there, a publish finds a responder and waits out its 5 s timeout, so the retries
	// would hardly back off and a flapping link would not be what is tested.
	want := bus.EventID(id, cmd.CommandID)
	var (
		mu       sync.Mutex
		attempts []time.Time
	)
	obs := env.Conn("observer")
	sub, err := obs.Subscribe(subjects.Event(id), func(m *nats.Msg) {
		if m.Header.Get(bus.HeaderMsgID) != want {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		attempts = append(attempts, time.Now())
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := obs.Flush(); err != nil {
		t.Fatal(err)
	}
	attemptsSince := func(from time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, at := range attempts {
			if !at.Before(from) {
				n++
			}
		}
		return n
	}

	// EDGE_EVT refuses every event (each is larger than 64 bytes) and answers at once, as
	// a store refusing writes does: emit's publish fails fast and it retries on backoff.
	stream, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	refusing := stream.CachedInfo().Config
	refusing.MaxMsgSize = 64
	if _, err := js.UpdateStream(ctx, refusing); err != nil {
		t.Fatalf("make %s refuse events: %v", bus.StreamEvents, err)
	}

	nc := env.Conn("mirage")
	send := func() {
		t.Helper()
		// Core NATS, as a live command arrives; kept out of EDGE_CMD so that no catch-up
		// replays it and every delivery is one this test made.
		if err := nc.PublishMsg(bus.NewMsg(subjects.Command(id), data, cmd.CommandID, cmd.TraceID)); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	send()
	// Duplicates are sent once the execution is recorded (so each gets its event back to
	// re-send) and its publish has failed (so a publisher is retrying it).
	testenv.Eventually(t, 10*time.Second, "the execution recorded and its event refused", func() bool {
		e, err := g.Store().GetByCommandID(ctx, cmd.CommandID)
		return err == nil && e.State == ghost.StateFinished && e.Event != nil && attemptsSince(time.Time{}) > 0
	})

	const duplicates = 10
	const window = 2 * time.Second
	opened := time.Now()
	for range duplicates {
		send()
	}
	// Every duplicate reached emit: the Ghost counts a duplicate just before re-sending
	// its event, so the test cannot pass by the duplicates being lost.
	testenv.Eventually(t, window, "the Ghost to take every duplicate", func() bool {
		return duplicateCommands(t, metrics) == duplicates
	})
	time.Sleep(time.Until(opened.Add(window)))
	got := attemptsSince(opened)
	// One publisher makes at most attemptsWithin(window) attempts (4 in 2 s); twice that
	// absorbs an attempt from before the window seen inside it and a slow machine. A
	// publisher per duplicate makes at least one attempt each at once, and about 4 each
	// over the window.
	if limit := 2 * attemptsWithin(window); got > limit {
		t.Fatalf("%d publish attempts of one event in %s after %d duplicate commands, want at most %d: the duplicates started publishers of their own",
			got, window, duplicates, limit)
	}

	// Restore EDGE_EVT as provisioned: the retry in flight stores the event.
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	if info, err := stream.Info(ctx); err != nil || info.Config.MaxMsgSize != bus.MaxEnvelope {
		t.Fatalf("%s not restored: %+v %v", bus.StreamEvents, info, err)
	}
	eventFor(t, env, id, cmd.CommandID)
	// JetStream drops copies with the same Nats-Msg-Id, so this holds either way; the
	// attempt count above is what tells one publisher from many.
	stored := 0
	for _, ev := range env.Events(js) {
		if ev.EventID == want {
			stored++
			if ev.Outcome != bus.OutcomeSuccess || ev.Result.Stdout != "once" {
				t.Fatalf("stored event %+v, want the echo's success", ev)
			}
		}
	}
	if stored != 1 {
		t.Fatalf("event %s stored %d times, want once", want, stored)
	}

	// The Ghost still serves: another command gets its own event.
	next, _ := storeCommand(t, env, id, "status", nil)
	eventFor(t, env, id, next)
	t.Logf("%d publish attempts in %s after %d duplicates", got, window, duplicates)
}

// Copies of one command that Mirage keeps re-sending while EDGE_EVT refuses its event do
// not each hold an execution slot until the event is stored: one copy waits for the
// event's publish, the others return at once, and a new command still finds a slot.
func TestDuplicatesWaitingForTheirEventHoldOneSlot(t *testing.T) {
	env := testenv.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := env.JetStream()
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	const id = "edge-slots"
	const slots = 4
	metrics := ghost.NewMetrics()
	g := env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) {
			c.Metrics = metrics
			c.MaxConcurrent = slots
			c.SettleCatchUp = time.Hour // every delivery is one the test made
		}))
	// EDGE_EVT refuses every event (each is larger than 64 bytes), as a store refusing
	// writes does.
	stream, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	refusing := stream.CachedInfo().Config
	refusing.MaxMsgSize = 64
	if _, err := js.UpdateStream(ctx, refusing); err != nil {
		t.Fatalf("make %s refuse events: %v", bus.StreamEvents, err)
	}
	nc := env.Conn("mirage")
	command := func(op string, args map[string]string) (bus.Command, []byte) {
		t.Helper()
		now := time.Now()
		cmd := bus.Command{Header: bus.NewHeader(bus.TypeCommand, "", now), CommandID: subjects.NewID(subjects.PrefixCommand),
			IntentID: subjects.NewID(subjects.PrefixIntent), GhostID: id, SeedSelector: "seed.flow", Operation: op,
			Args: args, DeliverByMS: now.Add(time.Minute).UnixMilli(), TimeoutMS: 5000}
		data, err := bus.Encode(&cmd)
		if err != nil {
			t.Fatal(err)
		}
		return cmd, data
	}
	send := func(cmd bus.Command, data []byte) {
		t.Helper()
		// Core NATS, as a live command or Mirage's re-dispatch arrives.
		if err := nc.PublishMsg(bus.NewMsg(subjects.Command(id), data, cmd.CommandID, cmd.TraceID)); err != nil {
			t.Fatal(err)
		}
	}
	finished := func(commandID string) bool {
		e, err := g.Store().GetByCommandID(ctx, commandID)
		return err == nil && e.State == ghost.StateFinished
	}
	stuck, stuckData := command("echo", map[string]string{"message": "stuck"})
	send(stuck, stuckData)
	testenv.Eventually(t, 10*time.Second, "the execution recorded", func() bool { return finished(stuck.CommandID) })

	const duplicates = 3 * slots
	for range duplicates {
		send(stuck, stuckData)
	}
	testenv.Eventually(t, 10*time.Second, "the Ghost to take every duplicate", func() bool {
		return duplicateCommands(t, metrics) == duplicates
	})
	next, nextData := command("status", map[string]string{})
	send(next, nextData)
	testenv.Eventually(t, 5*time.Second, "a new command to run while the duplicates wait for their event", func() bool {
		return finished(next.CommandID)
	})

	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	eventFor(t, env, id, stuck.CommandID)
	eventFor(t, env, id, next.CommandID)
}

// A publish whose connection is lost before its publish ack comes can never get that
// ack: the retry goes out as soon as the connection is back, not when the attempt's 5 s
// timeout runs out, and under the same Nats-Msg-Id, so that EDGE_EVT keeps one copy when
// the first was stored. Both ways the ack is lost: the server stored the event and its
// answer went with the connection, or the publish itself did.
func TestEventPublishRetriesWhenItsConnectionIsLost(t *testing.T) {
	for _, tc := range []struct {
		name string
		// lose holds the link so that the publish sent next is answered by nothing,
		// and returns once it was sent.
		lose func(t *testing.T, env *testenv.Env, proxy *testenv.Proxy, g *ghost.Ghost, id, commandID string)
	}{
		{"ack lost", func(t *testing.T, env *testenv.Env, proxy *testenv.Proxy, _ *ghost.Ghost, id, commandID string) {
			proxy.HoldReplies()
			eventFor(t, env, id, commandID) // stored; its publish ack is held
		}},
		{"publish lost", func(t *testing.T, env *testenv.Env, proxy *testenv.Proxy, g *ghost.Ghost, _, commandID string) {
			proxy.Pause()
			testenv.Eventually(t, 5*time.Second, "the execution finished", func() bool {
				e, err := g.Store().GetByCommandID(context.Background(), commandID)
				return err == nil && e.State == ghost.StateFinished
			})
			time.Sleep(300 * time.Millisecond) // its publish is written, and held
			if n := len(env.Events(env.JetStream())); n != 0 {
				t.Fatalf("%d events stored through a paused link", n)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := testenv.New(t, testenv.Listen())
			proxy := testenv.NewProxy(t, env.Server.Addr().String())
			const id = "edge-lost"
			gc := env.URLConn("ghost "+id, proxy.URL())
			g := env.StartGhost(id, testenv.Via(gc), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"))
			ctx := context.Background()

			commandID, _ := storeCommand(t, env, id, "sleep", map[string]string{"ms": "300"})
			testenv.Eventually(t, 5*time.Second, "the command running", func() bool {
				_, err := g.Store().GetByCommandID(ctx, commandID)
				return err == nil
			})
			tc.lose(t, env, proxy, g, id, commandID)
			proxy.Cut()
			proxy.Resume()
			testenv.Eventually(t, 5*time.Second, "disconnect", func() bool { return !gc.IsConnected() })
			time.Sleep(time.Second)
			if e, err := g.Store().GetByCommandID(ctx, commandID); err != nil || e.Stored {
				t.Fatalf("event marked stored with its publish ack lost (err %v)", err)
			}
			back := time.Now()
			proxy.Restore()
			took := storedAfter(t, ctx, g, commandID, back, 10*time.Second)
			t.Logf("event stored %s after the link came back", took.Round(time.Millisecond))
			if took > 1500*time.Millisecond {
				t.Fatalf("event stored %s after the link came back; want the retry to go out on reconnect, not after the lost attempt's 5 s", took.Round(time.Millisecond))
			}
			want := bus.EventID(id, commandID)
			n := 0
			for _, ev := range env.Events(env.JetStream()) {
				if ev.EventID == want {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("EDGE_EVT holds %d copies of the event, want 1", n)
			}
		})
	}
}

// An event published while EDGE_EVT's leader is frozen (its server holds the subject's
// interest and answers nothing) is sent again soon enough to reach the leader elected
// meanwhile: here the stream is deleted and a silent subscriber holds its subject, as a
// frozen leader's server would, and the stream comes back (the new leader) as soon as the
// Ghost has published the event. With 5 s attempts the event waited out the first one
// (on a 3-node cluster of real servers, stored 5.2 or 10.8 s after its leader froze while
// the new leader was elected at 3.7 to 6.9 s); now each attempt waits 2 s
// (eventAckWait), and the next goes out at once.
func TestEventPublishGivesUpOnASilentLeaderWithinTwoSeconds(t *testing.T) {
	env := testenv.New(t)
	const id = "edge-frozen"
	g := env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	commandID, _ := storeCommand(t, env, id, "sleep", map[string]string{"ms": "500"})
	testenv.Eventually(t, 5*time.Second, "the command running", func() bool {
		_, err := g.Store().GetByCommandID(ctx, commandID)
		return err == nil
	})
	js := env.JetStream()
	if err := js.DeleteStream(ctx, bus.StreamEvents); err != nil {
		t.Fatal(err)
	}
	frozen := env.Conn("frozen leader")
	silent, err := frozen.SubscribeSync(subjects.Event(id))
	if err != nil {
		t.Fatal(err)
	}
	if err := frozen.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := silent.NextMsg(10 * time.Second); err != nil {
		t.Fatalf("the event was never published: %v", err)
	}
	// The new leader takes the subject.
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	took := storedAfter(t, ctx, g, commandID, time.Now(), 15*time.Second)
	t.Logf("event stored %s after the stream came back", took.Round(time.Millisecond))
	if took > 3500*time.Millisecond {
		t.Fatalf("event stored %s after the stream came back; want the unanswered attempt given up after 2 s and the next sent at once", took.Round(time.Millisecond))
	}
	eventFor(t, env, id, commandID)
}

// storedAfter waits up to timeout for the Ghost's execution of commandID to be marked
// stored (its event's publish acknowledged) and returns how long after since that was.
func storedAfter(t *testing.T, ctx context.Context, g *ghost.Ghost, commandID string, since time.Time, timeout time.Duration) time.Duration {
	t.Helper()
	testenv.Eventually(t, timeout, "the event marked stored", func() bool {
		e, err := g.Store().GetByCommandID(ctx, commandID)
		return err == nil && e.Stored
	})
	return time.Since(since)
}
