package main

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/mirage"
)

// 'up' serves Mirage's registry and the local Ghost's metrics as one valid exposition.
func TestMetricsHandlerServesMirageAndLocalGhost(t *testing.T) {
	reg := metricsRegistry()
	mirage.NewMetrics(reg)
	for _, local := range []*ghost.Metrics{ghost.NewMetrics(), nil} {
		rec := httptest.NewRecorder()
		metricsHandler(reg, local).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if rec.Code != 200 {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		text := rec.Body.String()
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err := parser.TextToMetricFamilies(strings.NewReader(text))
		if err != nil {
			t.Fatalf("the exposition does not parse: %v\n%s", err, text)
		}
		for name := range families {
			if n := strings.Count(text, "# TYPE "+name+" "); n != 1 {
				t.Errorf("%s has %d TYPE lines, want 1", name, n)
			}
		}
		for _, name := range []string{"edgectl_mirage_commands_dispatched_total", "go_goroutines", "process_resident_memory_bytes"} {
			if families[name] == nil {
				t.Errorf("%s missing", name)
			}
		}
		_, hasGhost := families["edgectl_ghost_events_published_total"]
		if hasGhost != (local != nil) {
			t.Errorf("with local Ghost metrics %v: the Ghost's families present = %v", local != nil, hasGhost)
		}
	}
}
