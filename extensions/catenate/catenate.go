// Package catenate offers CATENATE (RFC 4469): an APPEND whose message is
// put together from TEXT parts the client sends and URL parts (RFC 5092)
// naming messages, or parts of them, already on the server.
//
// # Relayed or synthesized
//
// Where the upstream has CATENATE, the APPEND is relayed as it is (the
// core streams it; the upstream resolves the URLs against the same
// account), unless the extension offers MULTIAPPEND in the upstream's
// stead (below). Where it has not, or where URL parts may carry URLAUTH
// authorizations the proxy made (Config.Auth: the proxy synthesizes
// URLAUTH, and the upstream could not check the proxy's tokens), the
// extension builds the message itself:
//
//  1. The command is read with Exchange.ReadStreamed: parts in order, each
//     TEXT literal copied to a spool (urlfetch.Spool: memory up to
//     urlfetch.SpoolMemory, then a file) as it arrives, each URL resolved
//     when it is read (below) and its data appended to the same spool. So
//     the spool holds the message in order, and a bad URL is answered
//     NO [BADURL url] before the next synchronising literal is invited, as
//     RFC 4469 5 lets a server do: the client sends nothing more.
//  2. The message goes upstream as one plain APPEND with one literal
//     (Exchange.Restream), its size now known; the handlers after this one
//     and the core's relay see an ordinary streamed APPEND, so uidplus's
//     APPENDUID (its Message-ID peek, its literal size) works on it and
//     the upstream's synchronising literal is handled as for any APPEND.
//
// Why spool, not fetch the sizes first: the size of a synchronising
// upstream literal must be known before its first byte, and the last TEXT
// part's size is known only when the client has sent everything before
// it, so client data must be held somewhere in any design; sizes of URL
// parts would cost a FETCH of BODYSTRUCTURE or of the part itself, and
// HEADER or HEADER.FIELDS sections have no size the server announces. A
// file costs disk, not memory, and reads each byte once from the client
// and from the upstream. The spool (urlfetch.Spool) is bounded: a message beyond the
// proxy's MaxAppendLiteral, or a command beyond MaxCommandBytes
// (Session.AppendLimits), is refused NO [TOOBIG] (before the literal that
// would pass the limit is invited, when it is synchronising); the file is
// unlinked at creation, so nothing is left behind even by a crash, and
// closed when the command ends. Memory is a copy buffer and one upstream
// chunk (urlfetch.ChunkSize).
//
// # URLs
//
// A URL part is resolved through the session's own upstream account
// (extensions/internal/urlfetch): "/mailbox..." relative URLs, whose base
// is the session's own server and user (RFC 4469 3: the base URL is
// "imap://user@server/"), and absolute URLs naming one of Config.Hosts
// and the session's own user. A URL of another user, host or account is
// refused with NO [BADURL url], never read; so is one that names no
// message (a mailbox, a search), a message or section that does not
// exist, a UIDVALIDITY that is not the mailbox's, or an unparsable URL.
// But an APPEND to a mailbox that does not exist is answered
// NO [TRYCREATE] rather than BADURL, as Dovecot's CATENATE answers it (the
// client can do something about it; RFC 4469 does not say which error
// comes first). A
// URL with URLAUTH (";URLAUTH=access:mech:token") is checked by
// Config.Auth (the urlauth extension: the token, its expiry, its access
// identifier against the session's user) and then read like any other
// URL of the account; without Config.Auth it is refused.
//
// # MULTIAPPEND
//
// Several messages in one APPEND (RFC 3502), CATENATE or not, go upstream
// as one MULTIAPPEND where the upstream has it; where it has UIDPLUS but
// not MULTIAPPEND the extension offers MULTIAPPEND itself and appends the
// messages one by one, rolling back on a failure (multiappend.go,
// docs/multiappend.md); elsewhere a second message is answered BAD. Over
// such an upstream every APPEND is read (a mailbox name sent as a literal
// becomes a quoted string) but one whose first message is a literal8,
// which extensions/binary converts and, for several messages, refuses,
// unless the upstream has BINARY: then literal8 messages are read too and
// go upstream as literal8s.
// TEXT parts in literal8 form (RFC 3516 with CATENATE) are refused.
//
// Two limits, each failing cleanly with nothing stored:
//
//   - Over an upstream with MULTIAPPEND, an APPEND whose first message is
//     plain goes upstream unread (streamed: reading every APPEND to find a
//     later CATENATE would spool every upload), so a later message's
//     CATENATE is the upstream's: one without CATENATE answers BAD, and a
//     URL with a URLAUTH token the proxy issued is refused there with NO
//     [BADURL] (Dovecot: "Relative URL required"); the upstream's
//     MULTIAPPEND is all or nothing. Send such a message in an APPEND of
//     its own, or first.
//   - Where the proxy builds a CATENATE over an upstream that issues
//     URLAUTH tokens itself (one with URLAUTH but without CATENATE, or
//     without MULTIAPPEND), a URL with such a token is refused NO [BADURL]:
//     the proxy cannot check the upstream's tokens. No such server is
//     known (those with URLAUTH have both).
package catenate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"

	"github.com/lemonproxy/lemonproxy/extensions/internal/urlfetch"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/imapurl"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Authorizer checks URLAUTH-authorized URLs (RFC 4467) for CATENATE's URL
