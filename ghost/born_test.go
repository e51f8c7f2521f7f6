package ghost_test

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds/kv"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// storeKV stores a seed.kv command for ghostID in EDGE_CMD, open for a minute, and returns
// its command_id and stream sequence.
func storeKV(t *testing.T, env *testenv.Env, ghostID, op string, args map[string]string) (string, uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	js := env.JetStream()
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cmd := bus.Command{Header: bus.NewHeader(bus.TypeCommand, "", now), CommandID: subjects.NewID(subjects.PrefixCommand),
		IntentID: subjects.NewID(subjects.PrefixIntent), GhostID: ghostID, SeedSelector: kv.ID, Operation: op, Args: args,
		DeliverByMS: now.Add(time.Minute).UnixMilli(), TimeoutMS: 10_000}
	data, err := bus.Encode(&cmd)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := js.PublishMsg(ctx, bus.NewMsg(subjects.Command(ghostID), data, cmd.CommandID, cmd.TraceID))
	if err != nil {
		t.Fatal(err)
	}
	return cmd.CommandID, ack.Sequence
}

// machine is one Ghost id whose kv seed outlives its Ghosts, and whose state directory a
// test may replace.
type machine struct {
	t     *testing.T
	env   *testenv.Env
	id    string
	kv    *kv.Seed
	reg   *ghost.Registry
	store *ghost.BoltStore
	g     *ghost.Ghost
}

func newMachine(t *testing.T, env *testenv.Env, id string) *machine {
	m := &machine{t: t, env: env, id: id, kv: kv.New(), reg: ghost.NewRegistry()}
	if err := m.reg.Add(m.kv); err != nil {
		t.Fatal(err)
	}
	return m
}

// start runs a headless Ghost on the execution store in stateDir.
func (m *machine) start(stateDir string) {
	m.t.Helper()
	st, err := ghost.OpenBoltStore(filepath.Join(stateDir, "executions.db"), ghost.BoltOptions{})
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { _ = st.Close() })
	m.store = st
	m.g = m.env.StartGhost(m.id, testenv.Store(st), testenv.WithRegistry(m.reg), testenv.Policy(ghost.PolicyHeadless))
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
			// Sent before the store began: 1700. The store begins at 4 and its position
			// reaches 4.
			old, _ := storeKV(t, env, id, "incr", map[string]string{"key": "c"})
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
