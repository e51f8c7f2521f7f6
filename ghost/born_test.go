package ghost_test

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds/kv"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// storeKV stores a seed.kv command for ghostID in EDGE_CMD, open for a minute, and returns
// its command_id and stream sequence.
func storeKV(t *testing.T, env *testenv.Env, ghostID, op string, args map[string]string) (string, uint64) {
	t.Helper()
	return storeSeedCommand(t, env, ghostID, kv.ID, op, args, 10*time.Second, time.Minute)
}

// machine is one Ghost id whose kv seed outlives its Ghosts, and whose state directory a
// test may replace.
type machine struct {
	t      *testing.T
	env    *testenv.Env
	id     string
	kv     *kv.Seed
	reg    *ghost.Registry
	policy string
	store  *ghost.BoltStore
	g      *ghost.Ghost
	// via, when set, is the connection the Ghost runs on (an in-process one otherwise).
	via *nats.Conn
}

func newMachine(t *testing.T, env *testenv.Env, id string) *machine {
	m := &machine{t: t, env: env, id: id, kv: kv.New(), reg: ghost.NewRegistry(), policy: ghost.PolicyHeadless}
	if err := m.reg.Add(m.kv); err != nil {
		t.Fatal(err)
	}
	return m
}

// start runs a Ghost (headless unless m.policy says otherwise) on the execution store in
// stateDir.
func (m *machine) start(stateDir string) {
	m.t.Helper()
	st, err := ghost.OpenBoltStore(filepath.Join(stateDir, "executions.db"), ghost.BoltOptions{})
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { _ = st.Close() })
	m.store = st
	opts := []testenv.GhostOption{testenv.Store(st), testenv.WithRegistry(m.reg), testenv.Policy(m.policy)}
	if m.via != nil {
		opts = append(opts, testenv.Via(m.via))
	}
	m.g = m.env.StartGhost(m.id, opts...)
}

func (m *machine) stop() {
	_ = m.g.Close()
	_ = m.store.Close()
}

// ended waits for the terminal event of commandID in the current store and returns it.
func (m *machine) ended(commandID string) *bus.Event {
	m.t.Helper()
	var ev *bus.Event
	testenv.Eventually(m.t, 10*time.Second, "the terminal event of "+commandID, func() bool {
		e, err := m.store.GetByCommandID(context.Background(), commandID)
		if err == nil && e.State == ghost.StateFinished {
			ev = e.Event
		}
		return ev != nil
	})
	return ev
}

func (m *machine) value(key string) string {
	v, _ := m.kv.Value(key)
	return v
}

// notRunAgain checks the event of a non-idempotent command that predates the store: 1700,
// interrupted, saying why.
func notRunAgain(t *testing.T, ev *bus.Event) {
	t.Helper()
	if ev.Outcome != bus.OutcomeError || ev.Error == nil || ev.Error.Code != bus.CodeInterrupted || ev.Result.Status != "interrupted" || ev.Result.ExitCode != -1 {
		t.Fatalf("a non-idempotent command sent before the store began ended %s %+v %+v, want error 1700, status interrupted, exit -1", ev.Outcome, ev.Error, ev.Result)
	}
	if want := "execution store began after the command was sent"; !strings.Contains(ev.Error.Message, want) {
		t.Fatalf("1700 message %q does not say %q", ev.Error.Message, want)
	}
}

// leaveRecord stores a registry record for ghostID in KV edge_ghosts, as Mirage does when
// a Ghost registers: a trace of an earlier Ghost of the id.
func leaveRecord(t *testing.T, env *testenv.Env, ghostID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reg, err := env.JetStream().KeyValue(ctx, bus.BucketGhosts)
	if err != nil {
		t.Fatal(err)
	}
	rec := `{"ghost_id": "` + ghostID + `", "registered_ms": 1, "last_seen_ms": 1}`
	if _, err := reg.PutString(ctx, ghostID, rec); err != nil {
		t.Fatal(err)
	}
}

