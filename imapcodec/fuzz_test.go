package imapcodec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"regexp"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// Seed corpora live in testdata/fuzz/<FuzzName>/. Run a target with e.g.
//
//	go test ./imapcodec/ -run XXX -fuzz FuzzReader -fuzztime 60s

// ---------------------------------------------------------------------------
// FuzzReader

// fuzzReaderLimits derives small limits from the fuzzer's mode byte.
//
//	bits 0-4: MaxLine = 8 + n
//	bit 5:    MaxLiteral = 1<<40 instead of 64 (huge announced literals
//	          must be streamed, never allocated)
//	bits 6-7: what to do with literals (see FuzzReader)
func fuzzReaderLimits(mode byte) Limits {
	lim := Limits{MaxLine: 8 + int(mode&31), MaxLiteral: 64, MaxInlineLiteral: 16, MaxDepth: 4}
	if mode&32 != 0 {
		lim.MaxLiteral = 1 << 40
	}
	return lim
}

// readerModel is an independent, straightforward model of Reader over an
// in-memory stream.
type readerModel struct {
	data   []byte
	pos    int
	remain int64
	lim    Limits
}

var literalHeaderRE = regexp.MustCompile(`(~?)\{([0-9]+)(\+?)\}$`)

// readLine returns what ReadLine must return; fatal reports that the
// Reader cannot be used any further.
func (m *readerModel) readLine() (line []byte, lit *LiteralHeader, err error, fatal bool) {
	if m.remain > 0 {
		if int64(len(m.data)-m.pos) < m.remain {
			m.pos = len(m.data)
			return nil, nil, io.ErrUnexpectedEOF, true
		}
		m.pos += int(m.remain)
		m.remain = 0
	}
	if m.pos == len(m.data) {
		return nil, nil, io.EOF, true
	}
	rest := m.data[m.pos:]
	i := bytes.IndexByte(rest, '\n')
	if i < 0 {
		if len(rest) > m.lim.MaxLine+2 {
			return nil, nil, ErrLineTooLong, true
		}
		return nil, nil, io.ErrUnexpectedEOF, true
	}
	if i+1 > m.lim.MaxLine+2 {
		return nil, nil, ErrLineTooLong, true
	}
	line = rest[:i]
	m.pos += i + 1
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) > m.lim.MaxLine {
		return nil, nil, ErrLineTooLong, true
	}
	sm := literalHeaderRE.FindSubmatchIndex(line)
	if sm == nil {
		return line, nil, nil, false
	}
	digits := string(line[sm[4]:sm[5]])
	if len(digits) > 18 {
		return line, nil, ErrLiteralTooLarge, false
	}
	size, _ := strconv.ParseInt(digits, 10, 64)
	h := &LiteralHeader{Size: size, Binary: sm[3] > sm[2], NonSync: sm[7] > sm[6], Start: sm[0]}
	m.remain = size
	if size > m.lim.MaxLiteral {
		// Refused but pending: the next ReadLine skips its bytes.
		return line, h, ErrLiteralTooLarge, false
	}
	return line, h, nil, false
}

// readLiteral returns the next (at most) n literal bytes and whether the
// stream ended before them.
func (m *readerModel) readLiteral(n int64) ([]byte, bool) {
	n = min(n, m.remain)
	avail := min(n, int64(len(m.data)-m.pos))
	b := m.data[m.pos : m.pos+int(avail)]
	m.pos += int(avail)
	m.remain -= avail
	return b, avail < n
}

func heapAllocBytes() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func isReaderError(err error) bool {
	return err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, ErrLineTooLong) || errors.Is(err, ErrLiteralTooLarge)
}

func sameErr(got, want error) bool {
	if want == nil || got == nil {
		return got == want
	}
	if want == io.EOF {
		return got == io.EOF // a clean EOF is never wrapped
	}
	return errors.Is(got, want)
}

func sameLit(a, b *LiteralHeader) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

