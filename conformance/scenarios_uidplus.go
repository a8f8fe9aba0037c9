package conformance

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/lemonproxy/lemonproxy/imapcodec"
)

// uidCode parses the argument of [APPENDUID v uids] or [COPYUID v src dst]
// into the UIDVALIDITY and the sets, expanded in order.
func uidCode(arg string) (uint32, [][]uint32, error) {
	f := strings.Fields(arg)
	if len(f) < 2 {
		return 0, nil, fmt.Errorf("malformed code argument %q", arg)
	}
	v, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil || v == 0 {
		return 0, nil, fmt.Errorf("bad UIDVALIDITY in %q", arg)
	}
	var sets [][]uint32
	for _, s := range f[1:] {
		var uids []uint32
		for _, part := range strings.Split(s, ",") {
			lo, hi, isRange := strings.Cut(part, ":")
			a, err1 := strconv.ParseUint(lo, 10, 32)
			b := a
			var err2 error
			if isRange {
				b, err2 = strconv.ParseUint(hi, 10, 32)
			}
			// RFC 4315's grammar: "2:4 and 4:2 are equivalent".
			if b < a {
				a, b = b, a
			}
			if err1 != nil || err2 != nil || a == 0 || b-a > 10000 {
				return 0, nil, fmt.Errorf("bad UID set %q", s)
			}
			for u := a; u <= b; u++ {
				uids = append(uids, uint32(u))
			}
		}
		sets = append(sets, uids)
	}
	return uint32(v), sets, nil
}

func uidplus4315() []*Scenario {
	return []*Scenario{
		{ID: "4315-appenduid", RFC: 4315, Section: "3", Level: Must, Caps: []string{"UIDPLUS"},
			Summary: "APPEND answers [APPENDUID] with the target's UIDVALIDITY and the new message's UID",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				v, err := statusNumber(c, mb, "UIDVALIDITY")
				if err != nil {
					return err
				}
				res, err := c.Append(mb, `\Seen`, testMessage(mb, 2, 0))
				if err != nil {
					return err
				}
				if !res.OK() || res.Status.Code != "APPENDUID" {
					return failf("expected OK [APPENDUID ...], got %q", status(res))
				}
				gotV, sets, err := uidCode(res.Status.CodeArg)
				if err != nil || len(sets) != 1 || len(sets[0]) != 1 {
					return failf("malformed APPENDUID %q", res.Status.CodeArg)
				}
				now, err := t.uids(c, mb)
				if err != nil {
					return err
				}
				if uint64(gotV) != v || len(now) != 2 || now[0] != uids[0] || now[1] != sets[0][0] {
					return failf("APPENDUID %q, but UIDVALIDITY is %d and the mailbox holds UIDs %v", res.Status.CodeArg, v, now)
				}
				return nil
			}},
		{ID: "4315-copyuid", RFC: 4315, Section: "3", Level: Must, Caps: []string{"UIDPLUS"},
			Summary: "COPY answers [COPYUID] naming the copied UIDs and their copies in the same order",
			Run: func(t *T) error {
				src, suids, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				dst, duids, err := t.Mailbox(1)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(src, "")
				if err != nil {
					return err
				}
				res, err := c.Do("COPY 2:3 " + quote(dst))
				if err != nil {
					return err
				}
				if !res.OK() || res.Status.Code != "COPYUID" {
					return failf("expected OK [COPYUID ...], got %q", status(res))
				}
				// The two sets are compared as sets: RFC 4315 pairs the
				// source and the destination UIDs by their order in the
				// code, but does not make the server list them ascending
				// ("3,2" with "11,10" is as right as "2:3" with "10:11").
				_, sets, err := uidCode(res.Status.CodeArg)
				if err != nil || len(sets) != 2 || !sameSet(sets[0], suids[1:]) || len(sets[1]) != 2 {
					return failf("COPYUID %q does not name source UIDs %v", res.Status.CodeArg, suids[1:])
				}
				now, err := t.uids(c, dst)
				if err != nil {
					return err
				}
				if !sameSet(now, append(slices.Clone(duids), sets[1]...)) {
					return failf("COPYUID %q, but the target holds UIDs %v", res.Status.CodeArg, now)
				}
				return nil
			}},
		{ID: "4315-uid-expunge-only-named", RFC: 4315, Section: "2.1", Level: Must, Caps: []string{"UIDPLUS"},
			Summary: "UID EXPUNGE removes only the named \\Deleted messages",
			Run: func(t *T) error {
				mb, uids, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(mb, "")
				if err != nil {
					return err
				}
				if _, err := doOK(c, `STORE 1:2 +FLAGS.SILENT (\Deleted)`); err != nil {
					return err
				}
				res, err := doOK(c, "UID EXPUNGE "+strconv.Itoa(int(uids[1])))
				if err != nil {
					return err
				}
				if n := len(findAll(res.Untagged, "EXPUNGE")) + len(findAll(res.Untagged, "VANISHED")); n != 1 {
					return failf("expected one expunge, got %s", describe(res.Untagged))
				}
				now, err := t.uids(c, mb)
				if err != nil {
					return err
				}
				if !slices.Equal(now, []uint32{uids[0], uids[2]}) {
					return failf("after UID EXPUNGE %d the mailbox holds %v, want %v", uids[1], now, []uint32{uids[0], uids[2]})
				}
				return nil
			}},
	}
}

