package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// clusterAssets are the streams behind every edgectl asset (KV and object stores included).
var clusterAssets = []string{bus.StreamCommands, bus.StreamEvents, bus.StreamReports,
	"KV_" + bus.BucketGhosts, "KV_" + bus.BucketIntents, "KV_" + bus.BucketFleet, "OBJ_" + bus.BucketSeeds}

// On a cluster of servers whose JetStream stores are 4 GiB each, the default cap of
// EDGE_EVT at replicas 3 leaves half of each store to the rest (a cluster refuses a cap
// too large with "no suitable peers ..., insufficient storage", not a single server's
// code): every asset is made, EDGE_EVT with 2 GiB.
func TestClusterDefaultEventsCapLeavesHalfTheStore(t *testing.T) {
	cl := testenv.NewCluster(t, 3, testenv.MaxStore(4<<30))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js, err := jetstream.New(cl.Conn("test-admin", 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{Replicas: 3}); err != nil {
		t.Fatalf("provision at replicas 3 on 4 GiB stores: %v", err)
	}
	for _, name := range clusterAssets {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if name == bus.StreamEvents && s.CachedInfo().Config.MaxBytes != 2<<30 {
			t.Errorf("EDGE_EVT max_bytes = %d MiB, want 2048 MiB", s.CachedInfo().Config.MaxBytes>>20)
		}
	}
}

// On a 3-node JetStream cluster, with Mirage at replicas 3 and one Ghost on each node, the
// server leading EDGE_CMD and EDGE_EVT (and serving Mirage) is shut down while intents
// stream in, and later started again on its store: every accepted intent ends satisfied,
// every command and event is stored exactly once, and seed.kv incr counts each intent once
// on each Ghost. (In process a server stops as on SIGTERM; TestClusterRunbookWithRealBinaries
// kills a real one.)
func TestClusterLeaderFailover(t *testing.T) {
	cl := testenv.NewCluster(t, 3)
	env := cl.Env()
	ctx := context.Background()
	admin := cl.Conn("test-admin", 2)
	js, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}

	// Replicas are configuration: an R1 deployment is scaled up by a Mirage at replicas 3,
	// and a count the cluster cannot place is refused with a message that names it.
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{Replicas: 1}); err != nil {
		t.Fatalf("provision at replicas 1: %v", err)
	}
	err = bus.EnsureAssets(ctx, js, bus.AssetConfig{Replicas: 4})
	if !errors.Is(err, bus.ErrReplicas) || !strings.Contains(err.Error(), "4 asked") || !strings.Contains(err.Error(), `cluster "edge"`) {
		t.Fatalf("replicas 4 on 3 servers: %v; want ErrReplicas naming 4 and the cluster", err)
	}
	t.Logf("refused: %v", err)
	m := env.StartMirageOn(cl.Conn("mirage", 0), mirage.Config{Replicas: 3})
	for _, name := range clusterAssets {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.Replicas != 3 {
			t.Fatalf("%s has %d replicas after Mirage at replicas 3", name, info.Config.Replicas)
		}
	}

	ghosts := make([]*fixture, 3)
	for i := range ghosts {
		id := "edge-" + cl.NodeName(i)
		ghosts[i] = newFixture(t, env, id)
		ghosts[i].start(testenv.Via(cl.Conn("ghost "+id, i, bus.GhostRequests())))
		testenv.Eventually(t, 15*time.Second, id+" to register", func() bool { _, ok := m.Fleet().Get(id); return ok })
	}
	client, err := mirage.NewClient(cl.Conn("client", 1))
	if err != nil {
		t.Fatal(err)
	}

	// The worst case: the server that leads EDGE_CMD and EDGE_EVT is also Mirage's.
	victim := 0
	colocateLeader(t, cl, admin, js, bus.StreamCommands, victim)
	colocateLeader(t, cl, admin, js, bus.StreamEvents, victim)

	is := newIssuer(t, client, ghosts)
	is.start(150 * time.Millisecond)
	time.Sleep(1500 * time.Millisecond)
	killed := time.Now()
	t.Logf("killing %s, leader of %s and %s", cl.NodeName(victim), bus.StreamCommands, bus.StreamEvents)
	cl.Stop(victim)
	testenv.Eventually(t, 30*time.Second, "a new leader for "+bus.StreamCommands, func() bool {
		return leaderOf(js, bus.StreamCommands) != "" && leaderOf(js, bus.StreamCommands) != cl.NodeName(victim)
	})
	t.Logf("new %s leader after %s", bus.StreamCommands, time.Since(killed).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // intents keep coming on two servers
	cl.Start(victim)
	t.Logf("restarted %s", cl.NodeName(victim))
	time.Sleep(2 * time.Second)
	accepted := is.stop()
	if len(accepted) < 20 {
		t.Fatalf("only %d intents accepted", len(accepted))
	}

	incrs := map[string]int{}
	for _, a := range accepted {
		r := waitReportOrExplain(t, js, client, a.issue.IntentID, 60*time.Second)
		if r.Phase != bus.PhaseSatisfied {
			t.Errorf("intent %s (%s %s on %s): %s %+v", a.issue.IntentID, a.issue.Objective.SeedSelector, a.issue.Objective.Operation, a.issue.TargetScope, r.Summary, r.Results)
			continue
		}
		if a.issue.Objective.Operation == "incr" {
			incrs[a.issue.TargetScope]++
		}
	}
	// Every incr counted once, every command and event stored exactly once.
	checkRanOnce(t, env, js, ghosts, incrs, accepted, nil)
	testenv.Eventually(t, 30*time.Second, cl.NodeName(victim)+" to be a current replica of every asset", func() bool {
		for _, name := range clusterAssets {
			s, err := js.Stream(ctx, name)
			if err != nil {
				return false
			}
			info, err := s.Info(ctx)
			if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
				return false
			}
			for _, p := range info.Cluster.Replicas {
				if !p.Current || p.Offline || p.Lag != 0 {
					return false
				}
			}
		}
		return true
	})
	t.Logf("%d intents accepted; satisfied incr per Ghost: %v", len(accepted), incrs)
}

