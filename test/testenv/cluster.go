package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
)

// Cluster is an in-process JetStream cluster: embedded nats-servers routed to each other
// on loopback, each with its own name, ports and store. A node can be stopped and started
// again on the same ports and store, as an operator would restart a server.
type Cluster struct {
	T     testing.TB
	Name  string
	Dir   string
	Log   *slog.Logger
	nodes []*clusterNode
	store int64 // JetStream max store of each server, bytes; 0: the server's default
	// proxies[i][k] carries the routes node i opens to node k (RouteProxies); nil: direct.
	proxies [][]*Proxy
	// refusing is a loopback address nothing listens on, the route address every server
	// advertises with RouteProxies.
	refusing string
}

type clusterNode struct {
	name       string
	clientPort int
	routePort  int
	store      string
	srv        *natsd.Server
}

// RouteProxies makes NewCluster route every pair of servers through proxies, so that a
// test can cut the link between two of them (CutRoutes) while both keep running and
// talking to the others. The servers advertise a route address that refuses, so that
// none routes around a proxy (an implicit route, dialled on gossip, healed a cut before).
func RouteProxies() Option { return func(o *options) { o.routeProxies = true } }

// NewCluster starts n routed servers and waits until JetStream has a meta leader and
// every server is current. Everything is stopped at cleanup. Of the options only MaxStore
// (to each server) and RouteProxies apply.
func NewCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	var o options
	for _, f := range opts {
		f(&o)
	}
	c := &Cluster{T: t, Name: "edge", Dir: t.TempDir(), Log: Logger(t), store: o.store}
	for i := range n {
		c.nodes = append(c.nodes, &clusterNode{
			name:       fmt.Sprintf("n%d", i+1),
			clientPort: FreePort(t),
			routePort:  FreePort(t),
			store:      filepath.Join(c.Dir, fmt.Sprintf("n%d", i+1)),
		})
	}
	if o.routeProxies {
		c.refusing = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		c.proxies = make([][]*Proxy, n)
		for i := range c.nodes {
			c.proxies[i] = make([]*Proxy, n)
			for k, to := range c.nodes {
				if k != i {
					c.proxies[i][k] = NewProxy(t, fmt.Sprintf("127.0.0.1:%d", to.routePort))
				}
			}
		}
	}
	for i := range c.nodes {
		c.Start(i)
	}
	t.Cleanup(func() {
		for i := range c.nodes {
			c.Stop(i)
		}
	})
	c.WaitReady(60 * time.Second)
	return c
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start starts node i (again), on its ports and store.
func (c *Cluster) Start(i int) {
	c.T.Helper()
	n := c.nodes[i]
	var routes []string
	for k, o := range c.nodes {
		switch {
		case o == n:
		case c.proxies != nil:
			routes = append(routes, "nats://"+c.proxies[i][k].ln.Addr().String())
		default:
			routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", o.routePort))
		}
	}
	srv, err := natsd.Start(natsd.Config{
		Listen:     fmt.Sprintf("127.0.0.1:%d", n.clientPort),
		StoreDir:   n.store,
		ServerName: n.name,
		Logger:     c.Log.With("server", n.name),
		Customize: func(o *server.Options) error {
			o.Cluster = server.ClusterOpts{Name: c.Name, Host: "127.0.0.1", Port: n.routePort}
			if c.proxies != nil {
				// A server tells the others its route address (gossip), and one without a
				// route to it dials that address: around a cut proxy. An address that
				// refuses keeps every route on its proxy.
				o.Cluster.Advertise = c.refusing
			}
			o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
			if c.store > 0 {
				o.JetStreamMaxStore = c.store
			}
			return nil
		},
	})
	if err != nil {
		c.T.Fatalf("start cluster node %s: %v", n.name, err)
	}
	n.srv = srv
}

