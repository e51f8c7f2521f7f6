package test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// A second Mirage on a deployment another one serves refuses to start, naming the one that
// serves; the first keeps every event of its intents, and once it has stopped a new Mirage
// starts.
func TestSecondMirageRefusesToStart(t *testing.T) {
	env := testenv.New(t)
	first := env.StartMirage(mirage.Config{})
	env.StartGhost("edge-one")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	second, err := mirage.New(ctx, env.Conn("mirage 2"), mirage.Config{}, env.Log)
	if err != nil {
		t.Fatal(err)
	}
	err = second.Start(ctx)
	_ = second.Close()
	var clash *mirage.AnotherMirageError
	if !errors.As(err, &clash) || !errors.Is(err, mirage.ErrAnotherMirage) {
		t.Fatalf("second Mirage started: %v", err)
	}
	if clash.StoodDown || clash.Other.InstanceID != first.Instance().InstanceID || clash.Other.Phase != bus.InstanceRunning {
		t.Fatalf("the refusal names %+v, want the running first Mirage %+v", clash.Other, first.Instance())
	}
	if !strings.Contains(err.Error(), first.Instance().InstanceID) || !strings.Contains(err.Error(), "run one Mirage per deployment") {
		t.Fatalf("refusal reads %q", err)
	}
	client := env.Client()
	keepsServing(t, env, client, first, "edge-one", "the first Mirage after a refused second")
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	third := env.StartMirageOn(env.Conn("mirage 3"), mirage.Config{})
	if r := env.Run(client, testenv.NewIssue("edge-one", "seed.flow", "status", nil, 10*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("a Mirage started after the first stopped: %s", r.Summary)
	}
	_ = third
}

// Two Mirages that both serve (one was cut off from NATS while the other started) find each
// other once the link is back: the one started earlier stands down, the other keeps serving.
func TestMirageCutOffWhileAnotherStartedStandsDown(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	proxy := testenv.NewProxy(t, env.Server.Addr().String())
	fast := mirage.Config{ProbeEvery: 100 * time.Millisecond}
	older := env.StartMirageOn(env.URLConn("mirage older", proxy.URL()), fast)
	env.StartGhost("edge-two")
	proxy.Cut()
	// Cut off, the older one's subscriptions are gone from the server: the newer starts.
	var newer *mirage.Mirage
	testenv.Eventually(t, 10*time.Second, "a second Mirage to start while the first is cut off", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m, err := mirage.New(ctx, env.Conn("mirage newer"), fast, env.Log)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Start(ctx); err != nil {
			_ = m.Close()
			if errors.Is(err, mirage.ErrAnotherMirage) {
				return false // the server had not yet dropped the older one's connection
			}
			t.Fatal(err)
		}
		newer = m
		return true
	})
	t.Cleanup(func() { _ = newer.Close() })
	proxy.Restore()
	select {
	case <-older.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the older Mirage did not stand down once it could reach NATS again")
	}
	var clash *mirage.AnotherMirageError
	if err := older.Err(); !errors.As(err, &clash) || !clash.StoodDown || clash.Other.InstanceID != newer.Instance().InstanceID {
		t.Fatalf("older Mirage's error: %v, want it stood down for %s", err, newer.Instance().InstanceID)
	}
	keepsServing(t, env, env.Client(), newer, "edge-two", "the newer Mirage after the older stood down")
}

// keepsServing runs five intents on ghostID, each satisfied, and checks that m, the Mirage
// that serves them, has not stood down.
func keepsServing(t *testing.T, env *testenv.Env, client *mirage.Client, m *mirage.Mirage, ghostID, what string) {
	t.Helper()
	for range 5 {
		if r := env.Run(client, testenv.NewIssue(ghostID, "seed.flow", "status", nil, 10*time.Second)); r.Phase != bus.PhaseSatisfied {
			t.Fatalf("%s: %s", what, r.Summary)
		}
	}
	select {
	case <-m.Done():
		t.Fatalf("%s: it stood down: %v", what, m.Err())
	default:
	}
}

