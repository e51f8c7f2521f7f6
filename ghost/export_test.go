package ghost

import "time"

// SetResendPatience shortens how long a re-send tries one event before leaving it for the
// next pass (resendPatience), for tests that watch a re-send give up.
func SetResendPatience(c *Config, d time.Duration) { c.resendPatience = d }
