package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/subjects"
)

var errFailedIntents = errors.New("intents did not end satisfied")

// e2eGhost is the id of the one Ghost of the e2e measurement.
const e2eGhost = "bench-e2e"

// intentTimeout is the timeout_ms of bench intents: long enough never to be what ends one.
const intentTimeout = 2 * time.Minute

// plane is a Mirage and a client on a fresh embedded server.
type plane struct {
	srv     *natsd.Server
	mirage  *mirage.Mirage
	client  *mirage.Client
	tracker *tracker
	closers []func()
}

func (p *plane) close() {
	for i := len(p.closers) - 1; i >= 0; i-- {
		p.closers[i]()
	}
}

// startPlane starts a server, Mirage on its own connection, and a client on another that
// follows every report.
func (e *runEnv) startPlane(ctx context.Context, listen bool) (*plane, error) {
	srv, stop, err := e.startServer(listen)
	if err != nil {
		return nil, err
	}
	p := &plane{srv: srv, closers: []func(){stop}}
	mc, err := connect(ctx, srv, "mirage")
	if err != nil {
		p.close()
		return nil, err
	}
	p.closers = append(p.closers, mc.Close)
	m, err := mirage.New(ctx, mc, mirage.Config{ID: "bench"}, e.cfg.Log)
	if err != nil {
		p.close()
		return nil, err
	}
	if err := m.Start(ctx); err != nil {
		p.close()
		return nil, err
	}
	p.mirage = m
	p.closers = append(p.closers, func() { _ = m.Close() })
	cc, err := connect(ctx, srv, "bench client")
	if err != nil {
		p.close()
		return nil, err
	}
	p.closers = append(p.closers, cc.Close)
	if p.client, err = mirage.NewClient(cc); err != nil {
		p.close()
		return nil, err
	}
	if p.tracker, err = startTracker(ctx, cc); err != nil {
		p.close()
		return nil, err
	}
	p.closers = append(p.closers, p.tracker.stop)
	return p, nil
}

// tracker follows every report through one ordered consumer on report.* and tells the
// waiter of an intent its terminal phase: one consumer for the whole run rather than one
// per intent, so that following reports costs the bench little.
type tracker struct {
	cc    jetstream.ConsumeContext
	mu    sync.Mutex
	waits map[string]chan string
}

func startTracker(ctx context.Context, nc *nats.Conn) (*tracker, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	cons, err := js.OrderedConsumer(ctx, bus.StreamReports, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subjects.AllReports},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return nil, err
	}
	t := &tracker{waits: map[string]chan string{}}
	if t.cc, err = cons.Consume(t.onReport); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *tracker) stop() { t.cc.Stop() }

// expect returns the channel that receives the terminal phase of intentID; call it
// before issuing.
func (t *tracker) expect(intentID string) <-chan string {
	ch := make(chan string, 1)
	t.mu.Lock()
	t.waits[intentID] = ch
	t.mu.Unlock()
	return ch
}

func (t *tracker) forget(intentID string) {
	t.mu.Lock()
	delete(t.waits, intentID)
	t.mu.Unlock()
}

var phaseKey = []byte(`"phase":"`)

func (t *tracker) onReport(msg jetstream.Msg) {
	// The first "phase" key of a report envelope is its own (a nested one would be escaped
	// inside a string), so the whole report need not be decoded.
	data := msg.Data()
	i := bytes.Index(data, phaseKey)
	if i < 0 {
		return
	}
	rest := data[i+len(phaseKey):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return
	}
	phase := string(rest[:j])
	if !bus.Terminal(phase) {
		return
	}
	id := strings.TrimPrefix(msg.Subject(), subjects.Report(""))
	t.mu.Lock()
	ch, ok := t.waits[id]
	delete(t.waits, id)
	t.mu.Unlock()
	if ok {
		ch <- phase
	}
}

func newIssue(scope string) *bus.Issue {
	return &bus.Issue{
		Header:      bus.NewHeader(bus.TypeIssue, "", time.Now()),
		IntentID:    subjects.NewID(subjects.PrefixIntent),
		Actor:       "bench",
		TargetScope: scope,
		Objective:   bus.Objective{SeedSelector: benchSeed, Operation: benchOp, Args: map[string]string{"message": benchMessage}},
		TimeoutMS:   intentTimeout.Milliseconds(),
	}
}