// checkRanOnce fails the test unless each Ghost's counter equals the satisfied incr
// intents it ran (incrs) and every command of the accepted intents is stored once in
// EDGE_CMD with one event in EDGE_EVT; explain, when not nil, is called with each
// accepted intent whose command is not.
func checkRanOnce(t *testing.T, env *testenv.Env, js jetstream.JetStream, ghosts []*fixture, incrs map[string]int, accepted []issued, explain func(int)) {
	t.Helper()
	for _, g := range ghosts {
		if got, want := g.counter("c"), fmt.Sprint(incrs[g.id]); got != want && !(got == "" && want == "0") {
			t.Errorf("%s counter %q after %s satisfied incr intents: an incr ran twice or was lost", g.id, got, want)
		}
	}
	commands := storedIDs(t, js, bus.StreamCommands)
	events := map[string]int{}
	for _, ev := range env.Events(js) {
		events[ev.CommandID]++
	}
	for k, a := range accepted {
		for i := 0; i < a.targets; i++ {
			id := mirage.CommandID(a.issue.IntentID, i)
			if commands[id] != 1 || events[id] != 1 {
				t.Errorf("command %s: stored %d times, %d events; want 1 and 1", id, commands[id], events[id])
				if explain != nil {
					explain(k)
				}
			}
		}
	}
}

// leaderOf is the server_name leading a stream, or "" while there is none.
func leaderOf(js jetstream.JetStream, name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		return ""
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		return ""
	}
	return info.Cluster.Leader
}

// colocateLeader moves the leadership of stream to node (a step-down with a preferred
// server), so that killing that node takes two leaders at once.
func colocateLeader(t *testing.T, cl *testenv.Cluster, nc *nats.Conn, js jetstream.JetStream, stream string, node int) {
	t.Helper()
	want := cl.NodeName(node)
	if leaderOf(js, stream) == want {
		return
	}
	req, _ := json.Marshal(map[string]any{"placement": map[string]string{"preferred": want}})
	msg, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, req, 10*time.Second)
	if err != nil {
		t.Fatalf("step down %s: %v", stream, err)
	}
	var resp struct {
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil || resp.Error != nil {
		t.Fatalf("step down %s: %s", stream, msg.Data)
	}
	testenv.Eventually(t, 15*time.Second, want+" to lead "+stream, func() bool { return leaderOf(js, stream) == want })
}

// storedIDs counts the messages of a stream by Nats-Msg-Id.
func storedIDs(t *testing.T, js jetstream.JetStream, stream string) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	// A fetch can come back empty while the stream's replicas settle after a failover (a
	// leader election, a restarted server catching up): ask again until every message
	// counted at the start is read, and fail, saying so, rather than count the rest as
	// missing.
	for remaining := info.NumPending; remaining > 0; {
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d messages of %s within 20 s", info.NumPending-remaining, info.NumPending, stream)
		}
		batch, err := cons.Fetch(int(min(remaining, 500)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Logf("fetch from %s: %v; asking again", stream, err)
			continue
		}
		for m := range batch.Messages() {
			remaining--
			out[m.Headers().Get(bus.HeaderMsgID)]++
		}
	}
	return out
}

// issuer sends a stream of intents: seed.kv incr to each Ghost in turn, and now and then
// a seed.flow sleep on all of them. An issue that gets no answer (Mirage's store is
// electing a leader) is sent again with the same intent_id.
type issuer struct {
	t        *testing.T
	client   *mirage.Client
	ghosts   []*fixture
	done     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	accepted []issued
}

type issued struct {
	issue   *bus.Issue
	targets int
}

func newIssuer(t *testing.T, c *mirage.Client, ghosts []*fixture) *issuer {
	return &issuer{t: t, client: c, ghosts: ghosts, done: make(chan struct{})}
}

