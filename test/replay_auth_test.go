package test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds/flow"
	"github.com/edgectl/edgectl/ghost/seeds/kv"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// A Ghost creates no consumer under auth: nats-server does not check a new consumer's
// deliver_subject against its creator's permissions, so the permissions give a Ghost none
// to create, not even its own replay consumer (it reads its commands through Mirage) nor
// a consumer on the seed store.
func TestAuthGhostCannotCreateConsumers(t *testing.T) {
	f := newAuthFleet(t, "ghost-c", "ghost-o")
	var v violations
	nc := f.env.ConnWith("ghost-c rogue", f.keys["ghost-c"].NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox("ghost-c")), nats.ErrorHandler(v.handler))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// A seed in the store, so that its chunks' subject exists.
	ojs, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	svc, _ := publish(t, seedStore(t, ojs), example(t, "service.example.toml"), map[string][]byte{"service.example.sh": example(t, "service.example.sh")})
	info, err := seedStore(t, ojs).GetInfo(context.Background(), svc.Spec.Object)
	if err != nil {
		t.Fatal(err)
	}
	chunks := "$O." + bus.BucketSeeds + ".C." + info.NUID

	attempts := []struct {
		name, stream string
		cfg          jetstream.ConsumerConfig
		api          string // the API subject the server must refuse
	}{
		{"push replay consumer delivering to another ghost's events", bus.StreamCommands,
			jetstream.ConsumerConfig{Name: bus.GhostReplayConsumer("ghost-c"), FilterSubject: subjects.Command("ghost-c"), DeliverSubject: subjects.Event("ghost-o"), AckPolicy: jetstream.AckNonePolicy},
			"$JS.API.CONSUMER.CREATE." + bus.StreamCommands + "." + bus.GhostReplayConsumer("ghost-c") + "." + subjects.Command("ghost-c")},
		{"its own pull replay consumer", bus.StreamCommands,
			bus.GhostReplayConsumerConfig("ghost-c", 1),
			"$JS.API.CONSUMER.CREATE." + bus.StreamCommands + "." + bus.GhostReplayConsumer("ghost-c") + "." + subjects.Command("ghost-c")},
		{"push consumer on the seed store delivering to the announce subject", "OBJ_" + bus.BucketSeeds,
			jetstream.ConsumerConfig{Name: "rogue", FilterSubject: chunks, DeliverSubject: subjects.Announce, AckPolicy: jetstream.AckNonePolicy},
			"$JS.API.CONSUMER.CREATE.OBJ_" + bus.BucketSeeds + ".rogue." + chunks},
		{"durable consumer on the seed store", "OBJ_" + bus.BucketSeeds,
			jetstream.ConsumerConfig{Durable: "hoard", FilterSubject: chunks, AckPolicy: jetstream.AckExplicitPolicy},
			"$JS.API.CONSUMER.CREATE.OBJ_" + bus.BucketSeeds + ".hoard." + chunks},
	}
	for _, a := range attempts {
		t.Run(a.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if _, err := js.CreateConsumer(ctx, a.stream, a.cfg); err == nil {
				t.Fatal("the server created a consumer for a Ghost")
			}
			testenv.Eventually(t, 5*time.Second, "a permissions violation for "+a.api, func() bool { return v.saw(`"` + a.api + `"`) })
		})
	}
	// Nothing was created behind the refusals.
	for _, stream := range []string{bus.StreamCommands, "OBJ_" + bus.BucketSeeds} {
		s, err := ojs.Stream(context.Background(), stream)
		if err != nil {
			t.Fatal(err)
		}
		for name := range s.ConsumerNames(context.Background()).Name() {
			if name != mirage.EventsConsumer {
				t.Errorf("consumer %s exists on %s", name, stream)
			}
		}
	}
}

