// Package uidplus synthesizes what UIDPLUS (RFC 4315) and MOVE (RFC 6851)
// give clients where the upstream lacks them. The two share most of their
// logic (resolving a UID set, reading a mailbox's UIDNEXT, matching copies
// to originals), so they live in one package.
//
// # What is synthesized, and over which upstream
//
// Upstream with UIDPLUS and MOVE: everything is relayed; nothing here acts.
//
// Upstream with UIDPLUS, without MOVE (Dovecot's legacy profile): MOVE and
// UID MOVE are advertised and done as UID COPY (whose COPYUID the
// upstream gives), UID STORE +FLAGS.SILENT (\Deleted) and UID EXPUNGE of
// exactly the UIDs the COPY copied. The client gets the untagged
// OK [COPYUID] first, then the expunges (EXPUNGE, or VANISHED with
// QRESYNC) from the hub's sync, then the tagged OK, as RFC 6851 4.3 asks.
// UID EXPUNGE removes only the named messages, so no other client's
// \Deleted message is touched. When the originals cannot be removed, their
// \Deleted is taken back and so are the copies (by their COPYUID, on a
// connection of the proxy's own, only those whose originals are still
// there): the NO leaves the messages where they were, without a COPYUID
// for them, and says so when the copies could not be removed either.
//
// Upstream without UIDPLUS: APPEND, COPY and UID COPY get APPENDUID and
// COPYUID codes the proxy finds itself (below), but neither UIDPLUS nor
// MOVE is advertised, and UID EXPUNGE and MOVE are refused (BAD) rather
// than relayed to an upstream that did not advertise them. The reason is
// UID EXPUNGE (RFC 4315 2.1: the server MUST NOT remove messages not in
// the set): with only IMAP4rev1, removing some \Deleted messages and not
// others means clearing \Deleted on the others, EXPUNGE, setting it back.
// No sequence of IMAP4rev1 commands makes that atomic: a message another
// client flags \Deleted between our clear and the EXPUNGE is removed
// although nobody asked (data loss the RFC forbids); a client that reads
// flags meanwhile sees the others without \Deleted, and one that stores
// FLAGS meanwhile loses the flag for good; a proxy crash in the middle
// leaves them without it. The proxy cannot lock out other clients of the
// upstream (direct clients, server-side filters), so it cannot make this
// safe, and MOVE, which must expunge exactly the moved messages, has the
// same problem. The capability UIDPLUS covers UID EXPUNGE too, so it is
// not advertised; the response codes are still sent, since RFC 3501 7.1
// has clients ignore codes they do not know, and clients that parse them
// anyway save a search.
//
// # Finding the new UIDs, never a wrong one
//
// The target's UIDNEXT and UIDVALIDITY are read with STATUS before the
// command and after the upstream's OK, on the connection that carried it.
// The new message got a UID in [before, after): RFC 3501 2.3.1.1 has
// UIDNEXT change whenever a message is added and not otherwise. If
// UIDNEXT moved by exactly the number of messages added, those UIDs are
// the new ones. If it moved by more (another client added messages
// meanwhile) the candidates are fetched (RFC822.SIZE, INTERNALDATE and
// the Message-ID header) and matched; the code is given only when every
// UID of the range still exists (a missing one may be ours) and each of
// ours matches exactly one candidate. A COPY's copies are also checked
// pairwise against the originals, since nothing in RFC 3501 says in which
// order a server copies. Anything less certain, and a UIDVALIDITY that
// changed, omits the code (RFC 4315 3 allows that) and counts it in
// Stats.
//
// What the proxy knows of an APPENDed message is what streamed through:
// its size from the literal header, and, through Exchange.PeekLiteral, a
// copy of its first 4 KiB, bounded, from which the Message-ID is read (a
// header block longer than that leaves the Message-ID unknown, and the
// match then rests on size and date). The message is never buffered.
// A MULTIAPPEND or CATENATE gets no APPENDUID.
//
// # Large sets
//
// COPY and MOVE resolve the client's set into the UIDs that exist, and
// written out those can be far longer than the client's line (1:* of a
// mailbox with many gaps) and than a server accepts (Dovecot answered
// "Too long argument" for 66 KB). A set is written on one line only up to
// maxSetText (4 KiB). Past it, a COPY goes upstream as the client sent it,
// without COPYUID (as does a COPY of more than maxCopied messages, whose
// signatures would all be held in memory); a MOVE, which must expunge
// exactly what it copied, copies, flags and expunges batch by batch, each
// batch's messages moved or left untouched whatever fails later (RFC 6851
// 3.3), and the client gets one COPYUID joining the batches' sets.
package uidplus

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Extension synthesizes UIDPLUS's response codes and MOVE.
type Extension struct {
	appendUIDs, appendOmitted atomic.Uint64
	copyUIDs, copyOmitted     atomic.Uint64
	moves, movesIncomplete    atomic.Uint64
	// hook, for tests, is called at the named points of a command, so
	// that a test can interleave another client's change there.
	hook func(point string)
	// moving serialises the synthesized MOVEs out of one mailbox of one
	// account (serveMove): two at once could both copy a message before
	// either expunged it. An entry lives while a MOVE holds or waits for
	// it.
	movingMu sync.Mutex
	moving   map[string]*moveTurn
}