// parts: the urlauth extension implements it.
type Authorizer interface {
	// AuthorizeURL checks u, which carries URLAUTH: its token is valid
	// and unexpired and its access identifier admits the session.
	AuthorizeURL(ctx context.Context, s *proxy.Session, u *imapurl.URL) error
	// Synthesized reports whether the proxy, not the upstream (whose
	// capabilities are up), checks URLAUTH tokens.
	Synthesized(up upstream.Caps) bool
}

// Config configures the extension.
type Config struct {
	// Hosts are the names clients reach the proxy under; an absolute URL
	// must name one. Empty: urlfetch.DefaultHosts().
	Hosts urlfetch.Hosts
	// SpoolDir is where messages are put together; "" is os.TempDir().
	SpoolDir string
	// Auth checks URL parts with URLAUTH; nil refuses them.
	Auth Authorizer
}

// Extension offers CATENATE.
type Extension struct {
	cfg                   Config
	relayed, synthesized  atomic.Int64
	multi, rollbackFailed atomic.Int64
	// hook, for tests, is called at the named points of a command, so
	// that a test can interleave another client's change there.
	hook func(point string)
}

func (e *Extension) at(point string) {
	if e.hook != nil {
		e.hook(point)
	}
}

// Stats counts what the extension did, for tests and metrics.
type Stats struct {
	// Relayed counts APPENDs with CATENATE passed on to an upstream that
	// has CATENATE; Synthesized those put together by the proxy (whatever
	// their outcome).
	Relayed, Synthesized int64
	// MultiAppends counts MULTIAPPENDs of several messages the proxy
	// appended one by one (whatever their outcome); RollbacksFailed those
	// whose rollback failed, leaving messages appended.
	MultiAppends, RollbacksFailed int64
}

// Stats returns the counts so far.
func (e *Extension) Stats() Stats {
	return Stats{Relayed: e.relayed.Load(), Synthesized: e.synthesized.Load(),
		MultiAppends: e.multi.Load(), RollbacksFailed: e.rollbackFailed.Load()}
}

// New returns the extension.
func New(cfg Config) *Extension {
	if len(cfg.Hosts) == 0 {
		cfg.Hosts = urlfetch.DefaultHosts()
	}
	return &Extension{cfg: cfg}
}

// Name implements proxy.Extension.
func (*Extension) Name() string { return "catenate" }

// Capabilities offers CATENATE once logged in, relayed or synthesized,
// and MULTIAPPEND where it is synthesized (see multiappend.go): over an
// upstream with UIDPLUS, whose APPENDUID and UID EXPUNGE make the
// rollback possible. Where the upstream has MULTIAPPEND the core relays
// its word.
func (*Extension) Capabilities(st proxy.State, up upstream.Caps) []string {
	if st != proxy.StateAuthenticated && st != proxy.StateSelected || up == nil {
		return nil
	}
	if synthesizesMulti(up) {
		return []string{"CATENATE", "MULTIAPPEND"}
	}
	return []string{"CATENATE"}
}

// Commands implements proxy.CommandHandler.
func (*Extension) Commands() []string { return []string{"APPEND"} }

// relays reports whether the upstream does CATENATE for the session.
func (e *Extension) relays(up upstream.Caps) bool {
	return up.Has("CATENATE") && (e.cfg.Auth == nil || !e.cfg.Auth.Synthesized(up))
}

