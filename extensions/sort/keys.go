package sort

import (
	"encoding/binary"
	"errors"
	"net/mail"
	"strconv"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/internal/casemap"
)

// fetchItems are what a message's sort keys are made of: they never change
// for a UID, which is why the keys can be kept (cache.go).
// The References header, which ENVELOPE lacks, is for threading (RFC
// 5256's REFERENCES, extensions/thread).
const fetchItems = "(UID INTERNALDATE RFC822.SIZE ENVELOPE BODY.PEEK[HEADER.FIELDS (REFERENCES)])"

// Keys are one message's sort keys as RFC 5256 and RFC 5957 define them.
// The strings are decoded (encoded words to UTF-8) but not folded: the
// collation is applied when they are compared (Folded), so a stored
// record does not depend on it.
type Keys struct {
	Arrival int64 // INTERNALDATE, Unix seconds
	Date    int64 // sent date (section 2.2): Date header, else INTERNALDATE
	Size    uint64
	// Subject is the base subject (section 2.1).
	Subject string
	// From, To, Cc are the addr-mailbox of the first address of each.
	From, To, Cc string
	// DisplayFrom, DisplayTo are RFC 5957's display names.
	DisplayFrom, DisplayTo string
	// Reply says the subject is a reply or forward (RFC 5256 REFERENCES
	// step 6: its extraction removed "Re:", "Fwd:", "(fwd)"...).
	Reply bool
	// MessageID and InReplyTo are the msg-ids ("<a@b>") of the
	// Message-ID header and the first of In-Reply-To; References those of
	// the References header, space-separated. "" where there are none.
	MessageID, InReplyTo, References string
}

// keysOf reads the keys from a FETCH response to fetchItems.
func keysOf(segs []imapcodec.Segment) (uid uint32, k Keys, err error) {
	vals, err := imapcodec.NewParser(segs, imapcodec.Limits{}).Values()
	if err != nil {
		return 0, k, err
	}
	if len(vals) != 4 {
		return 0, k, errors.New("not a FETCH response")
	}
	l, ok := vals[3].(imapcodec.List)
	if !ok {
		return 0, k, errors.New("FETCH without data items")
	}
	var internal string
	var env imapcodec.List
	have := 0
	for i := 0; i+1 < len(l); i += 2 {
		name, _ := l[i].(imapcodec.Atom)
		n := strings.ToUpper(string(name))
		if strings.HasPrefix(n, "BODY[HEADER.FIELDS") {
			// Servers spell the field list as they like ("(References)").
			n = "BODY[HEADER.FIELDS (REFERENCES)]"
		}
		switch n {
		case "UID":
			v, _ := imapcodec.AsString(l[i+1])
			u, err := strconv.ParseUint(v, 10, 32)
			if err != nil || u == 0 {
				return 0, k, errors.New("bad UID")
			}
			uid = uint32(u)
			have |= 1
		case "RFC822.SIZE":
			v, _ := imapcodec.AsString(l[i+1])
			if k.Size, err = strconv.ParseUint(v, 10, 64); err != nil {
				return 0, k, errors.New("bad RFC822.SIZE")
			}
			have |= 2
		case "INTERNALDATE":
			internal, _ = imapcodec.AsString(l[i+1])
			have |= 4
		case "BODY[HEADER.FIELDS (REFERENCES)]":
			v, _ := imapcodec.AsString(l[i+1])
			k.References = referencesOf(v)
			have |= 16
		case "ENVELOPE":
			if env, ok = l[i+1].(imapcodec.List); !ok || len(env) < 7 {
				return 0, k, errors.New("bad ENVELOPE")
			}
			have |= 8
		}
	}
	if have != 31 {
		return 0, k, errors.New("FETCH response lacks sort items")
	}
	t, err := parseInternalDate(internal)
	if err != nil {
		return 0, k, err
	}
	k.Arrival = t.Unix()
	k.Date = k.Arrival
	if t, ok := sentDate(nstring(env[0])); ok {
		k.Date = t.Unix()
	}
	k.Subject, k.Reply = baseSubject(nstring(env[1]))
	if len(env) >= 10 {
		k.InReplyTo = firstMsgID(nstring(env[8]))
		k.MessageID = firstMsgID(nstring(env[9]))
	}
	k.From, k.DisplayFrom = firstAddress(env[2])
	k.To, k.DisplayTo = firstAddress(env[5])
	k.Cc, _ = firstAddress(env[6])
	return uid, k, nil
}

// obsZones are RFC 5322 4.3's obsolete zone names with their offsets.
// Go's parser would take any of them for UTC (a zone abbreviation it does
// not know gets offset zero), which would put a message from New York five
// hours early. The military zones, single letters but J, are taken as
// "-0000", as RFC 5322 says (their meaning was garbled in RFC 822); Go's
// parser refuses them.
var obsZones = map[string]string{
	"UT": "+0000", "GMT": "+0000", "EST": "-0500", "EDT": "-0400", "CST": "-0600",
	"CDT": "-0500", "MST": "-0700", "MDT": "-0600", "PST": "-0800", "PDT": "-0700",
}

