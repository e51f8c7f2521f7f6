// Package kv is the built-in seed.kv: a key/value store held in memory by one Ghost and
// lost when it stops. It owns that map and nothing else; it is not the NATS KV buckets of
// package bus. Every operation but incr is idempotent. Structured outputs (list, put,
// delete) are compact JSON on stdout; get and incr print the bare value.
package kv
