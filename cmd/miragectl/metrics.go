package main

import (
	"bytes"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/edgectl/edgectl/ghost"
)

// metricsRegistry returns a registry with the Go runtime and process collectors.
func metricsRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// metricsHandler serves Mirage's registry and, when local is not nil, the local Ghost's
// metrics with it, as one exposition.
func metricsHandler(reg *prometheus.Registry, local *ghost.Metrics) http.Handler {
	gatherers := prometheus.Gatherers{reg}
	if local != nil {
		gatherers = append(gatherers, ghostGatherer(local))
	}
	return promhttp.HandlerFor(gatherers, promhttp.HandlerOpts{Registry: reg})
}

// ghostGatherer reads a Ghost's metrics back from their text format (ghost.Metrics does
// without client_golang, for the agent's sake), so that the registry's families and the
// Ghost's are merged and checked as any gatherer's: one HELP and TYPE per family.
func ghostGatherer(m *ghost.Metrics) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		var b bytes.Buffer
		if _, err := m.WriteTo(&b); err != nil {
			return nil, err
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		byName, err := parser.TextToMetricFamilies(&b)
		if err != nil {
			return nil, fmt.Errorf("the local Ghost's metrics: %w", err)
		}
		families := make([]*dto.MetricFamily, 0, len(byName))
		for _, f := range byName {
			families = append(families, f)
		}
		return families, nil
	})
}
