package proxy

import (
	"errors"
	"fmt"
	"slices"

	"github.com/emersion/go-imap/v2"
)

// seqView is the message sequence as one client knows it: the UIDs of the
// messages it has been told about, in sequence (and so UID) order. It is
// the one place where the client's sequence numbers and UIDs are
// translated into each other; it usually aliases the hub state's
// immutable snapshot, so it is never modified in place.
type seqView []uint32

// errInvalidSeq is Dovecot's wording, which admins know.
var errInvalidSeq = errors.New("invalid messageset")

// seqOf returns the client's sequence number of uid, or 0 if the client
// does not know the message.
func (v seqView) seqOf(uid uint32) uint32 {
	i, ok := slices.BinarySearch(v, uid)
	if !ok {
		return 0
	}
	return uint32(i + 1)
}

// uidOf returns the UID of sequence number seq, or 0 if there is none.
func (v seqView) uidOf(seq uint32) uint32 {
	if seq == 0 || int(seq) > len(v) {
		return 0
	}
	return v[seq-1]
}

// last returns the highest UID the client knows, or 0.
func (v seqView) last() uint32 {
	if len(v) == 0 {
		return 0
	}
	return v[len(v)-1]
}

// uidSet turns a sequence set in the client's numbering into the
// equivalent UID set. A range maps to the range of its end points' UIDs:
// every UID between two UIDs of the view belongs to the view or to a message
// already expunged, since new messages always get higher UIDs. "*" is the
// client's last message, not the upstream's. A number beyond the client's
// last message is an error, as RFC 3501 wants.
func (v seqView) uidSet(set imap.SeqSet) (imap.UIDSet, error) {
	return v.mapSeqSet(set, true)
}

// uidSetWithin is uidSet for search keys: numbers beyond the client's last
// message match nothing instead of being an error (RFC 9051 6.4.4: "1:*"
// in an empty mailbox, "1000" in a mailbox of five, which clients send and
// Dovecot answers with an empty result). The set may come out empty.
func (v seqView) uidSetWithin(set imap.SeqSet) imap.UIDSet {
	out, _ := v.mapSeqSet(set, false)
	return out
}

// bounds returns the range r with "*" standing for star, lowest first
// (RFC 3501 9: "4:2" is "2:4", and "*" the largest number in use).
func bounds(r imap.SeqRange, star uint32) (lo, hi uint32) {
	lo, hi = r.Start, r.Stop
	if lo == 0 {
		lo = star
	}
	if hi == 0 {
		hi = star
	}
	return min(lo, hi), max(lo, hi)
}

// mapSeqSet is uidSet (strict) and uidSetWithin (not strict: ranges are
// cut at the last message).
func (v seqView) mapSeqSet(set imap.SeqSet, strict bool) (imap.UIDSet, error) {
	n := uint32(len(v))
	var out imap.UIDSet
	for _, r := range set {
		a, z := bounds(r, n)
		if strict && (n == 0 || a == 0 || z > n) {
			return nil, errInvalidSeq
		}
		z = min(z, n)
		if a == 0 || a > z {
			continue
		}
		out.AddRange(imap.UID(v[a-1]), imap.UID(v[z-1]))
	}
	return out, nil
}

// seqSet turns UIDs into the client's sequence numbers as a set, leaving
// out the messages the client does not know. "n:*" covers every message
// from n on.
func (v seqView) seqSet(uids imap.UIDSet) imap.SeqSet {
	var out imap.SeqSet
	for _, r := range uids {
		a, z := uint32(r.Start), uint32(r.Stop)
		if z == 0 {
			z = ^uint32(0)
		}
		if a > z {
			a, z = z, a
		}
		i, _ := slices.BinarySearch(v, a)
		j := i
		for j < len(v) && v[j] <= z {
			j++
		}
		if j > i {
			out.AddRange(uint32(i+1), uint32(j))
		}
	}
	return out
}

// seqs maps UIDs one by one to the client's sequence numbers, dropping
// those the client does not know, keeping the order.
func (v seqView) seqs(uids []uint32) []uint32 {
	out := make([]uint32, 0, len(uids))
	for _, u := range uids {
		if seq := v.seqOf(u); seq != 0 {
			out = append(out, seq)
		}
	}
	return out
}

// String is for test failures.
func (v seqView) String() string { return fmt.Sprint([]uint32(v)) }