// leaveEvent stores a message on evt.<ghostID> in EDGE_EVT, as a Ghost's event: a trace of
// an earlier Ghost of the id.
func leaveEvent(t *testing.T, env *testenv.Env, ghostID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := env.JetStream().Publish(ctx, subjects.Event(ghostID), []byte(`{"type": "event"}`)); err != nil {
		t.Fatal(err)
	}
}

// A Ghost whose state directory was replaced by a fresh one does not run again a
// non-idempotent command an earlier store ran, still open in EDGE_CMD: it answers it 1700,
// outcome unknown. An idempotent command sent before the store began runs, and a command
// sent after it began runs as usual.
func TestCommandSentBeforeTheStoreBeganIsNotRunAgain(t *testing.T) {
	env := testenv.New(t)
	const id = "edge-born"
	m := newMachine(t, env, id)
	m.start(t.TempDir())
	incr, _ := storeKV(t, env, id, "incr", map[string]string{"key": "c"})
	if ev := m.ended(incr); ev.Outcome != bus.OutcomeSuccess || m.value("c") != "1" {
		t.Fatalf("the first store's incr: %s %+v, counter %q", ev.Outcome, ev.Error, m.value("c"))
	}
	m.stop()
	put, bornSeq := storeKV(t, env, id, "put", map[string]string{"key": "p", "value": "v"}) // idempotent
	fresh := t.TempDir()
	m.start(fresh) // a new state directory: an empty execution store
	notRunAgain(t, m.ended(incr))
	if ev := m.ended(put); ev.Outcome != bus.OutcomeSuccess || m.value("p") != "v" {
		t.Fatalf("an idempotent command sent before the store began: %s %+v, value %q; want it run", ev.Outcome, ev.Error, m.value("p"))
	}
	if got := m.value("c"); got != "1" {
		t.Fatalf("counter %q, want 1: the incr ran again", got)
	}
	if born, ok, err := m.store.Born(context.Background()); err != nil || !ok || born != bornSeq {
		t.Fatalf("Born() = %d, %v, %v; want %d, the last command on cmd.%s when the store began", born, ok, err, bornSeq, id)
	}
	later, _ := storeKV(t, env, id, "incr", map[string]string{"key": "c"})
	if ev := m.ended(later); ev.Outcome != bus.OutcomeSuccess || m.value("c") != "2" {
		t.Fatalf("an incr sent after the store began: %s %+v, counter %q; want it run", ev.Outcome, ev.Error, m.value("c"))
	}
	// The same store after a restart: the 1700 stands, nothing runs again.
	m.stop()
	m.start(fresh)
	notRunAgain(t, m.ended(incr))
	time.Sleep(300 * time.Millisecond)
	if got := m.value("c"); got != "2" {
		t.Fatalf("counter %q after a restart, want 2", got)
	}
}

// Once EDGE_CMD is found recreated, no command in it predates the execution store: a
// non-idempotent command stored at a sequence the old stream had passed when the store
// began runs.
func TestCommandInARecreatedStreamIsNotTakenForOneSentBeforeTheStore(t *testing.T) {
	for _, tc := range []struct {
		name string
		// The new stream holds others commands of another Ghost, then incrs of this one.
		others, incrs int
	}{
		{"stream ending before the position", 0, 1},
		{"another command at the position's sequence", 3, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := testenv.New(t)
			const id = "edge-rec"
			m := newMachine(t, env, id)
			for range 3 {
				storeKV(t, env, "other", "get", map[string]string{"key": "x"})
			}
			// Sent before the store began, to an id that registered before: 1700. The store
			// begins at 4 and its position reaches 4.
			old, _ := storeKV(t, env, id, "incr", map[string]string{"key": "c"})
			leaveRecord(t, env, id)
			dir := t.TempDir()
			m.start(dir)
			notRunAgain(t, m.ended(old))
			testenv.Eventually(t, 10*time.Second, "the replay position at 4", func() bool {
				seq, _, err := m.store.Position(context.Background())
				return err == nil && seq == 4
			})
			m.stop()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := env.JetStream().DeleteStream(ctx, bus.StreamCommands); err != nil {
				t.Fatal(err)
			}
			for range tc.others {
				storeKV(t, env, "other", "get", map[string]string{"key": "x"})
			}
			var fresh []string
			for range tc.incrs {
				c, seq := storeKV(t, env, id, "incr", map[string]string{"key": "c"})
				if len(fresh) == 0 && seq > 4 {
					t.Fatalf("the new stream stored the first command at %d, past where the store began", seq)
				}
				fresh = append(fresh, c)
			}
			m.start(dir)
			for _, c := range fresh {
				if ev := m.ended(c); ev.Outcome != bus.OutcomeSuccess {
					t.Fatalf("an incr in the recreated stream: %s %+v; want it run", ev.Outcome, ev.Error)
				}
			}
			if got, want := m.value("c"), strconv.Itoa(tc.incrs); got != want {
				t.Fatalf("counter %q, want %s", got, want)
			}
		})
	}
}

