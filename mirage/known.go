package mirage

import (
	"hash/maphash"
	"time"
)

// knownIntents remembers, approximately, every intent id edge_intents may hold: the ids
// listed when Mirage starts and every id accepted since. It answers "certainly not
// recorded" or "maybe": a fresh id (most issues) is told apart without reading the
// store, and a maybe costs one read. Each generation is a scalable Bloom filter: layers
// of growing capacity, each with a false-positive rate of about 1%, so it never has to
// be rebuilt from the store and never says "not recorded" of an id it was given.
//
// edge_intents forgets a record its max age (the bucket's TTL, 7 days) after it was
// written, and records are written once. So the filter need not remember an id longer
// either: ids go into the current generation, which after period (the TTL plus a margin
// for the record's write and the clocks) becomes the previous one, dropped one period
// later. Every id is thus kept at least a period after it was added, and its layers'
// memory and false positives do not pile up in a Mirage that runs for months. A period
// of 0 (a bucket that keeps records forever) keeps every id.
//
// An operator may raise the bucket's max age while Mirage runs: a rotation then waits
// until the period has been read again from the bucket (due, setPeriod) since it came
// due, and the period never shortens (keeping an id longer only costs a read). Guarded by
// m.mu, except due.
type knownIntents struct {
	seed      maphash.Seed
	period    time.Duration
	confirmed time.Time // when period was last read from the bucket
	// due is signalled when a rotation waits for the period to be read again.
	due       chan struct{}
	cur, prev bloomGen
}

// bloomGen is one generation of ids: those added from start on, for one period.
type bloomGen struct {
	start  time.Time
	last   time.Time // when the latest id was added
	layers []*bloomLayer
}

// knownMargin is added to the bucket's max age to make the filter's period: an id is
// added before its record is written (claimIntent), and the server's clock, which ages
// records, may be ahead of Mirage's.
const knownMargin = time.Hour

// knownPeriod is how long the filter keeps a generation for a bucket that forgets
// records after ttl (0: never).
func knownPeriod(ttl time.Duration) time.Duration {
	if ttl <= 0 {
		return 0
	}
	return ttl + knownMargin
}

type bloomLayer struct {
	bits     []uint64
	n, limit int
}

// bloomHashes is the number of bit positions per id: with 10 bits per id, about 1% of
// unknown ids read as maybe.
const bloomHashes = 7

// newKnownIntents returns a filter whose period was read from the bucket at now.
func newKnownIntents(period time.Duration, now time.Time) *knownIntents {
	return &knownIntents{seed: maphash.MakeSeed(), period: period, confirmed: now, due: make(chan struct{}, 1)}
}

// setPeriod records the period read from the bucket at now: a longer one replaces it (0,
// records kept forever, is the longest), a shorter one does not.
func (k *knownIntents) setPeriod(period time.Duration, now time.Time) {
	switch {
	case k.period <= 0:
	case period <= 0:
		k.period = 0
	default:
		k.period = max(k.period, period)
	}
	k.confirmed = now
}

func newBloomLayer(limit int) *bloomLayer {
	return &bloomLayer{bits: make([]uint64, (limit*10+63)/64), limit: limit}
}

// hashes derives the two hashes of id that pick its bit positions (double hashing).
func (k *knownIntents) hashes(id string) (uint64, uint64) {
	h := maphash.String(k.seed, id)
	return h, h>>32 | h<<32 | 1
}

// rotate starts a new generation when the current one is a period old, and drops the
// previous one then. Ids of the current generation were added less than a period after
// its start: two periods after its start, none of their records is left. A rotation
// waits (signalling due) until the period has been read again since it came due.
func (k *knownIntents) rotate(now time.Time) {
	switch {
	case k.period <= 0:
	case k.cur.start.IsZero():
		k.cur.start = now
	case now.Sub(k.cur.start) < k.period:
	case k.confirmed.Before(k.cur.start.Add(k.period)):
		select {
		case k.due <- struct{}{}:
		default:
		}
	case now.Sub(k.cur.start) >= 2*k.period && now.Sub(k.cur.last) >= k.period:
		k.prev, k.cur = bloomGen{}, bloomGen{start: now}
	case now.Sub(k.cur.start) >= k.period:
		k.prev, k.cur = k.cur, bloomGen{start: now}
	}
}

// add remembers id, added (or its record written) at now.
func (k *knownIntents) add(id string, now time.Time) {
	k.rotate(now)
	g := &k.cur
	if len(g.layers) == 0 || g.layers[len(g.layers)-1].n >= g.layers[len(g.layers)-1].limit {
		limit := 1 << 16
		if len(g.layers) > 0 {
			limit = g.layers[len(g.layers)-1].limit * 2
		}
		g.layers = append(g.layers, newBloomLayer(limit))
	}
	l := g.layers[len(g.layers)-1]
	h1, h2 := k.hashes(id)
	m := uint64(len(l.bits) * 64)
	for i := uint64(0); i < bloomHashes; i++ {
		p := (h1 + i*h2) % m
		l.bits[p/64] |= 1 << (p % 64)
	}
	l.n++
	if now.After(g.last) {
		g.last = now
	}
}

// mayHave is false only for an id never added, or added more than a period before the
// generation that held it was dropped (at least a period ago).
func (k *knownIntents) mayHave(id string, now time.Time) bool {
	k.rotate(now)
	h1, h2 := k.hashes(id)
	for _, g := range [2]*bloomGen{&k.cur, &k.prev} {
		for _, l := range g.layers {
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
	}
	return false
}
