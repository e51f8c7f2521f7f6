package test

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// gather returns Mirage's families (reg) and the Ghost's (its text exposition, parsed).
func gather(t *testing.T, reg *prometheus.Registry, gm *ghost.Metrics) []*dto.MetricFamily {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if _, err := gm.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	byName, err := parser.TextToMetricFamilies(&b)
	if err != nil {
		t.Fatalf("the Ghost's metrics: %v", err)
	}
	for _, f := range byName {
		families = append(families, f)
	}
	return families
}

// sum adds up every sample of a metric family whose labels include want.
func sum(families []*dto.MetricFamily, name string, want map[string]string) float64 {
	total := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				total += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				total += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				total += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return total
}

// The counters move with the work: commands by outcome, execution durations, events
// ingested, intents by phase, Ghosts by status.
func TestMetricsMove(t *testing.T) {
	env := testenv.New(t)
	reg := prometheus.NewRegistry()
	m := env.StartMirage(mirage.Config{Metrics: mirage.NewMetrics(reg)})
	m.Observe(reg)
	gm := ghost.NewMetrics()
	env.StartGhost("edge-m", testenv.Tune(func(c *ghost.Config) { c.Metrics = gm }))
	client := env.Client()
	for i := 0; i < 3; i++ {
		env.Run(client, testenv.NewIssue("edge-m", "seed.flow", "status", nil, 5*time.Second))
	}
	env.Run(client, testenv.NewIssue("edge-m", "seed.kv", "get", map[string]string{"key": "absent"}, 5*time.Second))
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"edgectl_ghost_commands_total", map[string]string{"outcome": bus.OutcomeSuccess}, 3},
		{"edgectl_ghost_commands_total", map[string]string{"outcome": bus.OutcomeError, "class": bus.ClassRuntime}, 1},
		{"edgectl_ghost_execution_seconds", map[string]string{"seed": "seed.flow", "operation": "status"}, 3},
		{"edgectl_ghost_events_published_total", nil, 4},
		{"edgectl_mirage_commands_dispatched_total", nil, 4},
		{"edgectl_mirage_events_ingested_total", map[string]string{"verdict": "counted"}, 4},
		{"edgectl_mirage_intents_finished_total", map[string]string{"phase": bus.PhaseSatisfied}, 3},
		{"edgectl_mirage_intents_finished_total", map[string]string{"phase": bus.PhaseFailed}, 1},
		{"edgectl_mirage_command_results_total", map[string]string{"outcome": bus.OutcomeError}, 1},
		{"edgectl_mirage_ghosts", map[string]string{"status": mirage.StatusOnline}, 1},
	}
	// Counted as the work is done, not before the report: a command is counted dispatched
	// once its store ack is read, which may come after its intent's report.
	var wrong []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		families := gather(t, reg, gm)
		wrong = wrong[:0]
		for _, c := range checks {
			if got := sum(families, c.name, c.labels); got != c.want {
				wrong = append(wrong, fmt.Sprintf("%s%v = %v, want %v", c.name, c.labels, got, c.want))
			}
		}
		if len(wrong) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, w := range wrong {
		t.Error(w)
	}
}
