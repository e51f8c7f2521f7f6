package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/subjects"
)

// The raw measurements use streams of their own, configured as EDGE_CMD and EDGE_EVT are
// (bus.EnsureAssets): file storage, the run's sync setting, the same retention, duplicate
// window and size limit, and every message carries a Nats-Msg-Id.
const (
	rawCmdStream  = "RAW_CMD"
	rawEvtStream  = "RAW_EVT"
	rawCmdSubject = "rawcmd"
	rawEvtSubject = "rawevt"
)

func createRawStreams(ctx context.Context, js jetstream.JetStream) error {
	for _, sc := range []jetstream.StreamConfig{
		{Name: rawCmdStream, Subjects: []string{rawCmdSubject + ".*"}, MaxAge: bus.CommandRetention},
		{Name: rawEvtStream, Subjects: []string{rawEvtSubject + ".*"}, MaxAge: bus.EventRetention},
	} {
		sc.Duplicates = bus.DuplicateWindow
		sc.MaxMsgSize = bus.MaxEnvelope
		sc.AllowDirect = true
		sc.Storage = jetstream.FileStorage
		sc.Replicas = 1
		sc.Retention = jetstream.LimitsPolicy
		sc.Discard = jetstream.DiscardOld
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("raw stream %s: %w", sc.Name, err)
		}
	}
	return nil
}

// connect opens an in-process connection configured as a daemon's (bus.Connect).
func connect(ctx context.Context, srv *natsd.Server, name string) (*nats.Conn, error) {
	return bus.Connect(ctx, bus.ConnConfig{InProcess: srv, Name: name, Persistent: true})
}

// connectGhost opens a Ghost's connection as ghostctl does (bus.GhostRequests).
func connectGhost(ctx context.Context, srv *natsd.Server, id string) (*nats.Conn, error) {
	return bus.Connect(ctx, bus.ConnConfig{InProcess: srv, Name: "ghost " + id, Persistent: true, Options: []nats.Option{bus.GhostRequests()}})
}

// rawMsg carries the headers every stored edgectl envelope carries: Nats-Msg-Id and a
// traceparent of the same size.
func rawMsg(subject, id string, data []byte) *nats.Msg {
	return &nats.Msg{Subject: subject, Data: data, Header: nats.Header{
		bus.HeaderMsgID:       []string{id},
		bus.HeaderTraceparent: []string{rawTraceparent},
	}}
}

var rawTraceparent = bus.Traceparent(subjects.NewTraceID())

// rawFactor is how many raw double hops the throughput run sends per intent of e2e's.
const rawFactor = 5

// hopBatch is one batch of raw double hops: message i is published at start[i] and done
// when its event reaches the event consumer.
type hopBatch struct {
	id    int
	start []atomic.Int64 // unix ns
	lat   []time.Duration
	sem   chan struct{}
	left  atomic.Int64
	done  chan struct{}
}