// A Ghost id that never ran: a non-idempotent command stored for it before its first Ghost
// started (Mirage queues commands for an id enrolled, or named, before its machine starts)
// runs once when that Ghost starts. Its new store finds no trace of an earlier Ghost, so
// nothing predates it (born 0). The event it published is a trace: a store that replaces
// it does not run the incr again.
func TestCommandWaitingForANewGhostRuns(t *testing.T) {
	env := testenv.New(t)
	const id = "edge-new"
	m := newMachine(t, env, id)
	incr, _ := storeKV(t, env, id, "incr", map[string]string{"key": "c"})
	m.start(t.TempDir())
	if ev := m.ended(incr); ev.Outcome != bus.OutcomeSuccess || m.value("c") != "1" {
		t.Fatalf("an incr waiting for a Ghost that never ran: %s %+v, counter %q; want it run once", ev.Outcome, ev.Error, m.value("c"))
	}
	if born, ok, err := m.store.Born(context.Background()); err != nil || !ok || born != 0 {
		t.Fatalf("Born() = %d, %v, %v; want 0, known: nothing predates the first store of an id", born, ok, err)
	}
	m.stop()
	m.start(t.TempDir())
	notRunAgain(t, m.ended(incr))
	if got := m.value("c"); got != "1" {
		t.Fatalf("counter %q, want 1: the incr ran again under a second store", got)
	}
}

