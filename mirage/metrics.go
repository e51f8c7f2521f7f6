package mirage

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are Mirage's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	dispatched  prometheus.Counter
	events      *prometheus.CounterVec
	results     *prometheus.CounterVec
	redelivered prometheus.Counter
	finished    *prometheus.CounterVec
}

// NewMetrics registers Mirage's metrics with reg. Mirage.Observe adds the gauges read
// from its state when scraped.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	x := &Metrics{
		dispatched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgectl_mirage_commands_dispatched_total", Help: "Commands stored in EDGE_CMD (re-dispatches included).",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgectl_mirage_events_ingested_total", Help: "Events read from EDGE_EVT, by verdict (counted, duplicate, rejected).",
		}, []string{"verdict"}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgectl_mirage_command_results_total", Help: "Commands of finished intents by terminal outcome (success, error, timeout, expired, skipped).",
		}, []string{"outcome"}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgectl_mirage_event_redeliveries_total", Help: "Events JetStream delivered to Mirage more than once.",
		}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgectl_mirage_intents_finished_total", Help: "Intents that reached a terminal phase, by phase.",
		}, []string{"phase"}),
	}
	reg.MustRegister(x.dispatched, x.events, x.results, x.redelivered, x.finished)
	return x
}

// Observe registers the gauges that read Mirage's state when scraped: Ghosts by presence
// status and open intents by phase.
func (m *Mirage) Observe(reg prometheus.Registerer) {
	ghosts := prometheus.NewDesc("edgectl_mirage_ghosts", "Registered Ghosts by presence status.", []string{"status"}, nil)
	intents := prometheus.NewDesc("edgectl_mirage_intents", "Open intents by phase.", []string{"phase"}, nil)
	reg.MustRegister(collector{descs: []*prometheus.Desc{ghosts, intents}, collect: func(ch chan<- prometheus.Metric) {
		byStatus := map[string]int{StatusOnline: 0, StatusStale: 0, StatusOffline: 0}
		// Mirage's clock, which stamped last_seen_ms (on the server's time when its own
		// is off: serverclock.go), as its other presence judgements (targets.go) use.
		now := m.cfg.Now()
		for _, g := range m.fleet.All() {
			byStatus[g.Status(now)]++
		}
		for s, n := range byStatus {
			ch <- prometheus.MustNewConstMetric(ghosts, prometheus.GaugeValue, float64(n), s)
		}
		byPhase := map[string]int{"pending": 0, "in_progress": 0}
		m.mu.Lock()
		for _, li := range m.live {
			byPhase[li.phase()]++
		}
		m.mu.Unlock()
		for p, n := range byPhase {
			ch <- prometheus.MustNewConstMetric(intents, prometheus.GaugeValue, float64(n), p)
		}
	}})
}

type collector struct {
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }

func (x *Metrics) dispatch(n int) {
	if x != nil {
		x.dispatched.Add(float64(n))
	}
}

var verdictNames = [...]string{verdictCounted: "counted", verdictDuplicate: "duplicate", verdictRejected: "rejected"}

func (x *Metrics) event(v verdict, redelivered bool) {
	if x == nil {
		return
	}
	x.events.WithLabelValues(verdictNames[v]).Inc()
	if redelivered {
		x.redelivered.Inc()
	}
}

func (x *Metrics) intentFinished(phase string, outcomes []string) {
	if x == nil {
		return
	}
	x.finished.WithLabelValues(phase).Inc()
	for _, o := range outcomes {
		x.results.WithLabelValues(o).Inc()
	}
}