// rawDoubleHop is the floor under e2e, with no edgectl code: one connection publishes
// commands into RAW_CMD (asynchronously, at most InFlight unanswered); a second one reads
// them through a consumer (no acks, as a Ghost keeps no consumer) and publishes one event
// each into RAW_EVT; the first reads those through a consumer with explicit acks, as
// Mirage does. A hop is done when its event is read.
func (e *runEnv) rawDoubleHop(ctx context.Context) (Rate, error) {
	srv, stop, err := e.startServer(false)
	if err != nil {
		return Rate{}, err
	}
	defer stop()
	mc, err := connect(ctx, srv, "raw mirage")
	if err != nil {
		return Rate{}, err
	}
	defer mc.Close()
	gc, err := connect(ctx, srv, "raw ghost")
	if err != nil {
		return Rate{}, err
	}
	defer gc.Close()
	var pubErr atomic.Value
	onErr := jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) { pubErr.Store(err) })
	mjs, err := jetstream.New(mc, onErr)
	if err != nil {
		return Rate{}, err
	}
	gjs, err := jetstream.New(gc, onErr)
	if err != nil {
		return Rate{}, err
	}
	if err := createRawStreams(ctx, mjs); err != nil {
		return Rate{}, err
	}
	gcons, err := gjs.CreateOrUpdateConsumer(ctx, rawCmdStream, jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return Rate{}, err
	}
	gcc, err := gcons.Consume(func(m jetstream.Msg) {
		id := strings.TrimPrefix(m.Headers().Get(bus.HeaderMsgID), "c")
		if _, err := gjs.PublishMsgAsync(rawMsg(rawEvtSubject+".g", "e"+id, e.pl.evt)); err != nil {
			pubErr.Store(err)
		}
	})
	if err != nil {
		return Rate{}, err
	}
	defer gcc.Stop()
	var cur atomic.Pointer[hopBatch]
	mcons, err := mjs.CreateOrUpdateConsumer(ctx, rawEvtStream, jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 20000, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return Rate{}, err
	}
	mcc, err := mcons.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		b := cur.Load()
		batch, idx, ok := parseHopID(m.Headers().Get(bus.HeaderMsgID))
		if b == nil || !ok || batch != b.id || idx >= len(b.lat) {
			return
		}
		b.lat[idx] = time.Duration(time.Now().UnixNano() - b.start[idx].Load())
		<-b.sem
		if b.left.Add(-1) == 0 {
			close(b.done)
		}
	}, jetstream.PullMaxMessages(1000))
	if err != nil {
		return Rate{}, err
	}
	defer mcc.Stop()

	batches := 0
	run := func(n, inFlight int) (time.Duration, []time.Duration, error) {
		batches++
		b := &hopBatch{id: batches, start: make([]atomic.Int64, n), lat: make([]time.Duration, n), sem: make(chan struct{}, inFlight), done: make(chan struct{})}
		b.left.Store(int64(n))
		cur.Store(b)
		settle()
		t0 := time.Now()
		for i := 0; i < n; i++ {
			select {
			case b.sem <- struct{}{}:
			case <-ctx.Done():
				return 0, nil, ctx.Err()
			}
			b.start[i].Store(time.Now().UnixNano())
			id := "c" + strconv.Itoa(b.id) + "." + strconv.Itoa(i)
			if _, err := mjs.PublishMsgAsync(rawMsg(rawCmdSubject+".g", id, e.pl.cmd)); err != nil {
				return 0, nil, err
			}
		}
		select {
		case <-b.done:
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		case <-time.After(5 * time.Minute):
			err, _ := pubErr.Load().(error)
			return 0, nil, fmt.Errorf("raw double hop: %d of %d hops unfinished after 5m (last publish error: %v)", b.left.Load(), n, err)
		}
		return time.Since(t0), b.lat, nil
	}
	if _, _, err := run(min(100, e.cfg.Intents), e.cfg.InFlight); err != nil { // warm-up
		return Rate{}, err
	}
	// rawFactor × as many hops as intents: at tens of thousands a second, as many would
	// be over in a tenth of a second, too short to be steady (and so flattering e2e).
	hops := rawFactor * e.cfg.Intents
	took, _, err := run(hops, e.cfg.InFlight)
	if err != nil {
		return Rate{}, err
	}
	_, lat, err := run(e.cfg.Sequential, 1)
	if err != nil {
		return Rate{}, err
	}
	return rate(hops, took, lat), nil
}

func parseHopID(id string) (batch, idx int, ok bool) {
	b, i, found := strings.Cut(strings.TrimPrefix(id, "e"), ".")
	if !found {
		return 0, 0, false
	}
	batch, err1 := strconv.Atoi(b)
	idx, err2 := strconv.Atoi(i)
	return batch, idx, err1 == nil && err2 == nil
}

