// Package metadata gives every session METADATA (RFC 5464): server and
// mailbox annotations, GETMETADATA (with MAXSIZE and DEPTH) and
// SETMETADATA, /private and /shared entries.
//
// # Relayed or kept by the proxy
//
// Where the upstream advertises METADATA or METADATA-SERVER, the core
// relays the capability and this extension relays the commands untouched
// (the upstream then renames and deletes a mailbox's entries with it).
// Where it advertises neither, the extension advertises METADATA and keeps
// the entries itself, in the proxy's account data store
// (proxy.Services.Data; accountdata.db in the data directory, PostgreSQL in
// a cluster), under the key
//
//	"metadata/" + mailbox + NUL + entry
//
// where mailbox is "" for server entries and the mailbox name as the
// client spells it (INBOX, and the INBOX at the head of a hierarchy, in
// upper case: INBOX is case-insensitive), and entry is the canonical
// entry name (ASCII letters lower-cased: entry names are
// case-insensitive). Neither a mailbox name nor an entry name holds a NUL,
// so a mailbox's entries are one key prefix. The records are the account's
// own: one account's entries are never read for another, whatever the
// mailbox names (the store keys records by account).
//
// The proxy has no users but the account, so /shared entries are the
// account's own, as they are on a server without sharing; /private and
// /shared are two trees of the same account.
//
// When the proxy keeps the entries it also follows the mailboxes: a
// mailbox's entries go with it when a RENAME (the extension sees the
// command go by and acts on its OK) renames it or a mailbox above it, and
// are removed when a DELETE removes it; RENAME INBOX moves no entry, as it
// moves no child of INBOX (RFC 3501 6.3.5). A SETMETADATA or GETMETADATA
// naming a mailbox first checks that the mailbox exists (one LIST on a
// leased connection): NO [NONEXISTENT] otherwise, as the RFC requires.
// Entries changed by other clients directly on the upstream are not seen
// (there are none to see: the upstream has no METADATA).
//
// # Limits
//
// Per account: Limits.Entries entries (1,000), Limits.ValueSize bytes per
// value (64 KiB), Limits.Total bytes of values in all (1 MiB). A
// SETMETADATA that would go beyond them sets nothing and is answered NO
// [METADATA MAXSIZE n] (a value too large; n is the largest allowed) or NO
// [METADATA TOOMANY] (too many entries, or too many bytes in all: RFC 5464
// has no code of its own for a total). Removing entries is always allowed.
// One command names at most 1,000 entries, each name at most 1,024 bytes.
// NOPRIVATE is never sent: the proxy keeps /private entries everywhere.
//
// # Entries owned by other extensions
//
// Config.Owned names entries that another extension owns, whatever the
// upstream: issue 18's /private/devicetoken, say, registers a device for
// push. An owned entry never reaches the upstream or the store: GETMETADATA
// reads it with the owner's GetEntry, SETMETADATA writes it with its
// SetEntry (after every other entry of the command passed the limits, and
// before they are written), with the account (proxy.Account, which can
// dial the upstream) and the mailbox ("" for the server). The owner keeps
// the value where it likes (in Services.Data under its own prefix) and
// may refuse it with a *Refusal. Over an upstream with METADATA the
// command is split: the owned entries are answered by the owner, the
// others relayed. The owner's entries on a mailbox are not moved or
// removed with it: an owner that accepts mailbox entries handles that
// itself.
//
// Not done: unsolicited METADATA responses (RFC 5464 4.4.2 lets the server
// send them when entries change; it need not).
//
// # Place in the chain
//
// Anywhere: its commands are its own, and it only watches DELETE and
// RENAME's outcome. Before extensions that read entries through Lookup
// (filters), which hold a pointer to it, not an order.
package metadata

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Prefix is the extension's key prefix in the account data store.
const Prefix = "metadata/"

// Default limits.
const (
	DefaultEntries   = 1000
	DefaultValueSize = 64 << 10
	DefaultTotal     = 1 << 20
)

// Limits bound what an account can make the proxy keep; zero fields take
// the defaults.
type Limits struct {
	Entries   int // entries per account
	ValueSize int // bytes per value
	Total     int // bytes of values per account
}

// Config configures the extension.
type Config struct {
	// Owned maps entry names (any case) to the extension that owns them;
	// see the package documentation.
	Owned  map[string]EntryOwner
	Limits Limits
}

