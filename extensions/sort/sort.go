// Package sort gives every session SORT (RFC 5256), SORT=DISPLAY (RFC
// 5957) and ESORT (RFC 5267 section 3), whatever the upstream offers.
//
// Relayed or synthesized. Where the upstream advertises SORT (and
// SORT=DISPLAY for DISPLAYFROM and DISPLAYTO) the command is relayed and
// the core translates the numbers; where it has SORT but not ESORT, a SORT
// with RETURN goes upstream without it and the upstream's SORT answer, in
// the client's terms already, becomes the ESEARCH response. Otherwise the
// proxy sorts:
//
//  1. the command goes upstream, through the rest of the chain, as the
//     plain "UID SEARCH CHARSET c criteria" of its search criteria, so
//     that every rewriter after this extension (condstore's MODSEQ) sees
//     an ordinary search, as it does for esearch. Extensions before it
//     (within) already handle SORT themselves. The upstream's NO
//     [BADCHARSET] or BAD reaches the client as the answer to its SORT;
//  2. the "* SEARCH" answer, in the client's terms, is kept, not relayed;
//  3. before the tagged OK, the matches are sorted on their keys (cache.go:
//     fetched from the upstream only for messages never seen before) and
//     the SORT or ESEARCH response written. A failure to get the keys
//     turns the OK into NO.
//
// Sort rules (RFC 5256 section 3): ARRIVAL is INTERNALDATE; DATE the Date
// header's instant, INTERNALDATE where it is missing or does not parse;
// SIZE is RFC822.SIZE; SUBJECT the base subject of section 2.1; FROM, TO
// and CC the addr-mailbox of the first address; DISPLAYFROM and DISPLAYTO
// (RFC 5957) the decoded display name of the first address, or its
// mailbox@host when it has none. Strings compare with i;unicode-casemap
// (RFC 5051), the collation RFC 5255 asks of I18NLEVEL=1. Messages equal
// on every key keep mailbox order, which REVERSE does not reverse.
//
// ESORT: RETURN (MIN MAX COUNT ALL) as RFC 5267 section 3.1 defines them
// for SORT: MIN and MAX are the first and last message in sort order, ALL
// lists the messages in sort order. The answer is esearch's ESEARCH
// response (esearch.AppendResponse). SAVE with SORT is refused (BAD).
//
// I18NLEVEL=1 (RFC 5255 section 4), which asks i;unicode-casemap of the
// sorts and of the searches, is extensions/casesearch's: this package's
// sorts compare that way, and casesearch makes the searches do so too.
//
// CONTEXT=SORT (RFC 5267 section 4 with SORT), where Config.Contexts says
// extensions/contextsearch is in the chain: PARTIAL and CONTEXT are
// answered with ESORT's RETURN; UPDATE opens a live context that
// contextsearch keeps, with a sorter over the cached keys so that its
// updates carry context positions (context.go).
//
// Extension.Sort sorts any UIDs of the session's mailbox on the cached
// keys, fetching only what is missing.
//
// Data: records under the key prefix "sort/" in Services.Data (cache.go).
package sort

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/contextsearch"
	"github.com/lemonproxy/lemonproxy/extensions/esearch"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Config bounds what the extension keeps.
type Config struct {
	// MaxCached bounds the messages whose keys are held in memory, over
	// all accounts (default 250,000, about 50 MB at docs/sort.md's 192
	// bytes a message: a few large mailboxes sorted often stay in memory;
	// the rest are read back from Services.Data, never from the upstream).
	MaxCached int
	// MaxCachedBytes bounds the same keys in bytes (default 64 MiB): a
	// client chooses the subjects and addresses of the mail it appends,
	// so messages alone do not bound the memory.
	MaxCachedBytes int64
	// MaxStored bounds the key records kept per account in Services.Data
	// (default 500,000).
	MaxStored int
	// Contexts offers CONTEXT=SORT (RFC 5267 section 4 for SORT). Set it
	// where extensions/contextsearch is in the chain: it keeps the live
	// contexts a SORT RETURN (UPDATE) opens (context.go).
	Contexts bool
}

// Extension implements SORT, SORT=DISPLAY and ESORT; see the package
// comment.
type Extension struct {
	cfg   Config
	cache *cache

	// mu guards sessions and perAccount: the sessions logged in here, by
	// account. When an account's last session ends its record count
	// (cache.stored) is forgotten: in a cluster the account may move to
	// another node, which stores and deletes records of its own, and come
	// back, and a count kept from before would be stale (a low one lets
	// the account past MaxStored).
	mu         sync.Mutex
	sessions   map[*proxy.Session]string
	perAccount map[string]int
}

