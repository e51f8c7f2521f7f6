package ghost

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
)

// The Ghost's clock stepped back an hour (NTP) while a seed ran: its event still ends
// after it began, and the execution's duration in edgectl_ghost_execution_seconds is the
// time the seed ran (monotonic), not an hour negative (finished_ms less started_ms).
func TestClockSteppedBackDuringAnExecution(t *testing.T) {
	var back atomic.Int64
	now := func() time.Time { return time.Now().Add(-time.Duration(back.Load())) }
	seed := &testSeed{id: "t.step", ops: []bus.OperationInfo{op("run")}, run: func(context.Context, *bus.SeedExecute) (bus.Result, error) {
		time.Sleep(20 * time.Millisecond)
		back.Store(int64(time.Hour))
		time.Sleep(20 * time.Millisecond)
		return bus.Result{Stdout: "stepped"}, nil
	}}
	reg := NewRegistry()
	if err := reg.Add(seed); err != nil {
		t.Fatal(err)
	}
	p := NewPipeline(testGhost, reg, NewMemoryStore(), now, nil)
	out := p.Run(context.Background(), command(t, "t.step", "run"))
	out.Wait()
	if out.Event == nil || !out.Executed || out.Event.Outcome != bus.OutcomeSuccess {
		t.Fatalf("outcome %+v, want the seed run", out)
	}
	if out.Event.FinishedMS < out.Event.StartedMS {
		t.Errorf("event finished %d ms before it started", out.Event.StartedMS-out.Event.FinishedMS)
	}
	m := NewMetrics()
	m.outcome(out)
	h := scrape(t, m)[metricDuration].GetMetric()[0].GetHistogram()
	if sum := h.GetSampleSum(); sum < 0.03 || sum > 5 {
		t.Fatalf("execution recorded as %.3f s, want the 40 ms it ran", sum)
	}
}
