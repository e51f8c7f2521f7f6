package test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// The attack: nats-server does not check a request's reply subject against the
// requester's permissions, and JetStream answers there. A Ghost sent the API calls it was
// allowed (direct get of its own last command, stream info of OBJ_edge_seeds) with a
// stored subject as the reply: the answer was stored there as a KV value or a stream
// message. Ghosts may no longer make any JetStream API call
// (TestGhostCannotAimJetStreamAnswersAtTheAPI, TestSeedProxyGhostHasNoSeedStoreAPI), and
// the answers to what they may publish land in their own account
// (TestEventPublishAckAimedAnywhereChangesNothing); the junk they stored before is still
// stored here, sent by the operator (junkFrom), as an external server configured with one
// account, or an operator's mistake, could still store it.
var (
	junkStreamInfo = "$JS.API.STREAM.INFO.OBJ_" + bus.BucketSeeds
	junkLastCmd    = func(ghostID string) string {
		return "$JS.API.DIRECT.GET." + bus.StreamCommands + "." + subjects.Command(ghostID)
	}
)

// restartAuthMirage closes f's Mirage and starts another with the same identity and
// configuration, as a restart of 'miragectl up --auth' would.
func restartAuthMirage(t *testing.T, f *authFleet) {
	t.Helper()
	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}
	mnc := f.env.ConnWith("mirage again", f.mirage.NATSOption(), nats.CustomInboxPrefix(bus.MirageInbox()))
	f.m = f.env.StartMirageOn(mnc, mirage.Config{
		Identity: f.mirage, RequireSignedEvents: true,
		OnFleetChange: func(enrolled map[string]string) error {
			return f.env.Server.SetUsers(natsd.Users(f.operator.PublicKey(), f.mirage.PublicKey(), enrolled))
		},
	})
}

// waitLastCommand waits until EDGE_CMD's last message on cmd.<ghostID> is commandID.
func waitLastCommand(t *testing.T, js jetstream.JetStream, ghostID, commandID string) {
	t.Helper()
	stream, err := js.Stream(context.Background(), bus.StreamCommands)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "command "+commandID+" stored", func() bool {
		m, err := stream.GetLastMsgForSubject(context.Background(), subjects.Command(ghostID))
		return err == nil && m.Header.Get(bus.HeaderMsgID) == commandID
	})
}