// startAuthGhost runs enrolled Ghost id on its own socket connection with store st; stop
// closes the Ghost and its connection, as a stopped ghostctl would.
func (f *authFleet) startAuthGhost(id string, st ghost.ExecutionStore, opts ...testenv.GhostOption) (stop func()) {
	f.env.T.Helper()
	key := f.keys[id]
	nc, err := bus.Connect(context.Background(), bus.ConnConfig{URL: f.env.URL, Name: "ghost " + id, Persistent: true, Logger: f.env.Log,
		Options: []nats.Option{key.NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox(id)), bus.GhostRequests()}})
	if err != nil {
		f.env.T.Fatal(err)
	}
	f.env.T.Cleanup(nc.Close)
	f.kv[id] = kv.New()
	reg := ghost.NewRegistry()
	for _, s := range []ghost.Seed{f.kv[id], flow.New()} {
		if err := reg.Add(s); err != nil {
			f.env.T.Fatal(err)
		}
	}
	opts = append([]testenv.GhostOption{testenv.Via(nc), testenv.WithRegistry(reg), testenv.Store(st), testenv.Tune(func(c *ghost.Config) {
		c.Identity = key
		c.TrustedMirageKeys = []string{f.mirage.PublicKey()}
	})}, opts...)
	g := f.env.StartGhost(id, opts...)
	return func() { _ = g.Close(); nc.Close() }
}

// Under auth, a Ghost stopped while commands were sent catches them up on restart through
// Mirage (it may make no JetStream API call), once each; no consumer is made for it.
func TestAuthStoppedGhostCatchesUpThroughMirage(t *testing.T) {
	f := newAuthFleet(t, "ghost-r")
	st := ghost.NewMemoryStore()
	stop := f.startAuthGhost("ghost-r", st)
	testenv.Eventually(t, 5*time.Second, "ghost-r registered", func() bool { _, ok := f.m.Fleet().Get("ghost-r"); return ok })
	stop()
	var created atomic.Int64
	adv, err := f.op.Subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED."+bus.StreamCommands+".>", func(*nats.Msg) { created.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = adv.Unsubscribe() }()

	var ids []string
	for i := 0; i < 3; i++ {
		is := testenv.NewIssue("ghost-r", "seed.kv", "incr", map[string]string{"key": "missed"}, 30*time.Second)
		issueNoWait(t, f.client, is)
		ids = append(ids, is.IntentID)
	}
	f.startAuthGhost("ghost-r", st)
	for _, id := range ids {
		if r := waitReport(t, f.client, id, 20*time.Second); r.Phase != bus.PhaseSatisfied {
			t.Fatalf("intent %s after the restart: %s %+v", id, r.Summary, r.Results)
		}
	}
	if v, _ := f.kv["ghost-r"].Value("missed"); v != "3" {
		t.Fatalf("counter %q after three missed incr, want 3", v)
	}
	if n := created.Load(); n != 0 {
		t.Fatalf("%d consumers created on %s for the catch-up", n, bus.StreamCommands)
	}
}

