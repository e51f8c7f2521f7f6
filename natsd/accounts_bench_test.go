package natsd_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/subjects"
)

// BenchmarkGhostEventPublish is what the two accounts cost a Ghost's event: a JetStream
// publish of a 1 KiB event on evt.<id>, waiting for its ack, from a Ghost in EDGE_GHOSTS
// (through the service import) and, as the baseline, from a Ghost with the same
// permissions in one account with Mirage.
//
//	go test -run - -bench GhostEventPublish ./natsd/
func BenchmarkGhostEventPublish(b *testing.B) {
	for _, tt := range []struct {
		name     string
		accounts bool
	}{{"one-account", false}, {"two-accounts", true}} {
		b.Run(tt.name, func(b *testing.B) {
			op, mirageKey, ghostKey := newIdentity(b), newIdentity(b), newIdentity(b)
			users := natsd.Users(op.PublicKey(), mirageKey.PublicKey(), map[string]string{"g1": ghostKey.PublicKey()})
			if !tt.accounts {
				for _, u := range users {
					u.Account = nil
				}
			}
			ns := startServer(b, natsd.Config{DontListen: true, Users: users, Sync: natsd.SyncInterval})
			opc := connect(b, bus.ConnConfig{InProcess: ns, Name: "operator", Options: []nats.Option{op.NATSOption()}})
			js, err := jetstream.New(opc)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: bus.StreamEvents, Subjects: []string{subjects.AllEvents}}); err != nil {
				b.Fatal(err)
			}
			gc := connect(b, bus.ConnConfig{InProcess: ns, Name: "g1", Options: []nats.Option{ghostKey.NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox("g1"))}})
			gjs, err := jetstream.New(gc)
			if err != nil {
				b.Fatal(err)
			}
			data := make([]byte, 1024)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				msg := &nats.Msg{Subject: subjects.Event("g1"), Data: data, Header: nats.Header{bus.HeaderMsgID: []string{"e" + strconv.Itoa(i)}}}
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := gjs.PublishMsg(pctx, msg)
				cancel()
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
