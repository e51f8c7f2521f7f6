package test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// A chaos campaign on a 3-node cluster (EDGE_CHAOS=1; EDGE_CHAOS_SEED, EDGE_CHAOS_SECS):
// intents stream in from clients on every node while stream leaders are stopped, the node
// serving Mirage is stopped, leaders step down, and Mirage is restarted on another node.
// Every accepted intent must end, readable from every node, each incr counted once, each
// command and event stored once, and no client wait may outlast the deadline + 30 s.
func TestChaosCluster(t *testing.T) {
	if os.Getenv("EDGE_CHAOS") == "" {
		t.Skip("EDGE_CHAOS not set")
	}
	seed := time.Now().UnixNano()
	if s := os.Getenv("EDGE_CHAOS_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	secs := 60
	if s := os.Getenv("EDGE_CHAOS_SECS"); s != "" {
		secs, _ = strconv.Atoi(s)
	}
	t.Logf("seed %d, %d s of faults", seed, secs)
	rng := rand.New(rand.NewSource(seed))

	cl := testenv.NewCluster(t, 3)
	env := cl.Env()
	ctx := context.Background()
	admin := cl.Conn("test-admin", 2)
	js, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	mnc := cl.Conn("mirage", 0)
	m := env.StartMirageOn(mnc, mirage.Config{Replicas: 3})
	ghosts := make([]*fixture, 3)
	for i := range ghosts {
		id := "edge-" + cl.NodeName(i)
		ghosts[i] = newFixture(t, env, id)
		ghosts[i].start(testenv.Via(cl.Conn("ghost "+id, i, bus.GhostRequests())))
		testenv.Eventually(t, 15*time.Second, id+" to register", func() bool { _, ok := m.Fleet().Get(id); return ok })
	}
	clients := make([]*mirage.Client, 3)
	for i := range clients {
		c, err := mirage.NewClient(cl.Conn(fmt.Sprintf("client-%d", i), i))
		if err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}

	// Issuers on every node, and waiters that follow each accepted intent as it runs.
	type acc struct {
		issued
		at time.Time
	}
	var (
		accMu    sync.Mutex
		accepted []acc
		wg       sync.WaitGroup
		hung     atomic.Int64
	)
	done := make(chan struct{})
	timeout := 40 * time.Second
	for k := range clients {
		every := time.Duration(150+rng.Intn(250)) * time.Millisecond
		wg.Add(1)
		go func(k int, every time.Duration) {
			defer wg.Done()
			is := newIssuer(t, clients[k], ghosts)
			for n := k; ; n++ {
				select {
				case <-done:
					return
				case <-time.After(every):
				}
				iss, targets := is.next(n)
				iss.TimeoutMS = timeout.Milliseconds()
				wg.Add(1)
				go func() {
					defer wg.Done()
					if !is.send(iss) {
						return
					}
					at := time.Now()
					accMu.Lock()
					accepted = append(accepted, acc{issued{iss, targets}, at})
					accMu.Unlock()
					// A wait from another node, in flight during the faults.
					w := clients[(k+1+n%2)%3]
					wctx, cancel := context.WithDeadline(context.Background(), at.Add(timeout+30*time.Second))
					defer cancel()
					if _, err := w.WaitTerminal(wctx, iss.IntentID); err != nil {
						hung.Add(1)
						t.Errorf("live wait for %s on client %d: %v (accepted %s)", iss.IntentID, (k+1+n%2)%3, err, at.Format(time.StampMilli))
						explainChaos(t, js, iss.IntentID)
					}
				}()
			}
		}(k, every)
	}

	streams := []string{bus.StreamCommands, bus.StreamEvents, bus.StreamReports, "KV_" + bus.BucketIntents}
	settle := func(what string) {
		t.Helper()
		start := time.Now()
		cl.WaitReady(60 * time.Second)
		testenv.Eventually(t, 60*time.Second, "every asset current after "+what, func() bool {
			for _, name := range clusterAssets {
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				s, err := js.Stream(cctx, name)
				if err != nil {
					cancel()
					return false
				}
				info, err := s.Info(cctx)
				cancel()
				if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
					return false
				}
				for _, p := range info.Cluster.Replicas {
					if !p.Current || p.Offline {
						return false
					}
				}
			}
			return true
		})
		t.Logf("settled after %s in %s", what, time.Since(start).Round(time.Millisecond))
	}
	bounce := func(node int, why string) {
		down := time.Duration(500+rng.Intn(3500)) * time.Millisecond
		t.Logf("%s: ", time.Now().Format(time.StampMilli))
		t.Logf("stop %s (%s) for %s", cl.NodeName(node), why, down)
		cl.Stop(node)
		time.Sleep(down)
		cl.Start(node)
		settle("restart of " + cl.NodeName(node))
	}
	stepdown := func(stream string) {
		msg, err := admin.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, nil, 10*time.Second)
		if err != nil {
			t.Logf("step down %s: %v", stream, err)
			return
		}
		var resp struct {
			Error *jetstream.APIError `json:"error"`
		}
		_ = json.Unmarshal(msg.Data, &resp)
		t.Logf("stepped down %s (%v)", stream, resp.Error)
	}

	time.Sleep(time.Second)
	end := time.Now().Add(time.Duration(secs) * time.Second)
	restarted := false
	for round := 0; time.Now().Before(end); round++ {
		switch f := rng.Intn(10); {
		case f < 4: // (a) the leader of a stream
			stream := streams[round%len(streams)]
			bounce(cl.StreamLeader(js, stream), "leader of "+stream)
		case f < 6: // (b) Mirage's server
			mu.Lock()
			node := cl.Index(mnc.ConnectedServerName())
			mu.Unlock()
			if node < 0 {
				continue
			}
			bounce(node, "Mirage's server")
		case f < 9: // (c) step-downs
			for range 1 + rng.Intn(3) {
				stepdown(streams[rng.Intn(len(streams))])
				time.Sleep(time.Duration(rng.Intn(800)) * time.Millisecond)
			}
			settle("step-downs")
		default: // (d) Mirage itself, once
			if restarted {
				continue
			}
			restarted = true
			mu.Lock()
			old := cl.Index(mnc.ConnectedServerName())
			to := (old + 1 + rng.Intn(2)) % 3
			t.Logf("%s: restart Mirage (on %s) on %s", time.Now().Format(time.StampMilli), cl.NodeName(old), cl.NodeName(to))
			_ = m.Close()
			mnc = cl.Conn("mirage-2", to)
			m = env.StartMirageOn(mnc, mirage.Config{Replicas: 3})
			mu.Unlock()
		}
		time.Sleep(time.Duration(300+rng.Intn(1500)) * time.Millisecond)
	}
	close(done)
	t.Logf("faults over; waiting for the live waits")
	wg.Wait()
	accMu.Lock()
	all := accepted
	accMu.Unlock()
	if len(all) < 20 {
		t.Fatalf("only %d intents accepted", len(all))
	}

	// Every accepted intent ended, as every node reads it.
	incrs := map[string]int{}
	sem := make(chan struct{}, 8)
	var cmu sync.Mutex
	var cwg sync.WaitGroup
	for _, a := range all {
		cwg.Add(1)
		sem <- struct{}{}
		go func(a acc) {
			defer cwg.Done()
			defer func() { <-sem }()
			var phase string
			for i, c := range clients {
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second) // ended: no wait for Mirage
				r, err := c.WaitTerminal(wctx, a.issue.IntentID)
				cancel()
				if err != nil {
					t.Errorf("client %d: wait for %s: %v", i, a.issue.IntentID, err)
					return
				}
				lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				lr, err := c.LatestReport(lctx, a.issue.IntentID)
				cancel()
				if err != nil || lr.Phase != r.Phase {
					t.Errorf("client %d: latest report of %s: %v %+v, want phase %s", i, a.issue.IntentID, err, lr, r.Phase)
				}
				if i == 0 {
					phase = r.Phase
				} else if r.Phase != phase {
					t.Errorf("%s: client %d reads %s, client 0 %s", a.issue.IntentID, i, r.Phase, phase)
				}
			}
			if phase != bus.PhaseSatisfied {
				t.Errorf("intent %s (%s %s on %s): %s", a.issue.IntentID, a.issue.Objective.SeedSelector, a.issue.Objective.Operation, a.issue.TargetScope, phase)
				return
			}
			if a.issue.Objective.Operation == "incr" {
				cmu.Lock()
				incrs[a.issue.TargetScope]++
				cmu.Unlock()
			}
		}(a)
	}
	cwg.Wait()
	for i, c := range clients {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		recs, err := c.Intents(lctx, 0)
		cancel()
		if err != nil {
			t.Errorf("client %d: intents: %v", i, err)
			continue
		}
		have := map[string]bool{}
		for _, r := range recs {
			have[r.IntentID] = true
		}
		for _, a := range all {
			if !have[a.issue.IntentID] {
				t.Errorf("client %d: %s not listed", i, a.issue.IntentID)
			}
		}
	}
	plain := make([]issued, len(all))
	for k, a := range all {
		plain[k] = a.issued
	}
	checkRanOnce(t, env, js, ghosts, incrs, plain, func(k int) {
		a := all[k]
		for _, stream := range []string{bus.StreamCommands, bus.StreamEvents} {
			for _, sm := range storedMentioning(t, js, stream, a.issue.IntentID) {
				t.Logf("%s seq %d at %s on %s: %.300s", stream, sm.Sequence, sm.Time.Format(time.StampMilli), sm.Subject, sm.Data)
			}
		}
		t.Logf("%s accepted at %s", a.issue.IntentID, a.at.Format(time.StampMilli))
	})
	t.Logf("%d intents accepted, %d live waits failed; satisfied incr per Ghost: %v", len(all), hung.Load(), incrs)
}

func explainChaos(t *testing.T, js jetstream.JetStream, intentID string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, stream := range []string{bus.StreamReports} {
		for _, sm := range storedMentioning(t, js, stream, intentID) {
			t.Logf("%s: %s seq %d at %s on %s: %.200s", intentID, stream, sm.Sequence, sm.Time.Format(time.StampMilli), sm.Subject, sm.Data)
		}
	}
	if s, err := js.Stream(ctx, bus.StreamReports); err == nil {
		for ci := range s.ListConsumers(ctx).Info() {
			if ci.Config.FilterSubject == "report."+intentID && ci.Cluster != nil {
				t.Logf("%s: consumer %s on %s: delivered %+v, pending %d, waiting %d", intentID, ci.Name, ci.Cluster.Leader, ci.Delivered, ci.NumPending, ci.NumWaiting)
			}
		}
	}
}