// A Ghost stores JetStream API answers in place of another Ghost's enrollment, the
// operator's role key, a registry record, intent records and reports; Mirage restarts
// all the same, the other Ghost keeps its enrollment (from the key's history) and works,
// the role key still guards enrollment, intents recover, and the reports read as before.
func TestJunkStoredByAGhostDoesNotStopMirage(t *testing.T) {
	f := newAuthFleet(t, "ghost-c", "ghost-o")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := f.m.RecordOperatorKey(ctx, f.operator.PublicKey()); err != nil {
		t.Fatal(err)
	}
	f.startGhost("ghost-c")
	f.startGhost("ghost-o")
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}

	// Ended intents: A (its reports get junk), C (its record and reports get junk).
	put := func(k string) *bus.Issue {
		return testenv.NewIssue("ghost-c", "seed.kv", "put", map[string]string{"key": k, "value": "v"}, 10*time.Second)
	}
	a, c := put("a"), put("c")
	for _, is := range []*bus.Issue{a, c} {
		if r := f.env.Run(f.client, is); r.Phase != bus.PhaseSatisfied {
			t.Fatalf("intent before the attack: %s", r.Summary)
		}
	}
	// Open intents when Mirage stops: B (its report subject gets junk), E (its record is
	// replaced by a copy of its own command, which names it).
	sleep := func() *bus.Issue {
		return testenv.NewIssue("ghost-c", "seed.flow", "sleep", map[string]string{"ms": "1500"}, 20*time.Second)
	}
	b, e := sleep(), sleep()
	for _, is := range []*bus.Issue{b, e} {
		if _, err := f.client.Issue(ctx, is); err != nil {
			t.Fatal(err)
		}
		waitLastCommand(t, js, "ghost-c", mirage.CommandID(is.IntentID, 0))
	}
	reportsOfA := countReports(t, js, a.IntentID)
	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}

	rogue := f.env.ConnWith("ghost-c rogue", f.keys["ghost-c"].NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox("ghost-c")))
	reports, err := js.Stream(ctx, bus.StreamReports)
	if err != nil {
		t.Fatal(err)
	}
	const info, command = "io.nats.jetstream.api.v1.stream_info_response", "command"
	// inject has the answer to api stored on target, and checks that it landed: the
	// target's latest value (a KV key) or last message (a report subject) is the junk.
	// One at a time: JetStream may answer requests out of order.
	inject := func(api, bucket, key, want string) {
		t.Helper()
		target := subjects.Report(key)
		if bucket != "" {
			target = "$KV." + bucket + "." + key
		}
		if err := junkFrom(api, rogue, f.op).PublishRequest(api, target, nil); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 5*time.Second, "junk stored on "+target, func() bool {
			var data []byte
			if bucket == "" {
				m, err := reports.GetLastMsgForSubject(ctx, target)
				if err != nil {
					return false
				}
				data = m.Data
			} else {
				kv, err := js.KeyValue(ctx, bucket)
				if err != nil {
					return false
				}
				e, err := kv.Get(ctx, key)
				if err != nil {
					return false
				}
				data = e.Value()
			}
			return strings.HasPrefix(string(data), `{"type":"`+want+`"`)
		})
	}
	inject(junkStreamInfo, bus.BucketFleet, "ghost-o", info)
	inject(junkStreamInfo, bus.BucketFleet, mirage.FleetKeyOperator, info)
	inject(junkStreamInfo, bus.BucketFleet, "ghost-n", info) // a key with no valid value at all
	inject(junkStreamInfo, bus.BucketGhosts, "ghost-o", info)
	inject(junkStreamInfo, bus.BucketIntents, c.IntentID, info)
	for _, id := range []string{a.IntentID, b.IntentID, c.IntentID} {
		inject(junkStreamInfo, "", id, info)
	}
	// Its last command (E's, naming intent E and ghost-c) onto E's record and onto
	// ghost-o's enrollment.
	inject(junkLastCmd("ghost-c"), bus.BucketIntents, e.IntentID, command)
	inject(junkLastCmd("ghost-c"), bus.BucketFleet, "ghost-o", command)
	reportsOfA++ // the junk

	restartAuthMirage(t, f)

	// Enrollments: ghost-o's and the operator's from their history, for Mirage and for
	// 'fleet auth-config' alike.
	list, roles, err := mirage.ReadEnrollments(ctx, js, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, en := range list {
		got[en.GhostID] = en.PublicKey
	}
	if got["ghost-o"] != f.keys["ghost-o"].PublicKey() || got["ghost-c"] != f.keys["ghost-c"].PublicKey() || len(got) != 2 {
		t.Errorf("enrollments after the junk: %v", got)
	}
	if roles[mirage.FleetKeyOperator] != f.operator.PublicKey() || roles[mirage.FleetKeyMirage] != f.mirage.PublicKey() {
		t.Errorf("role keys after the junk: %v", roles)
	}
	if err := f.m.Enroll(ctx, "ghost-x", f.operator.PublicKey()); err == nil {
		t.Error("the operator's key was enrolled as a ghost: the junk hid the role key")
	}
	msg, err := f.op.Request(subjects.FleetList, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var fl mirage.FleetReply
	if err := json.Unmarshal(msg.Data, &fl); err != nil || len(fl.Fleet) != 2 {
		t.Errorf("fleet ls after the junk: %s", msg.Data)
	}
	// ghost-o is still enrolled and connected: an intent to it works.
	if r := f.env.Run(f.client, testenv.NewIssue("ghost-o", "seed.kv", "put", map[string]string{"key": "k", "value": "v"}, 10*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("intent to ghost-o after the junk: %s %+v", r.Summary, r.Results)
	}

	// B was recovered and ends satisfied; its junk report is passed over.
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if r, err := f.client.WaitTerminal(wctx, b.IntentID); err != nil || r.Phase != bus.PhaseSatisfied {
		t.Fatalf("open intent B after the restart: %v %+v", err, r)
	}
	// E's record is a copy of its command: not an intent record, so E is not taken up
	// (rather than taken up with no targets and called satisfied).
	time.Sleep(500 * time.Millisecond)
	if r, err := f.client.LatestReport(ctx, e.IntentID); err == nil && r.Phase == bus.PhaseSatisfied && r.Counts.Targets == 0 {
		t.Errorf("intent E, whose record is junk, was reported satisfied with no targets: %+v", r)
	}
	// A and C: the latest valid report, though the last message is junk; A stayed ended
	// (no report published again).
	for _, id := range []string{a.IntentID, c.IntentID, b.IntentID} {
		r, err := f.client.LatestReport(ctx, id)
		if err != nil || r.Phase != bus.PhaseSatisfied || r.IntentID != id {
			t.Errorf("report %s after the junk: %v %+v", id, err, r)
		}
	}
	if n := countReports(t, js, a.IntentID); n != reportsOfA {
		t.Errorf("intent A, ended, has %d report messages after the restart, want %d: it was taken up again", n, reportsOfA)
	}
	// report --watch of A: the terminal report at once, not a wait behind the junk.
	fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
	defer fcancel()
	var followed *bus.Report
	_ = f.client.FollowReports(fctx, a.IntentID, func(r *bus.Report) bool { followed = r; return !bus.Terminal(r.Phase) })
	if followed == nil || followed.Phase != bus.PhaseSatisfied {
		t.Errorf("following A's reports behind junk: %+v", followed)
	}

	// IssueAndWait: junk arrives on the report subject before the terminal report.
	d := testenv.NewIssue("ghost-c", "seed.flow", "sleep", map[string]string{"ms": "300"}, 10*time.Second)
	go func() {
		time.Sleep(100 * time.Millisecond)
		_ = junkFrom(junkStreamInfo, rogue, f.op).PublishRequest(junkStreamInfo, subjects.Report(d.IntentID), nil)
	}()
	_, r, err := f.client.IssueAndWait(wctx, d)
	if err != nil || r.Phase != bus.PhaseSatisfied || r.IntentID != d.IntentID {
		t.Fatalf("issue and wait with junk on its report subject: %v %+v", err, r)
	}
}

// junkFrom is the connection that sends api: the operator's for the JetStream API calls
// Ghosts may no longer make, the Ghost's otherwise.
func junkFrom(api string, ghost, operator *nats.Conn) *nats.Conn {
	if strings.HasPrefix(api, "$JS.API.") {
		return operator
	}
	return ghost
}

// countReports counts the messages stored on report.<intentID>.
func countReports(t *testing.T, js jetstream.JetStream, intentID string) int {
	t.Helper()
	_, n := reportConsumer(t, js, intentID)
	return int(n)
}

// A record in edge_intents whose times Mirage never writes (a creation time past year
// 9999, a deadline more than 24 h after the creation or before it) is junk: it is not
// recovered. One created at the largest int64 made recover's replay ask JetStream for a
// start time that does not encode, and 'miragectl up' failed to start for as long as the
// record stayed.
func TestIntentRecordWithImpossibleTimesIsNotRecovered(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	env.StartGhost("local")
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	kv, err := env.JetStream().KeyValue(ctx, bus.BucketIntents)
	if err != nil {
		t.Fatal(err)
	}
	put := func(id string, created, deadline int64) {
		t.Helper()
		is := testenv.NewIssue("local", "seed.flow", "status", nil, 5*time.Second)
		is.IntentID = id
		rec := mirage.IntentRecord{IntentID: id, Issue: *is, Targets: []string{"local"}, MaxErrors: -1,
			CreatedMS: created, DeadlineMS: deadline, DeliverByMS: deadline, Phase: bus.PhasePending}
		data, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
	}
	// The only open intent: its creation is where recover's replay starts.
	put("int_created_max", math.MaxInt64, math.MaxInt64)
	m = env.StartMirageOn(env.Conn("mirage again"), mirage.Config{}) // fails the test if it does not start
	now := time.Now().UnixMilli()
	put("int_deadline_max", now, math.MaxInt64)
	put("int_deadline_past", now, now-1)
	for _, id := range []string{"int_created_max", "int_deadline_max", "int_deadline_past"} {
		if _, err := m.Intent(ctx, id); !errors.Is(err, mirage.ErrBadIntentRecord) {
			t.Errorf("record %s: %v, want ErrBadIntentRecord", id, err)
		}
	}
	if r := env.Run(env.Client(), testenv.NewIssue("local", "seed.flow", "status", nil, 5*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("an intent after the restart: %s", r.Summary)
	}
}
