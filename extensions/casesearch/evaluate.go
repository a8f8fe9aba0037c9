package casesearch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/extensions/internal/bodypart"
	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// Sizes of the proxy's own commands.
const (
	// chunkUIDs is how many UIDs one UID FETCH or restricted UID SEARCH
	// names at most.
	chunkUIDs = 1000
	// messageChunk is the largest message read whole on a pooled
	// connection (one literal of Session.Exec, below the upstream's
	// inline literal limit); larger ones are streamed on a connection of
	// their own. It is also the most of a message's named header fields
	// that are read (see the package comment).
	messageChunk = 48 << 10
)

// errLimit says the evaluation would read more than Config.MaxBytes.
var errLimit = errors.New("casesearch: the search would read too much")

// result is what the atoms match among the candidates.
type result struct {
	// cands are the candidates, ascending: the messages the criteria
	// can match, whatever their substring keys match.
	cands []uint32
	// match[i][j] says whether atom i matches candidate j.
	match [][]bool
	// read is the bytes read from the upstream for it.
	read int64
}

// evaluator evaluates one command's atoms.
type evaluator struct {
	e    *Extension
	s    *proxy.Session
	prog *program
	res  *result
	sc   *scanner
	left int64 // bytes the evaluation may still read
}

// evaluate finds the candidates of prog (among within when it is not nil:
// a context's changed messages) and what each atom matches among them.
func (e *Extension) evaluate(ctx context.Context, s *proxy.Session, prog *program, within []uint32) (*result, error) {
	search, err := prog.candidates(s.UpstreamCaps())
	if err != nil {
		return nil, err
	}
	var cands []uint32
	if within == nil {
		cands, err = searchUIDs(ctx, s, search)
	} else {
		for len(within) > 0 && err == nil {
			n := min(len(within), chunkUIDs)
			var c []uint32
			c, err = searchUIDs(ctx, s, search+" UID "+string(imapcodec.AppendNumSet(nil, within[:n])))
			cands = append(cands, c...)
			within = within[n:]
		}
		slices.Sort(cands)
		cands = slices.Compact(cands)
	}
	if err != nil {
		return nil, err
	}
	ev := &evaluator{e: e, s: s, prog: prog, res: &result{cands: cands}, sc: newScanner(prog.atoms), left: e.cfg.MaxBytes}
	for range prog.atoms {
		ev.res.match = append(ev.res.match, make([]bool, len(cands)))
	}
	if len(cands) == 0 {
		return ev.res, nil
	}
	var headers, addresses, bodies bool
	for _, a := range prog.atoms {
		switch {
		case a.kind == kindHeader:
			headers = true
		case a.kind == kindAddress:
			addresses = true
		case a.needle != "":
			bodies = true
		}
	}
	switch {
	case bodies:
		err = ev.messages(ctx, addresses)
	case headers || addresses:
		err = ev.headers(ctx, headers, addresses)
	default: // only empty BODY and TEXT strings, which every message has
		ev.sc.reset()
		for j := range cands {
			ev.record(j, nil)
		}
	}
	ev.res.read = e.cfg.MaxBytes - ev.left
	e.read.Add(ev.res.read)
	return ev.res, err
}

// record notes what the scanner found in candidate j, for the atoms of
// the kinds named (all with nil).
func (ev *evaluator) record(j int, kinds []kind) {
	for i, a := range ev.prog.atoms {
		if kinds == nil || slices.Contains(kinds, a.kind) {
			ev.res.match[i][j] = ev.sc.found[i]
		}
	}
}

// index returns the candidate index of uid, or -1.
func (ev *evaluator) index(uid uint32) int {
	if j, ok := slices.BinarySearch(ev.res.cands, uid); ok {
		return j
	}
	return -1
}

// spend charges n bytes read, reporting whether they were within the
// limit.
func (ev *evaluator) spend(n int64) bool {
	ev.left -= n
	return ev.left >= 0
}

// headers evaluates header and address atoms from the candidates'
// ENVELOPE (addresses) and named fields only, BODY.PEEK[HEADER.FIELDS
// (...)], at most messageChunk bytes of them a message, on pooled
// connections.
func (ev *evaluator) headers(ctx context.Context, headers, addresses bool) error {
	var items []string
	if addresses {
		items = append(items, "ENVELOPE")
	}
	if headers {
		section := "HEADER.FIELDS (" + ev.fieldList() + ")"
		if section == "HEADER.FIELDS ()" {
			section = "HEADER"
		}
		items = append(items, fmt.Sprintf("BODY.PEEK[%s]<0.%d>", section, messageChunk))
	}
	return ev.each(ctx, ev.res.cands, strings.Join(items, " "), func(j int, l imapcodec.List) {
		ev.sc.reset()
		for i := 0; i+1 < len(l); i += 2 {
			n, _ := l[i].(imapcodec.Atom)
			switch name := strings.ToUpper(string(n)); {
			case name == "ENVELOPE":
				if env, ok := l[i+1].(imapcodec.List); ok {
					ev.sc.envelope(env)
				}
			case strings.HasPrefix(name, "BODY["):
				data, _ := l[i+1].(imapcodec.String) // NIL: no such section, nothing
				ev.sc.headerFields(data.Data)
			}
		}
		ev.record(j, nil)
	})
}

// fieldList returns the header fields the atoms name, for HEADER.FIELDS,
// or "" when one cannot be named there (then the whole header is read).
func (ev *evaluator) fieldList() string {
	var names []string
	for _, a := range ev.prog.atoms {
		if a.kind != kindHeader || slices.Contains(names, a.field) {
			continue
		}
		if !imapcodec.CanQuote(a.field) || a.field == "" {
			return ""
		}
		names = append(names, a.field)
	}
	var b []byte
	for i, n := range names {
		if i > 0 {
			b = append(b, ' ')
		}
		b = imapcodec.AppendQuoted(b, strings.ToUpper(n))
	}
	return string(b)
}

