// Package urlauth offers URLAUTH (RFC 4467): URLs that carry their own
// authorization (";URLAUTH=access:INTERNAL:token"), made by GENURLAUTH,
// revoked by RESETKEY, and read by URLFETCH, so that a message submission
// server with BURL (RFC 4468) can fetch the parts of a message the user
// composed on the IMAP server without holding the user's mailbox rights
// (docs/urlauth.md).
//
// # Relayed or synthesized
//
// Where the upstream advertises URLAUTH its commands are relayed and the
// upstream's tokens are the ones that count. Otherwise the proxy answers
// them itself, with the INTERNAL mechanism:
//
//   - Keys. Each mailbox of an account has a mailbox access key: 256
//     random bits (crypto/rand), made by the first GENURLAUTH for the
//     mailbox and kept in the proxy's account data (Services.Data) under
//     "urlauth/key/" followed by the mailbox name as IMAP4rev1 spells it
//     (modified UTF-7; INBOX in upper case). At most MaxKeys per account.
//     Keys are never logged and never leave the proxy. RESETKEY without
//     arguments deletes every key of the account, RESETKEY mailbox that
//     mailbox's; a successful DELETE or RENAME of a mailbox deletes its
//     key too, so URLs of a mailbox that is gone never become valid again
//     for a new mailbox of the same name.
//   - Tokens. INTERNAL's token is HMAC-SHA1 of the URL's rump (everything
//     up to and including the access identifier) under the mailbox's key,
//     in lower-case hex (40 digits). The rump is taken in its canonical
//     form (imapurl.URL.Rump), so a URL that is re-encoded on its way
//     (keyword case, percent-encoding) still verifies, and any change to
//     what it names or to whom it is granted does not.
//   - GENURLAUTH takes absolute URLs with a URLAUTH rump of the session's
//     own user on one of Config.Hosts, naming an existing mailbox; other
//     URLs are answered NO (BAD for what does not parse). The answer is
//     the client's URL with ":internal:" and the token appended, as in
//     RFC 4467's example.
//   - URLFETCH answers each URL with its data, or NIL when the URL is not
//     one the session may read: not URLAUTH-authorized, a token that does
//     not verify, an expired ";EXPIRE=", an access identifier that does
//     not admit the session, or a URL of another account. The proxy can
//     read only the session's own upstream account (it has no other
//     credentials), so a URL of another account is NIL even when its
//     access identifier ("anonymous", "authuser") would admit the
//     session: such a URL is never read, never answered with data. The
//     data is spooled (urlfetch.Spool: a file beyond a few KiB), bounded by the proxy's
//     MaxAppendLiteral, before its literal is written.
//   - Access identifiers are checked exactly (RFC 4467 3): "anonymous"
//     and "authuser" admit any session (every session is authenticated;
//     the proxy has no anonymous login); "user+X" admits a session whose
//     account is X's; "submit+X" admits a session whose account is X's
//     and whose client address is in Config.SubmitFrom: the operator's
//     submission servers, which log in as the user (docs/urlauth.md).
//   - URLMECH: SELECT and EXAMINE answer "* OK [URLMECH INTERNAL]", and
//     RESETKEY of a mailbox answers OK [URLMECH INTERNAL].
//
// The same check (AuthorizeURL) serves CATENATE's URL parts that carry
// URLAUTH (extensions/catenate's Authorizer).
package urlauth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/accountdata"
	"github.com/lemonproxy/lemonproxy/extensions/internal/urlfetch"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/imapurl"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// keyPrefix is this extension's prefix in the account data.
const keyPrefix = "urlauth/key/"

// MaxKeys bounds the mailbox access keys one account may have: one per
// mailbox a GENURLAUTH named.
const MaxKeys = 1000

// keySize is the size of a mailbox access key (RFC 4467 7 wants at least
// 128 bits).
const keySize = 32

// maxURLs bounds the URLs of one GENURLAUTH or URLFETCH.
const maxURLs = 100