func rate(n int, took time.Duration, lat []time.Duration) Rate {
	return Rate{
		RatePerS: roundPositive(float64(n)/took.Seconds(), 1),
		P50MS:    roundPositive(percentile(lat, 0.50), 3),
		P99MS:    roundPositive(percentile(lat, 0.99), 3),
	}
}

// rawFanout is the floor under one intent to n Ghosts, with no edgectl code: n
// connections (warm: each has made a JetStream request) hold a core subscription each on
// its own command subject, as Ghosts do; one connection publishes n commands into RAW_CMD
// asynchronously; each subscriber publishes its event into RAW_EVT (waiting for the
// publish ack, as a Ghost does); one consumer with explicit acks reads the n events. The
// time is from the first command published to the n-th event read.
func (e *runEnv) rawFanout(ctx context.Context, n int) (time.Duration, error) {
	srv, stop, err := e.startServer(false)
	if err != nil {
		return 0, err
	}
	defer stop()
	ctl, err := connect(ctx, srv, "raw mirage")
	if err != nil {
		return 0, err
	}
	defer ctl.Close()
	js, err := jetstream.New(ctl)
	if err != nil {
		return 0, err
	}
	if err := createRawStreams(ctx, js); err != nil {
		return 0, err
	}
	conns := make([]*nats.Conn, n)
	defer func() {
		for _, nc := range conns {
			if nc != nil {
				nc.Close()
			}
		}
	}()
	var failed atomic.Int64
	err = parallel(ctx, n, 64, func(i int) error {
		nc, err := connect(ctx, srv, fmt.Sprintf("raw ghost %d", i))
		if err != nil {
			return err
		}
		conns[i] = nc
		gjs, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		if _, err := gjs.AccountInfo(ctx); err != nil { // warm the request path, as a registered Ghost's is
			return err
		}
		id := "f" + strconv.Itoa(i)
		_, err = nc.Subscribe(rawCmdSubject+"."+id, func(*nats.Msg) {
			pctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := gjs.PublishMsg(pctx, rawMsg(rawEvtSubject+"."+id, "e"+id, e.pl.evt)); err != nil {
				failed.Add(1)
			}
		})
		if err != nil {
			return err
		}
		return nc.Flush()
	})
	if err != nil {
		return 0, err
	}
	var got atomic.Int64
	done := make(chan struct{})
	cons, err := js.CreateOrUpdateConsumer(ctx, rawEvtStream, jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 20000})
	if err != nil {
		return 0, err
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		if got.Add(1) == int64(n) {
			close(done)
		}
	}, jetstream.PullMaxMessages(1000))
	if err != nil {
		return 0, err
	}
	defer cc.Stop()
	var pubErr atomic.Value
	// Every command in flight at once, as Mirage's dispatch has them (it allows 65,536).
	pjs, err := jetstream.New(ctl, jetstream.WithPublishAsyncMaxPending(1<<16),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) { pubErr.Store(err) }))
	if err != nil {
		return 0, err
	}
	settle()
	t0 := time.Now()
	for i := 0; i < n; i++ {
		id := "f" + strconv.Itoa(i)
		if _, err := pjs.PublishMsgAsync(rawMsg(rawCmdSubject+"."+id, "c"+id, e.pl.cmd)); err != nil {
			return 0, err
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(5 * time.Minute):
		perr, _ := pubErr.Load().(error)
		return 0, fmt.Errorf("raw fan-out %d: %d events read after 5m (%d event publishes failed, last command publish error: %v)", n, got.Load(), failed.Load(), perr)
	}
	return time.Since(t0), nil
}

// parallel runs f(0..n-1) on at most workers goroutines and returns the first error.
func parallel(ctx context.Context, n, workers int, f func(i int) error) error {
	var (
		next   atomic.Int64
		wg     sync.WaitGroup
		mu     sync.Mutex
		first  error
		failed atomic.Bool
	)
	for w := 0; w < min(workers, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || failed.Load() || ctx.Err() != nil {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}
