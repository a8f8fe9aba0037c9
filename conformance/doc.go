// Package conformance checks an IMAP server, RFC section by RFC section,
// for the behaviours mobile clients depend on: CONDSTORE and QRESYNC
// (RFC 7162), NOTIFY (RFC 5465), COMPRESS (RFC 4978), IDLE (RFC 2177),
// ENABLE (RFC 5161), a base set of RFC 3501, and a report of the Lemonade
// profile's extensions (RFC 5550). It backs "lemonproxy conformance" and the
// project's own tests against Dovecot and, later, against lemonproxy itself.
//
// The suite is strict on purpose: an advertised extension that does not
// deliver (NOTIFY that sends no events, CONDSTORE without MODSEQ in
// unsolicited FETCH) fails, because that is exactly what breaks a phone's
// sync. It talks to the server through its own raw client on imapcodec, not
// a client library, so that it sees responses exactly as sent: order,
// response codes, and the items each FETCH carries.
//
// Each Scenario names its RFC, section and requirement level, needs the
// capabilities it lists (and is skipped without them), works in mailboxes
// of its own, and deletes them afterwards. Changes "made by someone else"
// come from a second connection, optionally to another endpoint (the
// upstream behind a proxy). See docs/conformance.md.
package conformance
