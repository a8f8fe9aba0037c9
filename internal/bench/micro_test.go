package bench

import (
	"io"
	"testing"

	"github.com/lemonproxy/lemonproxy/imapcodec"
	"github.com/lemonproxy/lemonproxy/syncstate"
)

// Micro-benchmarks of the hot paths every push and every relayed line goes
// through. The fan-out to 10,000 sessions is in proxy/bench_test.go (it
// needs the session's internals).

// bigMailbox returns a state with n messages (UIDs 1..n, a handful of flag
// sets, as in real mailboxes).
func bigMailbox(n int) *syncstate.Mailbox {
	st := syncstate.New(1)
	sets := [][]string{{`\Seen`}, {`\Seen`, `\Answered`}, nil, {`\Seen`, `\Flagged`}, {`$Junk`}}
	msgs := make([]syncstate.Message, n)
	for i := range msgs {
		msgs[i] = syncstate.Message{UID: uint32(i + 1), Flags: sets[i%len(sets)]}
	}
	st.Apply(syncstate.Changes{Upsert: msgs})
	return st
}

// BenchmarkChangesSince: what a session pays to learn what changed while
// it was away: 10 changes (8 flag changes, 2 expunges) in a mailbox of
// 100,000 messages.
func BenchmarkChangesSince(b *testing.B) {
	st := bigMailbox(100000)
	pos := st.HighestModSeq()
	for i := range 8 {
		st.Apply(syncstate.Changes{Upsert: []syncstate.Message{{UID: uint32(1000 + i*7919), Flags: []string{`\Seen`, `\Deleted`}}}})
	}
	st.Apply(syncstate.Changes{Expunged: []uint32{5, 50000}})
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		n = 0
		st.ChangesSince(pos, func(c syncstate.Change) { n++ })
	}
	if n != 10 {
		b.Fatalf("%d changes, want 10", n)
	}
}

// BenchmarkApply: the watcher recording one change in a mailbox of 100,000
// messages, as it does for every line the upstream pushes.
func BenchmarkApply(b *testing.B) {
	b.Run("flag-change", func(b *testing.B) {
		b.ReportAllocs()
		st := bigMailbox(100000)
		flags := [2][]string{{`\Seen`, `\Flagged`}, {`\Seen`}}
		i := 0
		for b.Loop() {
			i++
			st.Apply(syncstate.Changes{Upsert: []syncstate.Message{{UID: uint32(1 + i%100000), Flags: flags[i/100000%2]}}})
		}
	})
	b.Run("new-message", func(b *testing.B) {
		b.ReportAllocs()
		st := bigMailbox(100000)
		uid := uint32(100000)
		for b.Loop() {
			uid++
			st.Apply(syncstate.Changes{Upsert: []syncstate.Message{{UID: uid}}})
		}
	})
	b.Run("expunge", func(b *testing.B) {
		b.ReportAllocs()
		st := bigMailbox(100000)
		uid := uint32(100000)
		for b.Loop() {
			uid++
			b.StopTimer()
			st.Apply(syncstate.Changes{Upsert: []syncstate.Message{{UID: uid}}})
			b.StartTimer()
			st.Apply(syncstate.Changes{Expunged: []uint32{uid}})
		}
	})
}

// A typical FETCH response of a mobile client's header sync, and a typical
// command.
const (
	fetchLiteral  = "References: <abc123@example.com>\r\nList-ID: <x.example>\r\n\r\n"
	fetchResponse = `* 4711 FETCH (UID 98765 FLAGS (\Seen $NotJunk) MODSEQ (123456) INTERNALDATE "17-Nov-2026 09:12:45 +0100" RFC822.SIZE 48213 ENVELOPE ("Tue, 17 Nov 2026 09:12:40 +0100" "Re: quarterly figures, draft 3" (("Alice Example" NIL "alice" "example.org")) (("Alice Example" NIL "alice" "example.org")) (("Alice Example" NIL "alice" "example.org")) (("Bob Example" NIL "bob" "example.com") ("Carol" NIL "carol" "example.com")) NIL NIL "<abc123@example.com>" "<def456@example.org>") BODY[HEADER.FIELDS (REFERENCES LIST-ID)] {58}` + "\r\n" +
		fetchLiteral + ")\r\n"
	fetchCommand = "a0042 UID FETCH 1:* (UID FLAGS MODSEQ INTERNALDATE RFC822.SIZE ENVELOPE BODY.PEEK[HEADER.FIELDS (REFERENCES LIST-ID)]) (CHANGEDSINCE 123400)\r\n"
)

// repeatReader serves data over and over.
type repeatReader struct {
	data []byte
	off  int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := copy(p, r.data[r.off:])
	r.off = (r.off + n) % len(r.data)
	return n, nil
}

var _ io.Reader = (*repeatReader)(nil)

// BenchmarkReadFetchResponse: framing (ReadSegments: line, literal, rest
// of the line) and parsing (head, then every value) of one FETCH response.
func BenchmarkReadFetchResponse(b *testing.B) {
	if len(fetchLiteral) != 58 {
		b.Fatalf("fixture: literal of %d bytes announced as 58", len(fetchLiteral))
	}
	r := imapcodec.NewReader(&repeatReader{data: []byte(fetchResponse)}, imapcodec.Limits{})
	b.Run("read", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(fetchResponse)))
		for b.Loop() {
			if _, err := r.ReadSegments(nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("read+parse", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(fetchResponse)))
		for b.Loop() {
			segs, err := r.ReadSegments(nil)
			if err != nil {
				b.Fatal(err)
			}
			h, err := imapcodec.ParseResponseHead(segs[0].Text)
			if err != nil || h.Name != "FETCH" {
				b.Fatalf("%v %q", err, h.Name)
			}
			p := imapcodec.NewParser(segs, imapcodec.Limits{})
			for range 3 { // "*", number, "FETCH"
				p.Atom()
				p.SP()
			}
			v, err := p.Value()
			if l, ok := v.(imapcodec.List); err != nil || !ok || len(l) != 14 {
				b.Fatalf("%v: %d items", err, len(l))
			}
		}
	})
}

// BenchmarkReadCommand: reading and parsing one client command (tag, name,
// then its arguments as values), as the session loop does.
func BenchmarkReadCommand(b *testing.B) {
	r := imapcodec.NewReader(&repeatReader{data: []byte(fetchCommand)}, imapcodec.Limits{})
	b.ReportAllocs()
	b.SetBytes(int64(len(fetchCommand)))
	for b.Loop() {
		segs, err := r.ReadSegments(nil)
		if err != nil {
			b.Fatal(err)
		}
		cmd, err := imapcodec.ParseCommand(segs, imapcodec.Limits{})
		if err != nil || cmd.Name != "UID FETCH" {
			b.Fatalf("%v %q", err, cmd.Name)
		}
		vals, err := cmd.Args.Values()
		if err != nil || len(vals) != 3 {
			b.Fatalf("%v: %d values", err, len(vals))
		}
	}
}
