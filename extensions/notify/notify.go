// Package notify gives every client NOTIFY (RFC 5465), whatever the upstream
// offers.
//
// What a client hears is always produced here, never relayed: the upstream
// (even one with NOTIFY of its own, such as Dovecot 2.3, whose departures
// from the RFC are listed in docs/notify.md) is only a source of changes.
// Changes come from three places, chosen to keep the upstream's connection
// count small:
//
//   - the selected mailbox: the hub's watcher the session already uses; the
//     core pushes its changes between commands (proxy.Session.SetUpdates);
//   - INBOX: the hub's watcher of INBOX (one IDLE per account, shared),
//     which makes the account watcher refresh INBOX's STATUS at once;
//   - every other mailbox: the account watcher (package accountwatch), one
//     polling connection per account shared by all its NOTIFY sessions, poked
//     at once when a session of the account changes something through the
//     proxy.
package notify

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/internal/listresp"
	"github.com/lemonproxy/lemonproxy/extensions/notify/accountwatch"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Config tunes NOTIFY.
type Config struct {
	// Accounts configures the account watchers (poll interval and so on).
	Accounts accountwatch.Config
	// MaxQueued is how many events may wait for one session before it is
	// told NOTIFICATIONOVERFLOW and its NOTIFY is turned off. Default
	// 1,000.
	MaxQueued int
}

// Extension implements NOTIFY. Close stops its account watchers.
type Extension struct {
	cfg       Config
	mgr       *accountwatch.Manager
	mailboxes *proxy.MailboxService
}

// New returns the NOTIFY extension.
func New(cfg Config) *Extension {
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = 1000
	}
	return &Extension{cfg: cfg, mgr: accountwatch.New(cfg.Accounts)}
}

func (*Extension) Name() string { return "notify" }

// Close stops the account watchers; the proxy calls it at shutdown.
func (e *Extension) Close() error {
	e.mgr.Close()
	return nil
}

// Accounts returns the account watchers (for metrics and tests).
func (e *Extension) Accounts() *accountwatch.Manager { return e.mgr }

func (*Extension) Capabilities(st proxy.State, _ upstream.Caps) []string {
	if st >= proxy.StateAuthenticated {
		return []string{"NOTIFY"}
	}
	return nil
}

// Provision takes the mailbox service: the hub's INBOX watcher and the
// refresh of other mailboxes' states on the account watcher's connection.
func (e *Extension) Provision(svc proxy.Services) error {
	e.mailboxes = svc.Mailboxes
	return nil
}

// Commands names NOTIFY, which the extension runs, and the commands by
// which a session changes mailboxes itself, which it watches go by (see
// changed).
func (*Extension) Commands() []string {
	return []string{"NOTIFY", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "APPEND",
		"COPY", "MOVE", "UID COPY", "UID MOVE", "EXPUNGE", "UID EXPUNGE", "STORE", "UID STORE", "CLOSE"}
}

// ServeCommand runs NOTIFY, and learns of the changes the session's other
// commands made once they succeeded.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	if x.Name == "NOTIFY" {
		return e.notify(ctx, x)
	}
	if x.Name == "STORE" || x.Name == "UID STORE" || x.Name == "EXPUNGE" {
		// Learnt when its tagged OK is relayed, not after next returns:
		// a command sent upstream before its turn returns from next at
		// once (PipelineSafe).
		x.OnTagged(func(h *imapcodec.ResponseHead) {
			if h.Name == "OK" {
				e.changed(ctx, x.Session(), x.Name, x.Command().Segments[0].Text)
			}
		})
		return next(ctx, x)
	}
	var code string
	if x.Name == "CREATE" {
		x.OnTagged(func(h *imapcodec.ResponseHead) { code = h.Code })
	}
	if err := next(ctx, x); err != nil {
		return err
	}
	if x.Status() == "OK" || createdAnyway(x.Name, x.Status(), code) {
		e.changed(ctx, x.Session(), x.Name, x.Command().Segments[0].Text)
	}
	return nil
}

// PipelineSafe lets a STORE or EXPUNGE go upstream before the previous
// command's answers are relayed (proxy.PipelineSafe): notify only learns
// of it from its tagged answer (ServeCommand).
func (*Extension) PipelineSafe(x *proxy.Exchange) bool {
	return x.Name == "STORE" || x.Name == "UID STORE" || x.Name == "EXPUNGE"
}

// createdAnyway reports whether a command that failed may still have made
// its change, which is then the session's own: a CREATE answered NO
// [ALREADYEXISTS]. Dovecot 2.3 answers so now and then for a mailbox it did
// create, when another session lists the mailboxes at that moment, and the
// account watcher lists them all the time (docs/conformance.md). Its poll
// then reports the creation like any other, and the session would be told
// of its own CREATE. The proxy cannot tell that case from a mailbox someone
// else created since the watcher's last poll, but either way the client has
// just been told that the mailbox exists, and a creation event would tell
// it nothing more; the account's other sessions hear of it at once. (Where
// the mailbox was known before, no creation event comes, and the entry
// expires unused.)
func createdAnyway(name, status, code string) bool {
	return name == "CREATE" && status == "NO" && code == "ALREADYEXISTS"
}

