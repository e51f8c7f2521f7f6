// Package system is the built-in seed.system: read-only facts about the host (hostname,
// uptime, disk and memory usage, processes), read from the kernel (/proc, statfs) and never
// from a program. It owns no state and changes nothing; every operation is idempotent.
// Structured outputs are compact JSON on stdout.
package system