// Under auth with no Mirage, a Ghost cannot replay (it may not read EDGE_CMD itself): the
// catch-up waits, and runs when a Mirage announces itself. A Ghost whose execution store
// began before the command was sent runs it. One on a new store could not look at cmd.<id>
// before it subscribed: it looks when a Mirage first answers, before it registers (policy
// auto: its tries while no Mirage answered reached none, and leave no trace), and, its id
// showing no trace of an earlier Ghost (a new machine), runs the command, a non-idempotent
// one sent before. When an earlier Ghost of the id registered (its store lost), the
// command is answered 1700, not run: that Ghost may have run it.
func TestAuthCatchUpWaitsForMirage(t *testing.T) {
	for _, tc := range []struct {
		name    string
		earlier string // "same": the Ghost ran before, on the same store, with a Mirage; "other": on another store
		policy  string
		runs    bool // the command runs; otherwise it is answered 1700
	}{
		{"store begun before the command", "same", ghost.PolicyHeadless, true},
		{"new store", "", ghost.PolicyHeadless, true},
		{"new store, policy auto", "", ghost.PolicyAuto, true},
		{"new store, the id registered before", "other", ghost.PolicyHeadless, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newAuthFleet(t, "ghost-w")
			st := ghost.NewMemoryStore()
			switch tc.earlier {
			case "same":
				stop := f.startAuthGhost("ghost-w", st, testenv.Policy(ghost.PolicyHeadless))
				testenv.Eventually(t, 10*time.Second, "the Ghost's store to learn where it began", func() bool {
					_, ok, err := st.Born(context.Background())
					return err == nil && ok
				})
				stop()
			case "other":
				stop := f.startAuthGhost("ghost-w", ghost.NewMemoryStore(), testenv.Policy(ghost.PolicyAuto))
				testenv.Eventually(t, 10*time.Second, "the earlier Ghost registered", func() bool { _, ok := f.m.Fleet().Get("ghost-w"); return ok })
				stop()
			}
			if err := f.m.Close(); err != nil {
				t.Fatal(err)
			}
			// A command Mirage signed, stored while no Mirage runs.
			cmd := &bus.Command{
				Header:    bus.NewHeader(bus.TypeCommand, "", time.Now()),
				CommandID: "cmd_waiting", IntentID: "int_waiting", GhostID: "ghost-w", SeedSelector: "seed.kv", Operation: "incr",
				Args: map[string]string{"key": "late"}, DeliverByMS: time.Now().Add(time.Hour).UnixMilli(), TimeoutMS: 5000,
			}
			data, err := bus.Encode(cmd)
			if err != nil {
				t.Fatal(err)
			}
			msg := bus.NewMsg(subjects.Command("ghost-w"), data, cmd.CommandID, cmd.TraceID)
			if err := bus.SignMsg(msg, f.mirage); err != nil {
				t.Fatal(err)
			}
			js, err := jetstream.New(f.op)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := js.PublishMsg(context.Background(), msg); err != nil {
				t.Fatal(err)
			}
			// Wait until the Ghost has tried its catch-up and found no Mirage to ask, so the
			// check below follows a refused attempt rather than one that has not happened yet.
			refused := &logWatch{msg: "catch-up interrupted", errHas: "no Mirage answered", seen: make(chan struct{})}
			log := slog.New(slog.NewMultiHandler(f.env.Log.Handler(), refused))
			f.startAuthGhost("ghost-w", st, testenv.Policy(tc.policy), testenv.GhostLog(log))
			select {
			case <-refused.seen:
			case <-time.After(10 * time.Second):
				t.Fatal(`the Ghost never logged a catch-up refused for want of a Mirage ("no Mirage answered")`)
			}
			if v, ok := f.kv["ghost-w"].Value("late"); ok {
				t.Fatalf("the command ran without a Mirage to read it: late = %q", v)
			}
			mnc := f.env.ConnWith("mirage 2", f.mirage.NATSOption(), nats.CustomInboxPrefix(bus.MirageInbox()))
			m2 := f.env.StartMirageOn(mnc, mirage.Config{Identity: f.mirage, RequireSignedEvents: true})
			var ev *bus.Event
			testenv.Eventually(t, 10*time.Second, "the stored command answered once a Mirage announced itself", func() bool {
				if e, err := st.GetByCommandID(context.Background(), cmd.CommandID); err == nil && e.State == ghost.StateFinished {
					ev = e.Event
				}
				return ev != nil
			})
			if tc.runs {
				if ev.Outcome != bus.OutcomeSuccess {
					t.Fatalf("the stored command: %s %+v %+v; want it run", ev.Outcome, ev.Error, ev.Result)
				}
				if v, _ := f.kv["ghost-w"].Value("late"); v != "1" {
					t.Fatalf("late = %q after the stored incr ran, want 1", v)
				}
				if tc.policy == ghost.PolicyAuto {
					testenv.Eventually(t, 10*time.Second, "the Ghost registered", func() bool { _, ok := m2.Fleet().Get("ghost-w"); return ok })
				}
				return
			}
			if ev.Error == nil || ev.Error.Code != bus.CodeInterrupted || ev.Result.Status != "interrupted" {
				t.Fatalf("a non-idempotent command sent before a new store of an id that registered before: %s %+v %+v; want 1700, interrupted", ev.Outcome, ev.Error, ev.Result)
			}
			if v, ok := f.kv["ghost-w"].Value("late"); ok {
				t.Fatalf("the command sent before the new store ran: late = %q", v)
			}
		})
	}
}

type logWatch struct {
	msg, errHas string
	once        sync.Once
	seen        chan struct{}
}

func (w *logWatch) Enabled(context.Context, slog.Level) bool { return true }