// sentDate parses a Date header value (RFC 5256 2.2: the sent date, to
// be normalized to UTC); ok false when it does not parse. Beyond what
// net/mail parses it takes RFC 5322's forms that a receiver must: a
// leap second (3.3: 23:59:60, taken as 23:59:59 as Dovecot does, so that
// it ties with that second and not with the next), military zones, and
// two- and three-digit years (4.3: 50 to 99 are 1950 to 1999, 00 to 49
// are 2000 to 2049, and three digits add 1900). Dovecot 2.3's own SORT
// differs on two of these: it reads military zones with RFC 822's offsets
// (A is +0100) and two-digit years below 70 as 20xx; the proxy follows
// RFC 5322, which says how a receiver takes them.
func sentDate(d string) (time.Time, bool) {
	d = strings.TrimSpace(collapseSpace(d))
	if d == "" {
		return time.Time{}, false
	}
	if i := strings.IndexByte(d, '('); i > 0 { // a trailing comment
		d = strings.TrimSpace(d[:i])
	}
	f := strings.Fields(d)
	if z := strings.ToUpper(f[len(f)-1]); len(f) > 1 {
		if off, ok := obsZones[z]; ok {
			f[len(f)-1] = off
		} else if len(z) == 1 && 'A' <= z[0] && z[0] <= 'Z' && z[0] != 'J' {
			f[len(f)-1] = "-0000"
		}
	}
	for i, w := range f {
		if i+2 >= len(f) || !isMonth(w) {
			continue
		}
		// day month year time zone
		if y := f[i+1]; (len(y) == 2 || len(y) == 3) && allDigits(y) {
			n, _ := strconv.Atoi(y)
			switch {
			case len(y) == 3:
				n += 1900
			case n >= 50:
				n += 1900
			default:
				n += 2000
			}
			f[i+1] = strconv.Itoa(n)
		}
		if t := f[i+2]; strings.Count(t, ":") == 2 && strings.HasSuffix(t, ":60") {
			f[i+2] = t[:len(t)-2] + "59"
		}
		break
	}
	t, err := mail.ParseDate(strings.Join(f, " "))
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}

// isMonth reports whether w is an RFC 5322 month name.
func isMonth(w string) bool {
	switch strings.ToLower(w) {
	case "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec":
		return true
	}
	return false
}

func allDigits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// nstring returns the text of an nstring, "" for NIL, bounded by
// maxKeyString (so that what is stored sorts as what was fetched).
func nstring(v imapcodec.Value) string {
	if imapcodec.IsNil(v) {
		return ""
	}
	s, _ := imapcodec.AsString(v)
	return s[:min(len(s), maxKeyString)]
}

// parseInternalDate reads an INTERNALDATE ("17-Jul-1996 02:44:25 -0700";
// the day may be space-padded).
func parseInternalDate(s string) (time.Time, error) {
	t, err := time.Parse("_2-Jan-2006 15:04:05 -0700", s)
	if err != nil {
		return time.Time{}, errors.New("bad INTERNALDATE")
	}
	return t, nil
}

// firstAddress returns the addr-mailbox of the first address of an
// envelope address list (RFC 5256's FROM, TO, CC key; "" without one) and
// its display name for RFC 5957: the decoded addr-name, or, where that is
// empty, addr-mailbox@addr-host.
func firstAddress(v imapcodec.Value) (mailbox, display string) {
	l, ok := v.(imapcodec.List)
	if !ok || len(l) == 0 {
		return "", ""
	}
	a, ok := l[0].(imapcodec.List)
	if !ok || len(a) != 4 {
		return "", ""
	}
	name, mailbox, host := nstring(a[0]), nstring(a[2]), nstring(a[3])
	display = collapseSpace(decodeHeader(name))
	display = strings.TrimSpace(display)
	if display == "" {
		display = mailbox
		if host != "" {
			display += "@" + host
		}
	}
	return mailbox, display
}

// folded are a message's keys as a sort compares them: its strings in
// their i;unicode-casemap canonical form.
type folded struct {
	uid                    uint32
	arrival, date          int64
	size                   uint64
	subject, from, to, cc  string
	displayFrom, displayTo string
	reply                  bool
	// msgID, inReplyTo, references are Keys' (not folded: msg-ids
	// compare exactly).
	msgID, inReplyTo, references string
}

func fold(uid uint32, k *Keys) folded {
	return folded{
		uid: uid, arrival: k.Arrival, date: k.Date, size: k.Size,
		subject: casemap.Fold(k.Subject), from: casemap.Fold(k.From), to: casemap.Fold(k.To),
		cc: casemap.Fold(k.Cc), displayFrom: casemap.Fold(k.DisplayFrom), displayTo: casemap.Fold(k.DisplayTo),
		reply: k.Reply, msgID: k.MessageID, inReplyTo: k.InReplyTo, references: k.References,
	}
}

