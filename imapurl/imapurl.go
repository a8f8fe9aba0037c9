// Package imapurl reads and writes IMAP URLs (RFC 5092) with their URLAUTH
// parts (RFC 4467: ";EXPIRE=", ";URLAUTH=access:mechanism:token"), for the
// extensions that take URLs from clients: CATENATE (RFC 4469) and URLAUTH.
//
// Parse accepts the absolute form ("imap://user@host/INBOX/;UID=20") and
// the absolute-path relative form CATENATE uses ("/Drafts;UIDVALIDITY=
// 385759045/;UID=20/;section=HEADER"); the other relative forms of RFC
// 5092 7 need a base URL no command here has, and are refused. It is
// strict (every character is checked against the ABNF), bounded (MaxLen
// bytes, numbers within 32 bits) and allocates in proportion to its input.
// Keywords are case-insensitive, as ABNF strings are.
//
// String writes the canonical form: upper-case keywords, the access
// identifier in lower case, percent-encoding exactly where the ABNF needs
// it. Two URLs that name the same thing with the same rights have the
// same canonical form, which is why URLAUTH tokens are computed over the
// canonical rump (Rump) rather than over the client's spelling.
package imapurl

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// MaxLen is the longest URL Parse reads: far above any URL a mail client
// makes (a mailbox name, a UID, a section, a URLAUTH token), and low
// enough that a command full of them costs little.
const MaxLen = 4096

// ErrSyntax is wrapped by every error Parse returns.
var ErrSyntax = errors.New("imapurl: invalid IMAP URL")

// URL is a parsed IMAP URL. Text fields hold decoded values (mailbox
// names in UTF-8, as RFC 5092 3.1 wants them in URLs).
type URL struct {
	// Absolute is true for "imap://" URLs, false for "/mailbox..." ones.
	Absolute bool
	// User is the URL's user (enc-user), "" when it names none.
	User string
	// Auth is the ";AUTH=" type ("*" for any), "" when absent.
	Auth string
	// Host and Port are the server's; Port is "" when absent.
	Host, Port string

	// Mailbox is the mailbox named, "" for a URL of the server alone.
	Mailbox string
	// UIDValidity is the mailbox's UIDVALIDITY, 0 when absent.
	UIDValidity uint32
	// Search is the search program of a message list URL ("?..."),
	// HasSearch tells whether there is one.
	Search    string
	HasSearch bool

	// UID names a message (0: none, a mailbox or message list URL).
	UID uint32
	// Section is the body section ("" for the whole message).
	Section string
	// Partial is the byte range ";PARTIAL=offset[.length]", nil when
	// absent; Length 0 means to the end.
	Partial *Partial

	// Expire is the ";EXPIRE=" time of a URLAUTH URL, zero when absent.
	Expire time.Time
	// Access is the URLAUTH access identifier in canonical form
	// ("submit+fred", "user+fred", "authuser", "anonymous"), "" when the
	// URL has no ";URLAUTH=".
	Access string
	// Mechanism and Token are the URLAUTH verifier (":INTERNAL:91354a..."),
	// "" in a URLAUTH rump without one. Mechanism is upper case.
	Mechanism, Token string
}

// Partial is a ";PARTIAL=" byte range.
type Partial struct {
	Offset uint32
	Length uint32 // 0: to the end
}

// Access identifiers (RFC 4467 3).
const (
	AccessAuthUser  = "authuser"
	AccessAnonymous = "anonymous"
	accessSubmit    = "submit+"
	accessUser      = "user+"
)

// AccessKind splits an access identifier into its kind ("submit",
// "user", "authuser", "anonymous") and the user it names, if any.
func AccessKind(access string) (kind, user string) {
	switch {
	case strings.HasPrefix(access, accessSubmit):
		return "submit", access[len(accessSubmit):]
	case strings.HasPrefix(access, accessUser):
		return "user", access[len(accessUser):]
	}
	return access, ""
}

// IsMessage reports whether the URL names a message or a part of one
// (what CATENATE and URLFETCH can read).
func (u *URL) IsMessage() bool { return u.UID != 0 }

// HasURLAuth reports whether the URL carries ";URLAUTH=".
func (u *URL) HasURLAuth() bool { return u.Access != "" }

func errorf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrSyntax}, args...)...)
}

