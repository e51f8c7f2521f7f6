package test

import (
	"context"
	"encoding/json"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// nats-server does not check a request's reply subject against the requester's
// permissions, and JetStream answers there with the answering account's rights. Some
// answers have an empty body (a direct get that finds nothing: 404; a pull request: 404,
// 408, 409), which is exactly what STREAM.DELETE, STREAM.PURGE and CONSUMER.DELETE take.
// A Ghost therefore has no JetStream API permission at all, and Mirage answers its
// replay request only on its inbox: aimed at the API, nothing is removed.
func TestGhostCannotAimJetStreamAnswersAtTheAPI(t *testing.T) {
	f := newAuthFleet(t, "ghost-c", "ghost-o")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	// Messages in EDGE_CMD and EDGE_REPORT (for ghost-o: ghost-c has no command stored,
	// so a direct get of its last command finds nothing and answers with an empty body).
	f.startGhost("ghost-o")
	f.mustServe(t, "ghost-o", "before the attack")
	before := streamState(ctx, t, js)
	for _, s := range []string{bus.StreamCommands, bus.StreamReports, "KV_" + bus.BucketFleet} {
		if before[s] == 0 {
			t.Fatalf("stream %s holds nothing before the attack: %v", s, before)
		}
	}
	evt, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	var consumers []string
	for c := range evt.ListConsumers(ctx).Info() {
		consumers = append(consumers, c.Name)
	}
	if len(consumers) == 0 {
		t.Fatal("Mirage has no consumer on EDGE_EVT")
	}

	rogue := f.rogueGhost("ghost-c")
	// Whatever Mirage still serves a Ghost: with the old protocol, this made the replay
	// consumer ghost_ghost-c whose pull requests are answered 404/408 with no body.
	own := bus.GhostInbox("ghost-c") + ".own"
	if err := rogue.PublishRequest(subjects.ReplayFor("ghost-c"), own, []byte(`{"start_seq": 1}`)); err != nil {
		t.Fatal(err)
	}
	if err := rogue.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)

	consumer := bus.GhostReplayConsumer("ghost-c")
	calls := []aimedCall{
		{"direct get of its last command", "$JS.API.DIRECT.GET." + bus.StreamCommands + "." + subjects.Command("ghost-c"), nil},
		{"direct get by subject", "$JS.API.DIRECT.GET." + bus.StreamCommands, []byte(`{"last_by_subj": "` + subjects.Command("ghost-c") + `"}`)},
		{"pull request, no wait", "$JS.API.CONSUMER.MSG.NEXT." + bus.StreamCommands + "." + consumer, []byte(`{"batch": 1, "no_wait": true}`)},
		{"pull request, expiring", "$JS.API.CONSUMER.MSG.NEXT." + bus.StreamCommands + "." + consumer, []byte(`{"batch": 1, "expires": 100000000}`)},
		{"consumer info", "$JS.API.CONSUMER.INFO." + bus.StreamCommands + "." + consumer, nil},
	}
	// EDGE_CMD last: the calls above go to it.
	targets := []string{"$JS.API.STREAM.PURGE." + bus.StreamReports, "$JS.API.STREAM.DELETE.KV_" + bus.BucketFleet}
	for _, c := range consumers {
		targets = append(targets, "$JS.API.CONSUMER.DELETE."+bus.StreamEvents+"."+c)
	}
	targets = append(targets, "$JS.API.STREAM.PURGE."+bus.StreamCommands, "$JS.API.STREAM.DELETE."+bus.StreamCommands)
	// The server handles a connection's messages in order, and refuses a publish the
	// connection may not make at once: the PONG of aimAll's flush comes after every call
	// was refused or forwarded. Whatever a forwarded call's answer made JetStream do is
	// checked below, and again after an intent that ran through the streams.
	aimAll(t, rogue, calls, targets)

	intact := func(when string) {
		t.Helper()
		after := streamState(ctx, t, js)
		for name, n := range before {
			if after[name] < n || !hasKey(after, name) {
				t.Errorf("%s: stream %s: %d messages before, %d after (present: %v)", when, name, n, after[name], hasKey(after, name))
			}
		}
		for _, c := range consumers {
			if _, err := evt.Consumer(ctx, c); err != nil {
				t.Errorf("%s: consumer %s of EDGE_EVT: %v", when, c, err)
			}
		}
	}
	intact("after the attack")
	if t.Failed() {
		return
	}
	f.mustServe(t, "ghost-o", "after the attack")
	intact("after an intent that followed it")
}

