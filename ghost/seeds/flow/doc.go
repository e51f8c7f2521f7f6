// Package flow is the built-in seed.flow: harmless, deterministic operations (status, echo,
// step, sleep) for demos and tests. It owns nothing but its own output: no state, no files,
// no processes. Argument checks against the declared patterns are the Ghost's; the seed
// re-checks only what a pattern cannot say (the 60000 ms ceiling of sleep, message length).
package flow
