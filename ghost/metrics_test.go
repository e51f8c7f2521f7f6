package ghost

import (
	"bytes"
	"math"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/edgectl/edgectl/bus"
)

// scrape writes m and parses it back as Prometheus does; a format error fails the test.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	var b bytes.Buffer
	if _, err := m.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	text := b.String()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(&b)
	if err != nil {
		t.Fatalf("the exposition does not parse: %v\n%s", err, text)
	}
	for name := range families {
		if n := strings.Count(text, "# TYPE "+name+" "); n != 1 {
			t.Errorf("%s has %d TYPE lines, want 1", name, n)
		}
	}
	return families
}

func labelsOf(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func TestMetricsExposition(t *testing.T) {
	m := NewMetrics()
	// Before any command: the plain counters at zero, no labelled family.
	families := scrape(t, m)
	if len(families) != 4 {
		t.Errorf("an idle Ghost exposes %d families, want the 4 plain counters", len(families))
	}
	if f := families[metricDuplicates]; f == nil || f.GetType() != dto.MetricType_COUNTER || f.GetMetric()[0].GetCounter().GetValue() != 0 {
		t.Errorf("%s = %v, want a counter at 0", metricDuplicates, f)
	}

	event := func(outcome, class, seed, op string, ms int64) *bus.Event {
		e := &bus.Event{SeedID: seed, Operation: op, Outcome: outcome, StartedMS: 1000, FinishedMS: 1000 + ms}
		if class != "" {
			e.Error = &bus.Error{Class: class}
		}
		return e
	}
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			m.outcome(Outcome{Event: event(bus.OutcomeSuccess, "", "seed.flow", "status", 3), Executed: true})
		})
	}
	wg.Wait()
	m.outcome(Outcome{Event: event(bus.OutcomeSuccess, "", "seed.flow", "status", 5000), Executed: true})
	m.outcome(Outcome{Event: event(bus.OutcomeError, bus.ClassRuntime, "seed.kv", "get", 0), Executed: true})
	m.outcome(Outcome{Event: event(bus.OutcomeError, bus.ClassSecurity, "seed.kv", "get", 0)}) // refused: not executed
	m.outcome(Outcome{Event: event(bus.OutcomeSuccess, "", "seed.flow", "status", 1), Duplicate: true})
	m.outcome(Outcome{}) // another delivery still executing: nothing to count
	// A label value that needs escaping in the text format.
	m.outcome(Outcome{Event: event(bus.OutcomeSuccess, "", `seed."odd"\`, "line\nbreak", 1), Executed: true})
	m.replay()
	m.replay()
	m.publishedEvent()
	m.retry()
	var nilMetrics *Metrics // records nothing, does not panic
	nilMetrics.outcome(Outcome{Event: event(bus.OutcomeSuccess, "", "s", "o", 1)})
	nilMetrics.replay()

	families = scrape(t, m)
	counters := map[string]float64{metricDuplicates: 1, metricReplayed: 2, metricPublished: 1, metricRetries: 1}
	for name, want := range counters {
		if got := families[name].GetMetric()[0].GetCounter().GetValue(); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	helps := map[string]string{
		metricCommands: helpCommands, metricDuration: helpDuration, metricDuplicates: helpDuplicates,
		metricReplayed: helpReplayed, metricPublished: helpPublished, metricRetries: helpRetries,
	}
	for name, help := range helps {
		if got := families[name].GetHelp(); got != help {
			t.Errorf("%s help = %q, want %q", name, got, help)
		}
	}

	commands := families[metricCommands]
	if commands.GetType() != dto.MetricType_COUNTER {
		t.Errorf("%s type = %v", metricCommands, commands.GetType())
	}
	byLabels := map[[2]string]float64{}
	for _, c := range commands.GetMetric() {
		l := labelsOf(c)
		byLabels[[2]string{l["outcome"], l["class"]}] = c.GetCounter().GetValue()
	}
	wantCommands := map[[2]string]float64{
		{bus.OutcomeSuccess, ""}:              5,
		{bus.OutcomeError, bus.ClassRuntime}:  1,
		{bus.OutcomeError, bus.ClassSecurity}: 1,
	}
	if len(byLabels) != len(wantCommands) {
		t.Errorf("%s = %v, want %v", metricCommands, byLabels, wantCommands)
	}
	for k, want := range wantCommands {
		if byLabels[k] != want {
			t.Errorf("%s%v = %v, want %v", metricCommands, k, byLabels[k], want)
		}
	}

	duration := families[metricDuration]
	if duration.GetType() != dto.MetricType_HISTOGRAM || len(duration.GetMetric()) != 3 {
		t.Fatalf("%s: type %v, %d series; want a histogram of 3 (seed, operation) pairs", metricDuration, duration.GetType(), len(duration.GetMetric()))
	}
	bounds := prometheus.ExponentialBuckets(0.001, 4, 10)
	var flow, odd *dto.Histogram
	for _, s := range duration.GetMetric() {
		switch l := labelsOf(s); {
		case l["seed"] == "seed.flow" && l["operation"] == "status":
			flow = s.GetHistogram()
		case l["seed"] == `seed."odd"\` && l["operation"] == "line\nbreak":
			odd = s.GetHistogram()
		}
	}
	if flow == nil || odd == nil {
		t.Fatalf("%s lacks the series of seed.flow status or the one whose labels need escaping: %v", metricDuration, duration)
	}
	if flow.GetSampleCount() != 4 || math.Abs(flow.GetSampleSum()-5.009) > 1e-9 {
		t.Errorf("seed.flow status: count %d sum %v, want 4 and 5.009", flow.GetSampleCount(), flow.GetSampleSum())
	}
	bounds = append(bounds, math.Inf(1))
	if len(flow.GetBucket()) != len(bounds) {
		t.Fatalf("%d buckets, want %d", len(flow.GetBucket()), len(bounds))
	}
	for i, b := range flow.GetBucket() {
		if b.GetUpperBound() != bounds[i] {
			t.Errorf("bucket %d bound %v, want %v (ExponentialBuckets(0.001, 4, 10), +Inf)", i, b.GetUpperBound(), bounds[i])
		}
		want := uint64(3) // the three 3 ms executions from the 4 ms bucket up
		switch {
		case bounds[i] < 0.003:
			want = 0
		case bounds[i] >= 5:
			want = 4
		}
		if b.GetCumulativeCount() != want {
			t.Errorf("bucket le=%v holds %d, want %d", bounds[i], b.GetCumulativeCount(), want)
		}
	}
}