var _ proxy.SessionHook = (*Extension)(nil)

// New returns the extension.
func New(cfg Config) *Extension {
	if cfg.MaxCached <= 0 {
		cfg.MaxCached = 250_000
	}
	if cfg.MaxCachedBytes <= 0 {
		cfg.MaxCachedBytes = 64 << 20
	}
	if cfg.MaxStored <= 0 {
		cfg.MaxStored = 500_000
	}
	return &Extension{cfg: cfg, sessions: map[*proxy.Session]string{}, perAccount: map[string]int{}}
}

// StateChanged counts a session that logged in (proxy.SessionHook).
func (e *Extension) StateChanged(s *proxy.Session, st proxy.State) {
	if st == proxy.StateNotAuthenticated {
		return
	}
	account := s.UpstreamAccount().Name
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.sessions[s]; ok || account == "" {
		return
	}
	e.sessions[s] = account
	e.perAccount[account]++
}

// SessionClosed forgets the account's record count with its last session
// here (proxy.SessionHook).
func (e *Extension) SessionClosed(s *proxy.Session) {
	e.mu.Lock()
	defer e.mu.Unlock()
	account, ok := e.sessions[s]
	if !ok {
		return
	}
	delete(e.sessions, s)
	if e.perAccount[account]--; e.perAccount[account] > 0 {
		return
	}
	delete(e.perAccount, account)
	e.cache.forgetStored(account)
}

// Push implements proxy.SessionHook: nothing is queued.
func (*Extension) Push(*proxy.Session) error { return nil }

// Name identifies the extension.
func (*Extension) Name() string { return "sort" }

// Provision takes the account data store the keys are kept in.
func (e *Extension) Provision(svc proxy.Services) error {
	data := svc.Data
	if data == nil {
		data = accountdata.NewMemory()
	}
	e.cache = newCache(data, e.cfg.MaxCached, e.cfg.MaxCachedBytes, e.cfg.MaxStored)
	return nil
}

// Capabilities advertises, after login, what the upstream lacks (the core
// relays what it has).
func (e *Extension) Capabilities(state proxy.State, up upstream.Caps) []string {
	if state != proxy.StateAuthenticated && state != proxy.StateSelected {
		return nil
	}
	var out []string
	for _, c := range []string{"SORT", "SORT=DISPLAY", "ESORT"} {
		if !up.Has(c) {
			out = append(out, c)
		}
	}
	if e.cfg.Contexts {
		// Never relayed (the core leaves it out: an upstream's contexts
		// live on a pooled connection), so always the proxy's word.
		out = append(out, "CONTEXT=SORT")
	}
	return out
}

// Commands names the commands answered here, and DELETE and RENAME,
// after which the mailbox's stored keys go.
func (*Extension) Commands() []string { return []string{"SORT", "UID SORT", "DELETE", "RENAME"} }

// forget deletes the stored keys of the mailbox a successful DELETE or
// RENAME names (its first argument), and on a RENAME those of the
// mailboxes below it, which it takes along (RFC 3501 6.3.5; RENAME INBOX
// leaves them): nothing would ever load them again, and they would count
// against the account's bound for good. The keys are the canonical
// name's (the hub's, Session.CanonicalMailbox): inbox.x is INBOX.x. A
// RENAME's new names start without keys; they are fetched again at their
// first sort.
func (e *Extension) forget(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	err := next(ctx, x)
	if err != nil || x.Status() != "OK" {
		return err
	}
	p := x.Command().Args
	if p.SP() != nil {
		return nil
	}
	name, perr := p.AString()
	if perr != nil {
		return nil
	}
	s := x.Session()
	children := ""
	if x.Name == "RENAME" && !strings.EqualFold(name, "INBOX") {
		if h, err := s.Hierarchy(ctx); err == nil {
			children = h.Delim
		}
	}
	e.cache.forget(s.UpstreamAccount().Name, s.CanonicalMailbox(ctx, name), children)
	return nil
}