// Config configures the extension.
type Config struct {
	// Hosts are the names clients reach the proxy under; a URL must name
	// one. Empty: urlfetch.DefaultHosts().
	Hosts urlfetch.Hosts
	// SubmitFrom are the addresses of the submission servers a
	// "submit+user" URL admits (when logged in as that user).
	SubmitFrom []netip.Prefix
	// SpoolDir is where URLFETCH data waits for its literal; "" is
	// os.TempDir().
	SpoolDir string
	// Now is the clock for ";EXPIRE=" (tests); nil is time.Now.
	Now func() time.Time
}

// Extension offers URLAUTH.
type Extension struct {
	cfg  Config
	data accountdata.Store
}

// New returns the extension.
func New(cfg Config) *Extension {
	if len(cfg.Hosts) == 0 {
		cfg.Hosts = urlfetch.DefaultHosts()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Extension{cfg: cfg}
}

// Name implements proxy.Extension.
func (*Extension) Name() string { return "urlauth" }

// Provision takes the account data store the keys live in.
func (e *Extension) Provision(svc proxy.Services) error {
	if svc.Data == nil {
		return errors.New("urlauth: no account data store (Config.AccountData)")
	}
	e.data = svc.Data
	return nil
}

// Synthesized reports whether the proxy answers URLAUTH over an upstream
// with capabilities up.
func (*Extension) Synthesized(up upstream.Caps) bool { return !up.Has("URLAUTH") }

// Capabilities offers URLAUTH once logged in, relayed or synthesized.
func (*Extension) Capabilities(st proxy.State, up upstream.Caps) []string {
	if st != proxy.StateAuthenticated && st != proxy.StateSelected || up == nil {
		return nil
	}
	return []string{"URLAUTH"}
}

// Commands implements proxy.CommandHandler.
func (*Extension) Commands() []string {
	return []string{"GENURLAUTH", "RESETKEY", "URLFETCH", "DELETE", "RENAME"}
}

// ServeCommand answers the URLAUTH commands where the upstream lacks
// URLAUTH and forgets the keys of deleted and renamed mailboxes.
func (e *Extension) ServeCommand(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	if !e.Synthesized(s.UpstreamCaps()) {
		return next(ctx, x)
	}
	switch x.Name {
	case "GENURLAUTH":
		return e.genURLAuth(ctx, x)
	case "RESETKEY":
		return e.resetKey(ctx, x)
	case "URLFETCH":
		return e.urlFetch(ctx, x)
	}
	// DELETE, RENAME: the first argument is the mailbox that is gone
	// (read from the segments: the command's own parser is for the
	// handlers that answer it).
	vals, err := imapcodec.NewParser(x.Segments, imapcodec.Limits{}).Values()
	if err := next(ctx, x); err != nil || x.Status() != "OK" {
		return err
	}
	if err == nil && len(vals) > 2 {
		if name, ok := imapcodec.AsString(vals[2]); ok {
			// RENAME INBOX moves INBOX's messages and leaves the
			// mailboxes below it (RFC 3501 6.3.5).
			children := x.Name == "RENAME" && !strings.EqualFold(name, "INBOX")
			if err := e.forget(ctx, s, name, children); err != nil {
				s.Logger().Warn("urlauth: cannot delete a mailbox key", "err", err)
			}
		}
	}
	return nil
}

// forget deletes the access key of a mailbox that is gone, and with
// children those of the mailboxes below it (a RENAME takes them along;
// RFC 3501 6.3.5), so that a mailbox created later under a gone name does
// not accept the URLs made for the one that had it.
func (e *Extension) forget(ctx context.Context, s *proxy.Session, name string, children bool) error {
	key := keyName(ctx, s, name)
	keys := []string{key}
	if h, err := s.Hierarchy(ctx); children && err == nil && h.Delim != "" {
		err := e.data.List(s.Account(), key+h.Delim, func(k string, _ []byte) bool {
			keys = append(keys, k)
			return true
		})
		if err != nil {
			return err
		}
	}
	return e.data.Write(s.Account(), nil, keys)
}

// keyName is the account data key of a mailbox's access key; name is
// the mailbox as a client spelt it. The key is the mailbox's, not the
// spelling's: inbox.Drafts and INBOX.Drafts share one (proxy's
// CanonicalMailbox), so that RESETKEY or DELETE of either voids the URLs
// made for both.
func keyName(ctx context.Context, s *proxy.Session, name string) string {
	return keyPrefix + s.CanonicalMailbox(ctx, name)
}

// args reads a command's arguments, each an astring.
func args(x *proxy.Exchange) ([]string, error) {
	vals, err := x.Command().Args.Values()
	if err != nil {
		return nil, err
	}
	out := make([]string, len(vals))
	for i, v := range vals {
		s, ok := imapcodec.AsString(v)
		if !ok {
			return nil, fmt.Errorf("argument %d is not a string", i+1)
		}
		out[i] = s
	}
	return out, nil
}

func bad(x *proxy.Exchange, why string) error {
	return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": "+why+".")
}

