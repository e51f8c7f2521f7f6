package mirage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
)

// A peer repeating a malformed register gets each one rejected, with one warning per
// bus.RateLogEvery saying how many it stands for, not one warning each.
func TestRejectedRegistrationsAreLoggedAtMostOncePerInterval(t *testing.T) {
	var logs bytes.Buffer
	f := newFleet(nil, nil, make(chan struct{}), time.Now, newReplyGuard(false, slog.New(slog.DiscardHandler)), slog.New(slog.NewTextHandler(&logs, nil)))
	for range 200 {
		f.answer(&nats.Msg{Subject: "reg.flooder"}, bus.RegisterAck{GhostID: "flooder", Status: bus.RegisterRejected, Reason: "malformed register"})
	}
	if n := strings.Count(logs.String(), "registration rejected"); n != 1 {
		t.Fatalf("%d warnings for 200 rejected registrations, want 1:\n%s", n, logs.String())
	}
}

// A presence flush whose publishes the connection refuses (closed here; a full reconnect
// buffer or too many unacknowledged publishes refuse them the same way) keeps Mirage up
// and the shard marked, for the next flush to write again.
func TestPresenceFlushRefusedByTheConnectionIsRetried(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true})
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "fleet"})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	f := newFleet(js, nil, make(chan struct{}), time.Now, newReplyGuard(false, slog.New(slog.DiscardHandler)), slog.New(slog.NewTextHandler(&logs, nil)))
	f.ghosts["g1"] = &GhostRecord{GhostID: "g1"}
	sh := presenceShard("g1")
	f.seen[sh] = true
	nc.Close()
	f.flush(context.Background())
	if !f.seen[sh] {
		t.Fatal("the shard that was not stored is no longer marked: the next flush would not write it")
	}
	if !strings.Contains(logs.String(), "presence not stored") {
		t.Fatalf("no warning about the presence not stored:\n%s", logs.String())
	}
}

