// Package urlfetch reads what an IMAP URL (RFC 5092) names from the
// session's own upstream account, for the extensions that resolve URLs:
// CATENATE (RFC 4469, URL parts of an APPEND) and URLAUTH (RFC 4467,
// URLFETCH). It is one place for the two rules both must keep:
//
//   - Isolation. A URL is read only when it names the session's own
//     account (Owner): a relative URL always does; an absolute one must
//     name one of the proxy's own host names and a user whose account
//     key is the session's. The proxy holds no credentials of other
//     accounts and never borrows another session's connections, so a URL
//     of another user, host or account is refused, never read.
//   - Bounds. The data is read in chunks of ChunkSize with
//     "UID FETCH uid (BODY.PEEK[section]<offset.length>)" over
//     Session.ExecIn (the session's own pooled connections: no extra
//     login), each chunk below the upstream connection's inline literal
//     limit, and written to the caller's writer (a Spool) as it
//     comes; Copy stops with ErrTooBig past the caller's limit. Nothing of
//     the message is held beyond one chunk.
//
// The section is checked against RFC 3501's section grammar (Section)
// before it goes into an upstream command, so a URL cannot smuggle text
// into one.
package urlfetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/imapurl"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// ChunkSize is how much one upstream FETCH reads: below the upstream
// connection's default inline literal limit (64 KiB), which
// Session.ExecIn's responses must fit.
const ChunkSize = 48 << 10

var (
	// ErrBadURL means the URL names nothing the session may read: not a
	// message, another account, a mailbox or message that does not exist,
	// a UIDVALIDITY that does not match.
	ErrBadURL = errors.New("urlfetch: URL names nothing this session can read")
	// ErrTooBig means the data is larger than the caller's limit.
	ErrTooBig = errors.New("urlfetch: data over the limit")
)

// Hosts are the names under which clients reach the proxy: an absolute
// URL must name one of them (compared without regard to ASCII case; a
// port in the URL is not compared).
type Hosts []string

// DefaultHosts are the machine's host name and the loopback names, for a
// configuration that names none.
func DefaultHosts() Hosts {
	h := Hosts{"localhost", "127.0.0.1", "[::1]"}
	if name, err := os.Hostname(); err == nil && name != "" {
		h = append(h, name)
	}
	return h
}

// Has reports whether host is one of h.
func (h Hosts) Has(host string) bool {
	for _, n := range h {
		if strings.EqualFold(n, host) {
			return true
		}
	}
	return false
}

// Owner checks that u names the session's own account: relative URLs
// always do; an absolute URL must name a host of hosts and a user whose
// account is the session's (Session.AccountOf).
func Owner(s *proxy.Session, u *imapurl.URL, hosts Hosts) error {
	if !u.Absolute {
		return nil
	}
	if !hosts.Has(u.Host) {
		return fmt.Errorf("%w: host %q is not this server", ErrBadURL, u.Host)
	}
	if u.User == "" || s.AccountOf(u.User) != s.Account() {
		return fmt.Errorf("%w: the URL is of another user", ErrBadURL)
	}
	return nil
}

// Copy writes what u names (a message, a section of one, a partial range
// of either) to w, read from the session's own account; u must have
// passed Owner. It returns the number of bytes written; ErrBadURL when
// the URL names nothing that exists, ErrTooBig when the data exceeds
// limit bytes (after writing limit+1 at most). Other errors are the
// upstream's or w's.
func Copy(ctx context.Context, s *proxy.Session, u *imapurl.URL, w io.Writer, limit int64) (int64, error) {
	if !u.IsMessage() || u.HasSearch {
		return 0, fmt.Errorf("%w: not a message URL", ErrBadURL)
	}
	section := strings.ToUpper(u.Section)
	if !Section(section) {
		return 0, fmt.Errorf("%w: bad section %q", ErrBadURL, u.Section)
	}
	mbox := u.WireMailbox()
	if !imapcodec.CanQuote(mbox) {
		return 0, fmt.Errorf("%w: mailbox name", ErrBadURL)
	}
	if u.UIDValidity != 0 {
		v, err := uidValidity(ctx, s, mbox)
		if err != nil {
			return 0, err
		}
		if v != u.UIDValidity {
			return 0, fmt.Errorf("%w: UIDVALIDITY is %d", ErrBadURL, v)
		}
	}
	off, left := int64(0), int64(-1)
	if p := u.Partial; p != nil {
		off = int64(p.Offset)
		if p.Length != 0 {
			left = int64(p.Length)
		}
	}
	var total int64
	for first := true; left != 0; first = false {
		n := int64(ChunkSize)
		if left > 0 && left < n {
			n = left
		}
		data, found, err := chunk(ctx, s, mbox, u.UID, section, off, n)
		if err != nil {
			return total, err
		}
		if !found {
			if first {
				return 0, fmt.Errorf("%w: no message with UID %d", ErrBadURL, u.UID)
			}
			return total, fmt.Errorf("urlfetch: UID %d vanished while it was read", u.UID)
		}
		if total+int64(len(data)) > limit {
			return total, ErrTooBig
		}
		if _, err := w.Write(data); err != nil {
			return total, err
		}
		total += int64(len(data))
		off += int64(len(data))
		if left > 0 {
			left -= int64(len(data))
		}
		if int64(len(data)) < n {
			break
		}
	}
	return total, nil
}