// messages evaluates the atoms on whole messages. The candidates' sizes
// come first (with their ENVELOPE for address atoms, evaluated there):
// beyond the limit nothing more is read. Messages smaller than
// messageChunk are read whole on pooled connections, the others streamed
// on a connection of their own.
func (ev *evaluator) messages(ctx context.Context, addresses bool) error {
	sizes := make([]int64, len(ev.res.cands))
	var total int64
	items := "RFC822.SIZE"
	if addresses {
		items += " ENVELOPE"
	}
	err := ev.each(ctx, ev.res.cands, items, func(j int, l imapcodec.List) {
		ev.sc.reset()
		for i := 0; i+1 < len(l); i += 2 {
			n, _ := l[i].(imapcodec.Atom)
			switch strings.ToUpper(string(n)) {
			case "RFC822.SIZE":
				v, _ := imapcodec.AsString(l[i+1])
				size, err := strconv.ParseInt(v, 10, 64)
				if err == nil && size >= 0 && sizes[j] == 0 {
					sizes[j] = size
					total += size
				}
			case "ENVELOPE":
				if env, ok := l[i+1].(imapcodec.List); ok {
					ev.sc.envelope(env)
				}
			}
		}
		ev.record(j, []kind{kindAddress})
	})
	if err != nil {
		return err
	}
	if total > ev.left {
		return errLimit
	}
	var small, large []uint32
	for j, u := range ev.res.cands {
		if sizes[j] < messageChunk {
			small = append(small, u)
		} else {
			large = append(large, u)
		}
	}
	item := fmt.Sprintf("BODY.PEEK[]<0.%d>", messageChunk)
	err = ev.each(ctx, small, item, func(j int, l imapcodec.List) {
		for i := 0; i+1 < len(l); i += 2 {
			if n, _ := l[i].(imapcodec.Atom); !strings.HasPrefix(strings.ToUpper(string(n)), "BODY[") {
				continue
			}
			data, _ := l[i+1].(imapcodec.String) // NIL: no such message, nothing
			if len(data.Data) >= messageChunk {  // larger than it said: streamed
				large = append(large, ev.res.cands[j])
				return
			}
			ev.scanMessage(j, bytes.NewReader(data.Data))
			return
		}
	})
	if err != nil || len(large) == 0 {
		return err
	}
	slices.Sort(large)
	return ev.stream(ctx, large)
}

// notAddress are the kinds a message's text decides.
var notAddress = []kind{kindHeader, kindBody, kindText}

// scanMessage scans candidate j's message for the atoms other than the
// address ones (which its ENVELOPE decided) and records what it found.
// A message the scanner cannot read to its end counts with what was
// found before.
func (ev *evaluator) scanMessage(j int, r io.Reader) {
	ev.sc.message(r)
	ev.record(j, notAddress)
}

// responseSize is what a response took on the wire, about: its lines
// and literals.
func responseSize(r *upstream.Response) int64 {
	var n int64
	for _, sg := range r.Segments {
		n += int64(len(sg.Text) + len(sg.Data) + 2)
	}
	return n
}

// each runs "UID FETCH uids (UID items)", chunkUIDs UIDs at a time, and
// hands the item list of each candidate's FETCH response to use. A
// message expunged meanwhile has no response, and matches nothing.
func (ev *evaluator) each(ctx context.Context, uids []uint32, items string, use func(j int, l imapcodec.List)) error {
	for len(uids) > 0 {
		n := min(len(uids), chunkUIDs)
		cmd := "UID FETCH " + string(imapcodec.AppendNumSet(nil, uids[:n])) + " (UID " + items + ")"
		uids = uids[n:]
		over := false
		_, err := ev.s.Exec(ctx, cmd, func(r *upstream.Response) {
			if over = over || !ev.spend(responseSize(r)); over || r.Head.Name != "FETCH" {
				return
			}
			uid, l, ok := bodypart.FetchList(r.Segments)
			if j := ev.index(uid); ok && j >= 0 {
				use(j, l)
			}
		})
		if err == nil && over {
			err = errLimit
		}
		var se *upstream.StatusError
		if errors.As(err, &se) && se.Head.Name == "NO" {
			// Some messages were expunged meanwhile (RFC 2180 4.1.2
			// lets a server answer NO): those answered are evaluated.
			err = nil
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

// searchUIDs runs a UID SEARCH and returns its UIDs, ascending.
func searchUIDs(ctx context.Context, s *proxy.Session, cmd string) ([]uint32, error) {
	var uids []uint32
	var bad error
	_, err := s.Exec(ctx, cmd, func(r *upstream.Response) {
		if r.Head.Name != "SEARCH" || len(r.Segments) != 1 {
			return
		}
		f := bytes.Fields(r.Segments[0].Text)
		for _, w := range f[min(2, len(f)):] {
			if w[0] == '(' {
				break // RFC 7162's (MODSEQ n), never asked for here
			}
			n, err := strconv.ParseUint(string(w), 10, 32)
			if err != nil || n == 0 {
				bad = fmt.Errorf("casesearch: bad UID %q in the upstream's SEARCH answer", w)
				return
			}
			uids = append(uids, uint32(n))
		}
	})
	if err == nil {
		err = bad
	}
	slices.Sort(uids)
	return slices.Compact(uids), err
}
