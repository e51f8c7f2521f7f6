package testenv

import "github.com/nats-io/nats.go"

// StatusHeaders are headers with which a stored message with an empty body reads, to
// nats.go's consumers, as a status of the server: 400 and 409 "Consumer Deleted" stop a
// consumer, 503 is "no responders", 100 a heartbeat (dropped in silence), 408 and 404 a
// pull request's end. Anyone who may publish on a subject a stream captures can store one.
var StatusHeaders = []nats.Header{
	{"Status": {"400"}, "Description": {"Bad Request"}},
	{"Status": {"409"}, "Description": {"Consumer Deleted"}},
	{"Status": {"503"}},
	{"Status": {"100"}, "Description": {"Idle Heartbeat"}},
	{"Status": {"408"}, "Description": {"Request Timeout"}},
	{"Status": {"404"}, "Description": {"No Messages"}},
}
