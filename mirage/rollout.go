package mirage

import (
	"fmt"

	"github.com/edgectl/edgectl/bus"
)

// Rollout: which units of an intent run next. An intent's steps run in order; within a
// step, at most MaxConcurrency units run at once; once more than MaxErrors units failed,
// units not yet started are skipped; a step that does not succeed stops the plan. A
// blocking step holds a lock on ghost_id::seed_selector for each of its targets while it
// runs: another intent that needs one of them waits, and its reports say why.

// locks maps ghost_id::seed_selector to the intent holding it. Guarded by Mirage.mu.
type locks map[string]string

func lockKey(ghostID, seed string) string { return ghostID + "::" + seed }

// acquire takes every lock the step needs for li, or none: it returns the first lock held
// by another intent.
func (l locks) acquire(li *liveIntent, st StepRecord) (key, holder string) {
	keys := make([]string, 0, len(st.Targets))
	for _, g := range st.Targets {
		k := lockKey(g, st.Objective.SeedSelector)
		if h, ok := l[k]; ok && h != li.rec.IntentID {
			return k, h
		}
		keys = append(keys, k)
	}
	for _, k := range keys {
		l[k] = li.rec.IntentID
	}
	li.locks = keys
	return "", ""
}

// advance moves li's rollout as far as it can and returns the units to dispatch now, and
// whether it released locks (so that waiting intents may go on). Called with m.mu held.
func (m *Mirage) advance(li *liveIntent) (units []int, released bool) {
	steps := li.rec.Steps
	for li.cur < len(steps) {
		st := steps[li.cur]
		end := st.First + len(st.Targets)
		if li.started < li.cur {
			// A step whose every unit has ended (recovered after a restart) runs nothing
			// more: it takes no lock, and what follows is decided at once.
			if st.Blocking && li.stepTerminal[li.cur] < len(st.Targets) {
				if key, holder := m.locks.acquire(li, st); holder != "" {
					reason := m.lockReason(key, holder)
					if li.waiting != reason {
						li.waiting, li.dirty = reason, true
					}
					return units, released
				}
				li.lockStep = li.cur
			}
			li.waiting = ""
			li.started = li.cur
			li.next = st.First
			li.dirty = true
		}
		reason := ""
		switch {
		case li.rec.MaxErrors >= 0 && li.errs > li.rec.MaxErrors:
			reason = fmt.Sprintf("not started: %d targets failed, more than max-errors %d", li.errs, li.rec.MaxErrors)
		case li.rec.DeliverByMS > 0 && m.cfg.Now().UnixMilli() >= li.rec.DeliverByMS:
			// A command sent now would reach its Ghost past deliver_by and be refused
			// (expired, counted as an error): a unit whose turn came too late never starts.
			reason = "not started: its turn came after the delivery deadline (deliver_by)"
		}
		if reason != "" {
			for ; li.next < end; li.next++ {
				if li.wasSent(li.next) && li.results[li.next].Outcome == bus.OutcomePending {
					// Running when Mirage restarted: followed to its end.
					units = append(units, li.next)
					li.inflight++
					continue
				}
				li.skip(li.next, reason)
			}
		}
		for li.next < end && (li.rec.MaxConcurrency <= 0 || li.inflight < li.rec.MaxConcurrency) {
			if li.results[li.next].Outcome == bus.OutcomePending {
				units = append(units, li.next)
				li.inflight++
			}
			li.next++
		}
		if li.stepTerminal[li.cur] < len(st.Targets) {
			return units, released
		}
		released = m.releaseLocks(li) || released
		if li.stepSuccess[li.cur] < len(st.Targets) && li.cur+1 < len(steps) {
			reason := fmt.Sprintf("not started: plan step %d%s did not succeed", li.cur+1, stepName(st))
			for u := end; u < len(li.results); u++ {
				li.skip(u, reason)
			}
			li.next = len(li.results)
			li.cur = len(steps)
			return units, released
		}
		li.cur++
	}
	return units, released
}

func stepName(st StepRecord) string {
	if st.Name == "" {
		return ""
	}
	return " (" + st.Name + ")"
}

// resume rebuilds the rollout of an intent recovered after a restart from its replayed
// results: the first step not yet satisfied is current, and its first pending units, up
// to MaxConcurrency, count as in flight (they are re-dispatched with the same command ids).
// Units that were sent (li.sent) come first in that order, since units are sent in order,
// and are dispatched again even when max-errors stops the others.
func (li *liveIntent) resume() {
	li.errs = 0
	for _, r := range li.results {
		switch r.Outcome {
		case bus.OutcomeError, bus.OutcomeTimeout, bus.OutcomeExpired:
			li.errs++
		}
	}
	li.cur = 0
	for li.cur < len(li.rec.Steps) {
		st := li.rec.Steps[li.cur]
		if li.stepTerminal[li.cur] < len(st.Targets) || li.stepSuccess[li.cur] < len(st.Targets) {
			break
		}
		li.cur++
	}
	li.started, li.next, li.inflight = li.cur-1, 0, 0
	if li.cur < len(li.rec.Steps) {
		li.next = li.rec.Steps[li.cur].First
	}
}