// FuzzReader feeds arbitrary bytes through ReadLine, Literal and
// ReadSegments with small limits and checks the results against a model:
// no panics, only the expected kinds of error, limits respected, and
// allocation independent of announced literal sizes.
//
// The two top bits of mode choose what happens to literals: 0 leaves them
// to be skipped by the next ReadLine, 1 streams them through Literal in
// small reads, 2 reads half and skips the rest, 3 reads whole commands with
// ReadSegments.
func FuzzReader(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, mode byte) {
		lim := fuzzReaderLimits(mode)
		// Everything the Reader keeps is bounded by the limits and the
		// input; nothing depends on announced literal sizes. The heap
		// counter is process-wide and the fuzzing engine allocates too,
		// so the bound only has to hold for one of a few identical runs.
		// The counter also takes in small objects a span at a time, when
		// a P's cached span of a size class is replaced, so a run may be
		// charged for objects allocated before it: 16 KiB of slack (a CI
		// run under -race was charged 81,760 bytes against 80,128 in all
		// three runs). A buffer sized by an announced literal (up to
		// 1 TiB allowed with mode bit 5) would cost far more.
		bound := uint64(64<<10 + 16<<10 + 256*len(data))
		var allocated uint64
		for range 3 {
			var excluded uint64
			before := heapAllocBytes()
			if mode>>6 == 3 {
				fuzzReadSegments(t, data, lim, &excluded)
			} else {
				fuzzReadLines(t, data, lim, mode>>6)
			}
			if allocated = heapAllocBytes() - before - excluded; allocated <= bound {
				return
			}
		}
		t.Fatalf("allocated %d bytes for %d bytes of input (bound %d)", allocated, len(data), bound)
	})
}

func fuzzReadLines(t *testing.T, data []byte, lim Limits, litMode byte) {
	r := NewReader(bytes.NewReader(data), lim)
	m := &readerModel{data: data, lim: lim.WithDefaults()}
	buf := make([]byte, 7)
	for step := 0; ; step++ {
		line, lit, err := r.ReadLine()
		wline, wlit, werr, fatal := m.readLine()
		if err != nil && !isReaderError(err) {
			t.Fatalf("step %d: unexpected kind of error %v", step, err)
		}
		if !sameErr(err, werr) {
			t.Fatalf("step %d: err %v, model %v", step, err, werr)
		}
		if fatal {
			return
		}
		if !bytes.Equal(line, wline) || !sameLit(lit, wlit) {
			t.Fatalf("step %d: line %q lit %+v; model %q lit %+v", step, line, lit, wline, wlit)
		}
		if len(line) > lim.MaxLine {
			t.Fatalf("step %d: %d-byte line exceeds MaxLine %d", step, len(line), lim.MaxLine)
		}
		if r.LiteralRemaining() != m.remain {
			t.Fatalf("step %d: LiteralRemaining %d, model %d", step, r.LiteralRemaining(), m.remain)
		}
		if lit == nil || err != nil {
			continue
		}
		if lit.Size > lim.MaxLiteral || lit.Start < 0 || lit.Start >= len(line) {
			t.Fatalf("step %d: bad literal header %+v for %q", step, *lit, line)
		}
		var want int64
		switch litMode {
		case 1:
			want = lit.Size
		case 2:
			want = lit.Size / 2
		}
		var got []byte
		var lerr error
		for int64(len(got)) < want && lerr == nil {
			var n int
			n, lerr = r.Literal().Read(buf[:min(int64(len(buf)), want-int64(len(got)))])
			got = append(got, buf[:n]...)
		}
		wdata, short := m.readLiteral(want)
		if !bytes.Equal(got, wdata) {
			t.Fatalf("step %d: literal %q, model %q", step, got, wdata)
		}
		if short != errors.Is(lerr, io.ErrUnexpectedEOF) || (lerr != nil && !short) {
			t.Fatalf("step %d: literal read error %v, model short %v", step, lerr, short)
		}
		if short {
			return
		}
		if litMode == 1 {
			if n, err := r.Literal().Read(buf); n != 0 || err != io.EOF {
				t.Fatalf("step %d: read past literal: %d, %v", step, n, err)
			}
		}
	}
}

