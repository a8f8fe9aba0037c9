package casesearch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/upstream"
)

// stream evaluates the atoms on the messages uids (ascending, candidates)
// read as they arrive: one connection of the account's own
// (Account.Dial, as extensions/internal/bodypart streams large parts),
// the mailbox examined, "UID FETCH uids (UID BODY.PEEK[])" chunkUIDs at a
// time, each message's literal scanned as it is read and never held.
// Session.Exec reads responses whole, and a pooled connection cannot be
// left in the middle of one when the limit or the deadline is reached;
// this one is closed.
func (ev *evaluator) stream(ctx context.Context, uids []uint32) error {
	conn, err := ev.s.UpstreamAccount().Dial(ctx)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if ok {
			conn.Logout()
		} else {
			conn.Close() // perhaps in the middle of a literal
		}
	}()
	if err := conn.Select(ctx, ev.s.Mailbox().Name(), true, nil); err != nil {
		return err
	}
	stop := conn.Watch(ctx) // the evaluation's deadline, and cancellation
	defer stop()
	for len(uids) > 0 {
		n := min(len(uids), chunkUIDs)
		if err := ev.streamChunk(conn, uids[:n]); err != nil {
			return err
		}
		uids = uids[n:]
	}
	ok = true
	return nil
}

// streamChunk runs one UID FETCH of the messages' bodies on conn.
func (ev *evaluator) streamChunk(conn *upstream.Conn, uids []uint32) error {
	tag := conn.NextTag()
	w := conn.Writer()
	fmt.Fprintf(w, "%s UID FETCH %s (UID BODY.PEEK[])\r\n", tag, imapcodec.AppendNumSet(nil, uids))
	if err := w.Flush(); err != nil {
		return err
	}
	r := conn.Reader()
	for {
		line, lit, err := r.ReadLine()
		if err != nil {
			return err
		}
		head, err := imapcodec.ParseResponseHead(line)
		if err != nil {
			return err
		}
		if head.Tag == tag {
			if head.Name != "OK" && head.Name != "NO" { // NO: some expunged meanwhile
				return &upstream.StatusError{Command: "UID FETCH", Head: head}
			}
			return nil
		}
		if lit == nil {
			continue
		}
		// A response with literals: ours, "* n FETCH (UID u BODY[] {size}"
		// (the UID may come after the literal). Its text is kept to find
		// the UID; the literal is scanned as it streams by.
		text := bytes.Clone(line[:lit.Start])
		scanned := false
		for lit != nil {
			if !scanned && head.Name == "FETCH" && bytes.HasSuffix(bytes.ToUpper(text), []byte("BODY[] ")) {
				if !ev.spend(lit.Size) {
					return errLimit
				}
				lr := &watchedReader{r: r.Literal()}
				ev.sc.message(lr)
				if lr.err != nil {
					return lr.err // the connection failed: what was scanned is incomplete
				}
				scanned = true
			}
			// The unread rest of the literal is skipped by ReadLine.
			if line, lit, err = r.ReadLine(); err != nil {
				return err
			}
			if lit != nil {
				text = append(text, line[:lit.Start]...)
			} else {
				text = append(text, line...)
			}
		}
		if scanned {
			if j := ev.index(fetchUID(text)); j >= 0 {
				ev.record(j, notAddress)
			}
		}
	}
}

// watchedReader remembers the error of the reader it reads, so that a
// failure of the connection is told from a message the scanner could not
// parse (the scanner gives up on those and reports what it found).
type watchedReader struct {
	r   io.Reader
	err error
}

func (w *watchedReader) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		w.err = err
	}
	return n, err
}

// fetchUID finds "UID n" in the text of a FETCH response (its literals
// left out), 0 when there is none.
func fetchUID(text []byte) uint32 {
	f := bytes.Fields(bytes.Trim(text, "()"))
	for i := 0; i+1 < len(f); i++ {
		if w := bytes.TrimLeft(f[i], "("); bytes.EqualFold(w, []byte("UID")) {
			n, err := strconv.ParseUint(string(bytes.TrimRight(f[i+1], ")")), 10, 32)
			if err == nil {
				return uint32(n)
			}
		}
	}
	return 0
}
