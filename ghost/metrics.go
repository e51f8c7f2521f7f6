package ghost

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are a Ghost's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	commands   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	duplicates prometheus.Counter
	replayed   prometheus.Counter
	published  prometheus.Counter
	retries    prometheus.Counter
}

// NewMetrics registers a Ghost's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgectl_ghost_commands_total", Help: "Commands that reached a terminal event, by outcome and error class.",
		}, []string{"outcome", "class"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "edgectl_ghost_execution_seconds", Help: "Time from seed.execute to seed.result.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"seed", "operation"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgectl_ghost_duplicate_commands_total", Help: "Commands seen again: their recorded event was re-sent, nothing ran.",
		}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgectl_ghost_replayed_commands_total", Help: "Commands read back from EDGE_CMD after an outage (redeliveries).",
		}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgectl_ghost_events_published_total", Help: "Events stored in EDGE_EVT.",
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgectl_ghost_event_publish_retries_total", Help: "Event publishes retried with backoff.",
		}),
	}
	reg.MustRegister(m.commands, m.duration, m.duplicates, m.replayed, m.published, m.retries)
	return m
}

func (m *Metrics) outcome(out Outcome) {
	if m == nil || out.Event == nil {
		return
	}
	if out.Duplicate {
		m.duplicates.Inc()
		return
	}
	class := ""
	if out.Event.Error != nil {
		class = out.Event.Error.Class
	}
	m.commands.WithLabelValues(out.Event.Outcome, class).Inc()
	if out.Executed {
		d := time.Duration(out.Event.FinishedMS-out.Event.StartedMS) * time.Millisecond
		m.duration.WithLabelValues(out.Event.SeedID, out.Event.Operation).Observe(d.Seconds())
	}
}

func (m *Metrics) replay() {
	if m != nil {
		m.replayed.Inc()
	}
}

func (m *Metrics) publishedEvent() {
	if m != nil {
		m.published.Inc()
	}
}

func (m *Metrics) retry() {
	if m != nil {
		m.retries.Inc()
	}
}