// genURLAuth answers GENURLAUTH url mechanism [url mechanism ...].
func (e *Extension) genURLAuth(ctx context.Context, x *proxy.Exchange) error {
	s := x.Session()
	a, err := args(x)
	switch {
	case err != nil:
		return bad(x, err.Error())
	case len(a) == 0 || len(a)%2 != 0:
		return bad(x, "want pairs of URL and mechanism")
	case len(a) > 2*maxURLs:
		return bad(x, fmt.Sprintf("more than %d URLs", maxURLs))
	}
	out := []byte("* GENURLAUTH")
	for i := 0; i < len(a); i += 2 {
		raw, mech := a[i], a[i+1]
		u, err := imapurl.Parse(raw)
		if err != nil {
			return bad(x, "invalid URL")
		}
		if !strings.EqualFold(mech, "INTERNAL") {
			return bad(x, "unknown URLAUTH mechanism "+mech)
		}
		switch {
		case !u.Absolute || !u.HasURLAuth() || u.Token != "":
			return bad(x, "not an absolute URL with a URLAUTH rump")
		case !u.IsMessage() || !urlfetch.Section(strings.ToUpper(u.Section)):
			return x.Reply("NO", "", "The URL names no message.")
		case urlfetch.Owner(s, u, e.cfg.Hosts) != nil:
			return x.Reply("NO", "", "The URL is not of this user on this server.")
		}
		key, err := e.key(ctx, s, u.WireMailbox(), true)
		if err != nil {
			var r *reply
			if errors.As(err, &r) {
				return x.Reply(r.status, r.code, r.text)
			}
			s.Logger().Warn("urlauth: account data", "err", err)
			return x.Reply("NO", "UNAVAILABLE", "Cannot keep the key now.")
		}
		out = append(out, ' ')
		out = appendURL(out, raw+":internal:"+token(key, u))
	}
	if err := s.Write(append(out, "\r\n"...)); err != nil {
		return err
	}
	return x.Reply("OK", "", "GENURLAUTH completed.")
}

// appendURL appends a URL to a response as RFC 4467's examples show
// them: a quoted string (a literal if it cannot be one).
func appendURL(b []byte, url string) []byte {
	if imapcodec.CanQuote(url) {
		return imapcodec.AppendQuoted(b, url)
	}
	b = imapcodec.LiteralHeader{Size: int64(len(url))}.Format(b)
	b = append(b, "\r\n"...)
	return append(b, url...)
}

// reply is an answer found deep in a command.
type reply struct{ status, code, text string }

func (r *reply) Error() string { return r.status + " " + r.text }

// key returns the access key of a mailbox (wire spelling) of the session's
// account, making one if create and there is none (after checking that
// the mailbox exists and the account has room).
func (e *Extension) key(ctx context.Context, s *proxy.Session, mbox string, create bool) ([]byte, error) {
	name := keyName(ctx, s, mbox)
	k, err := e.data.Get(s.Account(), name)
	if err == nil || !errors.Is(err, accountdata.ErrNotFound) || !create {
		return k, err
	}
	if !imapcodec.CanQuote(mbox) {
		return nil, &reply{"NO", "", "The URL's mailbox name is not supported."}
	}
	if _, err := s.Exec(ctx, string(imapcodec.AppendQuoted([]byte("STATUS "), mbox))+" (UIDVALIDITY)", nil); err != nil {
		var se *upstream.StatusError
		if errors.As(err, &se) {
			return nil, &reply{"NO", "NONEXISTENT", "No such mailbox."}
		}
		return nil, err
	}
	if n, err := accountdata.Count(e.data, s.Account(), keyPrefix); err != nil {
		return nil, err
	} else if n >= MaxKeys {
		return nil, &reply{"NO", "LIMIT", fmt.Sprintf("At most %d mailboxes may have URLAUTH keys; RESETKEY frees them.", MaxKeys)}
	}
	k = make([]byte, keySize)
	if _, err := io.ReadFull(rand.Reader, k); err != nil {
		return nil, err
	}
	if err := accountdata.Put(e.data, s.Account(), name, k); err != nil {
		return nil, err
	}
	return k, nil
}

