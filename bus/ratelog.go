package bus

import (
	"sync"
	"time"
)

// RateLog lets a warning through at most once per RateLogEvery, counting the ones it held
// back: a peer flooding a subject with what is refused must not flood the log. The zero
// value is ready to use.
type RateLog struct {
	mu   sync.Mutex
	last time.Time
	held int
}

// RateLogEvery is how often a RateLog lets a warning through.
const RateLogEvery = 10 * time.Second

// Allow reports whether to log now, and how many occurrences (this one included) the line
// stands for.
func (r *RateLog) Allow() (bool, int) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held++
	if !r.last.IsZero() && now.Sub(r.last) < RateLogEvery {
		return false, 0
	}
	n := r.held
	r.last, r.held = now, 0
	return true, n
}
