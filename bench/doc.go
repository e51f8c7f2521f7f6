// Package bench measures edgectl against the floor NATS sets on the same machine, in the
// same run: a raw JetStream double hop beside single-target intents through Mirage and a
// Ghost, a raw fan-out beside one intent to N in-process Ghosts, and the resident memory of
// an idle ghostctl process (the one beside miragectl, else one built as an agent ships:
// CGO_ENABLED=0 go build -trimpath -ldflags="-s -w"). It owns the measurement only: it starts embedded servers,
// Mirage and Ghosts through their public APIs and never changes how they work.
// 'miragectl bench' is its command line; docs/performance.md has the figures.
package bench