// Parse reads an absolute IMAP URL or an absolute-path relative one.
func Parse(s string) (*URL, error) {
	if len(s) > MaxLen {
		return nil, errorf("longer than %d bytes", MaxLen)
	}
	u := &URL{}
	rest := s
	switch {
	case hasPrefixFold(rest, "imap://"):
		u.Absolute = true
		rest = rest[len("imap://"):]
		end := strings.IndexByte(rest, '/')
		if end < 0 {
			end = len(rest)
		}
		if err := u.parseServer(rest[:end]); err != nil {
			return nil, err
		}
		rest = rest[end:]
		if rest == "" {
			return u, nil
		}
	case strings.HasPrefix(rest, "/") && !strings.HasPrefix(rest, "//"):
	default:
		return nil, errorf("neither an imap:// URL nor an absolute path")
	}
	rest = rest[1:] // the "/" before the command
	if rest == "" {
		return u, nil
	}
	if err := u.parseCommand(rest); err != nil {
		return nil, err
	}
	return u, nil
}

// parseServer reads iserver: [iuserinfo "@"] host [":" port].
func (u *URL) parseServer(s string) error {
	if at := strings.LastIndexByte(s, '@'); at >= 0 {
		info := s[:at]
		s = s[at+1:]
		user := info
		if i := indexFold(info, ";AUTH="); i >= 0 {
			user = info[:i]
			auth := info[i+len(";AUTH="):]
			if auth != "*" {
				a, err := decode(auth, achar, "auth type")
				if err != nil {
					return err
				}
				auth = a
			}
			if auth == "" {
				return errorf("empty auth type")
			}
			u.Auth = auth
		}
		if user != "" {
			d, err := decode(user, achar, "user")
			if err != nil {
				return err
			}
			u.User = d
		} else if u.Auth == "" {
			return errorf("empty user")
		}
	}
	host := s
	if strings.HasPrefix(host, "[") {
		end := strings.IndexByte(host, ']')
		if end < 0 {
			return errorf("unclosed IPv6 address")
		}
		for _, c := range host[1:end] {
			if !(isHex(byte(c)) || c == ':' || c == '.') {
				return errorf("bad character in IPv6 address")
			}
		}
		u.Host, s = host[:end+1], host[end+1:]
	} else {
		end := strings.IndexByte(host, ':')
		if end < 0 {
			end = len(host)
		}
		for i := 0; i < end; i++ {
			if c := host[i]; !(unreserved(c) || subDelim(c)) {
				return errorf("bad character %q in host", c)
			}
		}
		u.Host, s = host[:end], host[end:]
	}
	if u.Host == "" || u.Host == "[]" {
		return errorf("empty host")
	}
	if s != "" {
		if s[0] != ':' || len(s) == 1 || len(s) > 6 {
			return errorf("bad port")
		}
		for i := 1; i < len(s); i++ {
			if !isDigit(s[i]) {
				return errorf("bad port")
			}
		}
		u.Port = s[1:]
	}
	return nil
}

// parseCommand reads icommand: a mailbox, optionally with UIDVALIDITY,
// then a search, or a message part with its URLAUTH.
func (u *URL) parseCommand(s string) error {
	end := strings.IndexAny(s, ";?")
	if end < 0 {
		end = len(s)
	}
	mbox, rest := s[:end], s[end:]
	switch {
	case hasPrefixFold(rest, ";UIDVALIDITY="):
		rest = rest[len(";UIDVALIDITY="):]
		n, r, err := number(rest, "UIDVALIDITY")
		if err != nil {
			return err
		}
		u.UIDValidity, rest = n, r
	case hasPrefixFold(rest, ";UID="):
		// The "/" before ";UID=" is iuid's, not the mailbox's.
		if !strings.HasSuffix(mbox, "/") {
			return errorf("no \"/\" before ;UID=")
		}
		mbox = mbox[:len(mbox)-1]
		rest = "/" + rest
	}
	m, err := decode(mbox, bchar, "mailbox")
	if err != nil {
		return err
	}
	if m == "" {
		return errorf("empty mailbox name")
	}
	u.Mailbox = m
	switch {
	case rest == "":
		return nil
	case rest[0] == '?':
		q, err := decode(rest[1:], bchar, "search")
		if err != nil {
			return err
		}
		if q == "" {
			return errorf("empty search")
		}
		u.Search, u.HasSearch = q, true
		return nil
	case !hasPrefixFold(rest, "/;UID="):
		return errorf("unexpected %q after the mailbox", clip(rest))
	}
	rest = rest[len("/;UID="):]
	uid, rest, err := number(rest, "UID")
	if err != nil {
		return err
	}
	u.UID = uid
	if hasPrefixFold(rest, "/;SECTION=") {
		rest = rest[len("/;SECTION="):]
		end := strings.IndexByte(rest, ';')
		if end < 0 {
			end = len(rest)
		}
		sec := rest[:end]
		rest = rest[end:]
		if hasPrefixFold(rest, ";PARTIAL=") {
			if !strings.HasSuffix(sec, "/") {
				return errorf("no \"/\" before ;PARTIAL=")
			}
			sec = sec[:len(sec)-1]
			rest = "/" + rest
		}
		d, err := decode(sec, bchar, "section")
		if err != nil {
			return err
		}
		if d == "" {
			return errorf("empty section")
		}
		u.Section = d
	}
	if hasPrefixFold(rest, "/;PARTIAL=") {
		rest = rest[len("/;PARTIAL="):]
		off, r, err := digits(rest, "PARTIAL offset", false)
		if err != nil {
			return err
		}
		p := &Partial{Offset: off}
		rest = r
		if strings.HasPrefix(rest, ".") {
			l, r, err := number(rest[1:], "PARTIAL length")
			if err != nil {
				return err
			}
			p.Length, rest = l, r
		}
		u.Partial = p
	}
	if rest == "" {
		return nil
	}
	return u.parseURLAuth(rest)
}

