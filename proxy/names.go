package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/lemonproxy/lemonproxy/upstream"
)

// Names the upstream treats as one must be one in the proxy, or its
// per-account limits, pools, watchers and states split: Dovecot folds
// login names to lower case by default (auth_username_format = %Lu) and
// treats inbox/Child as INBOX/Child.

// Username formats (Config.UsernameFormat), named as Dovecot's
// auth_username_format.
const (
	// UsernameLower folds ASCII letters to lower case, as Dovecot's %Lu
	// (its default).
	UsernameLower = "%Lu"
	// UsernameAsIs takes the name as the client sent it, for an upstream
	// whose user names are case-sensitive.
	UsernameAsIs = "%u"
)

func checkUsernameFormat(f string) error {
	switch f {
	case UsernameLower, UsernameAsIs:
		return nil
	}
	return fmt.Errorf("proxy: username format %q: want %s (lower case, Dovecot's default) or %s (as sent)", f, UsernameLower, UsernameAsIs)
}

// badUsername tells whether a client's user name holds a character no
// upstream account name has and that would make the proxy's keys
// ambiguous (NUL) or could break a command line (CR, LF).
func badUsername(user string) bool { return strings.ContainsAny(user, "\x00\r\n") }

// maxUsername bounds a client's user name: twice the longest mail
// address (254 bytes), room for a master-user suffix. A longer one is no
// account's, and it would be kept as the failed-login limiter's key of
// its account for the failure window (15 minutes) and logged whole: up to
// a command line, 64 KiB, per failed login.
const maxUsername = 512

// accountKey is the account's key for limits, the pool, the hub and the
// state store: the upstream address and the user name as the upstream
// identifies it, joined by NUL. Neither part holds a NUL (the address is
// checked in NewServer, user names with NUL are refused), so the key is
// unambiguous; it keeps the form of the state store's existing keys
// (docs/hardening.md, issue 16 item 18).
func (s *Server) accountKey(user string) string {
	if s.cfg.UsernameFormat == UsernameLower {
		user = asciiLower(user)
	}
	return s.cfg.Upstream.Addr + "\x00" + user
}

// asciiLower folds A-Z only, as Dovecot's %L does (non-ASCII letters
// are left alone, so two spellings the upstream keeps apart never merge).
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; 'A' <= c && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// canonicalName spells a mailbox name as the upstream treats it: INBOX in
// any case is INBOX (RFC 3501 5.1), and so is an INBOX followed by the
// hierarchy delimiter delim (inbox/Child is INBOX/Child, as in Dovecot).
// With no delimiter known, only INBOX itself is folded: inboxChild or
// inbox-Archive are other mailboxes, in any case the upstream keeps.
func canonicalName(name, delim string) string {
	if len(name) < 5 || !strings.EqualFold(name[:5], "INBOX") || name[:5] == "INBOX" {
		return name
	}
	if len(name) == 5 || delim != "" && strings.HasPrefix(name[5:], delim) {
		return "INBOX" + name[5:]
	}
	return name
}

// needsDelim tells whether canonicalName may need the hierarchy delimiter
// to spell name: only names that start with INBOX in another case.
func needsDelim(name string) bool {
	return len(name) > 5 && strings.EqualFold(name[:5], "INBOX") && name[:5] != "INBOX"
}

// CanonicalMailbox spells a mailbox name a client sent as the core keys
// mailboxes (the hub's states, the leased connections' selected mailbox)
// and as the upstream treats it: INBOX in upper case, alone or at the head
// of its hierarchy (RFC 3501 5.1), whatever case the client wrote it in.
// The hierarchy delimiter is asked for (Hierarchy) only for a name that
// needs it, once per account. For extensions that key data by mailbox.
func (s *Session) CanonicalMailbox(ctx context.Context, name string) string {
	if !needsDelim(name) {
		return canonicalName(name, "")
	}
	delim := ""
	if h, err := s.Hierarchy(ctx); err == nil {
		delim = h.Delim
	}
	return canonicalName(name, delim)
}

// CanonicalName is CanonicalMailbox for a caller that knows the hierarchy
// delimiter (a LIST response's).
func CanonicalName(name, delim string) string { return canonicalName(name, delim) }

// mailboxName spells a mailbox name the client sent as the upstream
// treats it (canonicalName), asking the upstream connection c for the
// hierarchy delimiter the first time the account needs it.
func (s *Session) mailboxName(ctx context.Context, c *upstream.Conn, name string) string {
	if !needsDelim(name) {
		return canonicalName(name, "")
	}
	return canonicalName(name, s.srv.hierarchyDelim(ctx, s.account, c))
}

// hierarchyDelim returns the account's hierarchy delimiter ("" if it has
// none or the upstream did not say), from LIST "" "" on c the first time.
func (s *Server) hierarchyDelim(ctx context.Context, account string, c *upstream.Conn) string {
	if h, ok := s.delims.Load(account); ok {
		return h.(Hierarchy).Delim
	}
	h, err := listHierarchy(ctx, c.Exec)
	if err != nil {
		return ""
	}
	s.delims.Store(account, h)
	return h.Delim
}

// Hierarchy is what LIST "" "" tells of an account's mailbox names
// (RFC 3501 6.3.8): all an upstream without NAMESPACE says of its
// personal namespace.
type Hierarchy struct {
	// Delim is the hierarchy delimiter, "" for a flat namespace (NIL).
	Delim string
	// Root is the root name LIST "" "" reports: "" on most servers; an
	// upstream that keeps every personal mailbox under a prefix
	// (Courier's "INBOX.") may say so here.
	Root string
}

// listRoot asks for the hierarchy delimiter and root name.
const listRoot = `LIST "" ""`

// Hierarchy returns the account's Hierarchy, asking the upstream (LIST ""
// "" through Exec) the first time a session of the account needs it. The
// core keeps it per account, as it spells mailbox names with the
// delimiter (canonicalName): an extension asks here rather than keep a
// copy of its own.
func (s *Session) Hierarchy(ctx context.Context) (Hierarchy, error) {
	if h, ok := s.srv.delims.Load(s.account); ok {
		return h.(Hierarchy), nil
	}
	h, err := listHierarchy(ctx, s.Exec)
	if err != nil {
		return Hierarchy{}, err
	}
	s.srv.delims.Store(s.account, h)
	return h, nil
}

// listHierarchy runs LIST "" "" through exec and reads its first LIST
// response; a malformed one is an error, not a flat namespace.
func listHierarchy(ctx context.Context, exec func(context.Context, string, func(*upstream.Response)) (*upstream.Response, error)) (Hierarchy, error) {
	var h Hierarchy
	found := false
	var bad error
	_, err := exec(ctx, listRoot, func(r *upstream.Response) {
		if found || bad != nil {
			return
		}
		h, found, bad = parseListRoot(r)
	})
	switch {
	case err != nil:
		return Hierarchy{}, err
	case bad != nil:
		return Hierarchy{}, fmt.Errorf("proxy: LIST \"\" \"\": %w", bad)
	case !found:
		return Hierarchy{}, errors.New("proxy: the upstream answered LIST \"\" \"\" without a LIST response")
	}
	return h, nil
}

// parseListRoot reads "* LIST (attributes) delimiter root" (ok false when
// r is no LIST response; err when it is a malformed one). A NIL delimiter
// is a flat namespace: "", not "NIL".
func parseListRoot(r *upstream.Response) (h Hierarchy, ok bool, err error) {
	e, ok, err := upstream.ParseList(r)
	if !ok || err != nil {
		return Hierarchy{}, ok, err
	}
	return Hierarchy{Delim: e.Delim, Root: e.Name}, true, nil
}
