// Package namespace gives every client the NAMESPACE command (RFC 2342),
// whatever the upstream offers; RFC 5550 §3 requires it of a Lemonade
// server.
//
// Where the upstream advertises NAMESPACE the extension does nothing: the
// core relays the capability (proxy's relayable list) and the command,
// byte for byte, and the upstream's answer is the truth about its
// namespaces. Where it does not, the extension advertises NAMESPACE after
// login and answers it from what the upstream does say, LIST "" ""
// (RFC 3501 6.3.8): its hierarchy delimiter and root name make the one
// personal namespace: `* NAMESPACE (("" "/")) NIL NIL` in front of
// go-imap's server, (("INBOX." ".")) for a server that reports the root
// "INBOX." of a Courier-style hierarchy, (("" NIL)) for a flat one. The
// core learns the same answer once per account to spell mailbox names
// (proxy.Session.Hierarchy), so asking costs one LIST per account, not one
// per NAMESPACE.
//
// The other users' and shared namespaces are NIL. An IMAP4rev1 server
// without NAMESPACE has no standard way to say whether it has either, or
// under which prefix: guessing a prefix ("#shared/", "Other Users/")
// would send clients to mailboxes that do not exist. NIL is the RFC's own
// answer for "no such namespace" (RFC 2342 §5), and a client that knows
// better can still LIST what the upstream has.
package namespace

import (
	"context"
	"errors"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Extension implements NAMESPACE over upstreams without it. The zero value
// is ready to use.
type Extension struct{}

// New returns the NAMESPACE extension.
func New() *Extension { return &Extension{} }

func (e *Extension) Name() string { return "namespace" }

// Capabilities adds NAMESPACE after login when the upstream lacks it (the
// core relays the upstream's own word otherwise).
func (e *Extension) Capabilities(st proxy.State, up upstream.Caps) []string {
	if st >= proxy.StateAuthenticated && !up.Has("NAMESPACE") {
		return []string{"NAMESPACE"}
	}
	return nil
}

func (e *Extension) Commands() []string { return []string{"NAMESPACE"} }

// ServeCommand answers NAMESPACE when the upstream lacks it and passes it
// on otherwise. The core has refused it before login already (RFC 2342 §5:
// authenticated and selected states only).
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	if s.UpstreamCaps().Has("NAMESPACE") {
		return next(ctx, x)
	}
	if !x.Command().Args.AtEnd() {
		return x.Reply("BAD", "", "NAMESPACE takes no arguments.")
	}
	h, err := s.Hierarchy(ctx)
	if err != nil {
		if errors.Is(err, proxy.ErrClientGone) {
			return err
		}
		s.Logger().Warn("NAMESPACE: cannot learn the hierarchy", "err", err)
		return x.Reply("NO", "UNAVAILABLE", "Cannot ask the upstream server for its hierarchy now; try again later.")
	}
	if err := s.Write(response(h)); err != nil {
		return err
	}
	return x.Reply("OK", "", "NAMESPACE completed.")
}

// response is the untagged NAMESPACE response, CRLF included, for an
// upstream whose LIST "" "" says h: one personal namespace with h's root
// as its prefix and h's delimiter, no other users' or shared namespaces.
// A root reported without its trailing delimiter ("INBOX") gets one: the
// prefix is what a client puts before a new mailbox's name (RFC 2342 §5),
// and "INBOXDrafts" is not a mailbox under INBOX.
func response(h proxy.Hierarchy) []byte {
	prefix := h.Root
	if prefix != "" && h.Delim != "" && !strings.HasSuffix(prefix, h.Delim) {
		prefix += h.Delim
	}
	b := []byte("* NAMESPACE ((")
	// The prefix is a string (RFC 2342 §6), never an atom: quoted, or a
	// literal for what a quoted string cannot hold.
	if imapcodec.CanQuote(prefix) {
		b = imapcodec.AppendQuoted(b, prefix)
	} else {
		b = imapcodec.LiteralHeader{Size: int64(len(prefix))}.Format(b)
		b = append(b, "\r\n"...)
		b = append(b, prefix...)
	}
	b = append(b, ' ')
	if h.Delim == "" {
		b = append(b, "NIL"...)
	} else {
		b = imapcodec.AppendQuoted(b, h.Delim)
	}
	return append(b, ")) NIL NIL\r\n"...)
}