func fuzzReadSegments(t *testing.T, data []byte, lim Limits, excluded *uint64) {
	r := NewReader(bytes.NewReader(data), lim)
	m := &readerModel{data: data, lim: lim.WithDefaults()}
	for cmd := 0; ; cmd++ {
		var conts []LiteralHeader
		segs, err := r.ReadSegments(func(h LiteralHeader) error {
			if h.NonSync {
				t.Fatalf("continuation requested for %+v", h)
			}
			conts = append(conts, h)
			return nil
		})
		if err != nil && !isReaderError(err) {
			t.Fatalf("command %d: unexpected kind of error %v", cmd, err)
		}
		// The model of ReadSegments.
		var wsegs []Segment
		var wconts []LiteralHeader
		var werr error
		total := 0
		for {
			line, lit, err, _ := m.readLine()
			if err != nil {
				werr = err
				break
			}
			total += len(line)
			if total > lim.MaxLine*4 {
				werr = ErrLineTooLong
				break
			}
			if lit == nil {
				wsegs = append(wsegs, Segment{Text: line})
				break
			}
			wsegs = append(wsegs, Segment{Text: line[:lit.Start], Literal: lit})
			if lit.Size > lim.MaxInlineLiteral {
				werr = ErrLiteralTooLarge
				break
			}
			if !lit.NonSync {
				wconts = append(wconts, *lit)
			}
			d, short := m.readLiteral(lit.Size)
			if short {
				werr = io.ErrUnexpectedEOF
				break
			}
			wsegs[len(wsegs)-1].Data = d
		}
		if !sameErr(err, werr) {
			t.Fatalf("command %d: err %v, model %v", cmd, err, werr)
		}
		if !segmentsEqualLoose(segs, wsegs) {
			t.Fatalf("command %d: segments\n%s\nmodel\n%s", cmd, fmtSegs(segs), fmtSegs(wsegs))
		}
		if fmt.Sprint(conts) != fmt.Sprint(wconts) {
			t.Fatalf("command %d: continuations %v, model %v", cmd, conts, wconts)
		}
		text := 0
		for _, s := range segs {
			text += len(s.Text)
			if int64(len(s.Data)) > lim.MaxInlineLiteral {
				t.Fatalf("command %d: %d bytes of literal read inline", cmd, len(s.Data))
			}
		}
		if text > lim.MaxLine*4 {
			t.Fatalf("command %d: %d bytes of text", cmd, text)
		}
		if err != nil {
			if errors.Is(err, ErrLiteralTooLarge) {
				continue // the literal was refused; the stream goes on
			}
			return
		}
		// A complete command survives AppendSegments. (This check's
		// own Reader is not counted against the allocation bound.)
		before := heapAllocBytes()
		again, err := NewReader(bytes.NewReader(AppendSegments(nil, segs)), lim).ReadSegments(nil)
		if err != nil || !segmentsEqualLoose(again, segs) {
			t.Fatalf("command %d: AppendSegments round trip: %v\n%s\nwant\n%s", cmd, err, fmtSegs(again), fmtSegs(segs))
		}
		*excluded += heapAllocBytes() - before
	}
}