// storeSigned stores a seed.kv incr of key for Ghost id in EDGE_CMD, signed by Mirage's
// key, as Mirage would while the Ghost is away, and returns its stream sequence.
func (f *authFleet) storeSigned(t *testing.T, js jetstream.JetStream, id, key string) uint64 {
	t.Helper()
	cmd := &bus.Command{
		Header:    bus.NewHeader(bus.TypeCommand, "", time.Now()),
		CommandID: subjects.NewID(subjects.PrefixCommand), IntentID: subjects.NewID(subjects.PrefixIntent), GhostID: id,
		SeedSelector: "seed.kv", Operation: "incr", Args: map[string]string{"key": key},
		DeliverByMS: time.Now().Add(time.Hour).UnixMilli(), TimeoutMS: 5000,
	}
	data, err := bus.Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	msg := bus.NewMsg(subjects.Command(id), data, cmd.CommandID, cmd.TraceID)
	if err := bus.SignMsg(msg, f.mirage); err != nil {
		t.Fatal(err)
	}
	ack, err := js.PublishMsg(context.Background(), msg)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// A Ghost that missed more commands than one replay answer holds (bus.ReplayBatch) runs
// each exactly once under auth, read through Mirage in several answers.
func TestAuthCatchUpOfManyBatchesRunsEachOnce(t *testing.T) {
	f := newAuthFleet(t, "ghost-b")
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	// The Ghost ran before, so its store began before the commands it missed (a new
	// store would not run a non-idempotent command sent before it began).
	st := ghost.NewMemoryStore()
	stop := f.startAuthGhost("ghost-b", st)
	testenv.Eventually(t, 10*time.Second, "the Ghost's store to learn where it began", func() bool {
		_, ok, err := st.Born(context.Background())
		return err == nil && ok
	})
	stop()
	const missed = 600
	var last uint64
	for i := 0; i < missed; i++ {
		last = f.storeSigned(t, js, "ghost-b", "n")
	}
	// Mirage's answers, as the operator may watch them: more than one had more to come.
	var more, trailers atomic.Int64
	watch, err := f.op.Subscribe(bus.GhostInbox("ghost-b")+".>", func(m *nats.Msg) {
		if m.Header.Get(bus.HeaderStreamSeq) != "" {
			return
		}
		var r bus.ReplayReply
		if json.Unmarshal(m.Data, &r) == nil && r.Status == "accepted" {
			trailers.Add(1)
			if r.More {
				more.Add(1)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = watch.Unsubscribe() }()
	if err := f.op.Flush(); err != nil {
		t.Fatal(err)
	}
	f.startAuthGhost("ghost-b", st)
	testenv.Eventually(t, 30*time.Second, "the replay position at the last command", func() bool {
		p, err := st.LastSeq(context.Background())
		return err == nil && p == last
	})
	if v, _ := f.kv["ghost-b"].Value("n"); v != strconv.Itoa(missed) {
		t.Fatalf("counter %q after %d missed incr", v, missed)
	}
	if m := more.Load(); m < 2 {
		t.Fatalf("%d of %d answers had more to come, want at least 2 (%d commands, %d a batch)", m, trailers.Load(), missed, bus.ReplayBatch)
	}
}

// Under auth, a Ghost whose replay position does not belong to the EDGE_CMD it finds
// (the stream was recreated; the command at the position is gone) reads cmd.<id> from
// its start through Mirage, and the commands run.
func TestAuthRecreatedCommandStreamIsReplayedFromTheStart(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		// setup changes EDGE_CMD or the position while the Ghost is stopped, and
		// stores one new command of it.
		setup func(t *testing.T, f *authFleet, js jetstream.JetStream, st ghost.ExecutionStore)
	}{
		{"stream recreated, shorter than the position", func(t *testing.T, f *authFleet, js jetstream.JetStream, st ghost.ExecutionStore) {
			if err := js.DeleteStream(ctx, bus.StreamCommands); err != nil {
				t.Fatal(err)
			}
			if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
				t.Fatal(err)
			}
			f.storeSigned(t, js, "ghost-g", "k")
		}},
		{"command at the position gone", func(t *testing.T, f *authFleet, js jetstream.JetStream, st ghost.ExecutionStore) {
			stale := f.storeSigned(t, js, "ghost-x", "k") // not this Ghost's: where the stale position points
			f.storeSigned(t, js, "ghost-g", "k")
			if err := st.SetPosition(ctx, stale, ""); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newAuthFleet(t, "ghost-g")
			js, err := jetstream.New(f.op)
			if err != nil {
				t.Fatal(err)
			}
			st := ghost.NewMemoryStore()
			often := testenv.Tune(func(c *ghost.Config) { c.CatchUpInterval = 200 * time.Millisecond })
			stop := f.startAuthGhost("ghost-g", st, often)
			for i := 0; i < 2; i++ {
				f.storeSigned(t, js, "ghost-g", "k")
			}
			testenv.Eventually(t, 10*time.Second, "two commands run and the position past them", func() bool {
				v, _ := f.kv["ghost-g"].Value("k")
				p, _ := st.LastSeq(ctx)
				return v == "2" && p > 0
			})
			stop()
			tc.setup(t, f, js, st)
			f.startAuthGhost("ghost-g", st, often) // a new kv seed: it counts from 0
			testenv.Eventually(t, 10*time.Second, "the command stored while away run", func() bool {
				v, _ := f.kv["ghost-g"].Value("k")
				return v == "1"
			})
			// The commands read again from the start are duplicates: nothing runs twice.
			time.Sleep(500 * time.Millisecond)
			if v, _ := f.kv["ghost-g"].Value("k"); v != "1" {
				t.Fatalf("counter %q after the replay from the start, want 1", v)
			}
		})
	}
}

// decodeTrailer reads a replay answer's last message.
func decodeTrailer(t *testing.T, m *nats.Msg) bus.ReplayReply {
	t.Helper()
	var r bus.ReplayReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		t.Fatalf("replay answer %s: %v", m.Data, err)
	}
	return r
}
