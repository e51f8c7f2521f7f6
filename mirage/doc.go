// Package mirage is the Mirage runtime. Mirage owns orchestration: issue intake on
// mirage.issue, target resolution against the fleet registry, desired state (intents in KV
// edge_intents), dispatch of one command per target into EDGE_CMD, ingest of events from
// EDGE_EVT (counted once per event_id, answered with event.ack), observed state, and the
// reports published on report.<intent_id>. It also keeps the fleet registry (register,
// heartbeat) in KV edge_ghosts.
//
// Mirage never executes a seed: Ghosts do.
package mirage