// ServeCommand relays a SORT the upstream can answer and synthesizes the
// others (see the package comment).
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	if x.Name == "DELETE" || x.Name == "RENAME" {
		return e.forget(ctx, x, next)
	}
	s := x.Session()
	m := s.Mailbox()
	if m == nil || x.Streamed() || len(x.Segments) == 0 {
		return next(ctx, x)
	}
	cmd, err := parseSort(x.Segments)
	if err == nil && cmd.ret != nil && cmd.ret.Contextual() && !(e.cfg.Contexts && contextsearch.Active(s)) {
		// Without CONTEXT=SORT, RFC 5267 4's options are as unknown
		// as any other.
		err = fmt.Errorf("unknown RETURN option %s", contextName(*cmd.ret))
	}
	if err != nil {
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": "+sentence(err.Error())+".")
	}
	update := cmd.ret != nil && cmd.ret.Update
	if update && contextsearch.InUse(s, x.Tag) {
		// RFC 5267 4.3: the tag names the earlier command's updates.
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": Tag reuse: "+x.Tag+" names an updating search.")
	}
	up := s.UpstreamCaps()
	upSorts := up.Has("SORT") && (!display(cmd.crit) || up.Has("SORT=DISPLAY"))
	// PARTIAL and the CONTEXT hint are relayed where the upstream has
	// CONTEXT=SORT; UPDATE never is (see context.go).
	if upSorts && (cmd.ret == nil || up.Has("ESORT") && (!cmd.ret.Contextual() || up.Has("CONTEXT=SORT") && !update)) {
		return next(ctx, x)
	}
	uid := strings.HasPrefix(x.Name, "UID ")
	modseq := hasModSeq(x.Segments)
	var nums []uint32 // matches, in the client's terms
	if upSorts && !update {
		// ESORT over the upstream's SORT: its answer is in sort order.
		// Not for UPDATE: the context's later positions come from the
		// proxy's comparison, so its first answer must too.
		segs := slices.Clone(x.Segments)
		t := segs[0].Text
		segs[0].Text = slices.Concat(t[:cmd.retStart], t[cmd.retEnd:])
		x.Segments = segs
		x.Filter(func(resp *proxy.Response) *proxy.Response {
			if resp.Head.Name != "SORT" {
				return resp
			}
			if !resp.Streamed && len(resp.Segments) == 1 {
				nums = append(nums, ResultNumbers(resp.Segments[0].Text)...)
			}
			return nil
		})
		x.OnTagged(func(h *imapcodec.ResponseHead) {
			if m := s.Mailbox(); m != nil && h.Name == "OK" {
				s.Write(answer(m, x.Tag, uid, cmd.ret, nums, modseq))
			}
		})
		return next(ctx, x)
	}
	x.Segments = cmd.search(x.Segments)
	var live *liveSort
	if update {
		live = startLive(x, x.Segments, cmd.crit)
	}
	x.Filter(func(resp *proxy.Response) *proxy.Response {
		if resp.Head.Name != "SEARCH" {
			return resp
		}
		if !resp.Streamed && len(resp.Segments) == 1 {
			nums = append(nums, ResultNumbers(resp.Segments[0].Text)...)
		}
		return nil // answered by the SORT or ESEARCH response
	})
	x.OnTagged(func(h *imapcodec.ResponseHead) {
		m := s.Mailbox()
		if m == nil || h.Name != "OK" {
			return
		}
		// The client's numbers as they were when the answer came (no
		// expunge is reported during a SEARCH with sequence numbers).
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
		sorted := uids // RETURN (COUNT) alone: the order does not matter
		if r := cmd.ret; r == nil || r.All || r.Min || r.Max || r.PartialLo != 0 || r.Update {
			var err error
			if live != nil {
				sorted, err = live.sort(ctx, e, s, uids)
			} else {
				sorted, err = e.Sort(ctx, s, uids, cmd.crit)
			}
			if err != nil {
				s.Logger().Warn("sort keys unavailable", "err", err)
				h.Name, h.Code, h.CodeArg, h.Text = "NO", "UNAVAILABLE", "", "Sort keys unavailable, try again."
				return
			}
		}
		nums := sorted
		if !uid {
			nums = seqsOf(m, slices.Clone(sorted))
		}
		h.Code, h.CodeArg, h.Text = "", "", x.Name+" completed."
		s.Write(answer(m, x.Tag, uid, cmd.ret, nums, modseq))
		if live != nil {
			live.open(ctx, s, x.Tag, uid, sorted)
		}
	})
	return next(ctx, x)
}

// Sort returns uids, messages of the session's selected mailbox in
// ascending order, sorted by crit (RFC 5256 section 3). Keys it has not
// cached are fetched from the upstream with the session's mailbox
// selected (Session.Exec); UIDs the upstream no longer has are left out.
// It may be called from ServeCommand or an OnTagged hook.
func (e *Extension) Sort(ctx context.Context, s *proxy.Session, uids []uint32, crit []Criterion) ([]uint32, error) {
	var out []uint32
	err := e.withKeys(ctx, s, uids, func(msgs []*folded) { out = sortFolded(msgs, crit) })
	return out, err
}