// run issues is and waits for its terminal phase. An issue whose acceptance Mirage did not
// answer within the client's 5 s is still followed: Mirage answers only once every
// command is stored, which a large fan-out may take longer than that to do.
func (p *plane) run(ctx context.Context, is *bus.Issue, wait time.Duration) (string, error) {
	ch := p.tracker.expect(is.IntentID)
	if _, err := p.client.Issue(ctx, is); err != nil && !errors.Is(err, mirage.ErrNoMirage) {
		p.tracker.forget(is.IntentID)
		return "", err
	}
	select {
	case phase := <-ch:
		return phase, nil
	case <-ctx.Done():
		return "", ctx.Err()
	case <-time.After(wait):
		p.tracker.forget(is.IntentID)
		return "", fmt.Errorf("intent %s: no terminal report after %s", is.IntentID, wait)
	}
}

// e2e measures single-target intents through Mirage and one Ghost (seed.flow, durable
// bbolt execution store): intents/s reaching a terminal report with InFlight intents in
// flight, then the issue → terminal report latency of intents sent one at a time.
func (e *runEnv) e2e(ctx context.Context) (Rate, error) {
	p, err := e.startPlane(ctx, false)
	if err != nil {
		return Rate{}, err
	}
	defer p.close()
	gc, err := connectGhost(ctx, p.srv, e2eGhost)
	if err != nil {
		return Rate{}, err
	}
	defer gc.Close()
	state := filepath.Join(e.dir, "ghost-"+e2eGhost)
	store, err := ghost.OpenBoltStore(filepath.Join(state, "executions.db"), ghost.BoltOptions{})
	if err != nil {
		return Rate{}, err
	}
	defer store.Close()
	reg, err := seeds.Registry([]string{seeds.Flow}, state)
	if err != nil {
		return Rate{}, err
	}
	g, err := ghost.New(gc, ghost.Config{ID: e2eGhost, Policy: ghost.PolicyRequired, ShutdownGrace: 5 * time.Second}, reg, store, e.cfg.Log)
	if err != nil {
		return Rate{}, err
	}
	if err := g.Start(ctx); err != nil {
		return Rate{}, err
	}
	defer g.Close()

	var bad atomic.Int64
	r, err := e.intentRates(ctx, func() error {
		phase, err := p.run(ctx, newIssue(e2eGhost), intentTimeout)
		if err == nil && phase != bus.PhaseSatisfied {
			bad.Add(1)
		}
		return err
	})
	if err == nil && bad.Load() > 0 {
		err = fmt.Errorf("%d: %w", bad.Load(), errFailedIntents)
	}
	return r, err
}

// intentRates measures one(), which runs one intent to its end: a warm-up of 20, then
// --intents with InFlight at once (throughput), then Sequential one at a time (latency).
// Each timed batch starts from a collected heap.
func (e *runEnv) intentRates(ctx context.Context, one func() error) (Rate, error) {
	batch := func(n, inFlight int) (time.Duration, []time.Duration, error) {
		lat := make([]time.Duration, n)
		sem := make(chan struct{}, inFlight)
		var wg sync.WaitGroup
		var firstErr atomic.Value
		settle()
		t0 := time.Now()
		for i := 0; i < n; i++ {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				wg.Wait()
				return 0, nil, ctx.Err()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				start := time.Now()
				if err := one(); err != nil {
					firstErr.CompareAndSwap(nil, err)
				}
				lat[i] = time.Since(start)
			}()
		}
		wg.Wait()
		took := time.Since(t0)
		if err, _ := firstErr.Load().(error); err != nil {
			return 0, nil, err
		}
		return took, lat, nil
	}
	if _, _, err := batch(min(20, e.cfg.Intents), e.cfg.InFlight); err != nil { // warm-up
		return Rate{}, err
	}
	took, _, err := batch(e.cfg.Intents, e.cfg.InFlight)
	if err != nil {
		return Rate{}, err
	}
	_, lat, err := batch(e.cfg.Sequential, 1)
	if err != nil {
		return Rate{}, err
	}
	return rate(e.cfg.Intents, took, lat), nil
}
