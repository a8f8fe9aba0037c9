package syncstate

import "encoding/binary"

// packed is an array of unsigned numbers stored in as few bytes each as
// the largest needs: 1, 2, 4 or 8. A state keeps two per message, aligned
// with its UIDs: the flag set's index (one byte while the mailbox has at
// most 256 distinct sets, as nearly every one has) and the mod-sequence's
// offset from the state's modBase (two bytes while the mailbox saw fewer
// than 65,536 changes, then four; eight only past four billion). A wider
// value widens the whole array once, in time linear in its length; values
// never need to narrow.
type packed struct {
	w int // bytes per value: 1, 2, 4 or 8
	b []byte
}

func width(v uint64) int {
	switch {
	case v <= 0xff:
		return 1
	case v <= 0xffff:
		return 2
	case v <= 0xffff_ffff:
		return 4
	}
	return 8
}

// makePacked returns n zeros, wide enough for values up to widest.
func makePacked(n int, widest uint64) packed {
	w := width(widest)
	return packed{w: w, b: make([]byte, n*w)}
}

func (p *packed) len() int {
	if p.w == 0 {
		return 0
	}
	return len(p.b) / p.w
}

func (p *packed) get(i int) uint64 {
	switch p.w {
	case 1:
		return uint64(p.b[i])
	case 2:
		return uint64(binary.LittleEndian.Uint16(p.b[2*i:]))
	case 4:
		return uint64(binary.LittleEndian.Uint32(p.b[4*i:]))
	}
	return binary.LittleEndian.Uint64(p.b[8*i:])
}

func (p *packed) set(i int, v uint64) {
	if w := width(v); w > p.w {
		p.widen(w)
	}
	p.put(i, v)
}

// put stores v, which fits the width.
func (p *packed) put(i int, v uint64) {
	switch p.w {
	case 1:
		p.b[i] = byte(v)
	case 2:
		binary.LittleEndian.PutUint16(p.b[2*i:], uint16(v))
	case 4:
		binary.LittleEndian.PutUint32(p.b[4*i:], uint32(v))
	default:
		binary.LittleEndian.PutUint64(p.b[8*i:], v)
	}
}

// grow makes room for n more values (see grow).
func (p *packed) grow(n int) { p.b = grow(p.b, n*p.w) }

func (p *packed) append(v uint64) {
	if w := width(v); w > p.w {
		p.widen(w)
	}
	switch p.w {
	case 1:
		p.b = append(p.b, byte(v))
	case 2:
		p.b = binary.LittleEndian.AppendUint16(p.b, uint16(v))
	case 4:
		p.b = binary.LittleEndian.AppendUint32(p.b, uint32(v))
	default:
		p.b = binary.LittleEndian.AppendUint64(p.b, v)
	}
}

// widen rewrites the array w bytes a value.
func (p *packed) widen(w int) {
	n := p.len()
	q := packed{w: w, b: make([]byte, n*w, max(n*w, cap(p.b)/max(p.w, 1)*w))}
	for i := range n {
		q.put(i, p.get(i))
	}
	*p = q
}

// hit is a position and its value.
type hit struct {
	i int
	v uint64
}

// appendAbove appends to dst every position in [from, to) whose value is
// above t, with its value. The loops read a subslice each, so that the
// compiler checks its bounds once, not at every value.
func (p *packed) appendAbove(dst []hit, from, to int, t uint64) []hit {
	switch p.w {
	case 1:
		for i, x := range p.b[from:to] {
			if uint64(x) > t {
				dst = append(dst, hit{from + i, uint64(x)})
			}
		}
	case 2:
		b := p.b[2*from : 2*to]
		for j := 0; j+1 < len(b); j += 2 {
			if v := uint64(b[j]) | uint64(b[j+1])<<8; v > t {
				dst = append(dst, hit{from + j/2, v})
			}
		}
	case 4:
		b := p.b[4*from : 4*to]
		for j := 0; j+3 < len(b); j += 4 {
			if v := uint64(binary.LittleEndian.Uint32(b[j:])); v > t {
				dst = append(dst, hit{from + j/4, v})
			}
		}
	default:
		b := p.b[8*from : 8*to]
		for j := 0; j+7 < len(b); j += 8 {
			if v := binary.LittleEndian.Uint64(b[j:]); v > t {
				dst = append(dst, hit{from + j/8, v})
			}
		}
	}
	return dst
}

// grow returns s with room for n more elements. Where it must move s, it
// leaves room for a sixteenth of s more, not the quarter or more of
// append's growth: new mail arrives one message at a time, and the slack
// of every watched mailbox's arrays is memory held for nothing. Copying s
// once per len(s)/16 arrivals keeps an arrival O(1) amortised.
func grow[T any](s []T, n int) []T {
	if cap(s)-len(s) >= n {
		return s
	}
	out := make([]T, len(s), len(s)+n+len(s)/16)
	copy(out, s)
	return out
}
