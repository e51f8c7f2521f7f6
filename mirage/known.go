package mirage

import (
	"hash/maphash"
)

// knownIntents remembers, approximately, every intent id edge_intents may hold: the ids
// listed when Mirage starts and every id accepted since. It answers "certainly not
// recorded" or "maybe": a fresh id (most issues) is told apart without reading the
// store, and a maybe costs one read. It is a scalable Bloom filter: layers of growing
// capacity, each with a false-positive rate of about 1%, so it never has to be rebuilt
// from the store and never says "not recorded" of an id it was given. Guarded by m.mu.
type knownIntents struct {
	seed   maphash.Seed
	layers []*bloomLayer
}

type bloomLayer struct {
	bits     []uint64
	n, limit int
}

// bloomHashes is the number of bit positions per id: with 10 bits per id, about 1% of
// unknown ids read as maybe.
const bloomHashes = 7

func newKnownIntents() *knownIntents {
	return &knownIntents{seed: maphash.MakeSeed()}
}

func newBloomLayer(limit int) *bloomLayer {
	return &bloomLayer{bits: make([]uint64, (limit*10+63)/64), limit: limit}
}

// hashes derives the two hashes of id that pick its bit positions (double hashing).
func (k *knownIntents) hashes(id string) (uint64, uint64) {
	h := maphash.String(k.seed, id)
	return h, h>>32 | h<<32 | 1
}

func (k *knownIntents) add(id string) {
	if len(k.layers) == 0 || k.layers[len(k.layers)-1].n >= k.layers[len(k.layers)-1].limit {
		limit := 1 << 16
		if len(k.layers) > 0 {
			limit = k.layers[len(k.layers)-1].limit * 2
		}
		k.layers = append(k.layers, newBloomLayer(limit))
	}
	l := k.layers[len(k.layers)-1]
	h1, h2 := k.hashes(id)
	m := uint64(len(l.bits) * 64)
	for i := uint64(0); i < bloomHashes; i++ {
		p := (h1 + i*h2) % m
		l.bits[p/64] |= 1 << (p % 64)
	}
	l.n++
}

// mayHave is false only for an id never added.
func (k *knownIntents) mayHave(id string) bool {
	h1, h2 := k.hashes(id)
	for _, l := range k.layers {
		m := uint64(len(l.bits) * 64)
		all := true
		for i := uint64(0); i < bloomHashes && all; i++ {
			p := (h1 + i*h2) % m
			all = l.bits[p/64]&(1<<(p%64)) != 0
		}
		if all {
			return true
		}
	}
	return false
}