// New returns the extension.
func New() *Extension { return &Extension{moving: map[string]*moveTurn{}} }

func (*Extension) Name() string { return "uidplus" }

// Stats are counters over all sessions, for metrics.
type Stats struct {
	// AppendUIDs and CopyUIDs count the APPENDUID and COPYUID codes the
	// proxy found itself; AppendOmitted and CopyOmitted the successful
	// commands answered without one because the UIDs were not certain.
	AppendUIDs, AppendOmitted uint64
	CopyUIDs, CopyOmitted     uint64
	// Moves counts synthesized MOVEs that completed; MovesIncomplete those
	// that copied but could not remove the originals (answered NO, the
	// copies taken back where they could be).
	Moves, MovesIncomplete uint64
}

// Stats returns the extension's counters.
func (e *Extension) Stats() Stats {
	return Stats{
		AppendUIDs: e.appendUIDs.Load(), AppendOmitted: e.appendOmitted.Load(),
		CopyUIDs: e.copyUIDs.Load(), CopyOmitted: e.copyOmitted.Load(),
		Moves: e.moves.Load(), MovesIncomplete: e.movesIncomplete.Load(),
	}
}

func (e *Extension) at(point string) {
	if e.hook != nil {
		e.hook(point)
	}
}

// Capabilities adds MOVE where it is synthesized: over an upstream with
// UIDPLUS (for UID EXPUNGE) and without MOVE. Where the upstream has
// both, the core relays them; where it lacks UIDPLUS, neither is offered
// (see the package comment).
func (*Extension) Capabilities(st proxy.State, up upstream.Caps) []string {
	if st >= proxy.StateAuthenticated && up.Has("UIDPLUS") && !up.Has("MOVE") {
		return []string{"MOVE"}
	}
	return nil
}

// Commands names the commands whose UIDPLUS or MOVE parts are synthesized.
func (*Extension) Commands() []string {
	return []string{"APPEND", "COPY", "UID COPY", "MOVE", "UID MOVE", "UID EXPUNGE"}
}

// ServeCommand passes everything on where the upstream has the extension
// itself.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	up := x.Session().UpstreamCaps()
	switch x.Name {
	case "APPEND":
		if up.Has("UIDPLUS") {
			return next(ctx, x)
		}
		return e.serveAppend(ctx, x, next)
	case "COPY", "UID COPY":
		if up.Has("UIDPLUS") {
			return next(ctx, x)
		}
		return e.serveCopy(ctx, x, next)
	case "MOVE", "UID MOVE":
		switch {
		case up.Has("MOVE"):
			return next(ctx, x)
		case up.Has("UIDPLUS"):
			return e.serveMove(ctx, x)
		}
		return x.Reply("BAD", "", "MOVE is not supported in front of this server.")
	case "UID EXPUNGE":
		if up.Has("UIDPLUS") {
			return next(ctx, x)
		}
		return x.Reply("BAD", "", "UID EXPUNGE is not supported in front of this server.")
	}
	return next(ctx, x)
}

// stripCode removes a response code the upstream sent without having
// advertised the extension it belongs to: the proxy decides by advertised
// capabilities, and puts its own in place when it is sure of it.
func stripCode(h *imapcodec.ResponseHead, code string) {
	if strings.EqualFold(h.Code, code) {
		h.Code, h.CodeArg = "", ""
	}
}
