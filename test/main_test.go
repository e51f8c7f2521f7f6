package test

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/edgectl/edgectl/test/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBinaries()
	if code == 0 {
		if err := goleak.Find(leakOptions...); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

var leakOptions = []goleak.Option{
	// The nats-server keeps a few process-wide goroutines after Shutdown.
	goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine.func1"),
	goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*fileStore).syncBlocks"),
	// nats.go v1.55's jetstream starts this watcher with the first async publish and can
	// read its status channel before it is set; it then waits on a nil channel for good
	// (seen once in a CI run, every test passing). Not edgectl's goroutine.
	goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"),
}
