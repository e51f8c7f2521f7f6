package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// ServeMetrics serves the metrics handler h on http://addr/metrics until the returned stop
// is called. It fails at once when addr is not HOST:PORT (exit 2) or cannot be listened
// on (exit 3). The handler is the caller's:
// miragectl serves a Prometheus registry, ghostctl its own exposition (no client_golang in
// the agent).
func ServeMetrics(addr string, h http.Handler, log *slog.Logger) (stop func(), err error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, Invalid("--metrics-listen %q: expected HOST:PORT", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		// A well-formed address that cannot be listened on (in use, not this host's) is
		// the environment, not the input: exit 3, as docs/operations.md says.
		return nil, Exit(ExitUnavailable, fmt.Errorf("--metrics-listen %s: %v", addr, err))
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving Prometheus metrics", "url", fmt.Sprintf("http://%s/metrics", ln.Addr()))
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}