// withKeys calls use with the keys of uids (ascending) the upstream still
// has, fetching those not cached, while the mailbox's cache is locked:
// the keys are the cache's own, to be read (or copied) only inside use.
func (e *Extension) withKeys(ctx context.Context, s *proxy.Session, uids []uint32, use func([]*folded)) error {
	m := s.Mailbox()
	if m == nil {
		return errors.New("sort: no mailbox selected")
	}
	st := m.State()
	b := e.cache.box(boxID{account: s.UpstreamAccount().Name, mailbox: m.Name(), uidValidity: st.UIDValidity()})
	b.mu.Lock()
	defer b.mu.Unlock()
	e.cache.load(b, st.Snapshot().UIDs, st.MaxUID())
	msgs, missing := b.lookup(uids)
	if len(missing) > 0 {
		if err := e.cache.fetch(ctx, s, b, missing); err != nil {
			return err
		}
		msgs, _ = b.lookup(uids)
	}
	use(msgs)
	return nil
}

// seqsOf maps UIDs to the client's sequence numbers, keeping the order,
// leaving out messages the client does not know.
func seqsOf(m *proxy.Mailbox, uids []uint32) []uint32 {
	out := uids[:0]
	for _, u := range uids {
		if n := m.SeqOf(u); n != 0 {
			out = append(out, n)
		}
	}
	return out
}

// answer writes the SORT response (RFC 5256 section 4), or with ret the
// ESEARCH one (RFC 5267 section 3.1), of nums in sort order; modseq adds
// RFC 7162's highest mod-sequence of the messages it names.
func answer(m *proxy.Mailbox, tag string, uid bool, ret *esearch.ReturnOptions, nums []uint32, modseq bool) []byte {
	var b []byte
	named := nums
	if ret != nil {
		b = esearch.AppendResponse(nil, tag, uid, *ret, nums)
		// As for SEARCH (RFC 4731 3.2): MIN and MAX alone name their
		// messages; anything else names the whole result.
		if !ret.All && !ret.Count && (ret.Min || ret.Max) && len(nums) > 0 {
			named = nil
			if ret.Min {
				named = append(named, nums[0])
			}
			if ret.Max {
				named = append(named, nums[len(nums)-1])
			}
		}
	} else {
		b = append(b, "* SORT"...)
		for _, n := range nums {
			b = strconv.AppendUint(append(b, ' '), uint64(n), 10)
		}
	}
	if modseq && len(nums) > 0 {
		var highest uint64
		for _, n := range named {
			if !uid {
				n = m.UIDOf(n)
			}
			if _, ms, ok := m.State().Flags(n); ok {
				highest = max(highest, ms)
			}
		}
		if highest > 0 {
			if ret != nil {
				b = strconv.AppendUint(append(b, " MODSEQ "...), highest, 10)
			} else {
				b = strconv.AppendUint(append(b, " (MODSEQ "...), highest, 10)
				b = append(b, ')')
			}
		}
	}
	return append(b, "\r\n"...)
}

// ResultNumbers reads the numbers of "* SEARCH n n" or "* SORT n n", in order,
// stopping at RFC 7162's "(MODSEQ m)" (the proxy finds mod-sequences
// itself). The line can hold a whole mailbox's numbers: it is scanned in
// place, one number allocated at a time.
//
// Exported for the other extensions that answer a command from the plain
// UID SEARCH they send down (extensions/thread).
func ResultNumbers(text []byte) []uint32 {
	i := 0
	for words := 0; i < len(text) && words < 2; i++ { // "*" and the name
		if text[i] == ' ' {
			words++
		}
	}
	out := make([]uint32, 0, (len(text)-i)/2+1)
	for i < len(text) {
		if text[i] == '(' {
			break
		}
		var n uint64
		j := i
		for j < len(text) && text[j] >= '0' && text[j] <= '9' && n <= 1<<32 {
			n = n*10 + uint64(text[j]-'0')
			j++
		}
		if j > i && n > 0 && n < 1<<32 && (j == len(text) || text[j] == ' ') {
			out = append(out, uint32(n))
		}
		for j < len(text) && text[j] != ' ' {
			j++
		}
		i = j + 1
	}
	return out
}

// hasModSeq reports whether the criteria have a MODSEQ key (RFC 7162
// 3.1.5): the answer then carries the highest mod-sequence.
func hasModSeq(segs []imapcodec.Segment) bool {
	found := false
	imapcodec.ReplaceSearchKeys(slices.Clone(segs), func(k imapcodec.SearchKey) (string, bool, error) {
		found = found || k.Name == "MODSEQ"
		return "", false, nil
	})
	return found
}

// sentence capitalises the first letter of an error message for a client.
func sentence(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}
