package ghost

import (
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Metrics are a Ghost's metrics; WriteTo writes them in Prometheus' text exposition format
// (version 0.0.4). A nil *Metrics records nothing.
//
// They are written by hand rather than with client_golang: linking it (and its procfs,
// protobuf and expfmt dependencies) cost an idle ghostctl about 2 MB of its 12 MB memory
// budget for six metrics (docs/performance.md). miragectl, which has a registry anyway,
// parses this text back into it.
type Metrics struct {
	duplicates atomic.Uint64
	replayed   atomic.Uint64
	published  atomic.Uint64
	retries    atomic.Uint64

	mu       sync.Mutex
	commands map[commandLabels]uint64
	duration map[executionLabels]*histogram
}

type commandLabels struct{ outcome, class string }

type executionLabels struct{ seed, operation string }

// The metric names and help texts, as operations.md lists them.
const (
	metricCommands   = "edgectl_ghost_commands_total"
	metricDuration   = "edgectl_ghost_execution_seconds"
	metricDuplicates = "edgectl_ghost_duplicate_commands_total"
	metricReplayed   = "edgectl_ghost_replayed_commands_total"
	metricPublished  = "edgectl_ghost_events_published_total"
	metricRetries    = "edgectl_ghost_event_publish_retries_total"

	helpCommands   = "Commands that reached a terminal event, by outcome and error class."
	helpDuration   = "Time from seed.execute to seed.result."
	helpDuplicates = "Commands seen again: their recorded event was re-sent, nothing ran."
	helpReplayed   = "Commands read back from EDGE_CMD after an outage (redeliveries)."
	helpPublished  = "Events stored in EDGE_EVT."
	helpRetries    = "Event publishes retried with backoff."
)

// durationBounds are the upper bounds of edgectl_ghost_execution_seconds' buckets, 1 ms × 4ⁿ
// up to 262 s: client_golang's ExponentialBuckets(0.001, 4, 10), computed the same way so
// that the bounds print the same.
var durationBounds = func() []float64 {
	bounds := make([]float64, 10)
	for i, b := 0, 0.001; i < len(bounds); i++ {
		bounds[i] = b
		b *= 4
	}
	return bounds
}()

// histogram counts observations per bucket (not cumulative: WriteTo adds them up).
type histogram struct {
	buckets []uint64 // one per bound, then +Inf
	sum     float64
	count   uint64
}

func (h *histogram) observe(v float64) {
	h.buckets[sort.SearchFloat64s(durationBounds, v)]++
	h.sum += v
	h.count++
}

// NewMetrics returns a Ghost's metrics, all zero.
func NewMetrics() *Metrics {
	return &Metrics{commands: map[commandLabels]uint64{}, duration: map[executionLabels]*histogram{}}
}

func (m *Metrics) outcome(out Outcome) {
	if m == nil || out.Event == nil {
		return
	}
	if out.Duplicate {
		m.duplicates.Add(1)
		return
	}
	class := ""
	if out.Event.Error != nil {
		class = out.Event.Error.Class
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.commands[commandLabels{out.Event.Outcome, class}]++
	if out.Executed {
		// Monotonic: finished_ms less started_ms moves with a step of the wall clock during
		// the run (an hour back made it an hour negative).
		d := out.Took
		if d == 0 { // an outcome not timed (none the pipeline returns)
			d = time.Duration(max(out.Event.FinishedMS-out.Event.StartedMS, 0)) * time.Millisecond
		}
		key := executionLabels{out.Event.SeedID, out.Event.Operation}
		h := m.duration[key]
		if h == nil {
			h = &histogram{buckets: make([]uint64, len(durationBounds)+1)}
			m.duration[key] = h
		}
		h.observe(d.Seconds())
	}
}

func (m *Metrics) replay() {
	if m != nil {
		m.replayed.Add(1)
	}
}

func (m *Metrics) publishedEvent() {
	if m != nil {
		m.published.Add(1)
	}
}

func (m *Metrics) retry() {
	if m != nil {
		m.retries.Add(1)
	}
}

// WriteTo writes the metrics in Prometheus' text exposition format, families in name order
// and samples in label order. A labelled family with no samples yet is left out, as
// client_golang does.
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	m.writeCommands(&b)
	writeCounter(&b, metricDuplicates, helpDuplicates, m.duplicates.Load())
	writeCounter(&b, metricRetries, helpRetries, m.retries.Load())
	writeCounter(&b, metricPublished, helpPublished, m.published.Load())
	m.writeDuration(&b)
	writeCounter(&b, metricReplayed, helpReplayed, m.replayed.Load())
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

func (m *Metrics) writeCommands(b *strings.Builder) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.commands) == 0 {
		return
	}
	writeHeader(b, metricCommands, helpCommands, "counter")
	for _, k := range sortedKeys(m.commands, func(k commandLabels) string { return k.outcome + "\x00" + k.class }) {
		writeSample(b, metricCommands, []string{"outcome", k.outcome, "class", k.class}, strconv.FormatUint(m.commands[k], 10))
	}
}

func (m *Metrics) writeDuration(b *strings.Builder) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.duration) == 0 {
		return
	}
	writeHeader(b, metricDuration, helpDuration, "histogram")
	for _, k := range sortedKeys(m.duration, func(k executionLabels) string { return k.seed + "\x00" + k.operation }) {
		h := m.duration[k]
		labels := []string{"seed", k.seed, "operation", k.operation}
		var cumulative uint64
		for i, n := range h.buckets {
			cumulative += n
			le := "+Inf"
			if i < len(durationBounds) {
				le = formatFloat(durationBounds[i])
			}
			bucket := []string{"seed", k.seed, "operation", k.operation, "le", le}
			writeSample(b, metricDuration+"_bucket", bucket, strconv.FormatUint(cumulative, 10))
		}
		writeSample(b, metricDuration+"_sum", labels, formatFloat(h.sum))
		writeSample(b, metricDuration+"_count", labels, strconv.FormatUint(h.count, 10))
	}
}

func writeCounter(b *strings.Builder, name, help string, v uint64) {
	writeHeader(b, name, help, "counter")
	writeSample(b, name, nil, strconv.FormatUint(v, 10))
}

func writeHeader(b *strings.Builder, name, help, kind string) {
	b.WriteString("# HELP " + name + " " + helpEscaper.Replace(help) + "\n")
	b.WriteString("# TYPE " + name + " " + kind + "\n")
}

// writeSample writes one sample line; labels are name, value pairs.
func writeSample(b *strings.Builder, name string, labels []string, value string) {
	b.WriteString(name)
	if len(labels) > 0 {
		b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(labels[i] + `="` + labelEscaper.Replace(labels[i+1]) + `"`)
		}
		b.WriteByte('}')
	}
	b.WriteString(" " + value + "\n")
}

// The escapes of the text format: a help text escapes backslash and newline, a label value
// the double quote too.
var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

// formatFloat prints a float as client_golang does: the shortest representation.
func formatFloat(f float64) string {
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// sortedKeys returns the keys of m in the order of their sort strings, so that the
// exposition lists label sets the same way every time.
func sortedKeys[K comparable, V any](m map[K]V, sortBy func(K) string) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(x, y K) int { return strings.Compare(sortBy(x), sortBy(y)) })
	return keys
}
