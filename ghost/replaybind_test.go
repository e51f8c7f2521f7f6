package ghost

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
)

// The consumer a Ghost binds to after Mirage's answer must be the one it asked for; any
// other (a late request recreating it from an older start) is a retryable error, never
// errPositionGone, which would reset the replay position to 0.
func TestCheckReplayConsumer(t *testing.T) {
	const id = "edge-1"
	want := bus.GhostReplayConsumerConfig(id, 42)
	cases := []struct {
		name   string
		adjust func(*jetstream.ConsumerConfig)
		ok     bool
	}{
		{"the one asked for", func(*jetstream.ConsumerConfig) {}, true},
		{"an older start", func(c *jetstream.ConsumerConfig) { c.OptStartSeq = 7 }, false},
		{"a newer start", func(c *jetstream.ConsumerConfig) { c.OptStartSeq = 43 }, false},
		{"another Ghost's subject", func(c *jetstream.ConsumerConfig) { c.FilterSubject = "cmd.edge-2" }, false},
		{"every subject", func(c *jetstream.ConsumerConfig) { c.FilterSubject = "" }, false},
		{"a push consumer", func(c *jetstream.ConsumerConfig) { c.DeliverSubject = "evt.edge-2" }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := want
			c.adjust(&cfg)
			err := checkReplayConsumer(cfg, id, 42)
			if (err == nil) != c.ok {
				t.Fatalf("checkReplayConsumer = %v, want ok %v", err, c.ok)
			}
			if errors.Is(err, errPositionGone) {
				t.Fatal("a mismatched consumer was taken for a gone position")
			}
		})
	}
}

func TestReplyIsBusy(t *testing.T) {
	for body, want := range map[string]bool{
		`{"status":"rejected","error":{"code":1501,"class":"busy","message":"retry later"}}`:  true,
		`{"status":"rejected","error":{"code":1500,"class":"internal","message":"no store"}}`: false,
		`{"status":"accepted","num_pending":3}`:                                               false,
		`not json`:                                                                            false,
	} {
		if got := replyIsBusy([]byte(body)); got != want {
			t.Errorf("replyIsBusy(%s) = %v, want %v", body, got, want)
		}
	}
}