// Events this implementation supports, in the order NO [BADEVENT] lists them.
var supported = []string{"MessageNew", "MessageExpunge", "FlagChange", "MailboxName", "SubscriptionChange"}

// Filter kinds.
const (
	fSelected        = "SELECTED"
	fSelectedDelayed = "SELECTED-DELAYED"
	fInboxes         = "INBOXES"
	fPersonal        = "PERSONAL"
	fSubscribed      = "SUBSCRIBED"
	fSubtree         = "SUBTREE"
	fMailboxes       = "MAILBOXES"
)

// group is one event group of NOTIFY SET.
type group struct {
	filter string
	names  []string
	// events
	messages, flags, mailboxName, subscription bool
	fetchAtts                                  imapcodec.List // MessageNew's, selected only
}

// hasLiteral reports whether v holds a string sent as a literal.
func hasLiteral(v imapcodec.Value) bool {
	switch v := v.(type) {
	case imapcodec.String:
		return v.Literal
	case imapcodec.List:
		return slices.ContainsFunc(v, hasLiteral)
	}
	return false
}

func (g *group) selected() bool { return g.filter == fSelected || g.filter == fSelectedDelayed }

// state is a session's NOTIFY state.
type state struct {
	mu       sync.Mutex
	groups   []*group // without the selected group
	sel      *group
	queue    []accountwatch.Event
	overflow bool
	// suppress holds changes the session made itself, which it SHOULD
	// not be told of (RFC 5465 5): key -> expiry. An entry goes when its
	// event arrives, or when it expires (noteOwn prunes), and there are
	// at most maxSuppressed: a change that makes no event (SUBSCRIBE of a
	// name already subscribed, of any name the client makes up) would
	// otherwise stay until NOTIFY is reset.
	suppress map[string]time.Time

	acct         *accountwatch.Sub
	inboxRelease func()
	lastUID      uint32 // the newest message MessageNew's FETCH covered
}

type stateKey struct{}

// holder is the session's NOTIFY state as the account watcher's callback
// finds it: one per session (stored under stateKey), its state replaced
// by each NOTIFY SET (nil after NOTIFY NONE), so that the subscription,
// and what it queued, outlive a NOTIFY SET that keeps asking for them.
// st is written by the session's goroutine under mu, and read there
// without it.
type holder struct {
	mu sync.Mutex
	st *state
}

// maxSuppressed bounds a session's suppress entries: far more than the
// changes a client makes within one expiry (two poll intervals and a
// minute). Past it the entry that expires first goes: at worst the session
// is told of one of its own changes, which RFC 5465 5 allows (SHOULD NOT).
const maxSuppressed = 256

// noteOwn records a change the session made itself (key as render looks
// it up), to be suppressed until exp; expired entries are dropped first,
// then the one expiring soonest while there are too many.
func (st *state) noteOwn(key string, now, exp time.Time) {
	for k, e := range st.suppress {
		if !now.Before(e) {
			delete(st.suppress, k)
		}
	}
	delete(st.suppress, key)
	for len(st.suppress) >= maxSuppressed {
		var first string
		var at time.Time
		for k, e := range st.suppress {
			if first == "" || e.Before(at) || e.Equal(at) && k < first {
				first, at = k, e
			}
		}
		delete(st.suppress, first)
	}
	st.suppress[key] = exp
}

func sessionState(s *proxy.Session) *state {
	if h := sessionHolder(s); h != nil {
		return h.st
	}
	return nil
}

// sessionHolder returns the session's holder, nil before its first
// NOTIFY SET.
func sessionHolder(s *proxy.Session) *holder {
	h, _ := s.Value(stateKey{}).(*holder)
	return h
}

// errBadEvent carries NO [BADEVENT].
type errBadEvent struct{ name string }

func (e *errBadEvent) Error() string { return "unsupported event " + e.name }

// parseSet parses the arguments of NOTIFY SET after "SET".
func parseSet(p *imapcodec.Parser) (status bool, groups []*group, err error) {
	vals, err := p.Values()
	if err != nil {
		return false, nil, err
	}
	if len(vals) > 0 {
		if a, ok := vals[0].(imapcodec.Atom); ok {
			if !strings.EqualFold(string(a), "STATUS") {
				return false, nil, errors.New("expected STATUS or an event group")
			}
			status = true
			vals = vals[1:]
		}
	}
	if len(vals) == 0 {
		return false, nil, errors.New("NOTIFY SET needs event groups")
	}
	var bad *errBadEvent
	haveSelected := false
	for _, v := range vals {
		l, ok := v.(imapcodec.List)
		if !ok || len(l) < 2 {
			return false, nil, errors.New("an event group is (filter events)")
		}
		g, err := parseGroup(l)
		var be *errBadEvent
		if errors.As(err, &be) {
			if bad == nil {
				bad = be
			}
		} else if err != nil {
			return false, nil, err
		}
		if g.selected() {
			if haveSelected {
				return false, nil, errors.New("selected or selected-delayed may be given once")
			}
			haveSelected = true
		}
		groups = append(groups, g)
	}
	if bad != nil {
		return false, nil, bad
	}
	return status, groups, nil
}

