package syncstate

import "math/bits"

// modIndex finds the messages changed after a mod-sequence without reading
// every message's: for each block of 16 positions it holds an upper bound
// of the block's offsets (in a packed array, 2 or 4 bytes per block), and
// for each run of 16 blocks an upper bound of theirs. A query reads one
// number per 256 messages, then 16 per run and 16 per block that holds a
// change: about 80 + 32 per change for 20,000 messages, where reading every
// offset is 20,000. Bounds only rise (a message's new mod-sequence is the
// highest) and are recomputed when messages go, so they stay exact unless
// a batch was taken back (then they are high, which costs a read, never a
// missed change).
type modIndex struct {
	blocks packed
	supers []uint64
}

const (
	blockLen = 16 // positions per block
	superLen = 16 // blocks per run
)

// build computes the index of the first n offsets of mods.
func (x *modIndex) build(mods *packed, n int) {
	nb := (n + blockLen - 1) / blockLen
	x.blocks = packed{w: mods.w, b: make([]byte, nb*mods.w)} // a block's bound is one of its offsets
	x.supers = make([]uint64, (nb+superLen-1)/superLen)
	var buf [blockLen]hit
	for b := range nb {
		mx := uint64(0)
		for _, h := range mods.appendAbove(buf[:0], b*blockLen, min(b*blockLen+blockLen, n), 0) {
			mx = max(mx, h.v)
		}
		x.blocks.put(b, mx)
		x.supers[b/superLen] = max(x.supers[b/superLen], mx)
	}
}

// raise records that position i has offset off.
func (x *modIndex) raise(i int, off uint64) {
	b := i / blockLen
	if x.blocks.get(b) < off {
		x.blocks.set(b, off)
	}
	s := b / superLen
	x.supers[s] = max(x.supers[s], off)
}

// appended records position i, the one after the last, with offset off.
func (x *modIndex) appended(i int, off uint64) {
	if i%blockLen == 0 {
		b := i / blockLen
		x.blocks.append(0)
		if b%superLen == 0 {
			x.supers = append(x.supers, 0)
		}
	}
	x.raise(i, off)
}

// blocksAbove calls fn with the range of positions of every block, of n
// positions, whose bound is above t, in position order.
func (x *modIndex) blocksAbove(n int, t uint64, fn func(from, to int)) {
	var buf [superLen]hit
	nb := x.blocks.len()
	for s, mx := range x.supers {
		if mx <= t {
			continue
		}
		for _, b := range x.blocks.appendAbove(buf[:0], s*superLen, min(s*superLen+superLen, nb), t) {
			fn(b.i*blockLen, min(b.i*blockLen+blockLen, n))
		}
	}
}

// above appends to hits the positions of the first n offsets of mods
// above t, in position order.
func (x *modIndex) above(mods *packed, n int, t uint64, hits []hit) []hit {
	x.blocksAbove(n, t, func(from, to int) { hits = mods.appendAbove(hits, from, to, t) })
	return hits
}

// uidRank finds a message's position in O(1) where the mailbox's UIDs are
// dense enough: one bit per UID from the first to the last (set for those
// that exist), and per 64 of them how many exist below. A position is
// then a count of the bits below the UID's, which costs two reads where a
// search of 20,000 UIDs costs several dependent ones, and a map of the
// messages 40 bytes each. A mailbox whose UIDs span more than
// rankSparse times its message count (most of what arrived was expunged)
// has none, and is searched (see search): the bits would cost more than
// they save.
type uidRank struct {
	first  uint32
	bits   []uint64
	before []uint32 // before[w]: set bits in bits[:w]
}

// rankSparse bounds the bits a rank costs: at most 8 UIDs per message,
// 1.5 bytes a message.
const rankSparse = 8

// build makes the rank of uids (sorted); nil if they are too sparse.
func buildRank(uids []uint32) *uidRank {
	n := len(uids)
	if n == 0 || uint64(uids[n-1]-uids[0]) >= rankSparse*uint64(n) {
		return nil
	}
	r := &uidRank{first: uids[0]}
	words := int((uids[n-1]-uids[0])/64) + 1
	r.bits = make([]uint64, words)
	r.before = make([]uint32, words)
	for _, u := range uids {
		d := u - r.first
		r.bits[d/64] |= 1 << (d % 64)
	}
	c := uint32(0)
	for w, b := range r.bits {
		r.before[w] = c
		c += uint32(bits.OnesCount64(b))
	}
	return r
}

// find returns uid's position (or where it would go) among the n UIDs the
// rank was built from.
func (r *uidRank) find(uid uint32, n int) (int, bool) {
	if uid < r.first {
		return 0, false
	}
	d := uid - r.first
	w := int(d / 64)
	if w >= len(r.bits) {
		return n, false
	}
	word, bit := r.bits[w], uint64(1)<<(d%64)
	return int(r.before[w]) + bits.OnesCount64(word&(bit-1)), word&bit != 0
}

// append records uid, above every other, as the n-th UID (counting from
// 0). It returns false when the rank would get too sparse: the caller
// drops it.
func (r *uidRank) append(uid uint32, n int) bool {
	d := uid - r.first
	if uint64(d) >= rankSparse*uint64(n+1) {
		return false
	}
	w := int(d / 64)
	for len(r.bits) <= w {
		r.bits = append(r.bits, 0)
		r.before = append(r.before, uint32(n))
	}
	r.bits[w] |= 1 << (d % 64)
	return true
}
