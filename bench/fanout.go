package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds"
)

// fleetLabel is the label the fan-out intent selects its fleet by.
const fleetLabel = "bench"

// fleet is a Mirage and n registered in-process Ghosts, from the register step of a
// fan-out to its report step.
type fleet struct {
	plane  *plane
	label  string
	conns  []*nats.Conn
	ghosts []*ghost.Ghost
	once   sync.Once
}

// close stops the Ghosts (all at once: each waits only for its own goroutines), their
// connections, then Mirage and the server.
func (f *fleet) close() {
	f.once.Do(func() {
		_ = parallel(context.Background(), len(f.ghosts), 256, func(i int) error {
			if f.ghosts[i] != nil {
				_ = f.ghosts[i].Close()
			}
			if f.conns[i] != nil {
				f.conns[i].Close()
			}
			return nil
		})
		f.plane.close()
	})
}

// register starts a server with Mirage and n in-process Ghosts, and times their
// registration: from starting them all at once (as a fleet does when Mirage comes up;
// their connections are already open) until Mirage's registry holds all n.
//
// Each Ghost has its own in-process connection (no file descriptor), hosts seed.flow and
// keeps its executions in a MemoryStore: ten thousand bbolt files would measure the disk
// of one machine standing in for ten thousand, not the control plane.
func (e *runEnv) register(ctx context.Context, res *Fan) (*fleet, error) {
	n := res.Ghosts
	p, err := e.startPlane(ctx, false)
	if err != nil {
		return nil, err
	}
	f := &fleet{plane: p, label: fmt.Sprintf("fanout-%d", n), conns: make([]*nats.Conn, n), ghosts: make([]*ghost.Ghost, n)}
	e.closers = append(e.closers, f.close)
	err = parallel(ctx, n, 64, func(i int) error {
		id := fmt.Sprintf("g%d-%05d", n, i)
		nc, err := connectGhost(ctx, p.srv, id)
		if err != nil {
			return err
		}
		f.conns[i] = nc
		reg, err := seeds.Registry([]string{seeds.Flow}, "")
		if err != nil {
			return err
		}
		f.ghosts[i], err = ghost.New(nc, ghost.Config{ID: id, Labels: map[string]string{fleetLabel: f.label}, Policy: ghost.PolicyAuto, ShutdownGrace: 5 * time.Second},
			reg, ghost.NewMemoryStore(), e.cfg.Log)
		return err
	})
	if err != nil {
		return nil, err
	}
	settle()
	t0 := time.Now()
	startErr := make(chan error, 1)
	go func() {
		startErr <- parallel(ctx, n, n, func(i int) error {
			return f.ghosts[i].Start(ctx) // auto: a registration not acknowledged is retried
		})
	}()
	registered := func() bool { return len(p.mirage.Fleet().All()) >= n }
	poll := 20 * time.Millisecond // All copies and sorts the registry: poll a large one less often
	if n > 2000 {
		poll = 100 * time.Millisecond
	}
	if err := waitFor(ctx, 10*time.Minute, poll, fmt.Sprintf("%d Ghosts to register", n), registered); err != nil {
		return nil, err
	}
	res.RegisterS = roundPositive(time.Since(t0).Seconds(), 3)
	if err := <-startErr; err != nil {
		return nil, err
	}
	return f, nil
}

// report times one intent to every Ghost of the fleet, selected by its label, from the
// issue until its terminal report.
func (f *fleet) report(ctx context.Context, res *Fan) error {
	is := newIssue(fleetLabel + "=" + f.label)
	settle()
	t0 := time.Now()
	phase, err := f.plane.run(ctx, is, intentTimeout+time.Minute)
	if err != nil {
		return err
	}
	res.ReportS = roundPositive(time.Since(t0).Seconds(), 3)
	res.Satisfied = phase == bus.PhaseSatisfied
	return nil
}
