package bench

import (
	"fmt"

	"github.com/edgectl/edgectl/natsd"
)

// TargetFleet is the fleet size the fan-out targets are set for.
const TargetFleet = 10000

// Target is one of the performance targets (docs/performance.md) checked against a result.
type Target struct {
	Name string
	Want string
	Got  string
	Met  bool
}

// Targets checks r against the targets that apply to what it measured: a target whose
// figures were not measured (a phase left out, no 10,000-Ghost fan-out) is not listed.
func (r *Result) Targets() []Target {
	var out []Target
	if r.Raw.RatePerS > 0 && r.E2E.RatePerS > 0 {
		out = append(out,
			Target{"throughput ratio e2e/raw", "≥ 0.5", fmt.Sprintf("%.3f", r.Ratio), r.Ratio >= 0.5},
			Target{"e2e p50 latency", fmt.Sprintf("≤ 2 × raw p50 = %.3f ms", 2*r.Raw.P50MS), fmt.Sprintf("%.3f ms", r.E2E.P50MS), r.E2E.P50MS <= 2*r.Raw.P50MS})
	}
	for _, f := range r.Fanout {
		if f.Ghosts != TargetFleet || f.ReportS <= 0 {
			continue
		}
		out = append(out,
			Target{fmt.Sprintf("fan-out to %d satisfied", f.Ghosts), "satisfied", satisfied(f.Satisfied), f.Satisfied},
			Target{fmt.Sprintf("fan-out to %d vs raw floor", f.Ghosts), fmt.Sprintf("≤ 2 × raw = %.3f s", 2*f.RawS), fmt.Sprintf("%.3f s", f.ReportS), f.ReportS <= 2*f.RawS},
			Target{fmt.Sprintf("%d Ghosts registered", f.Ghosts), "≤ 10 s", fmt.Sprintf("%.3f s", f.RegisterS), f.RegisterS <= 10})
		if r.Sync == natsd.SyncInterval {
			out = append(out, Target{fmt.Sprintf("fan-out to %d, sync interval", f.Ghosts), "≤ 2 s", fmt.Sprintf("%.3f s", f.ReportS), f.ReportS <= 2})
		}
	}
	if r.GhostRSSMB > 0 {
		out = append(out, Target{"idle ghostctl RSS", "≤ 12 MB", fmt.Sprintf("%.1f MB", r.GhostRSSMB), r.GhostRSSMB <= 12})
	}
	return out
}

func satisfied(ok bool) string {
	if ok {
		return "satisfied"
	}
	return "not satisfied"
}