// parseURLAuth reads iurlauth (or its rump): [";EXPIRE=" date-time]
// ";URLAUTH=" access [":" mechanism ":" token].
func (u *URL) parseURLAuth(s string) error {
	if hasPrefixFold(s, ";EXPIRE=") {
		s = s[len(";EXPIRE="):]
		end := strings.IndexByte(s, ';')
		if end < 0 {
			return errorf(";EXPIRE= without ;URLAUTH=")
		}
		t, err := parseDateTime(s[:end])
		if err != nil {
			return err
		}
		u.Expire, s = t, s[end:]
	}
	if !hasPrefixFold(s, ";URLAUTH=") {
		return errorf("unexpected %q after the message part", clip(s))
	}
	s = s[len(";URLAUTH="):]
	access, verifier, hasVerifier := strings.Cut(s, ":")
	switch {
	case strings.EqualFold(access, AccessAuthUser):
		u.Access = AccessAuthUser
	case strings.EqualFold(access, AccessAnonymous):
		u.Access = AccessAnonymous
	case hasPrefixFold(access, accessSubmit), hasPrefixFold(access, accessUser):
		plus := strings.IndexByte(access, '+')
		user, err := decode(access[plus+1:], achar, "access user")
		if err != nil {
			return err
		}
		if user == "" {
			return errorf("empty user in the access identifier")
		}
		u.Access = strings.ToLower(access[:plus+1]) + user
	default:
		return errorf("unknown access identifier %q", clip(access))
	}
	if !hasVerifier {
		return nil
	}
	mech, token, ok := strings.Cut(verifier, ":")
	if !ok || mech == "" {
		return errorf("URLAUTH verifier without mechanism and token")
	}
	for i := 0; i < len(mech); i++ {
		if c := mech[i]; !(isAlpha(c) || isDigit(c) || c == '-' || c == '.') {
			return errorf("bad character in the URLAUTH mechanism")
		}
	}
	if len(token) < 32 {
		return errorf("URLAUTH token shorter than 32 hex digits")
	}
	for i := 0; i < len(token); i++ {
		if !isHex(token[i]) {
			return errorf("URLAUTH token is not hex")
		}
	}
	u.Mechanism, u.Token = strings.ToUpper(mech), strings.ToLower(token)
	return nil
}

// parseDateTime reads RFC 3339's date-time, which ";EXPIRE=" takes.
func parseDateTime(s string) (time.Time, error) {
	if len(s) > 64 {
		return time.Time{}, errorf("EXPIRE too long")
	}
	t, err := time.Parse(time.RFC3339Nano, strings.ToUpper(s))
	if err != nil {
		return time.Time{}, errorf("bad EXPIRE date-time %q", s)
	}
	return t, nil
}

// number reads a 32-bit nz-number.
func number(s, what string) (uint32, string, error) {
	return digits(s, what, true)
}

// digits reads a 32-bit number (non-zero if nz) without leading zeros
// beyond a lone "0".
func digits(s, what string, nz bool) (uint32, string, error) {
	end := 0
	for end < len(s) && isDigit(s[end]) {
		end++
	}
	if end == 0 || end > 10 || nz && s[0] == '0' {
		return 0, s, errorf("bad %s", what)
	}
	n, err := strconv.ParseUint(s[:end], 10, 32)
	if err != nil {
		return 0, s, errorf("%s out of range", what)
	}
	return uint32(n), s[end:], nil
}

