package test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
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
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// authFleet is an embedded server with nkey auth only, a signing Mirage, and enrolled
// Ghosts a and b whose commands must be signed.
type authFleet struct {
	env              *testenv.Env
	operator, mirage *bus.Identity
	m                *mirage.Mirage
	cfg              mirage.Config // Mirage's, for a restart
	keys             map[string]*bus.Identity
	kv               map[string]*kv.Seed
	op               *nats.Conn
	client           *mirage.Client
}

func newIdentity(t *testing.T) *bus.Identity {
	t.Helper()
	id, err := bus.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newAuthFleet(t *testing.T, ghosts ...string) *authFleet {
	t.Helper()
	return newAuthFleetWith(t, nil, ghosts...)
}

// newAuthFleetWith is newAuthFleet with Mirage's configuration changed by tune.
func newAuthFleetWith(t *testing.T, tune func(*mirage.Config), ghosts ...string) *authFleet {
	t.Helper()
	f := &authFleet{operator: newIdentity(t), mirage: newIdentity(t), keys: map[string]*bus.Identity{}, kv: map[string]*kv.Seed{}}
	f.env = testenv.New(t, testenv.Listen(), testenv.Users(natsd.Users(f.operator.PublicKey(), f.mirage.PublicKey(), nil)))
	mnc := f.env.ConnWith("mirage", f.mirage.NATSOption(), nats.CustomInboxPrefix(bus.MirageInbox()))
	cfg := mirage.Config{
		Identity: f.mirage, RequireSignedEvents: true,
		OnFleetChange: func(enrolled map[string]string) error {
			return f.env.Server.SetUsers(natsd.Users(f.operator.PublicKey(), f.mirage.PublicKey(), enrolled))
		},
	}
	if tune != nil {
		tune(&cfg)
	}
	f.cfg = cfg
	f.m = f.env.StartMirageOn(mnc, cfg)
	f.op = f.env.ConnWith("operator", f.operator.NATSOption())
	var err error
	if f.client, err = mirage.NewClient(f.op); err != nil {
		t.Fatal(err)
	}
	for _, id := range ghosts {
		f.keys[id] = newIdentity(t)
		if err := f.m.Enroll(context.Background(), id, f.keys[id].PublicKey()); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// bucket opens KV bucket name as the operator.
func (f *authFleet) bucket(t *testing.T, name string) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// startGhost runs enrolled Ghost id with its key, trusting only the Mirage key. It
// connects over a socket, as a real Ghost does (a refused in-process pipe stalls the
// server's writes to it for the write deadline).
func (f *authFleet) startGhost(id string) *nats.Conn {
	f.env.T.Helper()
	return f.startGhostTrusting(id, f.mirage.PublicKey())
}

// startGhostTrusting runs enrolled Ghost id trusting only the given Mirage key, with the
// options given beside those.
func (f *authFleet) startGhostTrusting(id, trusted string, opts ...testenv.GhostOption) *nats.Conn {
	f.env.T.Helper()
	key := f.keys[id]
	nc := f.env.URLConn("ghost "+id, "", key.NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox(id)), bus.GhostRequests())
	f.kv[id] = kv.New()
	reg := ghost.NewRegistry()
	for _, s := range []ghost.Seed{f.kv[id], flow.New()} {
		if err := reg.Add(s); err != nil {
			f.env.T.Fatal(err)
		}
	}
	f.env.StartGhost(id, append([]testenv.GhostOption{testenv.Via(nc), testenv.WithRegistry(reg), testenv.Tune(func(c *ghost.Config) {
		c.Identity = key
		c.TrustedMirageKeys = []string{trusted}
	})}, opts...)...)
	return nc
}

// mustServe runs a seed.flow status intent on Ghost id and fails the test, saying when,
// unless it is satisfied.
func (f *authFleet) mustServe(t *testing.T, id, when string) {
	t.Helper()
	if rep := f.env.Run(f.client, testenv.NewIssue(id, "seed.flow", "status", nil, 10*time.Second)); rep.Phase != bus.PhaseSatisfied {
		t.Fatalf("intent %s: %+v", when, rep)
	}
}

// attach asks Mirage to attach Ghost id, as 'miragectl attach' does, and waits until it
// is registered.
func (f *authFleet) attach(t *testing.T, id string) {
	t.Helper()
	data, _ := json.Marshal(mirage.AttachRequest{GhostID: id})
	msg, err := f.op.Request(subjects.Attach, data, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var reply struct{ Status, Reason string }
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Status != "accepted" {
		t.Fatalf("attach under auth: %s", msg.Data)
	}
	testenv.Eventually(t, 10*time.Second, id+" registered", func() bool { _, ok := f.m.Fleet().Get(id); return ok })
}

// violations collects the permission errors a connection is told about.
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	v.mu.Lock()
	v.errs = append(v.errs, err.Error())
	v.mu.Unlock()
}

func (v *violations) saw(sub string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range v.errs {
		if strings.Contains(strings.ToLower(e), "permissions violation") && strings.Contains(e, sub) {
			return true
		}
	}
	return false
}

func TestAuthUnknownKeyIsRefused(t *testing.T) {
	f := newAuthFleet(t)
	stranger := newIdentity(t)
	_, err := nats.Connect(f.env.URL, stranger.NATSOption(), nats.MaxReconnects(0))
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("an unknown nkey connected: %v", err)
	}
	if _, err := nats.Connect(f.env.URL, nats.MaxReconnects(0)); err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("a connection without credentials was accepted: %v", err)
	}
}

