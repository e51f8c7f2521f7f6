package test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// A Ghost may publish on its own evt.<id> with any reply subject: nats-server does not
// check a reply against permissions, and JetStream sends the publish ack there. The event
// crosses from the Ghosts' account into Mirage's through a service import, which gives it
// a reply subject of its own leading back to the Ghosts' account: aimed at the JetStream
// API, a KV key, a report or another Ghost's commands, the ack is stored nowhere and
// changes nothing: no stream, message or consumer is added or removed.
func TestEventPublishAckAimedAnywhereChangesNothing(t *testing.T) {
	f := newAuthFleet(t, "ghost-c")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	f.startGhost("ghost-c")
	f.mustServe(t, "ghost-c", "before the attack")
	before := streamState(ctx, t, js)
	evt, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	var consumers []string
	for c := range evt.ListConsumers(ctx).Info() {
		consumers = append(consumers, c.Name)
	}
	if len(consumers) == 0 {
		t.Fatal("Mirage has no consumer on EDGE_EVT")
	}
	targets := []string{
		"$JS.API.STREAM.DELETE." + bus.StreamCommands,
		"$JS.API.STREAM.PURGE." + bus.StreamCommands,
		"$JS.API.STREAM.PURGE." + bus.StreamReports,
		"$JS.API.STREAM.MSG.DELETE." + bus.StreamCommands,
		"$JS.API.STREAM.DELETE.KV_" + bus.BucketFleet,
		"$JS.API.STREAM.PURGE.KV_" + bus.BucketFleet,
		"$KV." + bus.BucketFleet + ".ghost-c",
		"$KV." + bus.BucketFleet + ".ghost-o",
		"$KV." + bus.BucketGhosts + ".ghost-o",
		"$KV." + bus.BucketIntents + ".int_rogue",
		subjects.Report("int_rogue"),
		subjects.Command("ghost-o"),
		subjects.Event("ghost-o"),
	}
	for _, c := range consumers {
		targets = append(targets, "$JS.API.CONSUMER.DELETE."+bus.StreamEvents+"."+c)
	}
	rogue := f.rogueGhost("ghost-c")
	for i, target := range targets {
		msg := nats.NewMsg(subjects.Event("ghost-c"))
		msg.Reply = target
		msg.Header.Set(bus.HeaderMsgID, "evt_rogue_"+strconv.Itoa(i))
		msg.Data = []byte(`{}`)
		if err := rogue.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := rogue.FlushTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	// Each publish is stored (its ack is the proof it was answered) before looking.
	waitStreamMsgs(ctx, t, js, bus.StreamEvents, before[bus.StreamEvents]+uint64(len(targets)))

	after := streamState(ctx, t, js)
	for name, n := range before {
		if name == bus.StreamEvents {
			continue
		}
		if after[name] != n {
			t.Errorf("stream %s: %d messages before, %d after (present: %v)", name, n, after[name], hasKey(after, name))
		}
	}
	for _, c := range consumers {
		if _, err := evt.Consumer(ctx, c); err != nil {
			t.Errorf("consumer %s of EDGE_EVT: %v", c, err)
		}
	}
	f.mustServe(t, "ghost-c", "after the attack")
}

// streamState is every stream's message count.
func streamState(ctx context.Context, t *testing.T, js jetstream.JetStream) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	lister := js.ListStreams(ctx)
	for info := range lister.Info() {
		out[info.Config.Name] = info.State.Msgs
	}
	if err := lister.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func waitStreamMsgs(ctx context.Context, t *testing.T, js jetstream.JetStream, name string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if n := streamState(ctx, t, js)[name]; n >= want {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("stream %s holds %d messages, want %d", name, n, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func hasKey(m map[string]uint64, k string) bool { _, ok := m[k]; return ok }

// Ghosts' requests and heartbeats reach Mirage's account with the reply subject the Ghost
// set, so a stream storing them would have JetStream publish its ack wherever a Ghost
// names: Mirage under auth refuses to start while one does, and names it. A Ghost's
// heartbeat with the reply subject of another Ghost's enrollment shows why.
func TestMirageRefusesAStreamStoringGhostRequests(t *testing.T) {
	f := newAuthFleet(t, "ghost-c", "ghost-o")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "AUDIT_HB", Subjects: []string{"hb.>"}}); err != nil {
		t.Fatal(err)
	}
	fleetKV, err := js.KeyValue(ctx, bus.BucketFleet)
	if err != nil {
		t.Fatal(err)
	}
	enrolled, err := fleetKV.Get(ctx, "ghost-o")
	if err != nil {
		t.Fatal(err)
	}
	rogue := f.rogueGhost("ghost-c")
	if err := rogue.PublishRequest(subjects.Heartbeat("ghost-c"), "$KV."+bus.BucketFleet+".ghost-o", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the ack stored over ghost-o's enrollment", func() bool {
		e, err := fleetKV.Get(ctx, "ghost-o")
		return err == nil && e.Revision() != enrolled.Revision()
	})

	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}
	mnc := f.env.ConnWith("mirage again", f.mirage.NATSOption(), nats.CustomInboxPrefix(bus.MirageInbox()))
	_, err = mirage.New(ctx, mnc, mirage.Config{Identity: f.mirage, RequireSignedEvents: true}, f.env.Log)
	if err == nil || !strings.Contains(err.Error(), "AUDIT_HB") || !strings.Contains(err.Error(), subjects.AllHeartbeats) {
		t.Fatalf("Mirage with a stream storing hb.*: %v, want a refusal naming AUDIT_HB and %s", err, subjects.AllHeartbeats)
	}
}