// A Ghost revoked (forgotten) while its registration waits in the registrar's queue, or
// while its record is being stored, does not come back into the registry: its register is
// answered rejected, and its record is not left in edge_ghosts.
func TestRegistrationOfAGhostRevokedMeanwhileIsNotKept(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js, kv := ghostsBucket(ctx, t, "fleet")
	stop := make(chan struct{})
	f := newFleet(js, kv, stop, time.Now, newReplyGuard(false, slog.New(slog.DiscardHandler)), slog.New(slog.DiscardHandler))
	register := func(id string) <-chan *nats.Msg {
		t.Helper()
		answers := make(chan *nats.Msg, 1)
		inbox := nats.NewInbox()
		if _, err := nc.ChanSubscribe(inbox, answers); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		data, err := bus.Encode(&bus.Register{Header: bus.NewHeader(bus.TypeRegister, "", time.Now()), GhostID: id, Version: "t",
			Labels: map[string]string{}, Seeds: []bus.SeedInfo{}})
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.PublishRequest("reg."+id, inbox, data); err != nil {
			t.Fatal(err)
		}
		return answers
	}
	// Registers are handled one at a time, in order, as Mirage's subscription does.
	registered := make(chan struct{}, 8)
	if _, err := nc.Subscribe("reg.*", func(m *nats.Msg) { f.onRegister(m); registered <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	answer := func(ch <-chan *nats.Msg) bus.RegisterAck {
		t.Helper()
		select {
		case m := <-ch:
			var ack bus.RegisterAck
			if err := bus.Decode(m.Data, &ack); err != nil {
				t.Fatal(err)
			}
			return ack
		case <-ctx.Done():
			t.Fatal("no register.ack")
		}
		return bus.RegisterAck{}
	}

	// Queued: revoked before the registrar takes it.
	queued := register("g1")
	<-registered
	f.forget(ctx, "g1")
	if ack := answer(queued); ack.Status != bus.RegisterRejected || !strings.Contains(ack.Reason, "revoked") {
		t.Fatalf("register queued before the revocation: %+v, want rejected as revoked", ack)
	}
	// Being stored: the registration is taken before the revocation, kept after it.
	rec := &GhostRecord{GhostID: "g2", RegisteredMS: 1, LastSeenMS: 1}
	taken := registration{rec: rec, gen: f.gen}
	if err := f.put(rec); err != nil {
		t.Fatal(err)
	}
	f.forget(ctx, "g2")
	if f.keep(taken) {
		t.Fatal("a registration stored while its Ghost was revoked is kept")
	}
	// Registered again after the revocation (no --auth keeps it out): kept.
	go f.registrar()
	defer close(stop)
	if ack := answer(register("g1")); ack.Status != bus.RegisterAccepted {
		t.Fatalf("register after the revocation: %+v, want accepted", ack)
	}
	for _, id := range []string{"g1", "g2"} {
		_, inRegistry := f.Get(id)
		_, err := kv.Get(ctx, id)
		if want := id == "g1"; inRegistry != want || (err == nil) != want {
			t.Errorf("%s: in the registry %v, in edge_ghosts %v (%v); want %v", id, inRegistry, err == nil, err, want)
		}
	}
}

// The Ghost Mirage enrolls at every start ('up --auth' does so for its local Ghost, whose
// key the server admits whatever edge_fleet says) is neither revoked nor re-keyed by a
// fleet request: the change would not hold, and until the next start put it back Mirage
// would refuse the Ghost's events while the server still let it in.
func TestGhostEnrolledAtStartCannotBeRevokedOrRekeyed(t *testing.T) {
	key := func() string {
		id, err := bus.NewIdentity()
		if err != nil {
			t.Fatal(err)
		}
		return id.PublicKey()
	}
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirageWith(t, ns, Config{EnrollAtStart: map[string]string{"local": key()}}, nil)
	ctx := context.Background()
	for what, err := range map[string]error{"revoke": m.Revoke(ctx, "local"), "re-key": m.Enroll(ctx, "local", key())} {
		var perr *bus.Error
		if !errors.As(err, &perr) || perr.Code != bus.CodeSemantic || !strings.Contains(perr.Message, "--no-local-ghost") {
			t.Errorf("%s the Ghost enrolled at start: %v, want a 1300 refusal naming --no-local-ghost", what, err)
		}
	}
	if err := m.Enroll(ctx, "edge-1", key()); err != nil {
		t.Fatalf("enroll another Ghost: %v", err)
	}
	if err := m.Revoke(ctx, "edge-1"); err != nil {
		t.Fatalf("revoke another Ghost: %v", err)
	}
}

// 'miragectl ghosts' reads heartbeat times from KV, which Mirage writes every flush
// interval (5 s): a Ghost whose last written heartbeat is 17 s old may have beaten since,
// unwritten yet, and is shown online, as Mirage sees it; one 25 s old is stale.
func TestGhostsAllowForThePresenceFlush(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, _, kv := ghostsBucket(ctx, t, "client")
	now := time.Now()
	want := map[string]string{"edge-17s": StatusOnline, "edge-25s": StatusStale}
	for id, age := range map[string]time.Duration{"edge-17s": 17 * time.Second, "edge-25s": 25 * time.Second} {
		data, err := json.Marshal(GhostRecord{GhostID: id, RegisteredMS: now.Add(-time.Hour).UnixMilli(), LastSeenMS: now.Add(-age).UnixMilli()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
	}
	c, err := NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	list, err := c.Ghosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range list {
		if g.Status != want[g.GhostID] {
			t.Errorf("%s: %s, want %s", g.GhostID, g.Status, want[g.GhostID])
		}
	}
	if len(list) != len(want) {
		t.Fatalf("%d Ghosts listed, want %d", len(list), len(want))
	}
}

// 'miragectl ghosts' judges presence by the NATS server's clock, which stamps the
// bucket's stream info, not by the machine it runs on: on a laptop whose clock is 5
// minutes ahead, a Ghost heard from 2 s ago is online (it showed offline), and on one 5
// minutes behind a Ghost silent for 2 minutes is offline (it showed online). How long
// ago each was heard from is by the server's clock too.
func TestGhostsJudgePresenceByTheServersClockNotTheCallers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, _, kv := ghostsBucket(ctx, t, "client")
	now := time.Now() // Mirage's and the server's clock
	want := map[string]string{"edge-2s": StatusOnline, "edge-2m": StatusOffline}
	for id, age := range map[string]time.Duration{"edge-2s": 2 * time.Second, "edge-2m": 2 * time.Minute} {
		data, err := json.Marshal(GhostRecord{GhostID: id, RegisteredMS: now.Add(-time.Hour).UnixMilli(), LastSeenMS: now.Add(-age).UnixMilli(), ClockOffsetMS: 300_000})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
	}
	for _, skew := range []time.Duration{5 * time.Minute, -5 * time.Minute} {
		c, err := NewClient(nc)
		if err != nil {
			t.Fatal(err)
		}
		c.Now = func() time.Time { return time.Now().Add(skew) }
		list, err := c.Ghosts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != len(want) {
			t.Fatalf("%d Ghosts listed, want %d", len(list), len(want))
		}
		for _, g := range list {
			if g.Status != want[g.GhostID] {
				t.Errorf("caller's clock %s off: %s is %s, want %s", skew, g.GhostID, g.Status, want[g.GhostID])
			}
			if g.GhostID == "edge-2s" && (g.SilentFor < time.Second || g.SilentFor > 10*time.Second) {
				t.Errorf("caller's clock %s off: %s silent for %s, want about 2 s", skew, g.GhostID, g.SilentFor)
			}
			if g.ClockOffsetMS != 300_000 {
				t.Errorf("%s: clock_offset_ms %d, want the record's 300000", g.GhostID, g.ClockOffsetMS)
			}
		}
	}
}

// ghostsBucket starts a server with edgectl's assets and returns a connection named
// name, its JetStream and KV edge_ghosts.
func ghostsBucket(ctx context.Context, t *testing.T, name string) (*nats.Conn, jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: name})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, bus.BucketGhosts)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js, kv
}