// EntryOwner is another extension that owns an entry name. Both methods
// are called on the session's goroutine, during the command; they must
// not block for long.
type EntryOwner interface {
	// GetEntry returns the entry's value for the account on mailbox (""
	// for the server), or nil when it has none.
	GetEntry(ctx context.Context, a proxy.Account, mailbox, entry string) ([]byte, error)
	// SetEntry sets the entry's value, or removes it when value is nil.
	// An error refuses the command: a *Refusal is answered NO with its
	// code and text; any other error is logged and answered NO.
	SetEntry(ctx context.Context, a proxy.Account, mailbox, entry string, value []byte) error
}

// Refusal is an owner's reasoned refusal of a value, for the client.
type Refusal struct {
	Code string // response code without brackets, or ""
	Text string
}

func (r *Refusal) Error() string { return r.Text }

// Extension implements METADATA; see the package documentation.
type Extension struct {
	owned  map[string]EntryOwner // canonical names
	limits Limits
	data   accountdata.Store

	// locks serialise the limit checks and writes of one account (by a
	// hash of its name; a fixed array, so nothing grows per account).
	seed  maphash.Seed
	locks [64]sync.Mutex
}

// New returns the extension.
func New(cfg Config) *Extension {
	e := &Extension{owned: map[string]EntryOwner{}, limits: cfg.Limits, seed: maphash.MakeSeed()}
	for n, o := range cfg.Owned {
		e.owned[Canonical(n)] = o
	}
	if e.limits.Entries <= 0 {
		e.limits.Entries = DefaultEntries
	}
	if e.limits.ValueSize <= 0 {
		e.limits.ValueSize = DefaultValueSize
	}
	if e.limits.Total <= 0 {
		e.limits.Total = DefaultTotal
	}
	return e
}

// Name identifies the extension.
func (*Extension) Name() string { return "metadata" }

// Provision takes the account data store and checks the owned names.
func (e *Extension) Provision(svc proxy.Services) error {
	for n := range e.owned {
		if err := CheckEntry(n); err != nil || isRoot(n) {
			return fmt.Errorf("metadata: owned entry %q is not an entry name", n)
		}
	}
	if svc.Data == nil {
		return errors.New("metadata: no account data store")
	}
	e.data = svc.Data
	return nil
}

// upstreamHas reports whether the upstream implements METADATA itself.
func upstreamHas(up upstream.Caps) bool { return up.Has("METADATA") || up.Has("METADATA-SERVER") }

// Capabilities advertises METADATA after login where the upstream has
// neither METADATA nor METADATA-SERVER (the core relays those).
func (*Extension) Capabilities(state proxy.State, up upstream.Caps) []string {
	if state != proxy.StateAuthenticated && state != proxy.StateSelected || upstreamHas(up) {
		return nil
	}
	return []string{"METADATA"}
}

// Commands names METADATA's commands and those that take a mailbox's
// entries with them.
func (*Extension) Commands() []string {
	return []string{"GETMETADATA", "SETMETADATA", "DELETE", "RENAME"}
}

// ServeCommand answers GETMETADATA and SETMETADATA, and follows DELETE and
// RENAME where the proxy keeps the entries.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	if s.UpstreamAccount().Name == "" || x.Streamed() {
		return next(ctx, x)
	}
	relay := upstreamHas(s.UpstreamCaps())
	switch x.Name {
	case "DELETE", "RENAME":
		if relay {
			return next(ctx, x)
		}
		return e.follow(ctx, x, next)
	case "GETMETADATA":
		a, err := parseGet(argsOf(x))
		if err != nil {
			return badArgs(x, err)
		}
		return e.get(ctx, x, next, a, relay)
	case "SETMETADATA":
		a, err := parseSet(argsOf(x))
		if err != nil {
			return badArgs(x, err)
		}
		return e.set(ctx, x, next, a, relay)
	}
	return next(ctx, x)
}

// argsOf returns a parser positioned after the command's name.
func argsOf(x *proxy.Exchange) *imapcodec.Parser {
	cmd, err := imapcodec.ParseCommand(x.Segments, imapcodec.Limits{})
	if err != nil {
		return imapcodec.NewParser(nil, imapcodec.Limits{})
	}
	return cmd.Args
}

