package binary

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lemonproxy/lemonproxy/extensions/internal/bodypart"
	"github.com/lemonproxy/lemonproxy/extensions/internal/uidset"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// item is one BINARY fetch item.
type item struct {
	kind    string // "BINARY", "BINARY.PEEK" or "BINARY.SIZE"
	section string // "1.2", or "" for the whole message
	partial bool
	off     int64
	length  int64
}

var itemRE = regexp.MustCompile(`^(?i)(BINARY(?:\.PEEK|\.SIZE)?)\[([0-9.]*)\](?:<([0-9]+)\.([0-9]+)>)?$`)

// errBadItem is answered with BAD.
var errBadItem = errors.New("malformed BINARY item")

// parseItem reads a fetch item; ok is false for an item not of BINARY.
func parseItem(a string) (it item, ok bool, err error) {
	if !strings.HasPrefix(strings.ToUpper(a), "BINARY") {
		return item{}, false, nil
	}
	m := itemRE.FindStringSubmatch(a)
	if m == nil {
		return item{}, true, errBadItem
	}
	it = item{kind: strings.ToUpper(m[1]), section: m[2]}
	if it.section != "" {
		for _, n := range strings.Split(it.section, ".") {
			if v, err := strconv.ParseUint(n, 10, 32); err != nil || v == 0 {
				return item{}, true, errBadItem
			}
		}
	}
	if m[3] != "" {
		if it.kind == "BINARY.SIZE" {
			return item{}, true, errBadItem
		}
		off, err1 := strconv.ParseInt(m[3], 10, 64)
		n, err2 := strconv.ParseInt(m[4], 10, 64)
		if err1 != nil || err2 != nil || n == 0 {
			return item{}, true, errBadItem
		}
		it.partial, it.off, it.length = true, off, n
	}
	return it, true, nil
}

// respName is the item's name in the FETCH response (RFC 3516 4.3).
func (it item) respName() string {
	if it.kind == "BINARY.SIZE" {
		return "BINARY.SIZE[" + it.section + "]"
	}
	n := "BINARY[" + it.section + "]"
	if it.partial {
		n += "<" + strconv.FormatInt(it.off, 10) + ">"
	}
	return n
}

// serveFetch answers the BINARY items of a FETCH (package comment).
func (e *Extension) serveFetch(ctx context.Context, x *proxy.Exchange, next proxy.Next) error {
	s := x.Session()
	if len(x.Segments) != 1 {
		return next(ctx, x) // a literal in a FETCH: not ours to parse
	}
	vals, err := imapcodec.NewParser(x.Segments, imapcodec.Limits{}).Values()
	if err != nil || len(vals) < 5 {
		return next(ctx, x)
	}
	set, _ := imapcodec.AsString(vals[3])
	var all []imapcodec.Value
	switch v := vals[4].(type) {
	case imapcodec.List:
		all = v
	default:
		all = []imapcodec.Value{v}
	}
	var items []item
	var rest imapcodec.List
	seen := false
	for _, v := range all {
		a, isAtom := v.(imapcodec.Atom)
		if !isAtom {
			rest = append(rest, v)
			continue
		}
		it, ok, err := parseItem(string(a))
		if err != nil {
			return x.Reply("BAD", "", "Malformed BINARY fetch item.")
		}
		if !ok {
			rest = append(rest, v)
			continue
		}
		items = append(items, it)
		seen = seen || it.kind == "BINARY"
	}
	if len(items) == 0 {
		return next(ctx, x)
	}
	msgs, err := bodypart.Structures(ctx, s, set)
	if err != nil {
		return x.Reply("NO", "", "Cannot fetch: "+err.Error())
	}
	// Resolve every section first: an unknown encoding fails the command
	// before anything is sent.
	parts := make([][]bodypart.Part, len(msgs))
	for i, m := range msgs {
		for _, it := range items {
			p := bodypart.Resolve(m.BS, it.section)
			if p.Found && !bodypart.KnownCTE(p.Enc) {
				return x.Reply("NO", "UNKNOWN-CTE", "Cannot decode "+p.Enc+".")
			}
			parts[i] = append(parts[i], p)
		}
	}
	uidFetch := x.Name == "UID FETCH"
	for i, m := range msgs {
		if err := e.writeMessage(ctx, s, m, items, parts[i], uidFetch); err != nil {
			var ue *unsentError
			if errors.As(err, &ue) {
				// Nothing of this message's response was sent: the
				// client can be told, and the session goes on.
				s.Logger().Warn("binary: reading a part failed", "uid", m.UID, "err", ue.err)
				return x.Reply("NO", "", "Cannot read the message from the upstream server.")
			}
			return err
		}
	}
	mb := s.Mailbox()
	if seen && !mb.ReadOnly() && len(msgs) > 0 {
		uids := make([]uint32, len(msgs))
		for i, m := range msgs {
			uids[i] = m.UID
		}
		slices.Sort(uids)
		// In batches of short lines: a FETCH of 1:* names every message.
		for _, set := range uidset.Batches(uidset.Compact(mb.UIDs(), uids)) {
			if _, err := s.Exec(ctx, `UID STORE `+set+` +FLAGS.SILENT (\Seen)`, nil); err != nil {
				s.Logger().Warn("binary: setting \\Seen failed", "err", err)
				break
			}
		}
		mb.Sync(ctx, 5*time.Second)
	}
	if len(rest) == 0 {
		if !uidFetch && !s.Enabled("CONDSTORE") {
			return x.Reply("OK", "", "FETCH completed.")
		}
		rest = imapcodec.List{imapcodec.Atom("UID")}
	}
	line := fmt.Appendf(nil, "%s UID FETCH %s ", x.Tag, set)
	line = imapcodec.AppendValue(line, rest)
	for _, v := range vals[5:] {
		line = imapcodec.AppendValue(append(line, ' '), v)
	}
	x.Segments = []imapcodec.Segment{{Text: line}}
	return next(ctx, x)
}