// decode percent-decodes s, whose raw characters must all be in class.
func decode(s string, class func(byte) bool, what string) (string, error) {
	if strings.IndexByte(s, '%') < 0 {
		for i := 0; i < len(s); i++ {
			if !class(s[i]) {
				return "", errorf("bad character %q in %s", s[i], what)
			}
		}
		return s, nil
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return "", errorf("bad percent-encoding in %s", what)
			}
			b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
		case class(c):
			b = append(b, c)
		default:
			return "", errorf("bad character %q in %s", c, what)
		}
	}
	return string(b), nil
}

// String returns the URL's canonical form.
func (u *URL) String() string {
	b := u.appendRump(nil)
	if u.Token != "" {
		b = append(b, ':')
		b = append(b, u.Mechanism...)
		b = append(b, ':')
		b = append(b, u.Token...)
	}
	return string(b)
}

// Rump returns the canonical form without the URLAUTH verifier: for a
// URLAUTH URL, everything up to and including the access identifier, the
// text RFC 4467's INTERNAL token is computed over.
func (u *URL) Rump() string { return string(u.appendRump(nil)) }

func (u *URL) appendRump(b []byte) []byte {
	if u.Absolute {
		b = append(b, "imap://"...)
		if u.User != "" {
			b = encode(b, u.User, achar)
		}
		if u.Auth != "" {
			b = append(b, ";AUTH="...)
			if u.Auth == "*" {
				b = append(b, '*')
			} else {
				b = encode(b, u.Auth, achar)
			}
		}
		if u.User != "" || u.Auth != "" {
			b = append(b, '@')
		}
		b = append(b, strings.ToLower(u.Host)...)
		if u.Port != "" {
			b = append(b, ':')
			b = append(b, u.Port...)
		}
	}
	if u.Mailbox == "" {
		if u.Absolute {
			return b
		}
		return append(b, '/')
	}
	b = append(b, '/')
	b = encode(b, u.Mailbox, bchar)
	if u.UIDValidity != 0 {
		b = append(b, ";UIDVALIDITY="...)
		b = strconv.AppendUint(b, uint64(u.UIDValidity), 10)
	}
	if u.HasSearch {
		b = append(b, '?')
		return encode(b, u.Search, bchar)
	}
	if u.UID == 0 {
		return b
	}
	b = append(b, "/;UID="...)
	b = strconv.AppendUint(b, uint64(u.UID), 10)
	if u.Section != "" {
		b = append(b, "/;SECTION="...)
		b = encode(b, u.Section, bchar)
	}
	if p := u.Partial; p != nil {
		b = append(b, "/;PARTIAL="...)
		b = strconv.AppendUint(b, uint64(p.Offset), 10)
		if p.Length != 0 {
			b = append(b, '.')
			b = strconv.AppendUint(b, uint64(p.Length), 10)
		}
	}
	if u.Access != "" {
		if !u.Expire.IsZero() {
			b = append(b, ";EXPIRE="...)
			b = u.Expire.AppendFormat(b, time.RFC3339Nano)
		}
		b = append(b, ";URLAUTH="...)
		kind, user := AccessKind(u.Access)
		if user != "" {
			b = append(b, kind...)
			b = append(b, '+')
			b = encode(b, user, achar)
		} else {
			b = append(b, kind...)
		}
	}
	return b
}

// encode appends s percent-encoded where a byte is not in class. A "/"
// that would end a mailbox or section early (before ";") cannot occur:
// ";" is never in class, so it is always encoded.
func encode(b []byte, s string, class func(byte) bool) []byte {
	const hexDigits = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if class(c) && c != '%' {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hexDigits[c>>4], hexDigits[c&15])
	}
	return b
}

// Character classes of RFC 5092 (on top of RFC 3986's).

func unreserved(c byte) bool {
	return isAlpha(c) || isDigit(c) || c == '-' || c == '.' || c == '_' || c == '~'
}

func subDelim(c byte) bool { return strings.IndexByte("!$&'()*+,;=", c) >= 0 }

// uchar = unreserved / pct-encoded / sub-delims-sh; sub-delims-sh is
// sub-delims without ";" and "=" (RFC 5092 11).
func uchar(c byte) bool {
	return unreserved(c) || strings.IndexByte("!$'()*+,", c) >= 0
}

// achar = uchar / "&" / "=" / "~".
func achar(c byte) bool { return uchar(c) || c == '&' || c == '=' }

// bchar = achar / ":" / "@" / "/".
func bchar(c byte) bool { return achar(c) || c == ':' || c == '@' || c == '/' }

func isAlpha(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isHex(c byte) bool   { return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

func unhex(c byte) byte {
	switch {
	case isDigit(c):
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// indexFold is strings.Index ignoring ASCII case, for short keywords.
func indexFold(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return i
		}
	}
	return -1
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}