// ServeCommand reads and builds an APPEND with CATENATE (see the package
// comment) and passes every other APPEND on.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	if !x.Streamed() {
		return next(ctx, x)
	}
	up := x.Session().UpstreamCaps()
	if !isCatenate(x.Segments[0].Text) {
		if lit := x.Segments[0].Literal; synthesizesMulti(up) && lit != nil && (!lit.Binary || up.Has("BINARY")) && isPlainAppend(x.Segments[0].Text) {
			// Perhaps several messages: read them (multiappend.go). A
			// literal8 (BINARY) first message goes upstream as one where
			// the upstream has BINARY; elsewhere it is binary's to
			// convert, and goes on unread.
			return e.synthesize(ctx, x, next)
		}
		return next(ctx, x)
	}
	if e.relays(up) && !synthesizesMulti(up) {
		// Over an upstream with CATENATE but without MULTIAPPEND, a
		// CATENATE may be the first of several messages, which the
		// upstream would take for a syntax error: such APPENDs are read
		// and built here like the others, the upstream's CATENATE unused.
		e.relayed.Add(1)
		return next(ctx, x)
	}
	e.synthesized.Add(1)
	return e.synthesize(ctx, x, next)
}

// refusal is an answer to the command, made while reading it.
type refusal struct{ status, code, text string }

func (r *refusal) Error() string { return r.status + " " + r.code + " " + r.text }

func syntaxRefusal(err error) *refusal {
	return &refusal{"BAD", "", "Error in IMAP command APPEND: " + strings.TrimPrefix(err.Error(), "syntax error: ") + "."}
}

// badURL is the NO [BADURL url] answer; url-resp-text may not hold "]"
// or control characters (RFC 4469 5 with erratum 2002), which are left out.
func badURL(raw string, why string) *refusal {
	clean := strings.Map(func(r rune) rune {
		if r < 0x20 || r == ']' || r == 0x7f {
			return -1
		}
		return r
	}, raw)
	if len(clean) > 1024 {
		clean = clean[:1024]
	}
	if clean == "" {
		clean = "-"
	}
	return &refusal{"NO", "BADURL " + clean, why}
}

func tooBig(limit int64) *refusal {
	return &refusal{"NO", "TOOBIG", fmt.Sprintf("The message would exceed the limit of %d bytes.", limit)}
}

var errUnavailable = &refusal{"NO", "UNAVAILABLE", "The message cannot be put together now; try again later."}

// spoolFailed is the refusal of a command whose spool write failed: LIMIT
// when the spools' disk space for the whole process is taken
// (urlfetch.SetSpoolDiskTotal), UNAVAILABLE for a failure of the disk.
func spoolFailed(s *proxy.Session, sp *urlfetch.Spool) *refusal {
	if errors.Is(sp.Err(), urlfetch.ErrSpoolFull) {
		return &refusal{"NO", "LIMIT", "Too many messages are being put together at the moment; try again later."}
	}
	s.Logger().Warn("catenate: spool write failed", "err", sp.Err())
	return errUnavailable
}

