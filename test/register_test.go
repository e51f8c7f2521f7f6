package test

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// A Ghost's register that a newer one replaces while the registrar is busy (a fleet
// registering at once) is answered with the newer one's outcome, not refused: a Ghost
// still waiting on the older request must not take it for a rejection.
func TestReplacedRegisterIsAnsweredWithTheOutcome(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	nc := env.Conn("fleet")
	replies := make(chan *nats.Msg, 4096)
	inbox := nats.NewInbox()
	sub, err := nc.ChanSubscribe(inbox+".>", replies)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe() //nolint:errcheck
	send := func(id, tag string) {
		reg := bus.Register{Header: bus.NewHeader(bus.TypeRegister, "", time.Now()), GhostID: id, Version: "test", Labels: map[string]string{}, Seeds: []bus.SeedInfo{}}
		data, err := bus.Encode(&reg)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.PublishRequest(subjects.Register(id), inbox+"."+tag, data); err != nil {
			t.Fatal(err)
		}
	}
	const fleet = 2000
	for i := 0; i < fleet; i++ {
		send(fmt.Sprintf("edge-%04d", i), fmt.Sprintf("f%d", i))
	}
	send("edge-x", "x1")
	send("edge-x", "x2")
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	got := map[string]bus.RegisterAck{}
	deadline := time.After(60 * time.Second)
	for len(got) < fleet+2 {
		select {
		case m := <-replies:
			var ack bus.RegisterAck
			if err := bus.Decode(m.Data, &ack); err != nil {
				t.Fatalf("register.ack does not decode: %v", err)
			}
			got[m.Subject[len(inbox)+1:]] = ack
		case <-deadline:
			t.Fatalf("%d of %d registers answered after 60s", len(got), fleet+2)
		}
	}
	for _, tag := range []string{"x1", "x2"} {
		if ack := got[tag]; ack.Status != bus.RegisterAccepted {
			t.Errorf("register %s of edge-x: %s %q, want accepted", tag, ack.Status, ack.Reason)
		}
	}
}
