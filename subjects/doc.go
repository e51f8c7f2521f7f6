// Package subjects owns the subject grammar of edgectl and the validation of every
// identifier that can appear in a subject or an envelope. It is the only place a
// subject string is built: other packages call these builders and never concatenate.
//
// subjects does not own envelopes (see bus) nor any NATS connection.
package subjects