func parseGroup(l imapcodec.List) (*group, error) {
	a, ok := l[0].(imapcodec.Atom)
	if !ok {
		return nil, errors.New("bad mailbox filter")
	}
	g := &group{filter: strings.ToUpper(string(a))}
	rest := l[1:]
	switch g.filter {
	case fSelected, fSelectedDelayed, fInboxes, fPersonal, fSubscribed:
	case fSubtree, fMailboxes:
		if len(rest) < 2 {
			return nil, fmt.Errorf("%s needs mailbox names", strings.ToLower(g.filter))
		}
		switch v := rest[0].(type) {
		case imapcodec.List:
			if len(v) == 0 {
				return nil, errors.New("empty mailbox list")
			}
			for _, e := range v {
				n, ok := imapcodec.AsString(e)
				if !ok {
					return nil, errors.New("bad mailbox name")
				}
				g.names = append(g.names, n)
			}
		default:
			n, ok := imapcodec.AsString(v)
			if !ok {
				return nil, errors.New("bad mailbox name")
			}
			g.names = []string{n}
		}
		rest = rest[1:]
	default:
		return nil, fmt.Errorf("unknown mailbox filter %s", a)
	}
	if len(rest) != 1 {
		return nil, errors.New("an event group is (filter events)")
	}
	if a, ok := rest[0].(imapcodec.Atom); ok && strings.EqualFold(string(a), "NONE") {
		return g, nil
	}
	evs, ok := rest[0].(imapcodec.List)
	if !ok || len(evs) == 0 {
		return nil, errors.New("events are a parenthesised list or NONE")
	}
	var newMsg, expunge, flagChange, annotation bool
	var bad *errBadEvent
	for i := 0; i < len(evs); i++ {
		a, ok := evs[i].(imapcodec.Atom)
		if !ok {
			return nil, errors.New("bad event")
		}
		switch name := strings.ToUpper(string(a)); name {
		case "MESSAGENEW":
			newMsg = true
			if i+1 < len(evs) {
				if atts, ok := evs[i+1].(imapcodec.List); ok {
					if !g.selected() {
						return nil, errors.New("MessageNew fetch attributes are only allowed for the selected mailbox")
					}
					if hasLiteral(atts) {
						// They go upstream in the proxy's own FETCH,
						// written on one line (fetchNew).
						return nil, errors.New("MessageNew fetch attributes cannot hold a literal")
					}
					g.fetchAtts = atts
					i++
				}
			}
		case "MESSAGEEXPUNGE":
			expunge = true
		case "FLAGCHANGE":
			flagChange = true
		case "ANNOTATIONCHANGE":
			annotation = true
			bad = &errBadEvent{string(a)}
		case "MAILBOXNAME":
			g.mailboxName = true
		case "SUBSCRIPTIONCHANGE":
			g.subscription = true
		default:
			// MailboxMetadataChange, ServerMetadataChange and
			// events of extensions we do not know.
			if bad == nil {
				bad = &errBadEvent{string(a)}
			}
		}
	}
	if newMsg != expunge {
		return nil, errors.New("MessageNew and MessageExpunge must be given together")
	}
	if (flagChange || annotation) && !newMsg {
		return nil, errors.New("FlagChange and AnnotationChange need MessageNew and MessageExpunge")
	}
	if g.selected() && (g.mailboxName || g.subscription) {
		// Mailbox and subscription events concern other mailboxes, not
		// the one selected (RFC 5465 5.3, 5.4, 6.1; #16.16). Dovecot
		// accepts them and never sends them; the proxy says so.
		return nil, errors.New("only message events apply to selected and selected-delayed")
	}
	g.messages, g.flags = newMsg, flagChange
	if bad != nil {
		return g, bad
	}
	return g, nil
}

// errSectionLiteral refuses a literal inside a fetch attribute's section
// that no quoted string can carry.
var errSectionLiteral = errors.New("a header field name sent as a literal must be one a quoted string can carry")