// Stop shuts node i down and waits (idempotent): to the others it is a server that died.
func (c *Cluster) Stop(i int) {
	if s := c.nodes[i].srv; s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// CutRoutes drops the routes between nodes i and k and refuses new ones until
// RestoreRoutes, as a network fault between two servers would (RouteProxies only): both
// keep running, and each keeps its routes to the others.
func (c *Cluster) CutRoutes(i, k int) {
	c.proxies[i][k].Cut()
	c.proxies[k][i].Cut()
}

// RestoreRoutes lets nodes i and k route to each other again; the servers reconnect
// their routes by themselves.
func (c *Cluster) RestoreRoutes(i, k int) {
	c.proxies[i][k].Restore()
	c.proxies[k][i].Restore()
}

// Freeze holds every byte on the routes to and from node i, the connections kept open,
// until Thaw (RouteProxies only), as a server stopped by SIGSTOP or on a frozen VM looks to
// its peers: its routes stand, so what is routed to it (a publish to a stream it leads, a
// request to a consumer it holds, an API request it alone answers) goes unanswered rather
// than refused. The test keeps its own connections off node i.
func (c *Cluster) Freeze(i int) {
	for k := range c.nodes {
		if k != i {
			c.proxies[i][k].Pause()
			c.proxies[k][i].Pause()
		}
	}
}

// Thaw delivers what Freeze held on node i's routes and lets them flow again.
func (c *Cluster) Thaw(i int) {
	for k := range c.nodes {
		if k != i {
			c.proxies[i][k].Resume()
			c.proxies[k][i].Resume()
		}
	}
}

// Server returns node i's running server (nil before it first started).
func (c *Cluster) Server(i int) *natsd.Server { return c.nodes[i].srv }

// NodeName is the server_name of node i.
func (c *Cluster) NodeName(i int) string { return c.nodes[i].name }

// Index returns the node whose server_name is name, or -1.
func (c *Cluster) Index(name string) int {
	for i, n := range c.nodes {
		if n.name == name {
			return i
		}
	}
	return -1
}

// URLs lists every node's client URL, node first first, comma-separated: a connection
// given all of them fails over to the next when its server goes away.
func (c *Cluster) URLs(first int) string {
	urls := make([]string, 0, len(c.nodes))
	for k := range c.nodes {
		n := c.nodes[(first+k)%len(c.nodes)]
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", n.clientPort))
	}
	return strings.Join(urls, ",")
}

// Conn opens a daemon-like socket connection that prefers node first (the URLs are tried
// in order) and knows every node, with extra options (bus.GhostRequests for a Ghost's).
func (c *Cluster) Conn(name string, first int, opts ...nats.Option) *nats.Conn {
	c.T.Helper()
	nc, err := bus.Connect(context.Background(), bus.ConnConfig{URL: c.URLs(first), Name: name, Persistent: true, Logger: c.Log,
		Options: append([]nats.Option{nats.DontRandomize()}, opts...)})
	if err != nil {
		c.T.Fatalf("connect %s: %v", name, err)
	}
	c.T.Cleanup(nc.Close)
	return nc
}

// Env returns an Env for the helpers that take a connection (StartMirageOn, StartGhost
// with Via, Events). Its own in-process connections would go to node 0 only, so tests on
// a cluster pass Cluster.Conn connections instead.
func (c *Cluster) Env() *Env {
	return &Env{T: c.T, Server: c.nodes[0].srv, Dir: c.Dir, Log: c.Log}
}

// WaitReady waits until every running node reports JetStream healthy (meta leader known,
// node current), one of them is the meta leader, and the cluster places a stream on every
// running node: healthy nodes can still be unknown to the meta leader's placement for a
// moment, and a stream at replicas 3 made then is refused ("cannot place 3 copies").
func (c *Cluster) WaitReady(timeout time.Duration) {
	c.T.Helper()
	running := 0
	Eventually(c.T, timeout, "the JetStream cluster to be ready", func() bool {
		leader := false
		running = 0
		for _, n := range c.nodes {
			if n.srv == nil || !n.srv.Running() {
				continue
			}
			running++
			if h := n.srv.Healthz(nil); h.Status != "ok" {
				return false
			}
			leader = leader || n.srv.JetStreamIsLeader()
		}
		return leader
	})
	first := 0
	for i, n := range c.nodes {
		if n.srv != nil && n.srv.Running() {
			first = i
			break
		}
	}
	nc := c.Conn("test-ready", first)
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		c.T.Fatal(err)
	}
	const probe = "EDGE_TEST_READY"
	Eventually(c.T, timeout, fmt.Sprintf("the JetStream cluster to place a stream on its %d running nodes", running), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: probe, Subjects: []string{"edge-test-ready"}, Storage: jetstream.MemoryStorage, Replicas: running})
		if err != nil {
			return false
		}
		return js.DeleteStream(ctx, probe) == nil
	})
}

