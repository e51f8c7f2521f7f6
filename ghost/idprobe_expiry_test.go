package ghost

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
)

// A running instance's answer is in before the probe timer fires, but the claim loop
// sees both at once: settle must not let held commands run.
func TestStartProbeAnswerBesideTheExpiredTimerStandsDown(t *testing.T) {
	nc, _ := replayConns(t)
	ran := 0
	for i := range 40 {
		g, err := New(nc, Config{ID: "g1", Policy: PolicyHeadless}, NewRegistry(), NewMemoryStore(), nil)
		if err != nil {
			t.Fatal(err)
		}
		g.claim.setRunning()
		other := bus.Instance{GhostID: "g1", InstanceID: "ins_other", StartedMS: 1, Phase: bus.InstanceRunning}
		data, _ := bus.Encode(&bus.IDProbeAnswer{Header: bus.NewHeader(bus.TypeProbeAnswer, "", time.Now()), Instance: other})
		a := &probeAnswers{ch: make(chan *nats.Msg, 4), starting: true, timer: time.NewTimer(0)}
		a.ch <- &nats.Msg{Data: data}
		time.Sleep(5 * time.Millisecond) // the timer has fired: both ready
		if !g.track() {
			t.Fatal("track")
		}
		go g.claimLoop(make(chan *nats.Msg), a, make(chan nats.Status))
		if g.settle() {
			ran++
		}
		select {
		case <-g.Done():
		case <-time.After(2 * time.Second):
			t.Logf("ghost %d: never stood down (answer dropped once the timer won)", i)
			_ = g.Close()
		}
	}
	if ran > 0 {
		t.Fatalf("%d of 40 Ghosts whose start probe got a running instance's answer in time ran held commands (settle true) before standing down", ran)
	}
}