// inlineSectionLiterals writes each literal that stands inside a fetch
// attribute's section, as MessageNew's may hold one
// ("BODY.PEEK[HEADER.FIELDS ({7+}\r\nSubject)]"), into the text around it
// as a quoted string, and reports whether there was one. The parser reads
// a section as part of an atom, on one line; and the proxy's own UID FETCH
// (fetchNew) carries the attributes upstream on one line, where a literal
// cannot go. The quoted string is the same astring (header-fld-name, RFC
// 3501 9); a literal no quoted string can carry (CR, LF, NUL, 8-bit) is no
// header field name (RFC 5322 2.2) and is refused with errSectionLiteral.
// Literals elsewhere (mailbox names) stay as they are.
func inlineSectionLiterals(segs []imapcodec.Segment) ([]imapcodec.Segment, bool, error) {
	var out []imapcodec.Segment
	var text []byte
	depth, inQuote, escaped, inlined := 0, false, false, false
	for _, sg := range segs {
		for _, c := range sg.Text {
			switch {
			case escaped:
				escaped = false
			case inQuote && c == '\\':
				escaped = true
			case c == '"':
				inQuote = !inQuote
			case inQuote:
			case c == '[':
				depth++
			case c == ']' && depth > 0:
				depth--
			}
		}
		text = append(text, sg.Text...)
		if sg.Literal == nil || depth == 0 || inQuote {
			out = append(out, imapcodec.Segment{Text: text, Literal: sg.Literal, Data: sg.Data})
			text = nil
			continue
		}
		if !imapcodec.CanQuote(string(sg.Data)) {
			return nil, false, errSectionLiteral
		}
		text = imapcodec.AppendQuoted(text, string(sg.Data))
		inlined = true
	}
	return out, inlined, nil
}

// notify runs NOTIFY SET and NOTIFY NONE.
func (e *Extension) notify(ctx context.Context, x *proxy.Exchange) error {
	s, cmd := x.Session(), x.Command()
	if s.State() < proxy.StateAuthenticated {
		return x.Reply("BAD", "", "NOTIFY not allowed before authentication; log in first.")
	}
	p := cmd.Args
	if segs, inlined, err := inlineSectionLiterals(cmd.Segments); err != nil {
		return x.Reply("BAD", "", "Error in NOTIFY: "+err.Error()+".")
	} else if inlined {
		c, err := imapcodec.ParseCommand(segs, imapcodec.Limits{})
		if err != nil {
			return x.Reply("BAD", "", "Error in NOTIFY: "+err.Error()+".")
		}
		p = c.Args
	}
	if err := p.SP(); err != nil {
		return x.Reply("BAD", "", "NOTIFY needs SET or NONE.")
	}
	verb, err := p.Atom()
	if err != nil {
		return x.Reply("BAD", "", "NOTIFY needs SET or NONE.")
	}
	switch strings.ToUpper(verb) {
	case "NONE":
		if !p.AtEnd() {
			return x.Reply("BAD", "", "NOTIFY NONE takes no arguments.")
		}
		e.stop(s)
		return x.Reply("OK", "", "NOTIFY completed.")
	case "SET":
	default:
		return x.Reply("BAD", "", "NOTIFY needs SET or NONE.")
	}
	withStatus, groups, err := parseSet(p)
	var bad *errBadEvent
	if errors.As(err, &bad) {
		return x.Reply("NO", "BADEVENT ("+strings.Join(supported, " ")+")", "Unsupported event "+bad.name+".")
	}
	if err != nil {
		return x.Reply("BAD", "", "Error in NOTIFY: "+err.Error()+".")
	}
	st := &state{suppress: map[string]time.Time{}}
	for _, g := range groups {
		// Names as the account watcher reports them: inbox.Lists is
		// INBOX.Lists, as the upstream takes it.
		for i, n := range g.names {
			g.names[i] = s.CanonicalMailbox(ctx, n)
		}
		if g.selected() {
			st.sel = g
		} else {
			st.groups = append(st.groups, g)
		}
	}
	if err := e.start(ctx, s, st); err != nil {
		s.Logger().Warn("NOTIFY: cannot watch the account", "err", err)
		return x.Reply("NO", "UNAVAILABLE", "Cannot watch the mailboxes now; try again later.")
	}
	if withStatus {
		if err := e.writeInitialStatus(ctx, s, st); err != nil {
			return err
		}
	}
	// NOTIFY SET is an implicit NOOP (RFC 5465 3.1): Reply reports the
	// selected mailbox's changes before the tagged OK.
	return x.Reply("OK", "", "NOTIFY completed.")
}

