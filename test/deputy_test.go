package test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// rogueGhost opens a connection with Ghost id's own key and inbox: exactly its permissions.
func (f *authFleet) rogueGhost(id string) *nats.Conn {
	f.env.T.Helper()
	return f.env.ConnWith(id+" rogue", f.keys[id].NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox(id)))
}

func registerBody(t *testing.T, id string) []byte {
	t.Helper()
	reg := bus.Register{Header: bus.NewHeader(bus.TypeRegister, "", time.Now()), GhostID: id, Version: "test", Labels: map[string]string{"role": "rogue"}, Seeds: []bus.SeedInfo{}}
	data, err := bus.Encode(&reg)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// replayAnswer sends a replay request of the Ghost on nc and decodes the answer.
func replayAnswer(t *testing.T, nc *nats.Conn, id string, start uint64) bus.ReplayReply {
	t.Helper()
	msg, err := nc.Request(subjects.ReplayFor(id), []byte(`{"start_seq": `+jsonUint(start)+`}`), 10*time.Second)
	if err != nil {
		t.Fatalf("replay request of %s: %v", id, err)
	}
	var reply bus.ReplayReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		t.Fatalf("replay answer %s: %v", msg.Data, err)
	}
	return reply
}

func jsonUint(n uint64) string { b, _ := json.Marshal(n); return string(b) }

// aimedCall is a request a rogue Ghost sends with a reply subject of its choosing.
type aimedCall struct {
	name, subject string
	body          []byte
}

