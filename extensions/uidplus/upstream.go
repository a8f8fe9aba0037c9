package uidplus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/proxy"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// maxCandidates bounds the messages fetched to tell ours from others'
// added concurrently: past it the code is omitted rather than fetching a
// burst of deliveries.
const maxCandidates = 200

// maxCopied bounds the messages of a COPY whose COPYUID the proxy finds:
// their signatures and the candidates' are fetched and held in memory.
// A larger COPY goes upstream without the code.
const maxCopied = 10000

// mailboxArg writes a mailbox name for a command line of the proxy's own
// (Session.Exec takes no literals); ok is false for a name that needs one.
func mailboxArg(name string) (string, bool) {
	if !imapcodec.CanQuote(name) {
		return "", false
	}
	return string(imapcodec.AppendString(nil, name, false)), true
}

// uidStatus is what STATUS says of a mailbox's UIDs.
type uidStatus struct{ validity, next uint32 }

// status reads a mailbox's UIDVALIDITY and UIDNEXT.
func status(ctx context.Context, s *proxy.Session, mailbox string) (uidStatus, error) {
	arg, ok := mailboxArg(mailbox)
	if !ok {
		return uidStatus{}, errors.New("mailbox name needs a literal")
	}
	var st uidStatus
	_, err := s.Exec(ctx, "STATUS "+arg+" (UIDNEXT UIDVALIDITY)", func(r *upstream.Response) {
		if n := upstream.StatusNumbers(r); n != nil {
			st.next, st.validity = n["UIDNEXT"], n["UIDVALIDITY"]
		}
	})
	if err != nil {
		return uidStatus{}, err
	}
	if st.next == 0 || st.validity == 0 {
		return uidStatus{}, errors.New("STATUS without UIDNEXT and UIDVALIDITY")
	}
	return st, nil
}

// existing returns the UIDs of the session's mailbox within set that
// exist now, ascending: what a COPY of them copies.
func existing(ctx context.Context, s *proxy.Session, set string) ([]uint32, error) {
	var uids []uint32
	_, err := s.Exec(ctx, "UID SEARCH UID "+set, func(r *upstream.Response) {
		if r.Head.Name != "SEARCH" || len(r.Segments) != 1 {
			return
		}
		f := strings.Fields(string(r.Segments[0].Text))
		for _, w := range f[min(2, len(f)):] {
			if n, err := strconv.ParseUint(w, 10, 32); err == nil && n > 0 {
				uids = append(uids, uint32(n))
			}
		}
	})
	slices.Sort(uids)
	return slices.Compact(uids), err
}

// sig is what tells a message from others without reading it whole.
type sig struct {
	uid       uint32
	size      int64
	date      string // INTERNALDATE as the upstream wrote it
	messageID string // "" when the message has none
}

// sigItems are the FETCH items of a sig.
const sigItems = "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"

// fetchSigs fetches the sigs of the messages of set, in the session's
// mailbox (mailbox "") or in mailbox.
func fetchSigs(ctx context.Context, s *proxy.Session, mailbox, set string) (map[uint32]sig, error) {
	out := map[uint32]sig{}
	handle := func(r *upstream.Response) {
		if r.Head.Name != "FETCH" {
			return
		}
		if g, ok := parseSig(r.Segments); ok {
			out[g.uid] = g
		}
	}
	cmd := "UID FETCH " + set + " " + sigItems
	var err error
	if mailbox == "" {
		_, err = s.Exec(ctx, cmd, handle)
	} else {
		_, err = s.ExecIn(ctx, mailbox, cmd, handle)
	}
	return out, err
}

// parseSig reads a FETCH response to sigItems.
func parseSig(segs []imapcodec.Segment) (sig, bool) {
	vals, err := imapcodec.NewParser(segs, imapcodec.Limits{}).Values()
	if err != nil || len(vals) != 4 {
		return sig{}, false
	}
	l, ok := vals[3].(imapcodec.List)
	if !ok {
		return sig{}, false
	}
	var g sig
	have := 0
	for i := 0; i+1 < len(l); i += 2 {
		name, _ := l[i].(imapcodec.Atom)
		v, _ := imapcodec.AsString(l[i+1])
		switch n := strings.ToUpper(string(name)); {
		case n == "UID":
			u, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return sig{}, false
			}
			g.uid = uint32(u)
			have |= 1
		case n == "RFC822.SIZE":
			sz, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return sig{}, false
			}
			g.size = sz
			have |= 2
		case n == "INTERNALDATE":
			g.date = v
			have |= 4
		case strings.HasPrefix(n, "BODY[HEADER.FIELDS"):
			id, _, _ := messageID([]byte(v))
			g.messageID = id
			have |= 8
		}
	}
	return g, have == 15
}

// messageID reads the Message-ID from the start of a message (or from a
// header block alone). complete tells whether the header block ended
// within head: without it, a missing Message-ID may come later.
func messageID(head []byte) (id string, found, complete bool) {
	var field []byte
	flush := func() {
		if found || len(field) == 0 {
			return
		}
		name, value, ok := bytes.Cut(field, []byte(":"))
		if ok && strings.EqualFold(strings.TrimSpace(string(name)), "Message-ID") {
			id = strings.Join(strings.Fields(string(value)), " ")
			found = true
		}
	}
	for len(head) > 0 {
		i := bytes.IndexByte(head, '\n')
		if i < 0 {
			break // a partial line: the peek ended in it
		}
		line := bytes.TrimRight(head[:i], "\r")
		head = head[i+1:]
		if len(line) == 0 {
			flush()
			return id, found, true
		}
		if line[0] == ' ' || line[0] == '\t' {
			field = append(append(field, ' '), line...)
			continue
		}
		flush()
		field = append(field[:0], line...)
	}
	return id, found, false
}

// uidRange writes lo:hi (or lo).
func uidRange(lo, hi uint32) string {
	if lo == hi {
		return strconv.FormatUint(uint64(lo), 10)
	}
	return fmt.Sprintf("%d:%d", lo, hi)
}

// setOf writes UIDs, in the order given, as a set: runs of consecutive
// ascending UIDs become ranges (COPYUID's two sets must list the messages
// in corresponding order, RFC 4315 3).
func setOf(uids []uint32) string {
	var b strings.Builder
	for i := 0; i < len(uids); {
		j := i
		for j+1 < len(uids) && uids[j+1] == uids[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(uidRange(uids[i], uids[j]))
		i = j + 1
	}
	return b.String()
}
