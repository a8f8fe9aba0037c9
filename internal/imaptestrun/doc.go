// Package imaptestrun runs Dovecot's own scripted IMAP test suite (the
// imaptest tool's src/tests, github.com/dovecot/imaptest) through
// lemonproxy, for issue 17's acceptance test: in front of Dovecot's legacy
// profile, the proxy must run (advertise what the group needs) and pass
// every group that runs and passes against Dovecot's full profile directly.
//
// The package holds only a test, TestImaptest, gated by the environment
// variable LEMONPROXY_IMAPTEST naming the imaptest binary: without it the
// test is skipped, so that `go test ./...` and CI stay fast and need no C
// toolchain. scripts/imaptest.sh builds imaptest from ../shared/imaptest
// when needed and runs it; docs/conformance.md ("Dovecot's imaptest
// through lemonproxy") records the results.
//
// Each group runs alone, with a user of its own on each server: every
// group deletes and re-creates its mailbox, and Dovecot 2.3 answers
// "NO Mailbox was deleted under us" or NO [SERVERBUG] when another
// connection (such as the proxy's watcher of the previous group) still has
// it open, which would make whole-suite runs measure Dovecot rather than
// the proxy.
package imaptestrun