func badArgs(x *proxy.Exchange, err error) error {
	var se *errSyntax
	if errors.As(err, &se) {
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": "+se.msg+".")
	}
	return x.Reply("BAD", "", "Error in IMAP command "+x.Name+".")
}

func (e *Extension) lock(account string) func() {
	m := &e.locks[maphash.String(e.seed, account)%uint64(len(e.locks))]
	m.Lock()
	return m.Unlock
}

// key returns the store key of an entry of a mailbox (canonical names).
func key(mailbox, entry string) string { return Prefix + mailbox + "\x00" + entry }

// mailboxPrefix is the key prefix of every entry of a mailbox.
func mailboxPrefix(mailbox string) string { return Prefix + mailbox + "\x00" }

// mailboxExists asks the upstream whether a mailbox exists (LIST), for the
// commands the proxy answers itself.
func mailboxExists(ctx context.Context, s *proxy.Session, name string) (bool, error) {
	if name == "" || strings.EqualFold(name, "INBOX") {
		return true, nil
	}
	if !imapcodec.CanQuote(name) {
		return false, nil // no such name can be spelt without a literal here
	}
	found := false
	_, err := s.Exec(ctx, `LIST "" `+string(imapcodec.AppendQuoted(nil, name)), func(r *upstream.Response) {
		if r.Head.Name != "LIST" {
			return
		}
		p := imapcodec.NewParser(r.Segments, imapcodec.Limits{})
		for range 2 {
			p.Atom()
			p.SP()
		}
		v, err := p.Value()
		attrs, ok := v.(imapcodec.List)
		if err != nil || !ok {
			return
		}
		for _, a := range attrs {
			if at, ok := a.(imapcodec.Atom); ok && strings.EqualFold(string(at), `\NonExistent`) {
				return
			}
		}
		found = true
	})
	return found, err
}

// checkMailbox answers the command NO when its mailbox does not exist or
// the upstream cannot say; ok reports whether the command may go on.
func checkMailbox(ctx context.Context, x *proxy.Exchange, name string) (ok bool, err error) {
	exists, err := mailboxExists(ctx, x.Session(), name)
	var se *upstream.StatusError
	switch {
	case errors.As(err, &se):
		return false, x.Reply("NO", "", "Cannot check the mailbox: "+se.Head.Text)
	case err != nil:
		x.Session().Logger().Warn("METADATA: mailbox check failed", "err", err)
		return false, x.Reply("NO", "UNAVAILABLE", "The upstream server is unavailable; try again later.")
	case !exists:
		return false, x.Reply("NO", "NONEXISTENT", "Mailbox doesn't exist: "+name)
	}
	return true, nil
}

// entryValue is one entry and its value in an answer.
type entryValue struct {
	name  string
	value []byte // nil: NIL
}

// under reports whether a canonical name is below entry within depth.
func under(name, entry string, depth int) bool {
	rest, ok := strings.CutPrefix(name, entry+"/")
	if !ok || rest == "" {
		return false
	}
	return depth == depthInfinity || depth == depth1 && !strings.Contains(rest, "/")
}