// start makes st the session's NOTIFY state and subscribes to its
// sources. A NOTIFY SET that replaces another keeps what the client still
// asks for: the account subscription (a new one would take the account's
// state at its first poll for a baseline, and a change made before it
// would never be told), the INBOX watch, the events queued and not told
// yet that the new filters want, and the notes of the session's own
// changes.
func (e *Extension) start(ctx context.Context, s *proxy.Session, st *state) error {
	if m := s.Mailbox(); m != nil {
		if uids := m.UIDs(); len(uids) > 0 {
			st.lastUID = uids[len(uids)-1]
		}
	}
	h := sessionHolder(s)
	if h == nil {
		h = &holder{}
		s.SetValue(stateKey{}, h)
	}
	old := h.st
	var acct *accountwatch.Sub
	var inboxRelease func()
	if old != nil {
		acct, inboxRelease = old.acct, old.inboxRelease
		old.acct, old.inboxRelease = nil, nil
		maps.Copy(st.suppress, old.suppress)
	}
	if len(st.groups) > 0 {
		a := s.UpstreamAccount()
		opts := accountwatch.WatchOptions{
			Refresh: func(ctx context.Context, mailbox string, c *upstream.Conn) (uint64, error) {
				return e.mailboxes.Refresh(ctx, a, mailbox, c)
			},
			// The proxy always has CONDSTORE: STATUS for FlagChange
			// carries HIGHESTMODSEQ whether or not the client enabled it
			// (RFC 5465 5.2; #16.16).
			ModSeqs:     s.Enabled("CONDSTORE") || anyFlags(st.groups),
			FlagChanges: anyFlags(st.groups),
		}
		var err error
		if acct != nil {
			err = acct.SetOptions(ctx, opts)
		} else {
			acct, err = e.mgr.Watch(ctx, a.Name, a.Dial, opts, func(evs []accountwatch.Event) {
				e.enqueue(s, h, evs)
			})
		}
		if err != nil {
			if acct != nil {
				acct.Close()
			}
			if inboxRelease != nil {
				inboxRelease()
			}
			e.stop(s)
			return err
		}
		st.acct, acct = acct, nil
		if st.wantsMessages("INBOX", nil) {
			if inboxRelease != nil {
				st.inboxRelease, inboxRelease = inboxRelease, nil
			} else if _, release, err := e.mailboxes.Watch(ctx, a, "INBOX", func() { e.mgr.Poke(a.Name, "INBOX") }); err == nil {
				// INBOX through the hub's IDLE watcher: its changes make
				// the account watcher refresh INBOX's STATUS at once.
				st.inboxRelease = release
			} else {
				s.Logger().Debug("NOTIFY: no INBOX watcher; polling only", "err", err)
			}
		}
	}
	if acct != nil {
		acct.Close()
	}
	if inboxRelease != nil {
		inboxRelease()
	}
	h.mu.Lock()
	h.st = st
	overflowed := false
	if old != nil {
		old.mu.Lock()
		overflowed = old.overflow
		if !overflowed {
			for _, ev := range old.queue {
				if st.wants(ev) {
					st.queue = append(st.queue, ev)
				}
			}
		}
		old.queue = nil
		old.mu.Unlock()
	}
	h.mu.Unlock()
	if overflowed {
		// Events were lost before this SET: the client must hear so
		// (RFC 5465 5.8), though NOTIFY stays on, as it has just set it.
		if err := s.Write([]byte("* OK [NOTIFICATIONOVERFLOW] Too many events; some were lost.\r\n")); err != nil {
			return err
		}
	}
	mode := proxy.UpdatesWithCommands
	if st.sel != nil && st.sel.messages {
		mode = proxy.UpdatesAll
		if st.sel.filter == fSelectedDelayed {
			mode = proxy.UpdatesNoExpunge
		}
	}
	s.SetUpdates(mode)
	return nil
}

// stop ends the session's NOTIFY (NOTIFY NONE, overflow, logout, a NOTIFY
// SET that failed).
func (e *Extension) stop(s *proxy.Session) {
	h := sessionHolder(s)
	if h == nil || h.st == nil {
		return
	}
	h.mu.Lock()
	st := h.st
	h.st = nil
	h.mu.Unlock()
	s.SetUpdates(proxy.UpdatesWithCommands)
	if st.acct != nil {
		st.acct.Close()
	}
	if st.inboxRelease != nil {
		st.inboxRelease()
	}
}

// enqueue is the account watcher's callback: queue and wake the session.
func (e *Extension) enqueue(s *proxy.Session, h *holder, evs []accountwatch.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.st
	if st == nil {
		return // NOTIFY NONE since
	}
	// Only what this session asked for counts against its queue.
	evs = slices.DeleteFunc(slices.Clone(evs), func(ev accountwatch.Event) bool { return !st.wants(ev) })
	if len(evs) == 0 {
		return
	}
	st.mu.Lock()
	if !st.overflow {
		if len(st.queue)+len(evs) > e.cfg.MaxQueued {
			st.overflow = true
			st.queue = nil
		} else {
			st.queue = append(st.queue, evs...)
		}
	}
	st.mu.Unlock()
	s.Wake()
}

// match returns the first non-selected group that want accepts and whose
// filter covers the mailbox name (nil if none). delim is the mailbox's
// hierarchy delimiter as the upstream's LIST gives it ("" for none),
// subscribed whether it is subscribed.
func (st *state) match(name, delim string, subscribed bool, want func(*group) bool) *group {
	for _, g := range st.groups {
		if !want(g) {
			continue
		}
		switch g.filter {
		case fInboxes, fPersonal:
			// RFC 5465 6.3: a server that cannot tell which mailboxes
			// receive mail (Sieve may file it anywhere) MUST treat
			// inboxes as personal; the proxy cannot see the upstream's
			// delivery rules.
			return g
		case fSubscribed:
			if subscribed {
				return g
			}
		case fMailboxes:
			if slices.Contains(g.names, name) {
				return g
			}
		case fSubtree:
			// Below n by the upstream's delimiter only: where it is
			// "/", Lists.go is a sibling of Lists, not a child.
			for _, n := range g.names {
				if name == n || delim != "" && strings.HasPrefix(name, n+delim) {
					return g
				}
			}
		}
	}
	return nil
}