func move6851() []*Scenario {
	return []*Scenario{
		{ID: "6851-move", RFC: 6851, Section: "4.3", Level: Must, Caps: []string{"MOVE"},
			Summary: "MOVE sends [COPYUID] (with UIDPLUS) before the expunges of exactly the moved messages, then OK",
			Run: func(t *T) error {
				src, suids, err := t.Mailbox(3)
				if err != nil {
					return err
				}
				dst, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, _, err := t.loginSelect(src, "")
				if err != nil {
					return err
				}
				res, err := doOK(c, "MOVE 2:3 "+quote(dst))
				if err != nil {
					return err
				}
				copyAt, lastExpunge, expunges := -1, -1, 0
				for i, r := range res.Untagged {
					switch {
					case r.Name == "OK" && r.Code == "COPYUID":
						copyAt = i
					case r.Name == "EXPUNGE":
						lastExpunge, expunges = i, expunges+1
					}
				}
				if t.Has("UIDPLUS") && (copyAt < 0 || copyAt > lastExpunge) {
					return failf("expected * OK [COPYUID] before the expunges, got %s", describe(res.Untagged))
				}
				if expunges != 2 {
					return failf("expected 2 EXPUNGE, got %s", describe(res.Untagged))
				}
				left, err := t.uids(c, src)
				if err != nil {
					return err
				}
				moved, err := t.uids(c, dst)
				if err != nil {
					return err
				}
				if !slices.Equal(left, suids[:1]) || len(moved) != 2 {
					return failf("after MOVE the source holds %v and the target %v", left, moved)
				}
				return nil
			}},
		{ID: "6851-uid-move-qresync", RFC: 6851, Section: "4.3", Level: Must, Caps: []string{"MOVE", "QRESYNC"},
			Summary: "with QRESYNC enabled, UID MOVE reports the moved messages with VANISHED",
			Run: func(t *T) error {
				src, suids, err := t.Mailbox(2)
				if err != nil {
					return err
				}
				dst, _, err := t.Mailbox(0)
				if err != nil {
					return err
				}
				c, err := t.Login()
				if err != nil {
					return err
				}
				if _, err := doOK(c, "ENABLE QRESYNC"); err != nil {
					return err
				}
				if _, err := selectOK(c, "SELECT", src, ""); err != nil {
					return err
				}
				uid := strconv.Itoa(int(suids[1]))
				res, err := doOK(c, "UID MOVE "+uid+" "+quote(dst))
				if err != nil {
					return err
				}
				v := find(res.Untagged, "VANISHED")
				if v == nil || find(res.Untagged, "EXPUNGE") != nil {
					return failf("expected VANISHED %s and no EXPUNGE, got %s", uid, describe(res.Untagged))
				}
				if a, ok := v.Fields[len(v.Fields)-1].(imapcodec.Atom); !ok || string(a) != uid {
					return failf("expected VANISHED %s, got %s", uid, describe(res.Untagged))
				}
				return nil
			}},
	}
}
