package mirage

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
	"github.com/edgectl/edgectl/subjects"
)

// A command not yet stored when Mirage stops gets one last try within the stop budget:
// the next Mirage dispatches again only the commands of intents still open, so a command
// its Ghost got live and answered while EDGE_CMD could not take it, its intent ended
// meanwhile, was never stored (a chaos run on a 3-node cluster, Mirage restarted 2 s
// after such an intent ended). Here EDGE_CMD is away while the command is sent and re-sent,
// and back just before Mirage stops, between two re-sends.
func TestCommandNotStoredAtStopGetsALastTry(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	logs := &syncBuffer{}
	m := startTestMirageWith(t, ns, Config{}, warnLog(logs))
	js, err := jetstream.New(natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "inspect"}))
	if err != nil {
		t.Fatal(err)
	}
	client, err := NewClient(natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "client"}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, bus.StreamCommands)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, bus.StreamCommands); err != nil {
		t.Fatal(err)
	}
	is := bus.Issue{Header: bus.NewHeader(bus.TypeIssue, "", time.Now()), IntentID: subjects.NewID(subjects.PrefixIntent),
		Actor: "test", TargetScope: "g1", TimeoutMS: time.Minute.Milliseconds(),
		Objective: bus.Objective{SeedSelector: "seed.kv", Operation: "incr", Args: map[string]string{"key": "c"}}}
	if _, err := client.Issue(ctx, &is); err != nil {
		t.Fatal(err)
	}
	// Re-sends 250 ms, 500 ms, 1 s apart: after the second failed one, 1 s to the next.
	for strings.Count(logs.String(), "dispatch retry failed") < 2 {
		if ctx.Err() != nil {
			t.Fatalf("no second failed re-send: %s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := js.CreateStream(ctx, info.Config); err != nil {
		t.Fatal(err)
	}
	_ = m.Close()
	if _, err := s.GetLastMsgForSubject(ctx, subjects.Command("g1")); err != nil {
		t.Fatalf("the command after Mirage stopped: %v\n%s", err, logs)
	}
}
