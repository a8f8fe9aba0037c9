// Package load is lemonproxy's load generator ("lemonproxy load"): many
// IMAP client sessions against a server (lemonproxy, or Dovecot directly
// for comparison), in five scenarios:
//
//   - idle: sessions log in, select INBOX and IDLE; the target's memory per
//     idle session (RSS of a local process, PSS of a Dovecot process tree)
//     and the upstream connections it holds.
//   - push: idle sessions while APPENDs arrive from outside at a fixed rate;
//     the latency from each APPEND's tagged OK to each session's EXISTS.
//   - resync: a large mailbox, a few changes, clients reconnect with
//     QRESYNC; bytes and time beside a full UID FETCH 1:* (FLAGS).
//   - fetch: bulk FETCH of bodies; throughput, CPU per MB, compression.
//   - mixed: a mobile client's day (connect, QRESYNC, fetch, IDLE, drop the
//     link, reconnect) for many clients while the tool changes their
//     mailboxes from outside, checking every client's view against a model
//     of what the tool did; any inconsistency is an error.
//
// Every read has a timeout, every run is bounded in sessions and time, and
// the tool counts errors rather than hiding them: a run with errors exits 1.
// Results are a table or JSON; cmd/loadplot (go run ./load/loadplot) turns
// JSON results into the plots in docs/load. See docs/load.md.
package load