// The processes: a 'miragectl up' stopped (SIGSTOP) while another starts on the same
// server is replaced: resumed, it exits 3 saying it stood down; a third is refused at
// once, naming the one that serves, which keeps serving.
func TestStoppedUpIsReplacedAndStandsDown(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	miragectl, _ := testenv.Binaries(t)
	up := func() *testenv.Process {
		return testenv.Start(t, miragectl, "up", "--server", env.URL, "--no-local-ghost", "--data-dir", t.TempDir())
	}
	serving := func(p *testenv.Process) {
		testenv.Eventually(t, 30*time.Second, "miragectl up to serve", func() bool {
			return strings.Contains(p.Output(), "edgectl is up")
		})
	}
	first := up()
	serving(first)
	first.Freeze(t)
	second := up()
	serving(second)
	first.Thaw(t)
	if code := first.Wait(30 * time.Second); code != 3 {
		t.Fatalf("the resumed first up exited %d, want 3:\n%s", code, first.Output())
	}
	if out := first.Output(); !strings.Contains(out, "stood down") {
		t.Fatalf("the resumed first up does not say it stood down:\n%s", out)
	}
	r := execRun(t, miragectl, nil, "up", "--server", env.URL, "--no-local-ghost", "--data-dir", t.TempDir())
	if r.code != 3 || !strings.Contains(r.stderr, "another Mirage serves this deployment") || !strings.Contains(r.stderr, "pid "+strconv.Itoa(second.Pid())) {
		t.Fatalf("a third up: exit %d, stderr %q; want exit 3 naming pid %d", r.code, r.stderr, second.Pid())
	}
	env.StartGhost("edge-three")
	if rep := env.Run(env.Client(), testenv.NewIssue("edge-three", "seed.flow", "status", nil, 20*time.Second)); rep.Phase != bus.PhaseSatisfied {
		t.Fatalf("the second up after the others: %s", rep.Summary)
	}
	if code := second.Stop(30 * time.Second); code != 0 {
		t.Fatalf("the second up exited %d:\n%s", code, second.Output())
	}
}

// upProc starts 'miragectl up' processes against env's server, each in a data directory
// of its own; extra are further flags (--no-local-ghost).
func upProc(t *testing.T, env *testenv.Env, extra ...string) *testenv.Process {
	t.Helper()
	miragectl, _ := testenv.Binaries(t)
	args := append([]string{"up", "--server", env.URL, "--data-dir", t.TempDir()}, extra...)
	p := testenv.Start(t, miragectl, args...)
	testenv.Eventually(t, 30*time.Second, "miragectl up to serve", func() bool {
		return strings.Contains(p.Output(), "edgectl is up")
	})
	return p
}

// Issues a stopped 'miragectl up' had received when another started (buffered on its
// connection) are each either never accepted or followed to their terminal report: resumed,
// it accepts what it reads before it learns that it stands down, and the Mirage that stays
// takes those intents up. None is left run by its Ghost but open for ever.
func TestStoppedUpBufferedIssuesEndReported(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	first := upProc(t, env, "--no-local-ghost")
	env.StartGhost("edge-buf")
	client := env.Client()
	if r := env.Run(client, testenv.NewIssue("edge-buf", "seed.flow", "status", nil, 20*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("before the stop: %s", r.Summary)
	}
	first.Freeze(t)
	// Only the stopped one listens on mirage.issue: every issue waits on its connection.
	nc := env.Conn("issues to a stopped Mirage")
	var ids []string
	for i := range 4 {
		is := testenv.NewIssue("edge-buf", "seed.flow", "echo", map[string]string{"message": "m" + strconv.Itoa(i)}, 60*time.Second)
		data, err := bus.Encode(is)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.PublishRequest(subjects.Issue, nc.NewInbox(), data); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, is.IntentID)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	second := upProc(t, env, "--no-local-ghost")
	first.Thaw(t)
	if code := first.Wait(30 * time.Second); code != 3 {
		t.Fatalf("the resumed first up exited %d, want 3:\n%s", code, first.Output())
	}
	intents, err := env.JetStream().KeyValue(context.Background(), bus.BucketIntents)
	if err != nil {
		t.Fatal(err)
	}
	accepted := 0
	for _, id := range ids {
		if _, err := intents.Get(context.Background(), id); errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // never accepted: no command left
		} else if err != nil {
			t.Fatal(err)
		}
		accepted++
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
		r, err := client.WaitTerminal(ctx, id)
		cancel()
		if err != nil {
			t.Fatalf("intent %s, accepted by the resumed Mirage, has no terminal report: %v", id, err)
		}
		if r.Phase != bus.PhaseSatisfied {
			t.Fatalf("intent %s: %s", id, r.Summary)
		}
	}
	t.Logf("%d of %d buffered issues accepted", accepted, len(ids))
	if code := second.Stop(30 * time.Second); code != 0 {
		t.Fatalf("the second up exited %d:\n%s", code, second.Output())
	}
}

