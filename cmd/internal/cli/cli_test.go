package cli

import (
	"strings"
	"testing"
)

// A connection that fails names the URL it tried and where that URL came from: --server,
// $NATS_URL only when it is set, else the default, with --server as the way to change it.
func TestCheckURLNamesTheURLTried(t *testing.T) {
	for _, c := range []struct {
		name, server, env, url string
		want                   []string
		notWant                string
	}{
		{"--server", "nats://10.0.0.1:4222", "nats://127.0.0.1:5555", "nats://10.0.0.1:4222", []string{"check --server nats://10.0.0.1:4222"}, "NATS_URL"},
		{"$NATS_URL", "", "nats://127.0.0.1:5555", "nats://127.0.0.1:5555", []string{"check $NATS_URL (nats://127.0.0.1:5555)", "--server"}, ""},
		{"default", "", "", "nats://127.0.0.1:4222", []string{"tried the default nats://127.0.0.1:4222", "pass --server URL"}, "NATS_URL"},
	} {
		t.Setenv("NATS_URL", c.env)
		got := checkURL(c.server, c.url)
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %q does not say %q", c.name, got, w)
			}
		}
		if c.notWant != "" && strings.Contains(got, c.notWant) {
			t.Errorf("%s: %q says %q", c.name, got, c.notWant)
		}
	}
}