// synthesize answers an APPEND with CATENATE over an upstream without it.
func (e *Extension) synthesize(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	maxMsg, maxCmd := s.AppendLimits()
	up := s.UpstreamCaps()
	multi := up.Has("MULTIAPPEND") || synthesizesMulti(up)
	sp, spErr := urlfetch.NewSpool(e.cfg.SpoolDir, s.Account())
	if spErr != nil {
		s.Logger().Warn("catenate: cannot create a spool file", "err", spErr)
	} else {
		defer sp.Close()
	}
	p := &cmdParser{}
	msgSize := func(m *message) int64 {
		var n int64
		for _, pt := range m.parts {
			n += pt.n
		}
		return n
	}
	room := func(m *message) (int64, int64) {
		if left := maxCmd - sp.Size(); left < maxMsg-msgSize(m) {
			return left, maxCmd
		}
		return maxMsg - msgSize(m), maxMsg
	}
	checkMulti := func() error {
		if len(p.msgs) > 1 && !multi {
			return &refusal{"BAD", "", "Error in IMAP command APPEND: one message per APPEND (no MULTIAPPEND)."}
		}
		return nil
	}
	p.onURL = func(m *message, url string) error {
		if err := checkMulti(); err != nil {
			return err
		}
		if spErr != nil {
			return errUnavailable
		}
		left, limit := room(m)
		off := sp.Size()
		n, r := e.resolve(ctx, s, url, sp, left, limit)
		if r != nil && strings.HasPrefix(r.code, "BADURL ") && missingMailbox(ctx, s, p.mailbox) {
			return errTryCreate
		}
		if r != nil {
			return r
		}
		m.parts = append(m.parts, part{url: url, off: off, n: n})
		return nil
	}
	onLiteral := func(segs []imapcodec.Segment, r io.Reader) error {
		seg := segs[len(segs)-1]
		if err := p.feed(seg.Text); err != nil {
			return asRefusal(err)
		}
		kind, err := p.literal()
		if err != nil {
			return asRefusal(err)
		}
		h := seg.Literal
		if kind == litMailbox {
			if h.Binary || h.Size > maxMailboxLiteral {
				return syntaxRefusal(syntaxf("bad mailbox name"))
			}
			name, err := io.ReadAll(r)
			if err != nil {
				return err // the client's connection
			}
			return asRefusal(p.setMailbox(name))
		}
		if err := checkMulti(); err != nil {
			return err
		}
		m := p.msgs[len(p.msgs)-1]
		switch {
		case h.Binary && kind == litMessage && up.Has("BINARY"):
			m.binary = true // sent upstream as the literal8 it is
		case h.Binary && kind == litMessage && len(p.msgs) == 1:
			// Only after a mailbox name in a literal: an APPEND that
			// starts with a literal8 is binary's.
			return &refusal{"NO", "CANNOT", "A literal8 message after a mailbox name sent as a literal is not supported; send the name as a quoted string."}
		case h.Binary && kind == litMessage:
			return &refusal{"NO", "CANNOT", "A literal8 message after the first of a MULTIAPPEND is not supported."}
		case h.Binary:
			return &refusal{"NO", "CANNOT", "CATENATE with literal8 parts is not supported."}
		}
		if kind == litURL {
			if h.Size > imapurl.MaxLen {
				return badURL("-", "URL too long.")
			}
			data, err := io.ReadAll(r)
			if err != nil {
				return err
			}
			return p.onURL(m, string(data))
		}
		if kind == litMessage && len(p.msgs) == 1 && !h.NonSync && missingMailbox(ctx, s, p.mailbox) {
			// A plain APPEND read for MULTIAPPEND: refuse it before
			// inviting its literal, as the upstream would (RFC 3502 6's
			// example, RFC 3501 6.3.11).
			return errTryCreate
		}
		if spErr != nil {
			return errUnavailable
		}
		if left, limit := room(m); h.Size > left {
			return tooBig(limit)
		}
		off := sp.Size()
		n, err := io.Copy(sp, r)
		if sp.Err() != nil {
			return spoolFailed(s, sp)
		}
		if err != nil {
			return err // the client's connection
		}
		m.parts = append(m.parts, part{off: off, n: n})
		return nil
	}
	ok, err := x.ReadStreamed(maxMsg, onLiteral)
	if !ok {
		var r *refusal
		if errors.As(err, &r) {
			return x.Reply(r.status, r.code, r.text)
		}
		return err
	}
	last := x.Segments[len(x.Segments)-1]
	if err := p.feed(last.Text); err != nil {
		var r *refusal
		if errors.As(asRefusal(err), &r) {
			return x.Reply(r.status, r.code, r.text)
		}
		return err
	}
	if err := p.done(); err != nil {
		return x.Reply("BAD", "", syntaxRefusal(err).text)
	}
	if len(p.msgs) > 1 && !multi {
		return x.Reply("BAD", "", "Error in IMAP command APPEND: one message per APPEND (no MULTIAPPEND).")
	}
	if spErr != nil {
		return x.Reply(errUnavailable.status, errUnavailable.code, errUnavailable.text)
	}
	if len(p.msgs) > 1 && !up.Has("MULTIAPPEND") {
		return e.appendEach(ctx, x, p, sp)
	}
	first, rest := build(x.Tag, p, sp)
	x.Restream(first, rest)
	return next(ctx, x)
}

func asRefusal(err error) error {
	var r *refusal
	if errors.As(err, &r) {
		return r
	}
	if errors.Is(err, errSyntax) {
		return syntaxRefusal(err)
	}
	return err
}

