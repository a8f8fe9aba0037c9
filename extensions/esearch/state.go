package esearch

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/extensions/internal/statesearch"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// Searches the state decides. Criteria of flags, UIDs, sequence numbers
// and mod-sequences alone (extensions/internal/statesearch says which, and
// why its answer is the one the client must get) are answered from the
// hub's state of the selected mailbox, without an upstream round trip, in
// every form: SEARCH and UID SEARCH, without RETURN or with any of its
// options (MIN MAX COUNT ALL SAVE, PARTIAL, UPDATE), whatever the upstream
// offers. Over an upstream without ESEARCH this spares the transfer of the
// whole UID SEARCH answer (600 KB for 100,000 messages) that a COUNT
// otherwise needs; over one with ESEARCH it spares the round trip and
// keeps one rule for every form (docs/esearch.md has the figures). What
// the state cannot decide goes on as before: relayed to an upstream with
// ESEARCH, synthesized from its UID SEARCH otherwise.
//
// The command then goes no further down the chain: extensions/condstore,
// which would rewrite a MODSEQ key and complete the answer with its MODSEQ,
// is not needed (the state decides MODSEQ and the answer carries it, RFC
// 7162 3.1.5, RFC 4731 3.2), but only once CONDSTORE is enabled: enabling
// it (and telling the client HIGHESTMODSEQ, RFC 7162 3.1) is condstore's,
// so a MODSEQ search of a session without it goes the upstream way once.
// No extension after esearch in the chain handles SEARCH otherwise
// (extensions/chain).

// decidable returns the command's criteria compiled when the state decides
// them, nil otherwise. segs is the command as it goes upstream: in its UID
// form, the client's sequence sets translated to UIDs by the core, "$" and
// RECENT, NEW, OLD, OLDER, YOUNGER and FILTER replaced by what they stand
// for.
func decidable(s *proxy.Session, segs []imapcodec.Segment) *statesearch.Program {
	p, err := statesearch.CompileCommand(segs, statesearch.Options{Numbers: true, ModSeq: s.Enabled("CONDSTORE")})
	if err != nil {
		return nil
	}
	return p
}

// decide fills r with the messages of the client's view that p matches:
// all of them where the response, the saved result, MODSEQ or an updating
// context need the list, the first and the last otherwise (sparse).
func (r *result) decide(p *statesearch.Program, m *proxy.Mailbox) {
	o := r.opts
	r.sparse = !o.all && !o.save && !o.update && o.partial == nil && !r.modseq
	r.nums, r.uids, r.modseqs, r.count = nil, nil, nil, 0
	if r.modseq {
		r.modseqs = []uint64{}
	}
	p.Eval(m.State(), m.UIDs(), func(msg statesearch.Message) {
		n := msg.Seq
		if r.uid {
			n = msg.UID
		}
		r.count++
		if r.sparse && r.count > 2 {
			// Only the last changes.
			r.nums[1], r.uids[1] = n, msg.UID
			return
		}
		r.nums = append(r.nums, n)
		r.uids = append(r.uids, msg.UID)
		if r.modseq {
			r.modseqs = append(r.modseqs, msg.ModSeq)
		}
	})
}

// answerSearch answers a SEARCH or UID SEARCH without RETURN from the
// state: "* SEARCH" and the matches, with "(MODSEQ n)" after them for a
// MODSEQ criterion (RFC 7162 3.1.5). The response is written before the
// changes the core reports with the tagged answer, as a relayed one would
// be.
func answerSearch(x *proxy.Exchange, p *statesearch.Program) error {
	s := x.Session()
	m := s.Mailbox()
	uid := strings.HasPrefix(x.Name, "UID ")
	b := []byte("* SEARCH")
	var highest uint64
	found := false
	p.Eval(m.State(), m.UIDs(), func(msg statesearch.Message) {
		n := msg.Seq
		if uid {
			n = msg.UID
		}
		b = strconv.AppendUint(append(b, ' '), uint64(n), 10)
		highest, found = max(highest, msg.ModSeq), true
	})
	if found && p.HasModSeq() {
		b = fmt.Appendf(b, " (MODSEQ %d)", highest)
	}
	if err := s.Write(append(b, "\r\n"...)); err != nil {
		return err
	}
	return x.Reply("OK", "", x.Name+" completed.")
}

// answerESearch answers an extended SEARCH from the state: the ESEARCH
// response (if the options ask for one), the saved result, and the
// updating context, as the synthesized answer from the upstream's result
// does (esearch.go), the context opened after the tagged answer's
// reports.
func answerESearch(ctx context.Context, x *proxy.Exchange, p *statesearch.Program, r *result, live *liveSearch) error {
	s := x.Session()
	m := s.Mailbox()
	r.decide(p, m)
	if r.opts.respond() {
		if err := s.Write(r.response(m, x.Tag)); err != nil {
			return err
		}
	}
	if r.opts.save {
		save(s, r.saved())
	}
	if live != nil {
		x.OnTagged(func(h *imapcodec.ResponseHead) {
			if h.Name == "OK" && s.Mailbox() != nil {
				live.open(ctx, s, x.Tag, r)
			}
		})
	}
	return x.Reply("OK", "", x.Name+" completed.")
}
