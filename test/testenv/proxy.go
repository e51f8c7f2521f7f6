package testenv

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy is a TCP proxy on loopback between clients and the server: Cut drops every
// connection and refuses new ones until Restore, a real network fault for the clients;
// Pause holds every byte either way until Resume, the connections kept, as the link of a
// process stopped (SIGSTOP) or a frozen VM looks to the server; HoldReplies holds only what
// the server sends (the answer to a request that did reach it, lost if Cut follows).
type Proxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	cut     bool
	paused  bool
	holding bool       // HoldReplies: server-to-client bytes are held
	resumed *sync.Cond // on mu: broadcast when paused or cut changes
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

// NewProxy starts a proxy to target (host:port); it stops with the test.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.resumed = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// URL is the nats:// URL clients use to go through the proxy.
func (p *Proxy) URL() string { return "nats://" + p.ln.Addr().String() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns[c] = struct{}{}
		p.conns[up] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(c, up, true)
		go p.pipe(up, c, false)
	}
}

func (p *Proxy) pipe(dst, src net.Conn, toClient bool) {
	defer p.wg.Done()
	_, _ = io.Copy(heldWriter{p, dst, toClient}, src)
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// heldWriter writes to a proxied connection once the proxy is not paused, nor holding
// replies for a client (or is cut).
type heldWriter struct {
	p        *Proxy
	dst      net.Conn
	toClient bool
}

func (w heldWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	for (w.p.paused || w.toClient && w.p.holding) && !w.p.cut {
		w.p.resumed.Wait()
	}
	w.p.mu.Unlock()
	return w.dst.Write(b)
}

// Cut drops every proxied connection and refuses new ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	p.resumed.Broadcast()
	for c := range p.conns {
		_ = c.Close()
	}
}

// Pause holds what either side sends, the connections open, until Resume.
func (p *Proxy) Pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

// HoldReplies holds what the server sends to the clients, the connections open, until
// Resume; what the clients send goes through.
func (p *Proxy) HoldReplies() {
	p.mu.Lock()
	p.holding = true
	p.mu.Unlock()
}

// Resume delivers what Pause or HoldReplies held, in order, and lets the connections flow
// again.
func (p *Proxy) Resume() {
	p.mu.Lock()
	p.paused = false
	p.holding = false
	p.resumed.Broadcast()
	p.mu.Unlock()
}

// Restore accepts connections again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

func (p *Proxy) close() {
	_ = p.ln.Close()
	p.Cut()
	p.wg.Wait()
}
