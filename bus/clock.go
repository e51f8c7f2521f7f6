package bus

import "time"

// ClockWarnAt is how far a Ghost's clock may be off Mirage's before either logs a warning
// (and 'miragectl ghosts' flags it). Commands are judged on Mirage's clock as the Ghost
// learns it at registration, so a larger offset costs no command; it makes events' times
// and logs disagree across machines.
const ClockWarnAt = 5 * time.Second
