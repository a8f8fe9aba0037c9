// Package thread gives every session THREAD=ORDEREDSUBJECT and
// THREAD=REFERENCES (RFC 5256), whatever the upstream offers.
//
// Relayed or synthesized, per algorithm: where the upstream advertises
// THREAD=X, a THREAD X command is relayed (the core translates the
// numbers). Otherwise the proxy threads:
//
//  1. the command goes upstream, through the rest of the chain, as the
//     plain "UID SEARCH CHARSET c criteria" of its search criteria, as
//     extensions/sort does for SORT: the upstream's NO [BADCHARSET] or
//     BAD reaches the client as the answer to its THREAD;
//  2. the "* SEARCH" answer is kept, not relayed;
//  3. before the tagged OK, the matches are threaded on the keys
//     extensions/sort caches per message (sent date, base subject, and
//     the Message-ID, In-Reply-To and References msg-ids: one fetch and
//     one record per message for both extensions) and the THREAD
//     response written. A failure to get the keys turns the OK into NO.
//
// The algorithms are RFC 5256 section 3's, over the searched messages
// only (algo.go). An algorithm the proxy does not know is a BAD.
//
// Data: none of its own; the keys are extensions/sort's ("sort/").
package thread

import (
	"context"
	"slices"
	"strings"

	sortext "github.com/lemonproxy/lemonproxy/extensions/sort"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// algorithms are those the proxy can thread with.
var algorithms = []string{"ORDEREDSUBJECT", "REFERENCES"}

// Extension implements THREAD; see the package comment.
type Extension struct {
	keys *sortext.Extension
}

// New returns the extension, which takes its keys from keys: that sort
// extension must be in the same chain (it is provisioned there).
func New(keys *sortext.Extension) *Extension { return &Extension{keys: keys} }

// Name identifies the extension.
func (*Extension) Name() string { return "thread" }

// Capabilities advertises, after login, the algorithms the upstream
// lacks (the core relays the THREAD= it has).
func (e *Extension) Capabilities(state proxy.State, up upstream.Caps) []string {
	if state != proxy.StateAuthenticated && state != proxy.StateSelected {
		return nil
	}
	var out []string
	for _, a := range algorithms {
		if !up.Has("THREAD=" + a) {
			out = append(out, "THREAD="+a)
		}
	}
	return out
}

// Commands names the commands answered here.
func (*Extension) Commands() []string { return []string{"THREAD", "UID THREAD"} }

// ServeCommand relays a THREAD the upstream can answer and synthesizes
// the others (see the package comment).
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	if s.Mailbox() == nil || x.Streamed() || len(x.Segments) == 0 {
		return next(ctx, x)
	}
	cmd, err := parseThread(x.Segments)
	if cmd != nil && s.UpstreamCaps().Has("THREAD="+cmd.algorithm) {
		// The upstream's algorithm (one the proxy lacks, as Dovecot's
		// REFS, or one it has): relayed, and the upstream judges the
		// rest of the command.
		return next(ctx, x)
	}
	if err != nil {
		msg := err.Error()
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": "+strings.ToUpper(msg[:1])+msg[1:]+".")
	}
	uid := strings.HasPrefix(x.Name, "UID ")
	x.Segments = cmd.search(x.Segments)
	var nums []uint32
	x.Filter(func(resp *proxy.Response) *proxy.Response {
		if resp.Head.Name != "SEARCH" {
			return resp
		}
		if !resp.Streamed && len(resp.Segments) == 1 {
			nums = append(nums, sortext.ResultNumbers(resp.Segments[0].Text)...)
		}
		return nil // answered by the THREAD response
	})
	x.OnTagged(func(h *imapcodec.ResponseHead) {
		m := s.Mailbox()
		if m == nil || h.Name != "OK" {
			return
		}
		var uids []uint32
		for _, n := range nums {
			if !uid {
				n = m.UIDOf(n)
			}
			if n != 0 {
				uids = append(uids, n)
			}
		}
		slices.Sort(uids)
		uids = slices.Compact(uids)
		keys, err := e.keys.ThreadKeys(ctx, s, uids)
		if err != nil {
			s.Logger().Warn("thread keys unavailable", "err", err)
			h.Name, h.Code, h.CodeArg, h.Text = "NO", "UNAVAILABLE", "", "Thread keys unavailable, try again."
			return
		}
		if !uid {
			// Messages the client does not know (none should be: no
			// expunge is reported during a command with numbers) are
			// left out before threading.
			keys = slices.DeleteFunc(keys, func(k sortext.ThreadKeys) bool { return m.SeqOf(k.UID) == 0 })
		}
		var roots []*node
		if cmd.algorithm == "REFERENCES" {
			roots, err = references(keys)
		} else {
			roots = orderedSubject(keys)
		}
		if err != nil {
			s.Logger().Warn("thread refused", "err", err, "messages", len(keys))
			h.Name, h.Code, h.CodeArg, h.Text = "NO", "LIMIT", "", "Reply chains too deep to thread."
			return
		}
		num := func(u uint32) uint32 { return u }
		if !uid {
			num = m.SeqOf
		}
		b := []byte("* THREAD")
		if len(roots) > 0 {
			b = appendThreads(append(b, ' '), roots, num)
		}
		h.Code, h.CodeArg, h.Text = "", "", x.Name+" completed."
		s.Write(append(b, "\r\n"...))
	})
	return next(ctx, x)
}
