package convert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/emersion/go-imap/v2"
	"golang.org/x/text/encoding"

	"github.com/lemonproxy/lemonproxy/extensions/internal/bodypart"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
)

// serveConvert answers a CONVERT the upstream cannot (package comment).
func (e *Extension) serveConvert(ctx context.Context, x *proxy.Exchange, req *request) error {
	s := x.Session()
	if len(req.items) > e.maxParts {
		return x.Reply("NO", "MAXCONVERTPARTS "+strconv.Itoa(e.maxParts),
			fmt.Sprintf("At most %d body parts can be converted at once.", e.maxParts))
	}
	n, err := countKnown(s.Mailbox(), req.set)
	if err != nil {
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": "+err.Error()+".")
	}
	if n > e.maxMessages {
		return x.Reply("NO", "MAXCONVERTMESSAGES "+strconv.Itoa(e.maxMessages),
			fmt.Sprintf("At most %d messages can be converted at once.", e.maxMessages))
	}
	hdr, err := headerCharset(req)
	if err != nil {
		return x.Reply("BAD", "", "Error in IMAP command "+x.Name+": "+err.Error()+".")
	}
	if n == 0 {
		return x.Reply("OK", "", x.Name+" completed.")
	}
	msgs, err := bodypart.Structures(ctx, s, req.set)
	if err != nil {
		s.Logger().Warn("convert: reading BODYSTRUCTURE failed", "err", err)
		return x.Reply("NO", "TEMPFAIL", "Cannot read the messages from the upstream server.")
	}
	w := &writer{e: e, ctx: ctx, s: s, req: req, tag: x.Tag, uidForm: x.Name == "UID CONVERT", hdr: hdr}
	for _, m := range msgs {
		if err := w.message(m); err != nil {
			var ue *unsentError
			if errors.As(err, &ue) {
				s.Logger().Warn("convert: reading a part failed", "uid", m.UID, "err", ue.err)
				return x.Reply("NO", "TEMPFAIL", "Cannot read the message from the upstream server.")
			}
			return err
		}
	}
	if w.tried > 0 && w.ok == 0 {
		return x.Reply("NO", "", "All conversions failed.")
	}
	return x.Reply("OK", "", x.Name+" completed.")
}

// countKnown counts the messages of a UID set the client knows ("*" is
// the highest UID it knows).
func countKnown(mb *proxy.Mailbox, set string) (int, error) {
	uids, err := imapcodec.ParseUIDSet(set)
	if err != nil {
		return 0, err
	}
	view := mb.UIDs()
	if len(view) == 0 {
		return 0, nil
	}
	last := imap.UID(view[len(view)-1])
	for i, r := range uids {
		if r.Start == 0 {
			uids[i].Start = last
		}
		if r.Stop == 0 {
			uids[i].Stop = last
		}
	}
	n := 0
	for _, u := range view {
		if uids.Contains(imap.UID(u)) {
			n++
		}
	}
	return n, nil
}

// headerCharset checks the parameters of header conversions (RFC 5259 6:
// CHARSET is required, the default conversion only) and returns the target
// charset, nil when the request has no header items.
func headerCharset(req *request) (*headerConv, error) {
	has := false
	for _, it := range req.items {
		has = has || it.isHeader()
	}
	if !has {
		return nil, nil
	}
	var h headerConv
	for _, p := range req.params {
		switch strings.ToLower(p.name) {
		case "charset":
			e, ok := lookupCharset(p.value)
			if !ok {
				return nil, bad("unknown charset %s", p.value)
			}
			h.dst, h.name = e, p.value
		case "unknown-character-replacement":
		default:
			return nil, bad("%s does not apply to a header conversion", p.name)
		}
	}
	if h.dst == nil {
		return nil, bad("CHARSET is required to convert a header")
	}
	return &h, nil
}

// headerConv is the target of header conversions.
type headerConv struct {
	dst  encoding.Encoding
	name string
}

// writer writes the CONVERTED responses of one command.
type writer struct {
	e       *Extension
	ctx     context.Context
	s       *proxy.Session
	req     *request
	tag     string
	uidForm bool
	hdr     *headerConv
	// tried and ok count the conversions asked and those that succeeded.
	tried, ok int
}

// unsentError is a failure of the upstream before anything of a message's
// response was written: the client can still be answered NO.
type unsentError struct{ err error }

func (e *unsentError) Error() string { return "convert: " + e.err.Error() }
func (e *unsentError) Unwrap() error { return e.err }

