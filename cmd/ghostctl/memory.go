package main

import (
	"os"
	"runtime/debug"
)

// agentGCPercent is the garbage collector's target (GOGC) of a running Ghost, unless the
// environment sets GOGC. A Ghost's live heap is well under 1 MB, and with Go's default of
// 100 the heap grows to at least 4 MB between collections, pages the agent then keeps
// after a burst of work. Measured after 150 commands and a minute idle, ghostctl's
// anonymous memory was 7.2 MB at 100, 5.1-5.6 MB at 50; 25 or 10 saved little more for
// more collections. A collection of a heap this size takes well under a millisecond. It is
// set after starting: a lower target while starting only adds collections.
const agentGCPercent = 50

// settleMemory is called once the Ghost has started: it sets the agent's GC target,
// collects once and returns the freed pages to the OS. Starting (config, seed
// declarations, boot seeds, connecting) leaves garbage that would otherwise stay resident
// until the heap first reaches its goal, and stacks grown while starting shrink only at a
// collection.
func settleMemory() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(agentGCPercent)
	}
	debug.FreeOSMemory()
}
