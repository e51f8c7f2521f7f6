package test

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// 'up --server' with nothing listening there fails at once, saying the server cannot be
// reached (exit 3), rather than after provisioning timed out half a minute later.
func TestUpAgainstAnUnreachableServerFailsAtOnce(t *testing.T) {
	mctl, _ := testenv.Binaries(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", testenv.FreePort(t))
	start := time.Now()
	r := execRun(t, mctl, nil, "up", "--server", url, "--no-local-ghost", "--data-dir", filepath.Join(t.TempDir(), "data"))
	took := time.Since(start)
	if r.code != 3 || !strings.Contains(r.stderr, "NATS at "+url+" cannot be reached") || took > 10*time.Second {
		t.Fatalf("exit %d after %s, stderr %q; want exit 3 within 10s saying NATS at %s cannot be reached", r.code, took.Round(time.Millisecond), r.stderr, url)
	}
}

// Against a server without JetStream, 'up --server' and the commands that read
// edgectl's state say so at once (exit 3), rather than "no responders available".
func TestServerWithoutJetStreamIsNamed(t *testing.T) {
	env := testenv.New(t, testenv.Listen(), testenv.NoJetStream())
	mctl, _ := testenv.Binaries(t)
	want := "the NATS server at " + env.URL + " has no JetStream"
	start := time.Now()
	r := execRun(t, mctl, nil, "up", "--server", env.URL, "--no-local-ghost", "--data-dir", filepath.Join(t.TempDir(), "data"))
	if took := time.Since(start); r.code != 3 || !strings.Contains(r.stderr, want) || took > 10*time.Second {
		t.Errorf("up: exit %d after %s, stderr %q; want exit 3 within 10s and %q", r.code, took.Round(time.Millisecond), r.stderr, want)
	}
	for _, args := range [][]string{{"ghosts"}, {"intents"}, {"report", "int_abc"}} {
		r := miragectl(t, env.URL, args...)
		if r.code != 3 || !strings.Contains(r.stderr, want) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("%v: exit %d, stderr %q; want exit 3 and one line with %q", args, r.code, r.stderr, want)
		}
	}
}

// On a server whose JetStream store cannot reserve the default 4 GiB cap of EDGE_EVT twice
// over, 'up' lowers the default to leave half the store to the rest; a cap the operator set
// that does not fit is refused (exit 3) with a line naming events_max_mb.
func TestUpFitsTheDefaultEventsCapToASmallStore(t *testing.T) {
	env := testenv.New(t, testenv.Listen(), testenv.MaxStore(1<<30))
	mctl, _ := testenv.Binaries(t)
	r := execRun(t, mctl, nil, "up", "--server", env.URL, "--no-local-ghost", "--events-max-mb", "4096", "--data-dir", filepath.Join(t.TempDir(), "data"))
	if r.code != 3 || !strings.Contains(r.stderr, "events_max_mb") {
		t.Fatalf("up with --events-max-mb 4096 on a 1 GiB store: exit %d, stderr %q; want exit 3 naming events_max_mb", r.code, r.stderr)
	}
	p := testenv.Start(t, mctl, "up", "--server", env.URL, "--no-local-ghost", "--data-dir", filepath.Join(t.TempDir(), "data"))
	testenv.Eventually(t, 20*time.Second, "up with the default cap on a 1 GiB store to come up", func() bool { return strings.Contains(p.Output(), "edgectl up") })
	if r := miragectl(t, env.URL, "ghosts"); r.code != 0 {
		t.Fatalf("ghosts against it: exit %d, stderr %q", r.code, r.stderr)
	}

	// A store of exactly 4 GiB could reserve the full default for EDGE_EVT, and then
	// nothing for the streams after it: the default leaves half of it.
	env4 := testenv.New(t, testenv.Listen(), testenv.MaxStore(4<<30))
	p4 := testenv.Start(t, mctl, "up", "--server", env4.URL, "--no-local-ghost", "--data-dir", filepath.Join(t.TempDir(), "data"))
	testenv.Eventually(t, 20*time.Second, "up with the default cap on a 4 GiB store to come up", func() bool { return strings.Contains(p4.Output(), "edgectl up") })
	if r := miragectl(t, env4.URL, "ghosts"); r.code != 0 {
		t.Fatalf("ghosts against the 4 GiB store: exit %d, stderr %q", r.code, r.stderr)
	}
}