// A listing of the registry while a record is written again lists it: the server lowers a
// reading consumer's num_pending at once for the old message the write removes (History
// 1), and raises it for the new one later, so the read was said complete before the new
// one, and the Ghost was missing from about one listing in five (the Ghost re-registering
// when a Mirage starts). Each listing here must have both Ghosts.
func TestReadFleetWhileARecordIsRewrittenListsIt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, js, kv := ghostsBucket(ctx, t, "rewrite")
	record := func(id string) []byte {
		data, err := json.Marshal(GhostRecord{GhostID: id, RegisteredMS: 1, LastSeenMS: 1})
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	for _, id := range []string{"ghost-a", "ghost-z"} {
		if _, err := kv.Put(ctx, id, record(id)); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	written := make(chan int)
	go func() {
		n := 0
		defer func() { written <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := kv.Put(ctx, "ghost-a", record("ghost-a")); err != nil {
				t.Errorf("rewriting ghost-a: %v", err)
				return
			}
			n++
		}
	}()
	listings, short := 0, 0
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end) || listings < 20; listings++ {
		recs, err := ReadFleet(ctx, js)
		if err != nil {
			t.Fatalf("listing %d: %v", listings, err)
		}
		if len(recs) != 2 {
			if short++; short <= 3 {
				t.Errorf("listing %d: %+v, want ghost-a and ghost-z", listings, recs)
			}
		}
	}
	close(stop)
	n := <-written
	if short > 0 {
		t.Errorf("%d of %d listings were short", short, listings)
	}
	t.Logf("%d listings, ghost-a written %d times meanwhile", listings, n)
}

// A Ghost that is not enrolled (never, or revoked), whose clock is off, registering again
// and again is rejected with one rate-limited warning, not with a warning about its clock
// at each register: that one is for Ghosts Mirage registers (it logged one per register
// of any id, a flood from a revoked Ghost retrying at every heartbeat tick).
func TestRejectedRegistrationsDoNotWarnOfTheirClock(t *testing.T) {
	var logs bytes.Buffer
	f := newFleet(nil, nil, make(chan struct{}), time.Now, newReplyGuard(false, slog.New(slog.DiscardHandler)), slog.New(slog.NewTextHandler(&logs, nil)))
	f.enrolled = func(string) bool { return false }
	for range 50 {
		data, err := bus.Encode(&bus.Register{Header: bus.NewHeader(bus.TypeRegister, "", time.Now().Add(10*time.Minute)), GhostID: "revoked", Version: "t",
			Labels: map[string]string{}, Seeds: []bus.SeedInfo{}})
		if err != nil {
			t.Fatal(err)
		}
		f.onRegister(&nats.Msg{Subject: "reg.revoked", Data: data})
	}
	if n := strings.Count(logs.String(), "registration rejected"); n != 1 {
		t.Fatalf("%d rejection warnings for 50 registers, want 1:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "clock is far off"); n != 0 {
		t.Fatalf("%d clock warnings for 50 rejected registers, want none:\n%s", n, logs.String())
	}
}