// anyFlags reports whether a group of other mailboxes asks for FlagChange.
func anyFlags(groups []*group) bool {
	return slices.ContainsFunc(groups, func(g *group) bool { return g.flags })
}

// wants reports whether any of the session's filters asks for an event.
// (The selected mailbox is excluded later: it can change meanwhile.)
func (st *state) wants(ev accountwatch.Event) bool {
	mb := ev.Mailbox
	switch ev.Kind {
	case accountwatch.Messages:
		return st.match(mb.Name, mb.Delim, mb.Subscribed, func(g *group) bool { return g.messages }) != nil
	case accountwatch.Flags:
		return st.match(mb.Name, mb.Delim, mb.Subscribed, func(g *group) bool { return g.flags }) != nil
	case accountwatch.Created, accountwatch.Deleted, accountwatch.Renamed:
		want := func(g *group) bool { return g.mailboxName }
		return st.match(mb.Name, mb.Delim, mb.Subscribed, want) != nil || ev.Kind == accountwatch.Renamed && st.match(ev.OldName, mb.Delim, mb.Subscribed, want) != nil
	case accountwatch.Subscribed, accountwatch.Unsubscribed:
		return st.match(mb.Name, mb.Delim, true, func(g *group) bool { return g.subscription }) != nil
	}
	return false
}

// wantsMessages reports whether message events of a mailbox are wanted.
func (st *state) wantsMessages(name string, b *accountwatch.Mailbox) bool {
	var delim string
	sub := false
	if b != nil {
		delim, sub = b.Delim, b.Subscribed
	}
	return st.match(name, delim, sub, func(g *group) bool { return g.messages }) != nil
}

// Push writes what the session has to hear: the FETCH of new messages of
// the selected mailbox that MessageNew asked for, queued account events,
// and the overflow notice.
func (e *Extension) Push(s *proxy.Session) error {
	st := sessionState(s)
	if st == nil {
		return nil
	}
	if err := e.fetchNew(s, st); err != nil {
		return err
	}
	st.mu.Lock()
	evs, overflow := st.queue, st.overflow
	st.queue = nil
	st.mu.Unlock()
	if overflow {
		e.stop(s)
		return s.Write([]byte("* OK [NOTIFICATIONOVERFLOW] Too many events; NOTIFY is now off.\r\n"))
	}
	var b []byte
	now := time.Now()
	for _, ev := range evs {
		b = e.render(s, st, ev, now, b)
	}
	if len(b) == 0 {
		return nil
	}
	return s.Write(b)
}

// render appends the responses for one account event.
func (e *Extension) render(s *proxy.Session, st *state, ev accountwatch.Event, now time.Time, b []byte) []byte {
	mb := ev.Mailbox
	key := ev.Kind.String() + "\x00" + mb.Name
	if exp, ok := st.suppress[key]; ok {
		delete(st.suppress, key)
		if now.Before(exp) {
			return b // the session made this change itself
		}
	}
	switch ev.Kind {
	case accountwatch.Messages, accountwatch.Flags:
		if m := s.Mailbox(); m != nil && m.Name() == mb.Name {
			return b // the selected mailbox reports itself
		}
		want := func(g *group) bool { return g.messages }
		if ev.Kind == accountwatch.Flags {
			want = func(g *group) bool { return g.flags }
		}
		if st.match(mb.Name, mb.Delim, mb.Subscribed, want) == nil {
			return b
		}
		// A flag change is told with UIDVALIDITY and, under CONDSTORE,
		// HIGHESTMODSEQ (RFC 5465 5.1); new mail and expunges with the
		// counters.
		return e.appendStatus(s, b, mb, ev.Kind == accountwatch.Flags, ev.Kind == accountwatch.Flags)
	case accountwatch.Created, accountwatch.Deleted, accountwatch.Renamed:
		g := st.match(mb.Name, mb.Delim, mb.Subscribed, func(g *group) bool { return g.mailboxName })
		if g == nil && ev.Kind == accountwatch.Renamed {
			g = st.match(ev.OldName, mb.Delim, mb.Subscribed, func(g *group) bool { return g.mailboxName })
		}
		if g == nil {
			return b
		}
		attrs := mb.Attrs
		if ev.Kind == accountwatch.Deleted {
			attrs = []string{`\NonExistent`}
		}
		b = appendList(b, attrs, mb)
		if ev.Kind == accountwatch.Renamed {
			b = append(b, ` ("OLDNAME" (`...)
			b = imapcodec.AppendString(b, ev.OldName, false)
			b = append(b, "))"...)
		}
		return append(b, "\r\n"...)
	case accountwatch.Subscribed, accountwatch.Unsubscribed:
		if st.match(mb.Name, mb.Delim, true, func(g *group) bool { return g.subscription }) == nil {
			return b
		}
		attrs := slices.Clone(mb.Attrs)
		if ev.Kind == accountwatch.Subscribed {
			attrs = append(attrs, `\Subscribed`)
		}
		b = appendList(b, attrs, mb)
		return append(b, "\r\n"...)
	}
	return b
}

