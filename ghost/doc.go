// Package ghost is the Ghost runtime. Ghost owns execution: command intake on cmd.<id>,
// the guards that decide whether a command may run, seed dispatch (seed.execute →
// seed.result), the execution store that makes execution at-most-once, and the emission of
// exactly one terminal event per command on evt.<id>. It also keeps the Ghost's session
// with a Mirage (register, heartbeat) when its policy asks for one.
//
// Ghost does not own desired state: it never decides which Ghosts run what (Mirage does).
package ghost
