package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
)

// localGhostRetry is how often 'up' tries to start its local Ghost again once another
// instance of the id took it (localGhost).
const localGhostRetry = 2 * time.Second

// localGhost runs the Ghost "local" beside Mirage, and starts it again when it stood
// down because another live instance keeps the id. That happens when two 'up' share a
// deployment: one stopped (SIGSTOP) while the other started, then resumed, keeps "local"
// (of two Ghosts the one started first stays: ghost/idprobe.go) while its Mirage stands
// down for the other's (mirage/singleton.go) and its 'up' exits, taking that Ghost along.
// Without a new start, the 'up' that stays would serve with no local Ghost at all.
type localGhost struct {
	ctx   context.Context
	start func(context.Context) (*ghost.Ghost, func() error, error)
	log   *slog.Logger
	fails bus.RateLog

	mu   sync.Mutex
	stop func() error // the running Ghost's; nil between runs
	quit chan struct{}
	done chan struct{}
}

// runLocalGhost starts the local Ghost with start and watches it until Close.
func runLocalGhost(ctx context.Context, start func(context.Context) (*ghost.Ghost, func() error, error), log *slog.Logger) (*localGhost, error) {
	g, stop, err := start(ctx)
	if err != nil {
		return nil, err
	}
	lg := &localGhost{ctx: ctx, start: start, log: log, stop: stop, quit: make(chan struct{}), done: make(chan struct{})}
	go lg.watch(g)
	return lg, nil
}

func (lg *localGhost) watch(g *ghost.Ghost) {
	defer close(lg.done)
	for {
		select {
		case <-lg.quit:
			return
		case <-g.Done():
		}
		// It closed itself; its connection and store are closed here.
		lg.mu.Lock()
		stop := lg.stop
		lg.stop = nil
		lg.mu.Unlock()
		_ = stop()
		lg.log.Error("the local Ghost stopped: another instance of ghost id "+LocalGhostID+" keeps the id; starting it again once that one is gone",
			"component", "miragectl", "err", g.Err(), "retry_every", localGhostRetry)
		if g = lg.restart(); g == nil {
			return
		}
	}
}

// restart starts the local Ghost again every localGhostRetry until it serves (its Ghost)
// or up stops (nil).
func (lg *localGhost) restart() *ghost.Ghost {
	for {
		select {
		case <-lg.quit:
			return nil
		case <-time.After(localGhostRetry):
		}
		g, stop, err := lg.start(lg.ctx)
		if err != nil {
			if ok, n := lg.fails.Allow(); ok {
				lg.log.Warn("the local Ghost cannot start yet; retrying", "component", "miragectl", "err", err, "attempts", n)
			}
			continue
		}
		lg.mu.Lock()
		lg.stop = stop
		lg.mu.Unlock()
		lg.log.Info("the local Ghost serves again", "component", "miragectl", "ghost_id", LocalGhostID)
		return g
	}
}

// Close stops the watch, then the Ghost if it runs.
func (lg *localGhost) Close() error {
	close(lg.quit)
	<-lg.done
	lg.mu.Lock()
	stop := lg.stop
	lg.stop = nil
	lg.mu.Unlock()
	if stop == nil {
		return nil
	}
	return stop()
}