// A waiting 'issue' outlives a restart of its server (as when 'up' restarts): it
// reconnects and prints the terminal report, rather than dying with "connection closed".
func TestIssueWaitsAcrossAServerRestart(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	env.StartMirageOn(env.URLConn("mirage", ""), mirage.Config{})
	env.StartGhost("edge-w", testenv.Via(env.URLConn("ghost edge-w", "", bus.GhostRequests())))
	mctl, _ := testenv.Binaries(t)
	p := testenv.Start(t, mctl, "issue", "--server", env.URL, "--target", "edge-w", "--timeout", "30s", "seed.flow", "sleep", "ms=3000")
	time.Sleep(time.Second)
	env.RestartServer(2 * time.Second)
	if code := p.Wait(40 * time.Second); code != 0 || !strings.Contains(p.Output(), "satisfied: 1/1 succeeded") {
		t.Fatalf("issue: exit %d, output %q; want exit 0 and the terminal report", code, p.Output())
	}
}

// 'report --wait' and 'report --watch' outlive a restart of the server as a waiting
// 'issue' does: they reconnect and print the terminal report (they died with "connection
// closed", though 'issue' itself points there to follow an intent).
func TestReportWaitsAcrossAServerRestart(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	env.StartMirageOn(env.URLConn("mirage", ""), mirage.Config{})
	env.StartGhost("edge-r", testenv.Via(env.URLConn("ghost edge-r", "", bus.GhostRequests())))
	mctl, _ := testenv.Binaries(t)
	r := miragectl(t, env.URL, "issue", "--target", "edge-r", "--timeout", "30s", "--no-wait", "seed.flow", "sleep", "ms=3000")
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || id == "" {
		t.Fatalf("issue --no-wait: exit %d, stdout %q", r.code, r.stdout)
	}
	wait := testenv.Start(t, mctl, "report", id, "--wait", "--server", env.URL)
	watch := testenv.Start(t, mctl, "report", id, "--watch", "--server", env.URL)
	time.Sleep(time.Second)
	env.RestartServer(2 * time.Second)
	for name, p := range map[string]*testenv.Process{"--wait": wait, "--watch": watch} {
		if code := p.Wait(40 * time.Second); code != 0 || !strings.Contains(p.Output(), "satisfied: 1/1 succeeded") {
			t.Errorf("report %s: exit %d, output %q; want exit 0 and the terminal report", name, code, p.Output())
		}
	}
}