// segmentsEqualLoose is segmentsEqual without distinguishing nil and empty
// literal data.
func segmentsEqualLoose(a, b []Segment) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i].Text, b[i].Text) || !bytes.Equal(a[i].Data, b[i].Data) || !sameLit(a[i].Literal, b[i].Literal) {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------------------
// FuzzParseCommand

var fuzzCommandLimits = Limits{MaxLine: 1024, MaxLiteral: 1 << 20, MaxInlineLiteral: 1024, MaxDepth: 8}

// FuzzParseCommand reads commands with ReadSegments, parses them with
// ParseCommand and Values, writes the values back with AppendValue and
// checks that they parse to the same command.
func FuzzParseCommand(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := fuzzCommandLimits
		r := NewReader(bytes.NewReader(data), lim)
		for n := 0; n < 8; n++ {
			segs, err := r.ReadSegments(nil)
			if err != nil {
				if !isReaderError(err) {
					t.Fatalf("ReadSegments: unexpected kind of error %v", err)
				}
				return
			}
			if tag := ParseTag(segs[0].Text); len(tag) > 64 || strings.ContainsAny(tag, " +*%\\[(){\"") {
				t.Fatalf("ParseTag(%q) = %q", segs[0].Text, tag)
			}
			cmd, err := ParseCommand(segs, lim)
			if err != nil {
				if !errors.Is(err, ErrSyntax) {
					t.Fatalf("ParseCommand: unexpected kind of error %v", err)
				}
				continue
			}
			if cmd.Tag == "" || strings.ContainsAny(cmd.Tag, " +*%\\[(){\"") || cmd.Name == "" || cmd.Name != upperASCII(cmd.Name) {
				t.Fatalf("ParseCommand gave tag %q, name %q", cmd.Tag, cmd.Name)
			}
			if tag := ParseTag(segs[0].Text); tag != "" && tag != cmd.Tag {
				t.Fatalf("ParseTag %q, ParseCommand tag %q", tag, cmd.Tag)
			}
			args, err := cmd.Args.Values()
			if err != nil {
				if !errors.Is(err, ErrSyntax) && !errors.Is(err, ErrTooDeep) {
					t.Fatalf("Values: unexpected kind of error %v", err)
				}
				continue
			}
			checkValueLimits(t, args, lim, 1)

			wire := []byte(cmd.Tag + " " + cmd.Name)
			for _, a := range args {
				wire = append(wire, ' ')
				wire = AppendValue(wire, a)
			}
			wire = append(wire, '\r', '\n')
			lim2 := Limits{MaxLine: 1 << 20, MaxInlineLiteral: 1 << 20, MaxDepth: lim.MaxDepth}
			segs2, err := NewReader(bytes.NewReader(wire), lim2).ReadSegments(nil)
			if err != nil {
				t.Fatalf("re-reading %q: %v", wire, err)
			}
			cmd2, err := ParseCommand(segs2, lim2)
			if err != nil {
				t.Fatalf("re-parsing %q: %v", wire, err)
			}
			if cmd2.Tag != cmd.Tag || cmd2.Name != cmd.Name {
				t.Fatalf("%q: tag %q name %q, was %q %q", wire, cmd2.Tag, cmd2.Name, cmd.Tag, cmd.Name)
			}
			args2, err := cmd2.Args.Values()
			if err != nil {
				t.Fatalf("re-parsing %q: %v", wire, err)
			}
			if !valuesRoundTripEqual(args, args2) {
				t.Fatalf("%q:\n got %s\nwant %s", wire, fmtValues(args2), fmtValues(args))
			}
		}
	})
}

func checkValueLimits(t *testing.T, vs []Value, lim Limits, depth int) {
	for _, v := range vs {
		switch v := v.(type) {
		case List:
			if depth > lim.MaxDepth {
				t.Fatalf("list at depth %d parsed with MaxDepth %d", depth, lim.MaxDepth)
			}
			checkValueLimits(t, v, lim, depth+1)
		case Atom:
			if v == "" {
				t.Fatal("empty atom")
			}
		case String:
			if v.Binary && !v.Literal {
				t.Fatal("binary quoted string")
			}
		default:
			t.Fatalf("unexpected value %#v", v)
		}
	}
}

// ---------------------------------------------------------------------------
// FuzzParseResponseHead

// FuzzParseResponseHead checks that ParseResponseHead never panics, fails
// only with ErrSyntax, and that what it returns is consistent with the line;
// status responses must survive AppendStatus.
func FuzzParseResponseHead(f *testing.F) {
	f.Fuzz(func(t *testing.T, line []byte) {
		h, err := ParseResponseHead(line)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("unexpected kind of error %v", err)
			}
			return
		}
		s := string(line)
		if h.Tag == "+" {
			if s[0] != '+' || h.Text != strings.TrimPrefix(s[1:], " ") || h.Name != "" || h.HasNum || h.Code != "" {
				t.Fatalf("continuation %q: %+v", s, h)
			}
			return
		}
		if h.Tag == "" || strings.Contains(h.Tag, " ") || !strings.HasPrefix(s, h.Tag+" ") || strings.HasPrefix(s, "+") {
			t.Fatalf("%q: tag %q", s, h.Tag)
		}
		rest := s[len(h.Tag)+1:]
		if h.HasNum {
			num, r, _ := strings.Cut(rest, " ")
			if n, err := strconv.ParseUint(num, 10, 32); h.Tag != "*" || err != nil || uint32(n) != h.Num {
				t.Fatalf("%q: number %d", s, h.Num)
			}
			rest = r
		} else if h.Num != 0 {
			t.Fatalf("%q: Num %d without HasNum", s, h.Num)
		}
		name, rest, _ := strings.Cut(rest, " ")
		if h.Name == "" || h.Name != upperASCII(name) {
			t.Fatalf("%q: name %q", s, h.Name)
		}
		if !h.IsStatus() || h.HasNum {
			if h.Text != rest || h.Code != "" || h.CodeArg != "" {
				t.Fatalf("%q: %+v", s, h)
			}
			return
		}
		if !strings.HasSuffix(rest, h.Text) || h.Code != upperASCII(h.Code) ||
			(h.Code != "" || h.CodeArg != "") && !strings.HasPrefix(rest, "[") ||
			upperASCII(rest[min(1, len(rest)):min(1+len(h.Code), len(rest))]) != h.Code {
			t.Fatalf("%q: %+v", s, h)
		}
		// Rebuild the line with AppendStatus (unless sanitizing would
		// change it, or an empty code would be taken for the text's).
		if strings.ContainsAny(s, "\r\n\x00") || h.Code == "" && h.CodeArg == "" && strings.HasPrefix(h.Text, "[") {
			return
		}
		code := h.Code
		if h.CodeArg != "" {
			code += " " + h.CodeArg
		}
		out := AppendStatus(nil, h.Tag, h.Name, code, h.Text)
		h2, err := ParseResponseHead(bytes.TrimSuffix(out, []byte("\r\n")))
		if err != nil || h2 != h {
			t.Fatalf("%q -> %+v -> %q -> %+v, %v", s, h, out, h2, err)
		}
	})
}