func (w *logWatch) Handle(_ context.Context, r slog.Record) error {
	if !strings.HasPrefix(r.Message, w.msg) {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" && strings.Contains(a.Value.String(), w.errHas) {
			w.once.Do(func() { close(w.seen) })
			return false
		}
		return true
	})
	return nil
}

func (w *logWatch) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *logWatch) WithGroup(string) slog.Handler      { return w }

// A malformed replay request gets a coded error, and Mirage keeps serving.
func TestReplayRequestRefusals(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	nc := env.Conn("requester")
	cases := []struct {
		name, subject, body string
		code                bus.Code
	}{
		{"not JSON", subjects.ReplayFor("edge-1"), `start please`, bus.CodeFraming},
		{"wrong type", subjects.ReplayFor("edge-1"), `{"start_seq": "1"}`, bus.CodeDecode},
		{"no start", subjects.ReplayFor("edge-1"), `{}`, bus.CodeSemantic},
		{"history not a boolean", subjects.ReplayFor("edge-1"), `{"start_seq": 1, "history": "yes"}`, bus.CodeDecode},
		{"invalid ghost id", subjects.Replay + ".-edge", `{"start_seq": 1}`, bus.CodeSemantic},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg, err := nc.Request(c.subject, []byte(c.body), 5*time.Second)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			var reply bus.ReplayReply
			if err := json.Unmarshal(msg.Data, &reply); err != nil {
				t.Fatalf("answer %s: %v", msg.Data, err)
			}
			if reply.Status != "rejected" || reply.Error == nil || reply.Error.Code != c.code {
				t.Fatalf("answer %s, want rejected with %d", msg.Data, c.code)
			}
		})
	}
	// The ghost id is the subject's, never the body's: edge-2 has a command, edge-1 none.
	js := env.JetStream()
	if _, err := js.Publish(context.Background(), subjects.Command("edge-2"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request(subjects.ReplayFor("edge-1"), []byte(`{"start_seq": 1, "max": 1, "ghost_id": "edge-2"}`), 5*time.Second)
	if err != nil {
		t.Fatalf("a valid replay request after the refusals: %v", err)
	}
	if msg.Header.Get(bus.HeaderStreamSeq) != "" {
		t.Fatalf("Mirage sent edge-2's command to edge-1: %s", msg.Data)
	}
	var reply bus.ReplayReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Status != "accepted" || reply.LastSeq != 0 || reply.Sent != 0 {
		t.Fatalf("a valid replay request of edge-1 after the refusals: %s %v", msg.Data, err)
	}
	// And it still serves intents.
	env.StartGhost("edge-1")
	if r := env.Run(env.Client(), testenv.NewIssue("edge-1", "seed.flow", "status", nil, 10*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("an intent after the refused requests: %s", r.Summary)
	}
}

// Asked for history, Mirage says whether a Ghost's id shows a trace of an earlier Ghost: a
// record in KV edge_ghosts or an event on evt.<id>. A revoked Ghost's record (a delete
// marker) and another id's are none; a registry Mirage cannot read counts as a trace.
// Not asked, the reply carries no traced.
func TestReplayReplySaysWhetherTheIdShowsATrace(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	nc := env.Conn("requester")
	js := env.JetStream()
	ctx := context.Background()
	reg, err := js.KeyValue(ctx, bus.BucketGhosts)
	if err != nil {
		t.Fatal(err)
	}
	record := func(id string) {
		if _, err := reg.PutString(ctx, id, `{"ghost_id": "`+id+`"}`); err != nil {
			t.Fatal(err)
		}
	}
	event := func(id string) {
		if _, err := js.Publish(ctx, subjects.Event(id), []byte(`{"type": "event"}`)); err != nil {
			t.Fatal(err)
		}
	}
	ask := func(id, body string) bus.ReplayReply {
		t.Helper()
		msg, err := nc.Request(subjects.ReplayFor(id), []byte(body), 5*time.Second)
		if err != nil {
			t.Fatalf("replay request of %s: %v", id, err)
		}
		var reply bus.ReplayReply
		if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Status != "accepted" {
			t.Fatalf("replay answer to %s: %s %v", id, msg.Data, err)
		}
		return reply
	}
	for _, tc := range []struct {
		name   string
		leave  func(id string)
		traced bool
	}{
		{"no trace", func(string) {}, false},
		{"a registry record", record, true},
		{"an event", event, true},
		{"a revoked Ghost's record", func(id string) {
			record(id)
			if err := reg.Delete(ctx, id); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"another id's record and event", func(string) { record("edge-other"); event("edge-other") }, false},
		// A record there that reads as a status (404: none) is a trace all the same. (An
		// event that does is deleted from EDGE_EVT by Mirage's events consumer.)
		{"a registry record that reads as a status", func(id string) {
			publishStatusJunk(t, nc, "$KV."+bus.BucketGhosts+"."+id, "404")
		}, true},
		{"the registry unreadable", func(string) { // last: Mirage's registry is gone
			if err := js.DeleteKeyValue(ctx, bus.BucketGhosts); err != nil {
				t.Fatal(err)
			}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "edge-" + strings.ReplaceAll(strings.ReplaceAll(tc.name, " ", "-"), "'", "")
			tc.leave(id)
			time.Sleep(bus.ReplayEvery) // Mirage serves one request of a Ghost per ReplayEvery
			reply := ask(id, `{"start_seq": 1, "max": 0, "history": true}`)
			if reply.Traced == nil || *reply.Traced != tc.traced {
				t.Fatalf("traced %v, want %v", reply.Traced, tc.traced)
			}
			time.Sleep(bus.ReplayEvery)
			if reply := ask(id, `{"start_seq": 1, "max": 0}`); reply.Traced != nil {
				t.Fatalf("traced %v in the answer to a request that did not ask for history", *reply.Traced)
			}
		})
	}
}

// Under auth, a command issued to an enrolled id whose machine never ran (enrolled with
// 'miragectl fleet add' before it starts) waits in EDGE_CMD and runs once when its Ghost
// first starts: Mirage tells the new store's Ghost that the id shows no trace of an
// earlier Ghost. Once it ran (it registered, it sent an event), a Ghost of the id on
// another new store answers a non-idempotent command sent before that store began 1700,
// not run.
func TestAuthCommandWaitingForANewGhostRuns(t *testing.T) {
	f := newAuthFleet(t, "ghost-n")
	first := testenv.NewIssue("ghost-n", "seed.kv", "incr", map[string]string{"key": "c"}, time.Minute)
	issueNoWait(t, f.client, first)
	waitStored(t, f, "ghost-n", 1)
	stop := f.startAuthGhost("ghost-n", ghost.NewMemoryStore())
	if r := waitReport(t, f.client, first.IntentID, 20*time.Second); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("an incr issued before the id's first Ghost started: %s %+v; want it run", r.Summary, r.Results)
	}
	if v, _ := f.kv["ghost-n"].Value("c"); v != "1" {
		t.Fatalf("counter %q, want 1", v)
	}
	stop()
	second := testenv.NewIssue("ghost-n", "seed.kv", "incr", map[string]string{"key": "c"}, time.Minute)
	issueNoWait(t, f.client, second)
	waitStored(t, f, "ghost-n", 2)
	f.startAuthGhost("ghost-n", ghost.NewMemoryStore())
	r := waitReport(t, f.client, second.IntentID, 20*time.Second)
	if len(r.Results) != 1 || r.Results[0].Error == nil || r.Results[0].Error.Code != bus.CodeInterrupted {
		t.Fatalf("an incr sent before a new store of an id that ran: %s %+v; want 1700", r.Summary, r.Results)
	}
	if v, ok := f.kv["ghost-n"].Value("c"); ok {
		t.Fatalf("the incr sent before the new store ran: c = %q", v)
	}
}

// waitStored waits until EDGE_CMD holds n commands for Ghost id.
func waitStored(t *testing.T, f *authFleet, id string, n uint64) {
	t.Helper()
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the commands of "+id+" stored", func() bool {
		s, err := js.Stream(context.Background(), bus.StreamCommands)
		if err != nil {
			return false
		}
		info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(subjects.Command(id)))
		return err == nil && info.State.Subjects[subjects.Command(id)] >= n
	})
}
