package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/edgectl/edgectl/natsd"
)

// TestRunShape runs a very short bench and checks the JSON: exactly the documented keys,
// every figure positive, the fan-out satisfied.
func TestRunShape(t *testing.T) {
	if testing.Short() {
		t.Skip("runs embedded servers, Mirage and Ghosts")
	}
	phases := []string{PhaseRaw, PhaseE2E, PhaseFanout}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// 600 Ghosts: Mirage builds and sends a fan-out's commands 256 at a time, so this one
	// takes two full batches and a part.
	res, err := Run(ctx, Config{Sync: natsd.SyncInterval, Intents: 40, Sequential: 10, Ghosts: []int{600}, Phases: phases, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	res.GhostRSSMB = 1 // the rss phase builds ghostctl: left to TestGhostRSS and CI's bench run
	data, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&got); err != nil {
		t.Fatal(err)
	}
	wantKeys(t, "result", got, "sync", "raw", "e2e", "ratio", "fanout", "ghost_rss_mb")
	if got["sync"] != natsd.SyncInterval {
		t.Errorf("sync = %v", got["sync"])
	}
	for _, k := range []string{"raw", "e2e"} {
		rate, _ := got[k].(map[string]any)
		wantKeys(t, k, rate, "rate_per_s", "p50_ms", "p99_ms")
		positive(t, k, rate, "rate_per_s", "p50_ms", "p99_ms")
	}
	positive(t, "result", got, "ratio")
	fans, _ := got["fanout"].([]any)
	if len(fans) != 1 {
		t.Fatalf("fanout = %v, want one entry", got["fanout"])
	}
	fan, _ := fans[0].(map[string]any)
	wantKeys(t, "fanout[0]", fan, "ghosts", "register_s", "report_s", "raw_s", "satisfied")
	positive(t, "fanout[0]", fan, "ghosts", "register_s", "report_s", "raw_s")
	if fan["satisfied"] != true {
		t.Errorf("fan-out to 600 Ghosts not satisfied: %v", fan)
	}
	if res.Raw.P99MS < res.Raw.P50MS || res.E2E.P99MS < res.E2E.P50MS {
		t.Errorf("p99 below p50: raw %+v, e2e %+v", res.Raw, res.E2E)
	}
}

// TestGhostRSS measures a real ghostctl process (built from this module).
func TestGhostRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs ghostctl")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{Sync: natsd.SyncInterval, Phases: []string{PhaseRSS}, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if res.GhostRSSMB == -1 {
		t.Skipf("no ghostctl: %v", res.Notes)
	}
	if res.GhostRSSMB <= 0 || res.GhostRSSMB > 1024 {
		t.Errorf("ghost_rss_mb = %v, want a plausible positive figure", res.GhostRSSMB)
	}
}

func TestConfigRefused(t *testing.T) {
	for _, cfg := range []Config{
		{Sync: "sometimes"},
		{Phases: []string{"warp"}},
		{Ghosts: []int{10, 0}},
	} {
		if _, err := Run(context.Background(), cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("Run(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
}

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 100; i++ {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want float64
	}{{0.5, 50}, {0.99, 99}, {1, 100}, {0.001, 1}} {
		if got := percentile(s, c.p); got != c.want {
			t.Errorf("percentile(%v) = %v, want %v", c.p, got, c.want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("percentile of nothing should be 0")
	}
}

func wantKeys(t *testing.T, what string, m map[string]any, keys ...string) {
	t.Helper()
	if len(m) != len(keys) {
		t.Errorf("%s has keys %v, want exactly %v", what, m, keys)
	}
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			t.Errorf("%s has no %q: %v", what, k, m)
		}
	}
}

func positive(t *testing.T, what string, m map[string]any, keys ...string) {
	t.Helper()
	for _, k := range keys {
		n, ok := m[k].(json.Number)
		if !ok {
			t.Errorf("%s.%s = %v, not a number", what, k, m[k])
			continue
		}
		if f, err := n.Float64(); err != nil || f <= 0 {
			t.Errorf("%s.%s = %v, want > 0", what, k, n)
		}
	}
}

// The opt-in flow phase measures the contract's message flow with no edgectl code; its
// figures appear in the result only when asked for.
func TestFlowPhase(t *testing.T) {
	if testing.Short() {
		t.Skip("runs embedded servers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{Sync: natsd.SyncInterval, Intents: 40, Sequential: 10, Phases: []string{PhaseRaw, PhaseFlow}, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if res.Flow == nil || res.Flow.RatePerS <= 0 || res.Flow.P50MS <= 0 || res.Flow.P99MS < res.Flow.P50MS || res.FlowRatio <= 0 {
		t.Fatalf("flow %+v, flow_ratio %v: want positive figures", res.Flow, res.FlowRatio)
	}
}