// An issue whose connection closes after it went out and before Mirage's answer came (the
// server killed or cut off in between, as a chaos run of kill -9 on nats-server found) may
// have been accepted: 'issue --no-wait', whose connection does not outlive a server restart,
// exits 3 naming the intent and the command that follows it, as it does when no answer came
// in time. It said only "NATS unavailable: nats: connection closed", and the user, told
// nothing ran, would issue again: here the intent was accepted and ran.
func TestIssueWhoseAnswerIsLostNamesTheIntent(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	toMirage := testenv.NewProxy(t, env.Server.Addr().String())
	env.StartMirageOn(env.URLConn("mirage", toMirage.URL()), mirage.Config{})
	env.StartGhost("edge-l", testenv.Via(env.URLConn("ghost edge-l", "", bus.GhostRequests())))
	toClient := testenv.NewProxy(t, env.Server.Addr().String())
	// The server holds the issue, on its way to a Mirage whose link is held: the client's
	// link is cut then, so its answer can never come.
	sent := make(chan string, 1)
	watch := env.Conn("watch")
	if _, err := watch.Subscribe(subjects.Issue, func(m *nats.Msg) {
		toClient.Cut()
		var is bus.Issue
		if err := bus.Decode(m.Data, &is); err == nil {
			select {
			case sent <- is.IntentID:
			default:
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}
	toMirage.Pause()
	r := miragectl(t, toClient.URL(), "issue", "--no-wait", "--target", "edge-l", "seed.kv", "incr", "key=n")
	toMirage.Resume()
	var id string
	select {
	case id = <-sent:
	case <-time.After(10 * time.Second):
		t.Fatalf("the issue never reached the server: exit %d, stderr %q", r.code, r.stderr)
	}
	if r.code != 3 || !strings.Contains(r.stderr, "may have been accepted") || !strings.Contains(r.stderr, "miragectl report "+id+" --wait") {
		t.Fatalf("issue --no-wait whose answer was lost: exit %d, stderr %q; want exit 3, the intent %s may have been accepted, and how to follow it", r.code, r.stderr, id)
	}
	rep := miragectl(t, env.URL, "report", id, "--wait", "--json")
	if rep.code != 0 || !strings.Contains(rep.stdout, `"phase":"satisfied"`) || !strings.Contains(rep.stdout, `"stdout":"1"`) {
		t.Fatalf("report %s --wait: exit %d, stdout %q, stderr %q; want the intent satisfied, incr run once", id, rep.code, rep.stdout, rep.stderr)
	}
}

// The hints up and issue print carry --server when the server is not where clients look
// by default, so that copying them reaches it.
func TestHintsNameANonDefaultServer(t *testing.T) {
	mctl, _ := testenv.Binaries(t)
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	url := "nats://" + listen
	up := testenv.Start(t, mctl, "up", "--nats-listen", listen, "--data-dir", t.TempDir(), "--no-local-ghost", "--auth")
	testenv.Eventually(t, 30*time.Second, "up to be up", func() bool { return strings.Contains(up.Output(), "add a Ghost:") })
	out := up.Output()
	for _, want := range []string{
		"appear in: miragectl ghosts --server " + url,
		"use it with:      miragectl issue --server " + url + " --nkey",
		"ghostctl init> --server " + url + " --nkey",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("up's output lacks %q:\n%s", want, out)
		}
	}
	up.Stop(30 * time.Second)

	env := testenv.New(t, testenv.Listen())
	env.StartMirage(mirage.Config{})
	env.StartGhost("edge-i")
	p := testenv.Start(t, mctl, "issue", "--server", env.URL, "--target", "edge-i", "seed.flow", "sleep", "ms=5000")
	time.Sleep(time.Second)
	p.Interrupt()
	if code := p.Wait(20 * time.Second); code != 1 || !regexp.MustCompile(`miragectl report int_\w+ --wait --server `+regexp.QuoteMeta(env.URL)).MatchString(p.Output()) {
		t.Fatalf("issue interrupted: exit %d, output %q; want exit 1 and a report hint with --server %s", code, p.Output(), env.URL)
	}
}

// 'up --server' against a server that requires authentication, without a key it admits,
// says so (exit 3): the server was reached, the URL is not what to check.
func TestUpRefusedByAnAuthServerSaysWhy(t *testing.T) {
	env := testenv.New(t, testenv.Listen(), testenv.Users(natsd.Users(newIdentity(t).PublicKey(), newIdentity(t).PublicKey(), nil)))
	mctl, _ := testenv.Binaries(t)
	for _, c := range []struct {
		flags []string
		want  string
	}{
		{nil, "NATS at " + env.URL + " requires authentication"},
		{[]string{"--auth"}, "NATS at " + env.URL + " refuses Mirage's key "},
	} {
		args := append([]string{"up", "--server", env.URL, "--no-local-ghost", "--data-dir", filepath.Join(t.TempDir(), "data")}, c.flags...)
		r := execRun(t, mctl, nil, args...)
		if r.code != 3 || !strings.Contains(r.stderr, c.want) || strings.Contains(r.stderr, "cannot be reached") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("up %v: exit %d, stderr %q; want exit 3 and one line with %q", c.flags, r.code, r.stderr, c.want)
		}
	}
}

// 'report --wait' and 'report --watch' give up at their --timeout instead of waiting
// forever. Ending before the intent's deadline, the wait says the intent has not ended yet
// (it may still be running, as it does here: the intent outlives its Mirage's absence) and
// how to follow it, exit 1, without blaming Mirage: only 30 s past the deadline does a
// missing report mean no Mirage (TestWaitEndedBlamesMirageOnlyPastTheDeadline). --timeout
// without either is refused, saying it needs one of them.
func TestReportWaitGivesUpAtItsTimeout(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	m := env.StartMirage(mirage.Config{})
	env.StartGhost("edge-g")
	r := miragectl(t, env.URL, "issue", "--target", "edge-g", "--timeout", "60s", "--no-wait", "seed.flow", "sleep", "ms=20000")
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || id == "" {
		t.Fatalf("issue --no-wait: exit %d, stdout %q", r.code, r.stdout)
	}
	m.Close()
	for _, flag := range []string{"--wait", "--watch"} {
		r = miragectl(t, env.URL, "report", id, flag, "--timeout", "2s")
		if r.code != 1 || r.took < 2*time.Second || r.took > 20*time.Second ||
			!strings.Contains(r.stderr, "intent "+id+" has not ended by --timeout 2s") || !strings.Contains(r.stderr, "may still be running (its deadline is ") ||
			strings.Contains(r.stderr, "Mirage running") || !strings.Contains(r.stderr, "miragectl report "+id+" --wait") {
			t.Errorf("report %s --timeout 2s before the intent's deadline: exit %d after %s, stderr %q; want exit 1 after 2 s, the intent not ended yet, its deadline and a hint", flag, r.code, r.took, r.stderr)
		}
	}
	r = miragectl(t, env.URL, "report", id, "--timeout", "2s")
	if r.code != 2 || !strings.Contains(r.stderr, "--timeout 2s bounds a wait: it needs --wait or --watch") {
		t.Errorf("report --timeout without --wait: exit %d, stderr %q; want exit 2 saying --timeout needs --wait or --watch", r.code, r.stderr)
	}
}

// A second 'up --server' with a data directory of its own runs a new Ghost "local" on an
// empty execution store. A non-idempotent command the first one's "local" ran, still open
// in EDGE_CMD (its deliver_by_ms not passed), is not run again: the new store began after
// it was sent, so it is answered 1700, outcome unknown.
func TestSecondUpWithAFreshDataDirDoesNotRunAnOpenCommandAgain(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	first := upProc(t, env)
	client := env.Client()
	incr := testenv.NewIssue("local", "seed.kv", "incr", map[string]string{"key": "c"}, 2*time.Minute)
	if r := env.Run(client, incr); r.Phase != bus.PhaseSatisfied || r.Results[0].Stdout != "1" {
		t.Fatalf("incr on the first up's local Ghost: %s %+v", r.Summary, r.Results)
	}
	if code := first.Stop(30 * time.Second); code != 0 {
		t.Fatalf("the first up exited %d:\n%s", code, first.Output())
	}
	second := upProc(t, env) // a data directory of its own
	testenv.Eventually(t, 30*time.Second, "the second up's local Ghost to answer the incr sent before its store", func() bool {
		return strings.Contains(second.Output(), "command sent before this ghost's execution store began")
	})
	// The second process's seed.kv starts empty: had the incr run again, c would be 1.
	get := env.Run(client, testenv.NewIssue("local", "seed.kv", "get", map[string]string{"key": "c"}, 20*time.Second))
	if len(get.Results) != 1 || get.Results[0].Error == nil || !strings.Contains(get.Results[0].Error.Message, "not found") {
		t.Fatalf("seed.kv get c on the second up's local Ghost: %s %+v; want not found (the incr not run again)", get.Summary, get.Results)
	}
	if code := second.Stop(30 * time.Second); code != 0 {
		t.Fatalf("the second up exited %d:\n%s", code, second.Output())
	}
}
