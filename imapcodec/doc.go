// Package imapcodec reads and writes the IMAP wire format (RFC 3501, RFC 9051)
// for both directions of the proxy and for the conformance suite.
//
// The package is split in two layers:
//
//   - Framing ([Reader]): IMAP is line-oriented, except that a line may end in a
//     literal header ("{n}", "{n+}", "~{n}") announcing n raw bytes that belong
//     to the same command or response. The Reader hands out one line of text at
//     a time and the literal after it as a bounded stream, so a 50 MB APPEND or
//     FETCH body can be relayed without ever being held in memory.
//
//   - Syntax ([Parse], [ParseResponseHead], [Value]): commands and responses
//     that the proxy interprets itself are small; they are gathered in memory as
//     [Segment]s (bounded by [Limits]) and parsed into atoms, strings and
//     lists. Responses that the proxy merely relays are only parsed as far as
//     their head (tag, number, name, status and response code).
//
// Every size is bounded: line length, literal size and list nesting depth, so a
// hostile peer cannot make the process allocate without limit.
package imapcodec