// aimAll sends every call on nc with each target as its reply subject, then flushes: the
// server has taken (or refused) them all once it returns.
func aimAll(t *testing.T, nc *nats.Conn, calls []aimedCall, targets []string) {
	t.Helper()
	for _, target := range targets {
		for _, c := range calls {
			if err := nc.PublishRequest(c.subject, target, c.body); err != nil {
				t.Fatalf("%s answered to %s: %v", c.name, target, err)
			}
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// nats-server does not check a request's reply subject against the requester's
// permissions, and Mirage may publish to the KV buckets and cmd.*: under auth, Mirage
// answers a Ghost's replay, register and seed read requests only on that Ghost's inbox,
// and does not serve the others (no register, no command or object sent), so a Ghost
// cannot write through Mirage nor send its answers to another Ghost.
//
// Mirage confines its answers whenever the server requires authentication, as Ghosts go
// through Mirage whenever it does: also when Mirage itself signs nothing (it logs in by
// certificate or password, where an nkey would override the certificate).
func TestDeputyGhostRequestsAreAnsweredOnlyOnItsInbox(t *testing.T) {
	for _, tc := range []struct {
		name string
		tune func(*mirage.Config)
	}{
		{"signing Mirage", nil},
		{"Mirage without a signing key", func(c *mirage.Config) { c.Identity, c.RequireSignedEvents = nil, false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			deputyAnswersOnlyOnItsInbox(t, newAuthFleetWith(t, tc.tune, "ghost-c", "ghost-o", "ghost-m"))
		})
	}
}

func deputyAnswersOnlyOnItsInbox(t *testing.T, f *authFleet) {
	ctx := context.Background()
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	fleetKV, ghostsKV := f.bucket(t, bus.BucketFleet), f.bucket(t, bus.BucketGhosts)
	enrolled, err := fleetKV.Get(ctx, "ghost-o")
	if err != nil {
		t.Fatal(err)
	}

	// A command of ghost-c, which a served replay request would send.
	if _, err := js.Publish(ctx, subjects.Command("ghost-c"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	nc := f.rogueGhost("ghost-c")
	// Subjects of Mirage's account, and subjects another Ghost (ghost-o) reads in the
	// Ghosts' account: a seed read answered on its cmd.ghost-o would push up to 32 MiB
	// onto its link, an answer on attach.ghost-o or mirage.announce reach it (or every
	// Ghost).
	ghostSide := []string{
		subjects.Command("ghost-o"),
		subjects.Ack("ghost-o"),
		subjects.AttachGhost("ghost-o"),
		subjects.Announce,
		bus.GhostInbox("ghost-o") + ".stolen",
	}
	targets := append([]string{
		"$KV." + bus.BucketFleet + ".ghost-o",
		"$KV." + bus.BucketGhosts + ".ghost-o",
		"_INBOX.someone-else",
	}, ghostSide...)
	// Listening where the answers would go: as the operator may, and as ghost-o.
	var leaked atomic.Int64
	other := f.rogueGhost("ghost-o")
	for _, l := range []struct {
		nc       *nats.Conn
		subjects []string
	}{{f.op, targets}, {other, ghostSide}} {
		for _, target := range l.subjects {
			sub, err := l.nc.Subscribe(target, func(m *nats.Msg) { leaked.Add(1) })
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = sub.Unsubscribe() }()
		}
		if err := l.nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	requests := []aimedCall{
		{"replay", subjects.ReplayFor("ghost-c"), []byte(`{"start_seq": 1, "max": 1}`)},
		{"register", subjects.Register("ghost-c"), registerBody(t, "ghost-c")},
		{"seed read", subjects.SeedFor("ghost-c"), []byte(`{"object": "seed.any/1.0.0/manifest.json", "max_size": 1048576}`)},
	}
	aimAll(t, nc, requests, targets)
	// Mirage handles the requests of each subject in order (one subscription each), and
	// drops a misdirected one at once: once a later request of each is answered, the
	// misdirected ones were handled, and whatever Mirage published for them reached the
	// operator's connection before the PONG of its flush.
	reply := replayAnswer(t, nc, "ghost-c", 1)
	for i := 0; i < 20 && reply.Error != nil && reply.Error.Code == bus.CodeBusy; i++ {
		time.Sleep(2 * bus.ReplayEvery) // busy only if a misdirected one was served
		reply = replayAnswer(t, nc, "ghost-c", 1)
	}
	if reply.Status != "accepted" {
		t.Fatalf("replay on the Ghost's own inbox: %+v", reply)
	}
	if _, err := nc.Request(subjects.SeedFor("ghost-c"), requests[2].body, 45*time.Second); err != nil {
		t.Fatalf("seed read on the Ghost's own inbox: no answer: %v", err)
	}
	register := func(nc *nats.Conn, id string) {
		t.Helper()
		msg, err := nc.Request(subjects.Register(id), registerBody(t, id), 10*time.Second)
		if err != nil {
			t.Fatalf("register of %s on its own inbox: %v", id, err)
		}
		var ack bus.RegisterAck
		if err := bus.Decode(msg.Data, &ack); err != nil || ack.Status != bus.RegisterAccepted {
			t.Fatalf("register.ack of %s %s: %v", id, msg.Data, err)
		}
	}
	register(f.rogueGhost("ghost-m"), "ghost-m") // sent after ghost-c's, on a connection of its own
	for _, nc := range []*nats.Conn{f.op, other} {
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if e, err := fleetKV.Get(ctx, "ghost-o"); err != nil || e.Revision() != enrolled.Revision() {
		t.Errorf("ghost-o's enrollment was written: revision %d → %v %v", enrolled.Revision(), e, err)
	}
	if e, err := ghostsKV.Get(ctx, "ghost-o"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("a registry record was written under ghost-o: %v %v", e, err)
	}
	cmds, err := js.Stream(ctx, bus.StreamCommands)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := cmds.GetLastMsgForSubject(ctx, subjects.Command("ghost-o")); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("a message was stored on cmd.ghost-o: %v %v", m, err)
	}
	if _, ok := f.m.Fleet().Get("ghost-c"); ok {
		t.Error("Mirage registered ghost-c from a register whose answer went elsewhere")
	}
	if n := leaked.Load(); n != 0 {
		t.Errorf("%d messages went to the foreign reply subjects", n)
	}

	// The same register on the Ghost's own inbox is answered.
	register(nc, "ghost-c")
	if _, ok := f.m.Fleet().Get("ghost-c"); !ok {
		t.Error("ghost-c not registered after its answered register")
	}
}

// A Ghost flooding mirage.replay.<id> gets busy answers (1501) that cost Mirage no
// JetStream call: another Ghost's request is answered at once, and the flood is served at
// most once per bus.ReplayEvery.
func TestDeputyReplayFloodDoesNotDelayOtherGhosts(t *testing.T) {
	f := newAuthFleet(t, "ghost-f", "ghost-l")
	flooder := f.rogueGhost("ghost-f")
	var busy, answers, served atomic.Int64
	inbox := bus.GhostInbox("ghost-f") + ".flood"
	sub, err := flooder.Subscribe(inbox, func(m *nats.Msg) {
		answers.Add(1)
		var r bus.ReplayReply
		switch {
		case json.Unmarshal(m.Data, &r) != nil:
		case r.Error != nil && r.Error.Code == bus.CodeBusy:
			busy.Add(1)
		case r.Status == "accepted":
			served.Add(1)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	const flood = 5000
	began := time.Now()
	for i := 0; i < flood; i++ {
		if err := flooder.PublishRequest(subjects.ReplayFor("ghost-f"), inbox, []byte(`{"start_seq": 1}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := flooder.Flush(); err != nil {
		t.Fatal(err)
	}
	floodTook := time.Since(began)

	legit := f.rogueGhost("ghost-l")
	asked := time.Now()
	reply := replayAnswer(t, legit, "ghost-l", 1)
	waited := time.Since(asked)
	if reply.Status != "accepted" {
		t.Fatalf("ghost-l's replay during the flood: %+v", reply)
	}
	if waited > 1500*time.Millisecond {
		t.Errorf("ghost-l's replay request waited %s behind ghost-f's flood", waited)
	}
	testenv.Eventually(t, 20*time.Second, "every flood request answered", func() bool { return answers.Load() == flood })
	floodTook = time.Since(began) // served until its last answer
	n := int(served.Load())
	// One admission per bus.ReplayEvery of flood, and the first.
	if limit := int(floodTook/bus.ReplayEvery) + 2; n > limit {
		t.Errorf("the flood of %d requests over %s was served %d times, want at most %d", flood, floodTook, n, limit)
	}
	if busy.Load() != flood-int64(n) {
		t.Errorf("%d busy answers for %d requests and %d served", busy.Load(), flood, n)
	}
	t.Logf("flood of %d in %s: %d served, %d busy answers; ghost-l answered in %s", flood, floodTook, n, busy.Load(), waited)
}

// Two replay requests of one Ghost at once are not served concurrently: one is answered
// busy, so that one Ghost holds at most one of Mirage's replay slots.
func TestDeputyConcurrentReplaysOfOneGhostAreSerialised(t *testing.T) {
	f := newAuthFleet(t, "ghost-s")
	nc := f.rogueGhost("ghost-s")
	var wg sync.WaitGroup
	replies := make([]bus.ReplayReply, 2)
	for i := range replies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg, err := nc.Request(subjects.ReplayFor("ghost-s"), []byte(`{"start_seq": `+jsonUint(uint64(i+1))+`}`), 10*time.Second)
			if err != nil {
				t.Errorf("request %d: %v", i, err)
				return
			}
			_ = json.Unmarshal(msg.Data, &replies[i])
		}()
	}
	wg.Wait()
	accepted, busy := -1, 0
	for i, r := range replies {
		switch {
		case r.Status == "accepted":
			accepted = i
		case r.Error != nil && r.Error.Code == bus.CodeBusy:
			busy++
		}
	}
	if accepted < 0 || busy != 1 {
		t.Fatalf("two concurrent replay requests: %+v, want one accepted and one busy", replies)
	}
}

// A record stored under another Ghost's key in edge_ghosts (a JetStream answer a Ghost had
// sent there) is not loaded as that Ghost, nor does it replace the named Ghost's record.
func TestDeputyRegistryLoadSkipsMisfiledRecords(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	env.StartGhost("ghost-c", testenv.Labels(map[string]string{"role": "real"}))
	testenv.Eventually(t, 5*time.Second, "ghost-c registered", func() bool { _, ok := m.Fleet().Get("ghost-c"); return ok })
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	js := env.JetStream()
	kv, err := js.KeyValue(ctx, bus.BucketGhosts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "ghost-o", []byte(`{"ghost_id": "ghost-c", "labels": {"role": "junk"}, "registered_ms": 9999999999999}`)); err != nil {
		t.Fatal(err)
	}
	m2 := env.StartMirageOn(env.Conn("mirage 2"), mirage.Config{})
	if _, ok := m2.Fleet().Get("ghost-o"); ok {
		t.Error("a record stored under ghost-o was loaded as ghost-o")
	}
	if r, ok := m2.Fleet().Get("ghost-c"); !ok || r.Labels["role"] != "real" {
		t.Errorf("ghost-c's record after the load: %+v %v", r, ok)
	}
	recs, err := mirage.ReadFleet(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].GhostID != "ghost-c" || recs[0].Labels["role"] != "real" {
		t.Errorf("ReadFleet: %+v", recs)
	}
}