// ---------------------------------------------------------------------------
// FuzzParseNumSet

// FuzzParseNumSet checks ParseNumSet and ParseUIDSet: if a set parses, its
// String form parses to the same set, and membership agrees with a naive
// reading of the input.
func FuzzParseNumSet(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		set, err := ParseNumSet(s)
		uids, uerr := ParseUIDSet(s)
		if err != nil {
			if !errors.Is(err, ErrSyntax) || !errors.Is(uerr, ErrSyntax) || set != nil || uids != nil {
				t.Fatalf("%q: %v / %v", s, err, uerr)
			}
			return
		}
		if uerr != nil {
			t.Fatalf("%q: ParseNumSet ok, ParseUIDSet %v", s, uerr)
		}
		str := set.String()
		if uids.String() != str {
			t.Fatalf("%q: SeqSet %q, UIDSet %q", s, str, uids.String())
		}
		again, err := ParseNumSet(str)
		if err != nil || !equalRanges(again, set) || again.String() != str {
			t.Fatalf("%q -> %q -> %v (%q), %v", s, str, again, again.String(), err)
		}
		if len(str) > len(s) {
			t.Fatalf("%q: String() %q is longer than the input", s, str)
		}

		// Membership, against a naive reading of the input.
		type rng struct {
			lo, hi uint64 // hi == 1<<32 for "*" as an upper bound
			star   bool   // a lone "*"
		}
		var parts []rng
		probes := []uint32{1, 2, 3, 4, 5, 10, 100, 1<<32 - 1}
		num := func(x string) uint64 {
			if x == "*" {
				return 1 << 32
			}
			n, _ := strconv.ParseUint(x, 10, 32)
			if n > 1 {
				probes = append(probes, uint32(n-1))
			}
			probes = append(probes, uint32(n))
			if n < 1<<32-1 {
				probes = append(probes, uint32(n+1))
			}
			return n
		}
		for _, p := range strings.Split(s, ",") {
			a, b, isRange := strings.Cut(p, ":")
			if !isRange {
				b = a
			}
			lo, hi := num(a), num(b)
			if lo > hi {
				lo, hi = hi, lo
			}
			parts = append(parts, rng{lo, hi, lo == 1<<32})
		}
		for _, n := range probes {
			want := false
			for _, p := range parts {
				if !p.star && uint64(n) >= p.lo && uint64(n) <= p.hi {
					want = true
				}
			}
			if set.Contains(n) != want || uids.Contains(imap.UID(n)) != want {
				t.Fatalf("%q (%q): Contains(%d) = %v, want %v", s, str, n, set.Contains(n), want)
			}
		}
		wantDynamic := false
		for _, p := range parts {
			wantDynamic = wantDynamic || p.hi == 1<<32
		}
		if set.Dynamic() != wantDynamic {
			t.Fatalf("%q: Dynamic() = %v", s, set.Dynamic())
		}
	})
}

