package ghost

import (
	"context"
	"sync"

	"github.com/nats-io/nats.go"
)

// link follows the Ghost's connection for the requests that wait on an answer (an
// event's publish ack, a register.ack). A request that went out on a connection that is
// then lost never gets its answer: it went with the connection, and the reconnect
// re-sends subscriptions, not replies. Such a request should end when the connection is
// lost, not wait out its timeout, and the next one go out as soon as a connection is back.
//
// The state is read from the connection itself (nats.Conn.IsConnected, its reconnect
// count) at each status change nats.go reports, so that an event dropped while the
// listener was busy (nats.go does not block on a full listener) is made up for by any
// later one.
type link struct {
	nc *nats.Conn

	mu sync.Mutex
	// on is set while follow runs; otherwise await returns a context that never ends
	// (no connection is followed: a request waits for its own timeout).
	on bool
	// conn stands for the connection up now: it is cancelled when that connection is
	// lost. nil while there is none.
	conn context.Context
	drop context.CancelFunc
	// reconnects is the connection's reconnect count when conn came up: a count that
	// moved means conn was lost, even if the status events saying so were missed.
	reconnects uint64
	// up is closed when a connection is up (replaced by an open one when it is lost).
	up chan struct{}
	// stopped is closed when follow's goroutine has returned (nil before follow).
	stopped chan struct{}
	// afterRead, when set (tests), runs in update between reading the connection's state
	// and moving the link to it.
	afterRead func()
}

func newLink(nc *nats.Conn) *link {
	return &link{nc: nc, up: make(chan struct{})}
}

// follow starts following the connection's status until stop is closed. It is called
// once (later calls do nothing).
func (l *link) follow(stop <-chan struct{}) {
	l.mu.Lock()
	if l.stopped != nil {
		l.mu.Unlock()
		return
	}
	l.stopped = make(chan struct{})
	l.on = true
	l.mu.Unlock()
	listener := l.nc.StatusChanged() // before the first look: no change in between is missed
	l.update()
	go func() {
		defer close(l.stopped)
		defer l.nc.RemoveStatusListener(listener)
		status := (<-chan nats.Status)(listener)
		for {
			select {
			case <-stop:
				l.mu.Lock()
				l.on = false
				if l.conn == nil {
					close(l.up) // waiters see the link is no longer followed
				}
				l.mu.Unlock()
				return
			case _, ok := <-status:
				if !ok { // nats.go closes it only in RemoveStatusListener; never spin on it
					status = nil
					continue
				}
				l.update()
			}
		}
	}()
}

// wait returns when follow's goroutine has returned (at once if it never started).
func (l *link) wait() {
	l.mu.Lock()
	stopped := l.stopped
	l.mu.Unlock()
	if stopped != nil {
		<-stopped
	}
}

// update reads the connection's state and moves the link to it. It reads under l.mu:
// looks run at once (every publish attempt looks, and follow's goroutine at each status
// change), and one that read the connection down just before a reconnect must not apply
// that after another applied the reconnect, leaving the link down on a connection that is
// up, with no status change to come (l.mu is never taken under the connection's lock).
func (l *link) update() {
	l.mu.Lock()
	defer l.mu.Unlock()
	reconnects := l.nc.Stats().Reconnects
	connected := l.nc.IsConnected()
	if l.afterRead != nil {
		l.afterRead()
	}
	if !l.on {
		return
	}
	if l.conn != nil && (!connected || reconnects != l.reconnects) {
		l.drop()
		l.conn, l.drop = nil, nil
		l.up = make(chan struct{})
	}
	if connected && l.conn == nil {
		l.conn, l.drop = context.WithCancel(context.Background())
		l.reconnects = reconnects
		close(l.up)
	}
}

// current returns the context of the connection up now, cancelled when it is lost; nil
// while there is none. When the link is not followed it returns a context that never
// ends. It looks at the connection itself first: a caller that learnt of a reconnect from
// its own status listener (the delivery loop) finds it, whether or not follow has yet.
func (l *link) current() context.Context {
	conn, _ := l.look()
	return conn
}

// look is current, and the channel closed when a connection is up while there is none.
func (l *link) look() (context.Context, <-chan struct{}) {
	l.update()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.on {
		return context.Background(), nil
	}
	return l.conn, l.up
}

// await waits until a connection is up and returns its context (as current), or ctx's
// error when ctx ends first.
func (l *link) await(ctx context.Context) (context.Context, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		conn, up := l.look()
		if conn != nil {
			return conn, nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
