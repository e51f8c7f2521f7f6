package main

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/edgectl/edgectl/ghost"
)

// ghostctl serves the Ghost's metrics and its process figures without client_golang; the
// result must still be an exposition Prometheus reads.
func TestMetricsHandler(t *testing.T) {
	rec := httptest.NewRecorder()
	metricsHandler(ghost.NewMetrics()).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("status %d, content type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("the exposition does not parse: %v", err)
	}
	want := []string{"edgectl_ghost_events_published_total", "go_goroutines", "go_memstats_heap_alloc_bytes", "go_memstats_sys_bytes"}
	if _, ok := residentBytes(); ok {
		want = append(want, "process_resident_memory_bytes", "process_open_fds")
	}
	for _, name := range want {
		f := families[name]
		if f == nil {
			t.Errorf("%s missing", name)
			continue
		}
		if v := f.GetMetric()[0]; name != "edgectl_ghost_events_published_total" && v.GetGauge().GetValue() <= 0 {
			t.Errorf("%s = %v, want a positive gauge", name, v)
		}
	}
}