// A new store takes the commands waiting on cmd.<id> for ones an earlier Ghost may have run
// (1700 for a non-idempotent one) when the id shows a trace of an earlier Ghost: a registry
// record, or an event in EDGE_EVT. A revoked Ghost's record (a delete marker) and another
// id's record and event are none. When the trace cannot be read (here KV edge_ghosts is
// gone), the store takes it for one.
func TestNewStoreLooksForATraceOfAnEarlierGhost(t *testing.T) {
	for _, tc := range []struct {
		name     string
		leave    func(t *testing.T, env *testenv.Env, id string)
		predates bool
	}{
		{"no trace", func(*testing.T, *testenv.Env, string) {}, false},
		{"an event", leaveEvent, true},
		{"a registry record", leaveRecord, true},
		{"a revoked Ghost's record", func(t *testing.T, env *testenv.Env, id string) {
			leaveRecord(t, env, id)
			reg, err := env.JetStream().KeyValue(context.Background(), bus.BucketGhosts)
			if err != nil {
				t.Fatal(err)
			}
			if err := reg.Delete(context.Background(), id); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"another id's record and event", func(t *testing.T, env *testenv.Env, _ string) {
			leaveRecord(t, env, "edge-other")
			leaveEvent(t, env, "edge-other")
		}, false},
		// A message there is a trace, one that reads as a status (404: none; 503: no
		// stream) too: anyone with the id's rights, or the operator, stored it, maybe an
		// earlier Ghost; taken for none, a command it may have run would run again.
		{"an event that reads as a status", func(t *testing.T, env *testenv.Env, id string) {
			storeStatusJunk(t, env, bus.StreamEvents, subjects.Event(id), nats.Header{"Status": {"404"}, "Description": {"Message Not Found"}})
		}, true},
		{"a registry record that reads as a status", func(t *testing.T, env *testenv.Env, id string) {
			storeStatusJunk(t, env, "KV_"+bus.BucketGhosts, "$KV."+bus.BucketGhosts+"."+id, nats.Header{"Status": {"503"}})
		}, true},
		{"the registry unreadable", func(t *testing.T, env *testenv.Env, _ string) {
			if err := env.JetStream().DeleteKeyValue(context.Background(), bus.BucketGhosts); err != nil {
				t.Fatal(err)
			}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := testenv.New(t)
			const id = "edge-trace"
			m := newMachine(t, env, id)
			incr, seq := storeKV(t, env, id, "incr", map[string]string{"key": "c"})
			tc.leave(t, env, id)
			m.start(t.TempDir())
			ev := m.ended(incr)
			wantBorn := uint64(0)
			if tc.predates {
				notRunAgain(t, ev)
				if got := m.value("c"); got != "" {
					t.Fatalf("counter %q: the incr ran", got)
				}
				wantBorn = seq
			} else if ev.Outcome != bus.OutcomeSuccess || m.value("c") != "1" {
				t.Fatalf("an incr waiting for a Ghost that never ran: %s %+v, counter %q; want it run once", ev.Outcome, ev.Error, m.value("c"))
			}
			if born, ok, err := m.store.Born(context.Background()); err != nil || !ok || born != wantBorn {
				t.Fatalf("Born() = %d, %v, %v; want %d", born, ok, err, wantBorn)
			}
		})
	}
}

// A Ghost with policy required registers before it subscribes, and looks for a trace of an
// earlier Ghost before it registers: its own registry record is not taken for one, and a
// command waiting for its id runs.
func TestRequiredGhostLooksForATraceBeforeItRegisters(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	const id = "edge-required"
	m := newMachine(t, env, id)
	m.policy = ghost.PolicyRequired
	incr, _ := storeKV(t, env, id, "incr", map[string]string{"key": "c"})
	m.start(t.TempDir())
	if !m.g.Registered() {
		t.Fatal("the Ghost with policy required started unregistered")
	}
	if ev := m.ended(incr); ev.Outcome != bus.OutcomeSuccess || m.value("c") != "1" {
		t.Fatalf("an incr waiting for a Ghost that never ran: %s %+v, counter %q; want it run once", ev.Outcome, ev.Error, m.value("c"))
	}
}

// learning is an execution store that runs hook when it is told where it began (SetBorn),
// before it records it.
type learning struct {
	ghost.ExecutionStore
	hook func()
}

func (s learning) SetBorn(ctx context.Context, seq uint64) error {
	s.hook()
	return s.ExecutionStore.SetBorn(ctx, seq)
}

// A cmd.<id> that reads as ending before born is not taken for a recreated EDGE_CMD while
// the replay position has not reached born: the commands up to born still predate the
// store. Here the last command is removed from EDGE_CMD just after the new store learnt
// born (an operator removing it; on a cluster, a replica lagging behind the one that
// answered the look reads the same), and the non-idempotent command before it, which an
// earlier Ghost of the id may have run, is still answered 1700, not run.
func TestCommandSentBeforeTheStoreBeganStaysSoWhenCmdReadsShorter(t *testing.T) {
	env := testenv.New(t)
	const id = "edge-shorter"
	m := newMachine(t, env, id)
	incr, _ := storeKV(t, env, id, "incr", map[string]string{"key": "c"})
	_, lastSeq := storeKV(t, env, id, "get", map[string]string{"key": "c"})
	leaveRecord(t, env, id)
	st, err := ghost.OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), ghost.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	m.store = st
	removed := false
	store := learning{st, func() {
		if removed {
			return
		}
		removed = true
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := env.JetStream().Stream(ctx, bus.StreamCommands)
		if err == nil {
			err = s.DeleteMsg(ctx, lastSeq)
		}
		if err != nil {
			t.Errorf("remove the last command: %v", err)
		}
	}}
	m.g = env.StartGhost(id, testenv.Store(store), testenv.WithRegistry(m.reg), testenv.Policy(m.policy))
	notRunAgain(t, m.ended(incr))
	if got := m.value("c"); got != "" {
		t.Fatalf("counter %q: the incr sent before the store began ran", got)
	}
	if born, ok, err := st.Born(context.Background()); err != nil || !ok || born != lastSeq {
		t.Fatalf("Born() = %d, %v, %v; want %d, kept", born, ok, err, lastSeq)
	}
}