// appendList appends "* LIST (attrs) delim name" without CRLF.
func appendList(b []byte, attrs []string, mb accountwatch.Mailbox) []byte {
	return listresp.Append(b, attrs, mb.Delim, mb.Name)
}

// appendStatus appends a STATUS response for a mailbox: MESSAGES, UIDNEXT
// and UNSEEN, UIDVALIDITY when withUIDValidity (NOTIFY SET STATUS, flag
// changes), and the proxy's HIGHESTMODSEQ once CONDSTORE is enabled or
// when the status is for FlagChange (flagChange), which needs it.
func (e *Extension) appendStatus(s *proxy.Session, b []byte, mb accountwatch.Mailbox, withUIDValidity, flagChange bool) []byte {
	b = append(b, "* STATUS "...)
	b = imapcodec.AppendString(b, mb.Name, false)
	b = fmt.Appendf(b, " (MESSAGES %d UIDNEXT %d", mb.Status.Messages, mb.Status.UIDNext)
	if withUIDValidity {
		b = fmt.Appendf(b, " UIDVALIDITY %d", mb.Status.UIDValidity)
	}
	b = fmt.Appendf(b, " UNSEEN %d", mb.Status.Unseen)
	if (flagChange || s.Enabled("CONDSTORE")) && mb.ModSeq != 0 {
		// The proxy's own, kept current by the account watcher on its
		// one connection (never the upstream's).
		b = fmt.Appendf(b, " HIGHESTMODSEQ %d", mb.ModSeq)
	}
	return append(b, ")\r\n"...)
}

// writeInitialStatus answers NOTIFY SET STATUS: the STATUS of every
// non-selected mailbox whose message events the client asked for.
func (e *Extension) writeInitialStatus(ctx context.Context, s *proxy.Session, st *state) error {
	if st.acct == nil {
		return nil
	}
	var b []byte
	for _, mb := range st.acct.Mailboxes() {
		if !mb.Selectable || !st.wantsMessages(mb.Name, &mb) {
			continue
		}
		if m := s.Mailbox(); m != nil && m.Name() == mb.Name {
			continue
		}
		b = e.appendStatus(s, b, mb, true, st.match(mb.Name, mb.Delim, mb.Subscribed, func(g *group) bool { return g.flags }) != nil)
	}
	if len(b) == 0 {
		return nil
	}
	return s.Write(b)
}

// fetchNew sends the FETCH that MessageNew's fetch attributes ask for, for
// messages of the selected mailbox the client heard of since the last time.
func (e *Extension) fetchNew(s *proxy.Session, st *state) error {
	m := s.Mailbox()
	if m == nil || st.sel == nil || len(st.sel.fetchAtts) == 0 {
		return nil
	}
	uids := m.UIDs()
	i, _ := slices.BinarySearch(uids, st.lastUID+1)
	if i >= len(uids) {
		return nil
	}
	fresh := uids[i:]
	st.lastUID = fresh[len(fresh)-1]
	cmd := fmt.Sprintf("UID FETCH %d:%d %s", fresh[0], fresh[len(fresh)-1], imapcodec.AppendValue(nil, st.sel.fetchAtts))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Relay(ctx, cmd); err != nil {
		if errors.Is(err, proxy.ErrClientGone) {
			return err
		}
		// The client has the EXISTS and can fetch itself.
		s.Logger().Warn("cannot fetch new messages for NOTIFY", "err", err)
	}
	return nil
}

// FetchItems keeps the UID in the FETCH responses that report flag
// changes of the selected mailbox when the client asked for FlagChange
// there (RFC 5465 5.2).
func (e *Extension) FetchItems(s *proxy.Session, _ uint32, unsolicited bool) []byte {
	if st := sessionState(s); unsolicited && st != nil && st.sel != nil && st.sel.flags {
		return []byte{}
	}
	return nil
}

// ReportExpunged leaves expunges to the other reporters and the core.
func (e *Extension) ReportExpunged(_ *proxy.Session, b []byte, _, _ []uint32) ([]byte, bool) {
	return b, false
}

// ExpungesHeld has nothing to say.
func (e *Extension) ExpungesHeld(*proxy.Session) []byte { return nil }

// BatchDone has nothing to add.
func (e *Extension) BatchDone(_ *proxy.Session, _ *proxy.Exchange, b []byte, _ bool) []byte { return b }

// SessionClosed releases the session's subscriptions.
func (e *Extension) SessionClosed(s *proxy.Session) { e.stop(s) }

// StateChanged keeps MessageNew's fetch from covering a newly selected
// mailbox's old messages.
func (e *Extension) StateChanged(s *proxy.Session, state proxy.State) {
	st := sessionState(s)
	if st == nil || state != proxy.StateSelected {
		return
	}
	st.lastUID = 0
	if m := s.Mailbox(); m != nil {
		if uids := m.UIDs(); len(uids) > 0 {
			st.lastUID = uids[len(uids)-1]
		}
	}
}