// errTryCreate answers an APPEND to a mailbox that does not exist.
var errTryCreate = &refusal{"NO", "TRYCREATE", "The mailbox does not exist."}

// missingMailbox reports whether the upstream certainly has no mailbox
// named mailbox (the APPEND's argument as the client spelt it: an atom or
// a quoted string). It is asked only when a URL part is bad: a command
// that is wrong twice is answered NO [TRYCREATE] (RFC 3501 6.3.11), as an
// upstream that has CATENATE answers it (Dovecot, which imaptest's
// catenate test expects), so that the client creates the mailbox before
// it learns of the URL; RFC 4469 does not order the two. INBOX in any
// case, a name with wildcards, or an upstream that fails the LIST, counts
// as existing.
func missingMailbox(ctx context.Context, s *proxy.Session, mailbox string) bool {
	if strings.ContainsAny(mailbox, "*%") || strings.EqualFold(strings.Trim(mailbox, `"`), "INBOX") {
		return false // INBOX always exists, whatever its case (RFC 3501 5.1)
	}
	found := false
	_, err := s.Exec(ctx, `LIST "" `+mailbox, func(r *upstream.Response) {
		if r.Head.Name == "LIST" {
			found = true
		}
	})
	return err == nil && !found
}

// resolve appends what url names to the spool, at most left bytes
// (limit is the limit to name in TOOBIG).
func (e *Extension) resolve(ctx context.Context, s *proxy.Session, url string, sp *urlfetch.Spool, left, limit int64) (int64, *refusal) {
	u, err := imapurl.Parse(url)
	if err != nil {
		return 0, badURL(url, "Invalid IMAP URL.")
	}
	if u.HasURLAuth() {
		if e.cfg.Auth == nil {
			return 0, badURL(url, "URLAUTH is not supported here.")
		}
		if err := e.cfg.Auth.AuthorizeURL(ctx, s, u); err != nil {
			return 0, badURL(url, "The URL's authorization is not valid.")
		}
	}
	if err := urlfetch.Owner(s, u, e.cfg.Hosts); err != nil {
		return 0, badURL(url, "The URL is not of this account.")
	}
	n, err := urlfetch.Copy(ctx, s, u, sp, left)
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, urlfetch.ErrTooBig):
		return 0, tooBig(limit)
	case errors.Is(err, urlfetch.ErrBadURL):
		return 0, badURL(url, "The URL names no message of this account.")
	case sp.Err() != nil:
		return 0, spoolFailed(s, sp)
	default:
		s.Logger().Info("catenate: reading a URL failed", "err", err)
	}
	return 0, errUnavailable
}

// build makes the plain APPEND that carries the messages put together:
// the first line up to the first literal, and the rest as the relay reads
// it (Exchange.Restream).
func build(tag string, p *cmdParser, sp *urlfetch.Spool) (imapcodec.Segment, io.Reader) {
	head, size := messageHead, messageSize
	text := head([]byte(tag+" APPEND "+p.mailbox+" "), p.msgs[0])
	first := imapcodec.Segment{Text: text, Literal: &imapcodec.LiteralHeader{Size: size(p.msgs[0]), NonSync: true, Binary: p.msgs[0].binary, Start: len(text)}}
	var rs []io.Reader
	for i, m := range p.msgs {
		if i > 0 {
			b := head([]byte(" "), m)
			b = imapcodec.LiteralHeader{Size: size(m), NonSync: true, Binary: m.binary}.Format(b)
			rs = append(rs, strings.NewReader(string(b)+"\r\n"))
		}
		for _, pt := range m.parts {
			rs = append(rs, io.NewSectionReader(sp, pt.off, pt.n))
		}
	}
	rs = append(rs, strings.NewReader("\r\n"))
	return first, io.MultiReader(rs...)
}

// messageHead appends a message's flag list and date-time, each followed
// by a space, as the client sent them.
func messageHead(b []byte, m *message) []byte {
	if m.flags != "" {
		b = append(b, m.flags...)
		b = append(b, ' ')
	}
	if m.date != "" {
		b = append(b, m.date...)
		b = append(b, ' ')
	}
	return b
}

// messageSize is the size of a message put together.
func messageSize(m *message) int64 {
	var n int64
	for _, pt := range m.parts {
		n += pt.n
	}
	return n
}
