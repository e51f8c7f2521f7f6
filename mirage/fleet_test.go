package mirage

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
)

// A peer repeating a malformed register gets each one rejected, with one warning per
// bus.RateLogEvery saying how many it stands for, not one warning each.
func TestRejectedRegistrationsAreLoggedAtMostOncePerInterval(t *testing.T) {
	var logs bytes.Buffer
	f := newFleet(nil, nil, make(chan struct{}), time.Now, newReplyGuard(false, slog.New(slog.DiscardHandler)), slog.New(slog.NewTextHandler(&logs, nil)))
	for range 200 {
		f.answer(&nats.Msg{Subject: "reg.flooder"}, bus.RegisterAck{GhostID: "flooder", Status: bus.RegisterRejected, Reason: "malformed register"})
	}
	if n := strings.Count(logs.String(), "registration rejected"); n != 1 {
		t.Fatalf("%d warnings for 200 rejected registrations, want 1:\n%s", n, logs.String())
	}
}

// A presence flush whose publishes the connection refuses (closed here; a full reconnect
// buffer or too many unacknowledged publishes refuse them the same way) keeps Mirage up
// and the shard marked, for the next flush to write again.
func TestPresenceFlushRefusedByTheConnectionIsRetried(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true})
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "fleet"})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	f := newFleet(js, nil, make(chan struct{}), time.Now, newReplyGuard(false, slog.New(slog.DiscardHandler)), slog.New(slog.NewTextHandler(&logs, nil)))
	f.ghosts["g1"] = &GhostRecord{GhostID: "g1"}
	sh := presenceShard("g1")
	f.seen[sh] = true
	nc.Close()
	f.flush(context.Background())
	if !f.seen[sh] {
		t.Fatal("the shard that was not stored is no longer marked: the next flush would not write it")
	}
	if !strings.Contains(logs.String(), "presence not stored") {
		t.Fatalf("no warning about the presence not stored:\n%s", logs.String())
	}
}