// changed learns of changes the session made itself with a command that
// succeeded (line is its first line): they are announced to the account's
// other sessions at once (a poll now instead of at the next interval), and
// mailbox-name and subscription events for them are not told to this
// session.
func (e *Extension) changed(ctx context.Context, s *proxy.Session, name string, line []byte) {
	args := commandArgs(line)
	account := s.Account()
	st := sessionState(s)
	note := func(kind accountwatch.Kind, mailbox string) {
		if st != nil {
			now := time.Now()
			st.noteOwn(kind.String()+"\x00"+s.CanonicalMailbox(ctx, mailbox), now, now.Add(2*e.pollInterval()+time.Minute))
		}
	}
	switch name {
	case "CREATE":
		if len(args) >= 1 {
			name := args[0]
			if h, err := s.Hierarchy(ctx); err == nil && h.Delim != "" && len(name) > len(h.Delim) {
				// "Proj." makes Proj (RFC 3501 6.3.3): its event names
				// Proj.
				name = strings.TrimSuffix(name, h.Delim)
			}
			note(accountwatch.Created, name)
		}
		e.mgr.Poke(account)
	case "DELETE":
		if len(args) >= 1 {
			note(accountwatch.Deleted, args[0])
		}
		e.mgr.Poke(account)
	case "RENAME":
		if len(args) >= 2 {
			note(accountwatch.Renamed, args[1])
			if st != nil {
				e.noteOwnRenameBelow(st, s.CanonicalMailbox(ctx, args[0]), s.CanonicalMailbox(ctx, args[1]))
			}
		}
		e.mgr.Poke(account)
	case "SUBSCRIBE":
		if len(args) >= 1 {
			note(accountwatch.Subscribed, args[0])
		}
		e.mgr.Poke(account)
	case "UNSUBSCRIBE":
		if len(args) >= 1 {
			note(accountwatch.Unsubscribed, args[0])
		}
		e.mgr.Poke(account)
	case "APPEND":
		if len(args) >= 1 {
			e.mgr.Poke(account, s.CanonicalMailbox(ctx, args[0]))
		}
	case "COPY", "MOVE", "UID COPY", "UID MOVE":
		if len(args) >= 2 {
			targets := []string{s.CanonicalMailbox(ctx, args[len(args)-1])}
			if m := s.Mailbox(); m != nil && name != "COPY" && name != "UID COPY" {
				targets = append(targets, m.Name())
			}
			e.mgr.Poke(account, targets...)
		}
	case "EXPUNGE", "UID EXPUNGE", "STORE", "UID STORE", "CLOSE":
		if m := s.Mailbox(); m != nil {
			e.mgr.Poke(account, m.Name())
		}
	}
}

// noteOwnRenameBelow records as the session's own the renames of the
// mailboxes that its RENAME of from to to moved along (RFC 3501 6.3.5),
// one by one: those below from in the account watcher's latest poll, which
// the next poll reports renamed (a child it did not know yet comes as a
// creation), or below to if that poll saw the RENAME already (to did not
// exist before it). (One entry for all that came from below from to below
// to hid another client's rename of a mailbox made under the old name
// later.) INBOX's children stay where they are when INBOX is renamed.
func (e *Extension) noteOwnRenameBelow(st *state, from, to string) {
	if st.acct == nil || from == "INBOX" {
		return // no mailbox events asked for, or none to come
	}
	now := time.Now()
	exp := now.Add(2*e.pollInterval() + time.Minute)
	for _, b := range st.acct.Mailboxes() {
		if b.Delim == "" {
			continue
		}
		if rest, ok := strings.CutPrefix(b.Name, from+b.Delim); ok {
			st.noteOwn(accountwatch.Renamed.String()+"\x00"+to+b.Delim+rest, now, exp)
		} else if strings.HasPrefix(b.Name, to+b.Delim) {
			st.noteOwn(accountwatch.Renamed.String()+"\x00"+b.Name, now, exp)
		}
	}
}

func (e *Extension) pollInterval() time.Duration {
	if e.cfg.Accounts.PollInterval > 0 {
		return e.cfg.Accounts.PollInterval
	}
	return 30 * time.Second
}

// commandArgs returns the string arguments of a command's first line after
// its tag and name ("UID" counts as part of the name), as far as they
// parse.
func commandArgs(line []byte) []string {
	p := imapcodec.NewParser([]imapcodec.Segment{{Text: line}}, imapcodec.Limits{})
	var vals []imapcodec.Value
	for !p.AtEnd() {
		if len(vals) > 0 && p.SP() != nil {
			break
		}
		v, err := p.Value()
		if err != nil {
			break // a literal follows, or the rest does not parse
		}
		vals = append(vals, v)
	}
	skip := 2
	if len(vals) > 1 {
		if a, ok := vals[1].(imapcodec.Atom); ok && strings.EqualFold(string(a), "UID") {
			skip = 3
		}
	}
	var out []string
	for i := skip; i < len(vals); i++ {
		if str, ok := imapcodec.AsString(vals[i]); ok {
			out = append(out, str)
		}
	}
	return out
}
