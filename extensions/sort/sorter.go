package sort

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// Key is one sort key of RFC 5256 section 3 (and RFC 5957's two).
type Key int

const (
	Arrival Key = iota
	Cc
	Date
	From
	Size
	Subject
	To
	DisplayFrom
	DisplayTo
)

var keyNames = map[string]Key{
	"ARRIVAL": Arrival, "CC": Cc, "DATE": Date, "FROM": From, "SIZE": Size,
	"SUBJECT": Subject, "TO": To, "DISPLAYFROM": DisplayFrom, "DISPLAYTO": DisplayTo,
}

func (k Key) String() string {
	for name, v := range keyNames {
		if v == k {
			return name
		}
	}
	return "Key(" + strconv.Itoa(int(k)) + ")"
}

// A Criterion is a sort key, REVERSE or not.
type Criterion struct {
	Key     Key
	Reverse bool
}

func (c Criterion) String() string {
	if c.Reverse {
		return "REVERSE " + c.Key.String()
	}
	return c.Key.String()
}

// maxCriteria bounds a sort program: nine keys, each at most once useful.
const maxCriteria = 32

// ParseCriteria reads the sort criteria list of a SORT command: one or
// more keys, each after an optional REVERSE.
func ParseCriteria(l imapcodec.List) ([]Criterion, error) {
	if len(l) == 0 {
		return nil, errors.New("empty sort criteria")
	}
	if len(l) > maxCriteria {
		return nil, errors.New("too many sort criteria")
	}
	var out []Criterion
	rev := false
	for _, v := range l {
		a, ok := v.(imapcodec.Atom)
		if !ok {
			return nil, errors.New("bad sort criterion")
		}
		name := strings.ToUpper(string(a))
		if name == "REVERSE" {
			if rev {
				return nil, errors.New("REVERSE REVERSE")
			}
			rev = true
			continue
		}
		k, ok := keyNames[name]
		if !ok {
			return nil, fmt.Errorf("unknown sort criterion %s", a)
		}
		out = append(out, Criterion{Key: k, Reverse: rev})
		rev = false
	}
	if rev {
		return nil, errors.New("REVERSE must be followed by a sort key")
	}
	return out, nil
}

// display reports whether the criteria use RFC 5957's keys.
func display(crit []Criterion) bool {
	return slices.ContainsFunc(crit, func(c Criterion) bool { return c.Key == DisplayFrom || c.Key == DisplayTo })
}

// compare orders two messages by crit, then (RFC 5256 section 3: "...
// the order in which they appear in the mailbox") by UID, which is the
// mailbox's order; REVERSE does not reverse that last step.
func compare(a, b *folded, crit []Criterion) int {
	for _, c := range crit {
		var r int
		switch c.Key {
		case Arrival:
			r = cmp.Compare(a.arrival, b.arrival)
		case Date:
			r = cmp.Compare(a.date, b.date)
		case Size:
			r = cmp.Compare(a.size, b.size)
		case Subject:
			r = strings.Compare(a.subject, b.subject)
		case From:
			r = strings.Compare(a.from, b.from)
		case To:
			r = strings.Compare(a.to, b.to)
		case Cc:
			r = strings.Compare(a.cc, b.cc)
		case DisplayFrom:
			r = strings.Compare(a.displayFrom, b.displayFrom)
		case DisplayTo:
			r = strings.Compare(a.displayTo, b.displayTo)
		}
		if c.Reverse {
			r = -r
		}
		if r != 0 {
			return r
		}
	}
	return cmp.Compare(a.uid, b.uid)
}

// sortFolded sorts messages by crit and returns their UIDs in that order.
// One numeric key (ARRIVAL, DATE, SIZE, the common case of a mail
// client's message list) sorts pairs of key and UID, which stay in the
// processor's cache, rather than chasing pointers through a comparison
// of every key.
func sortFolded(msgs []*folded, crit []Criterion) []uint32 {
	out := make([]uint32, len(msgs))
	if len(crit) == 1 && (crit[0].Key == Arrival || crit[0].Key == Date || crit[0].Key == Size) {
		type pair struct {
			k   uint64
			uid uint32
		}
		pairs := make([]pair, len(msgs))
		for i, f := range msgs {
			var k uint64
			switch crit[0].Key {
			case Arrival:
				k = uint64(f.arrival) ^ 1<<63 // signed order as unsigned
			case Date:
				k = uint64(f.date) ^ 1<<63
			case Size:
				k = f.size
			}
			pairs[i] = pair{k, f.uid}
		}
		rev := crit[0].Reverse
		slices.SortFunc(pairs, func(a, b pair) int {
			if a.k != b.k {
				if (a.k < b.k) != rev {
					return -1
				}
				return 1
			}
			return cmp.Compare(a.uid, b.uid)
		})
		for i, p := range pairs {
			out[i] = p.uid
		}
		return out
	}
	slices.SortFunc(msgs, func(a, b *folded) int { return compare(a, b, crit) })
	for i, f := range msgs {
		out[i] = f.uid
	}
	return out
}