func (is *issuer) start(every time.Duration) {
	is.wg.Add(1)
	go func() {
		defer is.wg.Done()
		for n := 0; ; n++ {
			select {
			case <-is.done:
				return
			case <-time.After(every):
			}
			iss, targets := is.next(n)
			is.wg.Add(1)
			go func() { // one slow answer does not hold the stream up
				defer is.wg.Done()
				if is.send(iss) {
					is.mu.Lock()
					is.accepted = append(is.accepted, issued{iss, targets})
					is.mu.Unlock()
				}
			}()
		}
	}()
}

func (is *issuer) next(n int) (*bus.Issue, int) {
	if n%5 == 4 {
		ids := make([]string, len(is.ghosts))
		for i, g := range is.ghosts {
			ids[i] = g.id
		}
		return testenv.NewIssue(strings.Join(ids, ","), "seed.flow", "sleep", map[string]string{"ms": "200"}, time.Minute), len(ids)
	}
	g := is.ghosts[n%len(is.ghosts)]
	return testenv.NewIssue(g.id, "seed.kv", "incr", map[string]string{"key": "c"}, time.Minute), 1
}

// send issues until Mirage answers, for at most 45 s, as a script retrying 'miragectl
// issue' would. "exists already" means an earlier attempt was recorded and its answer
// lost, so the intent is accepted too.
func (is *issuer) send(iss *bus.Issue) bool {
	deadline := time.Now().Add(45 * time.Second)
	for attempt := 1; time.Now().Before(deadline); attempt++ {
		_, err := is.client.Issue(context.Background(), iss)
		if err == nil || strings.Contains(err.Error(), "exists already") {
			if attempt > 1 {
				is.t.Logf("issue %s accepted at attempt %d (%v)", iss.IntentID, attempt, err)
			}
			return true
		}
		is.t.Logf("issue %s, attempt %d: %v", iss.IntentID, attempt, err)
		time.Sleep(250 * time.Millisecond)
	}
	is.t.Errorf("issue %s not accepted within 45 s", iss.IntentID)
	return false
}

// stop ends the stream, waits for the issues in flight, and returns the accepted intents.
func (is *issuer) stop() []issued {
	close(is.done)
	is.wg.Wait()
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.accepted
}

// waitReportOrExplain is waitReport that, when no terminal report comes, logs what the
// store holds of the intent (its record, its reports, its commands and their events) and
// the consumers reading its reports, so that a failure says where the intent stopped: in
// the store, or in the watch that did not see it.
func waitReportOrExplain(t *testing.T, js jetstream.JetStream, c *mirage.Client, intentID string, within time.Duration) *bus.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	r, err := c.WaitTerminal(ctx, intentID)
	if err == nil {
		return r
	}
	t.Errorf("no terminal report for %s within %s: %v", intentID, within, err)
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if rec, err := mirage.ReadIntent(ctx, js, intentID); err != nil {
		t.Logf("intent record: %v", err)
	} else {
		t.Logf("intent record: targets %v, created %s, deadline %s", rec.Targets,
			time.UnixMilli(rec.CreatedMS).Format(time.StampMilli), time.UnixMilli(rec.DeadlineMS).Format(time.StampMilli))
	}
	if r, err := c.LatestReport(ctx, intentID); err != nil {
		t.Logf("newest report: %v", err)
	} else {
		t.Logf("newest report (or pending): phase %s, summary %+v, results %+v", r.Phase, r.Summary, r.Results)
	}
	for _, stream := range []string{bus.StreamCommands, bus.StreamReports, bus.StreamEvents} {
		for _, sm := range storedMentioning(t, js, stream, intentID) {
			t.Logf("%s seq %d at %s on %s: %s", stream, sm.Sequence, sm.Time.Format(time.StampMilli), sm.Subject, sm.Data)
		}
	}
	if s, err := js.Stream(ctx, bus.StreamReports); err == nil {
		if info, err := s.Info(ctx); err == nil && info.Cluster != nil {
			t.Logf("%s leader %s, state %+v", bus.StreamReports, info.Cluster.Leader, info.State)
			for _, p := range info.Cluster.Replicas {
				t.Logf("replica %+v", *p)
			}
		}
		for ci := range s.ListConsumers(ctx).Info() {
			if ci.Config.FilterSubject == "report."+intentID && ci.Cluster != nil {
				t.Logf("consumer %s on %s: delivered %+v, pending %d, waiting %d", ci.Name, ci.Cluster.Leader, ci.Delivered, ci.NumPending, ci.NumWaiting)
			}
		}
	}
	t.FailNow()
	return nil
}

// storedMentioning lists the messages of a stream whose subject or body names id.
func storedMentioning(t *testing.T, js jetstream.JetStream, stream, id string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Logf("%s: %v", stream, err)
		return nil
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Logf("%s: %v", stream, err)
		return nil
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && ctx.Err() == nil; seq++ {
		sm, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if strings.Contains(sm.Subject, id) || strings.Contains(string(sm.Data), id) {
			out = append(out, sm)
		}
	}
	return out
}
