package load

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The mixed scenario's model: for each account, the INBOX as the tool
// itself made it. Only the tool changes these mailboxes while mixed runs
// (from outside, one change at a time per account), so every state the
// mailbox passes through is known: the model keeps a digest of each
// (a version) and when it was committed (the change's tagged OK).
//
// A client's view is consistent when it equals one of the versions, not
// an older one than it saw before, and not older than the last version
// committed MaxLag before the moment checked (a change must reach a client
// within MaxLag, pushed while it idles or in its next resync).

// version is one state of an account's mailbox.
type version struct {
	hash  uint64
	count int
	// commit is when the change's tagged OK arrived (run time); -1 while
	// the change is in flight (a client may see it before the OK).
	commit time.Duration
	// what the change was, for error messages: the UID and its flags
	// afterwards (gone: expunged).
	uid   uint32
	flags flagBits
	gone  bool
	start time.Duration // when the command was sent
}

type acctModel struct {
	mu          sync.Mutex
	acct        int
	uidValidity uint32
	uidNext     uint32
	state       map[uint32]flagBits
	hash        uint64
	own         []uint32       // UIDs the tool appended and may change
	serial      map[uint32]int // content serial of the tool's messages
	nextSerial  int
	hist        []version
	busy        bool // a change is in flight
	// broken is set when a change failed in a way that leaves the
	// server's state unknown: the account's views are no longer checked.
	broken bool
}

func newAcctModel(acct int, v view, uidNext uint32) *acctModel {
	m := &acctModel{acct: acct, uidValidity: v.uidValidity, uidNext: uidNext, state: map[uint32]flagBits{}, serial: map[uint32]int{}}
	for _, x := range v.msgs {
		m.state[x.uid] = x.flags
		m.hash += msgHash(x.uid, x.flags)
	}
	m.hist = append(m.hist, version{hash: m.hash, count: len(m.state)})
	return m
}

// begin records the state after a change about to be sent at time at (in
// flight). set changes or adds a message; remove expunges one.
func (m *acctModel) begin(at time.Duration, set map[uint32]flagBits, remove []uint32) {
	v := version{commit: -1, start: at}
	for u, f := range set {
		if old, ok := m.state[u]; ok {
			m.hash -= msgHash(u, old)
		}
		m.state[u] = f
		m.hash += msgHash(u, f)
		v.uid, v.flags = u, f
	}
	for _, u := range remove {
		v.uid, v.gone = u, true
		if old, ok := m.state[u]; ok {
			m.hash -= msgHash(u, old)
			delete(m.state, u)
		}
		if i := slices.Index(m.own, u); i >= 0 {
			m.own = slices.Delete(m.own, i, i+1)
		}
	}
	v.hash, v.count = m.hash, len(m.state)
	m.hist = append(m.hist, v)
}

// commit marks the last change as committed at t.
func (m *acctModel) commit(t time.Duration) {
	m.hist[len(m.hist)-1].commit = t
}

// checkResult is the outcome of checking a view.
type checkResult struct {
	matched int    // the version the view equals (-1: none)
	kind    string // "" when consistent; else the error kind
	detail  string
}

// check compares a view (its digest and size) taken at time at with the
// versions: it must equal one, at least prev and at least the last one
// committed by at-maxLag.
func (m *acctModel) check(h uint64, count int, at, maxLag time.Duration, prev int) checkResult {
	matched := -1
	for i := len(m.hist) - 1; i >= 0; i-- {
		if m.hist[i].hash == h && m.hist[i].count == count {
			matched = i
			break
		}
	}
	required := 0
	for i := len(m.hist) - 1; i >= 0; i-- {
		if c := m.hist[i].commit; c >= 0 && c <= at-maxLag {
			required = i
			break
		}
	}
	switch {
	case matched < 0:
		return checkResult{-1, "mismatch", ""}
	case matched < prev:
		return checkResult{matched, "regress", fmt.Sprintf("the view is version %d of %d after the client had seen version %d", matched, len(m.hist)-1, prev)}
	case matched < required:
		lag := at - m.hist[matched+1].commit
		return checkResult{matched, "stale", fmt.Sprintf("the view is version %d of %d; version %d was committed %v before the check (allowed: %v)",
			matched, len(m.hist)-1, matched+1, lag.Round(time.Millisecond), maxLag)}
	}
	return checkResult{matched, "", ""}
}

// describe compares a view's state with the model's latest state, for an
// error message.
func (m *acctModel) describe(st map[uint32]flagBits) string {
	var missing, extra, flags []string
	for u, f := range m.state {
		vf, ok := st[u]
		switch {
		case !ok:
			missing = append(missing, strconv.FormatUint(uint64(u), 10))
		case vf != f:
			flags = append(flags, fmt.Sprintf("%d %s not %s", u, vf, f))
		}
	}
	for u := range st {
		if _, ok := m.state[u]; !ok {
			extra = append(extra, strconv.FormatUint(uint64(u), 10))
		}
	}
	short := func(s []string) string {
		slices.Sort(s)
		if len(s) > 4 {
			return strings.Join(s[:4], ",") + fmt.Sprintf(",... (%d)", len(s))
		}
		return strings.Join(s, ",")
	}
	var parts []string
	if len(missing) > 0 {
		parts = append(parts, "lacks UIDs "+short(missing))
	}
	if len(extra) > 0 {
		parts = append(parts, "has UIDs "+short(extra)+" the model does not")
	}
	if len(flags) > 0 {
		parts = append(parts, "flags of "+short(flags))
	}
	if len(parts) == 0 {
		return "equal to the latest version but matching none recorded"
	}
	// The history of the UIDs that differ.
	var hist []string
	for i, v := range m.hist {
		if v.uid == 0 {
			continue
		}
		vf, inView := st[v.uid]
		mf, inModel := m.state[v.uid]
		if inView == inModel && vf == mf {
			continue
		}
		what := fmt.Sprintf("%d %s", v.uid, v.flags)
		if v.gone {
			what = fmt.Sprintf("%d expunged", v.uid)
		}
		hist = append(hist, fmt.Sprintf("v%d %s sent at %v, OK at %v", i, what, v.start.Round(time.Millisecond), v.commit.Round(time.Millisecond)))
	}
	if len(hist) > 12 {
		hist = hist[len(hist)-12:]
	}
	return fmt.Sprintf("against the latest version (%d): %s; history: %s", len(m.hist)-1, strings.Join(parts, "; "), strings.Join(hist, ", "))
}