// uidValidity asks the upstream for a mailbox's UIDVALIDITY.
func uidValidity(ctx context.Context, s *proxy.Session, mbox string) (uint32, error) {
	var v uint32
	cmd := string(imapcodec.AppendQuoted([]byte("STATUS "), mbox)) + " (UIDVALIDITY)"
	_, err := s.Exec(ctx, cmd, func(r *upstream.Response) {
		if r.Head.Name != "STATUS" {
			return
		}
		vals, err := imapcodec.NewParser(r.Segments, imapcodec.Limits{}).Values()
		if err != nil || len(vals) != 4 {
			return
		}
		l, _ := vals[3].(imapcodec.List)
		for i := 0; i+1 < len(l); i += 2 {
			if a, _ := l[i].(imapcodec.Atom); strings.EqualFold(string(a), "UIDVALIDITY") {
				s, _ := imapcodec.AsString(l[i+1])
				n, _ := strconv.ParseUint(s, 10, 32)
				v = uint32(n)
			}
		}
	})
	var se *upstream.StatusError
	if errors.As(err, &se) {
		return 0, fmt.Errorf("%w: mailbox: %s", ErrBadURL, se.Head.Text)
	}
	return v, err
}

// chunk reads n bytes of a section at off. found is false when the
// upstream sent no BODY item for the UID (no such message).
func chunk(ctx context.Context, s *proxy.Session, mbox string, uid uint32, section string, off, n int64) (data []byte, found bool, err error) {
	cmd := fmt.Sprintf("UID FETCH %d (BODY.PEEK[%s]<%d.%d>)", uid, section, off, n)
	_, err = s.ExecIn(ctx, mbox, cmd, func(r *upstream.Response) {
		if body, ok, _ := upstream.FetchBody(r, uid); ok {
			data, found = body, true
		}
	})
	var se *upstream.StatusError
	if errors.As(err, &se) {
		return nil, false, fmt.Errorf("%w: %s", ErrBadURL, se.Head.Text)
	}
	if int64(len(data)) > n {
		return nil, false, fmt.Errorf("urlfetch: upstream sent %d bytes for a chunk of %d", len(data), n)
	}
	return data, found, err
}

// Section reports whether sec (upper case) is a section-spec of RFC 3501
// 9: part numbers ("1.2.3"), optionally followed by HEADER, TEXT, MIME
// (after a part number), or HEADER.FIELDS[.NOT] with a list of header
// field names; or "" for the whole message.
func Section(sec string) bool {
	if len(sec) > 1024 {
		return false
	}
	rest := sec
	parts := 0
	for rest != "" && isDigit(rest[0]) {
		end := 0
		for end < len(rest) && isDigit(rest[end]) {
			end++
		}
		if rest[0] == '0' || end > 10 {
			return false
		}
		parts++
		rest = rest[end:]
		if rest == "" {
			return true
		}
		if rest[0] != '.' {
			return false
		}
		rest = rest[1:]
		if rest == "" {
			return false
		}
	}
	switch {
	case rest == "" && parts == 0:
		return true
	case rest == "HEADER", rest == "TEXT":
		return true
	case rest == "MIME":
		return parts > 0
	}
	var list string
	switch {
	case strings.HasPrefix(rest, "HEADER.FIELDS.NOT "):
		list = rest[len("HEADER.FIELDS.NOT "):]
	case strings.HasPrefix(rest, "HEADER.FIELDS "):
		list = rest[len("HEADER.FIELDS "):]
	default:
		return false
	}
	if len(list) < 3 || list[0] != '(' || list[len(list)-1] != ')' {
		return false
	}
	for _, f := range strings.Split(list[1:len(list)-1], " ") {
		if f == "" {
			return false
		}
		for i := 0; i < len(f); i++ {
			// RFC 5322 ftext: printable ASCII but ":"; also no IMAP
			// specials that would end an atom.
			if c := f[i]; c <= ' ' || c >= 0x7f || strings.IndexByte(":()[]{\"\\%*", c) >= 0 {
				return false
			}
		}
	}
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