// token is INTERNAL's token of u under key.
func token(key []byte, u *imapurl.URL) string {
	m := hmac.New(sha1.New, key)
	io.WriteString(m, u.Rump())
	return hex.EncodeToString(m.Sum(nil))
}

// resetKey answers RESETKEY [mailbox [mechanism ...]].
func (e *Extension) resetKey(ctx context.Context, x *proxy.Exchange) error {
	s := x.Session()
	a, err := args(x)
	if err != nil {
		return bad(x, err.Error())
	}
	if len(a) == 0 {
		var keys []string
		err := e.data.List(s.Account(), keyPrefix, func(k string, _ []byte) bool {
			keys = append(keys, k)
			return true
		})
		if err == nil {
			err = e.data.Write(s.Account(), nil, keys)
		}
		if err != nil {
			s.Logger().Warn("urlauth: account data", "err", err)
			return x.Reply("NO", "UNAVAILABLE", "Cannot remove the keys now.")
		}
		return x.Reply("OK", "", "All keys removed.")
	}
	for _, mech := range a[1:] {
		if !strings.EqualFold(mech, "INTERNAL") {
			return bad(x, "unknown URLAUTH mechanism "+mech)
		}
	}
	mbox := a[0]
	if !imapcodec.CanQuote(mbox) {
		return x.Reply("NO", "NONEXISTENT", "No such mailbox.")
	}
	if _, err := s.Exec(ctx, string(imapcodec.AppendQuoted([]byte("STATUS "), mbox))+" (UIDVALIDITY)", nil); err != nil {
		var se *upstream.StatusError
		if errors.As(err, &se) {
			return x.Reply("NO", "NONEXISTENT", "No such mailbox.")
		}
		return x.Reply("NO", "UNAVAILABLE", "The upstream server failed.")
	}
	if err := accountdata.Delete(e.data, s.Account(), keyName(ctx, s, mbox)); err != nil {
		s.Logger().Warn("urlauth: account data", "err", err)
		return x.Reply("NO", "UNAVAILABLE", "Cannot reset the key now.")
	}
	return x.Reply("OK", "URLMECH INTERNAL", "Key reset.")
}

// ErrNotAuthorized is what AuthorizeURL returns for a URL the session may
// not read.
var ErrNotAuthorized = errors.New("urlauth: URL not authorized")

// AuthorizeURL checks a URL with URLAUTH for the session (RFC 4467 6.3's
// rules, see the package comment): verifier, expiry, access identifier,
// and that the URL is of the session's own account on this server. It
// implements catenate.Authorizer.
func (e *Extension) AuthorizeURL(ctx context.Context, s *proxy.Session, u *imapurl.URL) error {
	if !u.Absolute || !u.HasURLAuth() || u.Token == "" || u.Mechanism != "INTERNAL" {
		return fmt.Errorf("%w: no INTERNAL URLAUTH", ErrNotAuthorized)
	}
	if urlfetch.Owner(s, u, e.cfg.Hosts) != nil {
		return fmt.Errorf("%w: of another account", ErrNotAuthorized)
	}
	if !u.Expire.IsZero() && !e.cfg.Now().Before(u.Expire) {
		return fmt.Errorf("%w: expired", ErrNotAuthorized)
	}
	switch kind, user := imapurl.AccessKind(u.Access); kind {
	case "anonymous", "authuser":
	case "user":
		if s.AccountOf(user) != s.Account() {
			return fmt.Errorf("%w: for another user", ErrNotAuthorized)
		}
	case "submit":
		if s.AccountOf(user) != s.Account() || !e.submitter(s.RemoteAddr()) {
			return fmt.Errorf("%w: for a submission server", ErrNotAuthorized)
		}
	default:
		return fmt.Errorf("%w: access %q", ErrNotAuthorized, u.Access)
	}
	key, err := e.key(ctx, s, u.WireMailbox(), false)
	if err != nil {
		return fmt.Errorf("%w: no key", ErrNotAuthorized)
	}
	want := token(key, u)
	if !hmac.Equal([]byte(want), []byte(u.Token)) {
		return fmt.Errorf("%w: token", ErrNotAuthorized)
	}
	return nil
}

