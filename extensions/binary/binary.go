// Package binary synthesizes BINARY (RFC 3516) where the upstream lacks
// it: FETCH BINARY[section]<partial>, BINARY.PEEK[...] and
// BINARY.SIZE[section], decoded by the proxy from the upstream's BODY
// data. Where the upstream advertises BINARY, everything is relayed and
// nothing here acts.
//
// # How a FETCH with BINARY items is answered
//
// The extension answers the BINARY items itself, over Session.Exec, and
// passes the command's other items down the chain:
//
//  1. UID FETCH set (UID BODYSTRUCTURE) tells, for every message the
//     client knows, where each asked section is and its
//     Content-Transfer-Encoding (the upstream's MIME parse; no parser of
//     the proxy's own). A section with an encoding other than 7bit, 8bit,
//     binary, base64 and quoted-printable fails the whole command with
//     NO [UNKNOWN-CTE] before anything is sent (RFC 3516 4.2/3). A
//     malformed section (BINARY[1.0], BINARY[TEXT]) is answered BAD.
//  2. Each section's first chunkSize bytes are read with
//     BODY.PEEK[section]<0.n> over Session.Exec: a part that fits is
//     decoded in memory. A larger one is decoded twice, once counting (the
//     decoded size and whether it holds a NUL must be known before the
//     literal's header is written) and once streaming to the client; each
//     pass reads the part as one literal, as it arrives, on a connection
//     of the account's own (Account.Dial, EXAMINE, UID FETCH
//     BODY.PEEK[section]), closed after the pass. (Reading it in chunks
//     over Exec would cost a FETCH per chunk, and go-imap's server reads
//     the whole message for each: a 20 MB attachment did not come
//     within 10 s.)
//     The count is kept in an LRU (account, mailbox, UIDVALIDITY, UID,
//     section), since a message never changes, so BINARY.SIZE and a
//     repeated BINARY fetch skip the counting pass. Memory per command is
//     a chunk and the decoders' buffers, whatever the part's size.
//  3. One untagged FETCH per message carries its BINARY items (with UID
//     for UID FETCH): BINARY[section]<origin> as a literal8 (~{n}) when
//     the decoded data holds a NUL, else as a literal; BINARY.SIZE as a
//     number. <partial> applies to the decoded data (RFC 3516 4.2).
//  4. Without .PEEK the messages get \Seen by UID STORE +FLAGS.SILENT,
//     after their data was sent (unless the mailbox is read-only); the
//     client hears the new flags from the hub before the tagged answer.
//  5. The other items go down the chain as a UID FETCH of their own, so
//     the core's translation, FLAGS and CONDSTORE's MODSEQ apply to them
//     as usual: a message then has two FETCH responses, which RFC 3501
//     7.4.2 allows. A FETCH of BINARY items only is answered by the
//     extension, except that a UID FETCH, or any FETCH once CONDSTORE is
//     enabled, still sends UID down the chain so that the core reports
//     UID and MODSEQ for each message.
//
// # Sections
//
//   - BINARY[1], BINARY[1.2]: a leaf part, decoded by its own encoding.
//     For text/* parts bare LF becomes CRLF after decoding (RFC 3516 4.2:
//     textual sections are always sent with CRLF).
//   - A multipart or message/rfc822 part: by RFC 2045 6.4 its encoding
//     can only be 7bit, 8bit or binary, which need no decoding; it is
//     sent as BODY[section] gives it (its inner parts stay encoded).
//   - BINARY[] (section-binary allows an empty part list, the whole
//     message): a multipart message, or a single-part one in an identity
//     encoding, is sent as BODY[] gives it; a single-part message in
//     base64 or quoted-printable is sent as its header, unchanged but for
//     Content-Transfer-Encoding set to binary (the header is rewritten
//     with go-message's textproto), then the decoded body.
//   - A section the message does not have is answered NIL (BINARY.SIZE 0).
//
// A failure of the upstream before a message's FETCH response started is
// answered NO (the responses of earlier messages stay sent); one in the
// middle of a literal already started cannot be told the client: the
// session ends, as the core does with a streamed relay cut short.
//
// # Where it differs from Dovecot's own BINARY
//
// extensions/binary/dovecot_test.go compares the synthesized answers over
// Dovecot's legacy profile with Dovecot 2.3's own: the same bytes and
// sizes, partials and UNKNOWN-CTE, but for three choices made here:
//   - Dovecot sends every decoded section as a literal8; the proxy sends
//     one only when the data holds a NUL, and a plain literal otherwise,
//     as RFC 3516 4.3 recommends (SHOULD).
//   - Dovecot sends a base64 text part's bare LFs as they are; the proxy
//     sends text/* sections with CRLF (RFC 3516 4.3's MUST), so its
//     BINARY.SIZE of such a part counts the CRs.
//   - BINARY[] of a multipart message: Dovecot decodes every leaf and
//     rewrites their headers; the proxy sends the message as BODY[] does.
//
// # Place in the chain
//
// After condstore: condstore turns CHANGEDSINCE into the UID set of the
// changed messages and MODSEQ into the core's reporting before this
// extension sees the FETCH, so the BINARY items are answered for exactly
// those messages and MODSEQ still comes for each (in the FETCH responses
// of the rest of the command, or of UID alone, see step 5).
//
// # APPEND with literal8
//
// An APPEND whose first message is a literal8 (~{n}) may hold NUL, bare CR
// or LF and long lines, which an IMAP4rev1 server may refuse or damage.
// Each of its literals is spooled as it arrives (extensions/internal/
// urlfetch's Spool: a file, unlinked at creation, beyond a few KiB; closed when
// the command ends), within the proxy's APPEND limits (MaxAppendLiteral
// per message, MaxCommandBytes in all; larger ones get NO [TOOBIG] before
// the client sends them). Each literal8 message is then re-encoded from
// the spool into the spool, and the command goes down the chain as a plain
// APPEND whose literals are the spooled ones, non-synchronising
// (Exchange.Restream): the relay streams it upstream, waiting for the
// continuation requests of an upstream without LITERAL+, and uidplus's
// APPENDUID works on it as on any APPEND. A re-encoded message over the
// limits gets NO [TOOBIG]. Memory is the readers' buffers and one header
// block (at most 256 KiB, longer ones are refused NO [PARSE]), whatever
// the message's size; disk is the message and its re-encoded form.
//
// Re-encoding walks the MIME structure twice with go-message's textproto
// (headers, multipart reader and writer): the first pass decides for each
// leaf whether it must be encoded (the header must say so before the body,
// and whether 7bit data is valid is known only at its end), the second
// writes. A leaf part in Content-Transfer-Encoding binary, or in
// 7bit/8bit (or none) with data that is not valid in a message (NUL, bare
// CR or LF, a line over 998 octets, RFC 5322 2.1.1), is written in base64
// and its Content-Transfer-Encoding header set so; other parts are copied
// byte for byte; message/rfc822 parts are walked too (their encoding must
// stay identity, RFC 2045 6.4). A multipart's preamble and epilogue are
// dropped. A later message of a MULTIAPPEND is re-encoded when it is a
// literal8 too; one that starts with a plain literal is relayed as it is,
// even if a later message is a literal8.
package binary

