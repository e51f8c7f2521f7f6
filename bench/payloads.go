package bench

import (
	"strings"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
)

// What every bench intent runs: seed.flow echo of a fixed message, sized so that the
// command and event envelopes are what a small real operation sends (about 600 and 700
// bytes). The raw measurements send envelopes built the same way, so both sides carry
// the same bytes.
const (
	benchSeed = "seed.flow"
	benchOp   = "echo"
)

var benchMessage = "bench: " + strings.Repeat("0123456789", 12)

// payloads are the raw measurements' message bodies.
type payloads struct {
	cmd, evt []byte
}

// newPayloads encodes a command and its event as Mirage and the Ghost would for a bench
// intent (see e2e.go). Nothing of edgectl runs while the raw measurements time.
func newPayloads() payloads {
	now := time.Now()
	intentID := subjects.NewID(subjects.PrefixIntent)
	cmd := bus.Command{
		Header:       bus.NewHeader(bus.TypeCommand, "", now),
		CommandID:    mirage.CommandID(intentID, 0),
		IntentID:     intentID,
		GhostID:      e2eGhost,
		SeedSelector: benchSeed,
		Operation:    benchOp,
		Args:         map[string]string{"message": benchMessage},
		DeliverByMS:  now.Add(time.Minute).UnixMilli(),
		TimeoutMS:    time.Minute.Milliseconds(),
	}
	ev := bus.Event{
		Header:      bus.NewHeader(bus.TypeEvent, cmd.TraceID, now),
		EventID:     bus.EventID(e2eGhost, cmd.CommandID),
		CommandID:   cmd.CommandID,
		IntentID:    intentID,
		ExecutionID: subjects.NewID(subjects.PrefixExecution),
		GhostID:     e2eGhost,
		SeedID:      benchSeed,
		Operation:   benchOp,
		Outcome:     bus.OutcomeSuccess,
		Result:      bus.Result{Status: "ok", Stdout: benchMessage},
		StartedMS:   now.UnixMilli(),
		FinishedMS:  now.UnixMilli(),
	}
	c, err := bus.Encode(&cmd)
	if err != nil {
		panic(err) // a fixed, valid envelope
	}
	e, err := bus.Encode(&ev)
	if err != nil {
		panic(err)
	}
	return payloads{cmd: c, evt: e}
}
