package test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

func statusOf(t *testing.T, c *mirage.Client, id string) string {
	t.Helper()
	list, err := c.Ghosts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range list {
		if g.GhostID == id {
			return g.Status
		}
	}
	return "absent"
}

// Presence follows heartbeats: a Ghost that goes silent (cut off, or killed without a
// chance to say it leaves) turns stale then offline, and online again when it comes back;
// a restarted Mirage forgets nothing.
func TestPresenceFollowsHeartbeats(t *testing.T) {
	env := testenv.New(t)
	first := env.StartMirage(mirage.Config{PresenceFlush: 50 * time.Millisecond})
	fast := testenv.Tune(func(c *ghost.Config) { c.HeartbeatInterval = 50 * time.Millisecond })
	ghostConn := env.ConnWith("ghost edge-p", bus.GhostRequests())
	g := env.StartGhost("edge-p", fast, testenv.Via(ghostConn))
	client := env.Client()
	// Thresholds of 20 and 50 heartbeats: a Ghost beating every 50 ms must not read stale
	// because a heartbeat or a flush was held up a few hundred ms on two busy cores.
	client.Presence = mirage.Presence{StaleAfter: time.Second, OfflineAfter: 2500 * time.Millisecond, Flush: 50 * time.Millisecond}
	testenv.Eventually(t, 10*time.Second, "online", func() bool { return statusOf(t, client, "edge-p") == mirage.StatusOnline })
	// Past the stale threshold since it registered, it stays online on its heartbeats
	// alone (kept in the presence shards of edge_ghosts, not in its record).
	time.Sleep(1200 * time.Millisecond)
	for range 5 {
		if st := statusOf(t, client, "edge-p"); st != mirage.StatusOnline {
			t.Fatalf("a Ghost beating every 50 ms reads %s", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ghostConn.Close() // silent: no leaving heartbeat can be sent
	_ = g.Close()
	testenv.Eventually(t, 10*time.Second, "stale", func() bool { return statusOf(t, client, "edge-p") == mirage.StatusStale })
	testenv.Eventually(t, 10*time.Second, "offline", func() bool { return statusOf(t, client, "edge-p") == mirage.StatusOffline })
	// A restarted Mirage: the registry is in KV.
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	env.StartMirageOn(env.Conn("mirage 2"), mirage.Config{PresenceFlush: 50 * time.Millisecond})
	env.StartGhost("edge-p", fast)
	testenv.Eventually(t, 10*time.Second, "online again", func() bool { return statusOf(t, client, "edge-p") == mirage.StatusOnline })
}

// A Ghost that stops (Close, as ghostctl run on SIGTERM) says it leaves: Mirage shows it
// offline at once, in its registry and in edge_ghosts ('miragectl ghosts'), with the
// default thresholds (60 s of silence) and presence flush (5 s), and names it offline in
// the answer to the next issue. Its command waits in EDGE_CMD all the same and runs when
// it comes back, online again.
func TestGhostThatStopsIsOfflineAtOnce(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	g := env.StartGhost("edge-l")
	env.StartGhost("edge-stay")
	client := env.Client()
	testenv.Eventually(t, 10*time.Second, "online", func() bool { return statusOf(t, client, "edge-l") == mirage.StatusOnline })
	stopped := time.Now()
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	// Under its shutdown grace (5 s), and offline before the next presence flush (5 s):
	// neither is waited for.
	if d := time.Since(stopped); d > 4*time.Second {
		t.Fatalf("Close took %s", d)
	}
	testenv.Eventually(t, 4*time.Second, "offline in 'miragectl ghosts'", func() bool { return statusOf(t, client, "edge-l") == mirage.StatusOffline })
	if r, _ := m.Fleet().Get("edge-l"); r.Status(time.Now()) != mirage.StatusOffline {
		t.Fatalf("Mirage's registry shows edge-l %s", r.Status(time.Now()))
	}
	if st := statusOf(t, client, "edge-stay"); st != mirage.StatusOnline {
		t.Fatalf("the Ghost that stays reads %s", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	is := testenv.NewIssue("edge-l", "seed.flow", "status", nil, 30*time.Second)
	reply, err := client.Issue(ctx, is)
	if err != nil {
		t.Fatal(err)
	}
	if len(reply.Offline) != 1 || reply.Offline[0] != "edge-l" {
		t.Fatalf("answer names offline %v, want [edge-l]", reply.Offline)
	}
	// "all" leaves it out, as any offline Ghost.
	all, err := client.Issue(ctx, testenv.NewIssue("all", "seed.flow", "status", nil, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range all.Targets {
		if id == "edge-l" {
			t.Fatalf("all targets %v: the stopped Ghost is among them", all.Targets)
		}
	}
	// Back: online again, and the command that waited for it runs.
	env.StartGhost("edge-l")
	r, err := client.WaitTerminal(ctx, is.IntentID)
	if err != nil {
		t.Fatal(err)
	}
	if r.Phase != bus.PhaseSatisfied {
		t.Fatalf("the command that waited for the stopped Ghost: %s", r.Summary)
	}
	testenv.Eventually(t, 10*time.Second, "online again", func() bool { return statusOf(t, client, "edge-l") == mirage.StatusOnline })
}

// A Ghost that said it leaves and comes back by heartbeats alone (its connection was
// kept, a new instance that did not register) is online again.
func TestLeftGhostHeardFromAgainIsOnline(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{PresenceFlush: 50 * time.Millisecond})
	env.StartGhost("edge-b")
	client := env.Client()
	testenv.Eventually(t, 10*time.Second, "online", func() bool { return statusOf(t, client, "edge-b") == mirage.StatusOnline })
	nc := env.Conn("edge-b beats")
	beat := func(leaving bool) {
		t.Helper()
		data, err := bus.Encode(&bus.Heartbeat{Header: bus.NewHeader(bus.TypeHeartbeat, "", time.Now()), GhostID: "edge-b", Seq: 1000, Leaving: leaving})
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(subjects.Heartbeat("edge-b"), data); err != nil {
			t.Fatal(err)
		}
	}
	beat(true)
	testenv.Eventually(t, 10*time.Second, "offline", func() bool { return statusOf(t, client, "edge-b") == mirage.StatusOffline })
	beat(false)
	testenv.Eventually(t, 10*time.Second, "online in the registry", func() bool {
		r, _ := m.Fleet().Get("edge-b")
		return r.Status(time.Now()) == mirage.StatusOnline
	})
	testenv.Eventually(t, 10*time.Second, "online in edge_ghosts", func() bool { return statusOf(t, client, "edge-b") == mirage.StatusOnline })
}

// A headless Ghost serves without registering; 'attach' brings it into the registry.
func TestHeadlessGhostAttachedLater(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	env.StartGhost("edge-h", testenv.Policy(ghost.PolicyHeadless))
	client := env.Client()
	time.Sleep(200 * time.Millisecond)
	if _, ok := m.Fleet().Get("edge-h"); ok {
		t.Fatal("a headless ghost registered by itself")
	}
	// It serves anyway: an intent to an unregistered id reaches it.
	if r := env.Run(client, testenv.NewIssue("edge-h", "seed.flow", "status", nil, 5*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("headless ghost: %s", r.Summary)
	}
	nc := env.Conn("operator")
	data, _ := json.Marshal(mirage.AttachRequest{GhostID: "edge-h"})
	msg, err := nc.Request(subjects.Attach, data, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var reply struct{ Status, Reason string }
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Status != "accepted" {
		t.Fatalf("attach: %s %v", msg.Data, err)
	}
	testenv.Eventually(t, 10*time.Second, "edge-h in the registry", func() bool { _, ok := m.Fleet().Get("edge-h"); return ok })
	// Attaching a Ghost that is not running says so.
	data, _ = json.Marshal(mirage.AttachRequest{GhostID: "edge-nobody"})
	msg, err = nc.Request(subjects.Attach, data, 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Status != "unreachable" {
		t.Fatalf("attach of an absent ghost: %s", msg.Data)
	}
}

// An attach that a Ghost answers slowly (its registration waits on a busy Mirage) is
// relayed, not reported unreachable while the Ghost is still answering: here a Ghost
// answers after 6 s, longer than Mirage used to wait.
func TestSlowAttachAnswerIsRelayed(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	slow := env.Conn("slow ghost")
	sub, err := slow.Subscribe(subjects.AttachGhost("edge-slow"), func(msg *nats.Msg) {
		time.Sleep(6 * time.Second)
		_ = msg.Respond([]byte(`{"ghost_id":"edge-slow","status":"accepted"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := slow.Flush(); err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(mirage.AttachRequest{GhostID: "edge-slow"})
	msg, err := env.Conn("operator").Request(subjects.Attach, data, bus.AttachClientWait)
	if err != nil {
		t.Fatal(err)
	}
	var reply struct{ Status, Reason string }
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Status != "accepted" {
		t.Fatalf("slow attach: %s %v", msg.Data, err)
	}
}

// Attach requests are relayed side by side: one whose Ghost never answers (it refuses the
// request, or is wedged) does not hold the next one past its client's wait.
func TestAttachOfASilentGhostHoldsNoOtherAttach(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	silent := env.Conn("silent ghost")
	sub, err := silent.Subscribe(subjects.AttachGhost("edge-silent"), func(*nats.Msg) {}) // never answers
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := silent.Flush(); err != nil {
		t.Fatal(err)
	}
	env.StartGhost("edge-h2", testenv.Policy(ghost.PolicyHeadless))
	op := env.Conn("operator")
	data, _ := json.Marshal(mirage.AttachRequest{GhostID: "edge-silent"})
	if err := op.PublishRequest(subjects.Attach, nats.NewInbox(), data); err != nil { // answered, if ever, nowhere
		t.Fatal(err)
	}
	if err := op.Flush(); err != nil {
		t.Fatal(err)
	}
	data, _ = json.Marshal(mirage.AttachRequest{GhostID: "edge-h2"})
	msg, err := op.Request(subjects.Attach, data, 5*time.Second)
	if err != nil {
		t.Fatalf("attach of a healthy Ghost behind a silent one: %v", err)
	}
	var reply struct{ Status, Reason string }
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Status != "accepted" {
		t.Fatalf("attach: %s %v", msg.Data, err)
	}
	if _, ok := m.Fleet().Get("edge-h2"); !ok {
		t.Fatal("edge-h2 not registered after its attach")
	}
}