// FuzzAppendNumSet checks that the set written for any list of numbers
// parses back to exactly the numbers of the list.
func FuzzAppendNumSet(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 9})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 3, 0, 0, 0, 2})
	f.Fuzz(func(t *testing.T, raw []byte) {
		var nums []uint32
		want := map[uint32]bool{}
		for i := 0; i+4 <= len(raw) && len(nums) < 64; i += 4 {
			n := binary.BigEndian.Uint32(raw[i:])%1000 + 1
			if raw[i] == 0xff {
				n = 1<<32 - 1 - uint32(raw[i+3]%3)
			}
			nums = append(nums, n)
			want[n] = true
		}
		s := string(AppendNumSet(nil, nums))
		if len(nums) == 0 {
			if s != "" {
				t.Fatalf("no numbers: %q", s)
			}
			return
		}
		set, err := ParseNumSet(s)
		if err != nil {
			t.Fatalf("%v -> %q: %v", nums, s, err)
		}
		for n := range want {
			if !set.Contains(n) {
				t.Fatalf("%v -> %q: %d missing", nums, s, n)
			}
		}
		for _, r := range set {
			for n := uint64(r.Start); n <= uint64(r.Stop); n++ {
				if !want[uint32(n)] {
					t.Fatalf("%v -> %q: %d not in the list", nums, s, n)
				}
			}
		}
	})
}

// FuzzExpandNumSet checks ExpandNumSet against ParseNumSet: a set it
// expands has no "*", names the same numbers, and is never longer than
// the limit; it refuses only what ParseNumSet refuses, a "*", or a set
// over the limit.
func FuzzExpandNumSet(f *testing.F) {
	for _, s := range []string{"1", "3:5", "5:3,9", "1:*", "*", "4,4", "1:4294967295", ""} {
		f.Add(s, 16)
	}
	f.Fuzz(func(t *testing.T, s string, limit int) {
		limit = min(max(limit, 0), 1<<12)
		list, err := ExpandNumSet(s, limit)
		set, perr := ParseNumSet(s)
		if err != nil {
			if !errors.Is(err, ErrSyntax) || list != nil {
				t.Fatalf("%q: %v, %v", s, list, err)
			}
			if perr == nil && !set.Dynamic() {
				n := 0
				for part := range strings.SplitSeq(s, ",") {
					a, b, _ := strings.Cut(part, ":")
					if b == "" {
						b = a
					}
					x, _ := strconv.ParseUint(a, 10, 32)
					y, _ := strconv.ParseUint(b, 10, 32)
					n += int(max(x, y)-min(x, y)) + 1
				}
				if n <= limit {
					t.Fatalf("%q: refused (%v) a set of %d numbers within %d", s, err, n, limit)
				}
			}
			return
		}
		if perr != nil || set.Dynamic() || len(list) > limit {
			t.Fatalf("%q: expanded to %v, ParseNumSet %v (%v)", s, list, set, perr)
		}
		var again imap.SeqSet
		for _, n := range list {
			if !set.Contains(n) {
				t.Fatalf("%q: %d is not in the set", s, n)
			}
			again.AddNum(n)
		}
		if again.String() != set.String() {
			t.Fatalf("%q: expanded to %v (%q), want %q", s, list, again.String(), set.String())
		}
	})
}

// FuzzSearchNumbers: any response text parses without panic into sorted,
// distinct, non-zero numbers, and ALL's set of them reads back as them.
func FuzzSearchNumbers(f *testing.F) {
	for _, s := range []string{"* SEARCH", "* SEARCH 1 2 3", "* SEARCH 5 1 5 (MODSEQ 7)", "* SEARCH 4294967295", "* SEARCH 0", "* SEARCH  1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		nums, err := SearchNumbers([]byte(s))
		if err != nil {
			return
		}
		if !slices.IsSorted(nums) || len(slices.Compact(slices.Clone(nums))) != len(nums) || slices.Contains(nums, 0) {
			t.Fatalf("%q: %v", s, nums)
		}
		if len(nums) == 0 {
			return
		}
		set, err := ParseNumSet(string(AppendNumSet(nil, nums)))
		if err != nil {
			t.Fatal(err)
		}
		// Expanded here, not with set.Nums, whose counter wraps at
		// 4294967295 and never ends.
		var back []uint32
		for _, r := range set {
			for n := uint64(r.Start); n <= uint64(r.Stop) && len(back) <= len(nums); n++ {
				back = append(back, uint32(n))
			}
		}
		if !slices.Equal(back, nums) {
			t.Fatalf("%q: %v became %v", s, nums, back)
		}
	})
}