// submitter reports whether a client at addr is one of the operator's
// submission servers.
func (e *Extension) submitter(addr net.Addr) bool {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, p := range e.cfg.SubmitFrom {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// urlFetch answers URLFETCH url [url ...].
func (e *Extension) urlFetch(ctx context.Context, x *proxy.Exchange) error {
	s := x.Session()
	a, err := args(x)
	switch {
	case err != nil:
		return bad(x, err.Error())
	case len(a) == 0:
		return bad(x, "no URL")
	case len(a) > maxURLs:
		return bad(x, fmt.Sprintf("more than %d URLs", maxURLs))
	}
	limit, _ := s.AppendLimits()
	for _, raw := range a {
		if err := e.fetchOne(ctx, s, raw, limit); err != nil {
			return err
		}
	}
	return x.Reply("OK", "", "URLFETCH completed.")
}

// fetchOne writes one URL's URLFETCH response: its data or NIL. Only a
// failure to write to the client is returned.
func (e *Extension) fetchOne(ctx context.Context, s *proxy.Session, raw string, limit int64) error {
	head := appendURL([]byte("* URLFETCH "), raw)
	nilAnswer := func(why string, err error) error {
		s.Logger().Debug("urlauth: URLFETCH answered NIL", "why", why, "err", err)
		return s.Write(append(head, " NIL\r\n"...))
	}
	u, err := imapurl.Parse(raw)
	if err != nil {
		return nilAnswer("invalid URL", err)
	}
	if err := e.AuthorizeURL(ctx, s, u); err != nil {
		return nilAnswer("not authorized", err)
	}
	// The spool counts against the share of the account whose message
	// it holds, not the fetcher's: a submission server fetches for
	// every user through one account of its own.
	sp, err := urlfetch.NewSpool(e.cfg.SpoolDir, s.AccountOf(u.User))
	if err != nil {
		s.Logger().Warn("urlauth: cannot create a spool file", "err", err)
		return nilAnswer("spool", err)
	}
	defer sp.Close()
	n, err := urlfetch.Copy(ctx, s, u, sp, limit)
	if err != nil {
		return nilAnswer("fetch", err)
	}
	head = append(head, ' ')
	head = imapcodec.LiteralHeader{Size: n}.Format(head)
	head = append(head, "\r\n"...)
	if err := s.Write(head); err != nil {
		return err
	}
	buf := make([]byte, 32<<10)
	r := io.NewSectionReader(sp, 0, n)
	for {
		m, rerr := r.Read(buf)
		if m > 0 {
			if err := s.Write(buf[:m]); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// The literal's size is told: the response cannot be
			// completed, so the session cannot go on.
			return fmt.Errorf("urlauth: reading the spool: %w", rerr)
		}
	}
	return s.Write([]byte("\r\n"))
}

// SelectParams, SelectParam, SelectClosing and SelectOpened make SELECT
// and EXAMINE announce the INTERNAL mechanism (RFC 4467 4) where the
// proxy answers URLAUTH.
func (*Extension) SelectParams() []string { return nil }

// SelectParam is never called: the extension claims no parameter.
func (*Extension) SelectParam(*proxy.Session, string, imapcodec.List) (any, error) {
	return nil, errors.New("urlauth: no SELECT parameters")
}

// SelectClosing implements proxy.SelectHook.
func (*Extension) SelectClosing(*proxy.Session) {}

// SelectOpened adds "* OK [URLMECH INTERNAL]" to SELECT and EXAMINE.
func (e *Extension) SelectOpened(s *proxy.Session, _ map[string]any) error {
	if !e.Synthesized(s.UpstreamCaps()) {
		return nil
	}
	return s.Write([]byte("* OK [URLMECH INTERNAL] Mechanisms supported.\r\n"))
}
