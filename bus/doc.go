// Package bus owns what travels on NATS and how it is carried: the canonical envelopes
// (issue, command, seed.execute, seed.result, event, event.ack, report, register,
// register.ack, heartbeat), their JSON codec and validation, the error taxonomy, the NATS
// connection options (inbox prefixes, client TLS, certificate identities), and the
// provisioning of the JetStream streams and KV buckets. It is the client side: the server
// (embedded nats-server, users, permissions) is package natsd, which Ghost never needs.
//
// bus does not decide anything about intents or executions: Mirage and Ghost do.
package bus
