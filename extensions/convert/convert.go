// Package convert offers CONVERT (RFC 5259) in front of any upstream:
// the CONVERSIONS command and CONVERT / UID CONVERT, synthesized from the
// upstream's BODYSTRUCTURE and BODY data where the upstream lacks CONVERT
// (every known server: Dovecot has none), relayed where it has it.
//
// # What converts
//
// Every part converts to its own media type, its
// Content-Transfer-Encoding decoded (base64, quoted-printable; as BINARY
// sends it), and this is what the default conversion (NIL) picks. A
// text/* leaf part also converts to another charset: the "charset"
// conversion parameter names it (any charset golang.org/x/text knows,
// by its MIME name or a common alias), "unknown-character-replacement"
// (1 to 4 bytes, as RFC 5259's example server) replaces the characters the target lacks; without it
// such a character fails the conversion with BADPARAMETERS (RFC 5259
// 7.1). Text is sent with CRLF line ends (RFC 3516 4.3). BODY[HEADER],
// BODY[n.HEADER] and BODY[n.MIME] with a "charset" re-encode the header's
// encoded-words (RFC 2047) in that charset. Nothing converts from one media
// type to another; CONVERSIONS lists exactly this (see plan.go).
//
// # How a CONVERT is answered
//
// The core translates CONVERT's sequence numbers into UIDs like FETCH's
// (the extension is a proxy.SequenceCommander), so no EXPUNGE reaches the
// client during a CONVERT. The extension then
//
//  1. refuses more than MaxConvertMessages messages (NO
//     [MAXCONVERTMESSAGES n]) or MaxConvertParts data items (NO
//     [MAXCONVERTPARTS n]) before reading anything (RFC 5259 8.5);
//  2. reads the messages' BODYSTRUCTURE (UID FETCH set (UID
//     BODYSTRUCTURE)) and decides, per section, the conversion or its
//     ERROR phrase (BADPARAMETERS for a part that does not exist, a
//     target type other than the part's, an unknown encoding or charset,
//     a parameter that does not apply; RFC 5259 9);
//  3. reads each part through extensions/internal/bodypart, the code
//     BINARY uses: a part that fits 48 KiB in memory, a larger one twice
//     in bounded memory, once to count the converted size (which the
//     literal's header, BINARY.SIZE and BODYPARTSTRUCTURE need, and which
//     finds a character the target charset lacks before anything is
//     sent) and once streamed to the client; the count is kept in an LRU
//     per conversion, so BINARY.SIZE stays the same in a session (RFC 5259
//     8.3);
//  4. writes one "* n CONVERTED (TAG "t") (...)" per message, UID first
//     where the command is UID CONVERT or asked for it (RFC 5259 8.1);
//  5. answers OK, or NO "All conversions failed" when every requested
//     conversion failed (RFC 5259 9 allows either). An upstream failure
//     before a message's response started is NO [TEMPFAIL]; one in the
//     middle of a streamed literal ends the session, as with BINARY.
//
// CONVERT never sets \Seen (RFC 5259 6).
//
// # Relay
//
// Where the upstream advertises CONVERT, CONVERSIONS is relayed as it is
// and CONVERT goes upstream in its UID form; each CONVERTED response is
// renumbered to the client's sequence number (by its UID item, which UID
// CONVERT always returns), its TAG set back to the client's tag, and the
// UID item dropped when the client neither used UID CONVERT nor asked for
// it.
//
// # Place in the chain
//
// Anywhere after condstore and beside binary: RFC 5259 3 requires BINARY
// with CONVERT, so the chain must have the binary extension (which
// advertises BINARY where the upstream lacks it). CONVERT is not a FETCH,
// so no other extension's FETCH handling applies to it.
//
// It keeps no per-account records (no accountdata prefix).
package convert

import (
	"context"
	"strconv"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// MaxConvertMessages is the most messages one CONVERT converts: each
// costs upstream FETCHes of its own, and a CONVERT 1:* of a big mailbox
// would hold the session for long. Beyond it the command gets NO
// [MAXCONVERTMESSAGES n] (RFC 5259 8.5).
const MaxConvertMessages = 100

// MaxConvertParts is the most data items (other than UID) of one CONVERT;
// beyond it NO [MAXCONVERTPARTS n] (RFC 5259 8.5).
const MaxConvertParts = 16

// chunkSize is how much of a part one upstream FETCH reads, as BINARY's:
// below the upstream connection's inline literal limit.
const chunkSize = 48 << 10

// cacheEntries bounds the LRU of converted sizes.
const cacheEntries = 4096

// Extension offers CONVERT.
type Extension struct {
	sizes *lru.Cache[sizeKey, info]
	// chunk, maxMessages and maxParts are chunkSize, MaxConvertMessages
	// and MaxConvertParts; tests lower them.
	chunk       int
	maxMessages int
	maxParts    int
}

// sizeKey names one conversion of a section of a message for good.
type sizeKey struct {
	account, mailbox string
	uidValidity, uid uint32
	section, conv    string
}

// info is what a counting pass learns about a converted part.
type info struct {
	size, lines int64
	nul         bool
	// unrepresentable: the text has a character the target charset
	// lacks and no replacement was given.
	unrepresentable bool
}

// New returns the extension.
func New() *Extension {
	c, _ := lru.New[sizeKey, info](cacheEntries)
	return &Extension{sizes: c, chunk: chunkSize, maxMessages: MaxConvertMessages, maxParts: MaxConvertParts}
}

func (*Extension) Name() string { return "convert" }

// Capabilities adds CONVERT after login: synthesized, or relayed (the core
// relays no CONVERT of its own accord).
func (*Extension) Capabilities(st proxy.State, up upstream.Caps) []string {
	if st >= proxy.StateAuthenticated {
		return []string{"CONVERT"}
	}
	return nil
}

// Commands names CONVERSIONS and CONVERT in both forms.
func (*Extension) Commands() []string { return []string{"CONVERSIONS", "CONVERT", "UID CONVERT"} }

// SequenceCommands tells the core that CONVERT takes sequence numbers as
// FETCH does (proxy.SequenceCommander).
func (*Extension) SequenceCommands() []string { return []string{"CONVERT"} }

// ServeCommand relays where the upstream has CONVERT and answers
// otherwise.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	if x.Name != "CONVERSIONS" && s.Mailbox() == nil {
		return x.Reply("BAD", "", "No mailbox selected.")
	}
	if s.UpstreamCaps().Has("CONVERT") {
		if x.Name == "CONVERSIONS" {
			return next(ctx, x)
		}
		return e.relay(ctx, x, next)
	}
	vals, err := imapcodec.NewParser(x.Segments, imapcodec.Limits{}).Values()
	if err != nil {
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": malformed arguments.")
	}
	if x.Name == "CONVERSIONS" {
		return e.serveConversions(x, vals)
	}
	req, err := parseRequest(vals)
	if err != nil {
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": "+err.Error()+".")
	}
	return e.serveConvert(ctx, x, req)
}

// serveConversions answers CONVERSIONS (RFC 5259 5.1).
func (e *Extension) serveConversions(x *proxy.Exchange, vals []imapcodec.Value) error {
	from, to, err := parseConversions(vals)
	if err != nil {
		return x.Reply("BAD", "", "Error in IMAP command CONVERSIONS: "+err.Error()+".")
	}
	s := x.Session()
	for _, t := range conversions(from, to) {
		if err := s.Write(conversionLine(t)); err != nil {
			return err
		}
	}
	return x.Reply("OK", "", "CONVERSIONS completed.")
}

func appendInt(b []byte, n int64) []byte { return strconv.AppendInt(b, n, 10) }