// unreachableConn opens a daemon's connection (it retries forever) to a server behind a
// proxy that refuses connections: a machine booting before its network is up.
func unreachableConn(t *testing.T, env *testenv.Env, name string) (*nats.Conn, *testenv.Proxy) {
	t.Helper()
	proxy := testenv.NewProxy(t, env.Server.Addr().String())
	proxy.Cut()
	// bus.Connect waits up to 5 s for a connection that cannot come; not that long here.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	nc, err := bus.Connect(ctx, bus.ConnConfig{URL: proxy.URL(), Name: name, Persistent: true, Logger: env.Log,
		Options: []nats.Option{bus.GhostRequests()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if nc.IsConnected() {
		t.Fatal("connected through a proxy that refuses connections")
	}
	return nc, proxy
}

// A new machine whose Ghost starts before NATS is reachable (it boots before its network
// is up) runs the non-idempotent commands that waited for it once NATS is: its new store
// looks at cmd.<id> on connecting, before the Ghost registers (with a Mirage there, under
// policy auto) or sends an event, and finds no trace of an earlier Ghost. An id with a
// trace (a registry record, an event) still has them answered 1700, and so has a Ghost
// that left a trace of its own before it could look (as a live command's event would):
// its own cannot be told from an earlier Ghost's.
func TestNewStoreStartedBeforeNATSLooksOnConnecting(t *testing.T) {
	for _, tc := range []struct {
		name     string
		policy   string
		mirage   bool
		leave    func(t *testing.T, env *testenv.Env, id string)
		own      bool // the Ghost leaves a trace of its own before it connects
		predates bool
	}{
		{"headless, no trace", ghost.PolicyHeadless, false, nil, false, false},
		{"auto with a Mirage, no trace", ghost.PolicyAuto, true, nil, false, false},
		{"headless, a registry record", ghost.PolicyHeadless, false, leaveRecord, false, true},
		{"auto with a Mirage, an event", ghost.PolicyAuto, true, leaveEvent, false, true},
		{"headless, a trace of its own before the look", ghost.PolicyHeadless, false, nil, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := testenv.New(t, testenv.Listen())
			if tc.mirage {
				env.StartMirage(mirage.Config{})
			}
			const id = "edge-boot"
			m := newMachine(t, env, id)
			m.policy = tc.policy
			var incrs []string
			var last uint64
			for range 3 {
				c, seq := storeKV(t, env, id, "incr", map[string]string{"key": "c"})
				incrs = append(incrs, c)
				last = seq
			}
			if tc.leave != nil {
				tc.leave(t, env, id)
			}
			var proxy *testenv.Proxy
			m.via, proxy = unreachableConn(t, env, "ghost "+id)
			m.start(t.TempDir())
			if tc.own {
				ghost.LeaveOwnTrace(m.g)
			}
			time.Sleep(300 * time.Millisecond) // a few connect attempts refused
			if _, ok, err := m.store.Born(context.Background()); err != nil || ok {
				t.Fatalf("Born() known (%v, %v) before NATS was reachable", ok, err)
			}
			proxy.Restore()
			for _, c := range incrs {
				ev := m.ended(c)
				if tc.predates {
					notRunAgain(t, ev)
				} else if ev.Outcome != bus.OutcomeSuccess {
					t.Fatalf("an incr waiting for a new machine whose Ghost started before NATS was reachable: %s %+v; want it run", ev.Outcome, ev.Error)
				}
			}
			wantValue, wantBorn := "3", uint64(0)
			if tc.predates {
				wantValue, wantBorn = "", last
			}
			if got := m.value("c"); got != wantValue {
				t.Fatalf("counter %q, want %q", got, wantValue)
			}
			if born, ok, err := m.store.Born(context.Background()); err != nil || !ok || born != wantBorn {
				t.Fatalf("Born() = %d, %v, %v; want %d", born, ok, err, wantBorn)
			}
			if tc.policy == ghost.PolicyAuto {
				testenv.Eventually(t, 10*time.Second, "the Ghost registered", m.g.Registered)
			}
		})
	}
}