import (
	"context"
	"strings"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// chunkSize is how much of a part one upstream FETCH reads: below the
// upstream connection's default inline literal limit (64 KiB), which
// Session.Exec's responses must fit.
const chunkSize = 48 << 10

// cacheEntries bounds the LRU of decoded sizes.
const cacheEntries = 4096

// Extension synthesizes BINARY.
type Extension struct {
	sizes *lru.Cache[sizeKey, sizeInfo]
	// chunk is chunkSize; tests make it small to exercise the two-pass
	// path with small messages.
	chunk int
	// maxAppend, when set, lowers the session's MaxAppendLiteral for
	// literal8 APPENDs; for tests.
	maxAppend int64
	// spoolDir is where literal8 APPENDs are spooled ("" os.TempDir()).
	spoolDir string
}

// sizeKey names a section of a message for good.
type sizeKey struct {
	account, mailbox string
	uidValidity, uid uint32
	section          string
}

// sizeInfo is what the counting pass learns.
type sizeInfo struct {
	size   int64
	hasNUL bool
}

// New returns the extension.
func New() *Extension {
	c, _ := lru.New[sizeKey, sizeInfo](cacheEntries)
	return &Extension{sizes: c, chunk: chunkSize}
}

func (*Extension) Name() string { return "binary" }

// Capabilities adds BINARY after login where the upstream lacks it.
func (*Extension) Capabilities(st proxy.State, up upstream.Caps) []string {
	if st >= proxy.StateAuthenticated && !up.Has("BINARY") {
		return []string{"BINARY"}
	}
	return nil
}

// Commands names FETCH in both forms and APPEND.
func (*Extension) Commands() []string { return []string{"FETCH", "UID FETCH", "APPEND"} }

// PipelineSafe lets a FETCH go upstream before the previous command's
// answers are relayed (proxy.PipelineSafe) when binary passes it on as it
// is: the upstream has BINARY, or the FETCH asks for no BINARY item.
func (e *Extension) PipelineSafe(x *proxy.Exchange) bool {
	if strings.TrimPrefix(x.Name, "UID ") != "FETCH" {
		return false
	}
	return x.Session().UpstreamCaps().Has("BINARY") || !strings.Contains(strings.ToUpper(string(x.Segments[0].Text)), "BINARY")
}

// ServeCommand relays where the upstream has BINARY and answers the
// BINARY items of a FETCH itself otherwise.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	if s.UpstreamCaps().Has("BINARY") {
		return next(ctx, x)
	}
	if x.Name == "APPEND" {
		return e.serveAppend(ctx, x, next)
	}
	if s.Mailbox() == nil {
		return next(ctx, x)
	}
	if !strings.Contains(strings.ToUpper(string(x.Segments[0].Text)), "BINARY") {
		return next(ctx, x)
	}
	return e.serveFetch(ctx, x, next)
}
