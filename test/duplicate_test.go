package test

import (
	"context"
	"errors"
	"fmt"
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