// Ghost a, with its own key, cannot subscribe to cmd.b, publish evt.b, or read b's
// commands through the JetStream API.
func TestAuthGhostIsConfinedToItsSubjects(t *testing.T) {
	f := newAuthFleet(t, "ghost-a", "ghost-b")
	var v violations
	nc := f.env.ConnWith("ghost-a rogue", f.keys["ghost-a"].NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox("ghost-a")), nats.ErrorHandler(v.handler))
	if _, err := nc.SubscribeSync(subjects.Command("ghost-b")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(subjects.Event("ghost-b"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	testenv.Eventually(t, 5*time.Second, "permission violations for cmd.ghost-b and evt.ghost-b", func() bool {
		return v.saw(`"cmd.ghost-b"`) && v.saw(`"evt.ghost-b"`)
	})
	// B's commands through the JetStream API: direct get, a consumer on cmd.ghost-b,
	// stream info: all refused.
	if _, err := nc.Request("$JS.API.DIRECT.GET."+bus.StreamCommands+"."+subjects.Command("ghost-b"), nil, time.Second); err == nil {
		t.Error("ghost-a read ghost-b's last command by direct get")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := js.CreateConsumer(ctx, bus.StreamCommands, jetstream.ConsumerConfig{Name: bus.GhostReplayConsumer("ghost-b"), FilterSubject: subjects.Command("ghost-b")}); err == nil {
		t.Error("ghost-a created a consumer on ghost-b's commands")
	}
	if _, err := js.CreateConsumer(ctx, bus.StreamCommands, jetstream.ConsumerConfig{Name: bus.GhostReplayConsumer("ghost-a"), FilterSubject: subjects.Command("ghost-b")}); err == nil {
		t.Error("ghost-a created its own consumer filtered on ghost-b's commands")
	}
	if _, err := js.Stream(ctx, bus.StreamCommands); err == nil {
		t.Error("ghost-a read EDGE_CMD's stream info")
	}
	// Its own subjects work: an intent to a succeeds.
	f.startGhost("ghost-a")
	r := f.env.Run(f.client, testenv.NewIssue("ghost-a", "seed.kv", "put", map[string]string{"key": "k", "value": "v"}, 10*time.Second))
	if r.Phase != bus.PhaseSatisfied {
		t.Fatalf("signed intent to an enrolled ghost: %s %+v", r.Summary, r.Results)
	}
}

// A revoked Ghost is disconnected and refused from then on.
func TestAuthRevokedGhostIsCutOff(t *testing.T) {
	f := newAuthFleet(t, "ghost-r")
	nc := f.startGhost("ghost-r")
	testenv.Eventually(t, 5*time.Second, "ghost-r to register", func() bool { _, ok := f.m.Fleet().Get("ghost-r"); return ok })
	if err := f.m.Revoke(context.Background(), "ghost-r"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "ghost-r to be disconnected", func() bool { return !nc.IsConnected() })
	time.Sleep(time.Second) // reconnect attempts keep failing
	if nc.IsConnected() {
		t.Fatal("a revoked ghost reconnected")
	}
	if _, ok := f.m.Fleet().Get("ghost-r"); ok {
		t.Fatal("a revoked ghost is still in the registry")
	}
	// An issue to it is refused at once: no Ghost is believed, nor registered, as an id
	// that is not enrolled.
	_, err := f.client.Issue(context.Background(), testenv.NewIssue("ghost-r", "seed.kv", "get", map[string]string{"key": "x"}, time.Second))
	var perr *bus.Error
	if !errors.Is(err, mirage.ErrRejected) || !errors.As(err, &perr) || perr.Code != bus.CodeSemantic || !strings.Contains(perr.Message, "not enrolled: ghost-r") {
		t.Fatalf("issue to a revoked ghost: %v; want a 1300 refusal saying it is not enrolled", err)
	}
	// The revoked Ghost keeps trying (nats.go would give up after two authorization
	// errors): enrolled again, it is back without a restart.
	if nc.IsClosed() {
		t.Fatal("the revoked ghost's connection was closed for good")
	}
	f.enrollAndExpectBack(t, "ghost-r", nc, "after enrolling the revoked ghost again")
}

// enrollAndExpectBack enrolls Ghost id, whose connection nc the server refuses, and waits
// for it to connect (within its backoff), register and serve, without a restart.
func (f *authFleet) enrollAndExpectBack(t *testing.T, id string, nc *nats.Conn, when string) {
	t.Helper()
	if err := f.m.Enroll(context.Background(), id, f.keys[id].PublicKey()); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 40*time.Second, id+" to connect once enrolled", nc.IsConnected)
	testenv.Eventually(t, 15*time.Second, id+" to register", func() bool { _, ok := f.m.Fleet().Get(id); return ok })
	f.mustServe(t, id, when)
}

// A Ghost started before it is enrolled waits for its enrollment: refused at first, it
// keeps trying, and once 'fleet add' lets it in it connects, registers and serves.
func TestAuthGhostStartedBeforeEnrollmentComesIn(t *testing.T) {
	f := newAuthFleet(t)
	f.keys["ghost-late"] = newIdentity(t)
	nc := f.startGhost("ghost-late")
	time.Sleep(1500 * time.Millisecond) // several refused attempts
	if nc.IsConnected() || nc.IsClosed() {
		t.Fatalf("before enrollment: connected %v, closed %v; want refused and still trying", nc.IsConnected(), nc.IsClosed())
	}
	f.enrollAndExpectBack(t, "ghost-late", nc, "once enrolled")
}

// A revocation the server could not apply (its reload failed) leaves the Ghost enrolled,
// and running it again cuts the Ghost off: it is not answered "not enrolled" while the
// server still admits the Ghost.
func TestAuthRevokeThatTheServerRefusedCanBeRunAgain(t *testing.T) {
	var failing atomic.Bool
	f := newAuthFleetWith(t, func(c *mirage.Config) {
		apply := c.OnFleetChange
		c.OnFleetChange = func(enrolled map[string]string) error {
			if failing.Load() {
				return errors.New("reload refused")
			}
			return apply(enrolled)
		}
	}, "ghost-r")
	nc := f.startGhost("ghost-r")
	testenv.Eventually(t, 5*time.Second, "ghost-r to register", func() bool { _, ok := f.m.Fleet().Get("ghost-r"); return ok })
	ctx := context.Background()
	failing.Store(true)
	if err := f.m.Revoke(ctx, "ghost-r"); err == nil {
		t.Fatal("revoke succeeded though the server refused it")
	}
	if _, err := f.bucket(t, bus.BucketFleet).Get(ctx, "ghost-r"); err != nil {
		t.Fatalf("ghost-r lost its enrollment though the server still admits it: %v", err)
	}
	failing.Store(false)
	if err := f.m.Revoke(ctx, "ghost-r"); err != nil {
		t.Fatalf("revoke run again: %v", err)
	}
	testenv.Eventually(t, 5*time.Second, "ghost-r to be disconnected", func() bool { return !nc.IsConnected() })
}

// Commands published by hand onto cmd.<id> with the operator key but without a valid
// signature are refused with the security code, and nothing runs; a signed intent works.
func TestAuthUnsignedForgedTamperedStaleCommandsAreRefused(t *testing.T) {
	f := newAuthFleet(t, "ghost-s")
	f.startGhost("ghost-s")
	forger := newIdentity(t)
	build := func(id string, age time.Duration) *bus.Command {
		c := &bus.Command{
			Header:    bus.NewHeader(bus.TypeCommand, "", time.Now().Add(-age)),
			CommandID: id, IntentID: "int_forged", GhostID: "ghost-s", SeedSelector: "seed.kv", Operation: "incr",
			Args: map[string]string{"key": "evil"}, DeliverByMS: time.Now().Add(time.Hour).UnixMilli(), TimeoutMS: 5000,
		}
		return c
	}
	publish := func(c *bus.Command, signer *bus.Identity, tamper bool) {
		data, err := bus.Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		msg := bus.NewMsg(subjects.Command("ghost-s"), data, c.CommandID, c.TraceID)
		if signer != nil {
			if err := bus.SignMsg(msg, signer); err != nil {
				t.Fatal(err)
			}
		}
		if tamper {
			msg.Data = []byte(strings.Replace(string(msg.Data), `"evil"`, `"EVIL"`, 1))
		}
		if err := f.op.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	cases := map[string]string{}
	publish(build("cmd_unsigned", 0), nil, false)
	cases["cmd_unsigned"] = "unsigned"
	publish(build("cmd_forged", 0), forger, false)
	cases["cmd_forged"] = "not trusted"
	publish(build("cmd_tampered", 0), f.mirage, true)
	cases["cmd_tampered"] = "does not match"
	publish(build("cmd_stale", 48*time.Hour), f.mirage, false)
	cases["cmd_stale"] = "stale"
	_ = f.op.Flush()

	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	var events []bus.Event
	testenv.Eventually(t, 10*time.Second, "a security event per refused command", func() bool {
		events = f.env.Events(js)
		return len(events) >= len(cases)
	})
	for _, ev := range events {
		want, ok := cases[ev.CommandID]
		if !ok {
			t.Errorf("unexpected event %+v", ev)
			continue
		}
		if ev.Outcome != bus.OutcomeError || ev.Error == nil || ev.Error.Code != bus.CodeSecurity || ev.Error.Class != bus.ClassSecurity || !strings.Contains(ev.Error.Message, want) {
			t.Errorf("%s: event error %+v, want 1800 security mentioning %q", ev.CommandID, ev.Error, want)
		}
		delete(cases, ev.CommandID)
	}
	if len(cases) > 0 {
		t.Errorf("no security event for %v", cases)
	}
	if v, ok := f.kv["ghost-s"].Value("evil"); ok {
		t.Fatalf("a refused command ran: evil = %q", v)
	}
	// The same command properly signed by Mirage, through an intent, runs.
	r := f.env.Run(f.client, testenv.NewIssue("ghost-s", "seed.kv", "incr", map[string]string{"key": "evil"}, 10*time.Second))
	if r.Phase != bus.PhaseSatisfied {
		t.Fatalf("signed intent: %s %+v", r.Summary, r.Results)
	}
	if v, _ := f.kv["ghost-s"].Value("evil"); v != "1" {
		t.Fatalf("counter %q after one signed incr, want 1", v)
	}
}

// A forged copy of a live command (same command_id and intent_id, not signed by Mirage) is
// refused by the Ghost, and that refusal does not stand in for the command's real result.
func TestAuthRefusalOfForgedCopyDoesNotReplaceTheResult(t *testing.T) {
	f := newAuthFleet(t, "ghost-f")
	f.startGhost("ghost-f")
	is := testenv.NewIssue("ghost-f", "seed.flow", "sleep", map[string]string{"ms": "800"}, 10*time.Second)
	issueNoWait(t, f.client, is)
	time.Sleep(200 * time.Millisecond) // the real command is running
	forged := &bus.Command{
		Header:    bus.NewHeader(bus.TypeCommand, is.TraceID, time.Now()),
		CommandID: mirage.CommandID(is.IntentID, 0), IntentID: is.IntentID, GhostID: "ghost-f", SeedSelector: "seed.flow", Operation: "status",
		Args: map[string]string{}, DeliverByMS: time.Now().Add(time.Hour).UnixMilli(), TimeoutMS: 5000,
	}
	data, err := bus.Encode(forged)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.op.Publish(subjects.Command("ghost-f"), data); err != nil {
		t.Fatal(err)
	}
	r := waitReport(t, f.client, is.IntentID, 15*time.Second)
	if r.Phase != bus.PhaseSatisfied || r.Results[0].EventID != bus.EventID("ghost-f", forged.CommandID) {
		t.Fatalf("after a forged copy: %s %+v, want the real success", r.Summary, r.Results)
	}
}

// Mirage refuses an event whose signer is not the key enrolled for its ghost_id: a forged
// success for a silent target does not count, the target times out.
func TestAuthForgedEventIsNotCounted(t *testing.T) {
	// Live: Mirage reads the forged events as they are stored. Replayed: they are stored
	// while no Mirage runs, and the next one reads them in the recovery of the open
	// intent (its replay of EDGE_EVT) before its consumer delivers them.
	for _, restart := range []bool{false, true} {
		name := "live"
		if restart {
			name = "replayed at Mirage start"
		}
		t.Run(name, func(t *testing.T) { forgedEventIsNotCounted(t, restart) })
	}
}

func forgedEventIsNotCounted(t *testing.T, restart bool) {
	f := newAuthFleet(t, "ghost-x")
	is := testenv.NewIssue("ghost-x", "seed.kv", "incr", map[string]string{"key": "k"}, 3*time.Second)
	if _, err := f.client.Issue(context.Background(), is); err != nil {
		t.Fatal(err)
	}
	if restart {
		if err := f.m.Close(); err != nil {
			t.Fatal(err)
		}
	}
	forger := newIdentity(t)
	ev := &bus.Event{
		Header:  bus.NewHeader(bus.TypeEvent, is.TraceID, time.Now()),
		EventID: bus.EventID("ghost-x", mirage.CommandID(is.IntentID, 0)), CommandID: mirage.CommandID(is.IntentID, 0),
		IntentID: is.IntentID, ExecutionID: "exe_forged", GhostID: "ghost-x", SeedID: "seed.kv", Operation: "incr",
		Outcome: bus.OutcomeSuccess, Result: bus.Result{Status: "ok", Stdout: "1"}, StartedMS: time.Now().UnixMilli(), FinishedMS: time.Now().UnixMilli(),
	}
	data, err := bus.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	for _, signer := range []*bus.Identity{nil, forger} {
		msg := bus.NewMsg(subjects.Event("ghost-x"), data, subjects.NewID("msg"), ev.TraceID)
		if signer != nil {
			if err := bus.SignMsg(msg, signer); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := js.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
	}
	if restart {
		mnc := f.env.ConnWith("mirage again", f.mirage.NATSOption(), nats.CustomInboxPrefix(bus.MirageInbox()))
		f.m = f.env.StartMirageOn(mnc, f.cfg)
	}
	r := waitReport(t, f.client, is.IntentID, 10*time.Second)
	if r.Counts.Success != 0 || r.Counts.Timeout != 1 {
		t.Fatalf("a forged event was counted: %s %+v", r.Summary, r.Counts)
	}
}

// attach works under auth: the headless Ghost answers Mirage's request on its own
// attach subject, which its permissions allow it to reply to.
func TestAuthAttachHeadlessGhost(t *testing.T) {
	f := newAuthFleet(t, "ghost-h")
	f.startGhostTrusting("ghost-h", f.mirage.PublicKey(), testenv.Policy(ghost.PolicyHeadless))
	f.attach(t, "ghost-h")
}

// A headless Ghost registers only on Mirage's signed attach request naming it: not on
// another Ghost's event whose publish ack was steered to its attach subject by the reply
// subject, nor on an unsigned request or one naming another Ghost.
func TestAuthAttachOnlyOnMiragesSignedRequest(t *testing.T) {
	f := newAuthFleet(t, "ghost-h", "ghost-c")
	nc := f.startGhostTrusting("ghost-h", f.mirage.PublicKey(), testenv.Policy(ghost.PolicyHeadless))
	ctx := context.Background()
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	before := streamState(ctx, t, js)[bus.StreamEvents]
	rogue := f.rogueGhost("ghost-c")
	ev := nats.NewMsg(subjects.Event("ghost-c"))
	ev.Reply = subjects.AttachGhost("ghost-h")
	ev.Header.Set(bus.HeaderMsgID, "evt_rogue_attach")
	ev.Data = []byte(`{}`)
	if err := rogue.PublishMsg(ev); err != nil {
		t.Fatal(err)
	}
	waitStreamMsgs(ctx, t, js, bus.StreamEvents, before+1)
	for _, body := range []string{`{"ghost_id":"ghost-h"}`, `{"ghost_id":"ghost-x"}`, `{}`} {
		if err := f.op.Publish(subjects.AttachGhost("ghost-h"), []byte(body)); err != nil { // unsigned
			t.Fatal(err)
		}
	}
	for _, c := range []*nats.Conn{f.op, nc} {
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond) // a registration it started would be in by now
	if _, ok := f.m.Fleet().Get("ghost-h"); ok {
		t.Fatal("the headless Ghost registered without Mirage's attach request")
	}
	f.attach(t, "ghost-h")
}

// 'fleet add' refuses Mirage's and the operator's keys: the server keeps one user per
// key, so enrolling one as a Ghost would demote it to a Ghost's permissions.
func TestAuthEnrollRefusesRoleKeys(t *testing.T) {
	f := newAuthFleet(t)
	ctx := context.Background()
	if err := f.m.RecordOperatorKey(ctx, f.operator.PublicKey()); err != nil {
		t.Fatal(err)
	}
	for who, key := range map[string]string{"Mirage": f.mirage.PublicKey(), "the operator": f.operator.PublicKey()} {
		err := f.m.Enroll(ctx, "edge-x", key)
		var perr *bus.Error
		if !errors.As(err, &perr) || perr.Code != bus.CodeSemantic || !strings.Contains(perr.Message, who) {
			t.Errorf("enrolling %s's key: %v, want a 1300 naming %s", who, err, who)
		}
	}
	// The operator still has its own permissions: it can list the fleet.
	if _, err := f.client.Ghosts(ctx); err != nil {
		t.Fatalf("operator after the refused enrollments: %v", err)
	}
}

// A Ghost that refuses Mirage's own command (here it trusts another key) ends the target
// at once with that refusal: it is of the bytes Mirage sent, so it is genuine.
func TestAuthGenuineRefusalEndsTheTargetAtOnce(t *testing.T) {
	f := newAuthFleet(t, "ghost-w")
	f.startGhostTrusting("ghost-w", newIdentity(t).PublicKey())
	start := time.Now()
	r := f.env.Run(f.client, testenv.NewIssue("ghost-w", "seed.flow", "status", nil, 20*time.Second))
	res := r.Results[0]
	if res.Outcome != bus.OutcomeError || res.Error == nil || res.Error.Code != bus.CodeSecurity || time.Since(start) > 5*time.Second {
		t.Fatalf("after %s: %s %+v, want the Ghost's 1800 refusal at once", time.Since(start), r.Summary, res)
	}
}

// A Ghost on a server that requires authentication registers with a Mirage that holds no
// signing key (it logs in by certificate or password, as 'up --server' without --auth may),
// though its connection has no inbox prefix of its own: its requests are answered on its
// own inbox whatever the connection's, which is where Mirage then answers.
func TestGhostWithoutInboxPrefixRegistersUnderAuth(t *testing.T) {
	f := newAuthFleetWith(t, func(c *mirage.Config) { c.Identity, c.RequireSignedEvents = nil, false }, "ghost-p")
	nc := f.env.URLConn("ghost ghost-p", "", f.keys["ghost-p"].NATSOption(), bus.GhostRequests()) // no CustomInboxPrefix
	f.env.StartGhost("ghost-p", testenv.Via(nc), testenv.Policy(ghost.PolicyRequired), testenv.Seeds("seed.flow"))
	if _, ok := f.m.Fleet().Get("ghost-p"); !ok {
		t.Fatal("ghost-p started with policy required but is not in Mirage's registry")
	}
}

// A client command run with a key the server accepts but that may not do what it asks (a
// Ghost's) says so: exit 2, one line naming the refused subject and the operator key, not
// a timeout blamed on Mirage (exit 3) after raw violation lines, and at once. Without a key
// at all, or with one the server does not know, the refusal at connect says which key to
// pass, exit 2 as well.
func TestAuthClientWithTheWrongKeySaysPermissionDenied(t *testing.T) {
	f := newAuthFleet(t, "ghost-k")
	keyFile := filepath.Join(t.TempDir(), "ghost.nk")
	if err := f.keys["ghost-k"].Save(keyFile); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"issue", "--target", "ghost-k", "seed.flow", "status"},
		{"ghosts"},
		{"fleet", "add", "ghost-z", newIdentity(t).PublicKey()},
	} {
		r := miragectl(t, f.env.URL, append(args, "--nkey", keyFile)...)
		if r.code != 2 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "permission denied") || !strings.Contains(r.stderr, "operator key") {
			t.Errorf("%v with a ghost's key: exit %d, stderr %q; want exit 2 and one line saying permission denied and naming the operator key", args, r.code, r.stderr)
		}
		if r.took > 3*time.Second { // the refusal ends the wait, not the request's timeout
			t.Errorf("%v with a ghost's key took %s", args, r.took)
		}
	}
	// No key, or a key the server does not know: the server was reached and refused this
	// client, an input to fix (exit 2), not an outage a script should retry (exit 3).
	unknown := filepath.Join(t.TempDir(), "unknown.nk")
	if err := newIdentity(t).Save(unknown); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"ghosts"}, {"intents"}, {"report", "int_abc"}, {"issue", "--target", "ghost-k", "seed.flow", "status"}, {"fleet", "ls"}} {
		r := miragectl(t, f.env.URL, args...)
		if r.code != 2 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "Authorization Violation") || !strings.Contains(r.stderr, "--nkey") {
			t.Errorf("%v without a key: exit %d, stderr %q; want exit 2 and one line naming --nkey", args, r.code, r.stderr)
		}
		r = miragectl(t, f.env.URL, append(args, "--nkey", unknown)...)
		if r.code != 2 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "does not accept this key") || !strings.Contains(r.stderr, "operator key") {
			t.Errorf("%v with an unknown key: exit %d, stderr %q; want exit 2 and one line saying the server does not accept it", args, r.code, r.stderr)
		}
	}
}

