package test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds/flow"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// A second ghostctl with the id of a running one (a copied config) exits 3 with one line
// naming the first, which keeps running.
func TestGhostctlRefusesAnIDAlreadyRunning(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	first := newGhostProc(t, env, "edge-1")
	first.proc = testenv.Start(t, first.bin, "run", "--config", first.config)
	testenv.Eventually(t, 20*time.Second, "the first ghostctl to serve", func() bool {
		return strings.Contains(first.proc.Output(), "ghost running")
	})
	second := newGhostProc(t, env, "edge-1")
	r := execRun(t, second.bin, nil, "run", "--config", second.config)
	if r.code != 3 {
		t.Fatalf("second ghostctl with id edge-1: exit %d, want 3; stderr:\n%s", r.code, r.stderr)
	}
	line := regexp.MustCompile(fmt.Sprintf(`(?m)^error: ghost id edge-1 is already running: instance ins_\w+ on host \S+, pid %d, since \S+; two Ghosts with one id would both run every command$`, first.proc.Pid()))
	if !line.MatchString(r.stderr) {
		t.Fatalf("second ghostctl's stderr lacks the refusal line naming pid %d:\n%s", first.proc.Pid(), r.stderr)
	}
	if strings.Contains(r.stderr, "ghost serving") {
		t.Fatalf("the refused ghostctl served:\n%s", r.stderr)
	}
	if code := first.proc.Stop(20 * time.Second); code != 0 {
		t.Fatalf("the first ghostctl exited %d on SIGTERM, want 0 (still running)", code)
	}
}

// Under auth, probe.<id> belongs to Ghost id alone: another Ghost's identity can neither
// answer it (and so refuse id's start) nor publish on it, while a second instance with
// id's own key (a copied config) is refused, naming the first.
func TestAuthOnlyTheGhostItselfAnswersItsProbe(t *testing.T) {
	f := newAuthFleet(t, "edge-a", "edge-b")
	var v violations
	rogue := f.env.ConnWith("edge-b rogue", f.keys["edge-b"].NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox("edge-b")), nats.ErrorHandler(v.handler))
	fake := bus.Instance{GhostID: "edge-a", InstanceID: "ins_rogue", Hostname: "rogue", PID: 1, StartedMS: 1, Phase: bus.InstanceRunning}
	if _, err := rogue.Subscribe(subjects.Probe("edge-a"), func(m *nats.Msg) {
		data, err := bus.Encode(&bus.IDProbeAnswer{Header: bus.NewHeader(bus.TypeProbeAnswer, "", time.Now()), Instance: fake})
		if err == nil {
			_ = m.Respond(data)
		}
	}); err != nil {
		t.Fatal(err)
	}
	probe, _ := bus.Encode(&bus.IDProbe{Header: bus.NewHeader(bus.TypeProbe, "", time.Now()), Instance: fake})
	if err := rogue.PublishRequest(subjects.Probe("edge-a"), bus.GhostInbox("edge-b")+".x", probe); err != nil {
		t.Fatal(err)
	}
	_ = rogue.Flush()
	testenv.Eventually(t, 5*time.Second, "permission violations for probe.edge-a", func() bool {
		return v.saw(`Subscription to "probe.edge-a"`) && v.saw(`Publish to "probe.edge-a"`)
	})

	f.startGhost("edge-a") // fails the test if the impostor's answer refused it
	f.mustServe(t, "edge-a", "with edge-b's identity trying probe.edge-a")

	key := f.keys["edge-a"]
	reg := ghost.NewRegistry()
	if err := reg.Add(flow.New()); err != nil {
		t.Fatal(err)
	}
	nc := f.env.URLConn("edge-a copy", "", key.NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox("edge-a")))
	copyGhost, err := ghost.New(nc, ghost.Config{ID: "edge-a", Policy: ghost.PolicyHeadless, Identity: key, TrustedMirageKeys: []string{f.mirage.PublicKey()}},
		reg, ghost.NewMemoryStore(), f.env.Log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = copyGhost.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = copyGhost.Start(ctx)
	var dup *ghost.DuplicateIDError
	if !errors.As(err, &dup) || dup.Other.InstanceID == fake.InstanceID || dup.Other.Phase != bus.InstanceRunning {
		t.Fatalf("a second edge-a with edge-a's key: Start = %v, want a DuplicateIDError naming the running edge-a", err)
	}
	f.mustServe(t, "edge-a", "after a copy of it was refused")
}

// A ghostctl with policy required that learns, while it registers, that another instance
// keeps its id (an answer to its start probe that came late) exits 3 at once with the
// refusal line naming the other, not with what its registration came to.
func TestGhostctlRequiredStandingDownWhileRegisteringExits3(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	const id = "edge-late"
	_, ghostctl := testenv.Binaries(t)
	dir := filepath.Join(t.TempDir(), id)
	init := testenv.Start(t, ghostctl, "init", "--id", id, "--out", dir, "--server", env.URL, "--policy", "required", "--seeds", "seed.flow")
	if code := init.Wait(30 * time.Second); code != 0 {
		t.Fatalf("ghostctl init exited %d: %s", code, init.Output())
	}
	// The other instance: running for an hour, its answers slow to come.
	twin := bus.Instance{GhostID: id, InstanceID: subjects.NewID(subjects.PrefixInstance), Hostname: "twin-host", PID: 4242,
		StartedMS: time.Now().Add(-time.Hour).UnixMilli(), Phase: bus.InstanceRunning}
	probes := make(chan *nats.Msg, 64)
	nc := env.Conn("late twin")
	if _, err := nc.ChanSubscribe(subjects.Probe(id), probes); err != nil {
		t.Fatal(err)
	}
	// A Mirage that does not answer yet: the Ghost is registering.
	registering := registrations(t, nc, id)
	begun := time.Now()
	proc := testenv.Start(t, ghostctl, "run", "--config", filepath.Join(dir, "config.toml"))
	select {
	case <-registering:
	case <-time.After(30 * time.Second):
		t.Fatalf("ghostctl never registered:\n%s", proc.Output())
	}
	answer, err := bus.Encode(&bus.IDProbeAnswer{Header: bus.NewHeader(bus.TypeProbeAnswer, "", time.Now()), Instance: twin})
	if err != nil {
		t.Fatal(err)
	}
	if err := (<-probes).Respond(answer); err != nil {
		t.Fatal(err)
	}
	if code := proc.Wait(30 * time.Second); code != 3 {
		t.Fatalf("ghostctl exited %d, want 3:\n%s", code, proc.Output())
	}
	// Well within the register timeout (10 s): the stand-down ends the wait.
	if took := time.Since(begun); took > 8*time.Second {
		t.Errorf("ghostctl took %s to exit after the stand-down", took)
	}
	line := regexp.MustCompile(fmt.Sprintf(`(?m)^error: ghost id %s is already running: instance %s on host twin-host, pid 4242, since \S+; two Ghosts with one id would both run every command$`, id, twin.InstanceID))
	if !line.MatchString(proc.Output()) {
		t.Fatalf("ghostctl's output lacks the refusal line naming the twin:\n%s", proc.Output())
	}
}

// registrations stands in for a Mirage that never answers a registration of id: the
// channel says (at most once pending) that one came.
func registrations(t *testing.T, nc *nats.Conn, id string) <-chan struct{} {
	t.Helper()
	registering := make(chan struct{}, 1)
	if _, err := nc.Subscribe(subjects.Register(id), func(*nats.Msg) {
		select {
		case registering <- struct{}{}:
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return registering
}
