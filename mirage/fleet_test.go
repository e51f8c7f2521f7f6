package mirage

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
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