// message writes one CONVERTED response.
func (w *writer) message(m bodypart.Message) error {
	s := w.s
	b := fmt.Appendf(nil, "* %d CONVERTED (TAG ", m.Seq)
	b = imapcodec.AppendQuoted(b, w.tag)
	b = append(b, ") ("...)
	first := true
	if w.uidForm || w.req.uid {
		b = fmt.Appendf(b, "UID %d", m.UID)
		first = false
	}
	started := false
	failed := func(err error) error {
		if started {
			return fmt.Errorf("convert: %w", err)
		}
		return &unsentError{err}
	}
	plans := map[string]*plan{}
	var sources []*bodypart.Source
	defer func() {
		for _, src := range sources {
			src.Close()
		}
	}()
	mb := s.Mailbox()
	for _, it := range w.req.items {
		if !first {
			b = append(b, ' ')
		}
		first = false
		b = append(b, it.respName()...)
		b = append(b, ' ')
		if it.isHeader() {
			w.tried++
			data, found, err := w.header(m, it)
			if err != nil {
				return failed(err)
			}
			if !found {
				b = append(b, "NIL"...)
				continue
			}
			w.ok++
			b = imapcodec.LiteralHeader{Size: int64(len(data))}.Format(b)
			b = append(append(b, '\r', '\n'), data...)
			continue
		}
		w.tried++
		p := plans[it.section]
		if p == nil {
			p = makePlan(m.BS, it.section, w.req)
			plans[it.section] = p
		}
		if p.err != nil {
			b = p.err.appendTo(b)
			continue
		}
		if it.kind == kindAvailable {
			w.ok++
			b = append(b, p.available()...)
			continue
		}
		var lines int64
		src := bodypart.NewSource(w.ctx, s, m.UID, p.part, w.e.chunk)
		src.Convert = p.converter(&lines)
		sources = append(sources, src)
		key := sizeKey{s.Account(), mb.Name(), mb.State().UIDValidity(), m.UID, it.section, p.key}
		inf, data, err := w.e.measure(key, src, &lines)
		if err != nil {
			return failed(err)
		}
		if inf.unrepresentable {
			b = p.failed().appendTo(b)
			continue
		}
		w.ok++
		switch it.kind {
		case kindSize:
			b = appendInt(b, inf.size)
			continue
		case kindStructure:
			b = append(b, p.structure(inf.size, inf.lines, inf.nul)...)
			continue
		}
		off, n := int64(0), inf.size
		if it.partial {
			off = min(it.off, inf.size)
			n = min(it.length, inf.size-off)
		}
		if data != nil {
			data = data[off : off+n]
			b = imapcodec.LiteralHeader{Size: n, Binary: bytes.IndexByte(data, 0) >= 0}.Format(b)
			b = append(append(b, '\r', '\n'), data...)
			continue
		}
		// The second pass is opened before anything is sent, so that a
		// failure to open it can still be answered NO.
		r, err := src.Decoded()
		if err != nil {
			return failed(err)
		}
		b = imapcodec.LiteralHeader{Size: n, Binary: inf.nul}.Format(b)
		b = append(b, '\r', '\n')
		started = true
		if err := s.Write(b); err != nil {
			return err
		}
		b = b[:0]
		if _, err := io.CopyN(io.Discard, r, off); err != nil {
			return fmt.Errorf("convert: upstream data changed between passes: %w", err)
		}
		if _, err := io.CopyN(bodypart.SessionWriter{S: s}, r, n); err != nil {
			return fmt.Errorf("convert: streaming a part: %w", err)
		}
		src.Close()
	}
	b = append(b, ")\r\n"...)
	return s.Write(b)
}

// measure returns what a conversion of a section gives: its size, NUL and
// lines, from the cache or by a pass over it, and the data itself when it
// fits in memory (nil otherwise, and when cached).
func (e *Extension) measure(key sizeKey, src *bodypart.Source, lines *int64) (info, []byte, error) {
	data, inMemory, err := src.Small()
	if errors.Is(err, errUnrepresentable) {
		inf := info{unrepresentable: true}
		e.sizes.Add(key, inf)
		return inf, nil, nil
	}
	if err != nil {
		return info{}, nil, err
	}
	if inMemory {
		inf := info{size: int64(len(data)), lines: lineCount(*lines, data), nul: bytes.IndexByte(data, 0) >= 0}
		e.sizes.Add(key, inf)
		return inf, data, nil
	}
	if inf, ok := e.sizes.Get(key); ok {
		return inf, nil, nil
	}
	r, err := src.Decoded()
	if err != nil {
		return info{}, nil, err
	}
	var c counter
	_, err = io.Copy(&c, r)
	src.Close()
	if errors.Is(err, errUnrepresentable) {
		inf := info{unrepresentable: true}
		e.sizes.Add(key, inf)
		return inf, nil, nil
	}
	if err != nil {
		return info{}, nil, err
	}
	inf := info{size: c.n, nul: c.nul, lines: lineCount(*lines, c.last)}
	e.sizes.Add(key, inf)
	return inf, nil, nil
}

// lineCount is a text's number of lines (RFC 3501 body-fld-lines): its
// line feeds, and one more for a last line without one. tail is the
// data's end.
func lineCount(lf int64, tail []byte) int64 {
	if len(tail) > 0 && tail[len(tail)-1] != '\n' {
		return lf + 1
	}
	return lf
}

// counter counts bytes, notes a NUL and keeps the last byte.
type counter struct {
	n    int64
	nul  bool
	last []byte
}

func (c *counter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	c.nul = c.nul || bytes.IndexByte(p, 0) >= 0
	if len(p) > 0 {
		c.last = []byte{p[len(p)-1]}
	}
	return len(p), nil
}

// header answers BODY[HEADER], BODY[n.HEADER] or BODY[n.MIME] with its
// encoded-words converted; found is false when the message has no such
// section. A header longer than a chunk is not converted: it is answered
// NIL, as a header the proxy cannot read whole.
func (w *writer) header(m bodypart.Message, it item) (data []byte, found bool, err error) {
	section := "HEADER"
	switch {
	case it.kind == kindMIME:
		if p := bodypart.Resolve(m.BS, it.section); !p.Found {
			return nil, false, nil
		}
		section = it.section + ".MIME"
	case it.section != "":
		p := bodypart.Resolve(m.BS, it.section)
		if !p.Found || p.Body == nil || bodypart.IsLeaf(p.Body) {
			return nil, false, nil
		}
		section = it.section + ".HEADER"
	}
	raw, err := bodypart.ReadSection(w.ctx, w.s, m.UID, section, w.e.chunk)
	if err != nil {
		return nil, false, err
	}
	if len(raw) >= w.e.chunk {
		return nil, false, nil
	}
	return convertHeader(raw, w.hdr.dst, w.hdr.name), true, nil
}
