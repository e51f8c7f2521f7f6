// Package natsd is the server side of the bus: the embedded nats-server, the users and
// permissions of a fleet, the authorization config for an external server, and server TLS.
//
// It is the only package that imports nats-server. Clients (Ghost, ghostctl, the CLIs'
// client commands) need only package bus, so an agent does not carry a server it never
// runs.
package natsd