// ownedUnder returns the owned names a GETMETADATA of entry at depth
// reaches, itself included, sorted.
func (e *Extension) ownedUnder(entry string, depth int) []string {
	var out []string
	for n := range e.owned {
		if n == entry || depth != depth0 && under(n, entry, depth) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// collector gathers a GETMETADATA answer, applying MAXSIZE.
type collector struct {
	maxSize int64
	seen    map[string]bool
	out     []entryValue
	longest int64 // the largest value left out for MAXSIZE
}

func (c *collector) add(name string, v []byte) {
	if c.seen[name] {
		return
	}
	c.seen[name] = true
	if v != nil && c.maxSize >= 0 && int64(len(v)) > c.maxSize {
		c.longest = max(c.longest, int64(len(v)))
		return
	}
	c.out = append(c.out, entryValue{name, v})
}

// ownedValue reads an owned entry.
func (e *Extension) ownedValue(ctx context.Context, s *proxy.Session, mbox, name string) ([]byte, error) {
	v, err := e.owned[name].GetEntry(ctx, s.UpstreamAccount(), mbox, name)
	if err != nil {
		return nil, fmt.Errorf("metadata: owner of %s: %w", name, err)
	}
	return v, nil
}

// get answers GETMETADATA.
func (e *Extension) get(ctx context.Context, x *proxy.Exchange, next proxy.Next, a *getArgs, relay bool) error {
	s := x.Session()
	c := &collector{maxSize: a.maxSize, seen: map[string]bool{}}
	var rest []string // the entries left to the upstream (relay)
	ownedAny := false
	for _, ent := range a.entries {
		if len(e.ownedUnder(ent, a.depth)) > 0 {
			ownedAny = true
		}
		if _, own := e.owned[ent]; !own {
			rest = append(rest, ent)
		}
	}
	if relay && !ownedAny {
		return next(ctx, x)
	}
	// Checked here even when the upstream answers the rest, so that no
	// owned entry is reported for a mailbox the upstream then refuses.
	if ok, err := checkMailbox(ctx, x, a.mailbox); !ok {
		return err
	}
	mbox := s.CanonicalMailbox(ctx, a.mailbox)
	account := s.UpstreamAccount().Name
	for _, ent := range a.entries {
		// The entry itself, then what DEPTH reaches below it, in the
		// order of their names.
		if _, own := e.owned[ent]; own {
			v, err := e.ownedValue(ctx, s, mbox, ent)
			if err != nil {
				s.Logger().Warn("GETMETADATA: owned entry", "err", err)
				return x.Reply("NO", "SERVERBUG", "Cannot read "+ent+".")
			}
			if v != nil || a.depth == depth0 {
				c.add(ent, v)
			}
		} else if isRoot(ent) {
			if a.depth == depth0 {
				c.add(ent, nil)
			}
		} else if !relay {
			v, err := e.data.Get(account, key(mbox, ent))
			switch {
			case errors.Is(err, accountdata.ErrNotFound):
				if a.depth == depth0 {
					c.add(ent, nil)
				}
			case err != nil:
				return storeFailed(x, err)
			default:
				c.add(ent, v)
			}
		}
		if a.depth == depth0 {
			continue
		}
		var below []entryValue
		for _, n := range e.ownedUnder(ent, a.depth) {
			if n == ent {
				continue
			}
			v, err := e.ownedValue(ctx, s, mbox, n)
			if err != nil {
				s.Logger().Warn("GETMETADATA: owned entry", "err", err)
				return x.Reply("NO", "SERVERBUG", "Cannot read "+n+".")
			}
			if v != nil {
				below = append(below, entryValue{n, v})
			}
		}
		if !relay {
			err := e.data.List(account, key(mbox, ent)+"/", func(k string, v []byte) bool {
				name := k[len(mailboxPrefix(mbox)):]
				if _, own := e.owned[name]; !own && under(name, ent, a.depth) {
					below = append(below, entryValue{name, v})
				}
				return true
			})
			if err != nil {
				return storeFailed(x, err)
			}
		}
		slices.SortFunc(below, func(a, b entryValue) int { return strings.Compare(a.name, b.name) })
		for _, ev := range below {
			c.add(ev.name, ev.value)
		}
	}
	if len(c.out) > 0 {
		if err := s.Write(appendMetadata(nil, a.mailbox, c.out)); err != nil {
			return err
		}
	}
	if relay && len(rest) > 0 {
		// The upstream answers the others; its LONGENTRIES is merged
		// with the owners' in the tagged answer.
		x.Segments = getCommand(x.Tag, a, rest)
		if c.longest > 0 {
			x.OnTagged(func(h *imapcodec.ResponseHead) {
				if h.Name != "OK" {
					return
				}
				if n, ok := longEntries(h); !ok || n < c.longest {
					h.Code, h.CodeArg = "METADATA", fmt.Sprintf("LONGENTRIES %d", c.longest)
				}
			})
		}
		return next(ctx, x)
	}
	if c.longest > 0 {
		return x.Reply("OK", fmt.Sprintf("METADATA LONGENTRIES %d", c.longest), "Getmetadata completed.")
	}
	return x.Reply("OK", "", "Getmetadata completed.")
}

// longEntries reads the size of an upstream's METADATA LONGENTRIES code.
func longEntries(h *imapcodec.ResponseHead) (int64, bool) {
	if h.Code != "METADATA" {
		return 0, false
	}
	var n int64
	if _, err := fmt.Sscanf(h.CodeArg, "LONGENTRIES %d", &n); err != nil {
		return 0, false
	}
	return n, true
}

func storeFailed(x *proxy.Exchange, err error) error {
	x.Session().Logger().Error("METADATA: account data store", "err", err)
	return x.Reply("NO", "SERVERBUG", "The proxy's store failed; try again later.")
}

// appendMetadata appends one METADATA response.
func appendMetadata(b []byte, mailbox string, evs []entryValue) []byte {
	b = append(b, "* METADATA "...)
	b = appendMailbox(b, mailbox)
	b = append(b, " ("...)
	for i, ev := range evs {
		if i > 0 {
			b = append(b, ' ')
		}
		b = imapcodec.AppendString(b, ev.name, false)
		b = append(b, ' ')
		b = appendValue(b, ev.value)
	}
	return append(b, ")\r\n"...)
}

// getCommand restates a GETMETADATA with only some of its entries, for the
// upstream.
func getCommand(tag string, a *getArgs, entries []string) []imapcodec.Segment {
	b := []byte(tag + " GETMETADATA ")
	var opts []string
	if a.maxSize >= 0 {
		opts = append(opts, fmt.Sprintf("MAXSIZE %d", a.maxSize))
	}
	switch a.depth {
	case depth1:
		opts = append(opts, "DEPTH 1")
	case depthInfinity:
		opts = append(opts, "DEPTH infinity")
	}
	if len(opts) > 0 {
		b = append(b, "("+strings.Join(opts, " ")+") "...)
	}
	return segmentsOf(b, a.mailbox, func(w *segWriter) {
		w.text(" (")
		for i, ent := range entries {
			if i > 0 {
				w.text(" ")
			}
			w.astring(ent)
		}
		w.text(")")
	})
}

// segWriter builds a command as segments, with literals where a string
// cannot be quoted (the relay handles their synchronisation).
type segWriter struct {
	segs []imapcodec.Segment
	cur  []byte
}

func (w *segWriter) text(s string) { w.cur = append(w.cur, s...) }

func (w *segWriter) literal(v []byte, binary bool) {
	w.segs = append(w.segs, imapcodec.Segment{Text: w.cur, Literal: &imapcodec.LiteralHeader{Size: int64(len(v)), Binary: binary}, Data: v})
	w.cur = nil
}

func (w *segWriter) astring(s string) {
	if imapcodec.CanQuote(s) {
		w.cur = imapcodec.AppendQuoted(w.cur, s)
		return
	}
	w.literal([]byte(s), false)
}

func (w *segWriter) value(v []byte) {
	switch {
	case v == nil:
		w.text("NIL")
	case imapcodec.CanQuote(string(v)):
		w.cur = imapcodec.AppendQuoted(w.cur, string(v))
	default:
		w.literal(v, strings.IndexByte(string(v), 0) >= 0)
	}
}

func segmentsOf(head []byte, mailbox string, rest func(*segWriter)) []imapcodec.Segment {
	w := &segWriter{cur: head}
	w.astring(mailbox)
	rest(w)
	return append(w.segs, imapcodec.Segment{Text: w.cur})
}

// set answers SETMETADATA.
func (e *Extension) set(ctx context.Context, x *proxy.Exchange, next proxy.Next, a *setArgs, relay bool) error {
	s := x.Session()
	// The last value of an entry named twice wins.
	last := map[string]int{}
	for i, ent := range a.entries {
		last[ent.name] = i
	}
	var owned, rest []setEntry
	for i, ent := range a.entries {
		if last[ent.name] != i {
			continue
		}
		if _, own := e.owned[ent.name]; own {
			owned = append(owned, ent)
		} else {
			rest = append(rest, ent)
		}
	}
	if relay && len(owned) == 0 {
		return next(ctx, x)
	}
	if ok, err := checkMailbox(ctx, x, a.mailbox); !ok {
		return err
	}
	mbox := s.CanonicalMailbox(ctx, a.mailbox)
	account := s.UpstreamAccount().Name
	var puts []accountdata.Record
	var dels []string
	if !relay {
		unlock := e.lock(account)
		defer unlock()
		var err error
		if puts, dels, err = e.plan(x, account, mbox, rest); puts == nil && dels == nil {
			return err // answered
		}
	}
	for _, ent := range owned {
		if err := e.owned[ent.name].SetEntry(ctx, s.UpstreamAccount(), mbox, ent.name, ent.value); err != nil {
			var r *Refusal
			if errors.As(err, &r) {
				return x.Reply("NO", r.Code, r.Text)
			}
			s.Logger().Warn("SETMETADATA: owned entry", "entry", ent.name, "err", err)
			return x.Reply("NO", "SERVERBUG", "Cannot set "+ent.name+".")
		}
	}
	if relay {
		if len(rest) == 0 {
			return x.Reply("OK", "", "Setmetadata completed.")
		}
		x.Segments = segmentsOf([]byte(x.Tag+" SETMETADATA "), a.mailbox, func(w *segWriter) {
			w.text(" (")
			for i, ent := range rest {
				if i > 0 {
					w.text(" ")
				}
				w.astring(ent.name)
				w.text(" ")
				w.value(ent.value)
			}
			w.text(")")
		})
		return next(ctx, x)
	}
	if len(puts)+len(dels) > 0 {
		if err := e.data.Write(account, puts, dels); err != nil {
			return storeFailed(x, err)
		}
	}
	return x.Reply("OK", "", "Setmetadata completed.")
}

// plan checks a SETMETADATA's entries against the limits and returns the
// writes; when it answers the command itself (a limit, a store failure)
// it returns nil slices and the answer's error.
func (e *Extension) plan(x *proxy.Exchange, account, mbox string, ents []setEntry) ([]accountdata.Record, []string, error) {
	for _, ent := range ents {
		if len(ent.value) > e.limits.ValueSize {
			return nil, nil, x.Reply("NO", fmt.Sprintf("METADATA MAXSIZE %d", e.limits.ValueSize), "Value of "+ent.name+" too large.")
		}
	}
	sizes := map[string]int{}
	total := 0
	if err := e.data.List(account, Prefix, func(k string, v []byte) bool {
		sizes[k] = len(v)
		total += len(v)
		return true
	}); err != nil {
		return nil, nil, storeFailed(x, err)
	}
	count, oldCount, oldTotal := len(sizes), len(sizes), total
	puts := []accountdata.Record{}
	dels := []string{}
	for _, ent := range ents {
		k := key(mbox, ent.name)
		old, had := sizes[k]
		if ent.value == nil {
			dels = append(dels, k)
			if had {
				count--
				total -= old
			}
			continue
		}
		puts = append(puts, accountdata.Record{Key: k, Value: ent.value})
		if !had {
			count++
		}
		total += len(ent.value) - old
	}
	if count > e.limits.Entries && count > oldCount {
		return nil, nil, x.Reply("NO", "METADATA TOOMANY", fmt.Sprintf("Too many entries (at most %d per account).", e.limits.Entries))
	}
	if total > e.limits.Total && total > oldTotal {
		return nil, nil, x.Reply("NO", "METADATA TOOMANY", fmt.Sprintf("Too much metadata (at most %d bytes per account).", e.limits.Total))
	}
	return puts, dels, nil
}

// follow passes DELETE and RENAME on and, on their OK, removes or moves
// the mailbox's entries.
func (e *Extension) follow(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	p := argsOf(x)
	var from, to string
	var err error
	if p.SP() == nil {
		from, err = p.AString()
		if err == nil && x.Name == "RENAME" {
			if err = p.SP(); err == nil {
				to, err = p.AString()
			}
		}
	}
	if err != nil || from == "" {
		return next(ctx, x) // the upstream judges the syntax
	}
	// Spelt before the command runs: the hierarchy is learnt on the
	// session's connection, which is busy during next.
	from = s.CanonicalMailbox(ctx, from)
	if to != "" {
		to = s.CanonicalMailbox(ctx, to)
	}
	var delim string
	if h, herr := s.Hierarchy(ctx); herr == nil {
		delim = h.Delim
	}
	if err := next(ctx, x); err != nil || x.Status() != "OK" {
		return err
	}
	account := s.UpstreamAccount().Name
	unlock := e.lock(account)
	defer unlock()
	var puts []accountdata.Record
	var dels []string
	collect := func(prefix string, rename func(k string) string) error {
		return e.data.List(account, prefix, func(k string, v []byte) bool {
			dels = append(dels, k)
			if rename != nil {
				puts = append(puts, accountdata.Record{Key: rename(k), Value: v})
			}
			return true
		})
	}
	switch {
	case x.Name == "DELETE":
		err = collect(mailboxPrefix(from), nil)
	case from == "INBOX":
		// RENAME INBOX moves its messages, not INBOX: the entries stay.
	default:
		err = collect(mailboxPrefix(from), func(k string) string { return mailboxPrefix(to) + k[len(mailboxPrefix(from)):] })
		if err == nil && delim != "" {
			// Mailboxes below it are renamed with it.
			p := Prefix + from + delim
			err = collect(p, func(k string) string { return Prefix + to + delim + k[len(p):] })
		}
	}
	if err == nil && len(dels) > 0 {
		// Puts come first and deletes after in a Write: a renamed key
		// equal to an old one (never: names differ) would be lost.
		dels = slices.DeleteFunc(dels, func(k string) bool {
			return slices.ContainsFunc(puts, func(r accountdata.Record) bool { return r.Key == k })
		})
		err = e.data.Write(account, puts, dels)
	}
	if err != nil {
		s.Logger().Error("METADATA: entries not moved with their mailbox", "command", x.Name, "mailbox", from, "err", err)
	}
	return nil
}

// Lookup returns the values of entries (canonical names, no DEPTH) of
// mailbox ("" for the server) for the session's account, from wherever
// GETMETADATA would read them: the owners, the proxy's store, or the
// upstream's METADATA (one GETMETADATA on a leased connection). Entries
// without a value are absent from the map. Other extensions read their
// entries through it (FILTERS' named searches); every entry name must be
// valid and spelt without a literal.
func (e *Extension) Lookup(ctx context.Context, s *proxy.Session, mailbox string, entries []string) (map[string][]byte, error) {
	out := map[string][]byte{}
	var rest []string
	mbox := s.CanonicalMailbox(ctx, mailbox)
	for _, ent := range entries {
		if _, own := e.owned[ent]; own {
			v, err := e.ownedValue(ctx, s, mbox, ent)
			if err != nil {
				return nil, err
			}
			if v != nil {
				out[ent] = v
			}
			continue
		}
		rest = append(rest, ent)
	}
	if len(rest) == 0 {
		return out, nil
	}
	if !upstreamHas(s.UpstreamCaps()) {
		account := s.UpstreamAccount().Name
		for _, ent := range rest {
			v, err := e.data.Get(account, key(mbox, ent))
			if errors.Is(err, accountdata.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			out[ent] = v
		}
		return out, nil
	}
	if !imapcodec.CanQuote(mailbox) {
		return nil, errors.New("metadata: mailbox name needs a literal")
	}
	cmd := "GETMETADATA " + string(imapcodec.AppendQuoted(nil, mailbox)) + " ("
	for i, ent := range rest {
		if !imapcodec.CanQuote(ent) {
			return nil, fmt.Errorf("metadata: entry %q needs a literal", ent)
		}
		if i > 0 {
			cmd += " "
		}
		cmd += string(imapcodec.AppendQuoted(nil, ent))
	}
	cmd += ")"
	_, err := s.Exec(ctx, cmd, func(r *upstream.Response) {
		if r.Head.Name != "METADATA" {
			return
		}
		for _, ev := range parseMetadata(r.Segments) {
			if ev.value != nil && slices.Contains(rest, ev.name) {
				out[ev.name] = ev.value
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// parseMetadata reads the entries of an untagged METADATA response
// ("* METADATA mailbox (entry value ...)"); malformed parts are skipped.
func parseMetadata(segs []imapcodec.Segment) []entryValue {
	p := imapcodec.NewParser(segs, imapcodec.Limits{})
	for range 2 {
		if _, err := p.Atom(); err != nil {
			return nil
		}
		p.SP()
	}
	if _, err := p.AString(); err != nil {
		return nil
	}
	p.SP()
	v, err := p.Value()
	l, ok := v.(imapcodec.List)
	if err != nil || !ok {
		return nil
	}
	var out []entryValue
	for i := 0; i+1 < len(l); i += 2 {
		name, ok := imapcodec.AsString(l[i])
		if !ok {
			continue
		}
		ev := entryValue{name: Canonical(name)}
		if sv, ok := l[i+1].(imapcodec.String); ok {
			ev.value = sv.Data
			if ev.value == nil {
				ev.value = []byte{}
			}
		}
		out = append(out, ev)
	}
	return out
}