// Record encoding (version 3): a version byte, then varints of Arrival,
// Date (zig-zag) and Size, a byte of flags (1: Reply), then the nine
// strings, each a uvarint length and its bytes. About 80 to 250 bytes a
// message. Records of an older version (1: without the threading keys;
// 2: Date without RFC 5322's leap seconds, military zones and short
// years) fail to decode, and load deletes them: the message's keys are
// fetched again and stored in this version. A record of a newer version
// (newerRecord) is a newer node's of the same cluster, during a rolling
// upgrade: it is left as it is, neither deleted nor overwritten, and the
// message's keys are fetched and held in memory only; otherwise the two
// nodes would replace each other's records for as long as both ran. A
// new version must keep the version byte first.
const recordVersion = 3

// newerRecord reports whether a stored record is of a newer version than
// this code writes.
func newerRecord(b []byte) bool { return len(b) > 0 && b[0] > recordVersion }

// maxKeyString bounds each string of a record read back, so that a
// corrupt record cannot claim gigabytes.
const maxKeyString = 64 << 10

func (k *Keys) encode() []byte {
	b := make([]byte, 0, 40+len(k.MessageID)+len(k.InReplyTo)+len(k.References)+len(k.Subject)+len(k.From)+len(k.To)+len(k.Cc)+len(k.DisplayFrom)+len(k.DisplayTo))
	b = append(b, recordVersion)
	b = binary.AppendVarint(b, k.Arrival)
	b = binary.AppendVarint(b, k.Date)
	b = binary.AppendUvarint(b, k.Size)
	var flags byte
	if k.Reply {
		flags |= 1
	}
	b = append(b, flags)
	for _, s := range []string{k.Subject, k.From, k.To, k.Cc, k.DisplayFrom, k.DisplayTo, k.MessageID, k.InReplyTo, k.References} {
		s = s[:min(len(s), maxKeyString)] // nstring bounds them already
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

var errRecord = errors.New("sort: bad key record")

func decodeKeys(b []byte) (Keys, error) {
	var k Keys
	if len(b) == 0 || b[0] != recordVersion {
		return k, errRecord
	}
	b = b[1:]
	var n int
	if k.Arrival, n = binary.Varint(b); n <= 0 {
		return k, errRecord
	}
	b = b[n:]
	if k.Date, n = binary.Varint(b); n <= 0 {
		return k, errRecord
	}
	b = b[n:]
	if k.Size, n = binary.Uvarint(b); n <= 0 {
		return k, errRecord
	}
	b = b[n:]
	if len(b) == 0 || b[0] > 1 {
		return k, errRecord
	}
	k.Reply = b[0] == 1
	b = b[1:]
	for _, p := range []*string{&k.Subject, &k.From, &k.To, &k.Cc, &k.DisplayFrom, &k.DisplayTo, &k.MessageID, &k.InReplyTo, &k.References} {
		l, n := binary.Uvarint(b)
		if n <= 0 || l > maxKeyString || l > uint64(len(b)-n) {
			return k, errRecord
		}
		*p = string(b[n : n+int(l)])
		b = b[n+int(l):]
	}
	if len(b) != 0 {
		return k, errRecord
	}
	return k, nil
}

// msgIDs calls f with each msg-id ("<" ... ">", with an "@" and no white
// space, control character or further "<" inside) of a header value, in order, until f
// returns false. What is not a msg-id (comments, phrases, broken ids) is
// skipped, as RFC 5256 section 3 (REFERENCES step 1) asks: only valid
// ids link messages.
func msgIDs(v string, f func(id string) bool) {
	for {
		i := strings.IndexByte(v, '<')
		if i < 0 {
			return
		}
		v = v[i:]
		j := strings.IndexFunc(v[1:], func(r rune) bool { return r == '<' || r == '>' || r <= ' ' || r == 0x7f })
		if j < 0 {
			return
		}
		j++
		if v[j] != '>' {
			v = v[j:]
			continue
		}
		id := v[:j+1]
		v = v[j+1:]
		if at := strings.IndexByte(id, '@'); at > 1 && at < len(id)-2 {
			if !f(id) {
				return
			}
		}
	}
}

// firstMsgID returns the first msg-id of a header value, "" if none.
func firstMsgID(v string) string {
	var out string
	msgIDs(v, func(id string) bool { out = id; return false })
	return out
}

// referencesOf returns the msg-ids of a "References: ..." header field
// (as BODY[HEADER.FIELDS (REFERENCES)] gives it, unfolded or not),
// space-separated, bounded by maxKeyString: beyond it, the oldest ids
// are dropped, the newest (the parent's) kept.
func referencesOf(field string) string {
	if i := strings.IndexByte(field, ':'); i >= 0 {
		field = field[i+1:]
	}
	var ids []string
	n := 0
	msgIDs(field, func(id string) bool {
		ids = append(ids, id)
		n += len(id) + 1
		for n > maxKeyString && len(ids) > 0 {
			n -= len(ids[0]) + 1
			ids = ids[1:]
		}
		return true
	})
	return strings.Join(ids, " ")
}
