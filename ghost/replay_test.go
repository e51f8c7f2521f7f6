package ghost

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/subjects"
)

// standIn is one answer of a stand-in Mirage: the commands' stream sequences (as sent in
// bus.HeaderStreamSeq), then the reply (nil: none).
type standIn struct {
	seqs  []string
	hdr   nats.Header // extra headers on every command
	reply *bus.ReplayReply
	raw   *nats.Msg // sent instead of a reply (a server status)
}

// serveReplays answers Ghost id's replay requests on the server of nc, one answer per
// request in turn (the last again when they run out); none subscribes when answers is
// empty. It returns how many requests came.
func serveReplays(t *testing.T, nc *nats.Conn, id string, answers []standIn) func() int {
	t.Helper()
	var mu sync.Mutex
	n := 0
	if len(answers) == 0 {
		return func() int { return 0 }
	}
	sub, err := nc.Subscribe(subjects.ReplayFor(id), func(m *nats.Msg) {
		if !strings.HasPrefix(m.Reply, bus.GhostInbox(id)+".") {
			t.Errorf("reply subject %q is not the Ghost's inbox", m.Reply)
		}
		mu.Lock()
		a := answers[min(n, len(answers)-1)]
		n++
		mu.Unlock()
		for _, s := range a.seqs {
			msg := nats.NewMsg(m.Reply)
			for k, v := range a.hdr {
				msg.Header[k] = v
			}
			msg.Header.Set(bus.HeaderStreamSeq, s)
			msg.Data = []byte(`{"seq": "` + s + `"}`)
			_ = nc.PublishMsg(msg)
		}
		switch {
		case a.raw != nil:
			a.raw.Subject = m.Reply
			_ = nc.PublishMsg(a.raw)
		case a.reply != nil:
			data, _ := json.Marshal(a.reply)
			_ = nc.Publish(m.Reply, data)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// replayConns starts an embedded server and returns a Ghost's and a stand-in Mirage's
// connections.
func replayConns(t *testing.T) (ghostConn, mirageConn *nats.Conn) {
	t.Helper()
	ns, err := natsd.Start(natsd.Config{DontListen: true, StoreDir: filepath.Join(t.TempDir(), "js")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	conn := func(name string) *nats.Conn {
		nc, err := bus.Connect(context.Background(), bus.ConnConfig{InProcess: ns.Server, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	return conn("ghost"), conn("mirage")
}

func accepted(sent int, more bool, last uint64) *bus.ReplayReply {
	return &bus.ReplayReply{Status: "accepted", Sent: sent, More: more, LastSeq: last}
}

// The Ghost's side of a replay through Mirage, against a stand-in Mirage on a real
// server: an answer whose commands are out of order, repeated, before the start, not
// numbered, or not as many as its reply says is refused with a clear error; no command
// after the bad one is handled, and the answer does not count as handled (answered is not
// called), so the replay position does not pass it. A stored Status header on a command
// does not make it a server status.
func TestMirageReaderChecksTheAnswer(t *testing.T) {
	const id = "g1"
	status503 := nats.Header{"Status": []string{"503"}, "Description": []string{"No Responders"}}
	noResponders := nats.NewMsg("")
	noResponders.Header = nats.Header{"Status": []string{"503"}}
	busy := &bus.ReplayReply{Status: "rejected", Error: bus.Errorf(bus.CodeBusy, "being served")}
	for _, tc := range []struct {
		name    string
		answers []standIn
		handled []uint64 // sequences that went to each
		settled int      // answers reported handled
		asked   int      // requests (0: not checked)
		says    string   // "" : no error
	}{
		{"in order", []standIn{{seqs: []string{"5", "7", "9"}, reply: accepted(3, false, 9)}}, []uint64{5, 7, 9}, 1, 1, ""},
		{"a stored Status header on a command", []standIn{{seqs: []string{"5", "7"}, hdr: status503, reply: accepted(2, false, 7)}}, []uint64{5, 7}, 1, 1, ""},
		{"two answers", []standIn{{seqs: []string{"5", "6"}, reply: accepted(2, true, 9)}, {seqs: []string{"9"}, reply: accepted(1, false, 9)}}, []uint64{5, 6, 9}, 2, 2, ""},
		{"fewer commands than the reply says", []standIn{{seqs: []string{"5", "9"}, reply: accepted(3, false, 9)}}, []uint64{5, 9}, 0, 1, "says 3 commands, 2 came"},
		{"more commands than the reply says", []standIn{{seqs: []string{"5", "9"}, reply: accepted(1, false, 9)}}, []uint64{5, 9}, 0, 1, "says 1 commands, 2 came"},
		{"out of order", []standIn{{seqs: []string{"5", "9", "7", "11"}, reply: accepted(4, false, 11)}}, []uint64{5, 9}, 0, 1, "command sequence 7 after 9"},
		{"repeated", []standIn{{seqs: []string{"5", "5", "6"}, reply: accepted(3, false, 6)}}, []uint64{5}, 0, 1, "command sequence 5 after 5"},
		{"before the start", []standIn{{seqs: []string{"4", "5"}, reply: accepted(2, false, 5)}}, nil, 0, 1, "command sequence 4 after 4 (asked from 5)"},
		{"not a number", []standIn{{seqs: []string{"5", "x", "6"}, reply: accepted(3, false, 6)}}, []uint64{5}, 0, 1, `command sequence "x" is not a number`},
		{"the second answer goes back", []standIn{{seqs: []string{"5", "6"}, reply: accepted(2, true, 9)}, {seqs: []string{"6", "9"}, reply: accepted(2, false, 9)}}, []uint64{5, 6}, 1, 2, "command sequence 6 after 6 (asked from 7)"},
		{"the second answer short", []standIn{{seqs: []string{"5", "6"}, reply: accepted(2, true, 9)}, {seqs: []string{"9"}, reply: accepted(2, false, 9)}}, []uint64{5, 6, 9}, 1, 2, "says 2 commands, 1 came"},
		{"busy, then served", []standIn{{reply: busy}, {seqs: []string{"5"}, reply: accepted(1, false, 5)}}, []uint64{5}, 1, 2, ""},
		{"busy every time", []standIn{{reply: busy}}, nil, 0, maxBusyRetries + 1, "Mirage refused the replay request"},
		{"no Mirage", nil, nil, 0, 0, "no Mirage answered"},
		{"a 503 status", []standIn{{raw: noResponders}}, nil, 0, 1, "no Mirage answered"},
		{"stalled", []standIn{{seqs: []string{"5"}}}, []uint64{5}, 0, 1, "stopped after 1 commands"},
		{"not JSON", []standIn{{raw: &nats.Msg{Data: []byte("no")}}}, nil, 0, 1, "malformed answer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gc, mc := replayConns(t)
			asked := serveReplays(t, mc, id, tc.answers)
			g := &Ghost{nc: gc, cfg: Config{ID: id}, replayWait: 300 * time.Millisecond}
			var handled []uint64
			settled := 0
			err := mirageReader{g}.read(context.Background(), 5, 9, func(seq uint64, _ []byte, hdr nats.Header) error {
				if hdr.Get(bus.HeaderStreamSeq) != "" {
					t.Errorf("command %d handed on with its %s header", seq, bus.HeaderStreamSeq)
				}
				handled = append(handled, seq)
				return nil
			}, func() error { settled++; return nil })
			switch {
			case tc.says == "" && err != nil:
				t.Fatalf("read: %v", err)
			case tc.says != "" && (err == nil || !strings.Contains(err.Error(), tc.says)):
				t.Fatalf("read: %v, want an error saying %q", err, tc.says)
			}
			if tc.says == "no Mirage answered" && !errors.Is(err, errNoMirageForReplay) {
				t.Fatalf("read: %v, want errNoMirageForReplay", err)
			}
			if !slices.Equal(handled, tc.handled) || settled != tc.settled {
				t.Fatalf("handled %v in %d answers, want %v in %d", handled, settled, tc.handled, tc.settled)
			}
			if tc.asked > 0 && asked() != tc.asked {
				t.Fatalf("%d requests, want %d", asked(), tc.asked)
			}
		})
	}
}

// Where cmd.<id> ends is asked with max 0: an answer that sends commands anyway is
// refused; one with a stored Status header on them is still not "no Mirage".
func TestMirageReaderLastSendsNoCommands(t *testing.T) {
	gc, mc := replayConns(t)
	serveReplays(t, mc, "g1", []standIn{{seqs: []string{"1"}, hdr: nats.Header{"Status": []string{"503"}}, reply: accepted(1, false, 3)}})
	g := &Ghost{nc: gc, cfg: Config{ID: "g1"}, replayWait: 300 * time.Millisecond}
	if _, err := (mirageReader{g}).last(context.Background()); err == nil || !strings.Contains(err.Error(), "more than the 0 commands asked for") {
		t.Fatalf("last: %v", err)
	}
}

// A new store's look through Mirage asks where cmd.<id> ends (no command) and whether the
// id shows a trace of an earlier Ghost (history). A reply without traced, from a Mirage of
// an older version, is taken for a trace.
func TestMirageReaderBeginningAsksForTheTrace(t *testing.T) {
	yes, no := true, false
	for _, tc := range []struct {
		name   string
		traced *bool
		want   bool
	}{
		{"a trace", &yes, true},
		{"none", &no, false},
		{"a Mirage that does not say", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gc, mc := replayConns(t)
			asked := make(chan bus.ReplayRequest, 1)
			sub, err := mc.Subscribe(subjects.ReplayFor("g1"), func(m *nats.Msg) {
				req, err := bus.DecodeReplayRequest(m.Data)
				if err != nil {
					t.Errorf("the Ghost's request %s: %v", m.Data, err)
				}
				asked <- req
				reply := accepted(0, false, 9)
				reply.Traced = tc.traced
				data, _ := json.Marshal(reply)
				_ = m.Respond(data)
			})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = sub.Unsubscribe() }()
			if err := mc.Flush(); err != nil {
				t.Fatal(err)
			}
			g := &Ghost{nc: gc, cfg: Config{ID: "g1"}, replayWait: 300 * time.Millisecond, log: slog.New(slog.DiscardHandler)}
			last, traced, err := mirageReader{g}.beginning(context.Background())
			if err != nil || last != 9 || traced != tc.want {
				t.Fatalf("beginning() = %d, %v, %v; want 9, %v", last, traced, err, tc.want)
			}
			if req := <-asked; !req.History || req.Max != 0 || req.StartSeq != 1 {
				t.Fatalf("request %+v, want start_seq 1, max 0, history", req)
			}
		})
	}
}