// A Ghost cannot bounce a message of its choosing onto other subjects by answering its own
// probe: it may publish and read probe.<own id>, and set the probe's reply subject to
// another Ghost's cmd.<id>, mirage.announce or another Ghost's reg.<id>. Only answers to
// its own inbox get through (a probe's answer goes there), and nothing reaches the others.
func TestAuthGhostCannotAnswerItsOwnProbeOntoOtherSubjects(t *testing.T) {
	f := newAuthFleet(t, "ghost-a", "ghost-b")
	victim := f.env.ConnWith("ghost-b", f.keys["ghost-b"].NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox("ghost-b")))
	watcher := f.env.ConnWith("mirage watcher", f.mirage.NATSOption(), nats.CustomInboxPrefix(bus.MirageInbox()))
	var mu sync.Mutex
	delivered := map[string]bool{}
	watch := func(nc *nats.Conn, subject string) {
		t.Helper()
		if _, err := nc.Subscribe(subject, func(m *nats.Msg) { mu.Lock(); delivered[m.Subject] = true; mu.Unlock() }); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []string{subjects.Command("ghost-b"), subjects.Ack("ghost-b"), subjects.Announce} {
		watch(victim, s)
	}
	for _, s := range []string{subjects.Register("ghost-b"), subjects.Heartbeat("ghost-b")} {
		watch(watcher, s)
	}

	var v violations
	rogue := f.env.ConnWith("ghost-a rogue", f.keys["ghost-a"].NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox("ghost-a")), nats.ErrorHandler(v.handler))
	if _, err := rogue.Subscribe(subjects.Probe("ghost-a"), func(m *nats.Msg) { _ = m.Respond([]byte(`{"forged":true}`)) }); err != nil {
		t.Fatal(err)
	}
	// Its own inbox is where a genuine probe's answer goes: that one must still work.
	own := bus.GhostInbox("ghost-a") + ".probe"
	answered, err := rogue.SubscribeSync(own)
	if err != nil {
		t.Fatal(err)
	}
	targets := []string{subjects.Command("ghost-b"), subjects.Ack("ghost-b"), subjects.Announce, subjects.Register("ghost-b"), subjects.Heartbeat("ghost-b")}
	for _, target := range append(targets, own) {
		if err := rogue.PublishMsg(&nats.Msg{Subject: subjects.Probe("ghost-a"), Reply: target, Data: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := answered.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("the answer to a probe of ghost-a's own id did not reach its inbox: %v", err)
	}
	testenv.Eventually(t, 5*time.Second, "each reflected answer refused or delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, target := range targets {
			if !v.saw(`"`+target+`"`) && !delivered[target] {
				return false
			}
		}
		return true
	})
	mu.Lock()
	defer mu.Unlock()
	for _, target := range targets {
		if delivered[target] || !v.saw(`"`+target+`"`) {
			t.Errorf("ghost-a's answer to its own probe was delivered on %s", target)
		}
	}
}