// Two 'miragectl up' with their local Ghosts: the first stopped while the second started,
// resumed, stands down with its local Ghost. The second's Ghost "local", which gave way to
// the first one's (started earlier), comes back: intents on local run again.
func TestStoppedUpLocalGhostComesBackOnTheOther(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	first := upProc(t, env)
	first.Freeze(t)
	second := upProc(t, env)
	first.Thaw(t)
	if code := first.Wait(30 * time.Second); code != 3 {
		t.Fatalf("the resumed first up exited %d, want 3:\n%s", code, first.Output())
	}
	client := env.Client()
	if r := env.Run(client, testenv.NewIssue("local", "seed.flow", "echo", map[string]string{"message": "back"}, 30*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("local after the first up stood down: %s\n%s", r.Summary, second.Output())
	}
	if code := second.Stop(30 * time.Second); code != 0 {
		t.Fatalf("the second up exited %d:\n%s", code, second.Output())
	}
}

// 'miragectl up --help' tells the operator about the one Mirage per deployment and the
// exit codes, where they look first.
func TestUpHelpNamesOneMiragePerDeployment(t *testing.T) {
	miragectl, _ := testenv.Binaries(t)
	r := execRun(t, miragectl, nil, "up", "--help")
	for _, want := range []string{"One Mirage per deployment", "stands down", "Exit codes: 0", "3 it could not\nstart"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("up --help: exit %d, no %q in:\n%s", r.code, want, r.stdout)
		}
	}
}

// The events of the intents a second 'miragectl up' accepted while the first was stopped
// are delivered partly into the first one's pull requests, still open on the server. The
// first, resumed, probes before it touches them, stands down, and hands them back, those
// still in its buffer too: each of those intents ends satisfied soon after, none in timeout
// although its target succeeded, none stalled for the events consumer's ack wait.
func TestStoppedUpHandsBackTheOthersEvents(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	first := upProc(t, env, "--no-local-ghost")
	env.StartGhost("edge-ev")
	client := env.Client()
	if r := env.Run(client, testenv.NewIssue("edge-ev", "seed.flow", "status", nil, 20*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("before the stop: %s", r.Summary)
	}
	first.Freeze(t)
	second := upProc(t, env, "--no-local-ghost")
	// mirage.issue is a queue group: an issue handed to the stopped one gets no answer (its
	// request ends at its timeout), so a dozen go at once and the first three accepted are
	// followed; the rest end by themselves.
	const sent = 12
	var accepted []string
	ids := make(chan string, sent)
	for i := range sent {
		go func() {
			is := testenv.NewIssue("edge-ev", "seed.flow", "echo", map[string]string{"message": strconv.Itoa(i)}, 20*time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
			defer cancel()
			if _, err := client.Issue(ctx, is); err == nil {
				ids <- is.IntentID
			} else {
				ids <- ""
			}
		}()
	}
	for range sent {
		if id := <-ids; id != "" {
			if accepted = append(accepted, id); len(accepted) == 3 {
				break
			}
		}
	}
	if len(accepted) == 0 {
		t.Fatal("the second Mirage accepted no issue")
	}
	first.Thaw(t)
	if code := first.Wait(30 * time.Second); code != 3 {
		t.Fatalf("the resumed first up exited %d, want 3:\n%s", code, first.Output())
	}
	// Handed back, not left to the events consumer's ack wait (30 s).
	exited := time.Now()
	for _, id := range accepted {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		r, err := client.WaitTerminal(ctx, id)
		cancel()
		if err != nil {
			t.Fatalf("intent %s of the second Mirage: %v", id, err)
		}
		if took := time.Since(exited); took > 15*time.Second {
			t.Errorf("intent %s of the second Mirage ended %s after the first stood down: its events waited for the ack wait", id, took)
		}
		if r.Phase != bus.PhaseSatisfied {
			t.Fatalf("intent %s of the second Mirage: %s\nfirst:\n%s", id, r.Summary, first.Output())
		}
	}
	t.Logf("%d intents of the second Mirage satisfied", len(accepted))
	if code := second.Stop(30 * time.Second); code != 0 {
		t.Fatalf("the second up exited %d:\n%s", code, second.Output())
	}
}