// StreamLeader returns the index of the node leading stream name.
func (c *Cluster) StreamLeader(js jetstream.JetStream, name string) int {
	c.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		c.T.Fatalf("stream %s: %v", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		c.T.Fatalf("stream %s info: %v (cluster %+v)", name, err, info)
	}
	return c.Index(info.Cluster.Leader)
}

// peersOf returns the servers holding stream (its leader first) and whether every
// replica is current, "" leader when unknown.
func peersOf(js jetstream.JetStream, stream string) (all []string, current bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, false
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
		return nil, false
	}
	all, current = []string{info.Cluster.Leader}, true
	for _, r := range info.Cluster.Replicas {
		all = append(all, r.Name)
		current = current && r.Current
	}
	return all, current
}

// PlaceOff moves stream's copy off node i (a peer removal: the cluster places it on
// another server) and waits until its replicas (replicas of them) are current.
func (c *Cluster) PlaceOff(nc *nats.Conn, js jetstream.JetStream, stream string, i, replicas int) {
	c.T.Helper()
	name := c.NodeName(i)
	Eventually(c.T, 15*time.Second, stream+" to have a leader", func() bool { p, _ := peersOf(js, stream); return len(p) == replicas })
	if p, _ := peersOf(js, stream); slices.Contains(p, name) {
		req, _ := json.Marshal(map[string]string{"peer": name})
		msg, err := nc.Request("$JS.API.STREAM.PEER.REMOVE."+stream, req, 10*time.Second)
		if err != nil {
			c.T.Fatalf("remove %s from %s: %v", name, stream, err)
		}
		var resp struct {
			Error *jetstream.APIError `json:"error"`
		}
		if err := json.Unmarshal(msg.Data, &resp); err != nil || resp.Error != nil {
			c.T.Fatalf("remove %s from %s: %s", name, stream, msg.Data)
		}
	}
	Eventually(c.T, 30*time.Second, stream+" placed off "+name, func() bool {
		p, current := peersOf(js, stream)
		return len(p) == replicas && current && !slices.Contains(p, name)
	})
}

// LeadOn moves the leadership of stream to node i, stepping the leader down (node i
// preferred) until it leads.
func (c *Cluster) LeadOn(nc *nats.Conn, js jetstream.JetStream, stream string, i int) {
	c.T.Helper()
	want := c.NodeName(i)
	leads := func() bool { p, _ := peersOf(js, stream); return len(p) > 0 && p[0] == want }
	Eventually(c.T, 30*time.Second, want+" to lead "+stream, func() bool {
		if leads() {
			return true
		}
		req, _ := json.Marshal(map[string]any{"placement": map[string]string{"preferred": want}})
		_, _ = nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, req, 5*time.Second)
		for range 20 {
			if leads() {
				return true
			}
			time.Sleep(100 * time.Millisecond)
		}
		return false
	})
}

// WaitDirect waits until node i answers direct gets of stream. A follower joins the queue
// group that answers them once it has lost the leadership and caught up (checked every
// 2 s): lead it there first (LeadOn) and away again.
func (c *Cluster) WaitDirect(stream string, i int) {
	c.T.Helper()
	Eventually(c.T, 15*time.Second, c.NodeName(i)+" to answer direct gets of "+stream, func() bool {
		sz, err := c.nodes[i].srv.Subsz(&server.SubszOptions{Subscriptions: true, Account: "$G", Test: "$JS.API.DIRECT.GET." + stream + ".x"})
		if err != nil {
			return false
		}
		for _, sub := range sz.Subs {
			if sub.Queue != "" {
				return true
			}
		}
		return false
	})
}

// Behind reports whether the leader of stream reports node i's copy behind it.
func (c *Cluster) Behind(js jetstream.JetStream, stream string, i int) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return false
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		return false
	}
	for _, r := range info.Cluster.Replicas {
		if r.Name == c.NodeName(i) {
			return !r.Current || r.Lag > 0
		}
	}
	return false
}

// MetaLeader waits for a JetStream meta leader and returns its node.
func (c *Cluster) MetaLeader() int {
	c.T.Helper()
	meta := -1
	Eventually(c.T, 15*time.Second, "a meta leader", func() bool {
		for i, n := range c.nodes {
			if n.srv != nil && n.srv.Running() && n.srv.JetStreamIsLeader() {
				meta = i
				return true
			}
		}
		return false
	})
	return meta
}
