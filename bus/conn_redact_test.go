package bus

import "testing"

func TestRedactHidesCredentialsOfEveryURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://u:p@h1:4222,nats://h2:4222,tls://a:b@h3:4222": "nats://***@h1:4222,nats://h2:4222,tls://***@h3:4222",
		"nats://127.0.0.1:4222":                               "nats://127.0.0.1:4222",
		"nats://tok@h/path@x":                                 "nats://***@h/path@x",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}