// writeMessage writes one FETCH response with the message's BINARY items.
func (e *Extension) writeMessage(ctx context.Context, s *proxy.Session, m bodypart.Message, items []item, parts []bodypart.Part, uidFetch bool) error {
	b := fmt.Appendf(nil, "* %d FETCH (", m.Seq)
	if uidFetch {
		b = fmt.Appendf(b, "UID %d ", m.UID)
	}
	mb := s.Mailbox()
	started := false // part of the response has been written
	failed := func(err error) error {
		if started {
			return fmt.Errorf("binary: %w", err)
		}
		return &unsentError{err}
	}
	for i, it := range items {
		if i > 0 {
			b = append(b, ' ')
		}
		b = append(b, it.respName()...)
		b = append(b, ' ')
		p := parts[i]
		key := sizeKey{s.Account(), mb.Name(), mb.State().UIDValidity(), m.UID, it.section}
		if !p.Found {
			if it.kind == "BINARY.SIZE" {
				b = append(b, '0')
			} else {
				b = append(b, "NIL"...)
			}
			continue
		}
		src := bodypart.NewSource(ctx, s, m.UID, p, e.chunk)
		defer src.Close()
		if it.kind == "BINARY.SIZE" {
			info, err := e.size(key, src)
			if err != nil {
				return failed(err)
			}
			b = strconv.AppendInt(b, info.size, 10)
			continue
		}
		whole, inMemory, err := src.Small()
		if err != nil {
			return failed(err)
		}
		if inMemory {
			e.sizes.Add(key, sizeInfo{int64(len(whole)), bytes.IndexByte(whole, 0) >= 0})
			data := whole
			if it.partial {
				data = data[min(it.off, int64(len(data))):]
				data = data[:min(it.length, int64(len(data)))]
			}
			b = imapcodec.LiteralHeader{Size: int64(len(data)), Binary: bytes.IndexByte(data, 0) >= 0}.Format(b)
			b = append(b, '\r', '\n')
			b = append(b, data...)
			continue
		}
		info, err := e.size(key, src)
		if err != nil {
			return failed(err)
		}
		off, n := int64(0), info.size
		if it.partial {
			off = min(it.off, info.size)
			n = min(it.length, info.size-off)
		}
		// The NUL test is of the whole part: a partial range without one
		// is still sent as literal8, which RFC 3516 allows.
		// The second pass's stream is opened before anything is sent, so
		// that a failure to open it can still be answered NO.
		r, err := src.Decoded()
		if err != nil {
			return failed(err)
		}
		b = imapcodec.LiteralHeader{Size: n, Binary: info.hasNUL}.Format(b)
		b = append(b, '\r', '\n')
		started = true
		if err := s.Write(b); err != nil {
			return err
		}
		b = b[:0]
		if _, err := io.CopyN(io.Discard, r, off); err != nil {
			return fmt.Errorf("binary: upstream data changed between passes: %w", err)
		}
		if _, err := io.CopyN(bodypart.SessionWriter{S: s}, r, n); err != nil {
			return fmt.Errorf("binary: streaming a part: %w", err)
		}
		src.Close()
	}
	b = append(b, ")\r\n"...)
	return s.Write(b)
}

// unsentError is a failure to read a part from the upstream before
// anything of the message's FETCH response was written (writeMessage
// holds it until a streamed literal starts).
type unsentError struct{ err error }

func (e *unsentError) Error() string { return "binary: " + e.err.Error() }
func (e *unsentError) Unwrap() error { return e.err }

// size returns the decoded size of a section, from the cache or by a
// counting pass.
func (e *Extension) size(key sizeKey, src *bodypart.Source) (sizeInfo, error) {
	if info, ok := e.sizes.Get(key); ok {
		return info, nil
	}
	r, err := src.Decoded()
	if err != nil {
		return sizeInfo{}, err
	}
	var c counter
	_, err = io.Copy(&c, r)
	src.Close()
	if err != nil {
		return sizeInfo{}, err
	}
	info := sizeInfo{c.n, c.nul}
	e.sizes.Add(key, info)
	return info, nil
}

// counter counts bytes and notes a NUL.
type counter struct {
	n   int64
	nul bool
}

func (c *counter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	c.nul = c.nul || bytes.IndexByte(p, 0) >= 0
	return len(p), nil
}
